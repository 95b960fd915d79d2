//! trace_ingest: span JSON → trace, span and log rows in sled, atomically
//! per batch; malformed JSON → dead-letter queue; a fix and a replay land
//! those records exactly once.
//!
//! ```text
//! cargo run --release --example trace_ingest [-- WORK_DIR]
//! ```
//!
//! 1. Runs `examples/trace_ingest.toml` over `examples/data/spans.jsonl`
//!    with the first version of the `repair_json` operator (which changes
//!    nothing): the three malformed spans go to `trace_ingest.dlq`.
//! 2. Restarts with the fixed operator and replays the dead-letter queue,
//!    then replays all of it again: the rows are the same after both.

use millrace::config::Config;
use millrace::dead_letter::ReplayFrom;
use millrace::pipeline::config::SinkConfig;
use millrace::pipeline::{Emitter, Event, Operator, OperatorError, Registry};
use millrace::{Record, Runtime};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The first version: passes records through as they are.
struct PassThrough;

impl Operator for PassThrough {
    fn process(&mut self, event: &Event, out: &mut Emitter) -> Result<(), OperatorError> {
        out.emit(event.clone());
        Ok(())
    }
}

/// The fix: removes the trailing commas one client library writes
/// (`,}` and `,]`), which JSON does not allow.
struct RepairJson;

impl Operator for RepairJson {
    fn process(&mut self, event: &Event, out: &mut Emitter) -> Result<(), OperatorError> {
        match event.value_str() {
            Some(text) if text.contains(",}") || text.contains(",]") => {
                out.emit(event.with_value(text.replace(",}", "}").replace(",]", "]")));
            }
            _ => out.emit(event.clone()),
        }
        Ok(())
    }
}

fn registry(fixed: bool) -> Registry {
    let mut registry = Registry::new();
    registry.operator("repair_json", move |_| {
        Ok(if fixed {
            Box::new(RepairJson) as Box<dyn Operator>
        } else {
            Box::new(PassThrough)
        })
    });
    registry
}

/// The example's TOML with its paths moved under `work`.
fn config(work: &Path) -> Result<(Config, PathBuf), Box<dyn std::error::Error>> {
    let text = include_str!("trace_ingest.toml");
    let mut config = Config::from_toml_str(text, "examples/trace_ingest.toml")?;
    config.data_dir = work.join("data");
    let rows = work.join("rows.sled");
    for pipeline in &mut config.pipelines {
        if let SinkConfig::Sled(sled) = &mut pipeline.sink {
            sled.path = rows.clone();
        }
    }
    Ok((config, rows))
}

fn wait_caught_up(runtime: &Runtime) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while runtime.caught_up("trace_ingest") != Some(true) {
        if Instant::now() > deadline {
            return Err("the pipeline did not catch up within 60 s".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

fn count_rows(rows: &Path) -> Result<Vec<(String, usize)>, sled::Error> {
    let database = sled::open(rows)?;
    ["traces", "spans", "logs"]
        .iter()
        .map(|table| Ok((table.to_string(), database.open_tree(table)?.len())))
        .collect()
}

fn print_rows(label: &str, rows: &[(String, usize)]) {
    let counts: Vec<String> = rows.iter().map(|(table, count)| format!("{table}={count}")).collect();
    println!("{label}: {}", counts.join(" "));
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let work = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/example-data/trace_ingest"));
    // A fresh run each time.
    let _ = std::fs::remove_dir_all(&work);
    let (config, rows) = config(&work)?;

    // 1. The first version of the pipeline.
    let runtime = Runtime::start_with(config.clone(), registry(false))?;
    let producer = runtime.producer("spans")?;
    let spans: Vec<Record> = include_str!("data/spans.jsonl")
        .lines()
        .map(|line| Record::new(line.to_owned()))
        .collect();
    producer.send_batch_blocking(spans)?;
    wait_caught_up(&runtime)?;
    let (letters, _) = runtime.dead_letters("trace_ingest")?;
    for letter in &letters {
        println!(
            "dead letter: {} at {}: {}",
            letter.entry.origin, letter.entry.stage, letter.entry.error
        );
    }
    runtime.shutdown()?;
    print_rows("before the fix", &count_rows(&rows)?);

    // 2. The fix, and a replay; then everything replayed again.
    let runtime = Runtime::start_with(config.clone(), registry(true))?;
    let summary = runtime.replay_dead_letters("trace_ingest", ReplayFrom::LastReplayed)?;
    println!("replayed {} dead letters", summary.replayed);
    wait_caught_up(&runtime)?;
    runtime.shutdown()?;
    let once = count_rows(&rows)?;
    print_rows("after the replay", &once);

    let runtime = Runtime::start_with(config, registry(true))?;
    let summary = runtime.replay_dead_letters("trace_ingest", ReplayFrom::Start)?;
    println!("replayed {} dead letters again", summary.replayed);
    wait_caught_up(&runtime)?;
    runtime.shutdown()?;
    let twice = count_rows(&rows)?;
    print_rows("after replaying again", &twice);
    if once != twice {
        return Err("replaying again changed the rows".into());
    }
    Ok(())
}
