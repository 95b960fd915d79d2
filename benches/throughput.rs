//! End-to-end throughput of millrace through its public API, one scenario
//! per invocation, each run in a fresh child process (so its peak RSS is its
//! own) and a fresh data directory on the repository's filesystem.
//!
//! ```text
//! cargo bench --bench throughput -- produce-batched [--runs 5] [--records 2000000] [--in-flight 8]
//! cargo bench --bench throughput -- produce-single  [--runs 5] [--records 400000] [--producers 256] [--mode tasks|threads]
//! cargo bench --bench throughput -- fetch           [--runs 5] [--records 2000000] [--max-bytes 4194304]
//! ```
//!
//! Scenarios (100-byte values, `fsync = "always"`: every acknowledgement
//! waits for fdatasync):
//!
//! - `produce-batched`: one partition, batches of `--batch-records` (1,000)
//!   sent with `send_batch_to`, `--in-flight` batches outstanding at once
//!   (1 = strictly sequential).
//! - `produce-single`: 16 partitions, `--producers` concurrent producers each
//!   sending one record with `send` and awaiting its acknowledgement before
//!   the next: tokio tasks on a 2-worker runtime (`--mode tasks`) or OS threads
//!   calling `send_blocking` (`--mode threads`). Unkeyed, so round-robin.
//! - `fetch`: produces `--records` (untimed), then times one consumer reading
//!   the partition from offset 0 with `PartitionConsumer::poll`.
//!
//! Output: one `key=value` line per run and a `median` line. `fsyncs_per_s`
//! and `records_per_fsync` come from `Runtime::metrics()` (`fsyncs_total`,
//! `records_produced_total`): group-commit evidence. `peak_rss_mib` is the
//! child's `VmHWM`; the median line reports the largest over its runs.
//!
//! Data directories go under `--dir` (default: cargo's `target/tmp`, on the
//! same filesystem as the repository, never a tmpfs) and are removed after
//! each run.

use millrace::config::{Config, FsyncPolicy, TopicConfig};
use millrace::{FetchOptions, Offset, PartitionId, Producer, Record, Runtime};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TOPIC: &str = "bench";
const VALUE_BYTES_DEFAULT: usize = 100;
const BATCH_RECORDS_DEFAULT: usize = 1_000;
const IN_FLIGHT_DEFAULT: usize = 8;
const PRODUCERS_DEFAULT: usize = 256;
const SINGLE_PARTITIONS: u32 = 16;
const CLIENT_WORKER_THREADS: usize = 2;
const FETCH_MAX_BYTES_DEFAULT: usize = millrace::runtime::FETCH_MAX_BYTES_DEFAULT;
/// Marks the internal invocation that runs one measurement.
const CHILD_FLAG: &str = "--child";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    ProduceBatched,
    ProduceSingle,
    Fetch,
}

impl Scenario {
    fn parse(text: &str) -> Option<Scenario> {
        match text {
            "produce-batched" => Some(Scenario::ProduceBatched),
            "produce-single" => Some(Scenario::ProduceSingle),
            "fetch" => Some(Scenario::Fetch),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Scenario::ProduceBatched => "produce-batched",
            Scenario::ProduceSingle => "produce-single",
            Scenario::Fetch => "fetch",
        }
    }

    fn default_records(self) -> u64 {
        match self {
            Scenario::ProduceBatched => 2_000_000,
            Scenario::ProduceSingle => 400_000,
            Scenario::Fetch => 2_000_000,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ClientMode {
    /// Tokio tasks on a multi-threaded runtime, `send().await`.
    Tasks,
    /// One OS thread per producer, `send_blocking`.
    Threads,
}

impl ClientMode {
    fn name(self) -> &'static str {
        match self {
            ClientMode::Tasks => "tasks",
            ClientMode::Threads => "threads",
        }
    }
}

#[derive(Clone, Debug)]
struct Options {
    scenario: Scenario,
    runs: usize,
    records: u64,
    value_bytes: usize,
    batch_records: usize,
    in_flight: usize,
    producers: usize,
    mode: ClientMode,
    max_bytes: usize,
    directory: PathBuf,
    child: bool,
}

const USAGE: &str =
    "usage: throughput produce-batched|produce-single|fetch [--runs N] [--records N] \
[--value-bytes N] [--batch-records N] [--in-flight N] [--producers N] [--mode tasks|threads] \
[--max-bytes N] [--dir PATH]";

fn parse_options(arguments: &[String]) -> Result<Options, String> {
    let mut scenario = None;
    let mut options = Options {
        scenario: Scenario::ProduceBatched,
        runs: 5,
        records: 0,
        value_bytes: VALUE_BYTES_DEFAULT,
        batch_records: BATCH_RECORDS_DEFAULT,
        in_flight: IN_FLIGHT_DEFAULT,
        producers: PRODUCERS_DEFAULT,
        mode: ClientMode::Tasks,
        max_bytes: FETCH_MAX_BYTES_DEFAULT,
        directory: PathBuf::from(env!("CARGO_TARGET_TMPDIR")),
        child: false,
    };
    let mut records = None;
    let mut iterator = arguments.iter();
    while let Some(argument) = iterator.next() {
        let mut value = || {
            iterator
                .next()
                .cloned()
                .ok_or_else(|| format!("{argument} needs a value"))
        };
        let number = |text: String| {
            text.replace('_', "")
                .parse::<u64>()
                .map_err(|_| format!("{argument}: not a number: {text}"))
        };
        match argument.as_str() {
            // `cargo bench` passes `--bench` to every bench target.
            "--bench" => {}
            CHILD_FLAG => options.child = true,
            "--runs" => options.runs = number(value()?)? as usize,
            "--records" => records = Some(number(value()?)?),
            "--value-bytes" => options.value_bytes = number(value()?)? as usize,
            "--batch-records" => options.batch_records = number(value()?)? as usize,
            "--in-flight" => options.in_flight = number(value()?)? as usize,
            "--producers" => options.producers = number(value()?)? as usize,
            "--max-bytes" => options.max_bytes = number(value()?)? as usize,
            "--dir" => options.directory = PathBuf::from(value()?),
            "--mode" => {
                options.mode = match value()?.as_str() {
                    "tasks" => ClientMode::Tasks,
                    "threads" => ClientMode::Threads,
                    other => return Err(format!("--mode: expected tasks or threads, got {other}")),
                }
            }
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => match Scenario::parse(other) {
                Some(parsed) if scenario.is_none() => scenario = Some(parsed),
                _ => return Err(format!("unexpected argument {other}\n{USAGE}")),
            },
        }
    }
    options.scenario = scenario.ok_or_else(|| USAGE.to_owned())?;
    options.records = records.unwrap_or(options.scenario.default_records());
    let positive = [
        ("--runs", options.runs),
        ("--records", options.records as usize),
        ("--batch-records", options.batch_records),
        ("--in-flight", options.in_flight),
        ("--producers", options.producers),
        ("--max-bytes", options.max_bytes),
    ];
    if let Some((name, _)) = positive.iter().find(|(_, value)| *value == 0) {
        return Err(format!("{name} must be at least 1"));
    }
    Ok(options)
}

/// What one run measured.
#[derive(Clone, Debug, Default)]
struct Measurement {
    records: u64,
    seconds: f64,
    fsyncs: u64,
    peak_rss_mib: f64,
}

impl Measurement {
    fn records_per_second(&self) -> f64 {
        self.records as f64 / self.seconds
    }
    fn fsyncs_per_second(&self) -> f64 {
        self.fsyncs as f64 / self.seconds
    }
    fn records_per_fsync(&self) -> f64 {
        if self.fsyncs == 0 {
            0.0
        } else {
            self.records as f64 / self.fsyncs as f64
        }
    }
}

fn main() {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let options = match parse_options(&arguments) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };
    let result = if options.child {
        run_child(&options)
    } else {
        run_parent(&options, &arguments)
    };
    if let Err(message) = result {
        eprintln!("throughput: {message}");
        std::process::exit(1);
    }
}

/// Runs each measurement in a fresh child process and prints its line, then
/// the median line.
fn run_parent(options: &Options, arguments: &[String]) -> Result<(), String> {
    let executable = std::env::current_exe().map_err(|error| error.to_string())?;
    let mut measurements = Vec::with_capacity(options.runs);
    for run in 1..=options.runs {
        let output = Command::new(&executable)
            .args(arguments)
            .arg(CHILD_FLAG)
            .stderr(std::process::Stdio::inherit())
            .output()
            .map_err(|error| format!("cannot start the run process: {error}"))?;
        if !output.status.success() {
            return Err(format!("run {run} failed: {}", output.status));
        }
        let text = String::from_utf8_lossy(&output.stdout);
        let measurement = parse_measurement(&text)
            .ok_or_else(|| format!("run {run} printed no measurement: {text:?}"))?;
        println!(
            "{} run={run} {}",
            describe(options),
            format_measurement(&measurement)
        );
        measurements.push(measurement);
    }
    let median = |value: fn(&Measurement) -> f64| {
        let mut values: Vec<f64> = measurements.iter().map(value).collect();
        values.sort_by(f64::total_cmp);
        let middle = values.len() / 2;
        if values.len() % 2 == 1 {
            values[middle]
        } else {
            (values[middle - 1] + values[middle]) / 2.0
        }
    };
    let peak_rss_mib = measurements
        .iter()
        .map(|measurement| measurement.peak_rss_mib)
        .fold(0.0, f64::max);
    println!(
        "{} median_of={} records_per_s={:.0} fsyncs_per_s={:.0} records_per_fsync={:.1} peak_rss_mib={:.1}",
        describe(options),
        measurements.len(),
        median(Measurement::records_per_second),
        median(Measurement::fsyncs_per_second),
        median(Measurement::records_per_fsync),
        peak_rss_mib,
    );
    Ok(())
}

fn describe(options: &Options) -> String {
    let common = format!(
        "scenario={} value_bytes={}",
        options.scenario.name(),
        options.value_bytes
    );
    match options.scenario {
        Scenario::ProduceBatched => format!(
            "{common} batch_records={} in_flight={}",
            options.batch_records, options.in_flight
        ),
        Scenario::ProduceSingle => format!(
            "{common} partitions={SINGLE_PARTITIONS} producers={} mode={}",
            options.producers,
            options.mode.name()
        ),
        Scenario::Fetch => format!("{common} max_bytes={}", options.max_bytes),
    }
}

fn format_measurement(measurement: &Measurement) -> String {
    format!(
        "records={} seconds={:.3} records_per_s={:.0} fsyncs={} fsyncs_per_s={:.0} records_per_fsync={:.1} peak_rss_mib={:.1}",
        measurement.records,
        measurement.seconds,
        measurement.records_per_second(),
        measurement.fsyncs,
        measurement.fsyncs_per_second(),
        measurement.records_per_fsync(),
        measurement.peak_rss_mib,
    )
}

/// Reads back the line `format_measurement` printed in a child.
fn parse_measurement(text: &str) -> Option<Measurement> {
    let line = text.lines().rev().find(|line| line.contains("records="))?;
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
    };
    Some(Measurement {
        records: field("records")?.parse().ok()?,
        seconds: field("seconds")?.parse().ok()?,
        fsyncs: field("fsyncs")?.parse().ok()?,
        peak_rss_mib: field("peak_rss_mib")?.parse().ok()?,
    })
}

/// One measurement, in this (fresh) process.
fn run_child(options: &Options) -> Result<(), String> {
    std::fs::create_dir_all(&options.directory)
        .map_err(|error| format!("create {}: {error}", options.directory.display()))?;
    let data = tempfile::Builder::new()
        .prefix("millrace-throughput-")
        .tempdir_in(&options.directory)
        .map_err(|error| format!("temp dir in {}: {error}", options.directory.display()))?;
    let mut measurement = match options.scenario {
        Scenario::ProduceBatched => produce_batched(options, data.path())?,
        Scenario::ProduceSingle => produce_single(options, data.path())?,
        Scenario::Fetch => fetch(options, data.path())?,
    };
    measurement.peak_rss_mib = peak_rss_mib()?;
    println!("{}", format_measurement(&measurement));
    Ok(())
}

fn start_runtime(data_dir: &Path, partitions: u32) -> Result<Runtime, String> {
    let mut config = Config::new(data_dir);
    let mut topic = TopicConfig::with_defaults(TOPIC);
    topic.partitions = partitions;
    topic.fsync = FsyncPolicy::Always;
    config.topics.push(topic);
    Runtime::start(config).map_err(|error| format!("start: {error}"))
}

fn client_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(CLIENT_WORKER_THREADS)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A distinct value per record, as a real client would build it.
fn value(index: u64, value_bytes: usize) -> Vec<u8> {
    let mut value = vec![b'x'; value_bytes];
    let digits = index.to_le_bytes();
    let length = digits.len().min(value_bytes);
    value[..length].copy_from_slice(&digits[..length]);
    value
}

fn batch(first: u64, count: u64, value_bytes: usize) -> Vec<Record> {
    (first..first + count)
        .map(|index| Record::new(value(index, value_bytes)))
        .collect()
}

/// Offsets produced, and fsyncs done, while `work` ran.
fn measure(
    runtime: &Runtime,
    work: impl FnOnce() -> Result<(), String>,
) -> Result<Measurement, String> {
    let before = runtime.metrics();
    let started = Instant::now();
    work()?;
    let seconds = started.elapsed().as_secs_f64();
    let after = runtime.metrics();
    Ok(Measurement {
        records: after.records_produced_total - before.records_produced_total,
        seconds,
        fsyncs: after.fsyncs_total - before.fsyncs_total,
        peak_rss_mib: 0.0,
    })
}

/// Sends `records` to partition 0 in batches, `in_flight` batches at a time.
async fn send_batches(producer: Producer, options: Options) -> Result<(), String> {
    let batch_records = options.batch_records as u64;
    let batches = options.records.div_ceil(batch_records);
    let next_batch = Arc::new(AtomicU64::new(0));
    let mut senders = Vec::with_capacity(options.in_flight);
    for _ in 0..options.in_flight {
        let producer = producer.clone();
        let next_batch = next_batch.clone();
        let (records, value_bytes) = (options.records, options.value_bytes);
        senders.push(tokio::spawn(async move {
            loop {
                let index = next_batch.fetch_add(1, Relaxed);
                if index >= batches {
                    return Ok::<(), String>(());
                }
                let first = index * batch_records;
                let count = batch_records.min(records - first);
                producer
                    .send_batch_to(PartitionId(0), batch(first, count, value_bytes))
                    .await
                    .map_err(|error| format!("send_batch_to: {error}"))?;
            }
        }));
    }
    for sender in senders {
        sender.await.map_err(|error| error.to_string())??;
    }
    Ok(())
}

fn produce_batched(options: &Options, data_dir: &Path) -> Result<Measurement, String> {
    let runtime = start_runtime(data_dir, 1)?;
    let producer = runtime.producer(TOPIC).map_err(|error| error.to_string())?;
    let client = client_runtime();
    let measurement = measure(&runtime, || {
        client.block_on(send_batches(producer, options.clone()))
    })?;
    check_count(&measurement, options.records)?;
    runtime.shutdown().map_err(|error| error.to_string())?;
    Ok(measurement)
}

fn produce_single(options: &Options, data_dir: &Path) -> Result<Measurement, String> {
    let runtime = start_runtime(data_dir, SINGLE_PARTITIONS)?;
    let producer = runtime.producer(TOPIC).map_err(|error| error.to_string())?;
    let next_record = Arc::new(AtomicU64::new(0));
    let (records, value_bytes) = (options.records, options.value_bytes);
    let measurement = match options.mode {
        ClientMode::Tasks => {
            let client = client_runtime();
            measure(&runtime, || {
                client.block_on(async {
                    let tasks: Vec<_> = (0..options.producers)
                        .map(|_| {
                            let producer = producer.clone();
                            let next_record = next_record.clone();
                            tokio::spawn(async move {
                                loop {
                                    let index = next_record.fetch_add(1, Relaxed);
                                    if index >= records {
                                        return Ok::<(), String>(());
                                    }
                                    producer
                                        .send(Record::new(value(index, value_bytes)))
                                        .await
                                        .map_err(|error| format!("send: {error}"))?;
                                }
                            })
                        })
                        .collect();
                    for task in tasks {
                        task.await.map_err(|error| error.to_string())??;
                    }
                    Ok(())
                })
            })?
        }
        ClientMode::Threads => measure(&runtime, || {
            std::thread::scope(|scope| {
                let threads: Vec<_> = (0..options.producers)
                    .map(|_| {
                        let producer = producer.clone();
                        let next_record = &next_record;
                        std::thread::Builder::new()
                            .stack_size(256 * 1024)
                            .spawn_scoped(scope, move || loop {
                                let index = next_record.fetch_add(1, Relaxed);
                                if index >= records {
                                    return Ok::<(), String>(());
                                }
                                producer
                                    .send_blocking(Record::new(value(index, value_bytes)))
                                    .map_err(|error| format!("send_blocking: {error}"))?;
                            })
                            .expect("spawn producer thread")
                    })
                    .collect();
                threads
                    .into_iter()
                    .try_for_each(|thread| thread.join().expect("producer panicked"))
            })
        })?,
    };
    check_count(&measurement, options.records)?;
    runtime.shutdown().map_err(|error| error.to_string())?;
    Ok(measurement)
}

fn fetch(options: &Options, data_dir: &Path) -> Result<Measurement, String> {
    let runtime = start_runtime(data_dir, 1)?;
    let producer = runtime.producer(TOPIC).map_err(|error| error.to_string())?;
    let fill = Options {
        in_flight: IN_FLIGHT_DEFAULT,
        ..options.clone()
    };
    client_runtime().block_on(send_batches(producer, fill))?;
    let mut consumer = runtime
        .consumer(TOPIC, PartitionId(0), Offset(0))
        .map_err(|error| error.to_string())?;
    consumer.set_options(FetchOptions {
        max_bytes: options.max_bytes,
        max_wait: Duration::ZERO,
    });
    let end = Offset(options.records);
    let started = Instant::now();
    let mut records = 0u64;
    let mut checksum = 0u64;
    while consumer.position() < end {
        let fetched = consumer
            .poll_blocking()
            .map_err(|error| format!("poll: {error}"))?
            .ok_or("runtime shut down during the fetch")?;
        if fetched.records.is_empty() {
            return Err(format!("empty fetch at {}", consumer.position()));
        }
        records += fetched.records.len() as u64;
        // Touch every record so the reads are not only counted.
        checksum = fetched.records.iter().fold(checksum, |sum, record| {
            sum.wrapping_add(record.offset.0)
                .wrapping_add(record.value.as_ref().map_or(0, |value| value.len() as u64))
        });
    }
    let seconds = started.elapsed().as_secs_f64();
    std::hint::black_box(checksum);
    if records != options.records {
        return Err(format!(
            "fetched {records} records, produced {}",
            options.records
        ));
    }
    runtime.shutdown().map_err(|error| error.to_string())?;
    Ok(Measurement {
        records,
        seconds,
        fsyncs: 0,
        peak_rss_mib: 0.0,
    })
}

fn check_count(measurement: &Measurement, expected: u64) -> Result<(), String> {
    if measurement.records != expected {
        return Err(format!(
            "{} records acknowledged, expected {expected}",
            measurement.records
        ));
    }
    Ok(())
}

/// Peak resident set of this process (`VmHWM`), in MiB.
fn peak_rss_mib() -> Result<f64, String> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|error| format!("read /proc/self/status: {error}"))?;
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<f64>()
                .ok()
        })
        .ok_or("no VmHWM in /proc/self/status")?;
    Ok(kib / 1024.0)
}
