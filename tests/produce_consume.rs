//! Produce and consume through the public API: volume, order, keys, batch
//! atomicity, offset errors, long polls, oversized batches, restarts, the
//! data directory lock and partition count changes.
//!
//! Each test says in its doc comment what it proves and which removal of a
//! feature would make it fail.

mod common;

use bytes::Bytes;
use common::{config, no_wait, read_partition, topic, value_of, wait_until};
use millrace::partitioner::partition_for_key;
use millrace::{
    AppendAck, FetchError, FetchOptions, Offset, PartitionId, ProduceError, Record, Runtime,
    StartError,
};
use std::collections::HashMap;
use std::future::Future;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// Five million records

const VOLUME_RECORDS: u64 = 5_000_000;
const VOLUME_BATCH_RECORDS: u64 = 1000;
const VOLUME_PARTITIONS: u32 = 4;
const VOLUME_PRODUCERS: u64 = 8;
const VALUE_BYTES: usize = 100;

/// A 100-byte value naming its producer, its partition and its sequence
/// number among that producer's records for that partition.
fn volume_value(producer: u64, partition: u32, sequence: u64) -> Bytes {
    let mut value = [b'.'; VALUE_BYTES];
    value[0] = b'0' + producer as u8;
    value[1] = b'0' + partition as u8;
    let mut rest = sequence;
    for index in (2..14).rev() {
        value[index] = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    Bytes::copy_from_slice(&value)
}

/// (producer, partition, sequence) of a [`volume_value`].
fn parse_volume_value(value: &[u8]) -> (u64, u32, u64) {
    assert_eq!(value.len(), VALUE_BYTES, "value length");
    let sequence = value[2..14]
        .iter()
        .fold(0u64, |number, digit| number * 10 + u64::from(digit - b'0'));
    (
        u64::from(value[0] - b'0'),
        u32::from(value[1] - b'0'),
        sequence,
    )
}

/// One acknowledged batch: where it went and what it held.
#[derive(Clone, Copy, Debug)]
struct SentBatch {
    ack: AppendAck,
    producer: u64,
    first_sequence: u64,
}

/// LESSONS.md 3 (the chronik bug lost 12-24% of a 5,000-message batch):
/// 5,000,000 records of 100 bytes, produced in batches of 1000 by 8
/// concurrent producers over 4 partitions, are all consumed: every partition
/// has consecutive offsets from 0 to its high watermark (no gap), every
/// acknowledged batch is found whole at exactly its acknowledged offsets
/// (atomic, no duplicate, nothing else interleaved), and each producer's
/// records appear in its sending order. Fails if fetch stops early, skips or
/// repeats records, if batches interleave, or if acks name wrong offsets.
#[test]
fn five_million_records_are_consumed_in_order_without_gaps_or_duplicates() {
    let directory = tempfile::tempdir().unwrap();
    let runtime = Runtime::start(config(
        directory.path(),
        vec![topic("volume", VOLUME_PARTITIONS)],
    ))
    .unwrap();
    let started = Instant::now();
    let batches_per_producer = VOLUME_RECORDS / VOLUME_BATCH_RECORDS / VOLUME_PRODUCERS;
    let mut sent: Vec<SentBatch> = std::thread::scope(|scope| {
        let runtime = &runtime;
        let producers: Vec<_> = (0..VOLUME_PRODUCERS)
            .map(|producer| {
                scope.spawn(move || {
                    let handle = runtime.producer("volume").unwrap();
                    let mut next_sequence = [0u64; VOLUME_PARTITIONS as usize];
                    let mut sent = Vec::new();
                    for batch in 0..batches_per_producer {
                        let partition = ((producer + batch) % u64::from(VOLUME_PARTITIONS)) as u32;
                        let first_sequence = next_sequence[partition as usize];
                        let records = (0..VOLUME_BATCH_RECORDS)
                            .map(|index| {
                                Record::new(volume_value(
                                    producer,
                                    partition,
                                    first_sequence + index,
                                ))
                            })
                            .collect();
                        let ack = handle
                            .send_batch_to_blocking(PartitionId(partition), records)
                            .unwrap_or_else(|error| {
                                panic!("producer {producer} batch {batch}: {error}")
                            });
                        assert_eq!(ack.partition, PartitionId(partition));
                        assert_eq!(
                            ack.last_offset.0 - ack.base_offset.0 + 1,
                            VOLUME_BATCH_RECORDS,
                            "a batch's acknowledged offsets are contiguous"
                        );
                        next_sequence[partition as usize] += VOLUME_BATCH_RECORDS;
                        sent.push(SentBatch {
                            ack,
                            producer,
                            first_sequence,
                        });
                    }
                    sent
                })
            })
            .collect();
        producers
            .into_iter()
            .flat_map(|producer| producer.join().expect("producer thread"))
            .collect()
    });
    let produced = started.elapsed();
    sent.sort_by_key(|batch| (batch.ack.partition, batch.ack.base_offset));

    let mut consumed_total = 0u64;
    for partition in 0..VOLUME_PARTITIONS {
        let batches: Vec<&SentBatch> = sent
            .iter()
            .filter(|batch| batch.ack.partition == PartitionId(partition))
            .collect();
        let offsets = runtime
            .offsets_blocking("volume", PartitionId(partition))
            .unwrap();
        let expected_end = batches.len() as u64 * VOLUME_BATCH_RECORDS;
        assert_eq!(offsets.log_start_offset, Offset(0));
        assert_eq!(offsets.high_watermark, Offset(expected_end));
        assert_eq!(offsets.log_end_offset, Offset(expected_end));

        let mut consumer = runtime
            .consumer("volume", PartitionId(partition), Offset(0))
            .unwrap();
        consumer.set_options(FetchOptions {
            max_bytes: 4 << 20,
            max_wait: Duration::ZERO,
        });
        let mut next_offset = 0u64;
        let mut next_sequence_of = [0u64; VOLUME_PRODUCERS as usize];
        let mut batch_index = 0usize;
        while next_offset < expected_end {
            let fetched = consumer
                .poll_blocking()
                .unwrap()
                .expect("not shutting down");
            assert!(
                !fetched.records.is_empty(),
                "partition {partition}: empty fetch at {next_offset} below the high watermark {expected_end}"
            );
            for record in &fetched.records {
                assert_eq!(
                    record.offset.0, next_offset,
                    "partition {partition}: offsets must be consecutive"
                );
                while batches[batch_index].ack.last_offset.0 < next_offset {
                    batch_index += 1;
                }
                let batch = batches[batch_index];
                assert!(batch.ack.base_offset.0 <= next_offset);
                let (producer, value_partition, sequence) = parse_volume_value(value_of(record));
                assert_eq!(value_partition, partition, "record in the wrong partition");
                assert_eq!(
                    (producer, sequence),
                    (
                        batch.producer,
                        batch.first_sequence + (next_offset - batch.ack.base_offset.0)
                    ),
                    "partition {partition} offset {next_offset}: not the record acknowledged there"
                );
                assert_eq!(
                    sequence, next_sequence_of[producer as usize],
                    "producer {producer}'s records out of order in partition {partition}"
                );
                next_sequence_of[producer as usize] += 1;
                next_offset += 1;
            }
            assert_eq!(consumer.position(), Offset(next_offset));
        }
        consumed_total += next_offset;
    }
    assert_eq!(consumed_total, VOLUME_RECORDS);
    let metrics = runtime.metrics();
    assert_eq!(metrics.records_produced_total, VOLUME_RECORDS);
    eprintln!(
        "5M records: produced in {produced:?}, produced and consumed in {:?}, {} fsyncs",
        started.elapsed(),
        metrics.fsyncs_total
    );
    runtime.shutdown().unwrap();
}

// ---------------------------------------------------------------------------
// Keys and batches

/// Keyed records go to `partition_for_key(key, partitions)`, both through
/// `send` and `send_batch`, the returned metadata names where each record
/// really is, and each key's records keep their sending order. Fails if the
/// producer partitions by anything else (round-robin, another hash), or if
/// `send_batch` maps records back to the wrong offsets.
#[test]
fn keyed_records_go_to_their_key_partition_in_order() {
    const PARTITIONS: u32 = 5;
    const KEYS_PER_THREAD: u64 = 20;
    const ROUNDS: u64 = 30;
    let directory = tempfile::tempdir().unwrap();
    let runtime =
        Runtime::start(config(directory.path(), vec![topic("keyed", PARTITIONS)])).unwrap();
    // Two threads with disjoint keys; each key's order is its thread's order.
    let placements: Vec<(String, u64, u32, u64)> = std::thread::scope(|scope| {
        let runtime = &runtime;
        let threads: Vec<_> = (0..2u64)
            .map(|thread| {
                scope.spawn(move || {
                    let producer = runtime.producer("keyed").unwrap();
                    let mut placed = Vec::new();
                    for round in 0..ROUNDS {
                        let keys: Vec<String> = (0..KEYS_PER_THREAD)
                            .map(|key| format!("user-{}", thread * 1000 + key))
                            .collect();
                        let records: Vec<Record> = keys
                            .iter()
                            .map(|key| Record::new(format!("{key}:{round}")).with_key(key.clone()))
                            .collect();
                        if round % 2 == 0 {
                            let metadata = producer.send_batch_blocking(records).unwrap();
                            for (key, metadata) in keys.iter().zip(metadata) {
                                placed.push((
                                    key.clone(),
                                    round,
                                    metadata.partition.0,
                                    metadata.offset.0,
                                ));
                            }
                        } else {
                            for (key, record) in keys.iter().zip(records) {
                                let metadata = producer.send_blocking(record).unwrap();
                                placed.push((
                                    key.clone(),
                                    round,
                                    metadata.partition.0,
                                    metadata.offset.0,
                                ));
                            }
                        }
                    }
                    placed
                })
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|thread| thread.join().unwrap())
            .collect()
    });

    let mut partitions_used = std::collections::HashSet::new();
    let logs: Vec<Vec<millrace::FetchedRecord>> = (0..PARTITIONS)
        .map(|partition| read_partition(&runtime, "keyed", PartitionId(partition)))
        .collect();
    for (key, round, partition, offset) in &placements {
        assert_eq!(
            *partition,
            partition_for_key(key.as_bytes(), PARTITIONS),
            "key {key} acknowledged on the wrong partition"
        );
        partitions_used.insert(*partition);
        let record = &logs[*partition as usize][*offset as usize];
        assert_eq!(record.key.as_deref(), Some(key.as_bytes()));
        assert_eq!(value_of(record), format!("{key}:{round}").as_bytes());
    }
    assert!(
        partitions_used.len() > 1,
        "keys should spread over partitions"
    );
    // Per key, rounds appear in order in the log.
    for (partition, log) in logs.iter().enumerate() {
        let mut last_round: HashMap<Vec<u8>, i64> = HashMap::new();
        for record in log {
            let key = record.key.clone().expect("keyed").to_vec();
            assert_eq!(
                partition_for_key(&key, PARTITIONS),
                partition as u32,
                "record in a partition its key does not hash to"
            );
            let value = String::from_utf8(value_of(record).to_vec()).unwrap();
            let round: i64 = value.rsplit(':').next().unwrap().parse().unwrap();
            let previous = last_round.insert(key, round).unwrap_or(-1);
            assert_eq!(round, previous + 1, "a key's records out of order: {value}");
        }
    }
    assert_eq!(
        logs.iter().map(Vec::len).sum::<usize>() as u64,
        2 * KEYS_PER_THREAD * ROUNDS
    );
    runtime.shutdown().unwrap();
}

/// A batch is atomic: with 4 threads sending batches of varied sizes to one
/// partition at once, each batch's acknowledged offsets are contiguous and
/// hold exactly that batch, in order, with no record of another batch in
/// between, and nothing else is stored. Fails if appends of concurrent
/// batches interleave or an ack names offsets other than where the batch is.
#[test]
fn concurrent_batches_are_atomic() {
    let directory = tempfile::tempdir().unwrap();
    let mut atomic = topic("atomic", 1);
    atomic.segment_bytes = 64 * 1024; // batches also straddle segment rolls
    let runtime = Runtime::start(config(directory.path(), vec![atomic])).unwrap();
    let sent: Vec<(AppendAck, Vec<String>)> = std::thread::scope(|scope| {
        let runtime = &runtime;
        let threads: Vec<_> = (0..4u64)
            .map(|thread| {
                scope.spawn(move || {
                    let producer = runtime.producer("atomic").unwrap();
                    let mut rng = common::XorShift::new(thread + 11);
                    (0..100)
                        .map(|batch| {
                            let size = 1 + rng.below(60);
                            let values: Vec<String> = (0..size)
                                .map(|index| format!("t{thread}-b{batch}-r{index}"))
                                .collect();
                            let records = values.iter().cloned().map(Record::new).collect();
                            let ack = producer
                                .send_batch_to_blocking(PartitionId(0), records)
                                .unwrap();
                            assert_eq!(ack.last_offset.0 - ack.base_offset.0 + 1, size);
                            (ack, values)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|thread| thread.join().unwrap())
            .collect()
    });
    let log = read_partition(&runtime, "atomic", PartitionId(0));
    let total: usize = sent.iter().map(|(_, values)| values.len()).sum();
    assert_eq!(
        log.len(),
        total,
        "exactly the acknowledged records are stored"
    );
    for (ack, values) in &sent {
        let stored: Vec<&[u8]> = log[ack.base_offset.0 as usize..=ack.last_offset.0 as usize]
            .iter()
            .map(value_of)
            .collect();
        let expected: Vec<&[u8]> = values.iter().map(|value| value.as_bytes()).collect();
        assert_eq!(stored, expected, "batch at {ack:?} is not stored whole");
    }
    runtime.shutdown().unwrap();
}

// ---------------------------------------------------------------------------
// Fetch

/// `OffsetOutOfRange` carries the valid range at both ends: past the high
/// watermark, and below the log start offset after retention removed the
/// oldest blocks; the high watermark itself is in range (an empty read).
/// Fails if out-of-range fetches return empty results or other errors, or
/// if the error's range is wrong.
#[test]
fn out_of_range_fetches_report_the_valid_range() {
    let directory = tempfile::tempdir().unwrap();
    let mut trimmed = topic("trimmed", 1);
    trimmed.segment_bytes = 4096;
    trimmed.retention_bytes = Some(8192);
    let runtime =
        Runtime::start(config(directory.path(), vec![topic("small", 1), trimmed])).unwrap();
    let small = runtime.producer("small").unwrap();
    small
        .send_batch_to_blocking(
            PartitionId(0),
            (0..10).map(|i| Record::new(format!("{i}"))).collect(),
        )
        .unwrap();
    let past_end = runtime.fetch_blocking("small", PartitionId(0), Offset(11), no_wait(1024));
    assert_eq!(
        past_end.unwrap_err(),
        FetchError::OffsetOutOfRange {
            requested: Offset(11),
            log_start_offset: Offset(0),
            high_watermark: Offset(10),
        }
    );
    let at_end = runtime
        .fetch_blocking("small", PartitionId(0), Offset(10), no_wait(1024))
        .unwrap();
    assert!(at_end.records.is_empty());
    assert_eq!(at_end.next_offset, Offset(10));
    assert_eq!(at_end.high_watermark, Offset(10));

    // Fill many 4 KiB segments; retention keeps about 8 KiB.
    let producer = runtime.producer("trimmed").unwrap();
    for batch in 0..60 {
        let records = (0..10)
            .map(|i| Record::new(format!("{batch:04}-{i:02}-{}", "x".repeat(80))))
            .collect();
        producer
            .send_batch_to_blocking(PartitionId(0), records)
            .unwrap();
    }
    wait_until(
        Duration::from_secs(10),
        "retention to move the log start",
        || {
            runtime
                .offsets_blocking("trimmed", PartitionId(0))
                .unwrap()
                .log_start_offset
                > Offset(0)
        },
    );
    let offsets = runtime.offsets_blocking("trimmed", PartitionId(0)).unwrap();
    let below_start = runtime.fetch_blocking("trimmed", PartitionId(0), Offset(0), no_wait(1024));
    assert_eq!(
        below_start.unwrap_err(),
        FetchError::OffsetOutOfRange {
            requested: Offset(0),
            log_start_offset: offsets.log_start_offset,
            high_watermark: Offset(600),
        }
    );
    // The start of the range is readable.
    let first = runtime
        .fetch_blocking(
            "trimmed",
            PartitionId(0),
            offsets.log_start_offset,
            no_wait(1024),
        )
        .unwrap();
    assert_eq!(first.records[0].offset, offsets.log_start_offset);
    assert_eq!(first.log_start_offset, offsets.log_start_offset);
    runtime.shutdown().unwrap();
}

/// Polls `future` once with a waker that does nothing.
fn poll_once<F: Future + Unpin>(future: &mut F) -> Poll<F::Output> {
    let mut context = Context::from_waker(std::task::Waker::noop());
    std::pin::Pin::new(future).poll(&mut context)
}

/// A fetch at the high watermark waits (long-polls) and returns as soon as a
/// produce makes data durable, long before its `max_wait`. The fetch is put
/// in the partition's mailbox before the produce (polling its future once
/// enqueues it), so the partition sees the fetch first: no sleep decides the
/// order. Fails if fetches at the end return empty at once, or only wake at
/// their timeout.
#[test]
fn a_fetch_at_the_high_watermark_waits_for_data() {
    let directory = tempfile::tempdir().unwrap();
    let runtime = Runtime::start(config(directory.path(), vec![topic("poll", 1)])).unwrap();
    let producer = runtime.producer("poll").unwrap();
    producer
        .send_batch_to_blocking(PartitionId(0), vec![Record::new("a"), Record::new("b")])
        .unwrap();
    let max_wait = Duration::from_secs(20);
    let options = FetchOptions {
        max_bytes: 1 << 20,
        max_wait,
    };
    let mut fetch = Box::pin(runtime.fetch("poll", PartitionId(0), Offset(2), options));
    assert!(poll_once(&mut fetch).is_pending(), "nothing to read yet");
    let started = Instant::now();
    let ack = producer
        .send_batch_to_blocking(PartitionId(0), vec![Record::new("wake")])
        .unwrap();
    assert_eq!(ack.base_offset, Offset(2));
    let result = futures_executor::block_on(fetch).unwrap();
    let waited = started.elapsed();
    let values: Vec<&[u8]> = result.records.iter().map(value_of).collect();
    assert_eq!(
        values,
        vec![b"wake".as_slice()],
        "the parked fetch returns the new record"
    );
    assert_eq!(result.records[0].offset, Offset(2));
    assert_eq!(result.next_offset, Offset(3));
    assert!(
        waited < max_wait / 2,
        "the fetch returned after {waited:?}: woken by its timeout, not by the data"
    );
    runtime.shutdown().unwrap();
}

/// One batch larger than `max_bytes` is still returned whole (a reader is
/// never stuck behind a big batch, and never gets part of one), starting
/// from any offset inside it; and `max_bytes` still stops the read at the
/// next batch. Fails if a fetch returns nothing or a partial batch when the
/// first batch exceeds `max_bytes`, or ignores `max_bytes` entirely.
#[test]
fn a_batch_larger_than_max_bytes_is_returned_whole() {
    let directory = tempfile::tempdir().unwrap();
    let runtime = Runtime::start(config(directory.path(), vec![topic("big", 1)])).unwrap();
    let producer = runtime.producer("big").unwrap();
    let big: Vec<Record> = (0..500)
        .map(|i| Record::new(format!("{i:03}{}", "v".repeat(97))))
        .collect();
    producer
        .send_batch_to_blocking(PartitionId(0), big)
        .unwrap();
    producer
        .send_batch_to_blocking(
            PartitionId(0),
            (0..10).map(|i| Record::new(format!("small-{i}"))).collect(),
        )
        .unwrap();

    let first = runtime
        .fetch_blocking("big", PartitionId(0), Offset(0), no_wait(1))
        .unwrap();
    assert_eq!(
        first.records.len(),
        500,
        "the whole first batch, and only it"
    );
    assert_eq!(first.next_offset, Offset(500));
    assert_eq!(
        first.records[499].value.as_deref(),
        Some(format!("499{}", "v".repeat(97)).as_bytes())
    );

    let middle = runtime
        .fetch_blocking("big", PartitionId(0), Offset(250), no_wait(1))
        .unwrap();
    assert_eq!(middle.records.first().map(|r| r.offset), Some(Offset(250)));
    assert_eq!(middle.records.len(), 250, "the rest of the batch");
    assert_eq!(middle.next_offset, Offset(500));

    let second = runtime
        .fetch_blocking("big", PartitionId(0), Offset(500), no_wait(1))
        .unwrap();
    assert_eq!(second.records.len(), 10);
    assert_eq!(second.next_offset, Offset(510));

    let all = runtime
        .fetch_blocking("big", PartitionId(0), Offset(0), no_wait(1 << 20))
        .unwrap();
    assert_eq!(all.records.len(), 510);
    runtime.shutdown().unwrap();
}

// ---------------------------------------------------------------------------
// Restarts, the lock, partition counts

fn produce_keyed(
    runtime: &Runtime,
    topic_name: &str,
    prefix: &str,
    count: usize,
) -> Vec<(u32, u64, String)> {
    let producer = runtime.producer(topic_name).unwrap();
    let records: Vec<Record> = (0..count)
        .map(|i| Record::new(format!("{prefix}-{i}")).with_key(format!("key-{}", i % 17)))
        .collect();
    producer
        .send_batch_blocking(records)
        .unwrap()
        .into_iter()
        .enumerate()
        .map(|(i, placed)| (placed.partition.0, placed.offset.0, format!("{prefix}-{i}")))
        .collect()
}

fn assert_present(runtime: &Runtime, topic_name: &str, placed: &[(u32, u64, String)]) {
    let partitions = runtime.partition_count(topic_name).unwrap();
    let logs: Vec<_> = (0..partitions)
        .map(|partition| read_partition(runtime, topic_name, PartitionId(partition)))
        .collect();
    for (partition, offset, value) in placed {
        let record = logs[*partition as usize]
            .get(*offset as usize)
            .unwrap_or_else(|| panic!("{partition}/{offset} missing after restart"));
        assert_eq!(value_of(record), value.as_bytes(), "{partition}/{offset}");
    }
}

/// Acknowledged data survives `shutdown` and a restart on the same data
/// directory, at the same offsets, and new produces continue after it (no
/// offset is reused). Fails if recovery loses, reorders or re-offsets data.
#[test]
fn data_survives_shutdown_and_restart() {
    let directory = tempfile::tempdir().unwrap();
    let make_config = || {
        let mut restart = topic("restart", 3);
        restart.segment_bytes = 8192; // sealed blocks and an active segment
        config(directory.path(), vec![restart])
    };
    let runtime = Runtime::start(make_config()).unwrap();
    let mut placed = produce_keyed(&runtime, "restart", "first", 2000);
    let ends: Vec<u64> = (0..3)
        .map(|p| {
            runtime
                .offsets_blocking("restart", PartitionId(p))
                .unwrap()
                .high_watermark
                .0
        })
        .collect();
    runtime.shutdown().unwrap();

    let runtime = Runtime::start(make_config()).unwrap();
    assert_present(&runtime, "restart", &placed);
    for (partition, end) in ends.iter().enumerate() {
        let offsets = runtime
            .offsets_blocking("restart", PartitionId(partition as u32))
            .unwrap();
        assert_eq!(offsets.high_watermark.0, *end);
        assert_eq!(offsets.log_end_offset.0, *end);
    }
    let more = produce_keyed(&runtime, "restart", "second", 500);
    for (partition, offset, _) in &more {
        assert!(
            *offset >= ends[*partition as usize],
            "offset {offset} reused after restart"
        );
    }
    placed.extend(more);
    runtime.shutdown().unwrap();

    let runtime = Runtime::start(make_config()).unwrap();
    assert_present(&runtime, "restart", &placed);
    runtime.shutdown().unwrap();
}

/// Dropping a runtime without calling `shutdown` loses nothing that was
/// acknowledged either. Fails if `Drop` skips stopping the writers, or
/// leaves the lock held (the restart would fail).
#[test]
fn data_survives_drop_without_shutdown() {
    let directory = tempfile::tempdir().unwrap();
    let make_config = || config(directory.path(), vec![topic("dropped", 2)]);
    let runtime = Runtime::start(make_config()).unwrap();
    let placed = produce_keyed(&runtime, "dropped", "kept", 1500);
    drop(runtime);
    let runtime = Runtime::start(make_config()).unwrap();
    assert_present(&runtime, "dropped", &placed);
    drop(runtime);
    let runtime = Runtime::start(make_config()).unwrap();
    assert_present(&runtime, "dropped", &placed);
    runtime.shutdown().unwrap();
}

/// A second runtime on a data directory in use gets `StartError::Locked`
/// naming the holder (this process), and starts once the first stopped.
/// Fails if two runtimes can share a directory.
#[test]
fn a_second_runtime_on_the_same_directory_is_refused() {
    let directory = tempfile::tempdir().unwrap();
    let make_config = || config(directory.path(), vec![topic("locked", 1)]);
    let first = Runtime::start(make_config()).unwrap();
    let error = match Runtime::start(make_config()) {
        Ok(_) => panic!("a second runtime started on a locked directory"),
        Err(error) => error,
    };
    let shown = error.to_string();
    match error {
        StartError::Locked {
            directory: locked,
            holder,
            ..
        } => {
            assert_eq!(locked, directory.path());
            assert_eq!(holder, format!("process {}", std::process::id()));
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    assert!(
        shown.contains(&format!("process {}", std::process::id())),
        "{shown}"
    );
    first.shutdown().unwrap();
    Runtime::start(make_config()).unwrap().shutdown().unwrap();
}

/// A topic's partition count can grow (old data stays where it was, new
/// keyed records hash over the new count) but never shrink: the start is
/// refused with an error naming the topic and both counts, and the refusal
/// changes nothing on disk. Fails if shrinking is accepted (keys would move
/// and data of removed partitions be orphaned) or growing is refused.
#[test]
fn partitions_can_grow_but_never_shrink() {
    let directory = tempfile::tempdir().unwrap();
    let with_partitions = |partitions| config(directory.path(), vec![topic("grow", partitions)]);
    let runtime = Runtime::start(with_partitions(2)).unwrap();
    let placed = produce_keyed(&runtime, "grow", "two", 300);
    runtime.shutdown().unwrap();

    let runtime = Runtime::start(with_partitions(3)).unwrap();
    assert_eq!(runtime.partition_count("grow"), Some(3));
    assert_present(&runtime, "grow", &placed);
    let grown = produce_keyed(&runtime, "grow", "three", 300);
    assert!(grown.iter().any(|(partition, _, _)| *partition == 2));
    for (partition, _, value) in &grown {
        let index: usize = value.rsplit('-').next().unwrap().parse().unwrap();
        let key = format!("key-{}", index % 17);
        assert_eq!(*partition, partition_for_key(key.as_bytes(), 3));
    }
    runtime.shutdown().unwrap();

    let error = match Runtime::start(with_partitions(2)) {
        Ok(_) => panic!("shrinking from 3 to 2 partitions was accepted"),
        Err(error) => error,
    };
    assert!(matches!(error, StartError::Metadata { .. }), "{error:?}");
    let shown = error.to_string();
    for piece in [
        "grow",
        "3 partitions on disk",
        "config says 2",
        "never removed",
    ] {
        assert!(shown.contains(piece), "{shown:?} should contain {piece:?}");
    }
    let runtime = Runtime::start(with_partitions(3)).unwrap();
    assert_present(&runtime, "grow", &placed);
    assert_present(&runtime, "grow", &grown);
    runtime.shutdown().unwrap();
}

/// Produce errors that are the caller's fault are refused without storing
/// anything: an empty batch, a batch over `max_batch_bytes`, an unknown
/// partition or topic.
#[test]
fn invalid_produces_are_refused_and_store_nothing() {
    let directory = tempfile::tempdir().unwrap();
    let mut limited = topic("limited", 2);
    limited.max_batch_bytes = 1024;
    let runtime = Runtime::start(config(directory.path(), vec![limited])).unwrap();
    let producer = runtime.producer("limited").unwrap();
    assert_eq!(
        producer.send_batch_to_blocking(PartitionId(0), Vec::new()),
        Err(ProduceError::Empty)
    );
    let too_large =
        producer.send_batch_to_blocking(PartitionId(0), vec![Record::new(vec![b'x'; 2000])]);
    assert!(
        matches!(too_large, Err(ProduceError::TooLarge { max: 1024, .. })),
        "{too_large:?}"
    );
    assert!(matches!(
        producer.send_batch_to_blocking(PartitionId(2), vec![Record::new("x")]),
        Err(ProduceError::UnknownPartition { partitions: 2, .. })
    ));
    assert!(matches!(
        runtime.producer("nope"),
        Err(ProduceError::UnknownTopic(_))
    ));
    for partition in 0..2 {
        let offsets = runtime
            .offsets_blocking("limited", PartitionId(partition))
            .unwrap();
        assert_eq!(
            offsets.log_end_offset,
            Offset(0),
            "a refused produce stored something"
        );
    }
    runtime.shutdown().unwrap();
}
