//! The lifecycle benchmarks: how fast a runtime with a large retained store
//! is ready, how fast its background load reads, and what that load costs
//! produce. Plain binary (`harness = false`), one `key=value` line per
//! measurement, a `median_of=` line per figure.
//!
//! ```text
//! cargo bench --bench startup -- [--gib 1] [--restarts 5] [--cold] [--keep]
//!     [--produce-runs 3] [--produce-records 2000000] [--in-flight 8] [--no-produce] [--dir PATH]
//! ```
//!
//! The store: topic `history`, 1 partition, `--gib` GiB of 100-byte values
//! (batches of 1,000, `fsync = "10ms"`), `segment_bytes` = size / 1024 (so at
//! least 1,024 sealed blocks: a segment is sealed before an append that would
//! overflow it), record timestamps spread evenly over the 14 days before the
//! build, so about 1/14 of it is inside the 24 h hot window. It is built under
//! `--dir` (default `target/bench-data`, the repository's filesystem, never a
//! tmpfs) in `startup-{gib}gib/`, reused by a later invocation with the same
//! parameters (a marker file holds them), and deleted at the end unless
//! `--keep` is given. Building prints progress to stderr.
//!
//! Every measurement runs in a fresh child process (so it pays what a real
//! process start pays). `[startup]` is `hot_window = "24h"`, `chunk_bytes`
//! 16 MiB (default), no `background_load_rate`.
//!
//! Figures:
//!
//! 1. `figure=ready`: `start_ms` = wall time of `Runtime::start` returning,
//!    `ready_ms` = from calling it until `Runtime::ready()` is true (polled
//!    every 100 µs). Median of `--restarts` restarts of the same store.
//! 2. `figure=load`: from calling `Runtime::start` until every partition's
//!    `health()` load state is `Complete`. `cold_mb_s` = the cold blocks'
//!    bytes (`metrics().background_load_bytes_total`) over that time, as
//!    specified; `all_mb_s` = every sealed block's bytes over it (the hot
//!    load runs first, on the partition's thread); `loader_mb_s` = cold bytes
//!    over the time from the first `Loading` state seen until `Complete` (the
//!    BlockLoader alone). Same runs as figure 1.
//!    `figure=cat`: `cat` of the same `.log` files to /dev/null (all of
//!    them, and the cold ones alone), median of 3.
//!    With `--cold`, figures 1, 2 and `cat` are repeated after
//!    `sync; echo 3 > /proc/sys/vm/drop_caches` before every run (root only;
//!    the line says `cache=cold-unavailable` if the write fails).
//! 3. `figure=produce`: the `produce-batched` scenario of `throughput.rs`
//!    (batches of 1,000, `--in-flight` outstanding, `fsync = "always"`) on
//!    partition 0 of a *different* topic, `live` (emptied before every run),
//!    for `--produce-records` records: first while the background load of
//!    `history` runs (the window starts once its state is `Loading`, and the
//!    line reports the state before and after the window: `overlap=yes` only
//!    if it was still `Loading` after), then idle once the load is
//!    `Complete`, in the same process. Median of `--produce-runs` runs, warm
//!    page cache.

use bytes::Bytes;
use millrace::config::{Config, FsyncPolicy, TopicConfig};
use millrace::health::LoadState;
use millrace::{PartitionId, Producer, Record, Runtime};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const HISTORY: &str = "history";
const LIVE: &str = "live";
const VALUE_BYTES: usize = 100;
const BATCH_RECORDS: u64 = 1_000;
const SPAN_MS: i64 = 14 * DAY_MS;
const DAY_MS: i64 = 24 * 60 * 60 * 1000;
const HOT_WINDOW: Duration = Duration::from_secs(24 * 60 * 60);
const BUILD_IN_FLIGHT: usize = 8;
const CLIENT_WORKER_THREADS: usize = 2;
const MARKER_FILE: &str = "startup-bench.marker";
/// Bump when the store layout or generator changes: old stores are rebuilt.
const MARKER_VERSION: u32 = 1;
const CAT_RUNS: usize = 3;
const LOAD_TIMEOUT: Duration = Duration::from_secs(1800);
const CHILD_FLAG: &str = "--child";
const BYTES_PER_GIB: f64 = (1u64 << 30) as f64;
const BYTES_PER_MB: f64 = 1e6;

const USAGE: &str = "usage: startup [--gib N] [--restarts N] [--cold] [--keep] [--produce-runs N] \
[--produce-records N] [--in-flight N] [--no-produce] [--dir PATH]";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChildMode {
    Startup,
    Produce,
}

#[derive(Clone, Debug)]
struct Options {
    gib: f64,
    restarts: usize,
    cold: bool,
    keep: bool,
    produce: bool,
    produce_runs: usize,
    produce_records: u64,
    in_flight: usize,
    directory: PathBuf,
    child: Option<ChildMode>,
}

fn default_directory() -> PathBuf {
    // CARGO_TARGET_TMPDIR is `target/tmp`; its sibling `bench-data` is on the
    // same filesystem.
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).join("bench-data")
}

fn parse_options(arguments: &[String]) -> Result<Options, String> {
    let mut options = Options {
        gib: 1.0,
        restarts: 5,
        cold: false,
        keep: false,
        produce: true,
        produce_runs: 3,
        produce_records: 2_000_000,
        in_flight: 8,
        directory: default_directory(),
        child: None,
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
        match argument.as_str() {
            // `cargo bench` passes `--bench` to every bench target.
            "--bench" => {}
            CHILD_FLAG => {
                options.child = Some(match value()?.as_str() {
                    "startup" => ChildMode::Startup,
                    "produce" => ChildMode::Produce,
                    other => return Err(format!("{CHILD_FLAG}: unknown mode {other}")),
                })
            }
            "--gib" => {
                let text = value()?;
                options.gib = text
                    .parse::<f64>()
                    .ok()
                    .filter(|gib| *gib > 0.0)
                    .ok_or_else(|| format!("--gib: not a positive number: {text}"))?;
            }
            "--restarts" => options.restarts = number(value()?)? as usize,
            "--cold" => options.cold = true,
            "--keep" => options.keep = true,
            "--no-produce" => options.produce = false,
            "--produce-runs" => options.produce_runs = number(value()?)? as usize,
            "--produce-records" => options.produce_records = number(value()?)?,
            "--in-flight" => options.in_flight = number(value()?)? as usize,
            "--dir" => options.directory = PathBuf::from(value()?),
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unexpected argument {other}\n{USAGE}")),
        }
    }
    let positive = [
        ("--restarts", options.restarts as u64),
        ("--produce-runs", options.produce_runs as u64),
        ("--produce-records", options.produce_records),
        ("--in-flight", options.in_flight as u64),
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
    let result = match options.child {
        Some(ChildMode::Startup) => child_startup(&options),
        Some(ChildMode::Produce) => child_produce(&options),
        None => run_parent(&options, &arguments),
    };
    if let Err(message) = result {
        eprintln!("startup: {message}");
        std::process::exit(1);
    }
}

// ---- the store ------------------------------------------------------------

/// The parameters of a built store, as kept in its marker file.
#[derive(Clone, Debug, PartialEq)]
struct StoreSpec {
    version: u32,
    target_bytes: u64,
    value_bytes: usize,
    segment_bytes: u64,
    records: u64,
    first_timestamp_ms: i64,
    built_unix_ms: i64,
}

impl StoreSpec {
    fn to_text(&self) -> String {
        format!(
            "version={} target_bytes={} value_bytes={} segment_bytes={} records={} first_timestamp_ms={} built_unix_ms={}\n",
            self.version,
            self.target_bytes,
            self.value_bytes,
            self.segment_bytes,
            self.records,
            self.first_timestamp_ms,
            self.built_unix_ms
        )
    }

    fn parse(text: &str) -> Option<StoreSpec> {
        Some(StoreSpec {
            version: field(text, "version")?.parse().ok()?,
            target_bytes: field(text, "target_bytes")?.parse().ok()?,
            value_bytes: field(text, "value_bytes")?.parse().ok()?,
            segment_bytes: field(text, "segment_bytes")?.parse().ok()?,
            records: field(text, "records")?.parse().ok()?,
            first_timestamp_ms: field(text, "first_timestamp_ms")?.parse().ok()?,
            built_unix_ms: field(text, "built_unix_ms")?.parse().ok()?,
        })
    }

    /// Timestamp of record `index` (offset = index: one partition).
    fn timestamp_ms(&self, index: u64) -> i64 {
        self.first_timestamp_ms + (index as u128 * SPAN_MS as u128 / self.records as u128) as i64
    }
}

/// The value of `name=` in a line of `key=value` pairs.
fn field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.split_whitespace()
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

fn target_bytes(options: &Options) -> u64 {
    (options.gib * BYTES_PER_GIB) as u64
}

/// `segment_bytes` for at least 1,024 sealed blocks, a multiple of 4 KiB.
fn segment_bytes_for(target_bytes: u64) -> u64 {
    ((target_bytes / 1024) & !4095).clamp(
        millrace::config::SEGMENT_BYTES_MIN,
        millrace::config::SEGMENT_BYTES_MAX,
    )
}

fn store_directory(options: &Options) -> PathBuf {
    let size = format!("{}", options.gib).replace('.', "_");
    options.directory.join(format!("startup-{size}gib"))
}

fn history_directory(store: &Path) -> PathBuf {
    store.join("topics").join(format!("{HISTORY}-0"))
}

fn live_directory(store: &Path) -> PathBuf {
    store.join("topics").join(format!("{LIVE}-0"))
}

fn config(store: &Path, spec: &StoreSpec) -> Config {
    let mut config = Config::new(store);
    config.startup.hot_window = HOT_WINDOW;
    let mut history = TopicConfig::with_defaults(HISTORY);
    history.segment_bytes = spec.segment_bytes;
    history.fsync = FsyncPolicy::Interval(Duration::from_millis(10));
    config.topics.push(history);
    let mut live = TopicConfig::with_defaults(LIVE);
    live.fsync = FsyncPolicy::Always;
    config.topics.push(live);
    config
}

fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}

fn read_marker(store: &Path) -> Option<StoreSpec> {
    StoreSpec::parse(&std::fs::read_to_string(store.join(MARKER_FILE)).ok()?)
}

/// The store for `options`: reused if its marker matches, else (re)built.
fn prepare_store(options: &Options) -> Result<(PathBuf, StoreSpec, bool), String> {
    let store = store_directory(options);
    let target = target_bytes(options);
    if let Some(spec) = read_marker(&store) {
        if spec.version == MARKER_VERSION
            && spec.target_bytes == target
            && spec.value_bytes == VALUE_BYTES
        {
            let age_hours = (now_unix_ms() - spec.built_unix_ms) as f64 / 3.6e6;
            eprintln!(
                "reusing the store in {} (built {age_hours:.1} h ago)",
                store.display()
            );
            if age_hours > 6.0 {
                eprintln!(
                    "warning: the store is {age_hours:.1} h old, so less of it is inside the 24 h hot window than when built"
                );
            }
            return Ok((store, spec, true));
        }
        eprintln!(
            "the store in {} has other parameters; rebuilding",
            store.display()
        );
    }
    if store.exists() {
        std::fs::remove_dir_all(&store)
            .map_err(|error| format!("remove {}: {error}", store.display()))?;
    }
    std::fs::create_dir_all(&store)
        .map_err(|error| format!("create {}: {error}", store.display()))?;
    let spec = build_store(&store, target)?;
    std::fs::write(store.join(MARKER_FILE), spec.to_text())
        .map_err(|error| format!("write the marker: {error}"))?;
    Ok((store, spec, false))
}

fn client_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(CLIENT_WORKER_THREADS)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// `count` records from `first` on; distinct values sharing one allocation.
fn batch(first: u64, count: u64, timestamp: impl Fn(u64) -> Option<i64>) -> Vec<Record> {
    let mut buffer = vec![b'x'; count as usize * VALUE_BYTES];
    for (slot, index) in buffer.chunks_mut(VALUE_BYTES).zip(first..) {
        slot[..8].copy_from_slice(&index.to_le_bytes());
    }
    let buffer = Bytes::from(buffer);
    (0..count)
        .map(|position| {
            let start = position as usize * VALUE_BYTES;
            let record = Record::new(buffer.slice(start..start + VALUE_BYTES));
            match timestamp(first + position) {
                Some(timestamp_ms) => record.with_timestamp_ms(timestamp_ms),
                None => record,
            }
        })
        .collect()
}

/// Sends `records` records to partition 0, `in_flight` batches at a time.
/// `progress(acknowledged_batches)` is called after every batch.
async fn send_records(
    producer: Producer,
    records: u64,
    in_flight: usize,
    timestamp: Arc<dyn Fn(u64) -> Option<i64> + Send + Sync>,
    progress: Arc<dyn Fn(u64) + Send + Sync>,
) -> Result<(), String> {
    let batches = records.div_ceil(BATCH_RECORDS);
    let next_batch = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let mut senders = Vec::with_capacity(in_flight);
    for _ in 0..in_flight {
        let (producer, next_batch, done) = (producer.clone(), next_batch.clone(), done.clone());
        let (timestamp, progress) = (timestamp.clone(), progress.clone());
        senders.push(tokio::spawn(async move {
            loop {
                let index = next_batch.fetch_add(1, Relaxed);
                if index >= batches {
                    return Ok::<(), String>(());
                }
                let first = index * BATCH_RECORDS;
                let count = BATCH_RECORDS.min(records - first);
                producer
                    .send_batch_to(PartitionId(0), batch(first, count, &*timestamp))
                    .await
                    .map_err(|error| format!("send_batch_to: {error}"))?;
                progress(done.fetch_add(1, Relaxed) + 1);
            }
        }));
    }
    for sender in senders {
        sender.await.map_err(|error| error.to_string())??;
    }
    Ok(())
}

fn build_store(store: &Path, target: u64) -> Result<StoreSpec, String> {
    let segment_bytes = segment_bytes_for(target);
    let mut spec = StoreSpec {
        version: MARKER_VERSION,
        target_bytes: target,
        value_bytes: VALUE_BYTES,
        segment_bytes,
        records: 0,
        first_timestamp_ms: 0,
        built_unix_ms: 0,
    };
    let runtime =
        Runtime::start(config(store, &spec)).map_err(|error| format!("start: {error}"))?;
    let client = client_runtime();
    // One probe batch to the `live` topic (emptied before every measurement)
    // gives the stored bytes per record, so the record count and the
    // timestamps can be fixed before the first history record is sent.
    let live = runtime.producer(LIVE).map_err(|error| error.to_string())?;
    let before = runtime.metrics().bytes_produced_total;
    client.block_on(send_records(
        live,
        BATCH_RECORDS,
        1,
        Arc::new(|_| None),
        Arc::new(|_| {}),
    ))?;
    let bytes_per_record =
        (runtime.metrics().bytes_produced_total - before) as f64 / BATCH_RECORDS as f64;
    spec.records = (target as f64 / bytes_per_record).ceil() as u64;
    spec.first_timestamp_ms = now_unix_ms() - SPAN_MS;
    let batches = spec.records.div_ceil(BATCH_RECORDS);
    eprintln!(
        "building {} : {:.2} GiB = {} records of {VALUE_BYTES} B ({bytes_per_record:.1} B stored each), segment_bytes {segment_bytes}",
        store.display(),
        target as f64 / BYTES_PER_GIB,
        spec.records
    );
    let started = Instant::now();
    let every = (batches / 20).max(1);
    let progress = move |done: u64| {
        if done.is_multiple_of(every) || done == batches {
            let seconds = started.elapsed().as_secs_f64();
            let bytes = done as f64 * BATCH_RECORDS as f64 * bytes_per_record;
            eprintln!(
                "building: {:5.1}% {:.2} GiB in {seconds:.0} s ({:.0} MB/s)",
                100.0 * done as f64 / batches as f64,
                bytes / BYTES_PER_GIB,
                bytes / BYTES_PER_MB / seconds
            );
        }
    };
    let timestamps = spec.clone();
    let history = runtime
        .producer(HISTORY)
        .map_err(|error| error.to_string())?;
    client.block_on(send_records(
        history,
        spec.records,
        BUILD_IN_FLIGHT,
        Arc::new(move |index| Some(timestamps.timestamp_ms(index))),
        Arc::new(progress),
    ))?;
    runtime.shutdown().map_err(|error| error.to_string())?;
    spec.built_unix_ms = now_unix_ms();
    eprintln!("built in {:.0} s", started.elapsed().as_secs_f64());
    Ok(spec)
}

/// The sealed blocks of `history-0`: (file name, bytes, cold).
fn sealed_blocks(store: &Path, spec: &StoreSpec) -> Result<Vec<(String, u64, bool)>, String> {
    let directory = history_directory(store);
    let mut bases: Vec<(u64, String, u64)> = Vec::new();
    let mut active_base = None;
    let entries = std::fs::read_dir(&directory)
        .map_err(|error| format!("list {}: {error}", directory.display()))?;
    for entry in entries {
        let entry = entry.map_err(|error| error.to_string())?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((base, extension)) = name.split_once('.') else {
            continue;
        };
        let Ok(base) = base.parse::<u64>() else {
            continue;
        };
        match extension {
            "log" => {
                let bytes = entry.metadata().map_err(|error| error.to_string())?.len();
                bases.push((base, name, bytes));
            }
            "wal" => active_base = Some(base),
            _ => {}
        }
    }
    bases.sort_unstable();
    // A block is cold when its newest record (the one before the next
    // block's base) is older than the hot window: the runtime splits the
    // same way, from the index header's newest timestamp.
    let cutoff_ms = now_unix_ms() - HOT_WINDOW.as_millis() as i64;
    let mut blocks = Vec::with_capacity(bases.len());
    for position in 0..bases.len() {
        let next_base = bases
            .get(position + 1)
            .map(|(base, _, _)| *base)
            .or(active_base)
            .unwrap_or(spec.records);
        let newest = spec.timestamp_ms(next_base.saturating_sub(1));
        let (_, name, bytes) = &bases[position];
        blocks.push((name.clone(), *bytes, newest < cutoff_ms));
    }
    Ok(blocks)
}

// ---- the parent -------------------------------------------------------------

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    }
}

/// `sync; echo 3 > /proc/sys/vm/drop_caches`.
fn drop_caches() -> Result<(), String> {
    let synced = Command::new("sync")
        .status()
        .map_err(|error| format!("sync: {error}"))?;
    if !synced.success() {
        return Err(format!("sync failed: {synced}"));
    }
    std::fs::write("/proc/sys/vm/drop_caches", "3\n")
        .map_err(|error| format!("write /proc/sys/vm/drop_caches: {error}"))
}

/// Runs one child measurement and returns its last output line.
fn run_child(arguments: &[String], mode: &str) -> Result<String, String> {
    let executable = std::env::current_exe().map_err(|error| error.to_string())?;
    let output = Command::new(executable)
        .args(arguments)
        .args([CHILD_FLAG, mode])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|error| format!("cannot start the run process: {error}"))?;
    if !output.status.success() {
        return Err(format!("{mode} run failed: {}", output.status));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .rev()
        .find(|line| line.contains('='))
        .map(str::to_owned)
        .ok_or_else(|| format!("{mode} run printed nothing: {text:?}"))
}

fn number(line: &str, name: &str) -> f64 {
    field(line, name)
        .and_then(|value| value.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Seconds to `cat` `files` (in `directory`) to /dev/null.
fn time_cat(directory: &Path, files: &[&str]) -> Result<f64, String> {
    let null = File::create("/dev/null").map_err(|error| error.to_string())?;
    let started = Instant::now();
    let status = Command::new("cat")
        .args(files)
        .current_dir(directory)
        .stdout(null)
        .status()
        .map_err(|error| format!("cat: {error}"))?;
    let seconds = started.elapsed().as_secs_f64();
    if !status.success() {
        return Err(format!("cat failed: {status}"));
    }
    Ok(seconds)
}

struct Figures<'a> {
    options: &'a Options,
    arguments: &'a [String],
    store: &'a Path,
    sealed_bytes: u64,
    cold_bytes: u64,
    all_files: Vec<&'a str>,
    cold_files: Vec<&'a str>,
}

impl Figures<'_> {
    fn prefix(&self, figure: &str, cache: &str) -> String {
        format!("figure={figure} gib={} cache={cache}", self.options.gib)
    }

    /// Figures 1 and 2: `--restarts` child starts, with the cache dropped
    /// before each if `cold`.
    fn startup(&self, cache: &str, cold: bool) -> Result<(), String> {
        let mut lines = Vec::new();
        for run in 1..=self.options.restarts {
            if cold {
                drop_caches()?;
            }
            let line = run_child(self.arguments, "startup")?;
            let complete_s = number(&line, "complete_s");
            let loading_s = number(&line, "loading_seen_s");
            let cold_bytes = number(&line, "background_load_bytes");
            println!(
                "{} run={run} {line} cold_mb_s={:.0} all_mb_s={:.0} loader_mb_s={:.0}",
                self.prefix("startup", cache),
                cold_bytes / BYTES_PER_MB / complete_s,
                self.sealed_bytes as f64 / BYTES_PER_MB / complete_s,
                cold_bytes / BYTES_PER_MB / (complete_s - loading_s),
            );
            lines.push(line);
        }
        let values = |name: &str| {
            lines
                .iter()
                .map(|line| number(line, name))
                .collect::<Vec<_>>()
        };
        let rates = |bytes: &dyn Fn(&String) -> f64, from: &str| {
            median(
                lines
                    .iter()
                    .map(|line| {
                        let seconds = number(line, "complete_s")
                            - if from.is_empty() {
                                0.0
                            } else {
                                number(line, from)
                            };
                        bytes(line) / BYTES_PER_MB / seconds
                    })
                    .collect(),
            )
        };
        let background = |line: &String| number(line, "background_load_bytes");
        let sealed = self.sealed_bytes as f64;
        println!(
            "{} median_of={} start_ms={:.1} ready_ms={:.1} max_ready_ms={:.1}",
            self.prefix("ready", cache),
            lines.len(),
            median(values("start_ms")),
            median(values("ready_ms")),
            values("ready_ms").into_iter().fold(0.0, f64::max),
        );
        println!(
            "{} median_of={} complete_s={:.2} cold_bytes={} cold_mb_s={:.0} all_mb_s={:.0} loader_mb_s={:.0}",
            self.prefix("load", cache),
            lines.len(),
            median(values("complete_s")),
            median(values("background_load_bytes")) as u64,
            rates(&background, ""),
            rates(&|_| sealed, ""),
            rates(&background, "loading_seen_s"),
        );
        Ok(())
    }

    fn cat(&self, cache: &str, cold: bool) -> Result<(), String> {
        let directory = history_directory(self.store);
        for (which, files, bytes) in [
            ("all", &self.all_files, self.sealed_bytes),
            ("cold", &self.cold_files, self.cold_bytes),
        ] {
            let mut rates = Vec::new();
            for run in 1..=CAT_RUNS {
                if cold {
                    drop_caches()?;
                }
                let seconds = time_cat(&directory, files)?;
                let rate = bytes as f64 / BYTES_PER_MB / seconds;
                println!(
                    "{} files={which} run={run} blocks={} bytes={bytes} seconds={seconds:.3} mb_s={rate:.0}",
                    self.prefix("cat", cache),
                    files.len()
                );
                rates.push(rate);
            }
            println!(
                "{} files={which} median_of={} mb_s={:.0}",
                self.prefix("cat", cache),
                rates.len(),
                median(rates)
            );
        }
        Ok(())
    }

    fn produce(&self) -> Result<(), String> {
        let mut lines = Vec::new();
        for run in 1..=self.options.produce_runs {
            let line = run_child(self.arguments, "produce")?;
            println!(
                "{} run={run} records={} in_flight={} {line}",
                self.prefix("produce", "warm"),
                self.options.produce_records,
                self.options.in_flight
            );
            lines.push(line);
        }
        let values = |name: &str| {
            lines
                .iter()
                .map(|line| number(line, name))
                .collect::<Vec<_>>()
        };
        let loading = median(values("loading_records_per_s"));
        let idle = median(values("idle_records_per_s"));
        // The ratio per run (idle measured in the same process right after
        // the load), over the runs whose window really overlapped the load.
        let overlapped: Vec<&String> = lines
            .iter()
            .filter(|line| field(line, "overlap") == Some("yes"))
            .collect();
        let overlapped_ratio = median(
            overlapped
                .iter()
                .map(|line| number(line, "ratio"))
                .collect(),
        );
        println!(
            "{} median_of={} topic={LIVE} records={} in_flight={} idle_records_per_s={idle:.0} loading_records_per_s={loading:.0} ratio_of_medians={:.2} runs_overlapped={}/{} median_ratio_overlapped={overlapped_ratio:.2}",
            self.prefix("produce", "warm"),
            lines.len(),
            self.options.produce_records,
            self.options.in_flight,
            loading / idle,
            overlapped.len(),
            lines.len()
        );
        Ok(())
    }
}

fn run_parent(options: &Options, arguments: &[String]) -> Result<(), String> {
    std::fs::create_dir_all(&options.directory)
        .map_err(|error| format!("create {}: {error}", options.directory.display()))?;
    let (store, spec, reused) = prepare_store(options)?;
    let result = measure_all(options, arguments, &store, &spec, reused);
    if options.keep {
        eprintln!("kept the store in {}", store.display());
    } else if let Err(error) = std::fs::remove_dir_all(&store) {
        eprintln!("warning: cannot remove {}: {error}", store.display());
    }
    result
}

fn measure_all(
    options: &Options,
    arguments: &[String],
    store: &Path,
    spec: &StoreSpec,
    reused: bool,
) -> Result<(), String> {
    let blocks = sealed_blocks(store, spec)?;
    let sealed_bytes: u64 = blocks.iter().map(|(_, bytes, _)| bytes).sum();
    let cold_bytes: u64 = blocks
        .iter()
        .filter(|(_, _, cold)| *cold)
        .map(|(_, bytes, _)| bytes)
        .sum();
    let cold_blocks = blocks.iter().filter(|(_, _, cold)| *cold).count();
    println!(
        "store gib={} reused={reused} records={} segment_bytes={} sealed_blocks={} sealed_bytes={sealed_bytes} cold_blocks={cold_blocks} cold_bytes={cold_bytes} hot_window=24h span_days=14",
        options.gib,
        spec.records,
        spec.segment_bytes,
        blocks.len()
    );
    let figures = Figures {
        options,
        arguments,
        store,
        sealed_bytes,
        cold_bytes,
        all_files: blocks.iter().map(|(name, _, _)| name.as_str()).collect(),
        cold_files: blocks
            .iter()
            .filter(|(_, _, cold)| *cold)
            .map(|(name, _, _)| name.as_str())
            .collect(),
    };
    // Warm: one untimed read of every block first.
    time_cat(&history_directory(store), &figures.all_files)?;
    figures.cat("warm", false)?;
    figures.startup("warm", false)?;
    if options.produce {
        figures.produce()?;
    }
    if options.cold {
        match drop_caches() {
            Ok(()) => {
                figures.startup("cold", true)?;
                figures.cat("cold", true)?;
            }
            Err(error) => println!(
                "figure=ready gib={} cache=cold-unavailable reason={:?}",
                options.gib, error
            ),
        }
    }
    Ok(())
}

// ---- the children -----------------------------------------------------------

fn child_store(options: &Options) -> Result<(PathBuf, StoreSpec), String> {
    let store = store_directory(options);
    let spec = read_marker(&store).ok_or_else(|| format!("no store in {}", store.display()))?;
    // The `live` topic starts empty in every run.
    let live = live_directory(&store);
    if live.exists() {
        std::fs::remove_dir_all(&live)
            .map_err(|error| format!("remove {}: {error}", live.display()))?;
    }
    Ok((store, spec))
}

/// The history partition's load state (partition 0 of the first topic).
fn history_load(runtime: &Runtime) -> LoadState {
    runtime
        .health()
        .partitions
        .into_iter()
        .find(|partition| partition.topic == HISTORY)
        .map(|partition| partition.load)
        .unwrap_or(LoadState::WaitingForHotLoad)
}

fn state_name(state: &LoadState) -> &'static str {
    match state {
        LoadState::WaitingForHotLoad => "waiting_for_hot_load",
        LoadState::Loading(_) => "loading",
        LoadState::Complete { .. } => "complete",
        LoadState::Failed { .. } => "failed",
    }
}

/// Polls `health()` until every partition's load is terminal; returns the
/// time since `started` at which a `Loading` state was first seen (if seen).
fn wait_for_complete(runtime: &Runtime, started: Instant) -> Result<Option<f64>, String> {
    let mut loading_seen = None;
    loop {
        let health = runtime.health();
        if let Some(failed) = health
            .partitions
            .iter()
            .find_map(|partition| match &partition.load {
                LoadState::Failed { error } => Some(format!(
                    "{}-{}: {error}",
                    partition.topic, partition.partition
                )),
                _ => None,
            })
        {
            return Err(format!("load failed: {failed}"));
        }
        if health
            .partitions
            .iter()
            .all(|partition| partition.load.is_terminal())
        {
            return Ok(loading_seen);
        }
        if loading_seen.is_none()
            && health
                .partitions
                .iter()
                .any(|partition| matches!(partition.load, LoadState::Loading(_)))
        {
            loading_seen = Some(started.elapsed().as_secs_f64());
        }
        if started.elapsed() > LOAD_TIMEOUT {
            return Err(format!("load not complete after {LOAD_TIMEOUT:?}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Starts the runtime; returns it, the instant before `Runtime::start`, and
/// the seconds until it returned and until it was ready.
fn start_until_ready(config: Config) -> Result<(Runtime, Instant, f64, f64), String> {
    let started = Instant::now();
    let runtime = Runtime::start(config).map_err(|error| format!("start: {error}"))?;
    let start_s = started.elapsed().as_secs_f64();
    while !runtime.ready() {
        if started.elapsed() > LOAD_TIMEOUT {
            return Err("not ready".to_owned());
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    let ready_s = started.elapsed().as_secs_f64();
    Ok((runtime, started, start_s, ready_s))
}

fn child_startup(options: &Options) -> Result<(), String> {
    let (store, spec) = child_store(options)?;
    let (runtime, started, start_s, ready_s) = start_until_ready(config(&store, &spec))?;
    let loading_seen = wait_for_complete(&runtime, started)?;
    let complete_s = started.elapsed().as_secs_f64();
    let metrics = runtime.metrics();
    runtime.shutdown().map_err(|error| error.to_string())?;
    println!(
        "start_ms={:.1} ready_ms={:.1} loading_seen_s={:.3} complete_s={:.3} background_load_bytes={} blocks_loaded={}",
        start_s * 1e3,
        ready_s * 1e3,
        loading_seen.unwrap_or(ready_s),
        complete_s,
        metrics.background_load_bytes_total,
        metrics.blocks_loaded_total,
    );
    Ok(())
}

/// Produce `records` to `live` partition 0; records per second.
fn produce_window(
    runtime: &Runtime,
    client: &tokio::runtime::Runtime,
    options: &Options,
) -> Result<f64, String> {
    let producer = runtime.producer(LIVE).map_err(|error| error.to_string())?;
    let before = runtime.metrics().records_produced_total;
    let started = Instant::now();
    client.block_on(send_records(
        producer,
        options.produce_records,
        options.in_flight,
        Arc::new(|_| None),
        Arc::new(|_| {}),
    ))?;
    let seconds = started.elapsed().as_secs_f64();
    let records = runtime.metrics().records_produced_total - before;
    if records != options.produce_records {
        return Err(format!(
            "{records} records acknowledged, expected {}",
            options.produce_records
        ));
    }
    Ok(records as f64 / seconds)
}

fn child_produce(options: &Options) -> Result<(), String> {
    let (store, spec) = child_store(options)?;
    let client = client_runtime();
    let (runtime, started, _, _) = start_until_ready(config(&store, &spec))?;
    // The window starts once the background load runs (the hot load is over).
    let state_before = loop {
        let state = history_load(&runtime);
        if !matches!(state, LoadState::WaitingForHotLoad) {
            break state;
        }
        if started.elapsed() > LOAD_TIMEOUT {
            return Err("the hot load did not finish".to_owned());
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let loaded_before = runtime.metrics().background_load_bytes_total;
    let loading_rate = produce_window(&runtime, &client, options)?;
    let state_after = history_load(&runtime);
    let loaded_during = runtime.metrics().background_load_bytes_total - loaded_before;
    let overlap = matches!(state_before, LoadState::Loading(_))
        && matches!(state_after, LoadState::Loading(_));
    wait_for_complete(&runtime, started)?;
    let idle_rate = produce_window(&runtime, &client, options)?;
    runtime.shutdown().map_err(|error| error.to_string())?;
    println!(
        "loading_records_per_s={loading_rate:.0} idle_records_per_s={idle_rate:.0} ratio={:.2} state_before={} state_after={} overlap={} background_bytes_during_window={loaded_during}",
        loading_rate / idle_rate,
        state_name(&state_before),
        state_name(&state_after),
        if overlap { "yes" } else { "no" },
    );
    Ok(())
}
