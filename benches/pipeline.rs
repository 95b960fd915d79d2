//! End-to-end throughput of millrace pipelines through the public API, one
//! scenario per invocation, each run in a fresh child process (so its peak
//! RSS is its own) and a fresh data directory on the repository's filesystem.
//!
//! ```text
//! cargo bench --bench pipeline -- filter-map     [--runs 5] [--records 4000000] [--members 1] [--in-flight 4]
//!                                                [--fetch-max-bytes 262144] [--commit-interval 1s] [--pass-percent 50]
//! cargo bench --bench pipeline -- windowed-count --input FILE [--runs 5] [--members 1] [--in-flight 4] ...
//! cargo bench --bench pipeline -- throttled-sink [--runs 3] [--records 2000000] [--duration 20]
//!                                                [--sink-percent 10 | --sink-rate 50000] [--sample-ms 250]
//! ```
//!
//! Scenarios (`fsync = "always"` on every topic; 4 source partitions unless
//! `--partitions`; pipeline keys at their defaults unless given):
//!
//! - `filter-map`: `--records` JSON values of exactly 100 bytes,
//!   `{"id":N,"level":"error"|"info","user":"uNNNNN","msg":"xx…"}`, unkeyed,
//!   produced (untimed) in batches of 1,000 round-robin over the partitions
//!   of topic `in` with the pipeline not running (`Runtime::start_paused`).
//!   Then the runtime is started again with the pipeline
//!   (`filter level == "error"`, `--pass-percent` of the records pass, 50 by
//!   default → `map project = [id, user, level], set = {routed = true}` →
//!   topic sink `out`, 4 partitions, fsync always) and timed from the call
//!   to `Runtime::start_with` until `Runtime::caught_up` is true (every
//!   source partition's committed offset at its high watermark).
//!   `records_per_s` = source records / those seconds.
//! - `windowed-count`: every line of `--input` (made by
//!   `../shared/bench/windowed_count_input.py`) becomes one record, keyed by
//!   its `"key"` field (so a key's records are in one partition, in file
//!   order: windows per key are global, as in Bytewax), produced untimed as
//!   above; then `key_by field="key"` → `window kind="tumbling" size="1m"
//!   time_field="ts" allowed_lateness="30s" aggregate="count"` → a custom
//!   sink (registered through `Registry`) that counts the windows it gets.
//!   Timed the same way. It also replays the input through the window rules
//!   (per partition, in the same order) to print how many distinct
//!   (key, minute) windows the input has (`windows_distinct`: what a system
//!   that closes every window at end of input emits), how many of them the
//!   final watermark has closed (`windows_expected`: what millrace must
//!   emit) and how many are still open at the end (`windows_open`).
//! - `throttled-sink`: the pipeline (no operators) runs from the start; a
//!   producer thread produces `--records` at full speed (batches of 1,000,
//!   8 in flight, round-robin); the custom sink sleeps so that it processes
//!   at most `--sink-rate` records/s, or without it `--sink-percent` of the
//!   source's produce rate (the rate so far while producing, the final
//!   average after). Runs `--duration` seconds, then shuts down (the sink
//!   stops sleeping). A sampler reads `VmRSS` every `--sample-ms` and the lag
//!   (sum over partitions of high watermark − committed offset); the run
//!   prints min/median/max RSS, the peak `VmHWM`, the lag, and the bound on
//!   batches in flight, `members × in_flight_batches × fetch_max_bytes`
//!   (`bound_mib`); stderr gets RSS and lag once a second.
//!
//! In `filter-map` and `windowed-count`, `peak_rss_mib` is the timed phase's
//! peak: `VmHWM` is reset (`/proc/self/clear_refs`) after the input is
//! produced and freed. `records_per_s_to_last_write` times until the sink had
//! written the last output (before the final commit, which comes after the
//! pipeline's next, empty, long-poll fetch).
//!
//! Output: one `key=value` line per run and a `median_of=` line with the
//! median of every numeric field (and `max_peak_rss_mib`, the largest
//! `VmHWM` over the runs). Data directories go under `--dir` (default:
//! cargo's `target/tmp`) and are removed after each run.

use millrace::config::Config;
use millrace::pipeline::{Registry, Sink, SinkBatch, SinkError};
use millrace::{Offset, PartitionId, Record, Runtime};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

const VALUE_BYTES: usize = 100;
const BATCH_RECORDS: usize = 1_000;
const PRODUCE_IN_FLIGHT: usize = 8;
const CLIENT_WORKER_THREADS: usize = 2;
const POLL_INTERVAL: Duration = Duration::from_millis(5);
const CATCH_UP_LIMIT: Duration = Duration::from_secs(600);
/// Window shape of the windowed-count scenario (kept in step with the TOML).
const WINDOW_MS: i64 = 60_000;
const LATENESS_MS: i64 = 30_000;
/// Marks the internal invocation that runs one measurement.
const CHILD_FLAG: &str = "--child";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    FilterMap,
    WindowedCount,
    ThrottledSink,
}

impl Scenario {
    fn parse(text: &str) -> Option<Scenario> {
        match text {
            "filter-map" => Some(Scenario::FilterMap),
            "windowed-count" => Some(Scenario::WindowedCount),
            "throttled-sink" => Some(Scenario::ThrottledSink),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Scenario::FilterMap => "filter-map",
            Scenario::WindowedCount => "windowed-count",
            Scenario::ThrottledSink => "throttled-sink",
        }
    }
}

#[derive(Clone, Debug)]
struct Options {
    scenario: Scenario,
    runs: usize,
    records: u64,
    partitions: u32,
    members: u32,
    in_flight: u32,
    fetch_max_bytes: u64,
    commit_interval: String,
    pass_percent: u64,
    input: Option<PathBuf>,
    duration: Duration,
    sink_percent: f64,
    sink_rate: Option<f64>,
    sample: Duration,
    directory: PathBuf,
    child: bool,
}

const USAGE: &str = "usage: pipeline filter-map|windowed-count|throttled-sink [--runs N] \
[--records N] [--partitions N] [--members N] [--in-flight N] [--fetch-max-bytes N] \
[--commit-interval DURATION] [--pass-percent N] [--input FILE] [--duration SECONDS] \
[--sink-percent P | --sink-rate RECORDS_PER_S] [--sample-ms N] [--dir PATH]";

fn parse_options(arguments: &[String]) -> Result<Options, String> {
    let mut scenario = None;
    let mut records = None;
    let mut runs = None;
    let mut options = Options {
        scenario: Scenario::FilterMap,
        runs: 5,
        records: 0,
        partitions: 4,
        members: 1,
        in_flight: 4,
        fetch_max_bytes: 256 * 1024,
        commit_interval: "1s".to_owned(),
        pass_percent: 50,
        input: None,
        duration: Duration::from_secs(20),
        sink_percent: 10.0,
        sink_rate: None,
        sample: Duration::from_millis(250),
        directory: PathBuf::from(env!("CARGO_TARGET_TMPDIR")),
        child: false,
    };
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
        let float = |text: String| {
            text.parse::<f64>()
                .map_err(|_| format!("{argument}: not a number: {text}"))
        };
        match argument.as_str() {
            // `cargo bench` passes `--bench` to every bench target.
            "--bench" => {}
            CHILD_FLAG => options.child = true,
            "--runs" => runs = Some(number(value()?)? as usize),
            "--records" => records = Some(number(value()?)?),
            "--partitions" => options.partitions = number(value()?)? as u32,
            "--members" => options.members = number(value()?)? as u32,
            "--in-flight" => options.in_flight = number(value()?)? as u32,
            "--fetch-max-bytes" => options.fetch_max_bytes = number(value()?)?,
            "--commit-interval" => options.commit_interval = value()?,
            "--pass-percent" => options.pass_percent = number(value()?)?.min(100),
            "--input" => options.input = Some(PathBuf::from(value()?)),
            "--duration" => options.duration = Duration::from_secs_f64(float(value()?)?),
            "--sink-percent" => options.sink_percent = float(value()?)?,
            "--sink-rate" => options.sink_rate = Some(float(value()?)?),
            "--sample-ms" => options.sample = Duration::from_millis(number(value()?)?),
            "--dir" => options.directory = PathBuf::from(value()?),
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => match Scenario::parse(other) {
                Some(parsed) if scenario.is_none() => scenario = Some(parsed),
                _ => return Err(format!("unexpected argument {other}\n{USAGE}")),
            },
        }
    }
    options.scenario = scenario.ok_or_else(|| USAGE.to_owned())?;
    options.records = records.unwrap_or(match options.scenario {
        Scenario::FilterMap => 4_000_000,
        Scenario::WindowedCount => 0, // the whole input file
        Scenario::ThrottledSink => 2_000_000,
    });
    options.runs = runs.unwrap_or(match options.scenario {
        Scenario::ThrottledSink => 3,
        _ => 5,
    });
    if options.scenario == Scenario::WindowedCount && options.input.is_none() {
        return Err("windowed-count needs --input FILE (from windowed_count_input.py)".to_owned());
    }
    let positive = [
        ("--runs", options.runs as u64),
        ("--partitions", options.partitions as u64),
        ("--members", options.members as u64),
        ("--in-flight", options.in_flight as u64),
        ("--fetch-max-bytes", options.fetch_max_bytes),
    ];
    if let Some((name, _)) = positive.iter().find(|(_, value)| *value == 0) {
        return Err(format!("{name} must be at least 1"));
    }
    Ok(options)
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
        eprintln!("pipeline bench: {message}");
        std::process::exit(1);
    }
}

/// One measurement: ordered `key=value` fields.
type Fields = Vec<(String, String)>;

fn format_fields(fields: &Fields) -> String {
    fields
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn parse_fields(line: &str) -> Fields {
    line.split_whitespace()
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            Some((key.to_owned(), value.to_owned()))
        })
        .collect()
}

/// Runs each measurement in a fresh child process and prints its line, then
/// the median line.
fn run_parent(options: &Options, arguments: &[String]) -> Result<(), String> {
    let executable = std::env::current_exe().map_err(|error| error.to_string())?;
    let mut measurements: Vec<Fields> = Vec::with_capacity(options.runs);
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
        let line = text
            .lines()
            .rev()
            .find(|line| line.starts_with("measured "))
            .ok_or_else(|| format!("run {run} printed no measurement: {text:?}"))?;
        let fields = parse_fields(line.trim_start_matches("measured "));
        println!("{} run={run} {}", describe(options), format_fields(&fields));
        measurements.push(fields);
    }
    // The median of every field that is a number in every run.
    let mut median_fields: Fields = Vec::new();
    for (key, _) in &measurements[0] {
        let values: Option<Vec<f64>> = measurements
            .iter()
            .map(|fields| {
                fields
                    .iter()
                    .find(|(candidate, _)| candidate == key)
                    .and_then(|(_, value)| value.parse::<f64>().ok())
            })
            .collect();
        if let Some(mut values) = values {
            values.sort_by(f64::total_cmp);
            let middle = values.len() / 2;
            let median = if values.len() % 2 == 1 {
                values[middle]
            } else {
                (values[middle - 1] + values[middle]) / 2.0
            };
            median_fields.push((key.clone(), format_number(median)));
        }
    }
    let peak = measurements
        .iter()
        .filter_map(|fields| {
            fields
                .iter()
                .find(|(key, _)| key == "peak_rss_mib")
                .and_then(|(_, value)| value.parse::<f64>().ok())
        })
        .fold(0.0, f64::max);
    median_fields.push(("max_peak_rss_mib".to_owned(), format!("{peak:.1}")));
    println!(
        "{} median_of={} {}",
        describe(options),
        measurements.len(),
        format_fields(&median_fields)
    );
    Ok(())
}

fn format_number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{value:.0}")
    } else if value.abs() >= 100.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.3}")
    }
}

fn describe(options: &Options) -> String {
    let common = format!(
        "scenario={} partitions={} members={} in_flight={} fetch_max_bytes={} commit_interval={}",
        options.scenario.name(),
        options.partitions,
        options.members,
        options.in_flight,
        options.fetch_max_bytes,
        options.commit_interval,
    );
    match options.scenario {
        Scenario::FilterMap => format!(
            "{common} value_bytes={VALUE_BYTES} pass_percent={}",
            options.pass_percent
        ),
        Scenario::WindowedCount => format!(
            "{common} input={}",
            options
                .input
                .as_deref()
                .and_then(Path::file_name)
                .map_or("-".into(), |name| name.to_string_lossy())
        ),
        Scenario::ThrottledSink => format!(
            "{common} value_bytes={VALUE_BYTES} records={} sink={} duration_s={}",
            options.records,
            match options.sink_rate {
                Some(rate) => format!("{rate:.0}/s"),
                None => format!("{}%_of_source", options.sink_percent),
            },
            options.duration.as_secs_f64()
        ),
    }
}

/// One measurement, in this (fresh) process.
fn run_child(options: &Options) -> Result<(), String> {
    std::fs::create_dir_all(&options.directory)
        .map_err(|error| format!("create {}: {error}", options.directory.display()))?;
    let data = tempfile::Builder::new()
        .prefix("millrace-pipeline-")
        .tempdir_in(&options.directory)
        .map_err(|error| format!("temp dir in {}: {error}", options.directory.display()))?;
    let mut fields = match options.scenario {
        Scenario::FilterMap => filter_map(options, data.path())?,
        Scenario::WindowedCount => windowed_count(options, data.path())?,
        Scenario::ThrottledSink => throttled_sink(options, data.path())?,
    };
    fields.push(("peak_rss_mib".to_owned(), format!("{:.1}", peak_rss_mib()?)));
    println!("measured {}", format_fields(&fields));
    Ok(())
}

fn field(fields: &mut Fields, key: &str, value: impl ToString) {
    fields.push((key.to_owned(), value.to_string()));
}

/// The `[[pipeline]]` keys every scenario takes from the options.
fn pipeline_keys(options: &Options) -> String {
    format!(
        "members = {}\ncommit_interval = \"{}\"\nfetch_max_bytes = {}\nin_flight_batches = {}\n",
        options.members, options.commit_interval, options.fetch_max_bytes, options.in_flight
    )
}

fn config(data_dir: &Path, body: &str) -> Result<Config, String> {
    let text = format!(
        "data_dir = {:?}\nshutdown_timeout = \"60s\"\n{body}",
        data_dir.display().to_string()
    );
    Config::from_toml_str(&text, "<bench>").map_err(|error| format!("config: {error}"))
}

fn client_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(CLIENT_WORKER_THREADS)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Sends each partition's batches in order (one batch in flight per
/// partition, all partitions at once): per-partition order is the input
/// order, which event time depends on.
fn produce_in_order(
    runtime: &Runtime,
    topic: &str,
    per_partition: Vec<Vec<Record>>,
) -> Result<(), String> {
    let producer = runtime.producer(topic).map_err(|error| error.to_string())?;
    client_runtime().block_on(async move {
        let tasks: Vec<_> = per_partition
            .into_iter()
            .enumerate()
            .map(|(partition, records)| {
                let producer = producer.clone();
                tokio::spawn(async move {
                    let mut records = records.into_iter();
                    loop {
                        let batch: Vec<Record> = records.by_ref().take(BATCH_RECORDS).collect();
                        if batch.is_empty() {
                            break;
                        }
                        producer
                            .send_batch_to(PartitionId(partition as u32), batch)
                            .await
                            .map_err(|error| format!("send_batch_to: {error}"))?;
                    }
                    Ok::<(), String>(())
                })
            })
            .collect();
        for task in tasks {
            task.await.map_err(|error| error.to_string())??;
        }
        Ok(())
    })
}

/// Produces `records` values made by `make` in batches of 1,000,
/// round-robin over the partitions, `PRODUCE_IN_FLIGHT` batches at once;
/// counts them into `produced` as they are acknowledged.
fn produce_round_robin(
    runtime: &Runtime,
    topic: &str,
    records: u64,
    make: fn(u64, u64) -> Record,
    parameter: u64,
    produced: &AtomicU64,
) -> Result<(), String> {
    let producer = runtime.producer(topic).map_err(|error| error.to_string())?;
    let partitions = runtime.partition_count(topic).ok_or("no such topic")? as u64;
    let batches = records.div_ceil(BATCH_RECORDS as u64);
    let next_batch = AtomicU64::new(0);
    client_runtime().block_on(async {
        let senders = (0..PRODUCE_IN_FLIGHT).map(|_| async {
            loop {
                let index = next_batch.fetch_add(1, Relaxed);
                if index >= batches {
                    return Ok::<(), String>(());
                }
                let first = index * BATCH_RECORDS as u64;
                let count = (BATCH_RECORDS as u64).min(records - first);
                let batch: Vec<Record> =
                    (first..first + count).map(|i| make(i, parameter)).collect();
                producer
                    .send_batch_to(PartitionId((index % partitions) as u32), batch)
                    .await
                    .map_err(|error| format!("send_batch_to: {error}"))?;
                produced.fetch_add(count, Relaxed);
            }
        });
        futures_util::future::join_all(senders)
            .await
            .into_iter()
            .collect::<Result<(), String>>()
    })
}

/// A 100-byte JSON value; `pass_percent` of every 100 ids have level "error".
fn filter_map_record(index: u64, pass_percent: u64) -> Record {
    let level = if index % 100 < pass_percent {
        "error"
    } else {
        "info"
    };
    let mut value = format!(
        "{{\"id\":{index},\"level\":\"{level}\",\"user\":\"u{:05}\",\"msg\":\"",
        index % 100_000
    );
    let pad = VALUE_BYTES.saturating_sub(value.len() + 2);
    value
        .extend((0..pad).map(|position| (b'a' + ((index as usize + position) % 26) as u8) as char));
    value.push_str("\"}");
    debug_assert_eq!(value.len(), VALUE_BYTES);
    Record::new(value)
}

fn filter_map_passes(records: u64, pass_percent: u64) -> u64 {
    (records / 100) * pass_percent + (records % 100).min(pass_percent)
}

/// Times a started runtime until `pipeline` has caught up; also notes when
/// every source record had been read (`records_in_total`) and when the
/// sink had written `expected_out` (if known).
struct CatchUp {
    start_seconds: f64,
    all_read_seconds: f64,
    all_written_seconds: f64,
    seconds: f64,
}

fn wait_caught_up(
    runtime: &Runtime,
    pipeline: &str,
    started: Instant,
    start_seconds: f64,
    records: u64,
    expected_out: Option<u64>,
) -> Result<CatchUp, String> {
    let mut all_read = None;
    let mut all_written = None;
    loop {
        let metrics = runtime.metrics();
        let snapshot = metrics
            .pipelines
            .iter()
            .find(|snapshot| snapshot.pipeline == pipeline)
            .ok_or("no pipeline metrics")?;
        if snapshot.failed {
            return Err(format!("pipeline {pipeline} failed"));
        }
        let now = started.elapsed().as_secs_f64();
        if all_read.is_none() && snapshot.records_in_total >= records {
            all_read = Some(now);
        }
        if all_written.is_none()
            && expected_out.is_some_and(|out| snapshot.records_out_total >= out)
        {
            all_written = Some(now);
        }
        if runtime.caught_up(pipeline) == Some(true) {
            let seconds = started.elapsed().as_secs_f64();
            return Ok(CatchUp {
                start_seconds,
                all_read_seconds: all_read.unwrap_or(seconds),
                all_written_seconds: all_written.unwrap_or(seconds),
                seconds,
            });
        }
        if started.elapsed() > CATCH_UP_LIMIT {
            return Err(format!(
                "pipeline {pipeline} did not catch up in {CATCH_UP_LIMIT:?}"
            ));
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

fn filter_map(options: &Options, data_dir: &Path) -> Result<Fields, String> {
    let body = format!(
        r#"
[[topic]]
name = "in"
partitions = {partitions}
fsync = "always"
[[topic]]
name = "out"
partitions = {partitions}
fsync = "always"

[[pipeline]]
name = "filter_map"
{keys}
[pipeline.source]
topic = "in"
[[pipeline.operator]]
type = "filter"
field = "level"
equals = "error"
[[pipeline.operator]]
type = "map"
project = ["id", "user", "level"]
set = {{ routed = true }}
[pipeline.sink]
type = "topic"
topic = "out"
"#,
        partitions = options.partitions,
        keys = pipeline_keys(options),
    );
    let config = config(data_dir, &body)?;
    // Untimed: the source records, with the pipeline not running.
    let paused =
        Runtime::start_paused(config.clone()).map_err(|error| format!("start: {error}"))?;
    let produced = AtomicU64::new(0);
    let produce_started = Instant::now();
    produce_round_robin(
        &paused,
        "in",
        options.records,
        filter_map_record,
        options.pass_percent,
        &produced,
    )?;
    let produce_seconds = produce_started.elapsed().as_secs_f64();
    paused.shutdown().map_err(|error| error.to_string())?;
    let expected_out = filter_map_passes(options.records, options.pass_percent);
    reset_peak_rss()?;
    let rss_at_start_mib = status_kib("VmRSS:")? / 1024.0;

    // Timed: start with the pipeline, until it has committed everything.
    let started = Instant::now();
    let runtime =
        Runtime::start_with(config, Registry::new()).map_err(|error| format!("start: {error}"))?;
    let start_seconds = started.elapsed().as_secs_f64();
    let catch_up = wait_caught_up(
        &runtime,
        "filter_map",
        started,
        start_seconds,
        options.records,
        Some(expected_out),
    )?;
    let metrics = runtime.metrics();
    let snapshot = &metrics.pipelines[0];
    let mut out_topic = 0;
    for partition in 0..options.partitions {
        out_topic += runtime
            .offsets_blocking("out", PartitionId(partition))
            .map_err(|error| error.to_string())?
            .high_watermark
            .0;
    }
    if snapshot.records_in_total != options.records
        || snapshot.records_out_total != expected_out
        || out_topic != expected_out
    {
        return Err(format!(
            "read {} records, wrote {} (out topic holds {out_topic}), expected {} and {expected_out}",
            snapshot.records_in_total, snapshot.records_out_total, options.records
        ));
    }
    let commits_and_flushes = metrics.fsyncs_total;
    runtime.shutdown().map_err(|error| error.to_string())?;
    let mut fields = Fields::new();
    field(&mut fields, "records", options.records);
    field(&mut fields, "records_out", snapshot.records_out_total);
    field(&mut fields, "seconds", format!("{:.3}", catch_up.seconds));
    field(
        &mut fields,
        "records_per_s",
        format!("{:.0}", options.records as f64 / catch_up.seconds),
    );
    field(
        &mut fields,
        "records_out_per_s",
        format!(
            "{:.0}",
            snapshot.records_out_total as f64 / catch_up.seconds
        ),
    );
    field(
        &mut fields,
        "start_s",
        format!("{:.3}", catch_up.start_seconds),
    );
    field(
        &mut fields,
        "all_read_s",
        format!("{:.3}", catch_up.all_read_seconds),
    );
    field(
        &mut fields,
        "all_written_s",
        format!("{:.3}", catch_up.all_written_seconds),
    );
    field(
        &mut fields,
        "records_per_s_to_last_write",
        format!(
            "{:.0}",
            options.records as f64 / catch_up.all_written_seconds
        ),
    );
    field(&mut fields, "fsyncs", commits_and_flushes);
    field(&mut fields, "dead_letters", snapshot.dead_letters_total);
    field(
        &mut fields,
        "produce_records_per_s",
        format!("{:.0}", options.records as f64 / produce_seconds),
    );
    field(
        &mut fields,
        "rss_at_start_mib",
        format!("{rss_at_start_mib:.1}"),
    );
    Ok(fields)
}

/// Counts the windows (result events) it is given.
struct CountWindows(Arc<AtomicU64>);

impl Sink for CountWindows {
    fn write(&mut self, batch: &SinkBatch<'_>) -> Result<(), SinkError> {
        self.0.fetch_add(batch.events.len() as u64, Relaxed);
        Ok(())
    }
}

/// The text of string field `name` in a JSON line of the input format.
fn text_field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let pattern = format!("\"{name}\":\"");
    let start = line.find(&pattern)? + pattern.len();
    let length = line[start..].find('"')?;
    Some(&line[start..start + length])
}

fn integer_field(line: &str, name: &str) -> Option<i64> {
    let pattern = format!("\"{name}\":");
    let start = line.find(&pattern)? + pattern.len();
    let digits = line[start..]
        .find(|c: char| !(c.is_ascii_digit() || c == '-'))
        .unwrap_or(line.len() - start);
    line[start..start + digits].parse().ok()
}

/// What the window rules make of the input, per partition in file order:
/// every non-late record opens or counts in its (key, minute) window; a
/// record is late when its window's end is at or before the watermark
/// (largest time so far minus the allowed lateness). Windows whose end is at
/// or before the final watermark have fired; the others are still open.
struct WindowExpectation {
    distinct: u64,
    fired: u64,
    open: u64,
    late: u64,
}

fn expect_windows(per_partition: &[Vec<(String, i64)>]) -> WindowExpectation {
    let mut expectation = WindowExpectation {
        distinct: 0,
        fired: 0,
        open: 0,
        late: 0,
    };
    let mut all: HashSet<(&str, i64)> = HashSet::new();
    for records in per_partition {
        let mut max_time: Option<i64> = None;
        let mut windows: HashSet<(&str, i64)> = HashSet::new();
        for (key, time) in records {
            let start = time.div_euclid(WINDOW_MS) * WINDOW_MS;
            all.insert((key.as_str(), start));
            let watermark = max_time.map(|max| max - LATENESS_MS);
            if watermark.is_some_and(|watermark| start + WINDOW_MS <= watermark) {
                expectation.late += 1;
            } else {
                windows.insert((key.as_str(), start));
            }
            max_time = Some(max_time.map_or(*time, |max| max.max(*time)));
        }
        let watermark = max_time.map_or(i64::MIN, |max| max - LATENESS_MS);
        for (_, start) in windows {
            if start + WINDOW_MS <= watermark {
                expectation.fired += 1;
            } else {
                expectation.open += 1;
            }
        }
    }
    expectation.distinct = all.len() as u64;
    expectation
}

fn windowed_count(options: &Options, data_dir: &Path) -> Result<Fields, String> {
    let input = options.input.as_ref().expect("checked at parse");
    let text = std::fs::read_to_string(input)
        .map_err(|error| format!("read {}: {error}", input.display()))?;
    let partitions = options.partitions;
    let mut per_partition: Vec<Vec<Record>> = (0..partitions).map(|_| Vec::new()).collect();
    let mut times: Vec<Vec<(String, i64)>> = (0..partitions).map(|_| Vec::new()).collect();
    let mut records = 0u64;
    let mut keys: HashSet<&str> = HashSet::new();
    for line in text.lines().filter(|line| !line.is_empty()) {
        if options.records > 0 && records >= options.records {
            break;
        }
        let key = text_field(line, "key").ok_or_else(|| format!("no \"key\" in {line}"))?;
        let time = integer_field(line, "ts").ok_or_else(|| format!("no \"ts\" in {line}"))?;
        let partition =
            millrace::partitioner::partition_for_key(key.as_bytes(), partitions) as usize;
        keys.insert(key);
        per_partition[partition].push(Record::new(line.to_owned()).with_key(key.to_owned()));
        times[partition].push((key.to_owned(), time));
        records += 1;
    }
    let key_count = keys.len();
    let expectation = expect_windows(&times);
    drop(times);

    let body = format!(
        r#"
[[topic]]
name = "events"
partitions = {partitions}
fsync = "always"

[[pipeline]]
name = "windowed_count"
{keys}
[pipeline.source]
topic = "events"
[[pipeline.operator]]
type = "key_by"
field = "key"
[[pipeline.operator]]
type = "window"
kind = "tumbling"
size = "1m"
time_field = "ts"
allowed_lateness = "30s"
aggregate = "count"
[pipeline.sink]
type = "custom"
name = "count_windows"
"#,
        keys = pipeline_keys(options),
    );
    let config = config(data_dir, &body)?;
    let paused =
        Runtime::start_paused(config.clone()).map_err(|error| format!("start: {error}"))?;
    let produce_started = Instant::now();
    produce_in_order(&paused, "events", per_partition)?;
    let produce_seconds = produce_started.elapsed().as_secs_f64();
    paused.shutdown().map_err(|error| error.to_string())?;
    drop(text);
    reset_peak_rss()?;
    let rss_at_start_mib = status_kib("VmRSS:")? / 1024.0;

    let windows = Arc::new(AtomicU64::new(0));
    let mut registry = Registry::new();
    let counter = Arc::clone(&windows);
    registry.sink("count_windows", move |_| {
        Ok(Box::new(CountWindows(Arc::clone(&counter))) as Box<dyn Sink>)
    });
    let started = Instant::now();
    let runtime =
        Runtime::start_with(config, registry).map_err(|error| format!("start: {error}"))?;
    let start_seconds = started.elapsed().as_secs_f64();
    let catch_up = wait_caught_up(
        &runtime,
        "windowed_count",
        started,
        start_seconds,
        records,
        Some(expectation.fired),
    )?;
    let metrics = runtime.metrics();
    let snapshot = &metrics.pipelines[0];
    if snapshot.records_in_total != records {
        return Err(format!(
            "read {} records, produced {records}",
            snapshot.records_in_total
        ));
    }
    let (late, dead_letters) = (snapshot.late_total, snapshot.dead_letters_total);
    runtime.shutdown().map_err(|error| error.to_string())?;
    let windows = windows.load(Relaxed);
    let mut fields = Fields::new();
    field(&mut fields, "records", records);
    field(&mut fields, "keys", key_count);
    field(&mut fields, "seconds", format!("{:.3}", catch_up.seconds));
    field(
        &mut fields,
        "records_per_s",
        format!("{:.0}", records as f64 / catch_up.seconds),
    );
    field(&mut fields, "windows", windows);
    field(&mut fields, "windows_expected", expectation.fired);
    field(&mut fields, "windows_open", expectation.open);
    field(&mut fields, "windows_distinct", expectation.distinct);
    field(&mut fields, "late", late);
    field(&mut fields, "late_expected", expectation.late);
    field(&mut fields, "dead_letters", dead_letters);
    field(
        &mut fields,
        "start_s",
        format!("{:.3}", catch_up.start_seconds),
    );
    field(
        &mut fields,
        "all_read_s",
        format!("{:.3}", catch_up.all_read_seconds),
    );
    field(
        &mut fields,
        "all_written_s",
        format!("{:.3}", catch_up.all_written_seconds),
    );
    field(
        &mut fields,
        "records_per_s_to_last_write",
        format!("{:.0}", records as f64 / catch_up.all_written_seconds),
    );
    field(
        &mut fields,
        "produce_records_per_s",
        format!("{:.0}", records as f64 / produce_seconds),
    );
    field(
        &mut fields,
        "ingest_and_process_records_per_s",
        format!(
            "{:.0}",
            records as f64 / (produce_seconds + catch_up.seconds)
        ),
    );
    field(
        &mut fields,
        "rss_at_start_mib",
        format!("{rss_at_start_mib:.1}"),
    );
    Ok(fields)
}

/// What the throttled sink and the producer share.
struct Throttle {
    /// When production began (set once, before the producer starts).
    started: Instant,
    produced: AtomicU64,
    /// Nanoseconds from `started` to the end of production; 0 while producing.
    produce_nanos: AtomicU64,
    processed: AtomicU64,
    stop: AtomicBool,
    fraction: f64,
    /// A fixed sink rate (records/s) instead of `fraction` of the source's.
    fixed_rate: Option<f64>,
}

impl Throttle {
    /// The source's produce rate so far (records/s).
    fn source_rate(&self) -> f64 {
        let nanos = self.produce_nanos.load(Relaxed);
        let seconds = if nanos == 0 {
            self.started.elapsed().as_secs_f64()
        } else {
            nanos as f64 / 1e9
        };
        self.produced.load(Relaxed) as f64 / seconds.max(1e-3)
    }

    /// The rate the sink may process at (records/s).
    fn sink_rate(&self) -> f64 {
        self.fixed_rate
            .unwrap_or_else(|| self.source_rate() * self.fraction)
    }
}

/// Sleeps so that it processes at most `fraction` of the source rate.
struct ThrottledSink(Arc<Throttle>);

impl Sink for ThrottledSink {
    fn write(&mut self, batch: &SinkBatch<'_>) -> Result<(), SinkError> {
        let throttle = &self.0;
        let count = batch.events.len() as u64;
        let wanted = (throttle.processed.load(Relaxed) + count) as f64;
        loop {
            if throttle.stop.load(Relaxed) {
                break;
            }
            let rate = throttle.sink_rate();
            let allowed = rate * throttle.started.elapsed().as_secs_f64();
            if allowed >= wanted {
                break;
            }
            let wait = if rate > 0.0 {
                (wanted - allowed) / rate
            } else {
                0.02
            };
            std::thread::sleep(Duration::from_secs_f64(wait.clamp(0.001, 0.02)));
        }
        throttle.processed.fetch_add(count, Relaxed);
        Ok(())
    }
}

fn status_kib(name: &str) -> Result<f64, String> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|error| format!("read /proc/self/status: {error}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<f64>()
                .ok()
        })
        .ok_or_else(|| format!("no {name} in /proc/self/status"))
}

fn total_lag(runtime: &Runtime, group: &str, topic: &str, partitions: u32) -> Result<u64, String> {
    let mut lag = 0;
    for partition in 0..partitions {
        let partition = PartitionId(partition);
        let high_watermark = runtime
            .offsets_blocking(topic, partition)
            .map_err(|error| error.to_string())?
            .high_watermark;
        let committed = runtime
            .committed_offset(group, topic, partition)
            .map_err(|error| error.to_string())?
            .unwrap_or(Offset(0));
        lag += high_watermark.0.saturating_sub(committed.0);
    }
    Ok(lag)
}

fn throttled_record(index: u64, _: u64) -> Record {
    filter_map_record(index, 50)
}

fn throttled_sink(options: &Options, data_dir: &Path) -> Result<Fields, String> {
    let body = format!(
        r#"
[[topic]]
name = "in"
partitions = {partitions}
fsync = "always"

[[pipeline]]
name = "slow"
{keys}
[pipeline.source]
topic = "in"
[pipeline.sink]
type = "custom"
name = "throttled"
"#,
        partitions = options.partitions,
        keys = pipeline_keys(options),
    );
    let config = config(data_dir, &body)?;
    let bound_mib =
        options.members as f64 * options.in_flight as f64 * options.fetch_max_bytes as f64
            / (1024.0 * 1024.0);
    let rss_before_mib = status_kib("VmRSS:")? / 1024.0;
    // The sink's clock and the source's rate start together, at the start.
    let throttle = Arc::new(Throttle {
        started: Instant::now(),
        produced: AtomicU64::new(0),
        produce_nanos: AtomicU64::new(0),
        processed: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        fraction: options.sink_percent / 100.0,
        fixed_rate: options.sink_rate,
    });
    let mut registry = Registry::new();
    let shared = Arc::clone(&throttle);
    registry.sink("throttled", move |_| {
        Ok(Box::new(ThrottledSink(Arc::clone(&shared))) as Box<dyn Sink>)
    });
    let runtime =
        Runtime::start_with(config, registry).map_err(|error| format!("start: {error}"))?;
    let partitions = options.partitions;
    let deadline = throttle.started + options.duration;
    struct Sample {
        rss_mib: f64,
        lag: u64,
    }
    let (samples, produce_result) = std::thread::scope(|scope| {
        let producer = scope.spawn(|| {
            let result = produce_round_robin(
                &runtime,
                "in",
                options.records,
                throttled_record,
                0,
                &throttle.produced,
            );
            throttle
                .produce_nanos
                .store(throttle.started.elapsed().as_nanos().max(1) as u64, Relaxed);
            result
        });
        let mut samples = Vec::new();
        let mut next = Instant::now();
        loop {
            next += options.sample;
            let now = Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            }
            let rss_mib = status_kib("VmRSS:")? / 1024.0;
            let lag = total_lag(&runtime, "slow", "in", partitions)?;
            samples.push(Sample { rss_mib, lag });
            if Instant::now() >= deadline {
                break;
            }
        }
        throttle.stop.store(true, Relaxed);
        let produce_result = producer
            .join()
            .map_err(|_| "the producer panicked".to_owned())?;
        Ok::<_, String>((samples, produce_result))
    })?;
    produce_result?;
    let seconds = throttle.started.elapsed().as_secs_f64();
    let processed = throttle.processed.load(Relaxed);
    let produced = throttle.produced.load(Relaxed);
    let produce_seconds = throttle.produce_nanos.load(Relaxed) as f64 / 1e9;
    let final_lag = samples.last().map_or(0, |sample| sample.lag);
    let max_lag = samples.iter().map(|sample| sample.lag).max().unwrap_or(0);
    runtime.shutdown().map_err(|error| error.to_string())?;
    let mut rss: Vec<f64> = samples.iter().map(|sample| sample.rss_mib).collect();
    rss.sort_by(f64::total_cmp);
    // After the first second, when the pipeline's buffers are full.
    let settled: Vec<f64> = samples
        .iter()
        .skip((1.0 / options.sample.as_secs_f64()).ceil() as usize)
        .map(|sample| sample.rss_mib)
        .collect();
    let (settled_min, settled_max) = settled
        .iter()
        .fold((f64::MAX, 0.0f64), |(low, high), value| {
            (low.min(*value), high.max(*value))
        });
    let series: Vec<String> = samples
        .iter()
        .step_by((1.0 / options.sample.as_secs_f64()).round().max(1.0) as usize)
        .map(|sample| format!("{:.0}", sample.rss_mib))
        .collect();
    eprintln!(
        "throttled-sink: VmRSS MiB once a second: {}",
        series.join(" ")
    );
    let lags: Vec<String> = samples
        .iter()
        .step_by((1.0 / options.sample.as_secs_f64()).round().max(1.0) as usize)
        .map(|sample| sample.lag.to_string())
        .collect();
    eprintln!("throttled-sink: lag once a second: {}", lags.join(" "));
    let mut fields = Fields::new();
    field(&mut fields, "records", produced);
    field(&mut fields, "seconds", format!("{seconds:.3}"));
    field(
        &mut fields,
        "source_records_per_s",
        format!("{:.0}", produced as f64 / produce_seconds),
    );
    field(&mut fields, "sink_records", processed);
    field(
        &mut fields,
        "sink_records_per_s",
        format!("{:.0}", processed as f64 / seconds),
    );
    field(
        &mut fields,
        "sink_percent_of_source",
        format!(
            "{:.1}",
            100.0 * (processed as f64 / seconds) / (produced as f64 / produce_seconds)
        ),
    );
    field(&mut fields, "samples", samples.len());
    field(
        &mut fields,
        "rss_before_mib",
        format!("{rss_before_mib:.1}"),
    );
    field(&mut fields, "rss_min_mib", format!("{:.1}", rss[0]));
    field(
        &mut fields,
        "rss_median_mib",
        format!("{:.1}", rss[rss.len() / 2]),
    );
    field(
        &mut fields,
        "rss_max_mib",
        format!("{:.1}", rss[rss.len() - 1]),
    );
    field(
        &mut fields,
        "rss_spread_after_1s_mib",
        format!("{:.1}", settled_max - settled_min),
    );
    field(&mut fields, "bound_mib", format!("{bound_mib:.1}"));
    field(&mut fields, "lag_final", final_lag);
    field(&mut fields, "lag_max", max_lag);
    Ok(fields)
}

/// Resets `VmHWM` to the current RSS (Linux: `5` to `/proc/self/clear_refs`),
/// so the peak reported is the timed phase's, not the input preparation's.
/// Freed input buffers are first given back to the kernel (`malloc_trim`).
fn reset_peak_rss() -> Result<(), String> {
    // SAFETY: malloc_trim only releases free heap memory; glibc, Linux.
    unsafe {
        libc::malloc_trim(0);
    }
    std::fs::write("/proc/self/clear_refs", "5").map_err(|error| format!("reset VmHWM: {error}"))
}

/// Peak resident set of this process (`VmHWM`), in MiB.
fn peak_rss_mib() -> Result<f64, String> {
    Ok(status_kib("VmHWM:")? / 1024.0)
}
