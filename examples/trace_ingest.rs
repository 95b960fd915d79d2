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
use millrace::dead_letter::{DeadLetter, ReplayFrom};
use millrace::pipeline::config::{SinkConfig, SledSinkConfig};
use millrace::pipeline::sink::{Row, SledTableSink};
use millrace::pipeline::{Emitter, Event, Operator, OperatorError, Registry};
use millrace::{Record, Runtime};
use std::collections::BTreeMap;
use std::error::Error;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The sample spans, one JSON value per line (three of them malformed).
pub const SPANS: &str = include_str!("data/spans.jsonl");

/// The sled tables the example writes, in the order it prints them.
pub const TABLES: [&str; 3] = ["traces", "spans", "logs"];

/// Every row of every table: table name → rows in key order.
pub type Tables = BTreeMap<String, Vec<Row>>;

/// What a run did.
#[derive(Debug)]
pub struct Summary {
    /// The dead-letter queue after the first version of the pipeline.
    pub dead_letters: Vec<DeadLetter>,
    /// The tables after the first version of the pipeline.
    pub before_fix: Tables,
    /// Dead letters the first replay (with the fix) re-injected.
    pub replayed: u64,
    /// The tables after that replay.
    pub after_replay: Tables,
    /// Dead letters the second replay (`ReplayFrom::Start`) re-injected.
    pub replayed_again: u64,
    /// The tables after replaying everything again.
    pub after_replay_again: Tables,
}

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

/// The example's TOML with its paths moved under `work`; also returns the
/// sled sink's config (its path is `work/rows.sled`).
pub fn config(work: &Path) -> Result<(Config, SledSinkConfig), Box<dyn Error>> {
    let text = include_str!("trace_ingest.toml");
    let mut config = Config::from_toml_str(text, "examples/trace_ingest.toml")?;
    config.data_dir = work.join("data");
    let mut rows = None;
    for pipeline in &mut config.pipelines {
        if let SinkConfig::Sled(sled) = &mut pipeline.sink {
            sled.path = work.join("rows.sled");
            rows = Some(sled.clone());
        }
    }
    let rows = rows.ok_or("examples/trace_ingest.toml has no sled sink")?;
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

/// Every row of every table, read once the runtime has shut down (opening
/// the database through the sink waits for the runtime's handle to let go).
fn read_tables(rows: &SledSinkConfig) -> Result<Tables, Box<dyn Error>> {
    let database = SledTableSink::open(rows)?;
    TABLES
        .iter()
        .map(|table| Ok((table.to_string(), database.table_rows(table)?)))
        .collect()
}

/// `traces=N spans=N logs=N`.
pub fn row_counts(tables: &Tables) -> String {
    TABLES
        .iter()
        .map(|table| format!("{table}={}", tables.get(*table).map_or(0, Vec::len)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs the whole story in `work` (emptied first): the first version of
/// the pipeline over the sample spans, then the fix with a replay of the
/// dead-letter queue, then a replay of all of it again.
pub fn run(work: &Path) -> Result<Summary, Box<dyn Error>> {
    // A fresh run each time.
    let _ = std::fs::remove_dir_all(work);
    let (config, rows) = config(work)?;

    // 1. The first version of the pipeline.
    let runtime = Runtime::start_with(config.clone(), registry(false))?;
    let producer = runtime.producer("spans")?;
    let spans: Vec<Record> = SPANS
        .lines()
        .map(|line| Record::new(line.to_owned()))
        .collect();
    producer.send_batch_blocking(spans)?;
    wait_caught_up(&runtime)?;
    let (dead_letters, _) = runtime.dead_letters("trace_ingest")?;
    runtime.shutdown()?;
    let before_fix = read_tables(&rows)?;

    // 2. The fix, and a replay; then everything replayed again.
    let runtime = Runtime::start_with(config.clone(), registry(true))?;
    let replayed = runtime
        .replay_dead_letters("trace_ingest", ReplayFrom::LastReplayed)?
        .replayed;
    wait_caught_up(&runtime)?;
    runtime.shutdown()?;
    let after_replay = read_tables(&rows)?;

    let runtime = Runtime::start_with(config, registry(true))?;
    let replayed_again = runtime
        .replay_dead_letters("trace_ingest", ReplayFrom::Start)?
        .replayed;
    wait_caught_up(&runtime)?;
    runtime.shutdown()?;
    let after_replay_again = read_tables(&rows)?;

    Ok(Summary {
        dead_letters,
        before_fix,
        replayed,
        after_replay,
        replayed_again,
        after_replay_again,
    })
}

fn main() -> Result<(), Box<dyn Error>> {
    let work = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/example-data/trace_ingest"));
    let summary = run(&work)?;
    for letter in &summary.dead_letters {
        println!(
            "dead letter: {} at {}: {}",
            letter.entry.origin, letter.entry.stage, letter.entry.error
        );
    }
    println!("before the fix: {}", row_counts(&summary.before_fix));
    println!("replayed {} dead letters", summary.replayed);
    println!("after the replay: {}", row_counts(&summary.after_replay));
    println!("replayed {} dead letters again", summary.replayed_again);
    println!(
        "after replaying again: {}",
        row_counts(&summary.after_replay_again)
    );
    if summary.after_replay != summary.after_replay_again {
        return Err("replaying again changed the rows".into());
    }
    Ok(())
}
