//! `Runtime::offset_for_timestamp` (Kafka's ListOffsets by time) through the
//! public API: the earliest offset whose timestamp is at or after T, or the
//! high watermark; with timestamps that go backwards; across many sealed
//! blocks and the active segment; and after a restart, while the blocks
//! older than the hot window are still loading in the background.

mod common;

use common::timed::{self, TimedSpec, TimedStore, DAY_MS, HOUR_MS, SEGMENT_BYTES};
use common::{config, wait_until, XorShift};
use millrace::config::TopicConfig;
use millrace::health::LoadState;
use millrace::{FetchError, Offset, PartitionId, Record, Runtime};
use std::time::Duration;

/// The answer by definition: the first offset (in offset order) below the
/// high watermark whose timestamp reaches `timestamp_ms`, else the high
/// watermark.
fn model(timestamps: &[i64], high_watermark: u64, timestamp_ms: i64) -> Offset {
    timestamps
        .iter()
        .take(high_watermark as usize)
        .position(|ts| *ts >= timestamp_ms)
        .map_or(Offset(high_watermark), |offset| Offset(offset as u64))
}

/// Each timestamp, one below and one above it, and both ends.
fn probes(timestamps: &[i64]) -> Vec<i64> {
    let mut probes: Vec<i64> = timestamps
        .iter()
        .flat_map(|ts| [ts - 1, *ts, ts + 1])
        .collect();
    probes.extend([i64::MIN, 0, i64::MAX]);
    probes
}

/// Two partitions of seeded, often out-of-order timestamps over 8 KiB
/// segments (many sealed blocks): every probe answers as the model says,
/// including exact times, times between batches, before the start (the
/// first offset) and after the end (the high watermark); a record produced
/// later is found; unknown topics and partitions are final errors.
#[test]
fn lookups_by_time_follow_the_earliest_offset_rule_across_blocks_and_partitions() {
    let directory = tempfile::tempdir().unwrap();
    let topic = TopicConfig {
        partitions: 2,
        segment_bytes: SEGMENT_BYTES,
        ..TopicConfig::with_defaults("readings")
    };
    let runtime = Runtime::start(config(directory.path(), vec![topic])).unwrap();
    let producer = runtime.producer("readings").unwrap();
    let mut random = XorShift::new(17);
    let mut timestamps: Vec<Vec<i64>> = vec![Vec::new(), Vec::new()];
    let base_ms = 1_700_000_000_000i64;
    for batch in 0..150 {
        let partition = batch % 2;
        let records: Vec<Record> = (0..1 + random.below(6))
            .map(|_| {
                let position = timestamps[partition].len() as i64;
                // Rising by 1 s per record, jittered by up to ±20 s: later
                // records are often older than earlier ones.
                let ts = base_ms + position * 1_000 + random.below(40_000) as i64 - 20_000;
                timestamps[partition].push(ts);
                Record::new(vec![b'x'; 150]).with_timestamp_ms(ts)
            })
            .collect();
        producer
            .send_batch_to_blocking(PartitionId(partition as u32), records)
            .unwrap();
    }
    for (partition, times) in timestamps.iter().enumerate() {
        let partition = PartitionId(partition as u32);
        let high_watermark = runtime
            .offsets_blocking("readings", partition)
            .unwrap()
            .high_watermark;
        assert_eq!(high_watermark.0, times.len() as u64);
        let directory = common::partition_directory(directory.path(), "readings", partition.0);
        assert!(
            common::files_ending(&directory, ".log").len() >= 3,
            "the fixture spans several sealed blocks"
        );
        let mut out_of_order_answers = 0;
        for probe in probes(times) {
            let expected = model(times, high_watermark.0, probe);
            let answer = runtime
                .offset_for_timestamp_blocking("readings", partition, probe)
                .unwrap_or_else(|error| panic!("{partition} at {probe}: {error}"));
            assert_eq!(answer, expected, "partition {partition}, timestamp {probe}");
            // Count answers a "smallest timestamp reaching T" rule would get wrong.
            if let Some(smallest) = times.iter().filter(|ts| **ts >= probe).min() {
                if times[answer.0 as usize] != *smallest {
                    out_of_order_answers += 1;
                }
            }
        }
        assert!(
            out_of_order_answers > 0,
            "the fixture must have timestamps that go backwards"
        );
        assert_eq!(
            runtime.offset_for_timestamp_blocking("readings", partition, i64::MIN),
            Ok(Offset(0))
        );
        assert_eq!(
            runtime.offset_for_timestamp_blocking("readings", partition, i64::MAX),
            Ok(high_watermark)
        );
    }

    // A record produced after the lookup at the end is what the same time finds next.
    let future_ms = base_ms + 10 * DAY_MS;
    let end = futures_executor::block_on(runtime.offset_for_timestamp(
        "readings",
        PartitionId(1),
        future_ms,
    ))
    .unwrap();
    let ack = producer
        .send_batch_to_blocking(
            PartitionId(1),
            vec![Record::new("late").with_timestamp_ms(future_ms)],
        )
        .unwrap();
    assert_eq!(ack.base_offset, end);
    assert_eq!(
        runtime.offset_for_timestamp_blocking("readings", PartitionId(1), future_ms),
        Ok(end)
    );

    assert_eq!(
        runtime.offset_for_timestamp_blocking("nope", PartitionId(0), 0),
        Err(FetchError::UnknownTopic("nope".to_owned()))
    );
    assert!(matches!(
        runtime.offset_for_timestamp_blocking("readings", PartitionId(2), 0),
        Err(FetchError::UnknownPartition { partitions: 2, .. })
    ));
    runtime.shutdown().unwrap();
}

/// After a restart with a 24 h hot window over 14 days of data (most
/// blocks cold, loaded slowly in the background): a time inside the hot
/// window is answered while the background load is still running (the cold
/// blocks are passed over on their verified indexes); a time inside the
/// cold region answers `Loading` until its blocks are in, then the right
/// offset; once the load is complete every probe matches the model.
///
/// Catches: a lookup that waits for the whole load (the hot lookup would
/// come after `Complete`), one that skips unloaded blocks without proof (the
/// cold lookup would answer an offset in the hot window instead of
/// `Loading`), and a background load that does nothing (the cold lookup
/// never succeeds).
#[test]
fn after_a_restart_hot_times_answer_during_the_background_load_and_cold_times_after_it() {
    let directory = tempfile::tempdir().unwrap();
    let store = TimedStore::build(
        directory.path(),
        "history",
        TimedSpec {
            cold_records: 2_400,
            hot_records: 200,
            value_bytes: 200,
            records_per_batch: 8,
        },
    );
    let cold = store.cold_blocks();
    assert!(
        cold.len() >= 4 * store.hot_blocks().len(),
        "most blocks are cold"
    );
    let cold_bytes: u64 = cold.iter().map(|block| block.size_bytes).sum();
    let timestamps: Vec<i64> = store.records.iter().map(|r| r.timestamp_ms).collect();
    let total = timestamps.len() as u64;

    // About 3 s for the cold blocks.
    let runtime = Runtime::start(timed::timed_config(
        directory.path(),
        &store.topic,
        timed::startup(Some(cold_bytes / 3)),
    ))
    .unwrap();
    let load = |runtime: &Runtime| runtime.health().partitions[0].load.clone();
    wait_until(Duration::from_secs(10), "the hot load ends", || {
        load(&runtime) != LoadState::WaitingForHotLoad
    });

    let hot_time = store.now_ms - 12 * HOUR_MS;
    let cutoff = store.now_ms - timed::HOT_WINDOW.as_millis() as i64;
    let cold_time = store.now_ms - 10 * DAY_MS;
    let hot_answer = runtime.offset_for_timestamp_blocking(&store.topic, PartitionId(0), hot_time);
    let cutoff_answer = runtime.offset_for_timestamp_blocking(&store.topic, PartitionId(0), cutoff);
    let cold_answer =
        runtime.offset_for_timestamp_blocking(&store.topic, PartitionId(0), cold_time);
    assert!(
        matches!(load(&runtime), LoadState::Loading(_)),
        "these lookups ran during the background load"
    );
    assert_eq!(hot_answer, Ok(model(&timestamps, total, hot_time)));
    assert_eq!(cutoff_answer, Ok(model(&timestamps, total, cutoff)));
    assert_eq!(
        cutoff_answer,
        Ok(Offset(store.records.len() as u64 - 200)),
        "the window starts at the first hot record"
    );
    let cold_expected = model(&timestamps, total, cold_time);
    match cold_answer {
        Err(FetchError::Loading {
            block_base_offset, ..
        }) => {
            assert!(
                block_base_offset <= cold_expected,
                "the block named may hold the answer: {block_base_offset} vs {cold_expected}"
            );
        }
        other => panic!("a cold time must be loading, got {other:?}"),
    }
    // Retried, it is answered once its blocks are in.
    wait_until(
        Duration::from_secs(20),
        "the cold lookup answers",
        || match runtime.offset_for_timestamp_blocking(&store.topic, PartitionId(0), cold_time) {
            Ok(offset) => {
                assert_eq!(offset, cold_expected);
                true
            }
            Err(FetchError::Loading { .. }) => false,
            Err(other) => panic!("cold lookup: {other}"),
        },
    );
    wait_until(Duration::from_secs(20), "the load completes", || {
        load(&runtime).is_terminal()
    });
    assert!(matches!(load(&runtime), LoadState::Complete { .. }));
    for probe in probes(&timestamps).into_iter().step_by(7) {
        assert_eq!(
            runtime.offset_for_timestamp_blocking(&store.topic, PartitionId(0), probe),
            Ok(model(&timestamps, total, probe)),
            "timestamp {probe}"
        );
    }
    runtime.shutdown().unwrap();
}
