//! Seeded mutation testing of the Kafka listener: valid requests of every
//! served API with a few bytes changed, cut short, or with random bytes
//! appended, each on its own connection. Whatever the listener makes of
//! them (an error response, a closed connection, or a valid answer), it
//! must not panic, must answer or close at once (except for the requests
//! that rightly wait: Fetch, JoinGroup, SyncGroup), and must keep serving a
//! healthy client. A panic anywhere in the process fails the test
//! (a panic hook counts them), so a handler that panics on a strange but
//! decodable value (a negative partition, a huge offset) is caught too.
//!
//! `MILLRACE_MUTATION_SEED=N` replays one seed; `MILLRACE_MUTATIONS=N` sets
//! how many mutated requests are sent (default 600).

mod common;

use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Encodable, StrBytes};
use millrace::config::KafkaConfig;
use millrace::runtime::Runtime;
use millrace::storage::batch::{encode_frame, ProducerFields, FRAME_HEADER_BYTES};
use millrace::types::{Offset, Record, Term};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn frame<R: Encodable>(api: ApiKey, version: i16, request: &R) -> Vec<u8> {
    common::kafka::request_frame(api, version, 1, request)
}

fn topic_name(name: &'static str) -> TopicName {
    TopicName(StrBytes::from_static_str(name))
}

/// One valid request of each served API (and a few versions).
fn seeds() -> Vec<Vec<u8>> {
    let records = vec![Record::new("value").with_key("key"), Record::new("second")];
    let mut batch = Vec::new();
    encode_frame(
        &mut batch,
        Offset(0),
        Term(0),
        ProducerFields::NONE,
        &records,
        1_700_000_000_000,
    );
    let batch = bytes::Bytes::from(batch.split_off(FRAME_HEADER_BYTES));
    let produce = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(1000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(topic_name("events"))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(batch))])]);
    let fetch = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(10)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_topics(vec![FetchTopic::default()
            .with_topic(topic_name("events"))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_partition_max_bytes(1 << 20)])]);
    let metadata = MetadataRequest::default().with_topics(Some(vec![
        MetadataRequestTopic::default().with_name(Some(topic_name("events"))),
    ]));
    let list_offsets = ListOffsetsRequest::default().with_topics(vec![ListOffsetsTopic::default()
        .with_name(topic_name("events"))
        .with_partitions(vec![ListOffsetsPartition::default()
            .with_partition_index(0)
            .with_timestamp(-2)])]);
    let join = JoinGroupRequest::default()
        .with_group_id(GroupId(StrBytes::from_static_str("g")))
        .with_session_timeout_ms(6000)
        .with_rebalance_timeout_ms(1000)
        .with_member_id(StrBytes::from_static_str(""))
        .with_protocol_type(StrBytes::from_static_str("consumer"))
        .with_protocols(vec![JoinGroupRequestProtocol::default()
            .with_name(StrBytes::from_static_str("range"))
            .with_metadata(bytes::Bytes::from_static(&[
                0, 0, 0, 0, 0, 1, 0, 6, b'e', b'v', b'e', b'n', b't', b's', 0xff, 0xff, 0xff, 0xff,
            ]))]);
    let commit = OffsetCommitRequest::default()
        .with_group_id(GroupId(StrBytes::from_static_str("g")))
        .with_generation_id_or_member_epoch(-1)
        .with_member_id(StrBytes::from_static_str(""))
        .with_topics(vec![OffsetCommitRequestTopic::default()
            .with_name(topic_name("events"))
            .with_partitions(vec![OffsetCommitRequestPartition::default()
                .with_partition_index(0)
                .with_committed_offset(1)])]);
    let offset_fetch = OffsetFetchRequest::default()
        .with_group_id(GroupId(StrBytes::from_static_str("g")))
        .with_topics(Some(vec![OffsetFetchRequestTopic::default()
            .with_name(topic_name("events"))
            .with_partition_indexes(vec![0])]));
    let heartbeat = HeartbeatRequest::default()
        .with_group_id(GroupId(StrBytes::from_static_str("g")))
        .with_generation_id(1)
        .with_member_id(StrBytes::from_static_str("m"));
    let sync = SyncGroupRequest::default()
        .with_group_id(GroupId(StrBytes::from_static_str("g")))
        .with_generation_id(1)
        .with_member_id(StrBytes::from_static_str("m"));
    let leave = LeaveGroupRequest::default()
        .with_group_id(GroupId(StrBytes::from_static_str("g")))
        .with_member_id(StrBytes::from_static_str("m"));
    let describe = DescribeConfigsRequest::default().with_resources(vec![
        describe_configs_request::DescribeConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(StrBytes::from_static_str("events")),
    ]);
    vec![
        frame(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default()),
        frame(ApiKey::Produce, 3, &produce),
        frame(ApiKey::Produce, 9, &produce),
        frame(ApiKey::Fetch, 4, &fetch),
        frame(ApiKey::Fetch, 12, &fetch),
        frame(ApiKey::Metadata, 1, &metadata),
        frame(ApiKey::Metadata, 12, &metadata),
        frame(ApiKey::ListOffsets, 1, &list_offsets),
        frame(ApiKey::ListOffsets, 6, &list_offsets),
        frame(ApiKey::JoinGroup, 5, &join),
        frame(ApiKey::SyncGroup, 3, &sync),
        frame(ApiKey::Heartbeat, 4, &heartbeat),
        frame(ApiKey::LeaveGroup, 2, &leave),
        frame(ApiKey::OffsetCommit, 8, &commit),
        frame(ApiKey::OffsetFetch, 5, &offset_fetch),
        frame(ApiKey::InitProducerId, 4, &InitProducerIdRequest::default()),
        frame(
            ApiKey::FindCoordinator,
            3,
            &FindCoordinatorRequest::default(),
        ),
        frame(ApiKey::DescribeConfigs, 4, &describe),
        frame(ApiKey::CreateTopics, 7, &CreateTopicsRequest::default()),
        frame(ApiKey::DeleteTopics, 6, &DeleteTopicsRequest::default()),
        frame(ApiKey::ListGroups, 0, &ListGroupsRequest::default()),
        frame(
            ApiKey::ListGroups,
            4,
            &ListGroupsRequest::default()
                .with_states_filter(vec![StrBytes::from_static_str("Stable")]),
        ),
        frame(
            ApiKey::DescribeGroups,
            5,
            &DescribeGroupsRequest::default().with_groups(vec![
                GroupId(StrBytes::from_static_str("g")),
                GroupId(StrBytes::from_static_str("")),
            ]),
        ),
    ]
}

/// `seed` changed in one of several ways, chosen by `rng`.
fn mutate(seed: &[u8], rng: &mut common::XorShift) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    match rng.below(4) {
        // Change one to four bytes after the length prefix (so the frame
        // is read whole and its contents are what is tested).
        0 | 1 => {
            for _ in 0..=rng.below(4) {
                let position = 4 + rng.below(bytes.len() as u64 - 4) as usize;
                bytes[position] = rng.next_u64() as u8;
            }
        }
        // Cut the body short, with a length prefix that says so.
        2 => {
            let keep = 4 + rng.below(bytes.len() as u64 - 4) as usize;
            bytes.truncate(keep);
            let length = (keep - 4) as i32;
            bytes[..4].copy_from_slice(&length.to_be_bytes());
        }
        // Random bytes appended inside the frame.
        _ => {
            let extra = 1 + rng.below(64) as usize;
            bytes.extend((0..extra).map(|_| rng.next_u64() as u8));
            let length = (bytes.len() - 4) as i32;
            bytes[..4].copy_from_slice(&length.to_be_bytes());
        }
    }
    bytes
}

fn api_versions_ok(address: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect(address) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    if stream
        .write_all(&frame(
            ApiKey::ApiVersions,
            0,
            &ApiVersionsRequest::default(),
        ))
        .is_err()
    {
        return false;
    }
    let mut length = [0u8; 4];
    stream.read_exact(&mut length).is_ok() && i32::from_be_bytes(length) > 0
}

#[test]
fn mutated_requests_never_panic_and_the_listener_keeps_serving() {
    let panics = Arc::new(AtomicUsize::new(0));
    let default_hook = std::panic::take_hook();
    let counted = Arc::clone(&panics);
    std::panic::set_hook(Box::new(move |info| {
        counted.fetch_add(1, Ordering::SeqCst);
        default_hook(info);
    }));

    let directory = tempfile::tempdir().expect("tempdir");
    let mut config = common::config(directory.path(), vec![common::topic("events", 2)]);
    config.kafka = Some(KafkaConfig {
        request_max_bytes: 1 << 20,
        ..common::kafka::loopback()
    });
    let runtime = Runtime::start(config).expect("start");
    let address = runtime.kafka_address().expect("listener");

    let seed: u64 = std::env::var("MILLRACE_MUTATION_SEED")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(0x5eed_cafe);
    let count: usize = std::env::var("MILLRACE_MUTATIONS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(600);
    println!("mutation seed {seed} ({count} requests); MILLRACE_MUTATION_SEED={seed} replays it");
    let mut rng = common::XorShift::new(seed);
    let seeds = seeds();
    for iteration in 0..count {
        let original = &seeds[iteration % seeds.len()];
        let bytes = mutate(original, &mut rng);
        // Fetch, JoinGroup and SyncGroup may rightly wait (a long poll, a
        // join phase, the leader's assignment) for as long as the mutated
        // request asks; every other request is answered or refused at once.
        let key = match bytes.get(4..6) {
            Some(key) => i16::from_be_bytes([key[0], key[1]]),
            None => -1,
        };
        let may_wait = [ApiKey::Fetch, ApiKey::JoinGroup, ApiKey::SyncGroup]
            .iter()
            .any(|api| *api as i16 == key);
        let mut stream = TcpStream::connect(address).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(if may_wait { 2 } else { 20 })))
            .expect("timeout");
        stream.write_all(&bytes).expect("write");
        // Half-close: the listener sees the end of the stream after the frame.
        let _ = stream.shutdown(std::net::Shutdown::Write);
        // An answer or a close, never silence past the deadline.
        let mut sink = Vec::new();
        let read = stream.read_to_end(&mut sink);
        let silent = matches!(&read, Err(error) if error.kind() == std::io::ErrorKind::WouldBlock
            || error.kind() == std::io::ErrorKind::TimedOut);
        assert!(
            !silent || may_wait,
            "seed {seed} iteration {iteration}: API key {key}: no answer and no close within 20 s"
        );
        assert_eq!(
            panics.load(Ordering::SeqCst),
            0,
            "seed {seed} iteration {iteration}: a panic (see above) on {bytes:02x?}"
        );
        if iteration % 50 == 49 {
            assert!(
                api_versions_ok(address),
                "seed {seed} iteration {iteration}: listener stopped serving"
            );
        }
    }
    assert!(api_versions_ok(address));
    runtime.shutdown().expect("shutdown");
    assert_eq!(
        panics.load(Ordering::SeqCst),
        0,
        "seed {seed}: panics during shutdown"
    );
}
