//! The Kafka listener at the byte level, with a raw client written here:
//! what it advertises, how it refuses bad input (and keeps serving other
//! clients), produce validation, idempotent-producer sequences, and fetch
//! long polling. Real clients (kcat, confluent-kafka, kafka-python) are in
//! `tests/kafka_clients.rs`.

mod common;

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use millrace::config::{Config, KafkaConfig};
use millrace::runtime::Runtime;
use millrace::storage::batch::{encode_frame, ProducerFields, FRAME_HEADER_BYTES};
use millrace::types::{Offset, PartitionId, Record, Term};
use std::net::SocketAddr;
use std::time::Duration;

fn kafka_config(data_dir: &std::path::Path, max_connections: u32) -> Config {
    let mut config = common::config(data_dir, vec![common::topic("events", 2)]);
    config.kafka = Some(KafkaConfig {
        max_connections,
        request_max_bytes: 4 * 1024 * 1024,
        ..common::kafka::loopback()
    });
    config
}

fn start(max_connections: u32) -> (tempfile::TempDir, Runtime, SocketAddr) {
    let directory = tempfile::tempdir().expect("tempdir");
    let runtime = Runtime::start(kafka_config(directory.path(), max_connections)).expect("start");
    let address = runtime.kafka_address().expect("kafka listener on");
    (directory, runtime, address)
}

common::kafka::suite_client!(Client);

impl Client {
    fn api_versions(&mut self, version: i16) -> ApiVersionsResponse {
        let mut response =
            self.request(ApiKey::ApiVersions, version, &ApiVersionsRequest::default());
        ApiVersionsResponse::decode(&mut response, version).expect("api versions")
    }

    fn produce(&mut self, topic: &str, partition: i32, batch: Bytes) -> (i16, i64) {
        let request = ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(5000)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(partition)
                    .with_records(Some(batch))])]);
        let mut response = self.request(ApiKey::Produce, 9, &request);
        let response = ProduceResponse::decode(&mut response, 9).expect("produce response");
        let partition = &response.responses[0].partition_responses[0];
        (partition.error_code, partition.base_offset)
    }

    fn fetch(
        &mut self,
        partition: i32,
        offset: i64,
        max_wait_ms: i32,
    ) -> fetch_response::PartitionData {
        self.send_fetch(partition, offset, max_wait_ms);
        self.receive_fetch()
    }

    fn send_fetch(&mut self, partition: i32, offset: i64, max_wait_ms: i32) {
        let request = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(max_wait_ms)
            .with_min_bytes(1)
            .with_max_bytes(1024 * 1024)
            .with_topics(vec![FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_static_str("events")))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(partition)
                    .with_fetch_offset(offset)
                    .with_partition_max_bytes(1024 * 1024)])]);
        self.send(ApiKey::Fetch, 11, &request);
    }

    fn receive_fetch(&mut self) -> fetch_response::PartitionData {
        let mut response = self.receive(ApiKey::Fetch, 11);
        let mut response = FetchResponse::decode(&mut response, 11).expect("fetch response");
        response.responses.remove(0).partitions.remove(0)
    }
}

/// A RecordBatch v2 as a Kafka producer sends it.
fn batch(values: &[&str], producer: ProducerFields) -> Bytes {
    let records: Vec<Record> = values
        .iter()
        .map(|value| Record::new(value.as_bytes().to_vec()))
        .collect();
    let mut out = Vec::new();
    encode_frame(
        &mut out,
        Offset(0),
        Term(0),
        producer,
        &records,
        1_700_000_000_000,
    );
    Bytes::from(out.split_off(FRAME_HEADER_BYTES))
}

fn plain(values: &[&str]) -> Bytes {
    batch(values, ProducerFields::NONE)
}

fn stored_values(runtime: &Runtime, partition: u32) -> Vec<String> {
    common::read_partition(runtime, "events", PartitionId(partition))
        .into_iter()
        .map(|record| {
            String::from_utf8(record.value.map(|v| v.to_vec()).unwrap_or_default()).expect("utf8")
        })
        .collect()
}

#[test]
fn api_versions_advertises_exactly_what_is_served() {
    let (_directory, runtime, address) = start(16);
    let mut client = Client::connect(address);
    for version in [0, 3] {
        let response = client.api_versions(version);
        assert_eq!(response.error_code, 0);
        let advertised: Vec<(i16, i16, i16)> = response
            .api_keys
            .iter()
            .map(|api| (api.api_key, api.min_version, api.max_version))
            .collect();
        assert_eq!(
            advertised,
            millrace::kafka::versions::supported_api_versions()
        );
    }
    // A version newer than ours: answered at v0 with UNSUPPORTED_VERSION
    // and the list, so the client can pick (KIP-511).
    let mut raw = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(ApiKey::ApiVersions as i16)
        .with_request_api_version(99)
        .with_correlation_id(7)
        .encode(&mut raw, 1)
        .expect("header");
    let mut frame = (raw.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(&raw);
    client.send_raw(&frame);
    let mut response = client.read_frame().expect("an answer");
    assert_eq!(response.get_i32(), 7);
    let response = ApiVersionsResponse::decode(&mut response, 0).expect("v0 body");
    assert_eq!(response.error_code, 35, "UNSUPPORTED_VERSION");
    assert!(!response.api_keys.is_empty());
    runtime.shutdown().expect("shutdown");
}

#[test]
fn bad_frames_close_only_their_connection_and_the_server_keeps_serving() {
    let (_directory, runtime, address) = start(64);
    let mut healthy = Client::connect(address);
    assert_eq!(healthy.api_versions(3).error_code, 0);

    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage bytes", {
            let mut rng = common::XorShift::new(7);
            let mut bytes = vec![0u8, 0, 0, 40];
            bytes.extend((0..40).map(|_| rng.next_u64() as u8));
            bytes
        }),
        (
            "a huge declared length",
            0x7fff_fff0i32.to_be_bytes().to_vec(),
        ),
        ("a negative length", (-5i32).to_be_bytes().to_vec()),
        ("an unknown API key", {
            let mut bytes = 10i32.to_be_bytes().to_vec();
            bytes.extend_from_slice(&999i16.to_be_bytes());
            bytes.extend_from_slice(&0i16.to_be_bytes());
            bytes.extend_from_slice(&1i32.to_be_bytes());
            bytes.extend_from_slice(&[0, 0]);
            bytes
        }),
        ("an unsupported Produce version", {
            let mut bytes = 10i32.to_be_bytes().to_vec();
            bytes.extend_from_slice(&(ApiKey::Produce as i16).to_be_bytes());
            bytes.extend_from_slice(&1i16.to_be_bytes());
            bytes.extend_from_slice(&1i32.to_be_bytes());
            bytes.extend_from_slice(&[0, 0]);
            bytes
        }),
        ("a Metadata body that does not decode", {
            // Header fine, then an array declaring 2^30 topics in 3 bytes.
            let mut body = BytesMut::new();
            RequestHeader::default()
                .with_request_api_key(ApiKey::Metadata as i16)
                .with_request_api_version(4)
                .with_correlation_id(1)
                .encode(&mut body, 1)
                .expect("header");
            body.extend_from_slice(&(1i32 << 30).to_be_bytes());
            body.extend_from_slice(&[0, 1, 2]);
            let mut bytes = (body.len() as i32).to_be_bytes().to_vec();
            bytes.extend_from_slice(&body);
            bytes
        }),
    ];
    for (what, bytes) in cases {
        let mut bad = Client::connect(address);
        bad.send_raw(&bytes);
        assert!(
            bad.closed_by_server(),
            "{what}: the connection should be closed"
        );
        // Everyone else is still served, on an old and on a new connection.
        assert_eq!(healthy.api_versions(3).error_code, 0, "after {what}");
        assert_eq!(
            Client::connect(address).api_versions(0).error_code,
            0,
            "after {what}"
        );
    }

    // A truncated frame: the client stops halfway and closes its side.
    let mut truncated = Client::connect(address);
    truncated.send_raw(&100i32.to_be_bytes());
    truncated.send_raw(&[0u8; 50]);
    truncated
        .stream
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    assert!(truncated.closed_by_server());
    assert_eq!(healthy.api_versions(3).error_code, 0);

    let refused = runtime.metrics().kafka_requests_refused_total;
    assert!(refused >= 6, "refusals counted: {refused}");
    runtime.shutdown().expect("shutdown");
}

#[test]
fn connections_over_the_limit_are_closed_at_once() {
    let (_directory, runtime, address) = start(2);
    let mut first = Client::connect(address);
    let mut second = Client::connect(address);
    assert_eq!(first.api_versions(3).error_code, 0);
    assert_eq!(second.api_versions(3).error_code, 0);
    let mut third = Client::connect(address);
    assert!(
        third.closed_by_server(),
        "a third connection is over max_connections = 2"
    );
    // Closing one makes room again.
    drop(first);
    common::wait_until(Duration::from_secs(10), "a slot to free up", || {
        let mut client = Client::connect(address);
        client
            .stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        client.correlation_id += 1;
        let mut body = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(ApiKey::ApiVersions as i16)
            .with_request_api_version(0)
            .with_correlation_id(1)
            .encode(&mut body, 1)
            .expect("header");
        let mut frame = (body.len() as i32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        client.send_raw(&frame);
        client.read_frame().is_some()
    });
    assert_eq!(second.api_versions(3).error_code, 0);
    assert!(runtime.metrics().kafka_connections_refused_total >= 1);
    runtime.shutdown().expect("shutdown");
}

#[test]
fn produced_batches_are_validated_before_anything_is_stored() {
    let (_directory, runtime, address) = start(16);
    let mut client = Client::connect(address);
    assert_eq!(client.produce("events", 0, plain(&["a", "b"])), (0, 0));

    // One flipped bit in the records: Kafka's CRC no longer matches.
    let mut corrupt = plain(&["c"]).to_vec();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0x01;
    assert_eq!(
        client.produce("events", 0, Bytes::from(corrupt)).0,
        2,
        "CORRUPT_MESSAGE"
    );

    // Compressed (gzip bit set; CRC made valid so only the codec is wrong).
    let mut compressed = plain(&["d"]).to_vec();
    compressed[22] |= 0x01;
    let crc = crc32c::crc32c(&compressed[21..]);
    compressed[17..21].copy_from_slice(&crc.to_be_bytes());
    assert_eq!(
        client.produce("events", 0, Bytes::from(compressed)).0,
        76,
        "UNSUPPORTED_COMPRESSION_TYPE"
    );

    // A record count that the bytes do not hold.
    let mut lying = plain(&["e"]).to_vec();
    lying[57..61].copy_from_slice(&1000i32.to_be_bytes());
    lying[23..27].copy_from_slice(&999i32.to_be_bytes());
    let crc = crc32c::crc32c(&lying[21..]);
    lying[17..21].copy_from_slice(&crc.to_be_bytes());
    assert_ne!(client.produce("events", 0, Bytes::from(lying)).0, 0);

    // Truncated batch, unknown topic and partition, oversized batch.
    let whole = plain(&["f", "g"]);
    assert_ne!(
        client
            .produce("events", 0, whole.slice(..whole.len() - 3))
            .0,
        0
    );
    assert_eq!(
        client.produce("nope", 0, plain(&["h"])).0,
        3,
        "UNKNOWN_TOPIC_OR_PARTITION"
    );
    assert_eq!(
        client.produce("events", 9, plain(&["i"])).0,
        3,
        "UNKNOWN_TOPIC_OR_PARTITION"
    );
    // Over the topic's max_batch_bytes (1 MiB by default) but under the
    // request limit: refused as too large.
    let big = "x".repeat(600 * 1024);
    assert_eq!(
        client.produce("events", 0, plain(&[&big, &big])).0,
        10,
        "MESSAGE_TOO_LARGE"
    );

    // Two batches in one partition's records: Kafka takes exactly one.
    let mut two = plain(&["k"]).to_vec();
    two.extend_from_slice(&plain(&["l"]));
    assert_eq!(
        client.produce("events", 0, Bytes::from(two)).0,
        87,
        "INVALID_RECORD"
    );

    // Only the valid batch was stored, and the connection still works.
    assert_eq!(stored_values(&runtime, 0), vec!["a", "b"]);
    assert_eq!(client.produce("events", 0, plain(&["j"])), (0, 2));
    runtime.shutdown().expect("shutdown");
}

#[test]
fn an_idempotent_retry_gets_its_first_offsets_and_a_gap_is_refused() {
    let (_directory, runtime, address) = start(16);
    let mut client = Client::connect(address);
    let response = {
        let request = InitProducerIdRequest::default().with_transaction_timeout_ms(60_000);
        let mut body = client.request(ApiKey::InitProducerId, 4, &request);
        InitProducerIdResponse::decode(&mut body, 4).expect("init producer id")
    };
    assert_eq!(response.error_code, 0);
    let producer_id = response.producer_id.0;
    assert!(producer_id >= 0);
    let fields = |base_sequence| ProducerFields {
        producer_id,
        producer_epoch: response.producer_epoch,
        base_sequence,
    };
    assert_eq!(client.produce("events", 1, plain(&["noise"])), (0, 0));
    assert_eq!(
        client.produce("events", 1, batch(&["a", "b", "c"], fields(0))),
        (0, 1)
    );
    // The same batch again (a retry after a lost response): the same offsets, nothing stored.
    assert_eq!(
        client.produce("events", 1, batch(&["a", "b", "c"], fields(0))),
        (0, 1)
    );
    assert_eq!(
        client.produce("events", 1, batch(&["d"], fields(3))),
        (0, 4)
    );
    // A gap: sequence 5 where 4 is next.
    assert_eq!(
        client.produce("events", 1, batch(&["f"], fields(5))).0,
        45,
        "OUT_OF_ORDER_SEQUENCE_NUMBER"
    );
    // A second producer id is independent.
    let mut other = client.request(ApiKey::InitProducerId, 4, &InitProducerIdRequest::default());
    let other = InitProducerIdResponse::decode(&mut other, 4).expect("second id");
    assert_ne!(other.producer_id.0, producer_id);
    assert_eq!(
        stored_values(&runtime, 1),
        vec!["noise", "a", "b", "c", "d"]
    );
    runtime.shutdown().expect("shutdown");
}

#[test]
fn fetch_long_polls_and_serves_the_stored_batches_with_the_offsets() {
    let (_directory, runtime, address) = start(16);
    let mut producer_client = Client::connect(address);
    assert_eq!(
        producer_client.produce("events", 0, plain(&["one", "two"])),
        (0, 0)
    );
    let mut consumer = Client::connect(address);
    let part = consumer.fetch(0, 0, 100);
    assert_eq!(part.error_code, 0);
    assert_eq!(part.high_watermark, 2);
    assert_eq!(part.log_start_offset, 0);
    let records = part.records.expect("records");
    // The stored batch as it is: base offset 0, two records, Kafka's CRC valid.
    assert_eq!(
        i64::from_be_bytes(records[0..8].try_into().expect("8 bytes")),
        0
    );
    assert_eq!(
        i32::from_be_bytes(records[57..61].try_into().expect("4 bytes")),
        2
    );
    assert_eq!(
        u32::from_be_bytes(records[17..21].try_into().expect("4 bytes")),
        crc32c::crc32c(&records[21..])
    );

    // At the high watermark, a fetch waits for data: it is sent first, the
    // produce comes after, and the fetch's answer has the new batch
    // (without long polling it would have come back empty at once).
    consumer.send_fetch(0, 2, 20_000);
    assert_eq!(
        producer_client.produce("events", 0, plain(&["three"])),
        (0, 2)
    );
    let part = consumer.receive_fetch();
    assert_eq!(part.error_code, 0);
    let records = part.records.expect("records");
    assert!(
        !records.is_empty(),
        "the waiting fetch returns the new batch"
    );
    assert_eq!(
        i64::from_be_bytes(records[0..8].try_into().expect("8 bytes")),
        2
    );
    assert_eq!(part.high_watermark, 3);

    // Out of range offsets get OFFSET_OUT_OF_RANGE.
    assert_eq!(consumer.fetch(0, 50, 0).error_code, 1);
    runtime.shutdown().expect("shutdown");
}

#[test]
fn pipelined_produce_requests_keep_their_order_in_the_partition() {
    let (_directory, runtime, address) = start(16);
    let mut client = Client::connect(address);
    // Forty requests sent back to back before any answer is read, as a
    // client with several requests in flight does: the log must hold them
    // in the order they were sent, and each answer must say so.
    let values: Vec<String> = (0..40).map(|index| format!("request {index}")).collect();
    for value in &values {
        let request = ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(5000)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_static_str("events")))
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(plain(&[value, value])))])]);
        client.send(ApiKey::Produce, 9, &request);
    }
    for (index, _) in values.iter().enumerate() {
        client.correlation_id = index as i32 + 1;
        let mut body = client.receive(ApiKey::Produce, 9);
        let response = ProduceResponse::decode(&mut body, 9).expect("produce response");
        let partition = &response.responses[0].partition_responses[0];
        assert_eq!(
            (partition.error_code, partition.base_offset),
            (0, 2 * index as i64)
        );
    }
    let expected: Vec<String> = values
        .iter()
        .flat_map(|value| [value.clone(), value.clone()])
        .collect();
    assert_eq!(stored_values(&runtime, 0), expected);
    runtime.shutdown().expect("shutdown");
}

#[test]
fn an_idempotent_retry_after_a_restart_still_gets_its_first_offsets() {
    let directory = tempfile::tempdir().expect("tempdir");
    let producer_id;
    let fields = |producer_id, base_sequence| ProducerFields {
        producer_id,
        producer_epoch: 0,
        base_sequence,
    };
    {
        let runtime = Runtime::start(kafka_config(directory.path(), 16)).expect("start");
        let mut client = Client::connect(runtime.kafka_address().expect("listener"));
        let mut body = client.request(ApiKey::InitProducerId, 4, &InitProducerIdRequest::default());
        producer_id = InitProducerIdResponse::decode(&mut body, 4)
            .expect("id")
            .producer_id
            .0;
        assert_eq!(
            client.produce("events", 0, batch(&["a", "b"], fields(producer_id, 0))),
            (0, 0)
        );
        assert_eq!(
            client.produce("events", 0, batch(&["c"], fields(producer_id, 2))),
            (0, 2)
        );
        runtime.shutdown().expect("shutdown");
    }
    // The node restarts; the producer retries its last batch (its answer
    // was lost), then goes on.
    let runtime = Runtime::start(kafka_config(directory.path(), 16)).expect("restart");
    let mut client = Client::connect(runtime.kafka_address().expect("listener"));
    assert_eq!(
        client.produce("events", 0, batch(&["c"], fields(producer_id, 2))),
        (0, 2)
    );
    assert_eq!(
        client.produce("events", 0, batch(&["a", "b"], fields(producer_id, 0))),
        (0, 0)
    );
    assert_eq!(
        client
            .produce("events", 0, batch(&["e"], fields(producer_id, 4)))
            .0,
        45,
        "a gap"
    );
    assert_eq!(
        client.produce("events", 0, batch(&["d"], fields(producer_id, 3))),
        (0, 3)
    );
    // A producer id the partition has never seen may only start at 0.
    assert_eq!(
        client
            .produce("events", 0, batch(&["x"], fields(producer_id + 1000, 7)))
            .0,
        59
    );
    assert_eq!(stored_values(&runtime, 0), vec!["a", "b", "c", "d"]);
    runtime.shutdown().expect("shutdown");
}

#[test]
fn acks_zero_gets_no_response_but_is_stored() {
    let (_directory, runtime, address) = start(16);
    let mut client = Client::connect(address);
    let request = ProduceRequest::default()
        .with_acks(0)
        .with_timeout_ms(5000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_static_str("events")))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(1)
                .with_records(Some(plain(&["fire", "forget"])))])]);
    client.send(ApiKey::Produce, 9, &request);
    // The next frame on the connection answers the next request, not the produce.
    let mut body = client.request(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
    assert_eq!(
        ApiVersionsResponse::decode(&mut body, 3)
            .expect("api versions")
            .error_code,
        0
    );
    common::wait_until(
        Duration::from_secs(10),
        "the acks=0 batch to be stored",
        || {
            runtime
                .offsets_blocking("events", PartitionId(1))
                .expect("offsets")
                .high_watermark
                == Offset(2)
        },
    );
    assert_eq!(stored_values(&runtime, 1), vec!["fire", "forget"]);
    runtime.shutdown().expect("shutdown");
}
