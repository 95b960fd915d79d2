//! Fault injection with `fail` failpoints in the storage I/O primitives
//! (`storage::write`, `storage::fsync`, `storage::rename`, `storage::delete`).
//! Built only with `--features failpoints` (a `[[test]]` entry in Cargo.toml
//! requires it):
//!
//! ```text
//! cargo test --features failpoints --test faults
//! ```
//!
//! Failpoints are process-global, so the tests of this binary run one at a
//! time (the `SERIAL` guard below, plus `FailScenario`, which also clears
//! every failpoint when it ends, even after a panic).

mod common;

use common::history::{History, SendOutcome};
use common::{config, files_ending, partition_directory, topic, wait_until};
use millrace::{Offset, PartitionId, ProduceError, Record, Runtime, ShutdownError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

static SERIAL: Mutex<()> = Mutex::new(());

/// Test harness only: one failpoint scenario at a time in this process.
fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How long a test waits for maintenance (every 1 s) to reach a state.
const MAINTENANCE_DEADLINE: Duration = Duration::from_secs(10);

/// Produces `batches` batches of `records` 100-byte values to partition 0,
/// recording each acknowledged record in `history`.
fn produce_acknowledged(
    runtime: &Runtime,
    topic_name: &str,
    tag: &str,
    batches: usize,
    records: usize,
    history: &mut History,
) {
    let producer = runtime.producer(topic_name).unwrap();
    for batch in 0..batches {
        let values: Vec<String> = (0..records)
            .map(|index| format!("{tag}-{batch:04}-{index:03}-{}", "x".repeat(80)))
            .collect();
        let ack = producer
            .send_batch_to_blocking(
                PartitionId(0),
                values.iter().cloned().map(Record::new).collect(),
            )
            .unwrap_or_else(|error| panic!("{tag} batch {batch}: {error}"));
        for (index, value) in values.into_iter().enumerate() {
            history.send(
                value,
                SendOutcome::Ok {
                    partition: 0,
                    offset: ack.base_offset.0 + index as u64,
                },
            );
        }
    }
}

/// Reads partition 0 into the history's polls and asserts no anomaly.
fn check_partition(runtime: &Runtime, topic_name: &str, history: &mut History, context: &str) {
    history.clear_polls();
    for record in common::read_partition(runtime, topic_name, PartitionId(0)) {
        history.poll(0, record.offset.0, common::value_of(&record).to_vec());
    }
    history.check().assert_valid(context);
}

/// An I/O error under a produce: the produce in flight gets `FailStopped`,
/// every later produce is refused with `FailStopped` (the partition never
/// retries: after a failed fsync the page cache may have dropped data, so a
/// retry that succeeds would acknowledge a lie), the partition reports
/// itself fail-stopped, shutdown says which partition failed, and after a
/// restart every record acknowledged before the fault is there, while the
/// refused batch is not.
fn an_io_failure_fail_stops_the_partition(failpoint: &str) {
    let _serial = serial();
    let scenario = fail::FailScenario::setup();
    let directory = tempfile::tempdir().unwrap();
    let make_config = || config(directory.path(), vec![topic("faulty", 1)]);
    let runtime = Runtime::start(make_config()).unwrap();
    let mut history = History::new();
    produce_acknowledged(&runtime, "faulty", "before", 20, 50, &mut history);

    fail::cfg(failpoint, "return").unwrap();
    let producer = runtime.producer("faulty").unwrap();
    let in_flight: Vec<String> = (0..50).map(|index| format!("in-flight-{index}")).collect();
    let outcome = producer.send_batch_to_blocking(
        PartitionId(0),
        in_flight.iter().cloned().map(Record::new).collect(),
    );
    assert!(
        matches!(outcome, Err(ProduceError::FailStopped { .. })),
        "{failpoint}: the produce in flight must fail-stop, got {outcome:?}"
    );
    for value in in_flight {
        history.send(value, SendOutcome::Unknown);
    }
    // The fault is gone, but the partition still refuses: it never retries.
    fail::remove(failpoint);
    let later = producer.send_batch_to_blocking(PartitionId(0), vec![Record::new("refused")]);
    assert!(
        matches!(later, Err(ProduceError::FailStopped { .. })),
        "{failpoint}: a produce after the fail-stop must be refused, got {later:?}"
    );
    assert!(runtime.metrics().partitions[0].fail_stopped);
    let offsets = runtime.offsets_blocking("faulty", PartitionId(0)).unwrap();
    assert_eq!(
        offsets.high_watermark,
        Offset(1000),
        "nothing past the fault is served"
    );
    let shutdown = runtime.shutdown();
    assert!(
        matches!(shutdown, Err(ShutdownError::Partition { .. })),
        "shutdown reports the failed partition: {shutdown:?}"
    );

    let runtime = Runtime::start(make_config()).unwrap();
    check_partition(
        &runtime,
        "faulty",
        &mut history,
        &format!("after {failpoint} failure and restart"),
    );
    // Restarted from disk, the partition takes writes again.
    produce_acknowledged(&runtime, "faulty", "after", 2, 10, &mut history);
    check_partition(&runtime, "faulty", &mut history, "after the restart");
    runtime.shutdown().unwrap();
    scenario.teardown();
}

#[test]
fn a_failed_fsync_fail_stops_and_loses_nothing_acknowledged() {
    an_io_failure_fail_stops_the_partition("storage::fsync");
}

#[test]
fn a_failed_write_fail_stops_and_loses_nothing_acknowledged() {
    an_io_failure_fail_stops_the_partition("storage::write");
}

/// LESSONS.md 1 (Tempo's orphaned blocks): while every rename fails, segments
/// keep rolling (4 KiB) and each seal is retried every maintenance cycle, yet
/// the partition directory holds at most one leftover temp file per unsealed
/// segment, and its file count does not grow across retry rounds. Once the
/// fault clears, every seal completes (sealed count rises to the number of
/// rolled segments, leftovers are removed and counted), and the data is
/// intact, also after a restart. Fails if a retry leaves a new file behind
/// each time, or if seals are never retried.
#[test]
fn failed_renames_leave_bounded_files_and_seals_complete_later() {
    let _serial = serial();
    let scenario = fail::FailScenario::setup();
    let directory = tempfile::tempdir().unwrap();
    let make_config = || {
        let mut rolling = topic("rolling", 1);
        rolling.segment_bytes = 4096;
        config(directory.path(), vec![rolling])
    };
    let runtime = Runtime::start(make_config()).unwrap();
    let partition = partition_directory(directory.path(), "rolling", 0);

    fail::cfg("storage::rename", "return").unwrap();
    let mut history = History::new();
    produce_acknowledged(&runtime, "rolling", "rolled", 40, 10, &mut history);
    let segments = files_ending(&partition, ".wal").len();
    let unsealed = segments - 1;
    assert!(
        unsealed >= 10,
        "expected many rolled segments, got {segments}"
    );

    let all_files = || files_ending(&partition, "");
    let check_bounded = |files: &[String]| {
        let temps = files.iter().filter(|name| name.ends_with(".tmp")).count();
        let wals = files.iter().filter(|name| name.ends_with(".wal")).count();
        assert_eq!(
            wals, segments,
            "no segment may be sealed while renames fail: {files:?}"
        );
        assert!(
            temps <= unsealed,
            "more than one temp file per unsealed segment: {files:?}"
        );
        assert_eq!(files.len(), wals + temps, "unexpected files: {files:?}");
    };
    wait_until(
        MAINTENANCE_DEADLINE,
        "a first round of seal failures",
        || runtime.metrics().seal_failures_total >= unsealed as u64,
    );
    let failures = runtime.metrics().seal_failures_total;
    let files_before_retries = all_files();
    check_bounded(&files_before_retries);
    wait_until(
        MAINTENANCE_DEADLINE,
        "two more rounds of seal retries",
        || runtime.metrics().seal_failures_total >= failures + 2 * unsealed as u64,
    );
    let files_after_retries = all_files();
    check_bounded(&files_after_retries);
    assert_eq!(
        files_after_retries.len(),
        files_before_retries.len(),
        "retries must not add files"
    );
    assert_eq!(runtime.metrics().segments_sealed_total, 0);
    check_partition(&runtime, "rolling", &mut history, "while seals fail");

    fail::remove("storage::rename");
    wait_until(MAINTENANCE_DEADLINE, "every seal to complete", || {
        runtime.metrics().segments_sealed_total >= unsealed as u64
    });
    let files = all_files();
    assert_eq!(
        files_ending(&partition, ".log").len(),
        unsealed,
        "{files:?}"
    );
    assert_eq!(
        files_ending(&partition, ".idx").len(),
        unsealed,
        "{files:?}"
    );
    assert_eq!(files_ending(&partition, ".wal").len(), 1, "{files:?}");
    assert!(files_ending(&partition, ".tmp").is_empty(), "{files:?}");
    assert!(
        runtime.metrics().orphaned_blocks_cleaned_total >= 1,
        "leftover temp files are counted"
    );
    check_partition(&runtime, "rolling", &mut history, "after seals completed");
    runtime.shutdown().unwrap();

    let runtime = Runtime::start(make_config()).unwrap();
    check_partition(&runtime, "rolling", &mut history, "after restart");
    runtime.shutdown().unwrap();
    scenario.teardown();
}

/// LESSONS.md 1 (Tempo's retention stopped at the first block it failed to
/// delete): with one block undeletable, retention still deletes every other
/// expired block, counts the failure in `cleanup_failures_total`, retries the
/// bad block every cycle, and deletes it once the fault clears. Fails if
/// cleanup stops at the first failure or never retries.
///
/// The failpoint is keyed by call order, which is deterministic here: one
/// partition, one deletion thread, and every block expires in the same
/// retention pass (records are stamped two hours old; retention is only
/// turned on, at one hour, after all of them were written), so the deletion
/// thread deletes blocks oldest first, two files each (`.log`, `.idx`).
#[test]
fn one_undeletable_block_does_not_stop_retention() {
    let _serial = serial();
    let scenario = fail::FailScenario::setup();
    let directory = tempfile::tempdir().unwrap();
    let make_config = |retention: Option<Duration>| {
        let mut expiring = topic("expiring", 1);
        expiring.segment_bytes = 4096;
        expiring.retention = retention;
        config(directory.path(), vec![expiring])
    };
    let partition = partition_directory(directory.path(), "expiring", 0);
    let two_hours_ago = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        - 2 * 3600 * 1000;

    let runtime = Runtime::start(make_config(None)).unwrap();
    let producer = runtime.producer("expiring").unwrap();
    for batch in 0..30 {
        let records = (0..10)
            .map(|index| {
                Record::new(format!("{batch:03}-{index}-{}", "y".repeat(90)))
                    .with_timestamp_ms(two_hours_ago)
            })
            .collect();
        producer
            .send_batch_to_blocking(PartitionId(0), records)
            .unwrap();
    }
    runtime.shutdown().unwrap();
    let blocks = files_ending(&partition, ".log");
    assert!(
        blocks.len() >= 6,
        "expected several sealed blocks: {blocks:?}"
    );
    assert!(
        files_ending(&partition, ".tmp").is_empty(),
        "recovery must have no temp file to delete"
    );
    let bad = 2;
    let bad_block = blocks[bad].trim_end_matches(".log").to_owned();
    // Pass 1: blocks before the bad one delete, the bad one's two files fail,
    // the rest delete; every later call (the bad block's retries) fails.
    let actions = format!(
        "{}*off->2*return->{}*off->return",
        2 * bad,
        2 * (blocks.len() - bad - 1)
    );
    fail::cfg("storage::delete", &actions).unwrap();

    let runtime = Runtime::start(make_config(Some(Duration::from_secs(3600)))).unwrap();
    wait_until(
        MAINTENANCE_DEADLINE,
        "every other expired block to be deleted",
        || runtime.metrics().blocks_deleted_total == blocks.len() as u64 - 1,
    );
    assert_eq!(
        files_ending(&partition, ".log"),
        vec![format!("{bad_block}.log")]
    );
    assert_eq!(
        files_ending(&partition, ".idx"),
        vec![format!("{bad_block}.idx")]
    );
    let failures = runtime.metrics().cleanup_failures_total;
    assert!(
        failures >= 2,
        "both files of the bad block counted: {failures}"
    );
    wait_until(MAINTENANCE_DEADLINE, "the bad block to be retried", || {
        runtime.metrics().cleanup_failures_total >= failures + 2
    });
    assert_eq!(
        files_ending(&partition, ".log").len(),
        1,
        "still only the bad block"
    );

    fail::remove("storage::delete");
    wait_until(
        MAINTENANCE_DEADLINE,
        "the bad block to be deleted once the fault clears",
        || {
            files_ending(&partition, ".log").is_empty()
                && files_ending(&partition, ".idx").is_empty()
        },
    );
    wait_until(MAINTENANCE_DEADLINE, "the deletion to be counted", || {
        runtime.metrics().blocks_deleted_total == blocks.len() as u64
    });
    assert_eq!(
        files_ending(&partition, ".wal").len(),
        1,
        "the active segment is never deleted"
    );
    let offsets = runtime
        .offsets_blocking("expiring", PartitionId(0))
        .unwrap();
    assert_eq!(offsets.high_watermark, Offset(300));
    let rest = common::read_partition(&runtime, "expiring", PartitionId(0));
    assert_eq!(
        rest.first().map(|record| record.offset),
        Some(offsets.log_start_offset)
    );
    assert_eq!(rest.len() as u64, 300 - offsets.log_start_offset.0);
    runtime.shutdown().unwrap();
    scenario.teardown();
}

/// LESSONS.md 3: a record is not served before it is durable. With fsync
/// slowed down by a failpoint, a record that is appended (the log end offset
/// moved) but whose fsync has not completed (the fsync counter has not moved,
/// before and after the fetch) is not returned by a fetch, and the high
/// watermark has not moved. Fails if fetches are bounded by the log end
/// offset or the high watermark is advanced on append.
#[test]
fn records_are_not_served_before_their_fsync_completes() {
    let _serial = serial();
    let scenario = fail::FailScenario::setup();
    let directory = tempfile::tempdir().unwrap();
    let runtime = Runtime::start(config(directory.path(), vec![topic("slow", 1)])).unwrap();
    let fsyncs_before = runtime.metrics().fsyncs_total;
    fail::cfg("storage::fsync", "sleep(1500)").unwrap();
    let acknowledged = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let producer = scope.spawn(|| {
            let producer = runtime.producer("slow").unwrap();
            let ack = producer
                .send_batch_to_blocking(PartitionId(0), vec![Record::new("slow")])
                .unwrap();
            acknowledged.store(true, Ordering::SeqCst);
            ack
        });
        wait_until(MAINTENANCE_DEADLINE, "the record to be appended", || {
            runtime
                .offsets_blocking("slow", PartitionId(0))
                .unwrap()
                .log_end_offset
                == Offset(1)
        });
        let fetched = runtime
            .fetch_blocking("slow", PartitionId(0), Offset(0), common::no_wait(1 << 20))
            .unwrap();
        let offsets = runtime.offsets_blocking("slow", PartitionId(0)).unwrap();
        let fsync_done = runtime.metrics().fsyncs_total > fsyncs_before;
        assert!(
            !fsync_done && !acknowledged.load(Ordering::SeqCst),
            "the fetch was meant to run during the 1.5 s fsync; the machine is too slow for this test"
        );
        assert!(
            fetched.records.is_empty(),
            "served {:?} before its fsync completed",
            fetched.records
        );
        assert_eq!(fetched.high_watermark, Offset(0));
        assert_eq!(offsets.high_watermark, Offset(0));
        let ack = producer.join().unwrap();
        assert_eq!(ack.base_offset, Offset(0));
    });
    let fetched = runtime
        .fetch_blocking("slow", PartitionId(0), Offset(0), common::no_wait(1 << 20))
        .unwrap();
    assert_eq!(fetched.records.len(), 1, "served once durable");
    fail::remove("storage::fsync");
    runtime.shutdown().unwrap();
    scenario.teardown();
}
