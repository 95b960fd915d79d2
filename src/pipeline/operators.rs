//! The [`Operator`] trait and the built-in stateless operators.
//!
//! An operator instance belongs to one source partition of one pipeline
//! member: it is called from one thread, in offset order, and owns its state
//! outright (no locks). Stateful operators report their changes at a
//! checkpoint ([`Operator::checkpoint`]) and get them back after a restart
//! ([`Operator::restore`]); the runtime stores them with the source offset
//! they are consistent with.
//!
//! The built-in stateless operators ([`Filter`], [`Map`], [`Extract`],
//! [`FlatMap`], [`KeyBy`], [`EventTime`]; [`build_stateless`] makes one from
//! its config) read the event's value as JSON. A value that is not JSON (or
//! not UTF-8, or a tombstone) is a permanent error, `value is not JSON: ...`,
//! and so is a required field that is missing or of the wrong type: the
//! record goes to the dead-letter queue. Emitted events keep the input's
//! origin, position, headers, key and timestamp, except the one the
//! operator exists to change.

use super::config::{MapConfig, OperatorConfig, Predicate};
use super::json::{self, FieldPath};
use super::{Event, StateDelta};
use bytes::Bytes;
use serde_json::Value;

/// Collects what an operator produces for one input event.
#[derive(Debug, Default)]
pub struct Emitter {
    pub(crate) out: Vec<Event>,
    pub(crate) late: Vec<(Event, String)>,
}

impl Emitter {
    /// An empty emitter.
    pub fn new() -> Emitter {
        Emitter::default()
    }

    /// Passes `event` to the next stage.
    pub fn emit(&mut self, event: Event) {
        self.out.push(event);
    }

    /// Reports `event` as too late for its window: the pipeline sends it to
    /// its dead-letter queue or its side output, as configured. Never dropped.
    pub fn late(&mut self, event: Event, reason: impl Into<String>) {
        self.late.push((event, reason.into()));
    }

    /// Events emitted so far.
    pub fn emitted(&self) -> &[Event] {
        &self.out
    }

    /// Takes the emitted events, leaving it empty.
    pub fn take(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.out)
    }

    /// Takes the late events, leaving none.
    pub fn take_late(&mut self) -> Vec<(Event, String)> {
        std::mem::take(&mut self.late)
    }
}

/// Why an operator could not process an event.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct OperatorError {
    /// What went wrong, for the dead-letter queue and the logs.
    pub message: String,
    /// Whether trying again may succeed. A malformed record never will, so
    /// it goes to the dead-letter queue at once; a retryable error is tried
    /// again (bounded, with backoff) first.
    pub retryable: bool,
}

impl OperatorError {
    /// An error that trying again cannot fix (bad input).
    pub fn permanent(message: impl Into<String>) -> OperatorError {
        OperatorError {
            message: message.into(),
            retryable: false,
        }
    }

    /// An error that may go away (an external service, a resource).
    pub fn retryable(message: impl Into<String>) -> OperatorError {
        OperatorError {
            message: message.into(),
            retryable: true,
        }
    }
}

/// One step of a pipeline.
pub trait Operator: Send {
    /// Processes one event, emitting zero or more. On an error nothing it
    /// emitted for this event is kept.
    fn process(&mut self, event: &Event, out: &mut Emitter) -> Result<(), OperatorError>;

    /// Called after the last event of each source batch with the largest
    /// event time seen so far on this partition; windows fire here.
    fn on_batch_end(&mut self, _out: &mut Emitter) -> Result<(), OperatorError> {
        Ok(())
    }

    /// Whether it keeps state that must survive a restart.
    fn is_stateful(&self) -> bool {
        false
    }

    /// Appends every state change since the last checkpoint.
    fn checkpoint(&mut self, _deltas: &mut Vec<StateDelta>) {}

    /// Restores state saved by earlier checkpoints (called before the first
    /// event, with every stored entry of this operator and partition).
    fn restore(&mut self, _entries: Vec<(Vec<u8>, Vec<u8>)>) -> Result<(), OperatorError> {
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// The built-in stateless operators.

/// The operator for a stateless `[[pipeline.operator]]`: filter, map,
/// extract, flat_map, key_by or event_time. `None` for window, aggregate,
/// reduce and custom, which are built elsewhere.
pub fn build_stateless(config: &OperatorConfig) -> Option<Box<dyn Operator>> {
    let operator: Box<dyn Operator> = match config {
        OperatorConfig::Filter(predicate) => Box::new(Filter::new(predicate.clone())),
        OperatorConfig::Map(map) => Box::new(Map::new(map.clone())),
        OperatorConfig::Extract { field } => Box::new(Extract::new(field.clone())),
        OperatorConfig::FlatMap { field } => Box::new(FlatMap::new(field.clone())),
        OperatorConfig::KeyBy { field } => Box::new(KeyBy::new(field.clone())),
        OperatorConfig::EventTime { field } => Box::new(EventTime::new(field.clone())),
        OperatorConfig::Window(_)
        | OperatorConfig::Aggregate(_)
        | OperatorConfig::Reduce(_)
        | OperatorConfig::Custom { .. } => return None,
    };
    Some(operator)
}

/// The event's value bytes; a tombstone has none.
fn value_bytes(event: &Event) -> Result<&[u8], OperatorError> {
    event.value.as_deref().ok_or_else(|| {
        OperatorError::permanent("value is not JSON: the record has no value (a tombstone)")
    })
}

fn not_json(error: String) -> OperatorError {
    OperatorError::permanent(format!("value is not JSON: {error}"))
}

/// The JSON value at `field` of the event's value; missing is an error.
fn required_field(event: &Event, field: &FieldPath) -> Result<Value, OperatorError> {
    json::parse_at(value_bytes(event)?, field)
        .map_err(not_json)?
        .ok_or_else(|| OperatorError::permanent(format!("field `{field}` is missing")))
}

fn to_json_bytes(value: &Value) -> Result<Bytes, OperatorError> {
    // Serializing a `Value` cannot fail (its keys are strings); kept total.
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|error| OperatorError::permanent(format!("cannot write JSON: {error}")))
}

/// `type = "filter"`: passes events whose JSON value satisfies the
/// predicate, unchanged; drops the others.
#[derive(Clone, Debug)]
pub struct Filter {
    predicate: Predicate,
}

impl Filter {
    /// A filter with this predicate.
    pub fn new(predicate: Predicate) -> Filter {
        Filter { predicate }
    }
}

impl Operator for Filter {
    fn process(&mut self, event: &Event, out: &mut Emitter) -> Result<(), OperatorError> {
        // Only the tested field is built; the event passes on as it came.
        let field = json::parse_at(value_bytes(event)?, &self.predicate.field).map_err(not_json)?;
        if self.predicate.test.matches_field(field.as_ref()) {
            out.emit(event.clone());
        }
        Ok(())
    }
}

/// `type = "map"`: reshapes the JSON value ([`MapConfig::apply`]).
#[derive(Clone, Debug)]
pub struct Map {
    config: MapConfig,
}

impl Map {
    /// A map with this configuration.
    pub fn new(config: MapConfig) -> Map {
        Map { config }
    }
}

impl Operator for Map {
    fn process(&mut self, event: &Event, out: &mut Emitter) -> Result<(), OperatorError> {
        let value = json::parse(value_bytes(event)?).map_err(not_json)?;
        let mapped = self.config.apply(value).map_err(OperatorError::permanent)?;
        out.emit(event.with_value(to_json_bytes(&mapped)?));
        Ok(())
    }
}

/// `type = "extract"`: the value becomes the JSON value at `field`.
#[derive(Clone, Debug)]
pub struct Extract {
    field: FieldPath,
}

impl Extract {
    /// Extracts `field`.
    pub fn new(field: FieldPath) -> Extract {
        Extract { field }
    }
}

impl Operator for Extract {
    fn process(&mut self, event: &Event, out: &mut Emitter) -> Result<(), OperatorError> {
        let value = required_field(event, &self.field)?;
        out.emit(event.with_value(to_json_bytes(&value)?));
        Ok(())
    }
}

/// `type = "flat_map"`: one event per element of the array at `field`,
/// each with the element's JSON as its value (an empty array emits none).
#[derive(Clone, Debug)]
pub struct FlatMap {
    field: FieldPath,
}

impl FlatMap {
    /// Splits the array at `field`.
    pub fn new(field: FieldPath) -> FlatMap {
        FlatMap { field }
    }
}

impl Operator for FlatMap {
    fn process(&mut self, event: &Event, out: &mut Emitter) -> Result<(), OperatorError> {
        match required_field(event, &self.field)? {
            Value::Array(elements) => {
                for element in &elements {
                    out.emit(event.with_value(to_json_bytes(element)?));
                }
                Ok(())
            }
            other => Err(OperatorError::permanent(format!(
                "field `{}` is {}, not an array",
                self.field,
                json::type_name(&other)
            ))),
        }
    }
}

/// `type = "key_by"`: the key becomes the text of `field` ([`json::key_text`]).
#[derive(Clone, Debug)]
pub struct KeyBy {
    field: FieldPath,
}

impl KeyBy {
    /// Keys by `field`.
    pub fn new(field: FieldPath) -> KeyBy {
        KeyBy { field }
    }
}

impl Operator for KeyBy {
    fn process(&mut self, event: &Event, out: &mut Emitter) -> Result<(), OperatorError> {
        let value = required_field(event, &self.field)?;
        let text = match value {
            // Moved, not copied.
            Value::String(text) => text,
            other => json::key_text(&other).ok_or_else(|| {
                OperatorError::permanent(format!(
                    "field `{}` is {}; a key must be a string, number or boolean",
                    self.field,
                    json::type_name(&other)
                ))
            })?,
        };
        out.emit(Event {
            key: Some(Bytes::from(text)),
            ..event.clone()
        });
        Ok(())
    }
}

/// `type = "event_time"`: the event time becomes `field`, epoch
/// milliseconds or an RFC 3339 string ([`json::timestamp_ms`]).
#[derive(Clone, Debug)]
pub struct EventTime {
    field: FieldPath,
}

impl EventTime {
    /// Takes the event time from `field`.
    pub fn new(field: FieldPath) -> EventTime {
        EventTime { field }
    }
}

impl Operator for EventTime {
    fn process(&mut self, event: &Event, out: &mut Emitter) -> Result<(), OperatorError> {
        let value = required_field(event, &self.field)?;
        let timestamp_ms = json::timestamp_ms(&value).map_err(|error| {
            OperatorError::permanent(format!("field `{}`: {error}", self.field))
        })?;
        out.emit(Event {
            timestamp_ms,
            ..event.clone()
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::config::{AggregateConfig, AggregateFunction, Test};
    use crate::pipeline::Origin;
    use crate::types::{Header, Offset, PartitionId};
    use serde_json::json;
    use std::sync::Arc;

    fn path(text: &str) -> FieldPath {
        FieldPath::parse(text).expect("path")
    }

    fn event(value: &[u8]) -> Event {
        Event {
            key: Some(Bytes::from_static(b"k")),
            value: Some(Bytes::copy_from_slice(value)),
            headers: vec![Header {
                key: "h".to_owned(),
                value: Bytes::from_static(b"v"),
            }],
            timestamp_ms: 1_000,
            origin: Origin {
                topic: Arc::from("spans"),
                partition: PartitionId(3),
                offset: Offset(41),
            },
            position: Offset(42),
        }
    }

    fn run(operator: &mut dyn Operator, input: &Event) -> Result<Vec<Event>, OperatorError> {
        let mut out = Emitter::new();
        operator.process(input, &mut out)?;
        assert!(out.take_late().is_empty());
        Ok(out.take())
    }

    fn value_json(event: &Event) -> Value {
        serde_json::from_slice(event.value.as_deref().expect("value")).expect("JSON")
    }

    /// Everything but the value is as it came.
    fn assert_kept_but_value(output: &Event, input: &Event) {
        assert_eq!(output.key, input.key);
        assert_eq!(output.headers, input.headers);
        assert_eq!(output.timestamp_ms, input.timestamp_ms);
        assert_eq!(output.origin, input.origin);
        assert_eq!(output.position, input.position);
    }

    fn assert_permanent(result: Result<Vec<Event>, OperatorError>, piece: &str) {
        let error = result.expect_err("an error");
        assert!(!error.retryable, "{error:?}");
        assert!(
            error.message.contains(piece),
            "{:?} should contain {piece:?}",
            error.message
        );
    }

    fn not_json_inputs() -> Vec<Event> {
        let mut tombstone = event(b"{}");
        tombstone.value = None;
        vec![
            event(b"not json"),
            event(b"{\"a\": 1"),
            event(b"{\"a\": \"\xff\xfe\"}"),
            event(b""),
            tombstone,
        ]
    }

    fn all_stateless() -> Vec<Box<dyn Operator>> {
        [
            OperatorConfig::Filter(Predicate {
                field: path("a"),
                test: Test::Exists(true),
            }),
            OperatorConfig::Map(MapConfig {
                drop: vec![path("a")],
                ..MapConfig::default()
            }),
            OperatorConfig::Extract { field: path("a") },
            OperatorConfig::FlatMap { field: path("a") },
            OperatorConfig::KeyBy { field: path("a") },
            OperatorConfig::EventTime { field: path("a") },
        ]
        .iter()
        .map(|config| build_stateless(config).expect("stateless"))
        .collect()
    }

    #[test]
    fn build_stateless_skips_stateful_and_custom() {
        assert_eq!(all_stateless().len(), 6);
        for config in [
            OperatorConfig::Aggregate(AggregateConfig {
                function: AggregateFunction::Count,
                field: None,
            }),
            OperatorConfig::Custom {
                name: "x".to_owned(),
                params: json!({}),
            },
        ] {
            assert!(build_stateless(&config).is_none());
        }
        assert!(all_stateless()
            .iter()
            .all(|operator| !operator.is_stateful()));
    }

    #[test]
    fn every_operator_rejects_values_that_are_not_json() {
        for mut operator in all_stateless() {
            for input in not_json_inputs() {
                assert_permanent(run(operator.as_mut(), &input), "value is not JSON: ");
            }
        }
        let mut filter = Filter::new(Predicate {
            field: path("a"),
            test: Test::Exists(true),
        });
        let error = run(&mut filter, &event(b"{\"a\": \"\xff\"}")).unwrap_err();
        assert!(error.message.contains("invalid UTF-8"), "{}", error.message);
        let mut tombstone = event(b"");
        tombstone.value = None;
        let error = run(&mut filter, &tombstone).unwrap_err();
        assert!(error.message.contains("tombstone"), "{}", error.message);
    }

    #[test]
    fn filter_passes_matching_events_unchanged() {
        let mut filter = Filter::new(Predicate {
            field: path("span.status"),
            test: Test::GreaterThan(499.0),
        });
        let error_span = event(br#"{"span": {"status": 503, "name": "get"}}"#);
        assert_eq!(run(&mut filter, &error_span), Ok(vec![error_span.clone()]));
        let ok_span = event(br#"{"span": {"status": 200}}"#);
        assert_eq!(run(&mut filter, &ok_span), Ok(vec![]));
        let no_status = event(br#"{"span": {}}"#);
        assert_eq!(run(&mut filter, &no_status), Ok(vec![]));
        let mut equals = Filter::new(Predicate {
            field: path("n"),
            test: Test::Equals(json!(5)),
        });
        let float = event(br#"{"n": 5.0}"#);
        assert_eq!(run(&mut equals, &float), Ok(vec![float.clone()]));
    }

    #[test]
    fn map_rewrites_the_value_only() {
        let mut map = Map::new(MapConfig {
            project: Some(vec![path("a"), path("b.c")]),
            drop: vec![],
            rename: vec![(path("a"), path("x"))],
            set: vec![(path("v"), json!(2))],
        });
        let input = event(br#"{"a": 1, "b": {"c": 2, "d": 3}, "z": 0}"#);
        let output = run(&mut map, &input).expect("mapped");
        assert_eq!(output.len(), 1);
        assert_eq!(
            value_json(&output[0]),
            json!({"x": 1, "b": {"c": 2}, "v": 2})
        );
        assert_kept_but_value(&output[0], &input);
    }

    #[test]
    fn map_failure_is_permanent() {
        let mut map = Map::new(MapConfig {
            set: vec![(path("a.b"), json!(1))],
            ..MapConfig::default()
        });
        assert_permanent(run(&mut map, &event(br#"{"a": "s"}"#)), "cannot set `a.b`");
    }

    #[test]
    fn extract_replaces_the_value() {
        let mut extract = Extract::new(path("payload"));
        let input = event(br#"{"payload": {"id": 7, "tags": ["x"]}, "meta": 1}"#);
        let output = run(&mut extract, &input).expect("extracted");
        assert_eq!(output.len(), 1);
        assert_eq!(value_json(&output[0]), json!({"id": 7, "tags": ["x"]}));
        assert_kept_but_value(&output[0], &input);
        let scalar = run(&mut Extract::new(path("payload.id")), &input).expect("extracted");
        assert_eq!(scalar[0].value.as_deref(), Some(&b"7"[..]));
        assert_permanent(
            run(&mut extract, &event(br#"{"meta": 1}"#)),
            "field `payload` is missing",
        );
    }

    #[test]
    fn flat_map_emits_one_event_per_element() {
        let mut flat_map = FlatMap::new(path("spans"));
        let input = event(br#"{"spans": [{"id": 1}, 2, "three", null], "other": true}"#);
        let output = run(&mut flat_map, &input).expect("split");
        let values: Vec<Value> = output.iter().map(value_json).collect();
        assert_eq!(
            values,
            vec![json!({"id": 1}), json!(2), json!("three"), Value::Null]
        );
        for out in &output {
            assert_kept_but_value(out, &input);
        }
        assert_eq!(run(&mut flat_map, &event(br#"{"spans": []}"#)), Ok(vec![]));
        assert_permanent(
            run(&mut flat_map, &event(br#"{}"#)),
            "field `spans` is missing",
        );
        assert_permanent(
            run(&mut flat_map, &event(br#"{"spans": {"a": 1}}"#)),
            "field `spans` is an object, not an array",
        );
    }

    #[test]
    fn key_by_sets_the_key_text() {
        let mut key_by = KeyBy::new(path("user.id"));
        for (value, key) in [
            (&br#"{"user": {"id": "u-1"}}"#[..], &b"u-1"[..]),
            (br#"{"user": {"id": 42}}"#, b"42"),
            (br#"{"user": {"id": 4.5}}"#, b"4.5"),
            (br#"{"user": {"id": false}}"#, b"false"),
        ] {
            let input = event(value);
            let output = run(&mut key_by, &input).expect("keyed");
            assert_eq!(output.len(), 1);
            assert_eq!(output[0].key.as_deref(), Some(key));
            assert_eq!(output[0].value, input.value);
            assert_eq!(output[0].headers, input.headers);
            assert_eq!(output[0].timestamp_ms, input.timestamp_ms);
            assert_eq!(output[0].origin, input.origin);
            assert_eq!(output[0].position, input.position);
        }
        assert_permanent(
            run(&mut key_by, &event(br#"{"user": {}}"#)),
            "field `user.id` is missing",
        );
        assert_permanent(
            run(&mut key_by, &event(br#"{"user": {"id": [1]}}"#)),
            "field `user.id` is an array; a key must be a string, number or boolean",
        );
        assert_permanent(
            run(&mut key_by, &event(br#"{"user": {"id": null}}"#)),
            "field `user.id` is null",
        );
    }

    #[test]
    fn event_time_sets_the_timestamp() {
        let mut event_time = EventTime::new(path("ts"));
        for (value, expected) in [
            (&br#"{"ts": 1700000000123}"#[..], 1_700_000_000_123),
            (br#"{"ts": "2024-05-01T12:00:00.250Z"}"#, 1_714_564_800_250),
            (br#"{"ts": "2024-05-01T14:00:00+02:00"}"#, 1_714_564_800_000),
        ] {
            let input = event(value);
            let output = run(&mut event_time, &input).expect("timed");
            assert_eq!(output.len(), 1);
            assert_eq!(output[0].timestamp_ms, expected);
            assert_eq!(output[0].value, input.value);
            assert_eq!(output[0].key, input.key);
            assert_eq!(output[0].origin, input.origin);
        }
        assert_permanent(
            run(&mut event_time, &event(br#"{}"#)),
            "field `ts` is missing",
        );
        assert_permanent(
            run(&mut event_time, &event(br#"{"ts": "last tuesday"}"#)),
            "field `ts`: \"last tuesday\" is not a timestamp",
        );
        assert_permanent(
            run(&mut event_time, &event(br#"{"ts": 1.5}"#)),
            "is not a timestamp",
        );
        assert_permanent(
            run(&mut event_time, &event(br#"{"ts": {}}"#)),
            "is not a timestamp",
        );
    }
}
