//! Real process kills: the `millrace` CLI produces with `--print-acks` and is
//! SIGKILLed at a seeded random point, triggered by the number of
//! acknowledgements it has printed (never by a timer). Ten cycles run on one
//! data directory; after each, the log is opened again and checked with the
//! history checker: every acknowledged record is present exactly once, at
//! its acknowledged partition and offset, with its value; nothing that was
//! never sent appears; no offset is skipped.
//!
//! This fails if acknowledgement ever runs ahead of durability (an ack
//! printed before the fsync would be lost by some kill), if recovery drops or
//! duplicates data (torn tails, interrupted seals: segments are 64 KiB so
//! kills land during seals too), or if keys stop mapping to
//! `partition_for_key`.

mod common;

use common::history::{History, SendOutcome};
use common::XorShift;
use millrace::config::Config;
use millrace::partitioner::partition_for_key;
use millrace::{PartitionId, Runtime};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const CYCLES: u64 = 10;
const PARTITIONS: u32 = 3;
const KEYS: u64 = 23;
const SEED: u64 = 0x6b69_6c6c;
/// The longest a child may take to print the acknowledgements we wait for.
const ACK_DEADLINE: Duration = Duration::from_secs(60);

fn key_of(line: u64) -> String {
    format!("k{}", line % KEYS)
}

fn value_of_line(line: u64) -> String {
    format!("value-{line}")
}

struct Cycle {
    /// (partition, offset) of each acknowledged line, in input order.
    acks: Vec<(u32, u64)>,
    /// Lines handed to the child's stdin (acknowledged or not).
    lines_written: u64,
}

/// Starts `millrace produce`, feeds it lines from `first_line` on, and kills
/// it with SIGKILL once it has printed `kill_after` acknowledgements.
fn produce_until_killed(config: &Path, stderr: &Path, first_line: u64, kill_after: usize) -> Cycle {
    let mut child = Command::new(env!("CARGO_BIN_EXE_millrace"))
        .args(["produce", "-c"])
        .arg(config)
        .args(["-t", "crash", "-K", ":", "--print-acks"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(stderr).unwrap())
        .spawn()
        .expect("spawn millrace produce");
    let stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();

    // Writes until the child dies (the pipe breaks).
    let writer = std::thread::spawn(move || {
        let mut stdin = BufWriter::with_capacity(8192, stdin);
        let mut line = first_line;
        loop {
            let text = format!("{}:{}\n", key_of(line), value_of_line(line));
            if stdin.write_all(text.as_bytes()).is_err() {
                break;
            }
            line += 1;
        }
        // Lines still in our buffer never reached the child; they count as
        // written (outcome unknown), which only makes the check stricter.
        line - first_line
    });
    let (acks_sender, acks_receiver) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let (partition, offset) = line.split_once(' ').expect("ack is \"PARTITION OFFSET\"");
            let ack = (
                partition.parse::<u32>().unwrap(),
                offset.parse::<u64>().unwrap(),
            );
            if acks_sender.send(ack).is_err() {
                break;
            }
        }
    });

    let mut acks = Vec::new();
    while acks.len() < kill_after {
        match acks_receiver.recv_timeout(ACK_DEADLINE) {
            Ok(ack) => acks.push(ack),
            Err(error) => panic!(
                "child stopped acknowledging after {} acks ({error}); stderr: {}",
                acks.len(),
                std::fs::read_to_string(stderr).unwrap_or_default()
            ),
        }
    }
    child.kill().expect("SIGKILL the child");
    let status = child.wait().unwrap();
    assert!(!status.success(), "the child was killed, not finished");
    // Acknowledgements printed before the kill are real acknowledgements.
    acks.extend(acks_receiver.iter());
    reader.join().unwrap();
    let lines_written = writer.join().unwrap();
    assert!(acks.len() as u64 <= lines_written);
    Cycle {
        acks,
        lines_written,
    }
}

/// Opens the data directory in-process and reads every partition.
fn check_log(config: &Path, history: &mut History, context: &str) {
    let runtime = Runtime::start(Config::from_file(config).unwrap()).unwrap();
    history.clear_polls();
    for partition in 0..PARTITIONS {
        for record in common::read_partition(&runtime, "crash", PartitionId(partition)) {
            let key = record.key.as_deref().expect("every record is keyed");
            assert_eq!(
                partition_for_key(key, PARTITIONS),
                partition,
                "{context}: key {:?} stored in the wrong partition",
                String::from_utf8_lossy(key)
            );
            history.poll(
                partition,
                record.offset.0,
                common::value_of(&record).to_vec(),
            );
        }
    }
    let metrics = runtime.metrics();
    assert_eq!(
        metrics.corruptions_total, 0,
        "{context}: a kill must only tear the tail"
    );
    runtime.shutdown().unwrap();
    let report = history.check();
    report.assert_valid(context);
    eprintln!("{context}: {report}");
}

/// The same check through `millrace consume --from-beginning --until-end`.
fn check_log_with_cli(config: &Path, history: &mut History) {
    let output = Command::new(env!("CARGO_BIN_EXE_millrace"))
        .args(["consume", "-c"])
        .arg(config)
        .args([
            "-t",
            "crash",
            "--from-beginning",
            "--until-end",
            "-f",
            "%p %o %v",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    history.clear_polls();
    for line in String::from_utf8(output.stdout).unwrap().lines() {
        let mut fields = line.splitn(3, ' ');
        let partition = fields.next().unwrap().parse().unwrap();
        let offset = fields.next().unwrap().parse().unwrap();
        history.poll(
            partition,
            offset,
            fields.next().unwrap().as_bytes().to_vec(),
        );
    }
    history
        .check()
        .assert_valid("read back with millrace consume");
}

fn write_config(directory: &Path) -> PathBuf {
    let path = directory.join("millrace.toml");
    let text = format!(
        "data_dir = {:?}\n\n[[topic]]\nname = \"crash\"\npartitions = {PARTITIONS}\nsegment_bytes = \"64 KiB\"\n",
        directory.join("data")
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn acknowledged_records_survive_sigkill() {
    let directory = tempfile::tempdir().unwrap();
    let config = write_config(directory.path());
    let stderr = directory.path().join("stderr.txt");
    let mut rng = XorShift::new(SEED);
    let mut history = History::new();
    let mut next_line = 0u64;
    for cycle in 0..CYCLES {
        // Early, middle and late kills: before the first seal, around seals,
        // and with many segments behind.
        let kill_after = match rng.below(3) {
            0 => 1 + rng.below(50),
            1 => 50 + rng.below(3000),
            _ => 3000 + rng.below(25_000),
        } as usize;
        let outcome = produce_until_killed(&config, &stderr, next_line, kill_after);
        for line in 0..outcome.lines_written {
            let number = next_line + line;
            let result = match outcome.acks.get(line as usize) {
                Some(&(partition, offset)) => {
                    assert_eq!(
                        partition,
                        partition_for_key(key_of(number).as_bytes(), PARTITIONS),
                        "line {number} acknowledged on the wrong partition"
                    );
                    SendOutcome::Ok { partition, offset }
                }
                None => SendOutcome::Unknown,
            };
            history.send(value_of_line(number), result);
        }
        next_line += outcome.lines_written;
        check_log(
            &config,
            &mut history,
            &format!(
                "cycle {cycle} (killed after {} acks, asked {kill_after})",
                outcome.acks.len()
            ),
        );
    }
    check_log_with_cli(&config, &mut history);
}

/// The state a SIGKILL leaves when it lands right after a segment roll: the
/// partition actor created the next segment file (at the planned log end
/// offset) but the writer had not yet written the old segment's last
/// batches (never acknowledged). Recovery must not claim offsets that no
/// file holds: the log must end where the data ends, and a reader must
/// reach the high watermark. (Found by `acknowledged_records_survive_sigkill`:
/// a reader got stuck for ever below the high watermark, and
/// `millrace consume --until-end` spun without end.)
#[test]
fn a_segment_created_just_before_a_kill_leaves_no_unreadable_offsets() {
    let directory = tempfile::tempdir().unwrap();
    let make_config = || common::config(directory.path(), vec![common::topic("rolled", 1)]);
    let runtime = Runtime::start(make_config()).unwrap();
    let producer = runtime.producer("rolled").unwrap();
    let values: Vec<String> = (0..10).map(|i| format!("kept-{i}")).collect();
    producer
        .send_batch_to_blocking(
            PartitionId(0),
            values.iter().cloned().map(millrace::Record::new).collect(),
        )
        .unwrap();
    runtime.shutdown().unwrap();

    // An empty next segment at offset 20: offsets 10..20 were planned, never written.
    let partition = common::partition_directory(directory.path(), "rolled", 0);
    let active = partition.join(format!("{:020}.wal", 0));
    let header = &std::fs::read(&active).unwrap()
        [..millrace::storage::segment::SEGMENT_HEADER_BYTES as usize];
    std::fs::write(partition.join(format!("{:020}.wal", 20)), header).unwrap();

    let runtime = Runtime::start(make_config()).unwrap();
    let offsets = runtime.offsets_blocking("rolled", PartitionId(0)).unwrap();
    let records = common::read_partition(&runtime, "rolled", PartitionId(0));
    let read: Vec<&[u8]> = records.iter().map(common::value_of).collect();
    let expected: Vec<&[u8]> = values.iter().map(|value| value.as_bytes()).collect();
    assert_eq!(read, expected);
    assert_eq!(
        offsets.high_watermark,
        millrace::Offset(10),
        "the high watermark must be where the data ends"
    );
    // New records continue right after the data.
    let ack = runtime
        .producer("rolled")
        .unwrap()
        .send_blocking(millrace::Record::new("next"))
        .unwrap();
    assert_eq!(ack.offset, millrace::Offset(10));
    runtime.shutdown().unwrap();
}
