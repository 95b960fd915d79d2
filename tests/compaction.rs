//! Key compaction through the public API: `Runtime::compact_blocking`, reads
//! with `fetch_blocking`, `metrics()`, and the `millrace compact` CLI.
//!
//! Every record here is self-checking (`common::keyed`): its value carries
//! its key, a per-key sequence number and a CRC-32C, so a reader can tell a
//! torn, misplaced or mixed read from a good one without knowing the model.
//!
//! Each test names, in its doc comment, the removal it catches.

mod common;

use common::keyed::{
    active_segment_base, check_keyed, keyed_value, now_ms, read_all, read_range, Model,
};
use common::{files_ending, partition_directory, wait_until, XorShift};
use millrace::config::{CleanupPolicy, Config, TopicConfig};
use millrace::runtime::PartitionCompaction;
use millrace::{FetchedRecord, Offset, PartitionId, Record, Runtime};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The smallest segment: many sealed blocks from little data.
const SEGMENT_BYTES: u64 = 4 * 1024;
const HOUR: Duration = Duration::from_secs(60 * 60);
/// How long a test waits for the runtime to reach a state.
const DEADLINE: Duration = Duration::from_secs(30);

/// A compacted topic with 4 KiB segments.
fn compacted_topic(name: &str, cleanup: CleanupPolicy) -> TopicConfig {
    TopicConfig {
        segment_bytes: SEGMENT_BYTES,
        cleanup,
        delete_retention: HOUR,
        ..TopicConfig::with_defaults(name)
    }
}

/// A config whose compactor never runs on its own schedule during a test
/// (interval 1 day): every run here is one the test asked for.
fn config_with(data_dir: &Path, topics: Vec<TopicConfig>) -> Config {
    let mut config = common::config(data_dir, topics);
    config.compactor.interval = Duration::from_secs(24 * 60 * 60);
    config
}

fn record(key: &str, value: Option<Vec<u8>>, timestamp_ms: i64) -> Record {
    Record {
        key: Some(key.to_owned().into()),
        value: value.map(Into::into),
        headers: Vec::new(),
        timestamp_ms: Some(timestamp_ms),
    }
}

/// Produces `records` to partition 0 as one batch and adds them to `model`.
fn produce(runtime: &Runtime, topic: &str, records: Vec<Record>, model: &mut Model) {
    let producer = runtime.producer(topic).unwrap();
    let ack = producer
        .send_batch_to_blocking(PartitionId(0), records.clone())
        .unwrap_or_else(|error| panic!("produce to {topic}: {error}"));
    for (index, record) in records.into_iter().enumerate() {
        let key = std::str::from_utf8(record.key.as_deref().unwrap()).unwrap();
        model.record(
            key,
            ack.base_offset.0 + index as u64,
            record.value.map(|value| value.to_vec()),
            record.timestamp_ms.unwrap(),
        );
    }
}

/// Produces records with unique keys (`filler-…`, never superseded) until
/// every offset below `offset` lies in a sealed block, so compaction sees it.
fn seal_through(runtime: &Runtime, data_dir: &Path, topic: &str, offset: u64, model: &mut Model) {
    let directory = partition_directory(data_dir, topic, 0);
    let mut filler = model.produced.len() as u64;
    while active_segment_base(&directory) <= offset {
        let batch = (0..10)
            .map(|_| {
                filler += 1;
                let key = format!("filler-{filler}");
                record(&key, Some(keyed_value(&key, 0, 60)), now_ms())
            })
            .collect();
        produce(runtime, topic, batch, model);
    }
}

/// 24,000 small keyed records in batches of 500, keys cycling over `keys`.
fn produce_over_keys(runtime: &Runtime, topic: &str, keys: u64, model: &mut Model) {
    for chunk in 0..48u64 {
        let batch = (0..500)
            .map(|index| {
                let sequence = chunk * 500 + index;
                let key = format!("k{}", sequence % keys);
                record(&key, Some(keyed_value(&key, sequence, 10)), now_ms())
            })
            .collect();
        produce(runtime, topic, batch, model);
    }
}

/// The single outcome of compacting a one-partition topic.
fn compact_one(runtime: &Runtime, topic: &str) -> PartitionCompaction {
    let summary = runtime
        .compact_blocking(topic)
        .unwrap_or_else(|| panic!("{topic} is a compacted topic"));
    assert_eq!(summary.topic, topic);
    assert_eq!(summary.partitions.len(), 1, "{summary:?}");
    summary.partitions[0].1.clone()
}

fn assert_compacted(outcome: &PartitionCompaction) -> (u64, u64, u64, u64) {
    match outcome {
        PartitionCompaction::Compacted {
            bytes_before,
            bytes_after,
            records_before,
            records_after,
            ..
        } => (*bytes_before, *bytes_after, *records_before, *records_after),
        other => panic!("expected Compacted, got {other:?}"),
    }
}

fn read_everything(runtime: &Runtime, topic: &str) -> Vec<FetchedRecord> {
    read_all(runtime, topic, PartitionId(0), 64 * 1024).unwrap_or_else(|error| panic!("{error}"))
}

/// Files a run leaves only while it is in flight or after a crash.
fn run_leftovers(directory: &Path) -> Vec<String> {
    [".cleaned", ".swap", ".deleted", ".tmp"]
        .iter()
        .flat_map(|suffix| files_ending(directory, suffix))
        .collect()
}

// ---------------------------------------------------------------------------
// 100 compactions under concurrent readers

/// One writer's keys: `w{writer}-k{index}`.
fn writer_key(writer: usize, index: u64) -> String {
    format!("w{writer}-k{index:02}")
}

const WRITERS: usize = 2;
const READERS: usize = 3;
const KEYS_PER_WRITER: u64 = 40;
const COMPACTIONS: usize = 100;
/// Batches (1 to 6 records) each writer may send per compaction.
const BATCHES_PER_COMPACTION: u64 = 15;

/// 100 compactions while two writers keep overwriting keys and three readers
/// read the partition from offset 0 to the high watermark over and over.
/// Every record a reader sees must check (its key, its sequence number, its
/// CRC), offsets strictly increase within a pass, a key's sequence numbers
/// never go backwards within a pass. No fetch may fail. (Across passes a
/// key may legitimately vanish from `[0, high watermark at the pass start)`:
/// a newer value written after the pass began supersedes it. So the
/// no-lost-latest check is made once the writers stop: every key's last
/// acknowledged value must be there.) Readers fetch 2 KiB at a time, so
/// a pass spans many fetches and swaps land between them.
///
/// Catches: swapping the block map before the new files are complete, or in
/// more than one step (a reader pairs an index with the wrong file: CRC,
/// checksum or offset errors); renumbering offsets (sequence regressions);
/// deleting old files while a reader's plan still holds them (read errors);
/// dropping a key's latest record (the final check).
#[test]
fn a_hundred_compactions_under_concurrent_readers_never_show_a_mixed_state() {
    let directory = tempfile::tempdir().unwrap();
    let runtime = Arc::new(
        Runtime::start(config_with(
            directory.path(),
            vec![compacted_topic("live", CleanupPolicy::Compact)],
        ))
        .unwrap(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let passes_total = Arc::new(AtomicU64::new(0));
    let compactions_done = Arc::new(AtomicU64::new(0));

    // Writers: each owns its keys and a sequence counter, so a key's
    // sequence numbers increase with its offsets.
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let runtime = Arc::clone(&runtime);
            let stop = Arc::clone(&stop);
            let errors = Arc::clone(&errors);
            let compactions_done = Arc::clone(&compactions_done);
            std::thread::spawn(move || {
                let producer = runtime.producer("live").unwrap();
                let mut random = XorShift::new(0x5eed + writer as u64);
                let mut sequence = 0u64;
                let mut batches = 0u64;
                let mut last: HashMap<String, u64> = HashMap::new();
                while !stop.load(Ordering::Relaxed) {
                    // Flow control, not ordering: at most BATCHES_PER_COMPACTION
                    // batches per writer per compaction, so the log stays
                    // small (a debug build otherwise outruns the compactor
                    // and every reader pass grows without bound).
                    let allowed =
                        (compactions_done.load(Ordering::Relaxed) + 1) * BATCHES_PER_COMPACTION;
                    if batches >= allowed {
                        std::thread::sleep(Duration::from_millis(1));
                        continue;
                    }
                    batches += 1;
                    let batch: Vec<Record> = (0..1 + random.below(6))
                        .map(|_| {
                            sequence += 1;
                            let key = writer_key(writer, random.below(KEYS_PER_WRITER));
                            last.insert(key.clone(), sequence);
                            Record::new(keyed_value(&key, sequence, 40 + random.below(60) as usize))
                                .with_key(key)
                        })
                        .collect();
                    if let Err(error) = producer.send_batch_to_blocking(PartitionId(0), batch) {
                        errors
                            .lock()
                            .unwrap()
                            .push(format!("writer {writer}: {error}"));
                        break;
                    }
                }
                last
            })
        })
        .collect();

    let readers: Vec<_> = (0..READERS)
        .map(|reader| {
            let runtime = Arc::clone(&runtime);
            let stop = Arc::clone(&stop);
            let errors = Arc::clone(&errors);
            let passes_total = Arc::clone(&passes_total);
            std::thread::spawn(move || {
                let mut passes = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    match reader_pass(&runtime) {
                        Ok(()) => {
                            passes += 1;
                            passes_total.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(error) => {
                            errors
                                .lock()
                                .unwrap()
                                .push(format!("reader {reader}, pass {passes}: {error}"));
                            break;
                        }
                    }
                }
                passes
            })
        })
        .collect();

    // Compact until 100 runs swapped new blocks in. A run may find nothing
    // to do while a seal is in flight; any other outcome is a failure.
    let mut compacted = 0;
    let mut nothing_to_do = 0;
    let mut passes_at_compaction = Vec::new();
    let started = std::time::Instant::now();
    while compacted < COMPACTIONS && errors.lock().unwrap().is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "only {compacted} compactions in 180 s ({nothing_to_do} found nothing to do)"
        );
        match compact_within_deadline(&runtime) {
            PartitionCompaction::Compacted { .. } => {
                compacted += 1;
                compactions_done.fetch_add(1, Ordering::Relaxed);
                passes_at_compaction.push(passes_total.load(Ordering::Relaxed));
            }
            PartitionCompaction::NothingToDo => nothing_to_do += 1,
            other => panic!("compaction {compacted}: {other:?}"),
        }
    }
    // The readers must have been reading throughout, not just at the start
    // or the end: passes completed during the second half of the runs.
    let half = passes_at_compaction
        .get(COMPACTIONS / 2)
        .copied()
        .unwrap_or(0);
    wait_until(DEADLINE, "reader passes after the last compaction", || {
        passes_total.load(Ordering::Relaxed)
            > passes_at_compaction.last().copied().unwrap_or(0) + READERS as u64
            || !errors.lock().unwrap().is_empty()
    });
    stop.store(true, Ordering::Relaxed);
    let last_sequences: Vec<HashMap<String, u64>> = writers
        .into_iter()
        .map(|writer| writer.join().unwrap())
        .collect();
    let passes: Vec<u64> = readers
        .into_iter()
        .map(|reader| reader.join().unwrap())
        .collect();
    let errors = errors.lock().unwrap().clone();
    assert!(errors.is_empty(), "errors: {errors:#?}");
    assert!(
        passes_at_compaction.last().unwrap() > &half,
        "readers made no progress during the second half of the compactions"
    );
    assert!(
        passes.iter().all(|count| *count >= 5),
        "each reader must complete several passes: {passes:?}"
    );

    // The end state: every key's newest acknowledged value is there, once
    // per key in the sealed part, and every record checks.
    let records = read_everything(&runtime, "live");
    let mut newest: HashMap<String, u64> = HashMap::new();
    for record in &records {
        let (key, sequence) = check_keyed(record).unwrap();
        newest.insert(key, sequence.unwrap());
    }
    for last in &last_sequences {
        for (key, sequence) in last {
            assert_eq!(newest.get(key), Some(sequence), "latest value of {key}");
        }
    }
    let metrics = runtime.metrics();
    assert!(metrics.compaction_runs_total >= COMPACTIONS as u64);
    assert_eq!(metrics.compaction_failures_total, 0);
    eprintln!(
        "{compacted} compactions ({nothing_to_do} found nothing to do), reader passes {passes:?}"
    );
    Arc::try_unwrap(runtime)
        .ok()
        .expect("threads joined")
        .shutdown()
        .unwrap();
    assert_eq!(
        run_leftovers(&partition_directory(directory.path(), "live", 0)),
        Vec::<String>::new()
    );
}

/// `compact_blocking("live")` on a helper thread, so a compactor that never
/// answers fails the test (after 60 s) instead of hanging it.
fn compact_within_deadline(runtime: &Arc<Runtime>) -> PartitionCompaction {
    let (sender, receiver) = std::sync::mpsc::channel();
    let runtime = Arc::clone(runtime);
    std::thread::spawn(move || {
        let _ = sender.send(compact_one(&runtime, "live"));
    });
    receiver
        .recv_timeout(Duration::from_secs(60))
        .expect("compact_blocking did not return within 60 s: the compactor is stuck")
}

/// One pass from offset 0 to the current high watermark, 2 KiB per fetch.
fn reader_pass(runtime: &Runtime) -> Result<(), String> {
    let high_watermark = runtime
        .offsets_blocking("live", PartitionId(0))
        .map_err(|error| error.to_string())?
        .high_watermark;
    let records = read_range(
        runtime,
        "live",
        PartitionId(0),
        Offset(0),
        high_watermark,
        2048,
    )?;
    let mut in_pass: HashMap<String, u64> = HashMap::new();
    for record in &records {
        let (key, sequence) = check_keyed(record)?;
        let sequence =
            sequence.ok_or_else(|| format!("unexpected tombstone at {}", record.offset))?;
        if let Some(previous) = in_pass.insert(key.clone(), sequence) {
            if sequence <= previous {
                return Err(format!(
                    "key {key}: sequence {sequence} at offset {} after {previous} in one pass",
                    record.offset
                ));
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Key → latest value, against a model

/// One produced record of a model run.
#[derive(Clone, Debug)]
struct Operation {
    key: u8,
    tombstone: bool,
    /// Timestamped 3 h ago (older than `delete_retention`, 1 h).
    old: bool,
}

/// Produces `operations` (batches of `batch_sizes`, cycling), seals them,
/// compacts, and checks the result against the model:
/// - every key's latest value is there, at its original offset;
/// - no record that is not its key's latest survives;
/// - a latest tombstone younger than `delete_retention` survives, an older
///   one is gone (with every record of its key);
/// - a fetch of a removed offset returns the next surviving record;
/// - the log start offset is unchanged, and a restart reads the same.
fn compaction_matches_the_model(operations: &[Operation], batch_sizes: &[usize]) {
    let directory = tempfile::tempdir().unwrap();
    let make_config = || {
        config_with(
            directory.path(),
            vec![compacted_topic("model", CleanupPolicy::Compact)],
        )
    };
    let runtime = Runtime::start(make_config()).unwrap();
    let mut model = Model::default();
    let mut sequence = 0u64;
    let mut position = 0;
    for batch_size in batch_sizes.iter().cycle() {
        if position >= operations.len() {
            break;
        }
        let end = (position + batch_size).min(operations.len());
        let batch = operations[position..end]
            .iter()
            .map(|operation| {
                sequence += 1;
                let key = format!("key-{}", operation.key);
                let timestamp_ms = if operation.old {
                    now_ms() - 3 * HOUR.as_millis() as i64
                } else {
                    now_ms()
                };
                let value = (!operation.tombstone).then(|| keyed_value(&key, sequence, 50));
                record(&key, value, timestamp_ms)
            })
            .collect();
        produce(&runtime, "model", batch, &mut model);
        position = end;
    }
    let last_model_offset = model.produced.keys().next_back().copied().unwrap_or(0);
    seal_through(
        &runtime,
        directory.path(),
        "model",
        last_model_offset,
        &mut model,
    );

    let before = read_everything(&runtime, "model");
    assert_eq!(
        before.len(),
        model.produced.len(),
        "everything is readable before compaction"
    );
    let (_, _, records_before, records_after) = assert_compacted(&compact_one(&runtime, "model"));

    // Expected survivors: each key's latest record, except expired tombstones.
    let cutoff_ms = now_ms() - HOUR.as_millis() as i64;
    let expected: BTreeMap<u64, (String, Option<Vec<u8>>)> = model
        .latest
        .iter()
        .filter(|(_, (_, value, timestamp_ms))| value.is_some() || *timestamp_ms > cutoff_ms)
        .map(|(key, (offset, value, _))| (*offset, (key.clone(), value.clone())))
        .collect();
    let check = |records: &[FetchedRecord], context: &str| {
        let actual: BTreeMap<u64, (String, Option<Vec<u8>>)> = records
            .iter()
            .map(|record| {
                let (key, _) = check_keyed(record).unwrap();
                (
                    record.offset.0,
                    (key, record.value.as_ref().map(|value| value.to_vec())),
                )
            })
            .collect();
        let missing: Vec<_> = expected
            .keys()
            .filter(|o| !actual.contains_key(o))
            .collect();
        let extra: Vec<_> = actual
            .keys()
            .filter(|o| !expected.contains_key(o))
            .collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{context}: missing offsets {missing:?}, offsets that should be gone {extra:?}"
        );
        assert_eq!(
            actual, expected,
            "{context}: values at the surviving offsets"
        );
    };
    let after = read_everything(&runtime, "model");
    check(&after, "after compaction");
    assert_eq!(
        records_before,
        before.len() as u64 - count_active(&before, directory.path())
    );
    assert_eq!(
        records_after,
        records_before - (before.len() - after.len()) as u64
    );
    let offsets = runtime.offsets_blocking("model", PartitionId(0)).unwrap();
    assert_eq!(
        offsets.log_start_offset,
        Offset(0),
        "compaction never moves the log start"
    );

    // A fetch of a removed offset returns the next record that exists.
    let survivors: BTreeSet<u64> = after.iter().map(|record| record.offset.0).collect();
    let removed: Vec<u64> = (0..offsets.high_watermark.0)
        .filter(|offset| !survivors.contains(offset))
        .collect();
    // Every removed offset, with the smallest fetch (one batch) and a
    // small one: the answer is the next survivor whatever the block
    // boundaries, and never an empty result that makes no progress.
    for offset in &removed {
        for max_bytes in [1, 512] {
            let fetched = runtime
                .fetch_blocking(
                    "model",
                    PartitionId(0),
                    Offset(*offset),
                    common::no_wait(max_bytes),
                )
                .unwrap();
            let next = survivors.range(offset..).next().copied();
            assert_eq!(
                fetched.records.first().map(|record| record.offset.0),
                next,
                "a fetch of removed offset {offset} (max_bytes {max_bytes}) returned {} \
                 records, next offset {}",
                fetched.records.len(),
                fetched.next_offset
            );
        }
    }

    runtime.shutdown().unwrap();
    let partition = partition_directory(directory.path(), "model", 0);
    assert_eq!(run_leftovers(&partition), Vec::<String>::new());
    let runtime = Runtime::start(make_config()).unwrap();
    wait_until(DEADLINE, "the startup load", || runtime.ready());
    check(&read_everything(&runtime, "model"), "after a restart");
    runtime.shutdown().unwrap();
}

/// Records of the active segment (not compacted) among `records`.
fn count_active(records: &[FetchedRecord], data_dir: &Path) -> u64 {
    let base = active_segment_base(&partition_directory(data_dir, "model", 0));
    records
        .iter()
        .filter(|record| record.offset.0 >= base)
        .count() as u64
}

/// A seeded mix of 200 keys: overwrites, young tombstones, and tombstones
/// (and values) timestamped 3 h ago, against `delete_retention` = 1 h.
///
/// Catches: keeping superseded records (the key map or `survives` removed),
/// dropping latest values, renumbering, keeping expired tombstones or
/// dropping young ones (the `delete_retention` check removed or inverted),
/// a fetch of a removed offset failing instead of skipping ahead.
#[test]
fn key_to_latest_value_is_identical_before_and_after_and_tombstones_expire() {
    let mut random = XorShift::new(0xc0ffee);
    // 200 keys of ~80 bytes: the survivors fill several 4 KiB blocks, so
    // the new blocks have boundaries (and holes before them) too.
    let operations: Vec<Operation> = (0..3000)
        .map(|_| Operation {
            key: random.below(200) as u8,
            tombstone: random.below(6) == 0,
            old: random.below(3) == 0,
        })
        .collect();
    compaction_matches_the_model(&operations, &[1, 4, 7, 2, 13]);
}

/// The same check for generated operation lists (few cases: each starts a
/// runtime). The generator's RNG is seeded, so every run is the same.
///
/// Catches what the seeded test does, on shapes it may not hit: one key,
/// all tombstones, everything old, single-record batches.
#[test]
fn key_to_latest_value_matches_the_model_proptest() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config as ProptestConfig, RngAlgorithm, TestRng, TestRunner};
    let config = ProptestConfig {
        cases: 8,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]));
    let operation = (0u8..12, any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
        |(key, tombstone_coin, tombstone_coin2, old)| Operation {
            key,
            tombstone: tombstone_coin && tombstone_coin2,
            old,
        },
    );
    let strategy = (
        proptest::collection::vec(operation, 1..400),
        proptest::collection::vec(1usize..20, 1..5),
    );
    runner
        .run(&strategy, |(operations, batch_sizes)| {
            compaction_matches_the_model(&operations, &batch_sizes);
            Ok(())
        })
        .unwrap();
}

// ---------------------------------------------------------------------------
// Retention interplay

/// Produces `old` records timestamped 3 h ago over 20 keys, then `young`
/// records now over 10 other keys, then filler until all is sealed.
fn produce_old_then_young(
    runtime: &Runtime,
    data_dir: &Path,
    topic: &str,
    old: u64,
    young: u64,
) -> Model {
    let mut model = Model::default();
    let old_ms = now_ms() - 3 * HOUR.as_millis() as i64;
    for chunk in 0..old / 10 {
        let batch = (0..10)
            .map(|index| {
                let sequence = chunk * 10 + index;
                let key = format!("old-{}", sequence % 20);
                record(&key, Some(keyed_value(&key, sequence, 60)), old_ms)
            })
            .collect();
        produce(runtime, topic, batch, &mut model);
    }
    for chunk in 0..young / 10 {
        let batch = (0..10)
            .map(|index| {
                let sequence = chunk * 10 + index;
                let key = format!("young-{}", sequence % 10);
                record(&key, Some(keyed_value(&key, sequence, 60)), now_ms())
            })
            .collect();
        produce(runtime, topic, batch, &mut model);
    }
    let last = *model.produced.keys().next_back().unwrap();
    seal_through(runtime, data_dir, topic, last, &mut model);
    model
}

/// `cleanup = "compact"` with `retention = 1h` never deletes by age, and its
/// compaction keeps each key's latest value however old; `"compact,delete"`
/// deletes the blocks older than retention and compacts the rest.
///
/// Both topics run in one runtime, the "compact" one produced first: once
/// retention has deleted the "compact,delete" topic's old blocks, the
/// "compact" topic's maintenance (same 1 s period, started together) has had
/// the same chances to delete its older blocks.
///
/// Catches: retention applied to a "compact" topic (the `deletes()` filter
/// removed), retention not applied to "compact,delete", compaction dropping
/// old latest values.
#[test]
fn compact_never_deletes_by_age_and_compact_delete_does_both() {
    let directory = tempfile::tempdir().unwrap();
    let with_retention = |name: &str, cleanup| TopicConfig {
        retention: Some(HOUR),
        ..compacted_topic(name, cleanup)
    };
    let runtime = Runtime::start(config_with(
        directory.path(),
        vec![
            with_retention("kept", CleanupPolicy::Compact),
            with_retention("aged", CleanupPolicy::CompactAndDelete),
        ],
    ))
    .unwrap();
    let kept = produce_old_then_young(&runtime, directory.path(), "kept", 300, 300);
    let aged = produce_old_then_young(&runtime, directory.path(), "aged", 300, 300);
    let first_young = |model: &Model| {
        model
            .produced
            .iter()
            .find(|(_, key)| key.starts_with("young-"))
            .map(|(offset, _)| *offset)
            .unwrap()
    };

    wait_until(DEADLINE, "retention of the compact,delete topic", || {
        runtime
            .offsets_blocking("aged", PartitionId(0))
            .unwrap()
            .log_start_offset
            > Offset(0)
    });
    let aged_start = runtime
        .offsets_blocking("aged", PartitionId(0))
        .unwrap()
        .log_start_offset;
    assert!(
        aged_start <= Offset(first_young(&aged)),
        "retention deletes only the blocks older than retention"
    );
    let kept_offsets = runtime.offsets_blocking("kept", PartitionId(0)).unwrap();
    assert_eq!(
        kept_offsets.log_start_offset,
        Offset(0),
        "compact never deletes by age"
    );
    assert_eq!(read_everything(&runtime, "kept").len(), kept.produced.len());

    // Compaction: "kept" keeps the latest of every key, old or young.
    assert_compacted(&compact_one(&runtime, "kept"));
    let survivors: BTreeSet<u64> = read_everything(&runtime, "kept")
        .iter()
        .map(|record| record.offset.0)
        .collect();
    let latest: BTreeSet<u64> = kept.latest_offsets().keys().copied().collect();
    assert_eq!(
        survivors, latest,
        "compact keeps each key's latest, however old"
    );

    // "aged": its young part is compacted; nothing before the retention cut.
    assert_compacted(&compact_one(&runtime, "aged"));
    let aged_records = read_everything(&runtime, "aged");
    let survivors: BTreeSet<u64> = aged_records.iter().map(|record| record.offset.0).collect();
    let expected: BTreeSet<u64> = aged
        .latest_offsets()
        .keys()
        .copied()
        .filter(|offset| *offset >= aged_start.0)
        .collect();
    assert_eq!(
        survivors, expected,
        "compact,delete: retention and compaction"
    );
    assert!(
        aged_records
            .iter()
            .all(|record| record.offset >= aged_start),
        "nothing below the log start is served"
    );
    runtime.shutdown().unwrap();
}

// ---------------------------------------------------------------------------
// Resource check

/// With `[compactor] memory_budget` at its minimum (1 MiB) and more sealed
/// records than its key map may hold, the run is `Skipped` with a reason
/// naming memory, counted in `compaction_skipped_total`; the data is
/// unchanged, the runtime keeps serving, and no file of the run is left.
///
/// A partition whose offsets would need far more key-map memory than the
/// budget, but with few distinct keys, is still compacted: pass 1 counts
/// the keys it has really seen and stops only at the budget (Kafka's way).
/// Catches: an estimate by offset range alone (the run would be skipped
/// forever, however few keys remain).
#[test]
fn a_tight_budget_still_compacts_many_blocks_with_few_keys() {
    let directory = tempfile::tempdir().unwrap();
    let mut config = config_with(
        directory.path(),
        vec![compacted_topic("few-keys", CleanupPolicy::Compact)],
    );
    config.compactor.memory_budget = millrace::config::COMPACTOR_MEMORY_BUDGET_MIN;
    let runtime = Runtime::start(config).unwrap();
    let mut model = Model::default();
    // 24,000 records over 50 keys in 4 KiB blocks: 64 bytes per offset
    // would be about 1.5 MiB, over the 1 MiB budget.
    produce_over_keys(&runtime, "few-keys", 50, &mut model);
    let last = *model.produced.keys().next_back().unwrap();
    seal_through(&runtime, directory.path(), "few-keys", last, &mut model);
    let outcome = compact_one(&runtime, "few-keys");
    let (records_before, records_after, _, _) = assert_compacted(&outcome);
    assert!(records_before >= 24_000, "{outcome:?}");
    assert!(records_after < records_before / 10, "{outcome:?}");
    assert_eq!(runtime.metrics().compaction_skipped_total, 0);
    runtime.shutdown().unwrap();
}

/// Catches: the resource check removed (the run compacts instead), the
/// skip not counted, a skip that leaves the blocks marked compacting
/// (retention and later runs would stop: the next run here would find
/// nothing to do instead of being skipped again).
#[test]
fn a_low_memory_budget_skips_the_run_with_its_reason() {
    let directory = tempfile::tempdir().unwrap();
    // One big block: the oldest block alone is over the budget, so not even
    // a partial run (which stops at the budget) can start.
    let tight = TopicConfig {
        segment_bytes: 2 * 1024 * 1024,
        ..compacted_topic("tight", CleanupPolicy::Compact)
    };
    let mut config = config_with(directory.path(), vec![tight]);
    config.compactor.memory_budget = millrace::config::COMPACTOR_MEMORY_BUDGET_MIN;
    let runtime = Runtime::start(config).unwrap();
    let mut model = Model::default();
    // 24,000 records over 100 keys: a key map for that many offsets is far
    // above 1 MiB by any per-entry estimate of 48 bytes or more.
    produce_over_keys(&runtime, "tight", 100, &mut model);
    let last = *model.produced.keys().next_back().unwrap();
    seal_through(&runtime, directory.path(), "tight", last, &mut model);
    let before = read_everything(&runtime, "tight");

    for attempt in 0..2 {
        match compact_one(&runtime, "tight") {
            PartitionCompaction::Skipped { reason } => assert!(
                reason.contains("memory"),
                "the reason names memory: {reason}"
            ),
            other => panic!("attempt {attempt}: expected Skipped, got {other:?}"),
        }
        assert_eq!(runtime.metrics().compaction_skipped_total, attempt + 1);
    }
    assert_eq!(runtime.metrics().compaction_runs_total, 0);
    assert_eq!(read_everything(&runtime, "tight"), before, "data unchanged");
    assert_eq!(
        run_leftovers(&partition_directory(directory.path(), "tight", 0)),
        Vec::<String>::new()
    );
    // Still serving.
    let mut after_skip = model.clone();
    produce(
        &runtime,
        "tight",
        vec![record("k1", Some(keyed_value("k1", 999_999, 10)), now_ms())],
        &mut after_skip,
    );
    assert_eq!(read_everything(&runtime, "tight").len(), before.len() + 1);
    assert!(runtime.ready());
    runtime.shutdown().unwrap();
}

// ---------------------------------------------------------------------------
// Metrics

/// `compaction_runs_total`, `compaction_bytes_before_total` and
/// `compaction_bytes_after_total` follow the summaries; `compaction_seconds`
/// counts each run; a partition with a damaged sealed block is
/// `NotCompactable` and counted in the `partitions_not_compactable` gauge
/// (1 of 2 partitions), and the Prometheus text carries the same figures.
///
/// Catches: a counter or the gauge not updated (or updated on the wrong
/// outcome), a damaged block compacted (its damage laundered into a valid
/// block).
#[test]
fn compaction_metrics_follow_the_runs_and_count_partitions_not_compactable() {
    let directory = tempfile::tempdir().unwrap();
    let topic = TopicConfig {
        partitions: 2,
        ..compacted_topic("metered", CleanupPolicy::Compact)
    };
    let make_config = || config_with(directory.path(), vec![topic.clone()]);
    let runtime = Runtime::start(make_config()).unwrap();
    let producer = runtime.producer("metered").unwrap();
    let mut sequence = 0u64;
    for partition in 0..2 {
        for _ in 0..40 {
            let batch = (0..10)
                .map(|index| {
                    sequence += 1;
                    let key = format!("k{}", index % 5);
                    Record::new(keyed_value(&key, sequence, 60)).with_key(key)
                })
                .collect();
            producer
                .send_batch_to_blocking(PartitionId(partition), batch)
                .unwrap();
        }
    }
    let initial = runtime.metrics();
    assert_eq!(initial.compaction_runs_total, 0);
    assert_eq!(initial.partitions_not_compactable, 0);

    let summary = runtime.compact_blocking("metered").unwrap();
    let mut bytes_before = 0;
    let mut bytes_after = 0;
    for (_, outcome) in &summary.partitions {
        let (before, after, records_before, records_after) = assert_compacted(outcome);
        assert!(
            after < before && records_after < records_before,
            "{outcome:?}"
        );
        bytes_before += before;
        bytes_after += after;
    }
    let metrics = runtime.metrics();
    assert_eq!(metrics.compaction_runs_total, 2);
    assert_eq!(metrics.compaction_bytes_before_total, bytes_before);
    assert_eq!(metrics.compaction_bytes_after_total, bytes_after);
    assert_eq!(metrics.compaction_seconds.count, 2);
    assert_eq!(metrics.compaction_failures_total, 0);
    assert_eq!(metrics.compaction_skipped_total, 0);
    assert_eq!(metrics.partitions_not_compactable, 0);
    let text = runtime.metrics_text();
    assert!(text.contains("millrace_compaction_runs_total 2"), "{text}");
    assert!(
        text.contains(&format!(
            "millrace_compaction_bytes_before_total {bytes_before}"
        )),
        "{text}"
    );
    runtime.shutdown().unwrap();

    // Damage a sealed block of partition 1 (one byte inside a frame: its
    // CRC no longer matches). The startup load verifies it and quarantines it.
    let partition_1 = partition_directory(directory.path(), "metered", 1);
    let block = files_ending(&partition_1, ".log")[0].clone();
    let path = partition_1.join(&block);
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();

    let runtime = Runtime::start(make_config()).unwrap();
    wait_until(DEADLINE, "the startup load", || {
        runtime
            .health()
            .partitions
            .iter()
            .all(|partition| partition.load.is_terminal())
    });
    // New dirt on both partitions, so partition 0 has work to do.
    for partition in 0..2 {
        let batch = (0..200)
            .map(|index| {
                sequence += 1;
                let key = format!("k{}", index % 5);
                Record::new(keyed_value(&key, sequence, 60)).with_key(key)
            })
            .collect();
        producer_of(&runtime)
            .send_batch_to_blocking(PartitionId(partition), batch)
            .unwrap();
    }
    let summary = runtime.compact_blocking("metered").unwrap();
    assert_compacted(&summary.partitions[0].1);
    match &summary.partitions[1].1 {
        PartitionCompaction::NotCompactable { reason } => {
            assert!(reason.contains("damaged"), "{reason}")
        }
        other => panic!("a damaged partition must be NotCompactable, got {other:?}"),
    }
    let metrics = runtime.metrics();
    assert_eq!(metrics.partitions_not_compactable, 1);
    assert_eq!(
        metrics.compaction_runs_total, 1,
        "counters restart with the process"
    );
    assert!(runtime
        .metrics_text()
        .contains("millrace_partitions_not_compactable 1"));
    // The damaged block is untouched (never rewritten).
    assert!(partition_1.join(&block).exists());
    runtime.shutdown().unwrap();
}

fn producer_of(runtime: &Runtime) -> millrace::Producer {
    runtime.producer("metered").unwrap()
}

// ---------------------------------------------------------------------------
// The CLI

fn run_cli(args: &[&str], config: &Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_millrace"))
        .arg(args[0])
        .arg("-c")
        .arg(config)
        .args(&args[1..])
        .output()
        .expect("run millrace")
}

/// `millrace compact -c CFG -t TOPIC` prints one summary line per partition
/// and exits 0, and the data it leaves is compacted; on a "delete" topic it
/// exits non-zero with one clear line naming the cleanup setting.
///
/// Catches: the subcommand not compacting, not printing per partition, or
/// compacting (or silently succeeding on) a topic whose cleanup is "delete".
#[test]
fn cli_compact_prints_a_summary_per_partition_and_refuses_a_delete_topic() {
    let directory = tempfile::tempdir().unwrap();
    let data_dir = directory.path().join("data");
    let config_path = directory.path().join("millrace.toml");
    std::fs::write(
        &config_path,
        format!(
            "data_dir = {data_dir:?}\n\
             [[topic]]\nname = \"table\"\npartitions = 2\nsegment_bytes = \"4 KiB\"\ncleanup = \"compact\"\n\
             [[topic]]\nname = \"events\"\nsegment_bytes = \"4 KiB\"\n"
        ),
    )
    .unwrap();
    let config = Config::from_file(&config_path).unwrap();
    let runtime = Runtime::start(config.clone()).unwrap();
    let producer = runtime.producer("table").unwrap();
    let mut sequence = 0;
    for partition in 0..2 {
        for _ in 0..30 {
            let batch = (0..10)
                .map(|index| {
                    sequence += 1;
                    let key = format!("k{index}");
                    Record::new(keyed_value(&key, sequence, 60)).with_key(key)
                })
                .collect();
            producer
                .send_batch_to_blocking(PartitionId(partition), batch)
                .unwrap();
        }
    }
    runtime
        .producer("events")
        .unwrap()
        .send_batch_blocking((0..100).map(|i| Record::new(format!("e{i}"))).collect())
        .unwrap();
    let before: Vec<usize> = (0..2)
        .map(|p| {
            read_all(&runtime, "table", PartitionId(p), 1 << 20)
                .unwrap()
                .len()
        })
        .collect();
    runtime.shutdown().unwrap();

    let output = run_cli(&["compact", "-t", "table"], &config_path);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "one line per partition: {stdout}");
    for (partition, line) in lines.iter().enumerate() {
        assert!(
            line.starts_with(&format!("table {partition} compacted: ")),
            "{line}"
        );
        assert!(
            line.contains(" records, ") && line.contains(" bytes in "),
            "{line}"
        );
    }

    let runtime = Runtime::start(config.clone()).unwrap();
    for partition in 0..2 {
        let after = read_all(&runtime, "table", PartitionId(partition), 1 << 20).unwrap();
        assert!(
            after.len() < before[partition as usize],
            "partition {partition}: {} -> {} records",
            before[partition as usize],
            after.len()
        );
        for record in &after {
            check_keyed(record).unwrap();
        }
    }
    let events_before = read_all(&runtime, "events", PartitionId(0), 1 << 20).unwrap();
    runtime.shutdown().unwrap();

    let output = run_cli(&["compact", "-t", "events"], &config_path);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "a delete topic is refused");
    assert!(
        stderr.contains("events") && stderr.contains("cleanup") && stderr.contains("compact"),
        "a clear message: {stderr}"
    );
    let runtime = Runtime::start(config).unwrap();
    assert_eq!(
        read_all(&runtime, "events", PartitionId(0), 1 << 20).unwrap(),
        events_before
    );
    runtime.shutdown().unwrap();
}
