//! CreateTopics and DeleteTopics over the Kafka protocol, with a raw client
//! written here (as in `tests/kafka_protocol.rs`): refused unless
//! `[kafka] allow_topic_management`; when allowed, a created topic serves
//! produce and fetch, shows its configs, survives a restart, and a deleted
//! one is gone (table, files, store). A kafka-python `KafkaAdminClient`
//! does the same round trip at the end.
//!
//! Every test has its own data directory and port; nothing waits by sleeping.

mod common;

use bytes::Bytes;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, StrBytes};
use millrace::config::{Config, KafkaConfig};
use millrace::runtime::Runtime;
use millrace::storage::batch::{encode_frame, ProducerFields, FRAME_HEADER_BYTES};
use millrace::types::{Offset, Record, Term};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

const NONE: i16 = 0;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const INVALID_TOPIC_EXCEPTION: i16 = 17;
const TOPIC_ALREADY_EXISTS: i16 = 36;
const INVALID_PARTITIONS: i16 = 37;
const INVALID_REPLICATION_FACTOR: i16 = 38;
const INVALID_CONFIG: i16 = 40;
const POLICY_VIOLATION: i16 = 44;

fn kafka_config(data_dir: &Path, allow_topic_management: bool) -> Config {
    let mut config = common::config(data_dir, vec![common::topic("events", 2)]);
    config.kafka = Some(KafkaConfig {
        request_max_bytes: 4 * 1024 * 1024,
        allow_topic_management,
        ..common::kafka::loopback()
    });
    config
}

fn start(data_dir: &Path, allow: bool) -> (Runtime, SocketAddr) {
    let runtime = Runtime::start(kafka_config(data_dir, allow)).expect("start");
    let address = runtime.kafka_address().expect("kafka listener on");
    (runtime, address)
}

common::kafka::suite_client!(Client);

impl Client {
    /// Creates topics (CreateTopics v7); returns (name, error code, message) per topic.
    fn create(
        &mut self,
        topics: Vec<CreatableTopic>,
        validate_only: bool,
    ) -> Vec<(String, i16, String)> {
        let request = CreateTopicsRequest::default()
            .with_topics(topics)
            .with_timeout_ms(10_000)
            .with_validate_only(validate_only);
        let mut response = self.request(ApiKey::CreateTopics, 7, &request);
        let response =
            CreateTopicsResponse::decode(&mut response, 7).expect("create topics response");
        response
            .topics
            .into_iter()
            .map(|topic| {
                (
                    topic.name.0.to_string(),
                    topic.error_code,
                    topic
                        .error_message
                        .map(|m| m.to_string())
                        .unwrap_or_default(),
                )
            })
            .collect()
    }

    fn create_one(&mut self, topic: CreatableTopic) -> (i16, String) {
        let mut results = self.create(vec![topic], false);
        assert_eq!(results.len(), 1);
        let (_, code, message) = results.remove(0);
        (code, message)
    }

    /// Deletes one topic (DeleteTopics v6); returns its error code and message.
    fn delete(&mut self, name: &str) -> (i16, String) {
        let request = DeleteTopicsRequest::default()
            .with_topics(vec![delete_topics_request::DeleteTopicState::default()
                .with_name(Some(TopicName(StrBytes::from_string(name.to_owned()))))])
            .with_timeout_ms(10_000);
        let mut response = self.request(ApiKey::DeleteTopics, 6, &request);
        let mut response =
            DeleteTopicsResponse::decode(&mut response, 6).expect("delete topics response");
        assert_eq!(response.responses.len(), 1);
        let result = response.responses.remove(0);
        (
            result.error_code,
            result
                .error_message
                .map(|m| m.to_string())
                .unwrap_or_default(),
        )
    }

    /// Every topic Metadata lists (v9, all topics): name → partition count.
    fn listed_topics(&mut self) -> Vec<(String, usize)> {
        let mut response = self.request(
            ApiKey::Metadata,
            9,
            &MetadataRequest::default().with_topics(None),
        );
        let response = MetadataResponse::decode(&mut response, 9).expect("metadata");
        let mut topics: Vec<(String, usize)> = response
            .topics
            .into_iter()
            .map(|topic| {
                assert_eq!(topic.error_code, NONE);
                (
                    topic.name.expect("name").0.to_string(),
                    topic.partitions.len(),
                )
            })
            .collect();
        topics.sort();
        topics
    }

    /// Metadata for one topic: its error code and partition count.
    fn topic_metadata(&mut self, name: &str) -> (i16, usize) {
        let request = MetadataRequest::default()
            .with_topics(Some(vec![MetadataRequestTopic::default()
                .with_name(Some(TopicName(StrBytes::from_string(name.to_owned()))))]));
        let mut response = self.request(ApiKey::Metadata, 9, &request);
        let mut response = MetadataResponse::decode(&mut response, 9).expect("metadata");
        let topic = response.topics.remove(0);
        (topic.error_code, topic.partitions.len())
    }

    fn produce(&mut self, topic: &str, partition: i32, values: &[&str]) -> (i16, i64) {
        let request = ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(5000)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(partition)
                    .with_records(Some(batch(values)))])]);
        let mut response = self.request(ApiKey::Produce, 9, &request);
        let response = ProduceResponse::decode(&mut response, 9).expect("produce response");
        let partition = &response.responses[0].partition_responses[0];
        (partition.error_code, partition.base_offset)
    }

    /// Fetches one partition from `offset` (no waiting); returns the error
    /// code, the high watermark and the values of the records.
    fn fetch(&mut self, topic: &str, partition: i32, offset: i64) -> (i16, i64, Vec<String>) {
        let request = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(0)
            .with_min_bytes(0)
            .with_max_bytes(1024 * 1024)
            .with_topics(vec![FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_string(topic.to_owned())))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(partition)
                    .with_fetch_offset(offset)
                    .with_partition_max_bytes(1024 * 1024)])]);
        let mut response = self.request(ApiKey::Fetch, 11, &request);
        let mut response = FetchResponse::decode(&mut response, 11).expect("fetch response");
        let data = response.responses.remove(0).partitions.remove(0);
        let mut values = Vec::new();
        if let Some(mut records) = data.records.filter(|records| !records.is_empty()) {
            let sets = kafka_protocol::records::RecordBatchDecoder::decode_all(&mut records)
                .expect("stored batches decode");
            for record in sets.iter().flat_map(|set| &set.records) {
                let value = record
                    .value
                    .clone()
                    .map(|value| value.to_vec())
                    .unwrap_or_default();
                values.push(String::from_utf8(value).expect("utf8"));
            }
        }
        (data.error_code, data.high_watermark, values)
    }

    /// DescribeConfigs (v4) of one topic: its error code and (name, value) pairs.
    fn topic_configs(&mut self, name: &str) -> (i16, Vec<(String, String)>) {
        let request = DescribeConfigsRequest::default().with_resources(vec![
            DescribeConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(StrBytes::from_string(name.to_owned()))
                .with_configuration_keys(None),
        ]);
        let mut response = self.request(ApiKey::DescribeConfigs, 4, &request);
        let mut response =
            DescribeConfigsResponse::decode(&mut response, 4).expect("describe configs");
        let result = response.results.remove(0);
        let configs = result
            .configs
            .into_iter()
            .map(|entry| {
                (
                    entry.name.to_string(),
                    entry
                        .value
                        .map(|value| value.to_string())
                        .unwrap_or_default(),
                )
            })
            .collect();
        (result.error_code, configs)
    }
}

/// A RecordBatch v2 as a Kafka producer sends it.
fn batch(values: &[&str]) -> Bytes {
    let records: Vec<Record> = values
        .iter()
        .map(|value| Record::new(value.as_bytes().to_vec()))
        .collect();
    let mut out = Vec::new();
    encode_frame(
        &mut out,
        Offset(0),
        Term(0),
        ProducerFields::NONE,
        &records,
        1_700_000_000_000,
    );
    Bytes::from(out.split_off(FRAME_HEADER_BYTES))
}

fn creatable(name: &str, partitions: i32, configs: &[(&str, &str)]) -> CreatableTopic {
    CreatableTopic::default()
        .with_name(TopicName(StrBytes::from_string(name.to_owned())))
        .with_num_partitions(partitions)
        .with_replication_factor(-1)
        .with_configs(
            configs
                .iter()
                .map(|(key, value)| {
                    CreatableTopicConfig::default()
                        .with_name(StrBytes::from_string((*key).to_owned()))
                        .with_value(Some(StrBytes::from_string((*value).to_owned())))
                })
                .collect(),
        )
}

/// The partition directories under `data_dir/topics`, sorted.
fn partition_directories(data_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(data_dir.join("topics"))
        .map(|entries| {
            entries
                .map(|entry| {
                    entry
                        .expect("entry")
                        .file_name()
                        .to_string_lossy()
                        .into_owned()
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn events_only() -> Vec<(String, usize)> {
    vec![("events".to_owned(), 2)]
}

#[test]
fn topic_management_is_refused_unless_the_config_allows_it() {
    let directory = tempfile::tempdir().expect("tempdir");
    let (runtime, address) = start(directory.path(), false);
    let mut client = Client::connect(address);
    let (code, message) = client.create_one(creatable("orders", 3, &[]));
    assert_eq!(code, POLICY_VIOLATION, "{message}");
    assert!(message.contains("allow_topic_management"), "{message}");
    let (code, _) = client.create_one(creatable("events", 3, &[]));
    assert_eq!(code, TOPIC_ALREADY_EXISTS);
    let (code, message) = client.delete("events");
    assert_eq!(code, POLICY_VIOLATION, "{message}");
    let (code, _) = client.delete("orders");
    assert_eq!(code, UNKNOWN_TOPIC_OR_PARTITION);
    assert_eq!(client.listed_topics(), events_only());
    assert_eq!(runtime.topics(), vec!["events".to_owned()]);
    assert_eq!(
        partition_directories(directory.path()),
        vec!["events-0", "events-1"]
    );
    runtime.shutdown().expect("shutdown");
}

#[test]
fn a_created_topic_serves_survives_restarts_and_stays_deleted() {
    let directory = tempfile::tempdir().expect("tempdir");
    let (runtime, address) = start(directory.path(), true);
    let mut client = Client::connect(address);
    let (code, message) = client.create_one(creatable(
        "orders",
        3,
        &[
            ("retention.ms", "3600000"),
            ("cleanup.policy", "compact,delete"),
        ],
    ));
    assert_eq!(code, NONE, "{message}");
    let (code, _) = client.create_one(creatable("orders", 3, &[]));
    assert_eq!(
        code, TOPIC_ALREADY_EXISTS,
        "a second create of the same name"
    );

    let mut expected = vec![("events".to_owned(), 2), ("orders".to_owned(), 3)];
    assert_eq!(client.listed_topics(), expected);
    assert_eq!(
        runtime.topics(),
        vec!["events".to_owned(), "orders".to_owned()]
    );
    assert_eq!(runtime.partition_count("orders"), Some(3));
    for partition in 0..3 {
        let (code, base) = client.produce(
            "orders",
            partition,
            &[&format!("p{partition}-a"), &format!("p{partition}-b")],
        );
        assert_eq!((code, base), (NONE, 0), "partition {partition}");
    }
    let (code, high_watermark, values) = client.fetch("orders", 2, 0);
    assert_eq!((code, high_watermark), (NONE, 2));
    assert_eq!(values, vec!["p2-a", "p2-b"]);
    // The embedding API sees it too.
    let read = common::read_partition(&runtime, "orders", millrace::PartitionId(1));
    assert_eq!(read.len(), 2);

    let (code, configs) = client.topic_configs("orders");
    assert_eq!(code, NONE);
    let config = |key: &str| {
        configs
            .iter()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.clone())
            .unwrap_or_else(|| panic!("no {key} in {configs:?}"))
    };
    assert_eq!(config("retention.ms"), "3600000");
    assert_eq!(config("cleanup.policy"), "compact,delete");
    assert_eq!(config("retention.bytes"), "-1");
    // Metrics and health cover its partitions.
    let health = runtime.health();
    assert_eq!(
        health
            .partitions
            .iter()
            .filter(|p| p.topic == "orders")
            .count(),
        3
    );
    assert!(runtime.metrics_text().contains("topic=\"orders\""));
    drop(client);
    runtime.shutdown().expect("shutdown");

    // Restart on the same directory: the topic comes back from the store, with its records.
    let (runtime, address) = start(directory.path(), true);
    let mut client = Client::connect(address);
    assert_eq!(client.listed_topics(), expected);
    let (code, high_watermark, values) = client.fetch("orders", 0, 0);
    assert_eq!((code, high_watermark), (NONE, 2));
    assert_eq!(values, vec!["p0-a", "p0-b"]);
    assert_eq!(client.produce("orders", 0, &["p0-c"]), (NONE, 2));
    let (_, configs) = client.topic_configs("orders");
    assert!(
        configs.contains(&("retention.ms".to_owned(), "3600000".to_owned())),
        "{configs:?}"
    );

    // Delete it: gone from Metadata, produce refused, directories removed.
    let (code, message) = client.delete("orders");
    assert_eq!(code, NONE, "{message}");
    expected.pop();
    assert_eq!(client.listed_topics(), expected);
    assert_eq!(
        client.topic_metadata("orders"),
        (UNKNOWN_TOPIC_OR_PARTITION, 0)
    );
    assert_eq!(
        client.produce("orders", 0, &["late"]).0,
        UNKNOWN_TOPIC_OR_PARTITION
    );
    assert_eq!(client.fetch("orders", 0, 0).0, UNKNOWN_TOPIC_OR_PARTITION);
    assert_eq!(
        partition_directories(directory.path()),
        vec!["events-0", "events-1"]
    );
    assert_eq!(
        client.delete("orders").0,
        UNKNOWN_TOPIC_OR_PARTITION,
        "deleted twice"
    );
    assert_eq!(runtime.partition_count("orders"), None);
    assert!(runtime.producer("orders").is_err());
    drop(client);
    runtime.shutdown().expect("shutdown");

    // And after a restart it stays deleted; the name can be created again, empty.
    let (runtime, address) = start(directory.path(), true);
    let mut client = Client::connect(address);
    assert_eq!(client.listed_topics(), events_only());
    assert_eq!(runtime.topics(), vec!["events".to_owned()]);
    let (code, message) = client.create_one(creatable("orders", 1, &[]));
    assert_eq!(code, NONE, "{message}");
    let (code, high_watermark, values) = client.fetch("orders", 0, 0);
    assert_eq!((code, high_watermark), (NONE, 0));
    assert!(
        values.is_empty(),
        "a re-created topic starts empty: {values:?}"
    );
    drop(client);
    runtime.shutdown().expect("shutdown");
}

#[test]
fn bad_create_requests_get_their_code_and_create_nothing() {
    let directory = tempfile::tempdir().expect("tempdir");
    let (runtime, address) = start(directory.path(), true);
    let mut client = Client::connect(address);
    let cases: Vec<(&str, CreatableTopic, i16, &str)> = vec![
        (
            "bad name",
            creatable("bad/name", 1, &[]),
            INVALID_TOPIC_EXCEPTION,
            "not allowed",
        ),
        (
            "empty name",
            creatable("", 1, &[]),
            INVALID_TOPIC_EXCEPTION,
            "empty",
        ),
        (
            "zero partitions",
            creatable("t1", 0, &[]),
            INVALID_PARTITIONS,
            "num_partitions",
        ),
        (
            "too many partitions",
            creatable("t2", 10_001, &[]),
            INVALID_PARTITIONS,
            "num_partitions",
        ),
        (
            "replication factor 3",
            creatable("t3", 1, &[]).with_replication_factor(3),
            INVALID_REPLICATION_FACTOR,
            "replication_factor",
        ),
        (
            "unknown config",
            creatable("t4", 1, &[("foo.bar", "1")]),
            INVALID_CONFIG,
            "foo.bar",
        ),
        (
            "bad retention.ms",
            creatable("t5", 1, &[("retention.ms", "soon")]),
            INVALID_CONFIG,
            "retention.ms",
        ),
        (
            "bad cleanup.policy",
            creatable("t6", 1, &[("cleanup.policy", "shred")]),
            INVALID_CONFIG,
            "cleanup.policy",
        ),
        (
            "segment.bytes too small",
            creatable("t7", 1, &[("segment.bytes", "10")]),
            INVALID_CONFIG,
            "segment.bytes",
        ),
        (
            "dirty ratio above 1",
            creatable("t8", 1, &[("min.cleanable.dirty.ratio", "1.5")]),
            INVALID_CONFIG,
            "min.cleanable.dirty.ratio",
        ),
        (
            "existing topic",
            creatable("events", 1, &[]),
            TOPIC_ALREADY_EXISTS,
            "already exists",
        ),
        (
            "same name but case",
            creatable("EVENTS", 1, &[]),
            TOPIC_ALREADY_EXISTS,
            "letter case",
        ),
    ];
    for (what, topic, expected, needle) in cases {
        let (code, message) = client.create_one(topic);
        assert_eq!(code, expected, "{what}: {message}");
        assert!(
            message.contains(needle),
            "{what}: {message:?} should mention {needle:?}"
        );
    }
    // validate_only: a good request answers NONE and creates nothing; a bad one its code.
    let results = client.create(
        vec![
            creatable("checked", 4, &[("retention.bytes", "1048576")]),
            creatable("checked-bad", 1, &[("nope", "1")]),
        ],
        true,
    );
    assert_eq!(results[0].1, NONE, "{results:?}");
    assert_eq!(results[1].1, INVALID_CONFIG, "{results:?}");
    assert_eq!(
        client.topic_metadata("checked"),
        (UNKNOWN_TOPIC_OR_PARTITION, 0)
    );

    assert_eq!(client.listed_topics(), events_only());
    assert_eq!(runtime.topics(), vec!["events".to_owned()]);
    assert_eq!(
        partition_directories(directory.path()),
        vec!["events-0", "events-1"]
    );
    drop(client);
    runtime.shutdown().expect("shutdown");
    // Nothing was stored either.
    let (runtime, address) = start(directory.path(), true);
    assert_eq!(Client::connect(address).listed_topics(), events_only());
    runtime.shutdown().expect("shutdown");
}

#[test]
fn config_topics_cannot_be_deleted_over_the_wire() {
    let directory = tempfile::tempdir().expect("tempdir");
    let (runtime, address) = start(directory.path(), true);
    let mut client = Client::connect(address);
    let (code, message) = client.delete("events");
    assert_eq!(code, POLICY_VIOLATION, "{message}");
    assert!(message.contains("config file"), "{message}");
    let (code, _) = client.delete("never-created");
    assert_eq!(code, UNKNOWN_TOPIC_OR_PARTITION);
    assert_eq!(client.listed_topics(), events_only());
    assert_eq!(client.produce("events", 1, &["still here"]), (NONE, 0));
    drop(client);
    runtime.shutdown().expect("shutdown");
}

#[test]
fn a_config_topic_wins_over_a_stored_one_of_the_same_name() {
    let directory = tempfile::tempdir().expect("tempdir");
    let (runtime, address) = start(directory.path(), true);
    let mut client = Client::connect(address);
    let (code, message) = client.create_one(creatable("audit", 2, &[("retention.ms", "60000")]));
    assert_eq!(code, NONE, "{message}");
    drop(client);
    runtime.shutdown().expect("shutdown");
    // Now the file declares it (with more partitions: counts may grow).
    let mut config = kafka_config(directory.path(), true);
    config.topics.push(common::topic("audit", 3));
    let runtime = Runtime::start(config).expect("start");
    let mut client = Client::connect(runtime.kafka_address().expect("kafka"));
    assert_eq!(client.topic_metadata("audit"), (NONE, 3));
    let (_, configs) = client.topic_configs("audit");
    assert!(
        configs.contains(&("retention.ms".to_owned(), "-1".to_owned())),
        "{configs:?}"
    );
    let (code, message) = client.delete("audit");
    assert_eq!(
        code, POLICY_VIOLATION,
        "declared in the file now: {message}"
    );
    drop(client);
    runtime.shutdown().expect("shutdown");
}

/// kafka-python's admin client creates and deletes a topic.
#[test]
fn kafka_python_admin_client_creates_and_deletes_topics() {
    let directory = tempfile::tempdir().expect("tempdir");
    let (runtime, address) = start(directory.path(), true);
    let script = r#"
import sys
from kafka.admin import KafkaAdminClient, NewTopic
admin = KafkaAdminClient(bootstrap_servers=sys.argv[1], request_timeout_ms=20000)
admin.create_topics([NewTopic("py-topic", 2, 1, topic_configs={"retention.ms": "120000"})])
print("created", sorted(admin.list_topics()), flush=True)
try:
    admin.delete_topics(["events"])
    print("deleted events", flush=True)
except Exception as error:
    print("refused", type(error).__name__, flush=True)
admin.delete_topics(["py-topic"])
print("deleted", sorted(admin.list_topics()), flush=True)
admin.close()
"#;
    let output = Command::new("python3")
        .args(["-c", script, &address.to_string()])
        .output()
        .expect("python3 on PATH (with kafka-python: pip install kafka-python)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "kafka-python failed: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        vec![
            "created ['events', 'py-topic']",
            "refused PolicyViolationError",
            "deleted ['events']",
        ],
        "{stdout}"
    );
    assert_eq!(runtime.topics(), vec!["events".to_owned()]);
    assert_eq!(
        partition_directories(directory.path()),
        vec!["events-0", "events-1"]
    );
    runtime.shutdown().expect("shutdown");
}

#[test]
fn concurrent_creates_of_one_name_make_one_topic() {
    let directory = tempfile::tempdir().expect("tempdir");
    let (runtime, address) = start(directory.path(), true);
    let clients = 4;
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(clients));
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let barrier = std::sync::Arc::clone(&barrier);
            std::thread::spawn(move || {
                let mut client = Client::connect(address);
                barrier.wait();
                client.create_one(creatable("raced", 2, &[])).0
            })
        })
        .collect();
    let mut codes: Vec<i16> = threads
        .into_iter()
        .map(|thread| thread.join().expect("client thread"))
        .collect();
    codes.sort_unstable();
    assert_eq!(
        codes,
        vec![
            NONE,
            TOPIC_ALREADY_EXISTS,
            TOPIC_ALREADY_EXISTS,
            TOPIC_ALREADY_EXISTS
        ]
    );
    let mut client = Client::connect(address);
    assert_eq!(client.topic_metadata("raced"), (NONE, 2));
    assert_eq!(client.produce("raced", 1, &["one"]), (NONE, 0));
    drop(client);
    runtime.shutdown().expect("shutdown");
}
