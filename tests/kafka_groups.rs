//! A pipeline and a remote Kafka consumer (confluent-kafka) in one consumer
//! group: one coordinator assigns the topic's partitions across both kinds
//! of member, every record is processed by exactly one of them, and when the
//! Kafka consumer leaves, the pipeline takes its partitions back.
//!
//! Needs python3 with confluent-kafka (.ci/run installs it).

mod common;

use millrace::config::Config;
use millrace::runtime::Runtime;
use millrace::types::{PartitionId, Record};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
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

/// The confluent-kafka group member of tests/kafka/confluent_client.py,
/// killed on drop.
struct Member {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<Value>,
}

impl Member {
    fn start(bootstrap: &str) -> Member {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/kafka/confluent_client.py"
        );
        let mut child = Command::new("python3")
            .args([script, "member", bootstrap, "in", "shared", "kafka-1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect(
                "python3 runs (install python3 and `pip install confluent-kafka`, or run .ci/run)",
            );
        let stdout = child.stdout.take().expect("stdout");
        let stdin = child.stdin.take();
        let (sender, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<Value>(&line) {
                    Ok(value) => {
                        if sender.send(value).is_err() {
                            break;
                        }
                    }
                    Err(_) => eprintln!("member: {line}"),
                }
            }
        });
        Member {
            child,
            stdin,
            lines,
        }
    }

    /// The next line, failing the test at `deadline`.
    fn next(&self, deadline: Instant, waiting_for: &str) -> Value {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = self
            .lines
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("the Kafka member did not print {waiting_for} in time"));
        assert!(
            line.get("type").and_then(Value::as_str) != Some("client_error")
                || line.get("fatal") != Some(&Value::Bool(true)),
            "fatal client error: {line}"
        );
        line
    }

    fn command(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{text}").expect("write a command");
        stdin.flush().expect("flush");
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn produce(runtime: &Runtime, ids: std::ops::Range<u64>) {
    let producer = runtime.producer("in").expect("producer");
    let records: Vec<Record> = ids
        .map(|id| Record::new(format!("{{\"n\":{id}}}")).with_key(format!("k{id}")))
        .collect();
    for chunk in records.chunks(200) {
        producer
            .send_batch_blocking(chunk.to_vec())
            .expect("produce");
    }
}

fn ids_in(runtime: &Runtime, topic: &str, partitions: &[u32]) -> BTreeSet<u64> {
    partitions
        .iter()
        .flat_map(|&partition| common::read_partition(runtime, topic, PartitionId(partition)))
        .map(|record| {
            let value: Value = serde_json::from_slice(&record.value.expect("value")).expect("json");
            value["n"].as_u64().expect("n")
        })
        .collect()
}

fn owners(runtime: &Runtime) -> BTreeMap<String, Vec<u32>> {
    // The pipeline joins after the runtime starts: no group yet is no owner yet.
    runtime
        .describe_group_blocking("shared")
        .map(|group| group.members)
        .unwrap_or_default()
        .into_iter()
        .map(|(member, partitions)| (member, partitions.into_iter().map(|p| p.0).collect()))
        .collect()
}

#[test]
fn a_pipeline_and_a_kafka_consumer_share_one_group() {
    let directory = tempfile::tempdir().expect("tempdir");
    let text = format!(
        "data_dir = {:?}\n{CONFIG}",
        directory.path().display().to_string()
    );
    let runtime =
        Runtime::start(Config::from_toml_str(&text, "<test>").expect("config")).expect("start");
    let bootstrap = runtime.kafka_address().expect("listener").to_string();
    common::wait_until(PHASE, "the pipeline to own every partition", || {
        owners(&runtime).values().map(Vec::len).sum::<usize>() == 4
    });

    // The Kafka consumer joins: the coordinator moves half the partitions
    // to it (after the pipeline member has given them up).
    let mut member = Member::start(&bootstrap);
    let deadline = Instant::now() + PHASE;
    let kafka_partitions: Vec<u32> = loop {
        let line = member.next(deadline, "its assignment");
        if line["type"] == "assigned" {
            let partitions: Vec<u32> = line["partitions"]
                .as_array()
                .expect("partitions")
                .iter()
                .map(|p| p.as_u64().expect("partition") as u32)
                .collect();
            if !partitions.is_empty() {
                break partitions;
            }
        }
    };
    assert_eq!(kafka_partitions.len(), 2, "4 partitions over 2 members");
    common::wait_until(PHASE, "the group to settle", || {
        let owners = owners(&runtime);
        let mut all: Vec<u32> = owners.values().flatten().copied().collect();
        all.sort_unstable();
        owners.len() == 2 && all == vec![0, 1, 2, 3]
    });
    let owners_now = owners(&runtime);
    let pipeline_partitions: Vec<u32> = owners_now
        .iter()
        .filter(|(member, _)| !member.starts_with("kafka-1"))
        .flat_map(|(_, partitions)| partitions.clone())
        .collect();
    let mut union: Vec<u32> = pipeline_partitions
        .iter()
        .chain(&kafka_partitions)
        .copied()
        .collect();
    union.sort_unstable();
    assert_eq!(
        union,
        vec![0, 1, 2, 3],
        "disjoint and complete: {owners_now:?}"
    );

    // Records produced now are processed by exactly one of the two.
    produce(&runtime, 0..2000);
    let for_kafka = ids_in(&runtime, "in", &kafka_partitions);
    let for_pipeline = ids_in(&runtime, "in", &pipeline_partitions);
    assert!(!for_kafka.is_empty() && !for_pipeline.is_empty());
    let mut consumed = BTreeSet::new();
    while consumed.len() < for_kafka.len() {
        let line = member.next(deadline, "the records of its partitions");
        if let Some(payload) = line.get("payload").and_then(Value::as_str) {
            let value: Value = serde_json::from_str(payload).expect("json payload");
            let id = value["n"].as_u64().expect("n");
            assert!(
                for_kafka.contains(&id),
                "the Kafka member read {id}, not from its partitions"
            );
            assert!(consumed.insert(id), "the Kafka member read {id} twice");
        }
    }
    common::wait_until(PHASE, "the pipeline to catch up", || {
        runtime.caught_up("shared") == Some(true)
    });
    let processed = ids_in(&runtime, "out", &[0, 1, 2, 3]);
    assert_eq!(
        processed, for_pipeline,
        "the pipeline processed exactly its partitions"
    );
    // The Kafka member's commits are the group's committed offsets.
    for &partition in &kafka_partitions {
        let end = runtime
            .offsets_blocking("in", PartitionId(partition))
            .expect("offsets")
            .high_watermark;
        common::wait_until(PHASE, "the Kafka member's commit", || {
            runtime
                .committed_offset("shared", "in", PartitionId(partition))
                .ok()
                .flatten()
                == Some(end)
        });
    }

    // The Kafka member leaves: the pipeline takes every partition back and
    // processes what comes next.
    member.command("stop");
    common::wait_until(PHASE, "the pipeline to own every partition again", || {
        let owners = owners(&runtime);
        owners.len() == 1 && owners.values().next().map(Vec::len) == Some(4)
    });
    produce(&runtime, 2000..3000);
    common::wait_until(PHASE, "the pipeline to catch up", || {
        runtime.caught_up("shared") == Some(true)
    });
    let processed = ids_in(&runtime, "out", &[0, 1, 2, 3]);
    let expected: BTreeSet<u64> = for_pipeline.iter().copied().chain(2000..3000).collect();
    assert_eq!(
        processed, expected,
        "after the leave, the pipeline processed everything new, once"
    );
    runtime.shutdown().expect("shutdown");
}
