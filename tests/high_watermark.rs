//! The high watermark contract (LESSONS.md 3, the chronik bug: consumers
//! were told data existed before it was committed, and 12-24% of it was
//! never consumed), as a property over random concurrent workloads:
//!
//! - a fetch never returns an offset at or past the high watermark it
//!   reports, nor past the high watermark the partition reports (through
//!   `offsets`, a separate message, and through the metrics gauge) once the
//!   fetch has returned; the high watermark a fetch reports is at least the
//!   one observed before it started;
//! - every record a consumer saw was acknowledged to its producer at exactly
//!   that partition and offset, nothing acknowledged is missed by a consumer
//!   that reads to the end, and everything a consumer saw is still there
//!   after a restart (it was durable when it was served).
//!
//! A fetch bounded by the log end offset instead of the high watermark (or
//! reading bytes not yet reported durable) fails the first property as soon
//! as a consumer reads while a group commit is in flight. A high watermark
//! that itself runs ahead of fsync cannot be seen from here without slowing
//! fsync down: `faults.rs` (`records_are_not_served_before_their_fsync_completes`)
//! covers that, and `crash.rs` covers acknowledgements ahead of durability.

mod common;

use common::history::{History, SendOutcome};
use common::{config, topic, XorShift};
use millrace::config::FsyncPolicy;
use millrace::{FetchOptions, Offset, PartitionId, Record, Runtime};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, RngSeed};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

#[derive(Clone, Debug)]
struct Workload {
    partitions: u32,
    producers: u64,
    batches_per_producer: u64,
    batch_records_max: u64,
    consumers: u64,
    fsync_interval: bool,
    seed: u64,
}

fn workloads() -> impl Strategy<Value = Workload> {
    (
        1u32..=3,
        1u64..=3,
        10u64..=100,
        1u64..=50,
        1u64..=3,
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(
            |(
                partitions,
                producers,
                batches_per_producer,
                batch_records_max,
                consumers,
                fsync_interval,
                seed,
            )| {
                Workload {
                    partitions,
                    producers,
                    batches_per_producer,
                    batch_records_max,
                    consumers,
                    fsync_interval,
                    seed,
                }
            },
        )
}

const TOPIC: &str = "hw";

/// Reads every partition from offset 0 until the producers are done and it
/// has reached the final high watermark, checking each fetch against the
/// high watermarks observable around it. Returns (partition, offset, value).
fn consume_checking(
    runtime: &Runtime,
    partitions: u32,
    producers_done: &AtomicBool,
) -> Vec<(u32, u64, Vec<u8>)> {
    let mut positions = vec![Offset(0); partitions as usize];
    let mut seen = Vec::new();
    let options = FetchOptions {
        max_bytes: 2048, // several fetches per partition, some mid-commit
        max_wait: Duration::from_millis(5),
    };
    loop {
        let done = producers_done.load(Ordering::SeqCst);
        let mut at_end = true;
        for partition in 0..partitions {
            let id = PartitionId(partition);
            let position = positions[partition as usize];
            let before = runtime.offsets_blocking(TOPIC, id).unwrap();
            let fetched = runtime
                .fetch_blocking(TOPIC, id, position, options)
                .unwrap();
            let after = runtime.offsets_blocking(TOPIC, id).unwrap();
            let gauge = runtime.metrics().partitions[partition as usize].high_watermark;
            assert!(
                fetched.high_watermark >= before.high_watermark,
                "fetch reported high watermark {} below the {} observed before it",
                fetched.high_watermark,
                before.high_watermark
            );
            assert!(fetched.high_watermark <= after.high_watermark);
            assert!(after.high_watermark <= after.log_end_offset);
            let mut expected = position;
            for record in &fetched.records {
                assert_eq!(record.offset, expected, "consecutive offsets");
                assert!(
                    record.offset < fetched.high_watermark,
                    "offset {} served at or past the fetch's high watermark {}",
                    record.offset,
                    fetched.high_watermark
                );
                assert!(
                    record.offset < after.high_watermark && record.offset.0 < gauge,
                    "offset {} served past the partition's high watermark ({} by offsets, {gauge} by metrics)",
                    record.offset,
                    after.high_watermark
                );
                seen.push((
                    partition,
                    record.offset.0,
                    record.value.as_deref().unwrap().to_vec(),
                ));
                expected = expected.next();
            }
            assert_eq!(fetched.next_offset, expected);
            positions[partition as usize] = fetched.next_offset;
            at_end &= fetched.next_offset == after.high_watermark;
        }
        if done && at_end {
            return seen;
        }
    }
}

fn run_workload(workload: &Workload) {
    let directory = tempfile::tempdir().unwrap();
    let make_config = || {
        let mut hw = topic(TOPIC, workload.partitions);
        hw.segment_bytes = 8192;
        if workload.fsync_interval {
            hw.fsync = FsyncPolicy::Interval(Duration::from_millis(2));
        }
        config(directory.path(), vec![hw])
    };
    let runtime = Runtime::start(make_config()).unwrap();
    let history = Mutex::new(History::new());
    let producers_done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let (runtime, history, producers_done) = (&runtime, &history, &producers_done);
        let consumers: Vec<_> = (0..workload.consumers)
            .map(|_| {
                scope.spawn(move || consume_checking(runtime, workload.partitions, producers_done))
            })
            .collect();
        let producers: Vec<_> = (0..workload.producers)
            .map(|producer| {
                scope.spawn(move || {
                    let handle = runtime.producer(TOPIC).unwrap();
                    let mut rng =
                        XorShift::new(workload.seed ^ (producer + 1).wrapping_mul(0x9e37_79b9));
                    for batch in 0..workload.batches_per_producer {
                        let partition = rng.below(u64::from(workload.partitions)) as u32;
                        let size = 1 + rng.below(workload.batch_records_max);
                        let values: Vec<String> = (0..size)
                            .map(|index| format!("p{producer}-b{batch}-r{index}"))
                            .collect();
                        let records = values.iter().cloned().map(Record::new).collect();
                        let ack = handle
                            .send_batch_to_blocking(PartitionId(partition), records)
                            .unwrap();
                        let mut history = history.lock().unwrap();
                        for (index, value) in values.into_iter().enumerate() {
                            history.send(
                                value,
                                SendOutcome::Ok {
                                    partition,
                                    offset: ack.base_offset.0 + index as u64,
                                },
                            );
                        }
                    }
                })
            })
            .collect();
        for producer in producers {
            producer.join().expect("producer");
        }
        producers_done.store(true, Ordering::SeqCst);
        for consumer in consumers {
            // Each consumer read everything: check its view on its own.
            let seen = consumer.join().expect("consumer");
            let mut history = history.lock().unwrap();
            history.clear_polls();
            for (partition, offset, value) in seen {
                history.poll(partition, offset, value);
            }
            history
                .check()
                .assert_valid("a consumer's view while producing");
        }
    });
    runtime.shutdown().unwrap();

    // Everything that was served (all of it was acknowledged, checked above)
    // is still there after a restart.
    let runtime = Runtime::start(make_config()).unwrap();
    let mut history = history.into_inner().unwrap();
    history.clear_polls();
    for partition in 0..workload.partitions {
        for record in common::read_partition(&runtime, TOPIC, PartitionId(partition)) {
            history.poll(
                partition,
                record.offset.0,
                common::value_of(&record).to_vec(),
            );
        }
    }
    let report = history.check();
    report.assert_valid("the log after restart");
    eprintln!("{workload:?}: {report}");
    runtime.shutdown().unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 16,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(0x6d69_6c6c_7261_6365),
        ..ProptestConfig::default()
    })]

    #[test]
    fn fetches_never_pass_the_high_watermark(workload in workloads()) {
        run_workload(&workload);
    }
}
