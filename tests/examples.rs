//! The pipeline examples (`examples/trace_ingest.rs`,
//! `examples/windowed_metrics.rs`, `examples/sessionize.rs`), each run
//! through its own code: the example file is compiled into this test as a
//! module and its `run` is called on a temporary work directory, then what
//! it wrote is checked against a reference computed here from the input.
//!
//! The references are deliberately naive (straight loops over the input in
//! the order it was produced), written from the semantics documented in
//! `src/pipeline/window.rs` and `src/pipeline/sink.rs`, not from the
//! implementation.

#[allow(dead_code)]
#[path = "../examples/trace_ingest.rs"]
mod trace_ingest;

#[allow(dead_code)]
#[path = "../examples/windowed_metrics.rs"]
mod windowed_metrics;

#[allow(dead_code)]
#[path = "../examples/sessionize.rs"]
mod sessionize;

mod common;

use millrace::partitioner::partition_for_key;
use millrace::{PartitionId, Runtime};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

// ---------------------------------------------------------------------------
// trace_ingest
// ---------------------------------------------------------------------------

/// The rows the example's three tables must hold after `spans` (parsed
/// values) were written in this order, following the sled sink's documented
/// layout: key = the key fields' text joined by `/` (strings as they are,
/// numbers as JSON text), value = the projection of `fields` as a compact
/// JSON object; a later row with the same key replaces the earlier one.
fn expected_tables(spans: &[Value]) -> trace_ingest::Tables {
    fn text(value: &Value) -> String {
        match value {
            Value::String(text) => text.clone(),
            Value::Number(_) | Value::Bool(_) => value.to_string(),
            other => panic!("not a key field: {other}"),
        }
    }
    fn project(fields: &[&str], value: &Value) -> Vec<u8> {
        let mut object = serde_json::Map::new();
        for field in fields {
            if let Some(found) = value.get(*field) {
                object.insert((*field).to_owned(), found.clone());
            }
        }
        serde_json::to_vec(&Value::Object(object)).unwrap()
    }
    let mut tables: BTreeMap<&str, BTreeMap<Vec<u8>, Vec<u8>>> = BTreeMap::new();
    for span in spans {
        let trace_id = text(&span["trace_id"]);
        let span_id = text(&span["span_id"]);
        tables.entry("traces").or_default().insert(
            trace_id.clone().into_bytes(),
            project(&["trace_id", "service", "start_ms"], span),
        );
        tables.entry("spans").or_default().insert(
            format!("{trace_id}/{span_id}").into_bytes(),
            project(
                &[
                    "trace_id",
                    "span_id",
                    "parent_id",
                    "service",
                    "name",
                    "start_ms",
                    "duration_ms",
                ],
                span,
            ),
        );
        let logs = tables.entry("logs").or_default();
        for log in span["logs"].as_array().into_iter().flatten() {
            // Key parent.trace_id/parent.span_id/ts: two logs of one span
            // with the same ts are one row (the later one).
            logs.insert(
                format!("{trace_id}/{span_id}/{}", text(&log["ts"])).into_bytes(),
                project(&["ts", "msg"], log),
            );
        }
    }
    trace_ingest::TABLES
        .iter()
        .map(|table| {
            let rows = tables
                .remove(table)
                .unwrap_or_default()
                .into_iter()
                .collect();
            (table.to_string(), rows)
        })
        .collect()
}

fn row_keys(tables: &trace_ingest::Tables, table: &str) -> Vec<String> {
    tables[table]
        .iter()
        .map(|(key, _)| String::from_utf8(key.clone()).unwrap())
        .collect()
}

/// The three malformed spans of `examples/data/spans.jsonl` go to the
/// dead-letter queue at the filter stage (the first version of the
/// `repair_json` operator changes nothing), and every other span becomes
/// its trace, span and log rows, exactly as the reference computed from
/// the valid lines says. With the fix, the replay of the dead-letter queue
/// lands the three spans (all 47 are rows); replaying every dead letter
/// again (`ReplayFrom::Start`) leaves every table byte-for-byte identical.
#[test]
fn trace_ingest_dead_letters_the_malformed_spans_and_the_replay_lands_them_exactly_once() {
    let directory = tempfile::tempdir().unwrap();
    let summary = trace_ingest::run(directory.path()).unwrap();

    let lines: Vec<&str> = trace_ingest::SPANS.lines().collect();
    assert_eq!(lines.len(), 47, "spans in examples/data/spans.jsonl");
    let parsed: Vec<Option<Value>> = lines
        .iter()
        .map(|line| serde_json::from_str(line).ok())
        .collect();
    let valid: Vec<Value> = parsed.iter().flatten().cloned().collect();
    let malformed: Vec<(usize, &str)> = lines
        .iter()
        .enumerate()
        .filter(|(index, _)| parsed[*index].is_none())
        .map(|(index, line)| (index, *line))
        .collect();
    assert_eq!(malformed.len(), 3, "malformed spans: {malformed:?}");

    // 1. Before the fix: exactly the malformed spans are dead letters, each
    //    as it was produced, failed at the filter (which parses the JSON).
    let letters: Vec<(u64, String)> = summary
        .dead_letters
        .iter()
        .map(|letter| {
            let entry = &letter.entry;
            assert!(
                entry.error.contains("not JSON"),
                "error of {}: {}",
                entry.origin,
                entry.error
            );
            assert!(
                entry.stage.contains("filter"),
                "stage of {}: {}",
                entry.origin,
                entry.stage
            );
            assert_eq!(&*entry.origin.topic, "spans");
            assert_eq!(entry.pipeline, "trace_ingest");
            assert_eq!(
                entry.attempts, 1,
                "malformed JSON is never retried: {}",
                entry.origin
            );
            let value = String::from_utf8(entry.value.clone().expect("a value").to_vec()).unwrap();
            (entry.origin.offset.0, value)
        })
        .collect();
    // One unkeyed batch: one partition, offsets = line numbers.
    let expected_letters: Vec<(u64, String)> = malformed
        .iter()
        .map(|(index, line)| (*index as u64, line.to_string()))
        .collect();
    assert_eq!(
        letters, expected_letters,
        "dead letters (origin offset, value)"
    );
    let partitions: BTreeSet<u32> = summary
        .dead_letters
        .iter()
        .map(|letter| letter.entry.origin.partition.0)
        .collect();
    assert_eq!(
        partitions.len(),
        1,
        "dead letters from one partition: {partitions:?}"
    );

    let before = expected_tables(&valid);
    let distinct_traces: BTreeSet<&str> = valid
        .iter()
        .map(|span| span["trace_id"].as_str().unwrap())
        .collect();
    assert_eq!(summary.before_fix["traces"].len(), distinct_traces.len());
    assert_eq!(summary.before_fix["spans"].len(), valid.len());
    assert_eq!(summary.before_fix["spans"].len(), 44);
    assert_eq!(summary.before_fix["logs"].len(), before["logs"].len());
    for table in trace_ingest::TABLES {
        assert_eq!(
            row_keys(&summary.before_fix, table),
            row_keys(&before, table),
            "keys of table {table} before the fix"
        );
    }
    assert_eq!(summary.before_fix, before, "rows before the fix");

    // 2. The fix and a replay: the three spans, repaired, are written after
    //    every other span (so their traces' rows are theirs now).
    assert_eq!(summary.replayed, 3, "dead letters replayed");
    let repaired: Vec<Value> = malformed
        .iter()
        .map(|(_, line)| {
            serde_json::from_str(&line.replace(",}", "}").replace(",]", "]"))
                .unwrap_or_else(|error| panic!("the fix repairs {line}: {error}"))
        })
        .collect();
    let all: Vec<Value> = valid.iter().chain(&repaired).cloned().collect();
    let after = expected_tables(&all);
    assert_eq!(
        summary.after_replay["spans"].len(),
        47,
        "every span is a row"
    );
    let all_traces: BTreeSet<&str> = all
        .iter()
        .map(|span| span["trace_id"].as_str().unwrap())
        .collect();
    assert_eq!(summary.after_replay["traces"].len(), all_traces.len());
    assert!(
        summary.after_replay["logs"].len() > summary.before_fix["logs"].len(),
        "the replayed spans' logs are rows"
    );
    for table in trace_ingest::TABLES {
        assert_eq!(
            row_keys(&summary.after_replay, table),
            row_keys(&after, table),
            "keys of table {table} after the replay"
        );
    }
    assert_eq!(summary.after_replay, after, "rows after the replay");

    // 3. Everything replayed again: the same bytes in every table.
    assert_eq!(summary.replayed_again, 3, "dead letters replayed again");
    assert_eq!(
        summary.after_replay_again, summary.after_replay,
        "replaying again changed the rows"
    );
}

// ---------------------------------------------------------------------------
// windowed_metrics
// ---------------------------------------------------------------------------

const MINUTE_MS: i64 = 60_000;

/// One emitted window: key, start, end, count, p50, p90, p99.
type WindowRow = (String, i64, i64, u64, f64, f64, f64);

struct MetricsReference {
    /// Fired windows in firing order.
    fired: Vec<WindowRow>,
    /// Indexes (input lines) of the late records, in input order.
    late: Vec<usize>,
    /// Records in windows still open at the end.
    open_records: usize,
    /// Records counted although an earlier record had a larger time.
    out_of_order_counted: usize,
}

/// Nearest rank: the smallest value with at least `p`% of the values at or
/// below it.
fn nearest_rank(sorted: &[f64], p: usize) -> f64 {
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted[rank - 1]
}

/// Single partition, input order: watermark = largest time seen − 10 s;
/// tumbling 1-minute windows aligned to the epoch; a record whose window
/// ends at or before the watermark is late; a window fires as soon as the
/// watermark reaches its end, windows firing together in (end, start, key)
/// order.
fn metrics_reference(records: &[(String, i64, f64)]) -> MetricsReference {
    let lateness = 10_000;
    let mut largest: Option<i64> = None;
    let mut open: BTreeMap<(i64, i64, String), Vec<f64>> = BTreeMap::new();
    let mut reference = MetricsReference {
        fired: Vec::new(),
        late: Vec::new(),
        open_records: 0,
        out_of_order_counted: 0,
    };
    for (index, (host, ts, latency)) in records.iter().enumerate() {
        let out_of_order = largest.is_some_and(|largest| *ts < largest);
        let largest = *largest.insert(largest.map_or(*ts, |largest| largest.max(*ts)));
        let watermark = largest - lateness;
        let start = ts.div_euclid(MINUTE_MS) * MINUTE_MS;
        let end = start + MINUTE_MS;
        if end <= watermark {
            reference.late.push(index);
        } else {
            reference.out_of_order_counted += usize::from(out_of_order);
            open.entry((end, start, host.clone()))
                .or_default()
                .push(*latency);
        }
        while let Some(entry) = open.first_entry() {
            if entry.key().0 > watermark {
                break;
            }
            let ((end, start, key), mut values) = entry.remove_entry();
            values.sort_by(f64::total_cmp);
            reference.fired.push((
                key,
                start,
                end,
                values.len() as u64,
                nearest_rank(&values, 50),
                nearest_rank(&values, 90),
                nearest_rank(&values, 99),
            ));
        }
    }
    reference.open_records = open.values().map(Vec::len).sum();
    reference
}

fn window_row(line: &str) -> WindowRow {
    let value: Value = serde_json::from_str(line).unwrap_or_else(|error| panic!("{line}: {error}"));
    let object = value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {line}"));
    let names: BTreeSet<&str> = object.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "key",
            "window_start",
            "window_end",
            "count",
            "p50",
            "p90",
            "p99"
        ]),
        "fields of {line}"
    );
    (
        value["key"].as_str().unwrap().to_owned(),
        value["window_start"].as_i64().unwrap(),
        value["window_end"].as_i64().unwrap(),
        value["count"].as_u64().unwrap(),
        value["p50"].as_f64().unwrap(),
        value["p90"].as_f64().unwrap(),
        value["p99"].as_f64().unwrap(),
    )
}

/// Every window the example wrote equals the reference's (key, start, end,
/// count and nearest-rank p50/p90/p99), in firing order; the late records
/// are exactly the reference's late set, in the side-output topic
/// `metrics.late` (read back after the run) and in the example's count;
/// and every input record is counted, late, or in a window still open.
#[test]
fn windowed_metrics_windows_and_late_records_match_a_reference() {
    let directory = tempfile::tempdir().unwrap();
    let work = directory.path();
    let summary = windowed_metrics::run(work, windowed_metrics::DEFAULT_RECORDS).unwrap();

    let input = std::fs::read_to_string(work.join("input.jsonl")).unwrap();
    let lines: Vec<&str> = input.lines().collect();
    assert_eq!(lines.len() as u64, windowed_metrics::DEFAULT_RECORDS + 1);
    let records: Vec<(String, i64, f64)> = lines
        .iter()
        .map(|line| {
            let value: Value = serde_json::from_str(line).unwrap();
            (
                value["host"].as_str().unwrap().to_owned(),
                value["ts"].as_i64().unwrap(),
                value["latency_ms"].as_f64().unwrap(),
            )
        })
        .collect();
    let reference = metrics_reference(&records);
    // The input exercises what the test is about.
    assert!(
        reference.out_of_order_counted > 100,
        "{}",
        reference.out_of_order_counted
    );
    assert!(reference.late.len() > 50, "{}", reference.late.len());
    assert!(reference.open_records > 0);
    assert!(reference.fired.len() > 100);

    // Every window, in the order it fired.
    let windows = std::fs::read_to_string(work.join("windows.jsonl")).unwrap();
    let written: Vec<WindowRow> = windows.lines().map(window_row).collect();
    for (position, (written, expected)) in written.iter().zip(&reference.fired).enumerate() {
        assert_eq!(written, expected, "window #{position}");
    }
    assert_eq!(written.len(), reference.fired.len(), "windows written");
    assert_eq!(summary.windows, reference.fired.len() as u64);

    // The late records: in metrics.late, as produced, in input order.
    let runtime = Runtime::start_paused(windowed_metrics::config(work).unwrap()).unwrap();
    let late: Vec<(String, String)> =
        common::read_partition(&runtime, "metrics.late", PartitionId(0))
            .iter()
            .map(|record| {
                (
                    String::from_utf8(record.key.clone().expect("keyed by host").to_vec()).unwrap(),
                    String::from_utf8(common::value_of(record).to_vec()).unwrap(),
                )
            })
            .collect();
    runtime.shutdown().unwrap();
    let expected_late: Vec<(String, String)> = reference
        .late
        .iter()
        .map(|index| (records[*index].0.clone(), lines[*index].to_owned()))
        .collect();
    assert_eq!(late.len(), expected_late.len(), "late records");
    assert_eq!(late, expected_late, "late records (key, value)");
    assert_eq!(
        summary.late,
        expected_late.len() as u64,
        "late records the example reports"
    );

    // Nothing lost: counted + late + still open = every input record.
    let counted: u64 = written.iter().map(|window| window.3).sum();
    assert_eq!(summary.counted, counted);
    assert_eq!(
        counted as usize + late.len() + reference.open_records,
        records.len(),
        "counted {counted} + late {} + open {}",
        late.len(),
        reference.open_records
    );
}

// ---------------------------------------------------------------------------
// sessionize
// ---------------------------------------------------------------------------

/// One session: key, start, end, count.
type SessionRow = (String, i64, i64, u64);

#[derive(Clone, Debug)]
struct OpenSession {
    start: i64,
    end: i64,
    count: u64,
    /// Input position of its first click.
    first_index: usize,
}

struct SessionReference {
    /// Fired sessions, with the input positions of their first click and
    /// of the click whose watermark fired them.
    fired: Vec<(SessionRow, usize, usize)>,
    late: Vec<usize>,
    open_clicks: u64,
}

/// Session windows per user (gap 5 min, allowed lateness 1 min), with one
/// watermark per source partition: records are processed in input order,
/// which per partition is the order they were produced in.
fn session_reference(clicks: &[(String, i64)], partitions: u32) -> SessionReference {
    let gap = 5 * MINUTE_MS;
    let lateness = MINUTE_MS;
    let mut largest: Vec<Option<i64>> = vec![None; partitions as usize];
    let mut open: Vec<BTreeMap<String, Vec<OpenSession>>> =
        vec![BTreeMap::new(); partitions as usize];
    let mut reference = SessionReference {
        fired: Vec::new(),
        late: Vec::new(),
        open_clicks: 0,
    };
    for (index, (user, ts)) in clicks.iter().enumerate() {
        let partition = partition_for_key(user.as_bytes(), partitions) as usize;
        let seen = largest[partition].map_or(*ts, |largest| largest.max(*ts));
        largest[partition] = Some(seen);
        let watermark = seen - lateness;
        if ts + gap <= watermark {
            reference.late.push(index);
        } else {
            // Merge every open session of the user within the gap.
            let sessions = open[partition].entry(user.clone()).or_default();
            let mut merged = OpenSession {
                start: *ts,
                end: ts + gap,
                count: 1,
                first_index: index,
            };
            sessions.retain(|session| {
                let overlaps = session.start < ts + gap && *ts < session.end;
                if overlaps {
                    merged.start = merged.start.min(session.start);
                    merged.end = merged.end.max(session.end);
                    merged.count += session.count;
                    merged.first_index = merged.first_index.min(session.first_index);
                }
                !overlaps
            });
            sessions.push(merged);
        }
        // Fire every session of the partition whose end the watermark reached.
        for (key, sessions) in open[partition].iter_mut() {
            sessions.retain(|session| {
                let fires = session.end <= watermark;
                if fires {
                    reference.fired.push((
                        (key.clone(), session.start, session.end, session.count),
                        session.first_index,
                        index,
                    ));
                }
                !fires
            });
        }
    }
    reference.open_clicks = open
        .iter()
        .flat_map(|by_user| by_user.values().flatten())
        .map(|session| session.count)
        .sum();
    reference
}

/// The sessions the example wrote equal the reference's exactly (as sorted
/// lists, so a session lost, split or written twice fails). Sessions open
/// across the example's restart are among them, so this fails if the open
/// sessions or the watermarks were not restored from the state store.
#[test]
fn sessionize_sessions_match_a_reference_across_the_restart() {
    let directory = tempfile::tempdir().unwrap();
    let work = directory.path();
    let summary = sessionize::run(work).unwrap();
    let config = sessionize::config(work).unwrap();
    let partitions = config.topics[0].partitions;
    assert_eq!(partitions, 2);

    let input = std::fs::read_to_string(work.join("input.jsonl")).unwrap();
    let lines: Vec<&str> = input.lines().collect();
    assert_eq!(lines.len(), summary.clicks_in);
    let clicks: Vec<(String, i64)> = lines
        .iter()
        .map(|line| {
            let value: Value = serde_json::from_str(line).unwrap();
            (
                value["user"].as_str().unwrap().to_owned(),
                value["ts"].as_i64().unwrap(),
            )
        })
        .collect();

    // Each partition holds its users' clicks in input order (the order the
    // reference processes them in), and the dead-letter queue holds the
    // reference's late clicks.
    let reference = session_reference(&clicks, partitions);
    let runtime = Runtime::start_paused(config).unwrap();
    for partition in 0..partitions {
        let stored: Vec<String> =
            common::read_partition(&runtime, "clicks", PartitionId(partition))
                .iter()
                .map(|record| String::from_utf8(common::value_of(record).to_vec()).unwrap())
                .collect();
        let expected: Vec<String> = lines
            .iter()
            .zip(&clicks)
            .filter(|(_, (user, _))| partition_for_key(user.as_bytes(), partitions) == partition)
            .map(|(line, _)| line.to_string())
            .collect();
        assert!(!expected.is_empty(), "partition {partition} has clicks");
        assert_eq!(stored, expected, "clicks in partition {partition}");
    }
    let (letters, undecodable) = runtime.dead_letters("sessionize").unwrap();
    runtime.shutdown().unwrap();
    assert!(undecodable.is_empty());
    let mut dead: Vec<String> = letters
        .iter()
        .map(|letter| String::from_utf8(letter.entry.value.clone().unwrap().to_vec()).unwrap())
        .collect();
    dead.sort();
    let mut expected_dead: Vec<String> = reference
        .late
        .iter()
        .map(|index| lines[*index].to_owned())
        .collect();
    expected_dead.sort();
    assert_eq!(dead, expected_dead, "late clicks in the dead-letter queue");

    // The restart matters: sessions opened before it fire after it (their
    // clicks before the restart are only in the restored state).
    let split = summary.produced_before_restart;
    let across = reference
        .fired
        .iter()
        .filter(|(_, first, fired_at)| *first < split && *fired_at >= split)
        .count();
    assert!(across >= 10, "sessions open across the restart: {across}");

    let written = std::fs::read_to_string(work.join("sessions.jsonl")).unwrap();
    let mut sessions: Vec<SessionRow> = written
        .lines()
        .map(|line| {
            let value: Value =
                serde_json::from_str(line).unwrap_or_else(|error| panic!("{line}: {error}"));
            assert_eq!(value.as_object().unwrap().len(), 4, "fields of {line}");
            (
                value["key"].as_str().unwrap().to_owned(),
                value["window_start"].as_i64().unwrap(),
                value["window_end"].as_i64().unwrap(),
                value["count"].as_u64().unwrap(),
            )
        })
        .collect();
    sessions.sort();
    let mut expected: Vec<SessionRow> = reference
        .fired
        .iter()
        .map(|(row, _, _)| row.clone())
        .collect();
    expected.sort();
    let missing: Vec<&SessionRow> = expected
        .iter()
        .filter(|row| sessions.binary_search(row).is_err())
        .collect();
    let unexpected: Vec<&SessionRow> = sessions
        .iter()
        .filter(|row| expected.binary_search(row).is_err())
        .collect();
    assert!(
        missing.is_empty() && unexpected.is_empty(),
        "{} sessions missing (first: {:?}), {} unexpected (first: {:?})",
        missing.len(),
        missing.iter().take(5).collect::<Vec<_>>(),
        unexpected.len(),
        unexpected.iter().take(5).collect::<Vec<_>>()
    );
    assert_eq!(sessions, expected, "sessions (sorted)");

    // Nothing lost: counted + late + still open = every click.
    assert_eq!(summary.sessions, sessions.len() as u64);
    let counted: u64 = sessions.iter().map(|session| session.3).sum();
    assert_eq!(summary.clicks_counted, counted);
    assert_eq!(
        counted + reference.late.len() as u64 + reference.open_clicks,
        clicks.len() as u64
    );
}
