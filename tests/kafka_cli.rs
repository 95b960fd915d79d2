//! `millrace produce --brokers` and `millrace consume --brokers` against a
//! running node's Kafka listener: the same acknowledgements, partitions and
//! output as the local (`-c`) mode, and group offsets through the listener.

mod common;

use millrace::runtime::Runtime;
use millrace::types::PartitionId;
use std::io::Write;
use std::process::{Command, Output, Stdio};

fn start() -> (tempfile::TempDir, Runtime, String) {
    let directory = tempfile::tempdir().expect("tempdir");
    let mut config = common::config(directory.path(), vec![common::topic("events", 3)]);
    config.kafka = Some(common::kafka::loopback());
    let runtime = Runtime::start(config).expect("start");
    let address = runtime.kafka_address().expect("listener").to_string();
    (directory, runtime, address)
}

fn millrace(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_millrace"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn millrace");
    let mut input = child.stdin.take().expect("stdin");
    let stdin = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let output = child.wait_with_output().expect("wait");
    writer.join().expect("writer");
    output
}

fn lines(output: &Output) -> Vec<String> {
    assert!(
        output.status.success(),
        "exit {:?}, stderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone())
        .expect("utf8")
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn produce_and_consume_over_the_kafka_protocol_match_the_log() {
    let (_directory, runtime, brokers) = start();
    let input: String = (0..3000)
        .map(|i| format!("key{}:value {i}\n", i % 17))
        .collect();
    let acks = lines(&millrace(
        &[
            "produce",
            "--brokers",
            &brokers,
            "-t",
            "events",
            "-K",
            ":",
            "--print-acks",
        ],
        input.as_bytes(),
    ));
    assert_eq!(acks.len(), 3000, "one ack per input line");

    // Every ack names where the record is, as the node's own log says.
    let mut stored = std::collections::HashMap::new();
    for partition in 0..3 {
        for record in common::read_partition(&runtime, "events", PartitionId(partition)) {
            let value = String::from_utf8(record.value.expect("value").to_vec()).expect("utf8");
            stored.insert((partition, record.offset.0), value);
        }
    }
    assert_eq!(stored.len(), 3000, "nothing lost, nothing stored twice");
    for (index, ack) in acks.iter().enumerate() {
        let (partition, offset) = ack.split_once(' ').expect("PARTITION OFFSET");
        let key = (
            partition.parse::<u32>().expect("partition"),
            offset.parse::<u64>().expect("offset"),
        );
        assert_eq!(stored[&key], format!("value {index}"), "ack {ack}");
        // Same partitioner as local mode: murmur2 of the key.
        let expected =
            millrace::partitioner::partition_for_key(format!("key{}", index % 17).as_bytes(), 3);
        assert_eq!(key.0, expected, "key{} on its partition", index % 17);
    }

    let consumed = lines(&millrace(
        &[
            "consume",
            "--brokers",
            &brokers,
            "-t",
            "events",
            "--from-beginning",
            "--until-end",
            "-f",
            "%p %o %k %v",
        ],
        b"",
    ));
    assert_eq!(consumed.len(), 3000);
    for line in &consumed {
        let mut parts = line.splitn(4, ' ');
        let partition: u32 = parts.next().expect("p").parse().expect("partition");
        let offset: u64 = parts.next().expect("o").parse().expect("offset");
        let _key = parts.next().expect("k");
        let value = parts.next().expect("v");
        assert_eq!(stored[&(partition, offset)], value);
    }
    runtime.shutdown().expect("shutdown");
}

#[test]
fn errors_over_the_kafka_protocol_are_one_line() {
    let (_directory, runtime, brokers) = start();
    let output = millrace(
        &[
            "consume",
            "--brokers",
            &brokers,
            "-t",
            "missing",
            "--until-end",
        ],
        b"",
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("\"missing\""), "names the topic: {stderr}");
    runtime.shutdown().expect("shutdown");
}
