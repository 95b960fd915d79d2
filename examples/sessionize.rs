//! sessionize: clicks per user session (session windows with a 5-minute
//! gap), with keyed state that survives a restart.
//!
//! ```text
//! cargo run --release --example sessionize [-- WORK_DIR]
//! ```
//!
//! Generates seeded clicks for 40 users (also written to
//! `WORK_DIR/input.jsonl`), produces the first half, restarts the runtime
//! (open sessions are restored from the state store), produces the rest,
//! and prints the sessions written to `WORK_DIR/sessions.jsonl`.

use millrace::config::Config;
use millrace::pipeline::config::SinkConfig;
use millrace::{Record, Runtime};
use std::error::Error;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What a run did.
#[derive(Debug)]
pub struct Summary {
    /// Clicks in `WORK_DIR/input.jsonl`.
    pub clicks_in: usize,
    /// The first this many of them were produced before the restart, the
    /// rest after it.
    pub produced_before_restart: usize,
    /// Sessions written to `WORK_DIR/sessions.jsonl`.
    pub sessions: u64,
    /// Clicks counted in them.
    pub clicks_counted: u64,
    /// The first sessions written (up to five), as written.
    pub first_sessions: Vec<String>,
}

const START_MS: i64 = 1_767_225_600_000;
const USERS: u64 = 40;

struct Random(u64);

impl Random {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % bound
    }
}

/// Every user clicks in bursts: a few clicks seconds apart, then a pause of
/// 6 to 30 minutes (a new session). Time runs forward (per user it is in
/// order); the last click, a day later, closes every session.
pub fn generate() -> Vec<String> {
    let mut random = Random(0x7365_7373);
    let mut next_click: Vec<i64> = (0..USERS)
        .map(|user| START_MS + user as i64 * 1_000)
        .collect();
    let mut lines = Vec::new();
    for _ in 0..4_000 {
        let user = random.below(USERS) as usize;
        let ts = next_click[user];
        lines.push(format!(
            "{{\"user\":\"user-{user}\",\"ts\":{ts},\"page\":\"/p{}\"}}",
            random.below(20)
        ));
        next_click[user] = ts
            + if random.below(6) == 0 {
                360_000 + random.below(1_440_000) as i64
            } else {
                1_000 + random.below(20_000) as i64
            };
    }
    // Clicks are produced in time order, as a live stream would be.
    lines.sort_by_key(|line| {
        let value: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
        value["ts"].as_i64().unwrap_or(0)
    });
    let end = next_click.iter().max().copied().unwrap_or(START_MS) + 86_400_000;
    lines.push(format!(
        "{{\"user\":\"user-0\",\"ts\":{end},\"page\":\"/bye\"}}"
    ));
    lines
}

/// The example's TOML with its paths moved under `work`: data in
/// `work/data`, sessions in `work/sessions.jsonl`.
pub fn config(work: &Path) -> Result<Config, Box<dyn Error>> {
    let mut config =
        Config::from_toml_str(include_str!("sessionize.toml"), "examples/sessionize.toml")?;
    config.data_dir = work.join("data");
    for pipeline in &mut config.pipelines {
        if let SinkConfig::JsonLines { path } = &mut pipeline.sink {
            *path = work.join("sessions.jsonl");
        }
    }
    Ok(config)
}

/// Produces `lines` keyed by user (in order, in batches of 500) and waits
/// until the pipeline has committed all of it.
fn produce_and_wait(runtime: &Runtime, lines: &[String]) -> Result<(), Box<dyn Error>> {
    let producer = runtime.producer("clicks")?;
    for chunk in lines.chunks(500) {
        let batch = chunk
            .iter()
            .map(|line| {
                let value: serde_json::Value = serde_json::from_str(line)?;
                let user = value["user"].as_str().unwrap_or_default().to_owned();
                Ok(Record::new(line.clone()).with_key(user))
            })
            .collect::<Result<Vec<Record>, serde_json::Error>>()?;
        producer.send_batch_blocking(batch)?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while runtime.caught_up("sessionize") != Some(true) {
        if Instant::now() > deadline {
            return Err("the pipeline did not catch up within 60 s".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Runs the example in `work` (emptied first): writes `work/input.jsonl`,
/// produces the first half, restarts the runtime, produces the rest, and
/// summarizes `work/sessions.jsonl`.
pub fn run(work: &Path) -> Result<Summary, Box<dyn Error>> {
    let _ = std::fs::remove_dir_all(work);
    std::fs::create_dir_all(work)?;
    let lines = generate();
    let mut input = std::io::BufWriter::new(std::fs::File::create(work.join("input.jsonl"))?);
    for line in &lines {
        writeln!(input, "{line}")?;
    }
    input.flush()?;
    let (first, second) = lines.split_at(lines.len() / 2);

    let runtime = Runtime::start(config(work)?)?;
    produce_and_wait(&runtime, first)?;
    runtime.shutdown()?;
    // Open sessions come back from the state store.
    let runtime = Runtime::start(config(work)?)?;
    produce_and_wait(&runtime, second)?;
    runtime.shutdown()?;

    let sessions = std::fs::read_to_string(work.join("sessions.jsonl"))?;
    let mut summary = Summary {
        clicks_in: lines.len(),
        produced_before_restart: first.len(),
        sessions: 0,
        clicks_counted: 0,
        first_sessions: Vec::new(),
    };
    for line in sessions.lines() {
        let session: serde_json::Value = serde_json::from_str(line)?;
        summary.sessions += 1;
        summary.clicks_counted += session["count"].as_u64().unwrap_or(0);
        if summary.first_sessions.len() < 5 {
            summary.first_sessions.push(line.to_owned());
        }
    }
    Ok(summary)
}

fn main() -> Result<(), Box<dyn Error>> {
    let work = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/example-data/sessionize"));
    let summary = run(&work)?;
    for line in &summary.first_sessions {
        println!("{line}");
    }
    println!(
        "sessions closed: {}, clicks in them: {}",
        summary.sessions, summary.clicks_counted
    );
    Ok(())
}
