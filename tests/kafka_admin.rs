//! Operators' views of consumer groups through the Kafka listener:
//! ListGroups and DescribeGroups, as kafka-python's `KafkaAdminClient`
//! (`list_groups`, `describe_groups`) and a raw client see them. One group
//! has a pipeline member (a TOML `[[pipeline]]`), one a confluent-kafka
//! consumer, one only committed offsets; a group nobody knows is "Dead".
//!
//! Phases are sequenced by what the runtime and the clients report, never
//! by sleeps; every wait has a deadline. Needs python3 with kafka-python and
//! confluent-kafka (.ci/run installs them).

mod common;

use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, StrBytes};
use millrace::config::Config;
use millrace::runtime::Runtime;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

const PHASE: Duration = Duration::from_secs(60);

const CONFIG: &str = r#"
shutdown_timeout = "20s"
[[topic]]
name = "in"
partitions = 4
[[topic]]
name = "out"
partitions = 4
[[topic]]
name = "side"
partitions = 3
[kafka]
listen = "127.0.0.1:0"

[[pipeline]]
name = "shared"
commit_interval = "0s"
[pipeline.source]
topic = "in"
[[pipeline.operator]]
type = "filter"
field = "n"
exists = true
[pipeline.sink]
type = "topic"
topic = "out"
"#;

/// kafka-python's admin client: prints one JSON object with what
/// `list_groups()` and `describe_groups(GROUPS)` returned.
const ADMIN_SCRIPT: &str = r#"
import json, sys
from kafka import KafkaAdminClient
admin = KafkaAdminClient(bootstrap_servers=sys.argv[1], client_id="admin-test")
listed = admin.list_groups()
described = admin.describe_groups(sys.argv[2:])
def default(value):
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    if isinstance(value, (set, frozenset)):
        return sorted(default(v) if not isinstance(v, str) else v for v in value)
    return repr(value)
print(json.dumps({"listed": listed, "described": described}, default=default), flush=True)
admin.close()
"#;

fn start() -> (tempfile::TempDir, Runtime, SocketAddr) {
    let directory = tempfile::tempdir().expect("tempdir");
    let text = format!(
        "data_dir = {:?}\n{CONFIG}",
        directory.path().display().to_string()
    );
    let runtime =
        Runtime::start(Config::from_toml_str(&text, "<test>").expect("config")).expect("start");
    let address = runtime.kafka_address().expect("listener");
    common::wait_until(PHASE, "the pipeline to own every partition", || {
        runtime
            .describe_group_blocking("shared")
            .map(|group| group.members.values().map(Vec::len).sum::<usize>())
            == Some(4)
    });
    (directory, runtime, address)
}

/// The confluent-kafka group member of tests/kafka/confluent_client.py,
/// killed on drop.
struct Member {
    child: Child,
    lines: Receiver<Value>,
}

impl Member {
    fn start(bootstrap: &str, topic: &str, group: &str, name: &str) -> Member {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/kafka/confluent_client.py"
        );
        let mut child = Command::new("python3")
            .args([script, "member", bootstrap, topic, group, name])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect(
                "python3 runs (install python3 and `pip install confluent-kafka`, or run .ci/run)",
            );
        let stdout = child.stdout.take().expect("stdout");
        let (sender, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(value) = serde_json::from_str::<Value>(&line) {
                    if sender.send(value).is_err() {
                        break;
                    }
                }
            }
        });
        Member { child, lines }
    }

    /// Waits for a non-empty assignment; returns its partitions.
    fn assigned(&self) -> Vec<u64> {
        let deadline = Instant::now() + PHASE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .expect("the Kafka member was assigned partitions in time");
            assert!(
                line["type"] != "client_error" || line["fatal"] != Value::Bool(true),
                "fatal client error: {line}"
            );
            if line["type"] == "assigned" {
                let partitions: Vec<u64> = line["partitions"]
                    .as_array()
                    .expect("partitions")
                    .iter()
                    .filter_map(Value::as_u64)
                    .collect();
                if !partitions.is_empty() {
                    return partitions;
                }
            }
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The partitions per topic of a kafka-python-decoded assignment (a dict
/// with `assigned_partitions`, each `{topic, partitions}`).
fn assignment_partitions(assignment: &Value) -> BTreeMap<String, BTreeSet<u64>> {
    let mut out: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    let list = assignment["assigned_partitions"]
        .as_array()
        .unwrap_or_else(|| panic!("a decoded assignment: {assignment}"));
    for entry in list {
        let topic = entry["topic"].as_str().expect("topic").to_owned();
        let partitions = entry["partitions"].as_array().expect("partitions");
        out.entry(topic)
            .or_default()
            .extend(partitions.iter().filter_map(Value::as_u64));
    }
    out
}

#[test]
fn kafka_python_admin_lists_and_describes_pipeline_and_kafka_groups() {
    let (_directory, runtime, address) = start();
    let bootstrap = address.to_string();
    let member = Member::start(&bootstrap, "side", "clients", "kafka-1");
    let mut assigned = member.assigned();
    assigned.sort_unstable();
    assert_eq!(
        assigned,
        vec![0, 1, 2],
        "the only member gets every partition"
    );

    let output = Command::new("python3")
        .args([
            "-c",
            ADMIN_SCRIPT,
            &bootstrap,
            "shared",
            "clients",
            "nobody",
        ])
        .stderr(Stdio::inherit())
        .output()
        .expect("python3 runs (install python3 and `pip install kafka-python`, or run .ci/run)");
    assert!(
        output.status.success(),
        "the admin script failed: {}",
        output.status
    );
    let answer: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|error| panic!("{error}: {}", String::from_utf8_lossy(&output.stdout)));

    // list_groups: both groups, as consumer groups.
    let listed: BTreeMap<String, Value> = answer["listed"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|group| {
            (
                group["group_id"].as_str().expect("group_id").to_owned(),
                group.clone(),
            )
        })
        .collect();
    for name in ["shared", "clients"] {
        let group = listed
            .get(name)
            .unwrap_or_else(|| panic!("{name} listed: {listed:?}"));
        assert_eq!(group["protocol_type"], "consumer", "{group}");
        if let Some(state) = group.get("group_state") {
            assert_eq!(state, "Stable", "{group}");
        }
    }

    let described = &answer["described"];
    // The pipeline group: one pipeline member that owns all of "in".
    let shared = &described["shared"];
    assert!(shared["error"].is_null(), "{shared}");
    assert_eq!(shared["group_state"], "Stable", "{shared}");
    assert_eq!(shared["protocol_type"], "consumer", "{shared}");
    assert_eq!(shared["protocol_data"], "millrace-cooperative", "{shared}");
    let members = shared["members"].as_array().expect("members");
    assert_eq!(members.len(), 1, "{shared}");
    let owners = runtime
        .describe_group_blocking("shared")
        .expect("group")
        .members;
    assert!(
        owners.contains_key(members[0]["member_id"].as_str().expect("member_id")),
        "{shared}"
    );
    assert_eq!(
        assignment_partitions(&members[0]["member_assignment"]),
        BTreeMap::from([("in".to_owned(), BTreeSet::from([0, 1, 2, 3]))]),
        "{shared}"
    );
    assert_eq!(
        members[0]["member_metadata"]["topics"],
        serde_json::json!(["in"]),
        "{shared}"
    );

    // The Kafka consumer group: its one member, its client id, its partitions.
    let clients = &described["clients"];
    assert!(clients["error"].is_null(), "{clients}");
    assert_eq!(clients["group_state"], "Stable", "{clients}");
    assert_eq!(clients["protocol_type"], "consumer", "{clients}");
    assert_eq!(clients["protocol_data"], "range", "{clients}");
    let members = clients["members"].as_array().expect("members");
    assert_eq!(members.len(), 1, "{clients}");
    assert_eq!(members[0]["client_id"], "kafka-1", "{clients}");
    assert_eq!(
        assignment_partitions(&members[0]["member_assignment"]),
        BTreeMap::from([("side".to_owned(), BTreeSet::from([0, 1, 2]))]),
        "{clients}"
    );
    assert_eq!(
        members[0]["member_metadata"]["topics"],
        serde_json::json!(["side"]),
        "{clients}"
    );

    // A group nobody knows.
    let nobody = &described["nobody"];
    assert!(nobody["error"].is_null(), "{nobody}");
    assert_eq!(nobody["group_state"], "Dead", "{nobody}");
    assert_eq!(nobody["members"], serde_json::json!([]), "{nobody}");
    drop(member);
    runtime.shutdown().expect("shutdown");
}

// ---------------------------------------------------------------------------
// A raw client (the minimal part of tests/kafka_protocol.rs's).

common::kafka::suite_client!(Client);

impl Client {
    fn list_groups(&mut self, version: i16, states: &[&'static str]) -> ListGroupsResponse {
        let request = ListGroupsRequest::default().with_states_filter(
            states
                .iter()
                .map(|s| StrBytes::from_static_str(s))
                .collect(),
        );
        let mut response = self.request(ApiKey::ListGroups, version, &request);
        ListGroupsResponse::decode(&mut response, version).expect("list groups")
    }

    fn describe_groups(&mut self, version: i16, groups: &[&str]) -> DescribeGroupsResponse {
        let request = DescribeGroupsRequest::default().with_groups(
            groups
                .iter()
                .map(|group| GroupId(StrBytes::from_string((*group).to_owned())))
                .collect(),
        );
        let mut response = self.request(ApiKey::DescribeGroups, version, &request);
        DescribeGroupsResponse::decode(&mut response, version).expect("describe groups")
    }
}

/// `ConsumerProtocolAssignment` partitions, decoded by hand.
fn decode_assignment(bytes: &[u8]) -> BTreeMap<String, BTreeSet<i32>> {
    let mut at = 2; // version
    let take_i32 = |at: &mut usize| {
        let value = i32::from_be_bytes(bytes[*at..*at + 4].try_into().expect("i32"));
        *at += 4;
        value
    };
    let mut out = BTreeMap::new();
    for _ in 0..take_i32(&mut at) {
        let length = i16::from_be_bytes(bytes[at..at + 2].try_into().expect("i16")) as usize;
        let topic = String::from_utf8(bytes[at + 2..at + 2 + length].to_vec()).expect("utf-8");
        at += 2 + length;
        let count = take_i32(&mut at);
        let partitions: BTreeSet<i32> = (0..count).map(|_| take_i32(&mut at)).collect();
        out.insert(topic, partitions);
    }
    out
}

#[test]
fn raw_list_groups_and_describe_groups() {
    let (_directory, runtime, address) = start();
    let mut client = Client::connect(address);

    // A group with only committed offsets (a standalone commit).
    let commit = OffsetCommitRequest::default()
        .with_group_id(GroupId(StrBytes::from_static_str("committed-only")))
        .with_generation_id_or_member_epoch(-1)
        .with_member_id(StrBytes::default())
        .with_retention_time_ms(-1)
        .with_topics(vec![OffsetCommitRequestTopic::default()
            .with_name(TopicName(StrBytes::from_static_str("in")))
            .with_partitions(vec![OffsetCommitRequestPartition::default()
                .with_partition_index(1)
                .with_committed_offset(0)])]);
    let mut response = client.request(ApiKey::OffsetCommit, 2, &commit);
    let response = OffsetCommitResponse::decode(&mut response, 2).expect("commit");
    assert_eq!(response.topics[0].partitions[0].error_code, 0);

    // ListGroups v0: both, as consumer groups.
    let listed = client.list_groups(0, &[]);
    assert_eq!(listed.error_code, 0);
    let listed: BTreeMap<String, String> = listed
        .groups
        .iter()
        .map(|group| {
            (
                group.group_id.0.to_string(),
                group.protocol_type.to_string(),
            )
        })
        .collect();
    assert_eq!(
        listed.get("shared").map(String::as_str),
        Some("consumer"),
        "{listed:?}"
    );
    assert_eq!(
        listed.get("committed-only").map(String::as_str),
        Some("consumer"),
        "{listed:?}"
    );

    // ListGroups v4 with states: the filter holds.
    let states = |response: ListGroupsResponse| -> BTreeMap<String, String> {
        response
            .groups
            .iter()
            .map(|group| (group.group_id.0.to_string(), group.group_state.to_string()))
            .collect()
    };
    let all = states(client.list_groups(4, &[]));
    assert_eq!(
        all.get("shared").map(String::as_str),
        Some("Stable"),
        "{all:?}"
    );
    assert_eq!(
        all.get("committed-only").map(String::as_str),
        Some("Empty"),
        "{all:?}"
    );
    let empty = states(client.list_groups(4, &["Empty"]));
    assert!(
        empty.contains_key("committed-only") && !empty.contains_key("shared"),
        "{empty:?}"
    );

    // DescribeGroups v0: the pipeline member's assignment, an empty group,
    // an unknown group ("Dead"), an invalid group id.
    let described = client.describe_groups(0, &["shared", "committed-only", "nobody", ""]);
    assert_eq!(described.groups.len(), 4);
    let shared = &described.groups[0];
    assert_eq!(shared.error_code, 0);
    assert_eq!(shared.group_id.0.as_str(), "shared");
    assert_eq!(shared.group_state.as_str(), "Stable");
    assert_eq!(shared.protocol_type.as_str(), "consumer");
    assert_eq!(shared.protocol_data.as_str(), "millrace-cooperative");
    assert_eq!(shared.members.len(), 1);
    assert_eq!(
        decode_assignment(&shared.members[0].member_assignment),
        BTreeMap::from([("in".to_owned(), BTreeSet::from([0, 1, 2, 3]))])
    );
    let committed = &described.groups[1];
    assert_eq!(
        (committed.error_code, committed.group_state.as_str()),
        (0, "Empty")
    );
    assert!(committed.members.is_empty());
    let nobody = &described.groups[2];
    assert_eq!(
        (nobody.error_code, nobody.group_state.as_str()),
        (0, "Dead")
    );
    assert!(nobody.members.is_empty());
    assert_eq!(described.groups[3].error_code, 24, "INVALID_GROUP_ID");

    // DescribeGroups v5 (flexible): the same answer for the pipeline group.
    let described = client.describe_groups(5, &["shared"]);
    assert_eq!(described.groups[0].members.len(), 1);
    assert_eq!(described.groups[0].members[0].group_instance_id, None);
    runtime.shutdown().expect("shutdown");
}
