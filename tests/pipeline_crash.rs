//! Real process crashes between a pipeline's sink write and its offset
//! commit. `millrace run CONFIG --until-caught-up` runs as a child with the
//! failpoint `pipeline::before_commit=N*off->return(abort)`: after N commits
//! it aborts the process (SIGABRT: no destructor, no flush) at the next one,
//! right after that batch's sink write. N is drawn from a seeded RNG, so the
//! crash lands at a different batch each cycle. After the cycles a last run
//! without the failpoint finishes the input, and the output is checked:
//!
//! - topic sink: every input record is in the output (at least once, no
//!   gap); records written before a crash but not committed appear twice,
//!   which at-least-once allows (and the test checks that duplicates did
//!   happen, so it proves the crashes landed where they should);
//! - sled sink: every input record is a row exactly once, in every table,
//!   and the sink's applied offsets equal the source's end.
//!
//! Needs the `failpoints` feature (the child binary must have them).

mod common;

use common::XorShift;
use millrace::config::Config;
use millrace::{PartitionId, Record, Runtime};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

const CYCLES: usize = 6;
const RECORDS: u64 = 20_000;
const PARTITIONS: u32 = 3;
/// Far longer than a run takes (a few seconds); reached only by a hang.
const CHILD_DEADLINE: std::time::Duration = std::time::Duration::from_secs(120);

fn config_text(data_dir: &Path, sink: &str) -> String {
    format!(
        r#"data_dir = {:?}
[[topic]]
name = "in"
partitions = {PARTITIONS}
[[topic]]
name = "out"
partitions = {PARTITIONS}
[[pipeline]]
name = "copy"
commit_interval = "0s"
fetch_max_bytes = "1 KiB"
[pipeline.source]
topic = "in"
[[pipeline.operator]]
type = "map"
set = {{ copied = true }}
{sink}
"#,
        data_dir.display().to_string()
    )
}

fn produce_input(config: &Path) {
    let runtime = Runtime::start_paused(Config::from_file(config).unwrap()).unwrap();
    let producer = runtime.producer("in").unwrap();
    let records: Vec<Record> = (0..RECORDS)
        .map(|seq| Record::new(format!("{{\"seq\":{seq}}}")).with_key(format!("k{}", seq % 31)))
        .collect();
    for chunk in records.chunks(200) {
        producer.send_batch_blocking(chunk.to_vec()).unwrap();
    }
    runtime.shutdown().unwrap();
}

/// Runs the pipeline as a child; with `abort_after`, it aborts at that commit.
fn run_child(config: &Path, abort_after: Option<u64>, log: &Path) -> std::process::ExitStatus {
    let mut command = Command::new(env!("CARGO_BIN_EXE_millrace"));
    command
        .args(["run", "--until-caught-up"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .env("MILLRACE_LOG", "debug")
        .stderr(std::fs::File::create(log).unwrap());
    if let Some(count) = abort_after {
        command.env(
            "FAILPOINTS",
            format!("pipeline::before_commit={count}*off->return(abort)"),
        );
    }
    let mut child = command.spawn().unwrap();
    // The child stops by itself (caught up, or aborted); a hang is a failure.
    let deadline = std::time::Instant::now() + CHILD_DEADLINE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`millrace run` did not finish within {CHILD_DEADLINE:?}:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn crash_cycles(directory: &Path, sink: &str, seed: u64) -> (std::path::PathBuf, usize) {
    let config = directory.join("pipeline.toml");
    std::fs::write(&config, config_text(&directory.join("data"), sink)).unwrap();
    produce_input(&config);
    let mut random = XorShift::new(seed);
    let mut crashes = 0;
    for cycle in 0..CYCLES {
        let abort_after = 1 + random.below(50);
        let log = directory.join(format!("cycle-{cycle}.log"));
        let status = run_child(&config, Some(abort_after), &log);
        if !status.success() {
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(
                status.signal(),
                Some(libc::SIGABRT),
                "cycle {cycle}: {status:?}\n{}",
                std::fs::read_to_string(&log).unwrap()
            );
            crashes += 1;
        }
    }
    let log = directory.join("final.log");
    let status = run_child(&config, None, &log);
    assert!(
        status.success(),
        "final run: {status:?}\n{}",
        std::fs::read_to_string(&log).unwrap()
    );
    (config, crashes)
}

fn seq_of(value: &[u8]) -> u64 {
    let value: serde_json::Value = serde_json::from_slice(value).unwrap();
    assert_eq!(value["copied"], true, "the map ran: {value}");
    value["seq"].as_u64().unwrap()
}

#[test]
fn a_topic_sink_is_at_least_once_with_no_gap_across_crashes_before_the_commit() {
    let directory = tempfile::tempdir().unwrap();
    let (config, crashes) = crash_cycles(
        directory.path(),
        "[pipeline.sink]\ntype = \"topic\"\ntopic = \"out\"",
        0x7069_7065,
    );
    assert!(crashes >= CYCLES / 2, "most cycles crashed ({crashes})");
    let runtime = Runtime::start_paused(Config::from_file(&config).unwrap()).unwrap();
    let mut seen: BTreeMap<u64, u32> = BTreeMap::new();
    for partition in 0..PARTITIONS {
        for record in common::read_partition(&runtime, "out", PartitionId(partition)) {
            *seen
                .entry(seq_of(record.value.as_deref().unwrap()))
                .or_default() += 1;
        }
    }
    let missing: Vec<u64> = (0..RECORDS).filter(|seq| !seen.contains_key(seq)).collect();
    assert!(missing.is_empty(), "records lost: {missing:?}");
    assert_eq!(seen.len() as u64, RECORDS, "nothing that was not input");
    // The crash lands after the sink write: that batch is written again.
    let repeated = seen.values().filter(|&&count| count > 1).count();
    assert!(
        repeated > 0,
        "no batch was written twice, so no crash hit between write and commit"
    );
    runtime.shutdown().unwrap();
}

#[test]
fn a_sled_sink_is_exactly_once_across_crashes_before_the_commit() {
    let directory = tempfile::tempdir().unwrap();
    let rows = directory.path().join("rows.sled");
    let sink = format!(
        "[pipeline.sink]\ntype = \"sled\"\npath = {:?}\n[[pipeline.sink.table]]\nname = \"by_seq\"\nkey = [\"seq\"]\n[[pipeline.sink.table]]\nname = \"by_origin\"\n",
        rows.display().to_string()
    );
    let (config, crashes) = crash_cycles(directory.path(), &sink, 0x736c_6564);
    assert!(crashes >= CYCLES / 2, "most cycles crashed ({crashes})");
    let database = sled::open(&rows).unwrap();
    for table in ["by_seq", "by_origin"] {
        let tree = database.open_tree(table).unwrap();
        let mut seqs: Vec<u64> = tree.iter().map(|entry| seq_of(&entry.unwrap().1)).collect();
        seqs.sort_unstable();
        assert_eq!(
            seqs,
            (0..RECORDS).collect::<Vec<_>>(),
            "table {table}: one row per record"
        );
    }
    // The sink's own progress reached the end of every source partition.
    let applied = database.open_tree("__millrace_applied").unwrap();
    assert_eq!(applied.len(), PARTITIONS as usize);
    drop(database);
    let runtime = Runtime::start_paused(Config::from_file(&config).unwrap()).unwrap();
    for partition in 0..PARTITIONS {
        let end = runtime
            .offsets_blocking("in", PartitionId(partition))
            .unwrap()
            .high_watermark;
        assert_eq!(
            runtime
                .committed_offset("copy", "in", PartitionId(partition))
                .unwrap(),
            Some(end)
        );
    }
    runtime.shutdown().unwrap();
}
