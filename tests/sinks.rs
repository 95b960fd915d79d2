//! The built-in sinks and the dead-letter entry format, through the public
//! API: the sled table sink's atomic, effectively-once batches (across
//! reopens), `each` rows, permanent errors that write nothing; the JSON
//! lines sink's torn-tail cut; the topic sink; dead-letter round trips and
//! idempotent replays.
//!
//! With `--features failpoints`, one more test panics inside the sled
//! transaction after the first table and checks that nothing of the batch
//! is visible. Failpoints are process-wide and every sled test here passes
//! that failpoint, so that test runs alone in a child process.

mod common;

use bytes::Bytes;
use millrace::pipeline::config::{SledSinkConfig, TableConfig};
use millrace::pipeline::dlq::DlqEntry;
use millrace::pipeline::json::FieldPath;
use millrace::pipeline::sink::{JsonLinesSink, SledTableSink, TopicSink};
use millrace::pipeline::{Event, Origin, Sink, SinkBatch};
use millrace::{FetchedRecord, Header, Offset, PartitionId, Runtime};
use std::path::Path;
use std::sync::Arc;

const PIPELINE: &str = "ingest";
const SOURCE: &str = "traces";
const PARTITION: PartitionId = PartitionId(1);

fn paths(texts: &[&str]) -> Vec<FieldPath> {
    texts
        .iter()
        .map(|text| FieldPath::parse(text).unwrap())
        .collect()
}

/// Three tables of one trace event: the trace, its spans (`each`), and the
/// raw event keyed by origin.
fn trace_tables(directory: &Path) -> SledSinkConfig {
    SledSinkConfig {
        path: directory.join("tables"),
        tables: vec![
            TableConfig {
                name: "traces".to_owned(),
                key: paths(&["trace_id"]),
                each: None,
                fields: Some(paths(&["trace_id", "service", "version"])),
            },
            TableConfig {
                name: "spans".to_owned(),
                key: paths(&["parent.trace_id", "span_id"]),
                each: Some(FieldPath::parse("spans").unwrap()),
                fields: Some(paths(&["name", "parent.version"])),
            },
            TableConfig {
                name: "raw".to_owned(),
                key: Vec::new(),
                each: None,
                fields: None,
            },
        ],
    }
}

/// The event read at `position`: trace `t{position}` with two spans.
fn trace_event(position: u64, version: u32) -> Event {
    let value = format!(
        r#"{{"trace_id":"t{position}","service":"api","version":{version},
            "spans":[{{"span_id":"a","name":"GET"}},{{"span_id":"b","name":"SQL"}}]}}"#
    );
    event_at(position, Some(value.as_str()))
}

fn event_at(position: u64, value: Option<&str>) -> Event {
    Event {
        key: None,
        value: value.map(|value| Bytes::copy_from_slice(value.as_bytes())),
        headers: Vec::new(),
        timestamp_ms: 1_700_000_000_000 + position as i64,
        origin: Origin {
            topic: Arc::from(SOURCE),
            partition: PARTITION,
            offset: Offset(position),
        },
        position: Offset(position),
    }
}

fn batch(events: &[Event]) -> SinkBatch<'_> {
    SinkBatch {
        pipeline: PIPELINE,
        source_topic: SOURCE,
        partition: PARTITION,
        first_offset: events.first().map_or(Offset(0), |event| event.position),
        next_offset: events
            .last()
            .map_or(Offset(0), |event| event.position.next()),
        events,
    }
}

fn text_rows(sink: &SledTableSink, table: &str) -> Vec<(String, String)> {
    sink.table_rows(table)
        .unwrap()
        .into_iter()
        .map(|(key, value)| {
            (
                String::from_utf8(key).unwrap(),
                String::from_utf8(value).unwrap(),
            )
        })
        .collect()
}

fn applied(sink: &mut SledTableSink) -> Option<Offset> {
    sink.applied_offset(PIPELINE, SOURCE, PARTITION).unwrap()
}

#[test]
fn sled_batch_writes_every_table_with_each_rows() {
    let directory = tempfile::tempdir().unwrap();
    let mut sink = SledTableSink::open(&trace_tables(directory.path())).unwrap();
    assert_eq!(applied(&mut sink), None);
    let events = [trace_event(0, 1), trace_event(1, 1)];
    sink.write(&batch(&events)).unwrap();

    assert_eq!(
        text_rows(&sink, "traces"),
        [
            (
                "t0".to_owned(),
                r#"{"service":"api","trace_id":"t0","version":1}"#.to_owned()
            ),
            (
                "t1".to_owned(),
                r#"{"service":"api","trace_id":"t1","version":1}"#.to_owned()
            ),
        ]
    );
    let spans = text_rows(&sink, "spans");
    let span_keys: Vec<&str> = spans.iter().map(|(key, _)| key.as_str()).collect();
    assert_eq!(span_keys, ["t0/a", "t0/b", "t1/a", "t1/b"]);
    assert_eq!(spans[1].1, r#"{"name":"SQL","parent":{"version":1}}"#);
    let raw = text_rows(&sink, "raw");
    assert_eq!(raw.len(), 2);
    assert_eq!(raw[0].0, "traces/1/0");
    assert!(raw[0]
        .1
        .starts_with(r#"{"trace_id":"t0","service":"api","version":1,"spans":["#));
    assert!(sink.row("traces", b"t1").unwrap().is_some());
    assert_eq!(applied(&mut sink), Some(Offset(2)));
    // Other partitions and pipelines have their own applied offsets.
    assert_eq!(
        sink.applied_offset(PIPELINE, SOURCE, PartitionId(0))
            .unwrap(),
        None
    );
    assert_eq!(
        sink.applied_offset("other", SOURCE, PARTITION).unwrap(),
        None
    );
}

#[test]
fn sled_skips_what_an_earlier_run_applied() {
    let directory = tempfile::tempdir().unwrap();
    let config = trace_tables(directory.path());
    let first = [trace_event(0, 1), trace_event(1, 1), trace_event(2, 1)];
    {
        let mut sink = SledTableSink::open(&config).unwrap();
        sink.write(&batch(&first)).unwrap();
    }
    let mut sink = SledTableSink::open(&config).unwrap();
    assert_eq!(applied(&mut sink), Some(Offset(3)));
    let before = [
        text_rows(&sink, "traces"),
        text_rows(&sink, "spans"),
        text_rows(&sink, "raw"),
    ];

    // The same batch again (a crash after the write, before the commit):
    // same rows. Version 2 shows that nothing was rewritten, not just
    // overwritten with equal rows.
    let again = [trace_event(0, 2), trace_event(1, 2), trace_event(2, 2)];
    sink.write(&batch(&again)).unwrap();
    let after = [
        text_rows(&sink, "traces"),
        text_rows(&sink, "spans"),
        text_rows(&sink, "raw"),
    ];
    assert_eq!(after, before);
    assert_eq!(applied(&mut sink), Some(Offset(3)));

    // An overlapping batch: only positions 3 and 4 are new.
    let overlapping = [trace_event(2, 2), trace_event(3, 2), trace_event(4, 2)];
    sink.write(&batch(&overlapping)).unwrap();
    let traces = text_rows(&sink, "traces");
    let versions: Vec<(&str, bool)> = traces
        .iter()
        .map(|(key, value)| (key.as_str(), value.contains(r#""version":2"#)))
        .collect();
    assert_eq!(
        versions,
        [
            ("t0", false),
            ("t1", false),
            ("t2", false),
            ("t3", true),
            ("t4", true)
        ]
    );
    assert_eq!(text_rows(&sink, "spans").len(), 10);
    assert_eq!(text_rows(&sink, "raw").len(), 5);
    assert_eq!(applied(&mut sink), Some(Offset(5)));

    // A batch entirely below the applied offset never moves it back.
    sink.write(&batch(&[trace_event(0, 3)])).unwrap();
    assert_eq!(applied(&mut sink), Some(Offset(5)));
    assert!(text_rows(&sink, "traces")[0].1.contains(r#""version":1"#));
}

#[test]
fn sled_permanent_error_writes_nothing() {
    let directory = tempfile::tempdir().unwrap();
    let mut sink = SledTableSink::open(&trace_tables(directory.path())).unwrap();
    // The second event's second span has no span_id: its table is the
    // second one, so the first table's rows would be written if the batch
    // were not one unit.
    let broken = event_at(
        1,
        Some(r#"{"trace_id":"t1","version":1,"spans":[{"span_id":"a"},{"name":"x"}]}"#),
    );
    let events = [trace_event(0, 1), broken.clone()];
    let error = sink.write(&batch(&events)).unwrap_err();
    assert!(!error.retryable, "{error}");
    assert_eq!(
        error.message,
        "sled sink: table spans: key field span_id is missing in event traces/1/1 (element 1)"
    );
    for table in ["traces", "spans", "raw"] {
        assert_eq!(text_rows(&sink, table), [], "table {table}");
    }
    assert_eq!(applied(&mut sink), None);

    let not_json = event_at(0, Some("not json"));
    let error = sink.write(&batch(&[not_json])).unwrap_err();
    assert!(!error.retryable);
    assert!(error.message.contains("traces/1/0 is not JSON"), "{error}");

    // Once a position is applied, its event is skipped, so it cannot fail
    // a later batch (a replayed batch after a config change, say).
    sink.write(&batch(&[trace_event(0, 1), trace_event(1, 1)]))
        .unwrap();
    sink.write(&batch(&[broken, trace_event(2, 1)])).unwrap();
    assert_eq!(text_rows(&sink, "traces").len(), 3);
    assert_eq!(applied(&mut sink), Some(Offset(3)));
}

#[test]
fn sled_tombstones_and_events_without_the_array_write_no_rows() {
    let directory = tempfile::tempdir().unwrap();
    let mut sink = SledTableSink::open(&trace_tables(directory.path())).unwrap();
    let events = [
        event_at(0, None),
        event_at(1, Some(r#"{"trace_id":"t1","version":1}"#)),
    ];
    sink.write(&batch(&events)).unwrap();
    assert_eq!(text_rows(&sink, "traces").len(), 1);
    assert_eq!(text_rows(&sink, "spans"), []);
    assert_eq!(text_rows(&sink, "raw").len(), 1);
    assert_eq!(applied(&mut sink), Some(Offset(2)));
}

#[test]
fn sled_open_refuses_bad_table_names() {
    let directory = tempfile::tempdir().unwrap();
    let mut config = trace_tables(directory.path());
    config.tables[1].name = "traces".to_owned();
    let error = SledTableSink::open(&config).unwrap_err();
    assert!(!error.retryable);
    assert!(error.message.contains("twice"), "{error}");
    config.tables[1].name = "__millrace_applied".to_owned();
    assert!(!SledTableSink::open(&config).unwrap_err().retryable);
    let sink = SledTableSink::open(&trace_tables(directory.path())).unwrap();
    assert!(!sink.table_rows("nope").unwrap_err().retryable);
}

#[test]
fn jsonl_cuts_a_torn_tail_at_open_and_appends_lines() {
    common::capture::install();
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("out").join("lines.jsonl");
    {
        // The parent directory is created.
        let mut sink = JsonLinesSink::open(&path).unwrap();
        let events = [event_at(0, Some("{\n  \"a\": 1\n}")), event_at(1, None)];
        sink.write(&batch(&events)).unwrap();
    }
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"a\":1}\nnull\n");

    // A crash in the middle of the next write leaves half a line.
    let mut torn = std::fs::read(&path).unwrap();
    torn.extend_from_slice(b"{\"b\":");
    std::fs::write(&path, &torn).unwrap();
    let mut sink = JsonLinesSink::open(&path).unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"a\":1}\nnull\n");
    let path_text = path.display().to_string();
    let warnings = common::capture::events_where(|event| {
        event.level == tracing::Level::WARN && event.field("path") == Some(path_text.as_str())
    });
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].field("bytes"), Some("5"));

    let events = [event_at(2, Some("not json")), event_at(3, Some("[1, 2]"))];
    sink.write(&batch(&events)).unwrap();
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "{\"a\":1}\nnull\n\"not json\"\n[1,2]\n"
    );

    // A whole file of one torn line is cut to nothing.
    let only_torn = directory.path().join("torn.jsonl");
    std::fs::write(&only_torn, b"{\"never").unwrap();
    JsonLinesSink::open(&only_torn).unwrap();
    assert_eq!(std::fs::read(&only_torn).unwrap(), b"");
}

fn dead_letter() -> DlqEntry {
    DlqEntry {
        origin: Origin {
            topic: Arc::from(SOURCE),
            partition: PARTITION,
            offset: Offset(4),
        },
        pipeline: PIPELINE.to_owned(),
        stage: "sink".to_owned(),
        error: "table spans: key field span_id is missing".to_owned(),
        attempts: 4,
        first_failed_ms: 1_700_000_000_000,
        failed_ms: 1_700_000_001_000,
        key: Some(Bytes::from_static(b"t4")),
        value: trace_event(4, 1).value,
        headers: vec![Header {
            key: "tenant".to_owned(),
            value: Bytes::from_static(b"acme"),
        }],
        timestamp_ms: 1_700_000_000_004,
    }
}

/// The record as a consumer of the topic it was produced to reads it.
fn as_fetched(record: millrace::Record, offset: u64) -> FetchedRecord {
    FetchedRecord {
        offset: Offset(offset),
        timestamp_ms: record.timestamp_ms.unwrap(),
        key: record.key,
        value: record.value,
        headers: record.headers,
    }
}

#[test]
fn dlq_entries_round_trip_and_replays_are_idempotent() {
    let entry = dead_letter();
    let stored = as_fetched(entry.to_record(), 0);
    assert_eq!(DlqEntry::from_record(&stored), Ok(entry.clone()));
    let json = entry.to_json();
    assert_eq!(json["origin"], "traces/1/4");
    assert_eq!(json["error"], entry.error.as_str());

    // The first delivery wrote its rows; then the record is replayed twice,
    // landing at later positions of the source topic.
    let directory = tempfile::tempdir().unwrap();
    let mut sink = SledTableSink::open(&trace_tables(directory.path())).unwrap();
    sink.write(&batch(&[trace_event(4, 1)])).unwrap();
    let counts = |sink: &SledTableSink| {
        ["traces", "spans", "raw"].map(|table| sink.table_rows(table).unwrap().len())
    };
    let before = counts(&sink);
    for position in [10, 11] {
        let replay = as_fetched(entry.replay_record(), position);
        let event = Event::from_fetched(&Arc::from(SOURCE), PARTITION, replay);
        assert_eq!(event.origin, entry.origin);
        assert_eq!(event.position, Offset(position));
        sink.write(&batch(&[event])).unwrap();
        assert_eq!(counts(&sink), before);
    }
    assert_eq!(
        sink.row("raw", b"traces/1/4").unwrap().as_deref(),
        Some(&br#"{"trace_id":"t4","service":"api","version":1,"spans":[{"span_id":"a","name":"GET"},{"span_id":"b","name":"SQL"}]}"#[..])
    );
    assert_eq!(applied(&mut sink), Some(Offset(12)));

    // A replay that fails again goes back to the queue with the same origin.
    let replayed = Event::from_fetched(
        &Arc::from(SOURCE),
        PARTITION,
        as_fetched(entry.replay_record(), 12),
    );
    let second = DlqEntry {
        origin: replayed.origin.clone(),
        headers: replayed.headers.clone(),
        attempts: 1,
        ..dead_letter()
    };
    let read = DlqEntry::from_record(&as_fetched(second.to_record(), 1)).unwrap();
    assert_eq!(read.origin, entry.origin);
    assert_eq!(read.replay_record().headers, entry.replay_record().headers);
}

#[test]
fn topic_sink_produces_every_event_durably() {
    let directory = tempfile::tempdir().unwrap();
    let runtime = Runtime::start(common::config(
        directory.path(),
        vec![common::topic("out", 2)],
    ))
    .unwrap();
    let mut sink = TopicSink::new(runtime.producer("out").unwrap());
    let events: Vec<Event> = (0..6)
        .map(|position| {
            let mut event = event_at(position, Some(&format!("{{\"n\":{position}}}")));
            event.key = Some(Bytes::from(format!("key-{}", position % 3)));
            event.headers.push(Header {
                key: "h".to_owned(),
                value: Bytes::from_static(b"v"),
            });
            event
        })
        .collect();
    sink.write(&batch(&events)).unwrap();
    let mut fetched: Vec<FetchedRecord> = (0..2)
        .flat_map(|partition| common::read_partition(&runtime, "out", PartitionId(partition)))
        .collect();
    fetched.sort_by_key(|record| record.timestamp_ms);
    assert_eq!(fetched.len(), 6);
    for (record, event) in fetched.iter().zip(&events) {
        assert_eq!(record.key, event.key);
        assert_eq!(record.value, event.value);
        assert_eq!(record.headers, event.headers);
        assert_eq!(record.timestamp_ms, event.timestamp_ms);
    }
    runtime.shutdown().unwrap();
}

/// A panic inside the transaction, after the first table's rows and before
/// the others, leaves nothing of the batch, and the sink works afterwards.
#[cfg(feature = "failpoints")]
#[test]
fn sled_panic_after_the_first_table_leaves_nothing_of_the_batch() {
    const TEST: &str = "sled_panic_after_the_first_table_leaves_nothing_of_the_batch";
    const CHILD_MARKER: &str = "MILLRACE_SINKS_FAILPOINT_CHILD";
    if std::env::var_os(CHILD_MARKER).is_none() {
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args([TEST, "--exact", "--test-threads=1", "--nocapture"])
            .env(CHILD_MARKER, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stdout.contains("1 passed"),
            "isolated test failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        return;
    }

    let scenario = fail::FailScenario::setup();
    let directory = tempfile::tempdir().unwrap();
    let config = trace_tables(directory.path());
    let mut sink = SledTableSink::open(&config).unwrap();
    sink.write(&batch(&[trace_event(0, 1), trace_event(1, 1)]))
        .unwrap();
    let snapshot =
        |sink: &SledTableSink| ["traces", "spans", "raw"].map(|table| text_rows(sink, table));
    let before = snapshot(&sink);

    fail::cfg("pipeline::sled_sink::after_first_table", "panic").unwrap();
    let next = [trace_event(2, 1), trace_event(3, 1)];
    let outcome =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sink.write(&batch(&next))));
    assert!(outcome.is_err(), "the failpoint must panic inside write");
    fail::cfg("pipeline::sled_sink::after_first_table", "off").unwrap();

    // Nothing visible through the sink that panicked ...
    assert_eq!(snapshot(&sink), before);
    assert_eq!(applied(&mut sink), Some(Offset(2)));
    // ... nor after a reopen.
    drop(sink);
    let mut sink = SledTableSink::open(&config).unwrap();
    assert_eq!(snapshot(&sink), before);
    assert_eq!(applied(&mut sink), Some(Offset(2)));

    // The same batch goes through once the failpoint is off.
    sink.write(&batch(&next)).unwrap();
    let after = snapshot(&sink);
    assert_eq!(after.clone().map(|rows| rows.len()), [4, 8, 4]);
    assert_eq!(applied(&mut sink), Some(Offset(4)));
    scenario.teardown();
}
