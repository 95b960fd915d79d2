//! Pipelines end to end, in process: consumer groups and rebalancing, the
//! dead-letter queue and its replay, windows through the whole pipeline,
//! state restored on restart, custom operators and sinks.

mod common;

use common::wait_until;
use millrace::config::Config;
use millrace::dead_letter::ReplayFrom;
use millrace::pipeline::{
    Emitter, Event, Operator, OperatorError, Registry, Sink, SinkBatch, SinkError,
};
use millrace::{FetchedRecord, Offset, PartitionId, Record, Runtime};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const CATCH_UP: Duration = Duration::from_secs(60);

fn start(data_dir: &Path, pipelines_toml: &str, registry: Registry) -> Runtime {
    let text = format!(
        "data_dir = {:?}\nshutdown_timeout = \"20s\"\n{pipelines_toml}",
        data_dir.display().to_string()
    );
    let config = Config::from_toml_str(&text, "<test>").unwrap();
    Runtime::start_with(config, registry).unwrap()
}

fn wait_caught_up(runtime: &Runtime, pipeline: &str) {
    wait_until(
        CATCH_UP,
        &format!("pipeline {pipeline} to catch up"),
        || runtime.caught_up(pipeline).unwrap(),
    );
}

/// Every record of every partition of `topic`.
fn read_topic(runtime: &Runtime, topic: &str) -> Vec<(u32, FetchedRecord)> {
    let mut all = Vec::new();
    for partition in 0..runtime.partition_count(topic).unwrap() {
        for record in common::read_partition(runtime, topic, PartitionId(partition)) {
            all.push((partition, record));
        }
    }
    all
}

fn json_value(record: &FetchedRecord) -> serde_json::Value {
    serde_json::from_slice(record.value.as_deref().unwrap()).unwrap()
}

/// Produces `count` JSON records `{"id":N,"level":...,"n":N}`, keyed by id.
fn produce_json(runtime: &Runtime, topic: &str, ids: std::ops::Range<u64>, malformed_every: u64) {
    let producer = runtime.producer(topic).unwrap();
    let records: Vec<Record> = ids
        .map(|id| {
            let value = if malformed_every > 0 && id % malformed_every == malformed_every - 1 {
                format!("{{\"id\":{id},\"level\":")
            } else {
                let level = if id % 2 == 0 { "error" } else { "info" };
                format!("{{\"id\":{id},\"level\":\"{level}\",\"n\":{id}}}")
            };
            Record::new(value).with_key(format!("k{}", id % 97))
        })
        .collect();
    for chunk in records.chunks(500) {
        producer.send_batch_blocking(chunk.to_vec()).unwrap();
    }
}

const FILTER_MAP: &str = r#"
[[topic]]
name = "in"
partitions = 4
[[topic]]
name = "out"
partitions = 4

[[pipeline]]
name = "errors"
commit_interval = "0s"
[pipeline.source]
topic = "in"
[[pipeline.operator]]
type = "filter"
field = "level"
equals = "error"
[[pipeline.operator]]
type = "map"
project = ["id", "n"]
[pipeline.sink]
type = "topic"
topic = "out"
"#;

#[test]
fn filter_and_map_between_topics_and_one_malformed_record_per_thousand_goes_to_the_dlq() {
    let directory = tempfile::tempdir().unwrap();
    let runtime = start(directory.path(), FILTER_MAP, Registry::new());
    produce_json(&runtime, "in", 0..10_000, 1000);
    wait_caught_up(&runtime, "errors");

    // Every well-formed error record arrived, projected; nothing else did.
    let out: BTreeSet<u64> = read_topic(&runtime, "out")
        .iter()
        .map(|(_, record)| {
            let value = json_value(record);
            assert_eq!(
                value.as_object().unwrap().len(),
                2,
                "projected to id and n: {value}"
            );
            value["id"].as_u64().unwrap()
        })
        .collect();
    let expected: BTreeSet<u64> = (0..10_000)
        .filter(|id| id % 2 == 0 && id % 1000 != 999)
        .collect();
    assert_eq!(out, expected);

    // Each malformed record is in the dead-letter queue with its reason.
    let (letters, undecodable) = runtime.dead_letters("errors").unwrap();
    assert!(undecodable.is_empty());
    let failed: BTreeSet<u64> = letters
        .iter()
        .map(|letter| {
            assert!(
                letter.entry.error.contains("not JSON"),
                "reason: {}",
                letter.entry.error
            );
            assert!(
                letter.entry.stage.contains("filter"),
                "stage: {}",
                letter.entry.stage
            );
            let text = String::from_utf8(letter.entry.value.clone().unwrap().to_vec()).unwrap();
            text.trim_start_matches("{\"id\":")
                .split(',')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(failed, (0..10).map(|k| k * 1000 + 999).collect());

    // Lag is back to zero everywhere, and the dead letters are counted.
    let metrics = runtime.metrics();
    let pipeline = &metrics.pipelines[0];
    assert_eq!(pipeline.dead_letters_total, 10);
    assert!(pipeline
        .partitions
        .iter()
        .all(|partition| partition.lag == 0));
    assert!(runtime
        .metrics_text()
        .contains("millrace_consumer_lag{group=\"errors\",topic=\"in\",partition=\"0\"} 0"));
    runtime.shutdown().unwrap();
}

/// A sink that hands every event to the test.
struct Collect(crossbeam_channel::Sender<(u32, u64)>);

impl Sink for Collect {
    fn write(&mut self, batch: &SinkBatch<'_>) -> Result<(), SinkError> {
        for event in batch.events {
            let _ = self
                .0
                .send((event.origin.partition.0, event.origin.offset.0));
        }
        Ok(())
    }
}

#[test]
fn members_joining_and_leaving_share_the_partitions_and_every_record_is_processed() {
    let directory = tempfile::tempdir().unwrap();
    let (seen_sender, seen) = crossbeam_channel::unbounded();
    let mut registry = Registry::new();
    registry.sink("collect", move |_| {
        Ok(Box::new(Collect(seen_sender.clone())) as Box<dyn Sink>)
    });
    let runtime = start(
        directory.path(),
        r#"
[[topic]]
name = "in"
partitions = 6
[[pipeline]]
name = "shared"
commit_interval = "10ms"
fetch_max_bytes = "4 KiB"
[pipeline.source]
topic = "in"
[pipeline.sink]
type = "custom"
name = "collect"
"#,
        registry,
    );
    let runtime = Arc::new(runtime);
    // Sample committed offsets while members come and go.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let runtime = Arc::clone(&runtime);
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut last = [0u64; 6];
            let mut samples = 0;
            while !stop.load(Ordering::Relaxed) {
                for partition in 0..6u32 {
                    let committed = runtime
                        .committed_offset("shared", "in", PartitionId(partition))
                        .unwrap()
                        .map_or(0, |offset| offset.0);
                    assert!(
                        committed >= last[partition as usize],
                        "partition {partition}: committed went from {} to {committed}",
                        last[partition as usize]
                    );
                    last[partition as usize] = committed;
                }
                samples += 1;
                std::thread::yield_now();
            }
            samples
        })
    };
    let mut produced = 0;
    for (round, members) in [3u32, 2, 1, 3, 2].into_iter().enumerate() {
        produce_json(&runtime, "in", produced..produced + 3000, 0);
        produced += 3000;
        assert!(runtime.scale_pipeline_blocking("shared", members));
        let described = runtime.describe_group_blocking("shared").unwrap();
        wait_until(CATCH_UP, "the group to settle", || {
            let group = runtime.describe_group_blocking("shared").unwrap();
            group.members.len() == members as usize
                && group.members.values().map(Vec::len).sum::<usize>() == 6
        });
        assert!(
            described.rebalances as usize > round,
            "each change rebalances"
        );
    }
    wait_caught_up(&runtime, "shared");
    stop.store(true, Ordering::Relaxed);
    assert!(sampler.join().unwrap() > 0);
    // Every record was processed (at least once: a moved partition may
    // repeat what its old owner had not committed).
    let mut processed: BTreeMap<u32, BTreeSet<u64>> = BTreeMap::new();
    for (partition, offset) in seen.try_iter() {
        processed.entry(partition).or_default().insert(offset);
    }
    let mut total = 0;
    for partition in 0..6 {
        let end = runtime
            .offsets_blocking("in", PartitionId(partition))
            .unwrap()
            .high_watermark
            .0;
        let offsets = processed.remove(&partition).unwrap_or_default();
        assert_eq!(offsets, (0..end).collect(), "partition {partition}");
        total += end;
    }
    assert_eq!(total, produced);
    let metrics = runtime.metrics();
    assert!(!metrics.pipelines[0].failed);
    Arc::into_inner(runtime).unwrap().shutdown().unwrap();
}

/// Fails every record while `broken` is set (a dependency that is down).
struct Flaky(Arc<AtomicBool>);

impl Operator for Flaky {
    fn process(&mut self, event: &Event, out: &mut Emitter) -> Result<(), OperatorError> {
        if self.0.load(Ordering::Relaxed) {
            return Err(OperatorError::retryable("the enrichment service is down"));
        }
        out.emit(event.clone());
        Ok(())
    }
}

fn sled_rows(path: &Path, tree: &str) -> BTreeMap<Vec<u8>, Vec<u8>> {
    // The runtime's sink handle, dropped a moment ago, may still hold
    // sled's file lock for a little while (its background threads).
    let mut database = sled::open(path);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    // (sled reports it as an error of kind Other: "could not acquire lock".)
    while matches!(&database, Err(sled::Error::Io(error)) if error.to_string().contains("could not acquire lock"))
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(5));
        database = sled::open(path);
    }
    let database = database.unwrap();
    let tree = database.open_tree(tree).unwrap();
    tree.iter()
        .map(|entry| {
            let (key, value) = entry.unwrap();
            (key.to_vec(), value.to_vec())
        })
        .collect()
}

#[test]
fn replaying_the_dead_letter_queue_twice_gives_the_same_rows_as_once() {
    let directory = tempfile::tempdir().unwrap();
    let broken = Arc::new(AtomicBool::new(true));
    let sink_path = directory.path().join("rows.sled");
    let toml = format!(
        r#"
[[topic]]
name = "in"
partitions = 2
[[pipeline]]
name = "rows"
retries = 2
retry_backoff = "1ms"
commit_interval = "0s"
[pipeline.source]
topic = "in"
[[pipeline.operator]]
type = "custom"
name = "flaky"
[pipeline.sink]
type = "sled"
path = {:?}
[[pipeline.sink.table]]
name = "by_id"
key = ["id"]
[[pipeline.sink.table]]
name = "by_origin"
"#,
        sink_path.display().to_string()
    );
    let start_runtime = |broken: &Arc<AtomicBool>| {
        let mut registry = Registry::new();
        let flag = Arc::clone(broken);
        registry.operator("flaky", move |_| {
            Ok(Box::new(Flaky(Arc::clone(&flag))) as Box<dyn Operator>)
        });
        start(directory.path(), &toml, registry)
    };
    let runtime = start_runtime(&broken);
    produce_json(&runtime, "in", 0..200, 0);
    wait_caught_up(&runtime, "rows");
    let (letters, _) = runtime.dead_letters("rows").unwrap();
    assert_eq!(letters.len(), 200);
    assert!(letters
        .iter()
        .all(|letter| letter.entry.attempts == 3 && letter.entry.error.contains("down")));
    runtime.shutdown().unwrap();
    assert!(sled_rows(&sink_path, "by_id").is_empty());

    // The dependency is back: replay once, then again from the start.
    broken.store(false, Ordering::Relaxed);
    let runtime = start_runtime(&broken);
    assert_eq!(
        runtime
            .replay_dead_letters("rows", ReplayFrom::LastReplayed)
            .unwrap()
            .replayed,
        200
    );
    wait_caught_up(&runtime, "rows");
    // A second plain replay has nothing left to do.
    assert_eq!(
        runtime
            .replay_dead_letters("rows", ReplayFrom::LastReplayed)
            .unwrap()
            .replayed,
        0
    );
    runtime.shutdown().unwrap();
    let once = (
        sled_rows(&sink_path, "by_id"),
        sled_rows(&sink_path, "by_origin"),
    );
    assert_eq!(once.0.len(), 200);
    assert_eq!(once.1.len(), 200);

    let runtime = start_runtime(&broken);
    assert_eq!(
        runtime
            .replay_dead_letters("rows", ReplayFrom::Start)
            .unwrap()
            .replayed,
        200
    );
    wait_caught_up(&runtime, "rows");
    runtime.shutdown().unwrap();
    let twice = (
        sled_rows(&sink_path, "by_id"),
        sled_rows(&sink_path, "by_origin"),
    );
    assert_eq!(once, twice, "replaying again changed the sink");
    // Rows keyed by origin name the first delivery, not the replayed copy.
    assert!(twice.1.keys().all(|key| {
        let key = String::from_utf8(key.clone()).unwrap();
        let offset: u64 = key.rsplit('/').next().unwrap().parse().unwrap();
        key.starts_with("in/") && offset < 200
    }));
}

#[test]
fn a_windowed_count_keeps_its_state_across_a_restart() {
    let directory = tempfile::tempdir().unwrap();
    let toml = r#"
[[topic]]
name = "clicks"
partitions = 1
[[topic]]
name = "counts"
[[pipeline]]
name = "per_minute"
commit_interval = "0s"
[pipeline.source]
topic = "clicks"
[[pipeline.operator]]
type = "key_by"
field = "user"
[[pipeline.operator]]
type = "window"
kind = "tumbling"
size = "1m"
time_field = "ts"
[pipeline.sink]
type = "topic"
topic = "counts"
"#;
    let click = |user: &str, ts: i64| Record::new(format!("{{\"user\":\"{user}\",\"ts\":{ts}}}"));
    let runtime = start(directory.path(), toml, Registry::new());
    let producer = runtime.producer("clicks").unwrap();
    // Minute 0: a, a, b.
    producer
        .send_batch_blocking(vec![
            click("a", 1_000),
            click("a", 2_000),
            click("b", 3_000),
        ])
        .unwrap();
    wait_caught_up(&runtime, "per_minute");
    runtime.shutdown().unwrap();

    // After the restart: one more "a" in minute 0, then minute 1 closes minute 0.
    let runtime = start(directory.path(), toml, Registry::new());
    let producer = runtime.producer("clicks").unwrap();
    producer
        .send_batch_blocking(vec![click("a", 4_000), click("c", 61_000)])
        .unwrap();
    wait_caught_up(&runtime, "per_minute");
    let mut counts: Vec<(String, u64, i64)> = read_topic(&runtime, "counts")
        .iter()
        .map(|(_, record)| {
            let value = json_value(record);
            (
                value["key"].as_str().unwrap().to_owned(),
                value["count"].as_u64().unwrap(),
                value["window_start"].as_i64().unwrap(),
            )
        })
        .collect();
    counts.sort();
    assert_eq!(counts, vec![("a".to_owned(), 3, 0), ("b".to_owned(), 1, 0)]);
    runtime.shutdown().unwrap();
}

#[test]
fn stopping_mid_stream_is_not_an_error_and_resumes_from_the_commit() {
    common::capture::install();
    let directory = tempfile::tempdir().unwrap();
    let runtime = start(directory.path(), FILTER_MAP, Registry::new());
    produce_json(&runtime, "in", 0..5_000, 0);
    // Stop whatever the pipeline is doing: the stop is graceful (Ok), and
    // is not logged as a failure (LESSONS.md section 1).
    runtime.shutdown().unwrap();
    let errors = common::capture::events_where(|event| {
        event.level == tracing::Level::ERROR && event.field("pipeline") == Some("errors")
    });
    assert!(
        errors.is_empty(),
        "no ERROR event for the pipeline: {errors:#?}"
    );
    let refused = common::capture::events_where(|event| {
        event.field("pipeline") == Some("errors") && event.message.contains("commit refused")
    });
    assert!(
        refused.is_empty(),
        "final commits happen before the member leaves: {refused:#?}"
    );
    let runtime = start(directory.path(), FILTER_MAP, Registry::new());
    wait_caught_up(&runtime, "errors");
    let out: BTreeSet<u64> = read_topic(&runtime, "out")
        .iter()
        .map(|(_, record)| json_value(record)["id"].as_u64().unwrap())
        .collect();
    assert_eq!(out, (0..5_000).filter(|id| id % 2 == 0).collect());
    runtime.shutdown().unwrap();
}

#[test]
fn a_group_without_a_commit_starts_at_the_end_with_auto_offset_reset_latest() {
    let directory = tempfile::tempdir().unwrap();
    let toml = FILTER_MAP.replace(
        "topic = \"in\"\n[[pipeline.operator]]",
        "topic = \"in\"\nauto_offset_reset = \"latest\"\n[[pipeline.operator]]",
    );
    assert!(toml.contains("latest"));
    // Records from before the pipeline's first start...
    let runtime = Runtime::start_paused(
        Config::from_toml_str(
            &format!(
                "data_dir = {:?}\n{toml}",
                directory.path().display().to_string()
            ),
            "<test>",
        )
        .unwrap(),
    )
    .unwrap();
    produce_json(&runtime, "in", 0..1_000, 0);
    runtime.shutdown().unwrap();
    // ...are skipped; records after it are processed.
    let runtime = start(directory.path(), &toml, Registry::new());
    wait_caught_up(&runtime, "errors");
    produce_json(&runtime, "in", 1_000..2_000, 0);
    wait_caught_up(&runtime, "errors");
    let out: BTreeSet<u64> = read_topic(&runtime, "out")
        .iter()
        .map(|(_, record)| json_value(record)["id"].as_u64().unwrap())
        .collect();
    assert_eq!(out, (1_000..2_000).filter(|id| id % 2 == 0).collect());
    runtime.shutdown().unwrap();
}

#[test]
fn an_unregistered_custom_operator_fails_the_start_naming_the_pipeline_and_stage() {
    let directory = tempfile::tempdir().unwrap();
    let text = format!(
        "data_dir = {:?}\n[[topic]]\nname = \"in\"\n[[pipeline]]\nname = \"p\"\n[pipeline.source]\ntopic = \"in\"\n[[pipeline.operator]]\ntype = \"custom\"\nname = \"missing\"\n[pipeline.sink]\ntype = \"stdout\"\n",
        directory.path().display().to_string()
    );
    let config = Config::from_toml_str(&text, "<test>").unwrap();
    let error = Runtime::start(config)
        .err()
        .expect("the start fails")
        .to_string();
    assert!(
        error.contains("pipeline p")
            && error.contains("operator[0]")
            && error.contains("\"missing\""),
        "{error}"
    );
    // Nothing is left running or locked: the directory opens again.
    let config = millrace::config::Config::new(directory.path());
    Runtime::start(config).unwrap().shutdown().unwrap();
}

#[test]
fn offsets_commit_only_after_the_sink_write() {
    // A sink that fails permanently for one record: the batch is split, the
    // record goes to the dead-letter queue, and the commit covers it only
    // once its dead letter is durable.
    struct RejectSeven;
    impl Sink for RejectSeven {
        fn write(&mut self, batch: &SinkBatch<'_>) -> Result<(), SinkError> {
            if batch
                .events
                .iter()
                .any(|event| event.origin.offset == Offset(7))
            {
                return Err(SinkError::permanent("offset 7 is not welcome"));
            }
            Ok(())
        }
    }
    let directory = tempfile::tempdir().unwrap();
    let mut registry = Registry::new();
    registry.sink("reject", |_| Ok(Box::new(RejectSeven) as Box<dyn Sink>));
    let runtime = start(
        directory.path(),
        r#"
[[topic]]
name = "in"
[[pipeline]]
name = "picky"
retries = 0
[pipeline.source]
topic = "in"
[pipeline.sink]
type = "custom"
name = "reject"
"#,
        registry,
    );
    produce_json(&runtime, "in", 0..20, 0);
    wait_caught_up(&runtime, "picky");
    let (letters, _) = runtime.dead_letters("picky").unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].entry.origin.offset, Offset(7));
    assert_eq!(letters[0].entry.stage, "sink");
    // The entry keeps the source record as it was read.
    assert_eq!(
        letters[0].entry.value.as_deref(),
        Some(&b"{\"id\":7,\"level\":\"info\",\"n\":7}"[..])
    );
    assert_eq!(
        runtime
            .committed_offset("picky", "in", PartitionId(0))
            .unwrap(),
        Some(Offset(20))
    );
    runtime.shutdown().unwrap();
}
