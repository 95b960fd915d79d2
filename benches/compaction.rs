//! Key compaction of 1,000,000 records (100,000 keys, 100-byte values) in one
//! partition, and what it costs everyone else while it runs.
//!
//! ```text
//! cargo bench --bench compaction [-- --runs 3] [--records 1000000] [--keys 100000] [--rate-mib N]
//! ```
//!
//! The store is built once under `target/bench-data/compaction/` (all
//! records sealed: unique filler keys follow until the active segment starts
//! past them), then each run copies it and, in one runtime:
//!
//! 1. **idle baseline**: a produce loop (batches of 1,000 100-byte records,
//!    one at a time, `send_batch_to_blocking`) on topic `side` for
//!    `--idle-seconds`, with the fetch loop below running too; its records/s
//!    is the idle figure;
//! 2. **during compaction**: `compact_blocking("table")` on the main thread
//!    (its wall time is the headline figure) while
//!    - the same produce loop runs on `side` (records/s, against idle), and
//!    - a fetch loop reads partition `table/0` from its start to the high
//!      watermark over and over (64 KiB fetches), timing every fetch
//!      (p50, p99, p99.9, max);
//! 3. `partition_handler_max_seconds` before and after, and the handler
//!    histogram's observations above 1 ms during the run (bucket deltas).
//!
//! Output: one line per run, then the medians over runs. Targets (issue 5):
//! fetch p99.9 ≤ 5 ms, produce ≥ 80% of idle, no handler > 1 ms. Handlers
//! are timed twice: wall clock (which includes time the OS ran another
//! thread on the core) and the thread's own CPU time (the handler's work).

use millrace::config::{CleanupPolicy, Config, TopicConfig};
use millrace::runtime::PartitionCompaction;
use millrace::{FetchOptions, PartitionId, Record, Runtime};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TOPIC: &str = "table";
const SIDE: &str = "side";
const VALUE_BYTES: usize = 100;
const BATCH_RECORDS: usize = 1_000;
const FETCH_BYTES: usize = 64 * 1024;

struct Options {
    runs: usize,
    records: u64,
    keys: u64,
    idle_seconds: f64,
    /// `[compactor] rate` in MiB/s; 0 = unlimited.
    rate_mib: u64,
}

fn options() -> Options {
    let mut options = Options {
        runs: 3,
        records: 1_000_000,
        keys: 100_000,
        idle_seconds: 3.0,
        rate_mib: 0,
    };
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let mut index = 0;
    while index < arguments.len() {
        let value = arguments.get(index + 1);
        match arguments[index].as_str() {
            "--runs" => options.runs = value.unwrap().parse().unwrap(),
            "--records" => options.records = value.unwrap().parse().unwrap(),
            "--keys" => options.keys = value.unwrap().parse().unwrap(),
            "--idle-seconds" => options.idle_seconds = value.unwrap().parse().unwrap(),
            "--rate-mib" => options.rate_mib = value.unwrap().parse().unwrap(),
            // `cargo bench` passes `--bench`; ignore anything else.
            _ => {
                index += 1;
                continue;
            }
        }
        index += 2;
    }
    options
}

fn config(data_dir: &Path, rate_mib: u64) -> Config {
    let mut config = Config::new(data_dir);
    config.topics = vec![
        TopicConfig {
            segment_bytes: 16 * 1024 * 1024,
            cleanup: CleanupPolicy::Compact,
            ..TopicConfig::with_defaults(TOPIC)
        },
        TopicConfig::with_defaults(SIDE),
    ];
    config.compactor.interval = Duration::from_secs(24 * 60 * 60);
    config.compactor.bytes_per_second = (rate_mib > 0).then_some(rate_mib << 20);
    config
}

fn value(sequence: u64) -> Vec<u8> {
    let mut value = format!("{sequence:020}").into_bytes();
    value.resize(VALUE_BYTES, b'v');
    value
}

fn bench_root() -> PathBuf {
    // benches run with the package root as the working directory.
    PathBuf::from("target/bench-data/compaction")
}

/// Builds the store once: `records` keyed records (key = sequence % keys),
/// then unique filler keys until all of them are sealed.
fn build_store(store: &Path, options: &Options) {
    let marker = store.join("COMPLETE");
    if marker.exists()
        && std::fs::read_to_string(&marker).ok()
            == Some(format!("{} {}", options.records, options.keys))
    {
        return;
    }
    let _ = std::fs::remove_dir_all(store);
    std::fs::create_dir_all(store).unwrap();
    let started = Instant::now();
    let runtime = Runtime::start(config(store, 0)).unwrap();
    let producer = runtime.producer(TOPIC).unwrap();
    let mut sequence = 0u64;
    while sequence < options.records {
        let batch: Vec<Record> = (0..BATCH_RECORDS as u64)
            .map(|index| {
                let record_sequence = sequence + index;
                Record::new(value(record_sequence))
                    .with_key(format!("key-{:06}", record_sequence % options.keys))
            })
            .collect();
        sequence += BATCH_RECORDS as u64;
        producer
            .send_batch_to_blocking(PartitionId(0), batch)
            .unwrap();
    }
    let partition = store.join("topics").join(format!("{TOPIC}-0"));
    let mut filler = 0u64;
    while active_base(&partition) < options.records {
        let batch: Vec<Record> = (0..BATCH_RECORDS)
            .map(|_| {
                filler += 1;
                Record::new(value(filler)).with_key(format!("filler-{filler}"))
            })
            .collect();
        producer
            .send_batch_to_blocking(PartitionId(0), batch)
            .unwrap();
    }
    runtime.shutdown().unwrap();
    std::fs::write(&marker, format!("{} {}", options.records, options.keys)).unwrap();
    eprintln!(
        "built the store ({} records + {filler} filler) in {:.1}s",
        options.records,
        started.elapsed().as_secs_f64()
    );
}

fn active_base(partition: &Path) -> u64 {
    std::fs::read_dir(partition)
        .unwrap()
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".wal")?.parse::<u64>().ok()
        })
        .max()
        .unwrap_or(0)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else if entry.file_name() != "LOCK" {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Produces batches of 1,000 to `side` until `stop`; returns records/s.
fn produce_loop(runtime: &Runtime, stop: &AtomicBool) -> f64 {
    let producer = runtime.producer(SIDE).unwrap();
    let started = Instant::now();
    let mut records = 0u64;
    let mut sequence = 0u64;
    while !stop.load(Relaxed) {
        let batch: Vec<Record> = (0..BATCH_RECORDS)
            .map(|_| {
                sequence += 1;
                Record::new(value(sequence))
            })
            .collect();
        producer
            .send_batch_to_blocking(PartitionId(0), batch)
            .unwrap();
        records += BATCH_RECORDS as u64;
    }
    records as f64 / started.elapsed().as_secs_f64()
}

/// Reads `table/0` start to end over and over until `stop`; every fetch's
/// latency in seconds.
fn fetch_loop(runtime: &Runtime, stop: &AtomicBool) -> Vec<f64> {
    let options = FetchOptions {
        max_bytes: FETCH_BYTES,
        max_wait: Duration::ZERO,
    };
    let mut latencies = Vec::new();
    while !stop.load(Relaxed) {
        let offsets = runtime.offsets_blocking(TOPIC, PartitionId(0)).unwrap();
        let mut position = offsets.log_start_offset;
        while position < offsets.high_watermark && !stop.load(Relaxed) {
            let started = Instant::now();
            let fetched = runtime
                .fetch_blocking(TOPIC, PartitionId(0), position, options)
                .unwrap();
            latencies.push(started.elapsed().as_secs_f64());
            assert!(fetched.next_offset > position, "fetch made no progress");
            position = fetched.next_offset;
        }
    }
    latencies
}

fn percentile(sorted: &[f64], share: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 * share).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

/// Handler observations above 1 ms in a cumulative histogram snapshot.
fn handlers_over_1ms(histogram: &millrace::metrics::HistogramSnapshot) -> u64 {
    let at_most_1ms = histogram
        .buckets
        .iter()
        .find(|(bound, _)| (*bound - 0.001).abs() < 1e-12)
        .map(|(_, count)| *count)
        .unwrap_or(0);
    histogram.count - at_most_1ms
}

struct RunResult {
    compact_seconds: f64,
    records_before: u64,
    records_after: u64,
    bytes_before: u64,
    bytes_after: u64,
    fetches: usize,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
    idle_records_per_second: f64,
    busy_records_per_second: f64,
    handler_max_before_ms: f64,
    handler_max_after_ms: f64,
    handlers_over_1ms: u64,
    /// Handlers whose own CPU time passed 1 ms during the compaction.
    handlers_cpu_over_1ms: u64,
    handler_cpu_max_before_ms: f64,
    handler_cpu_max_after_ms: f64,
    handler_buckets_over_1ms: Vec<(f64, u64)>,
    idle_handlers_over_1ms_per_second: f64,
}

fn run_once(store: &Path, run: usize, options: &Options) -> RunResult {
    let data_dir = bench_root().join(format!("run-{run}"));
    let _ = std::fs::remove_dir_all(&data_dir);
    copy_dir(store, &data_dir);
    let runtime = Arc::new(Runtime::start(config(&data_dir, options.rate_mib)).unwrap());
    while !runtime.ready()
        || !runtime
            .health()
            .partitions
            .iter()
            .all(|partition| partition.load.is_terminal())
    {
        std::thread::sleep(Duration::from_millis(10));
    }

    // Idle baseline.
    let idle_before = runtime.metrics();
    let stop = Arc::new(AtomicBool::new(false));
    // The same fetch loop runs during the baseline, so the ratio isolates
    // what the compaction costs the producer.
    let idle = {
        let runtime = Arc::clone(&runtime);
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || produce_loop(&runtime, &stop))
    };
    let idle_fetcher = {
        let runtime = Arc::clone(&runtime);
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || fetch_loop(&runtime, &stop))
    };
    std::thread::sleep(Duration::from_secs_f64(options.idle_seconds));
    stop.store(true, Relaxed);
    let idle_records_per_second = idle.join().unwrap();
    let idle_fetches = idle_fetcher.join().unwrap().len();
    let _ = idle_fetches;
    let idle_after = runtime.metrics();
    // Handlers over 1 ms per second without compaction (scheduling on two
    // busy cores), to compare with the rate during the compaction.
    let idle_handlers_over_1ms_per_second =
        (handlers_over_1ms(&idle_after.partition_handler_seconds)
            - handlers_over_1ms(&idle_before.partition_handler_seconds)) as f64
            / options.idle_seconds;

    // During compaction.
    let before = runtime.metrics();
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let runtime = Arc::clone(&runtime);
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || produce_loop(&runtime, &stop))
    };
    let fetcher = {
        let runtime = Arc::clone(&runtime);
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || fetch_loop(&runtime, &stop))
    };
    let started = Instant::now();
    let summary = runtime.compact_blocking(TOPIC).unwrap();
    let compact_seconds = started.elapsed().as_secs_f64();
    stop.store(true, Relaxed);
    let busy_records_per_second = producer.join().unwrap();
    let mut latencies = fetcher.join().unwrap();
    let after = runtime.metrics();
    let (records_before, records_after, bytes_before, bytes_after) = match &summary.partitions[0].1
    {
        PartitionCompaction::Compacted {
            records_before,
            records_after,
            bytes_before,
            bytes_after,
            ..
        } => (*records_before, *records_after, *bytes_before, *bytes_after),
        other => panic!("compaction: {other:?}"),
    };
    latencies.sort_by(f64::total_cmp);
    // Buckets are cumulative: observations in (previous bound, bound]
    // during the run are the differences of the deltas.
    let deltas: Vec<(f64, u64)> = after
        .partition_handler_seconds
        .buckets
        .iter()
        .zip(&before.partition_handler_seconds.buckets)
        .map(|((bound, after), (_, before))| (*bound, after - before))
        .collect();
    let handler_buckets_over_1ms = deltas
        .windows(2)
        .filter(|pair| pair[1].0 > 0.001)
        .map(|pair| (pair[1].0, pair[1].1 - pair[0].1))
        .collect();
    let result = RunResult {
        compact_seconds,
        records_before,
        records_after,
        bytes_before,
        bytes_after,
        fetches: latencies.len(),
        p50_ms: percentile(&latencies, 0.50) * 1e3,
        p99_ms: percentile(&latencies, 0.99) * 1e3,
        p999_ms: percentile(&latencies, 0.999) * 1e3,
        max_ms: latencies.last().copied().unwrap_or(f64::NAN) * 1e3,
        idle_records_per_second,
        busy_records_per_second,
        handler_max_before_ms: before.partition_handler_max_seconds * 1e3,
        handler_max_after_ms: after.partition_handler_max_seconds * 1e3,
        handlers_over_1ms: handlers_over_1ms(&after.partition_handler_seconds)
            - handlers_over_1ms(&before.partition_handler_seconds),
        handler_buckets_over_1ms,
        idle_handlers_over_1ms_per_second,
        handlers_cpu_over_1ms: handlers_over_1ms(&after.partition_handler_cpu_seconds)
            - handlers_over_1ms(&before.partition_handler_cpu_seconds),
        handler_cpu_max_before_ms: before.partition_handler_cpu_max_seconds * 1e3,
        handler_cpu_max_after_ms: after.partition_handler_cpu_max_seconds * 1e3,
    };
    Arc::try_unwrap(runtime)
        .ok()
        .expect("threads joined")
        .shutdown()
        .unwrap();
    let _ = std::fs::remove_dir_all(&data_dir);
    result
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    // Handlers are timed in their thread's CPU time too (off by default:
    // it costs two system calls per handler). Nothing else runs yet.
    std::env::set_var("MILLRACE_HANDLER_CPU_TIME", "1");
    let options = options();
    let store = bench_root().join("store");
    build_store(&store, &options);
    let mut results = Vec::new();
    for run in 0..options.runs {
        let result = run_once(&store, run, &options);
        println!(
            "run={run} compact_s={:.3} records={}->{} bytes={}->{} fetches={} \
             fetch_p50_ms={:.3} fetch_p99_ms={:.3} fetch_p99.9_ms={:.3} fetch_max_ms={:.3} \
             produce_idle_rps={:.0} produce_during_rps={:.0} produce_ratio={:.2} \
             handler_max_before_ms={:.3} handler_max_after_ms={:.3} handlers_over_1ms={} \
             handler_buckets_over_1ms={:?} handlers_over_1ms_per_s={:.2} \
             idle_handlers_over_1ms_per_s={:.2} handlers_cpu_over_1ms={} \
             handler_cpu_max_before_ms={:.3} handler_cpu_max_after_ms={:.3}",
            result.compact_seconds,
            result.records_before,
            result.records_after,
            result.bytes_before,
            result.bytes_after,
            result.fetches,
            result.p50_ms,
            result.p99_ms,
            result.p999_ms,
            result.max_ms,
            result.idle_records_per_second,
            result.busy_records_per_second,
            result.busy_records_per_second / result.idle_records_per_second,
            result.handler_max_before_ms,
            result.handler_max_after_ms,
            result.handlers_over_1ms,
            result
                .handler_buckets_over_1ms
                .iter()
                .filter(|(_, count)| *count > 0)
                .collect::<Vec<_>>(),
            result.handlers_over_1ms as f64 / result.compact_seconds,
            result.idle_handlers_over_1ms_per_second,
            result.handlers_cpu_over_1ms,
            result.handler_cpu_max_before_ms,
            result.handler_cpu_max_after_ms,
        );
        results.push(result);
    }
    let m = |f: fn(&RunResult) -> f64| median(results.iter().map(f).collect());
    println!(
        "median compact_s={:.3} fetch_p50_ms={:.3} fetch_p99_ms={:.3} fetch_p99.9_ms={:.3} \
         fetch_max_ms={:.3} produce_ratio={:.2} handler_max_after_ms={:.3} handlers_over_1ms={} \
         handlers_over_1ms_per_s={:.2} idle_handlers_over_1ms_per_s={:.2} \
         handlers_cpu_over_1ms={} handler_cpu_max_after_ms={:.3}",
        m(|r| r.compact_seconds),
        m(|r| r.p50_ms),
        m(|r| r.p99_ms),
        m(|r| r.p999_ms),
        m(|r| r.max_ms),
        m(|r| r.busy_records_per_second / r.idle_records_per_second),
        m(|r| r.handler_max_after_ms),
        m(|r| r.handlers_over_1ms as f64),
        m(|r| r.handlers_over_1ms as f64 / r.compact_seconds),
        m(|r| r.idle_handlers_over_1ms_per_second),
        m(|r| r.handlers_cpu_over_1ms as f64),
        m(|r| r.handler_cpu_max_after_ms),
    );
}
