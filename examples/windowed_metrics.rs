//! windowed_metrics: per-host latency percentiles in 1-minute tumbling
//! event-time windows, with out-of-order and late records.
//!
//! ```text
//! cargo run --release --example windowed_metrics [-- WORK_DIR [RECORDS]]
//! ```
//!
//! Generates seeded input (also written to `WORK_DIR/input.jsonl`), runs
//! `examples/windowed_metrics.toml` over it, and prints a summary of the
//! windows written to `WORK_DIR/windows.jsonl` and the late records.

use millrace::config::Config;
use millrace::pipeline::config::SinkConfig;
use millrace::{PartitionId, Record, Runtime};
use std::error::Error;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Records generated when no count is given.
pub const DEFAULT_RECORDS: u64 = 20_000;

/// What a run did.
#[derive(Debug)]
pub struct Summary {
    /// Windows written to `WORK_DIR/windows.jsonl`.
    pub windows: u64,
    /// Records counted in them.
    pub counted: u64,
    /// Records in the side-output topic `metrics.late`.
    pub late: u64,
    /// The first windows written (up to five), as written.
    pub first_windows: Vec<String>,
}

const START_MS: i64 = 1_767_225_600_000;
const HOSTS: u64 = 5;

/// xorshift64*: seeded, so every run makes the same input.
struct Random(u64);

impl Random {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % bound
    }
}

/// `records` metric points, 10 per simulated second; 5% up to 10 s out of
/// order (just within the allowed lateness, so counted: a window that fired
/// even half a second early would miss some of them), 0.5% two minutes late
/// (late); then one point far ahead that closes every window.
pub fn generate(records: u64) -> Vec<String> {
    let mut random = Random(0x6d65_7472_6963);
    let mut lines = Vec::with_capacity(records as usize + 1);
    for index in 0..records {
        let mut ts = START_MS + (index as i64) * 100;
        let roll = random.below(1000);
        if roll < 5 {
            ts -= 120_000;
        } else if roll < 55 {
            ts -= random.below(10_000) as i64;
        }
        let host = random.below(HOSTS);
        let latency = 5 + random.below(200) + if random.below(50) == 0 { 800 } else { 0 };
        lines.push(format!(
            "{{\"host\":\"web-{host}\",\"ts\":{ts},\"latency_ms\":{latency}}}"
        ));
    }
    let end = START_MS + (records as i64) * 100 + 3_600_000;
    lines.push(format!(
        "{{\"host\":\"web-0\",\"ts\":{end},\"latency_ms\":1}}"
    ));
    lines
}

/// The example's TOML with its paths moved under `work`: data in
/// `work/data`, windows in `work/windows.jsonl`.
pub fn config(work: &Path) -> Result<Config, Box<dyn Error>> {
    let text = include_str!("windowed_metrics.toml");
    let mut config = Config::from_toml_str(text, "examples/windowed_metrics.toml")?;
    config.data_dir = work.join("data");
    for pipeline in &mut config.pipelines {
        if let SinkConfig::JsonLines { path } = &mut pipeline.sink {
            *path = work.join("windows.jsonl");
        }
    }
    Ok(config)
}

/// Runs the example in `work` (emptied first) over `records` generated
/// points (plus the one far ahead): writes `work/input.jsonl`, produces it
/// in order to the one partition of `metrics`, waits until the pipeline has
/// caught up, and summarizes `work/windows.jsonl` and `metrics.late`.
pub fn run(work: &Path, records: u64) -> Result<Summary, Box<dyn Error>> {
    let _ = std::fs::remove_dir_all(work);
    std::fs::create_dir_all(work)?;
    let config = config(work)?;

    let lines = generate(records);
    let mut input = std::io::BufWriter::new(std::fs::File::create(work.join("input.jsonl"))?);
    for line in &lines {
        writeln!(input, "{line}")?;
    }
    input.flush()?;

    let runtime = Runtime::start(config)?;
    let producer = runtime.producer("metrics")?;
    for chunk in lines.chunks(1000) {
        let batch = chunk.iter().map(|line| Record::new(line.clone())).collect();
        producer.send_batch_to_blocking(PartitionId(0), batch)?;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while runtime.caught_up("windowed_metrics") != Some(true) {
        if Instant::now() > deadline {
            return Err("the pipeline did not catch up within 120 s".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let late = runtime
        .offsets_blocking("metrics.late", PartitionId(0))?
        .high_watermark
        .0;
    runtime.shutdown()?;

    let windows = std::fs::read_to_string(work.join("windows.jsonl"))?;
    let mut summary = Summary {
        windows: 0,
        counted: 0,
        late,
        first_windows: Vec::new(),
    };
    for line in windows.lines() {
        let window: serde_json::Value = serde_json::from_str(line)?;
        summary.windows += 1;
        summary.counted += window["count"].as_u64().unwrap_or(0);
        if summary.first_windows.len() < 5 {
            summary.first_windows.push(line.to_owned());
        }
    }
    Ok(summary)
}

fn main() -> Result<(), Box<dyn Error>> {
    let mut arguments = std::env::args().skip(1);
    let work = arguments
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/example-data/windowed_metrics"));
    let records: u64 = arguments
        .next()
        .map_or(Ok(DEFAULT_RECORDS), |text| text.parse())?;
    let summary = run(&work, records)?;
    for line in &summary.first_windows {
        println!("{line}");
    }
    println!(
        "windows closed: {}, records counted: {}, late records: {}",
        summary.windows, summary.counted, summary.late
    );
    println!("(the last point, far ahead, opened a window that stays open)");
    Ok(())
}
