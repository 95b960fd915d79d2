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
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

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

/// `records` metric points, 10 per simulated second; 5% up to 8 s out of
/// order (counted), 0.5% two minutes late (late); then one point far ahead
/// that closes every window.
fn generate(records: u64) -> Vec<String> {
    let mut random = Random(0x6d65_7472_6963);
    let mut lines = Vec::with_capacity(records as usize + 1);
    for index in 0..records {
        let mut ts = START_MS + (index as i64) * 100;
        let roll = random.below(1000);
        if roll < 5 {
            ts -= 120_000;
        } else if roll < 55 {
            ts -= random.below(8_000) as i64;
        }
        let host = random.below(HOSTS);
        let latency = 5 + random.below(200) + if random.below(50) == 0 { 800 } else { 0 };
        lines.push(format!("{{\"host\":\"web-{host}\",\"ts\":{ts},\"latency_ms\":{latency}}}"));
    }
    let end = START_MS + (records as i64) * 100 + 3_600_000;
    lines.push(format!("{{\"host\":\"web-0\",\"ts\":{end},\"latency_ms\":1}}"));
    lines
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut arguments = std::env::args().skip(1);
    let work = arguments
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/example-data/windowed_metrics"));
    let records: u64 = arguments.next().map_or(Ok(20_000), |text| text.parse())?;
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let text = include_str!("windowed_metrics.toml");
    let mut config = Config::from_toml_str(text, "examples/windowed_metrics.toml")?;
    config.data_dir = work.join("data");
    let output = work.join("windows.jsonl");
    for pipeline in &mut config.pipelines {
        if let SinkConfig::JsonLines { path } = &mut pipeline.sink {
            path.clone_from(&output);
        }
    }

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
    let late = runtime.offsets_blocking("metrics.late", PartitionId(0))?.high_watermark;
    runtime.shutdown()?;

    let windows = std::fs::read_to_string(&output)?;
    let mut count = 0;
    let mut counted = 0;
    for line in windows.lines() {
        let window: serde_json::Value = serde_json::from_str(line)?;
        count += 1;
        counted += window["count"].as_u64().unwrap_or(0);
        if count <= 5 {
            println!("{line}");
        }
    }
    println!("windows closed: {count}, records counted: {counted}, late records: {late}");
    println!("(the last point, far ahead, opened a window that stays open)");
    Ok(())
}
