//! Compaction under injected failures and crashes, at each step of a run.
//! Built only with `--features failpoints`:
//!
//! ```text
//! cargo test --features failpoints --test compaction_faults
//! ```
//!
//! The steps and their failpoints (`src/storage/compaction.rs`):
//!
//! | failpoint                        | where (first hit)                          | commit |
//! |----------------------------------|--------------------------------------------|--------|
//! | `compaction::write`              | writing a `.log.cleaned`                   | before |
//! | `compaction::fsync`              | fsync of a `.log.cleaned`                  | before |
//! | `compaction::sync_directory`     | fsync of the directory before verifying    | before |
//! | `compaction::rename`             | `.cleaned` → `.swap` (the commit)          | before |
//! | `compaction::delete`             | `finish`: old `.log` → `.log.deleted`      | after the in-memory swap |
//! | `compaction::swap`               | `finish`: `.swap` → final name             | after the in-memory swap |
//!
//! Failpoints are process-global, so the in-process tests run one at a time
//! (`SERIAL` plus `FailScenario`, which also clears every failpoint when it
//! ends, even after a panic). The crash tests run the `millrace compact`
//! CLI as a child with `FAILPOINTS="compaction::<step>=pause"`, wait (a
//! deadline loop on the partition directory) until it is at that step, and
//! SIGKILL it.

mod common;

use common::keyed::{check_keyed, keyed_value, now_ms, read_all, Model};
use common::{files_ending, partition_directory, wait_until};
use millrace::config::{CleanupPolicy, Config, TopicConfig};
use millrace::runtime::PartitionCompaction;
use millrace::{FetchedRecord, PartitionId, Record, Runtime};
use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

static SERIAL: Mutex<()> = Mutex::new(());

/// Test harness only: one failpoint scenario at a time in this process.
fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

const TOPIC: &str = "table";
const DEADLINE: Duration = Duration::from_secs(30);
const KEYS: u64 = 150;
const RECORDS: u64 = 3000;

fn make_config(data_dir: &Path) -> Config {
    let mut config = common::config(
        data_dir,
        vec![TopicConfig {
            segment_bytes: 4 * 1024,
            cleanup: CleanupPolicy::Compact,
            ..TopicConfig::with_defaults(TOPIC)
        }],
    );
    config.compactor.interval = Duration::from_secs(24 * 60 * 60);
    config
}

/// Produces `RECORDS` records over `KEYS` keys (batches of 10), then unique
/// filler keys until they are all sealed. Returns the model.
fn produce_store(runtime: &Runtime, data_dir: &Path) -> Model {
    let producer = runtime.producer(TOPIC).unwrap();
    let mut model = Model::default();
    let send = |keys: Vec<String>, sequence_base: u64, model: &mut Model| {
        let records: Vec<Record> = keys
            .iter()
            .enumerate()
            .map(|(index, key)| {
                Record::new(keyed_value(key, sequence_base + index as u64, 60))
                    .with_key(key.clone())
                    .with_timestamp_ms(now_ms())
            })
            .collect();
        let ack = producer
            .send_batch_to_blocking(PartitionId(0), records.clone())
            .unwrap();
        for (index, record) in records.into_iter().enumerate() {
            model.record(
                &keys[index],
                ack.base_offset.0 + index as u64,
                record.value.map(|value| value.to_vec()),
                record.timestamp_ms.unwrap(),
            );
        }
    };
    for chunk in 0..RECORDS / 10 {
        let keys = (0..10)
            .map(|index| format!("k{}", (chunk * 10 + index) * 7 % KEYS))
            .collect();
        send(keys, chunk * 10, &mut model);
    }
    let directory = partition_directory(data_dir, TOPIC, 0);
    let mut filler = 0;
    while common::keyed::active_segment_base(&directory) < RECORDS {
        let keys = (0..10)
            .map(|_| {
                filler += 1;
                format!("filler-{filler}")
            })
            .collect();
        send(keys, 0, &mut model);
    }
    model
}

fn read_everything(runtime: &Runtime) -> Vec<FetchedRecord> {
    read_all(runtime, TOPIC, PartitionId(0), 64 * 1024).unwrap_or_else(|error| panic!("{error}"))
}

/// Offsets of the compacted content: each key's latest record.
fn compacted_offsets(model: &Model) -> BTreeSet<u64> {
    model.latest_offsets().keys().copied().collect()
}

fn offsets_of(records: &[FetchedRecord]) -> BTreeSet<u64> {
    records.iter().map(|record| record.offset.0).collect()
}

/// Which content `records` is: the old (everything produced) or the new
/// (each key's latest); panics on anything else. Every record must check.
fn content_of(records: &[FetchedRecord], model: &Model, context: &str) -> &'static str {
    for record in records {
        check_keyed(record).unwrap_or_else(|error| panic!("{context}: {error}"));
        let key = std::str::from_utf8(record.key.as_deref().unwrap()).unwrap();
        assert_eq!(
            model.produced.get(&record.offset.0).map(String::as_str),
            Some(key),
            "{context}: offset {} holds another key",
            record.offset
        );
    }
    let offsets = offsets_of(records);
    let all: BTreeSet<u64> = model.produced.keys().copied().collect();
    if offsets == all {
        "old"
    } else if offsets == compacted_offsets(model) {
        "new"
    } else {
        let missing: Vec<_> = compacted_offsets(model)
            .difference(&offsets)
            .copied()
            .collect();
        panic!(
            "{context}: neither the old nor the new content: {} records, latest records \
             missing: {missing:?}",
            records.len()
        )
    }
}

fn leftovers(directory: &Path) -> Vec<String> {
    [".cleaned", ".swap", ".deleted", ".tmp"]
        .iter()
        .flat_map(|suffix| files_ending(directory, suffix))
        .collect()
}

fn compact_one(runtime: &Runtime) -> PartitionCompaction {
    let summary = runtime.compact_blocking(TOPIC).unwrap();
    summary.partitions[0].1.clone()
}

// ---------------------------------------------------------------------------
// A step fails once

/// `failpoint` fails once. Before the commit (`write`, `fsync`,
/// `sync_directory`, `rename`): the run is `Failed`, counted, the old data
/// is still served and intact, the run's `.cleaned`/`.swap` files are gone
/// at once (not only at the next open), and the next run succeeds.
///
/// Catches: a build that leaves files behind on error, a failure that swaps
/// anyway, blocks left marked compacting (the retry would find nothing to
/// do), a failure not counted in `compaction_failures_total`.
fn a_failed_step_keeps_the_old_data_and_the_retry_succeeds(failpoint: &str) {
    let _serial = serial();
    let scenario = fail::FailScenario::setup();
    let directory = tempfile::tempdir().unwrap();
    let runtime = Runtime::start(make_config(directory.path())).unwrap();
    let model = produce_store(&runtime, directory.path());
    let before = read_everything(&runtime);
    assert_eq!(content_of(&before, &model, "before"), "old");

    fail::cfg(failpoint, "1*return").unwrap();
    match compact_one(&runtime) {
        PartitionCompaction::Failed { error } => {
            assert!(error.contains("injected"), "{failpoint}: {error}")
        }
        other => panic!("{failpoint}: expected Failed, got {other:?}"),
    }
    fail::remove(failpoint);
    assert_eq!(runtime.metrics().compaction_failures_total, 1);
    assert_eq!(runtime.metrics().compaction_runs_total, 0);
    assert_eq!(
        read_everything(&runtime),
        before,
        "{failpoint}: old data served"
    );
    let partition = partition_directory(directory.path(), TOPIC, 0);
    assert_eq!(leftovers(&partition), Vec::<String>::new(), "{failpoint}");

    match compact_one(&runtime) {
        PartitionCompaction::Compacted { .. } => {}
        other => panic!("{failpoint}: the retry must succeed, got {other:?}"),
    }
    assert_eq!(
        content_of(&read_everything(&runtime), &model, "retry"),
        "new"
    );
    runtime.shutdown().unwrap();
    let runtime = Runtime::start(make_config(directory.path())).unwrap();
    wait_until(DEADLINE, "ready", || runtime.ready());
    assert_eq!(
        content_of(&read_everything(&runtime), &model, "reopen"),
        "new"
    );
    runtime.shutdown().unwrap();
    assert_eq!(leftovers(&partition), Vec::<String>::new());
    scenario.teardown();
}

/// `failpoint` fails once after the partition swapped the new blocks in
/// (`finish`: `delete`, `swap`). The run is `Failed` ("swapped, but renaming
/// files failed"); the *new* data is served (the swap happened in memory,
/// and readers must never go back to the old); the next run must succeed
/// (completing or retrying the unfinished renames), and at the next open the
/// leftovers are swept and the new content is what is read.
///
/// Catches: a finish failure that leaves the partition uncompactable until a
/// restart; recovery that brings back the old blocks or loses the new.
fn a_failed_finish_serves_the_new_data_and_the_retry_succeeds(failpoint: &str) {
    let _serial = serial();
    let scenario = fail::FailScenario::setup();
    let directory = tempfile::tempdir().unwrap();
    let runtime = Runtime::start(make_config(directory.path())).unwrap();
    let model = produce_store(&runtime, directory.path());

    fail::cfg(failpoint, "1*return").unwrap();
    match compact_one(&runtime) {
        PartitionCompaction::Failed { error } => {
            assert!(error.contains("injected"), "{failpoint}: {error}")
        }
        other => panic!("{failpoint}: expected Failed, got {other:?}"),
    }
    fail::remove(failpoint);
    assert_eq!(runtime.metrics().compaction_failures_total, 1);
    assert_eq!(
        content_of(&read_everything(&runtime), &model, failpoint),
        "new"
    );

    let retry = compact_one(&runtime);
    let partition = partition_directory(directory.path(), TOPIC, 0);
    let left_after_retry = leftovers(&partition);
    runtime.shutdown().unwrap();
    let runtime = Runtime::start(make_config(directory.path())).unwrap();
    wait_until(DEADLINE, "ready", || runtime.ready());
    assert_eq!(
        content_of(&read_everything(&runtime), &model, "reopen"),
        "new"
    );
    runtime.shutdown().unwrap();
    assert_eq!(leftovers(&partition), Vec::<String>::new(), "swept at open");
    assert!(
        matches!(retry, PartitionCompaction::Compacted { .. }),
        "{failpoint}: the run after a failed finish must succeed, got {retry:?} \
         (files left: {left_after_retry:?})"
    );
    assert_eq!(
        left_after_retry,
        Vec::<String>::new(),
        "{failpoint}: the retry completes the unfinished renames"
    );
    scenario.teardown();
}

#[test]
fn write_fails_once() {
    a_failed_step_keeps_the_old_data_and_the_retry_succeeds("compaction::write");
}

#[test]
fn fsync_fails_once() {
    a_failed_step_keeps_the_old_data_and_the_retry_succeeds("compaction::fsync");
}

#[test]
fn directory_fsync_fails_once() {
    a_failed_step_keeps_the_old_data_and_the_retry_succeeds("compaction::sync_directory");
}

#[test]
fn commit_rename_fails_once() {
    a_failed_step_keeps_the_old_data_and_the_retry_succeeds("compaction::rename");
}

#[test]
fn finish_delete_fails_once() {
    a_failed_finish_serves_the_new_data_and_the_retry_succeeds("compaction::delete");
}

#[test]
fn finish_swap_rename_fails_once() {
    a_failed_finish_serves_the_new_data_and_the_retry_succeeds("compaction::swap");
}

// ---------------------------------------------------------------------------
// A crash at each step

/// A kill of `millrace compact` paused at `actions` (a `FAILPOINTS` value),
/// once the partition directory shows `reached`. After the kill, a reopen
/// must show exactly the old or the new content (whichever `expected` says:
/// before the commit the old, after it the new), each self-consistent, every
/// key's latest value present, and no run file left.
///
/// Catches: recovery that keeps a half-built or half-renamed set (a mix),
/// loses the old blocks before the new ones are complete, or leaves
/// `.cleaned`/`.swap`/`.deleted` files behind.
fn a_crash_leaves_exactly_old_or_new(
    actions: &str,
    reached: fn(&Path) -> bool,
    what: &str,
    expected: &str,
) {
    let directory = tempfile::tempdir().unwrap();
    let data_dir = directory.path().join("data");
    let config_path = directory.path().join("millrace.toml");
    std::fs::write(
        &config_path,
        format!(
            "data_dir = {data_dir:?}\n[compactor]\ninterval = \"1d\"\n\
             [[topic]]\nname = \"{TOPIC}\"\nsegment_bytes = \"4 KiB\"\ncleanup = \"compact\"\n"
        ),
    )
    .unwrap();
    let config = Config::from_file(&config_path).unwrap();
    let runtime = Runtime::start(config.clone()).unwrap();
    let model = produce_store(&runtime, &data_dir);
    runtime.shutdown().unwrap();

    let stderr_path = directory.path().join("child.stderr");
    let mut child = Command::new(env!("CARGO_BIN_EXE_millrace"))
        .args(["compact", "-c"])
        .arg(&config_path)
        .args(["-t", TOPIC])
        .env("FAILPOINTS", actions)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .expect("spawn millrace compact");
    let partition = partition_directory(&data_dir, TOPIC, 0);
    let mut exited = None;
    wait_until(DEADLINE, what, || {
        if let Ok(Some(status)) = child.try_wait() {
            exited = Some(status);
            return true;
        }
        reached(&partition)
    });
    if let Some(status) = exited {
        panic!(
            "{actions}: the child exited ({status}) before {what}: {}",
            std::fs::read_to_string(&stderr_path).unwrap_or_default()
        );
    }
    child.kill().expect("SIGKILL");
    child.wait().unwrap();

    let runtime = Runtime::start(config).unwrap();
    wait_until(DEADLINE, "ready", || runtime.ready());
    let records = read_everything(&runtime);
    let content = content_of(&records, &model, actions);
    let present = offsets_of(&records);
    for (key, (offset, _, _)) in &model.latest {
        assert!(present.contains(offset), "{actions}: latest of {key} lost");
    }
    assert_eq!(
        leftovers(&partition),
        Vec::<String>::new(),
        "{actions}: swept at open"
    );
    assert_eq!(content, expected, "{actions}: which content is visible");
    // The store stays compactable.
    match runtime.compact_blocking(TOPIC).unwrap().partitions[0]
        .1
        .clone()
    {
        PartitionCompaction::Compacted { .. } => {}
        other => panic!("{actions}: compaction after the crash: {other:?}"),
    }
    assert_eq!(
        content_of(&read_everything(&runtime), &model, "after"),
        "new"
    );
    runtime.shutdown().unwrap();
}

fn any_ending(directory: &Path, suffix: &str) -> bool {
    !files_ending(directory, suffix).is_empty()
}

#[test]
fn crash_while_writing_keeps_the_old() {
    a_crash_leaves_exactly_old_or_new(
        "compaction::write=pause",
        |directory| any_ending(directory, ".log.cleaned"),
        "a .log.cleaned file",
        "old",
    );
}

#[test]
fn crash_at_the_fsync_keeps_the_old() {
    a_crash_leaves_exactly_old_or_new(
        "compaction::fsync=pause",
        |directory| any_ending(directory, ".log.cleaned"),
        "a .log.cleaned file",
        "old",
    );
}

#[test]
fn crash_at_the_directory_fsync_before_verifying_keeps_the_old() {
    a_crash_leaves_exactly_old_or_new(
        "compaction::sync_directory=pause",
        |directory| any_ending(directory, ".idx.cleaned"),
        "an .idx.cleaned file",
        "old",
    );
}

#[test]
fn crash_during_the_commit_renames_keeps_the_old() {
    // The second rename: one file is `.swap`, the others still `.cleaned`.
    a_crash_leaves_exactly_old_or_new(
        "compaction::rename=1*off->pause",
        |directory| any_ending(directory, ".swap") && any_ending(directory, ".cleaned"),
        "a mix of .swap and .cleaned files",
        "old",
    );
}

#[test]
fn crash_after_the_commit_shows_the_new() {
    // The directory fsync after the commit renames (its second hit).
    a_crash_leaves_exactly_old_or_new(
        "compaction::sync_directory=1*off->pause",
        |directory| any_ending(directory, ".swap") && !any_ending(directory, ".cleaned"),
        "only .swap files",
        "new",
    );
}

#[test]
fn crash_while_finishing_shows_the_new() {
    // `finish` paused at its first `.swap` → final rename: old files are
    // `.deleted` already.
    a_crash_leaves_exactly_old_or_new(
        "compaction::swap=pause",
        |directory| any_ending(directory, ".deleted") && any_ending(directory, ".swap"),
        ".deleted and .swap files",
        "new",
    );
}

#[test]
fn crash_before_finish_deletes_shows_the_new() {
    a_crash_leaves_exactly_old_or_new(
        "compaction::delete=pause",
        |directory| any_ending(directory, ".swap") && !any_ending(directory, ".cleaned"),
        "only .swap files",
        "new",
    );
}
