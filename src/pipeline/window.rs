//! Event-time windows and keyed aggregates: [`WindowOperator`]
//! (`type = "window"`), [`AggregateOperator`] (`type = "aggregate"`) and
//! [`ReduceOperator`] (`type = "reduce"`).
//!
//! One operator instance serves one source partition (see
//! [`Operator`]): its state, its watermark and its outputs are that
//! partition's alone.
//!
//! # Event time and keys
//!
//! An event's time is the JSON number at `time_field` in its value (epoch
//! milliseconds; an integer, or a float rounded down), or else
//! [`Event::timestamp_ms`]. A missing or non-numeric field, a value that is
//! not JSON, or a tombstone is a permanent [`OperatorError`] naming the
//! field. Times must lie within ±[`EVENT_TIME_LIMIT_MS`] (2^53 ms, about
//! 285,000 years around 1970) so that no window arithmetic can overflow.
//!
//! Groups are the event's key bytes; events without a key form one group of
//! their own. In result JSON the key is its bytes as UTF-8 (invalid
//! sequences replaced by U+FFFD; the result event's key has the exact
//! bytes), or `null` for the keyless group.
//!
//! Numeric aggregates read the JSON number at `field`; with no `field`
//! configured the whole value must be a JSON number.
//!
//! Fields are read by a streaming pass over the value that visits only the
//! configured paths and skips everything else without building a
//! `serde_json::Value` or allocating (several times faster than parsing the
//! value into a tree). Paths mean what [`FieldPath::get`] means; for a
//! key repeated in one object, an earlier number at the path is overwritten
//! by a later one.
//!
//! # Windows, watermark, lateness
//!
//! - Tumbling (`size`): `[s, s + size)` with `s = floor(t / size) * size`,
//!   aligned to the Unix epoch (also for negative times).
//! - Hopping (`size`, `hop`): every `[s, s + size)` with `s` a multiple of
//!   `hop` that contains `t`, so an event counts in (and costs) about
//!   `size / hop` windows. If `hop > size` the gaps between windows contain
//!   no window; an event there is reported through [`Emitter::late`] (it
//!   cannot be counted anywhere) rather than dropped.
//! - Session (`gap`): per key, events closer than `gap` (strictly) share a
//!   session `[first, last + gap)`; an event between two sessions that is
//!   closer than `gap` to both merges them.
//!
//! The watermark is the largest event time this instance has seen minus
//! `allowed_lateness` (none before the first event; it survives restarts
//! through the checkpoint). A window `[start, end)` fires, in
//! [`Operator::process`] of the event that moved the watermark, as soon as
//! `watermark >= end`: its result is emitted and its state dropped. Windows
//! that fire together are emitted in `(end, start, key)` order; open windows
//! are kept in a `BTreeSet` ordered that way, so firing costs O(log n) per
//! fired window, with no scan of the open ones.
//!
//! An event is *late* when it cannot count in any open window: for tumbling
//! and hopping windows when every window containing it ends at or before the
//! watermark (a hopping event whose earliest windows have fired still counts
//! in the later ones); for sessions when `t + gap <= watermark`. A late event
//! goes to [`Emitter::late`] with a reason naming its time, the watermark
//! and its window; it is never counted and never dropped silently. (Note for
//! sessions: this rule means an event within `gap` of a session that has
//! already fired, but with `t + gap > watermark`, opens a new session; fired
//! results are final.)
//!
//! # Results
//!
//! A fired window emits an event whose key is the group's key, whose value
//! is the compact JSON object
//!
//! ```text
//! {"key":"k1","window_start":60000,"window_end":120000,"count":3,"sum":12.5}
//! ```
//!
//! with `count` always and then the function's fields: `sum`, `min`, `max`,
//! `mean`, or one `pN` per percentile (`N` formatted without a trailing `.0`:
//! 50 → `p50`, 99.9 → `p99.9`). Its timestamp is `window_end - 1`; its
//! origin and position are those of the event that made the watermark pass;
//! it has no headers. Numbers that are whole (and below 2^53) are written as
//! integers; a non-finite number (a sum that overflowed) as `null`.
//!
//! Percentiles are exact, nearest-rank (the smallest value such that at
//! least p% of the values are at or below it), so a window computing them
//! keeps every value: one `f64` (8 bytes) per event in the window, in memory
//! and in the checkpoint. Count, sum, min, max and mean keep a fixed size
//! per open window: 64 bytes for the window plus a 32-byte firing-index
//! entry (and B-tree overhead), and at most 26 bytes in a checkpoint.
//!
//! [`AggregateOperator`] and [`ReduceOperator`] are described on their
//! types.
//!
//! # State encoding
//!
//! Each operator writes [`StateDelta`]s in a hand-written little-endian
//! format, all entries of one operator and partition in one namespace. The
//! first key byte says what an entry is. `GROUP` below is the group key: one
//! byte `0x00` for the keyless group, or `0x01` followed by the key bytes (to
//! the end of the entry key). Every value starts with a version byte, `0x01`.
//! `f64` values are IEEE 754 bits, little-endian.
//!
//! | entry | key | value |
//! |---|---|---|
//! | window meta | `0x00` | version, largest event time seen: `i64` LE (9 bytes) |
//! | window | `0x01`, window start: `i64` big-endian with the sign bit flipped (sorts by time), `GROUP` | version, function tag `u8`, window end: `i64` LE, `AGG` |
//! | aggregate | `0x02`, `GROUP` | version, function tag `u8`, `AGG` |
//! | reduce | `0x03`, `GROUP` | version, reduce tag `u8`, payload |
//!
//! `AGG` is the event count (`u64` LE) and then, by function tag: count
//! (`0`): nothing; sum (`1`), min (`2`), max (`3`): the value as `f64`; mean
//! (`4`): the sum as `f64`; percentiles (`5`): the window's `count` values,
//! `f64` each (so the value's length is exactly `18 + 8 * count` bytes in a
//! window entry).
//!
//! Reduce payloads, by reduce tag: sum (`1`), min (`2`), max (`3`): the
//! current result as `f64`; latest (`4`): the latest value's bytes, as is;
//! merge (`5`): the merged object as JSON text.
//!
//! A window operator writes, at each checkpoint, the meta entry if the
//! largest event time changed, a put for every window created or changed
//! since the last checkpoint, and a removal for every previously written
//! window that fired or was merged away. [`Operator::restore`] rebuilds
//! exactly that state and rejects anything malformed (wrong length, unknown
//! tag or version, a window that does not fit the configured shape or
//! function, overlapping sessions) with a permanent error naming the entry
//! and the problem; it never panics on bad input.

use super::config::{
    AggregateConfig, AggregateFunction, ReduceConfig, ReduceFunction, WindowConfig, WindowKind,
};
use super::json::FieldPath;
use super::{Emitter, Event, Operator, OperatorError, StateDelta};
use bytes::Bytes;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::cell::Cell;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt::{self, Write as _};
use std::sync::Arc;
use std::time::Duration;

/// Largest magnitude of an event time the window operator accepts, in
/// milliseconds (2^53: exact in a JSON double, and far enough from `i64`'s
/// limits that window arithmetic cannot overflow). Window sizes, hops, gaps
/// and the allowed lateness are capped at it too.
pub const EVENT_TIME_LIMIT_MS: i64 = 1 << 53;

/// Stored window boundaries may lie a little beyond the event-time limit
/// (a window starts before its first event); anything beyond this is corrupt.
const STATE_TIME_LIMIT_MS: i64 = EVENT_TIME_LIMIT_MS * 4;

const STATE_VERSION: u8 = 1;
const TAG_META: u8 = 0x00;
const TAG_WINDOW: u8 = 0x01;
const TAG_AGGREGATE: u8 = 0x02;
const TAG_REDUCE: u8 = 0x03;
const GROUP_NONE: u8 = 0x00;
const GROUP_SOME: u8 = 0x01;

/// Below this many pending checkpoint entries, never compact them.
const PENDING_MIN_LIMIT: usize = 4096;

// ---------------------------------------------------------------------------
// Field extraction: one streaming pass, only the configured paths.
// ---------------------------------------------------------------------------

/// What was found at one path.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Found {
    Missing,
    Int(i64),
    UInt(u64),
    Float(f64),
    /// Something that is not a number: "a string", "an object", ...
    Other(&'static str),
}

/// One path to extract; no segments means the whole value.
#[derive(Clone, Debug)]
struct Target {
    segments: Vec<String>,
    /// Each segment as an array index, as [`FieldPath::get`] parses it.
    indices: Vec<Option<usize>>,
}

/// Extracts the numbers at up to 64 paths from a JSON document in one pass,
/// without allocating: objects and arrays off every path are skipped by
/// serde_json's validating skip.
#[derive(Clone, Debug, Default)]
struct Extractor {
    targets: Vec<Target>,
}

impl Extractor {
    /// Adds a path (`None`: the whole value) and returns its slot.
    fn add(&mut self, path: Option<&FieldPath>) -> usize {
        let segments: Vec<String> = path.map(|p| p.segments().to_vec()).unwrap_or_default();
        let indices = segments.iter().map(|s| s.parse::<usize>().ok()).collect();
        self.targets.push(Target { segments, indices });
        self.targets.len() - 1
    }

    /// Fills `found[i]` for every target `i` (`found` must have a slot per
    /// target). Fails if `bytes` is not one complete JSON document.
    fn extract(&self, bytes: &[u8], found: &[Cell<Found>]) -> Result<(), serde_json::Error> {
        for slot in found {
            slot.set(Found::Missing);
        }
        let count = self.targets.len().min(64).min(found.len());
        let mask = if count == 64 {
            u64::MAX
        } else {
            (1u64 << count) - 1
        };
        let mut deserializer = serde_json::Deserializer::from_slice(bytes);
        Node {
            targets: &self.targets,
            found,
            mask,
            depth: 0,
        }
        .deserialize(&mut deserializer)?;
        deserializer.end()
    }
}

/// Calls `f` with the index of every set bit.
fn for_bits(mut bits: u64, mut f: impl FnMut(usize)) {
    while bits != 0 {
        f(bits.trailing_zeros() as usize);
        bits &= bits - 1;
    }
}

/// A position in the document: the targets whose first `depth` segments
/// led here.
#[derive(Clone, Copy)]
struct Node<'a> {
    targets: &'a [Target],
    found: &'a [Cell<Found>],
    mask: u64,
    depth: usize,
}

impl Node<'_> {
    /// Targets whose path ends at this node.
    fn ending(&self) -> u64 {
        let mut bits = 0;
        for_bits(self.mask, |i| {
            if self
                .targets
                .get(i)
                .is_some_and(|t| t.segments.len() == self.depth)
            {
                bits |= 1 << i;
            }
        });
        bits
    }

    fn set(&self, value: Found) {
        for_bits(self.ending(), |i| {
            if let Some(slot) = self.found.get(i) {
                slot.set(value);
            }
        });
    }

    fn child(&self, mask: u64) -> Node<'_> {
        Node {
            mask,
            depth: self.depth + 1,
            ..*self
        }
    }
}

impl<'de> DeserializeSeed<'de> for Node<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_i64<E>(self, value: i64) -> Result<(), E> {
        self.set(Found::Int(value));
        Ok(())
    }

    fn visit_u64<E>(self, value: u64) -> Result<(), E> {
        self.set(Found::UInt(value));
        Ok(())
    }

    fn visit_f64<E>(self, value: f64) -> Result<(), E> {
        self.set(Found::Float(value));
        Ok(())
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        self.set(Found::Other("a boolean"));
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        self.set(Found::Other("a string"));
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        self.set(Found::Other("null"));
        Ok(())
    }

    fn visit_none<E>(self) -> Result<(), E> {
        self.set(Found::Other("null"));
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.set(Found::Other("an object"));
        let continuing = self.mask & !self.ending();
        if continuing == 0 {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            return Ok(());
        }
        let keys = KeyMatch {
            targets: self.targets,
            mask: continuing,
            depth: self.depth,
        };
        while let Some(matched) = map.next_key_seed(keys)? {
            if matched == 0 {
                map.next_value::<IgnoredAny>()?;
            } else {
                map.next_value_seed(self.child(matched))?;
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.set(Found::Other("an array"));
        let continuing = self.mask & !self.ending();
        let mut index = 0usize;
        loop {
            let mut matched = 0u64;
            for_bits(continuing, |i| {
                let hit = self
                    .targets
                    .get(i)
                    .and_then(|t| t.indices.get(self.depth))
                    .is_some_and(|segment| *segment == Some(index));
                if hit {
                    matched |= 1 << i;
                }
            });
            let more = if matched == 0 {
                seq.next_element::<IgnoredAny>()?.is_some()
            } else {
                seq.next_element_seed(self.child(matched))?.is_some()
            };
            if !more {
                return Ok(());
            }
            index = index.saturating_add(1);
        }
    }
}

/// An object key: which of the continuing targets it leads on to.
#[derive(Clone, Copy)]
struct KeyMatch<'a> {
    targets: &'a [Target],
    mask: u64,
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for KeyMatch<'_> {
    type Value = u64;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<u64, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyMatch<'_> {
    type Value = u64;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("an object key")
    }

    fn visit_str<E>(self, key: &str) -> Result<u64, E> {
        let mut matched = 0u64;
        for_bits(self.mask, |i| {
            if self
                .targets
                .get(i)
                .and_then(|t| t.segments.get(self.depth))
                .is_some_and(|segment| segment == key)
            {
                matched |= 1 << i;
            }
        });
        Ok(matched)
    }
}

/// Reads an event's time and/or number, as configured.
#[derive(Clone, Debug, Default)]
struct ValueReader {
    extractor: Extractor,
    /// Slot and description of the time field.
    time: Option<(usize, String)>,
    /// Slot and description of the aggregated number.
    number: Option<(usize, String)>,
}

impl ValueReader {
    fn new(time_field: Option<&FieldPath>, number: Option<Option<&FieldPath>>) -> ValueReader {
        let mut reader = ValueReader::default();
        if let Some(path) = time_field {
            let slot = reader.extractor.add(Some(path));
            reader.time = Some((slot, format!("time_field `{path}`")));
        }
        if let Some(path) = number {
            let slot = reader.extractor.add(path);
            let name = match path {
                Some(path) => format!("field `{path}`"),
                None => "the value (no `field` configured)".to_owned(),
            };
            reader.number = Some((slot, name));
        }
        reader
    }

    fn needs(&self) -> String {
        let names: Vec<&str> = [&self.time, &self.number]
            .into_iter()
            .flatten()
            .map(|(_, name)| name.as_str())
            .collect();
        names.join(" and ")
    }

    /// The event time (if a time field is configured) and the number (0 if
    /// none is).
    fn read(&self, event: &Event) -> Result<(Option<i64>, f64), OperatorError> {
        if self.extractor.targets.is_empty() {
            return Ok((None, 0.0));
        }
        let Some(value) = event.value.as_deref() else {
            return Err(OperatorError::permanent(format!(
                "the event has no value (a tombstone), so {} cannot be read",
                self.needs()
            )));
        };
        let found = [Cell::new(Found::Missing), Cell::new(Found::Missing)];
        self.extractor.extract(value, &found).map_err(|error| {
            OperatorError::permanent(format!(
                "the value is not valid JSON ({error}), so {} cannot be read",
                self.needs()
            ))
        })?;
        let slot = |index: usize| found.get(index).map_or(Found::Missing, Cell::get);
        let time = match &self.time {
            Some((index, name)) => Some(time_of(slot(*index), name)?),
            None => None,
        };
        let number = match &self.number {
            Some((index, name)) => number_of(slot(*index), name)?,
            None => 0.0,
        };
        Ok((time, number))
    }
}

fn time_of(found: Found, name: &str) -> Result<i64, OperatorError> {
    let out_of_range = || {
        OperatorError::permanent(format!(
            "{name} is outside the supported event-time range (±{EVENT_TIME_LIMIT_MS} ms)"
        ))
    };
    match found {
        Found::Int(value) => Ok(value),
        Found::UInt(value) => i64::try_from(value).map_err(|_| out_of_range()),
        // `as` saturates; the caller's range check rejects the extremes.
        Found::Float(value) if value.is_finite() => Ok(value.floor() as i64),
        Found::Float(_) => Err(out_of_range()),
        Found::Missing => Err(OperatorError::permanent(format!(
            "{name} is missing from the value"
        ))),
        Found::Other(kind) => Err(OperatorError::permanent(format!(
            "{name} must be a number of epoch milliseconds, found {kind}"
        ))),
    }
}

fn number_of(found: Found, name: &str) -> Result<f64, OperatorError> {
    match found {
        Found::Int(value) => Ok(value as f64),
        Found::UInt(value) => Ok(value as f64),
        Found::Float(value) => Ok(value),
        Found::Missing => Err(OperatorError::permanent(format!(
            "{name} is missing from the value"
        ))),
        Found::Other(kind) => Err(OperatorError::permanent(format!(
            "{name} must be a number, found {kind}"
        ))),
    }
}

// ---------------------------------------------------------------------------
// Accumulators.
// ---------------------------------------------------------------------------

/// An aggregate function and its output field names.
#[derive(Clone, Debug)]
struct Spec {
    func: AggregateFunction,
    /// `pN` for each percentile.
    names: Vec<String>,
}

impl Spec {
    fn new(func: &AggregateFunction) -> Spec {
        let names = match func {
            AggregateFunction::Percentiles(ps) => ps.iter().map(|p| format!("p{p}")).collect(),
            _ => Vec::new(),
        };
        Spec {
            func: func.clone(),
            names,
        }
    }

    fn tag(&self) -> u8 {
        aggregate_tag(&self.func)
    }

    fn needs_field(&self) -> bool {
        !matches!(self.func, AggregateFunction::Count)
    }
}

fn aggregate_tag(func: &AggregateFunction) -> u8 {
    match func {
        AggregateFunction::Count => 0,
        AggregateFunction::Sum => 1,
        AggregateFunction::Min => 2,
        AggregateFunction::Max => 3,
        AggregateFunction::Mean => 4,
        AggregateFunction::Percentiles(_) => 5,
    }
}

fn aggregate_tag_name(tag: u8) -> &'static str {
    match tag {
        0 => "count",
        1 => "sum",
        2 => "min",
        3 => "max",
        4 => "mean",
        5 => "percentiles",
        _ => "unknown",
    }
}

/// One group's (or window's) running aggregate.
#[derive(Clone, Debug, Default, PartialEq)]
struct Acc {
    count: u64,
    /// Sum (sum, mean), minimum or maximum; unused for count and percentiles.
    value: f64,
    /// Every value, for percentiles only.
    values: Vec<f64>,
}

impl Acc {
    fn add(&mut self, func: &AggregateFunction, x: f64, keep_sorted: bool) {
        match func {
            AggregateFunction::Count => {}
            AggregateFunction::Sum | AggregateFunction::Mean => self.value += x,
            AggregateFunction::Min => {
                if self.count == 0 || x < self.value {
                    self.value = x;
                }
            }
            AggregateFunction::Max => {
                if self.count == 0 || x > self.value {
                    self.value = x;
                }
            }
            AggregateFunction::Percentiles(_) => {
                if keep_sorted {
                    let at = self.values.partition_point(|v| v.total_cmp(&x).is_le());
                    self.values.insert(at, x);
                } else {
                    self.values.push(x);
                }
            }
        }
        self.count = self.count.saturating_add(1);
    }

    fn merge(&mut self, func: &AggregateFunction, other: Acc) {
        match func {
            AggregateFunction::Count => {}
            AggregateFunction::Sum | AggregateFunction::Mean => self.value += other.value,
            AggregateFunction::Min => {
                if other.count > 0 && (self.count == 0 || other.value < self.value) {
                    self.value = other.value;
                }
            }
            AggregateFunction::Max => {
                if other.count > 0 && (self.count == 0 || other.value > self.value) {
                    self.value = other.value;
                }
            }
            AggregateFunction::Percentiles(_) => self.values.extend(other.values),
        }
        self.count = self.count.saturating_add(other.count);
    }

    /// Appends `,"count":N` and the function's fields. Percentiles need
    /// `values` sorted.
    fn write_json(&self, spec: &Spec, out: &mut String) {
        let _ = write!(out, ",\"count\":{}", self.count);
        let named = |out: &mut String, name: &str, value: f64| {
            out.push_str(",\"");
            out.push_str(name);
            out.push_str("\":");
            json_f64(out, value);
        };
        match &spec.func {
            AggregateFunction::Count => {}
            AggregateFunction::Sum => named(out, "sum", self.value),
            AggregateFunction::Min => named(out, "min", self.value),
            AggregateFunction::Max => named(out, "max", self.value),
            AggregateFunction::Mean => named(out, "mean", self.value / self.count as f64),
            AggregateFunction::Percentiles(ps) => {
                for (p, name) in ps.iter().zip(&spec.names) {
                    named(
                        out,
                        name,
                        nearest_rank(&self.values, *p).unwrap_or(f64::NAN),
                    );
                }
            }
        }
    }

    /// `AGG`: count, then the payload.
    fn encode(&self, func: &AggregateFunction, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.count.to_le_bytes());
        match func {
            AggregateFunction::Count => {}
            AggregateFunction::Sum
            | AggregateFunction::Min
            | AggregateFunction::Max
            | AggregateFunction::Mean => out.extend_from_slice(&self.value.to_le_bytes()),
            AggregateFunction::Percentiles(_) => {
                for value in &self.values {
                    out.extend_from_slice(&value.to_le_bytes());
                }
            }
        }
    }

    /// Reads `AGG` to the end of the value.
    fn decode(func: &AggregateFunction, reader: &mut ByteReader<'_>) -> Result<Acc, String> {
        let count = reader.u64("the count")?;
        if count == 0 {
            return Err("the count is 0 (an aggregate exists only after an event)".to_owned());
        }
        let mut acc = Acc {
            count,
            ..Acc::default()
        };
        match func {
            AggregateFunction::Count => {}
            AggregateFunction::Sum
            | AggregateFunction::Min
            | AggregateFunction::Max
            | AggregateFunction::Mean => acc.value = reader.f64("the value")?,
            AggregateFunction::Percentiles(_) => {
                let expected = usize::try_from(count)
                    .ok()
                    .and_then(|count| count.checked_mul(8));
                if expected != Some(reader.remaining()) {
                    return Err(format!(
                        "the count is {count} but {} bytes of values follow (8 per value)",
                        reader.remaining()
                    ));
                }
                acc.values = reader
                    .rest()
                    .chunks_exact(8)
                    .map(|chunk| {
                        let mut bytes = [0u8; 8];
                        bytes.copy_from_slice(chunk);
                        f64::from_le_bytes(bytes)
                    })
                    .collect();
            }
        }
        reader.finish()?;
        Ok(acc)
    }
}

/// Nearest-rank percentile of sorted values: the value at rank
/// `ceil(p / 100 * n)` (at least 1), `None` if there are none.
fn nearest_rank(sorted: &[f64], p: f64) -> Option<f64> {
    let n = sorted.len();
    if n == 0 {
        return None;
    }
    let p = if p.is_nan() { 0.0 } else { p.clamp(0.0, 100.0) };
    // The tiny relative slack keeps 99.9% of 1000 at rank 999 despite
    // binary rounding of 99.9.
    let exact = p * n as f64 / 100.0;
    let rank = (exact * (1.0 - 1e-12)).ceil();
    let rank = if rank < 1.0 {
        1
    } else if rank >= n as f64 {
        n
    } else {
        rank as usize
    };
    sorted.get(rank - 1).copied()
}

// ---------------------------------------------------------------------------
// JSON output.
// ---------------------------------------------------------------------------

fn json_f64(out: &mut String, value: f64) {
    if !value.is_finite() {
        out.push_str("null");
    } else if value.fract() == 0.0 && value.abs() < 9_007_199_254_740_992.0 {
        let _ = write!(out, "{}", value as i64);
    } else {
        // Rust's shortest round-trip form; exponents as in `1e-7`, valid JSON.
        let _ = write!(out, "{value:?}");
    }
}

fn json_str(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `{"key":<key>` (the object is left open).
fn open_result(key: Option<&[u8]>, capacity: usize) -> String {
    let mut out = String::with_capacity(capacity);
    out.push_str("{\"key\":");
    match key {
        None => out.push_str("null"),
        Some(bytes) => json_str(&mut out, &String::from_utf8_lossy(bytes)),
    }
    out
}

// ---------------------------------------------------------------------------
// State encoding helpers.
// ---------------------------------------------------------------------------

/// Reads a state entry, with errors that say what was wrong.
struct ByteReader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> ByteReader<'a> {
    fn new(bytes: &'a [u8]) -> ByteReader<'a> {
        ByteReader { bytes, at: 0 }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let left = self.remaining();
        if n > left {
            return Err(format!(
                "truncated: {what} needs {n} bytes at offset {}, {left} left",
                self.at
            ));
        }
        let out = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(out)
    }

    fn u8(&mut self, what: &str) -> Result<u8, String> {
        Ok(self.take(1, what)?[0])
    }

    fn array8(&mut self, what: &str) -> Result<[u8; 8], String> {
        let mut out = [0u8; 8];
        out.copy_from_slice(self.take(8, what)?);
        Ok(out)
    }

    fn i64(&mut self, what: &str) -> Result<i64, String> {
        Ok(i64::from_le_bytes(self.array8(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array8(what)?))
    }

    fn f64(&mut self, what: &str) -> Result<f64, String> {
        Ok(f64::from_le_bytes(self.array8(what)?))
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }

    fn rest(&mut self) -> &'a [u8] {
        let out = &self.bytes[self.at..];
        self.at = self.bytes.len();
        out
    }

    fn finish(&self) -> Result<(), String> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(format!("{extra} unexpected bytes at the end")),
        }
    }

    /// The version byte that starts every value.
    fn version(&mut self) -> Result<(), String> {
        match self.u8("the version")? {
            STATE_VERSION => Ok(()),
            other => Err(format!(
                "unknown version {other} (this build writes {STATE_VERSION})"
            )),
        }
    }
}

/// An entry key for error messages: hex, shortened.
fn describe_key(key: &[u8]) -> String {
    let mut out = String::from("0x");
    for byte in key.iter().take(32) {
        let _ = write!(out, "{byte:02x}");
    }
    if key.len() > 32 {
        let _ = write!(out, "... ({} bytes)", key.len());
    }
    out
}

fn corrupt(operator: &str, key: &[u8], problem: impl fmt::Display) -> OperatorError {
    OperatorError::permanent(format!(
        "corrupt {operator} state entry {}: {problem}",
        describe_key(key)
    ))
}

fn put_group(out: &mut Vec<u8>, key: Option<&[u8]>) {
    match key {
        None => out.push(GROUP_NONE),
        Some(bytes) => {
            out.push(GROUP_SOME);
            out.extend_from_slice(bytes);
        }
    }
}

fn parse_group(bytes: &[u8]) -> Result<Option<&[u8]>, String> {
    match bytes.split_first() {
        Some((&GROUP_NONE, [])) => Ok(None),
        Some((&GROUP_NONE, rest)) => Err(format!(
            "{} bytes after the keyless-group marker",
            rest.len()
        )),
        Some((&GROUP_SOME, rest)) => Ok(Some(rest)),
        Some((other, _)) => Err(format!("unknown group marker {other:#04x}")),
        None => Err("the group key is missing".to_owned()),
    }
}

fn sortable_i64(value: i64) -> [u8; 8] {
    ((value as u64) ^ (1 << 63)).to_be_bytes()
}

fn unsortable_i64(bytes: [u8; 8]) -> i64 {
    (u64::from_be_bytes(bytes) ^ (1 << 63)) as i64
}

/// The group of a per-key state entry's key (`tag` then the group), as
/// written by [`group_state_key`].
fn parse_group_key(tag: u8, key: &[u8]) -> Result<Option<&[u8]>, String> {
    match key.split_first() {
        Some((&first, group)) if first == tag => parse_group(group),
        Some((first, _)) => Err(format!("unknown entry tag {first:#04x}")),
        None => Err("the key is empty".to_owned()),
    }
}

/// Restores each entry with `entry`, stopping at the first corrupt one.
fn restore_each(
    operator: &str,
    entries: Vec<(Vec<u8>, Vec<u8>)>,
    mut entry: impl FnMut(&[u8], &[u8]) -> Result<(), String>,
) -> Result<(), OperatorError> {
    for (key, value) in entries {
        entry(&key, &value).map_err(|problem| corrupt(operator, &key, problem))?;
    }
    Ok(())
}

/// The result event for a per-event operator: `json` with the event's key,
/// timestamp, origin and position and no headers.
fn result_event(event: &Event, json: String) -> Event {
    Event {
        key: event.key.clone(),
        value: Some(Bytes::from(json)),
        headers: Vec::new(),
        timestamp_ms: event.timestamp_ms,
        origin: event.origin.clone(),
        position: event.position,
    }
}

fn group_state_key(tag: u8, key: Option<&[u8]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + key.map_or(0, <[u8]>::len));
    out.push(tag);
    put_group(&mut out, key);
    out
}

// ---------------------------------------------------------------------------
// Groups and pending checkpoint entries.
// ---------------------------------------------------------------------------

/// A group key as held in state: shared, so windows and the firing index
/// clone a pointer, not the bytes.
type GroupKey = Option<Arc<[u8]>>;

/// Per-group values, looked up by the event's key bytes without allocating.
#[derive(Debug)]
struct Groups<V> {
    keyed: HashMap<Arc<[u8]>, V>,
    unkeyed: Option<V>,
}

impl<V> Default for Groups<V> {
    fn default() -> Self {
        Groups {
            keyed: HashMap::new(),
            unkeyed: None,
        }
    }
}

impl<V> Groups<V> {
    fn get(&self, key: Option<&[u8]>) -> Option<&V> {
        match key {
            None => self.unkeyed.as_ref(),
            Some(bytes) => self.keyed.get(bytes),
        }
    }

    fn get_mut(&mut self, key: Option<&[u8]>) -> Option<&mut V> {
        match key {
            None => self.unkeyed.as_mut(),
            Some(bytes) => self.keyed.get_mut(bytes),
        }
    }

    fn remove(&mut self, key: Option<&[u8]>) -> Option<V> {
        match key {
            None => self.unkeyed.take(),
            Some(bytes) => self.keyed.remove(bytes),
        }
    }

    /// Runs `f` on the group's value, made by `make` (given the shared key)
    /// if the group is new. One hash lookup when the group exists.
    fn with_entry<R>(
        &mut self,
        key: Option<&[u8]>,
        make: impl FnOnce(GroupKey) -> V,
        f: impl FnOnce(&mut V) -> R,
    ) -> R {
        match key {
            None => f(self.unkeyed.get_or_insert_with(|| make(None))),
            Some(bytes) => {
                if let Some(value) = self.keyed.get_mut(bytes) {
                    return f(value);
                }
                let shared: Arc<[u8]> = Arc::from(bytes);
                let value = self
                    .keyed
                    .entry(Arc::clone(&shared))
                    .or_insert_with(|| make(Some(shared)));
                f(value)
            }
        }
    }

    fn values(&self) -> impl Iterator<Item = &V> {
        self.unkeyed.iter().chain(self.keyed.values())
    }

    fn len(&self) -> usize {
        self.keyed.len() + usize::from(self.unkeyed.is_some())
    }
}

/// State entries to look at in the next checkpoint: `(id, removed)`, where
/// `removed` means a previously checkpointed entry with this id was removed.
/// Entries are pushed when something first changes after a checkpoint, so
/// the list stays proportional to the changes; without checkpoints it is
/// compacted when it doubles.
#[derive(Debug)]
struct Pending<K> {
    entries: Vec<(K, bool)>,
    limit: usize,
}

impl<K> Default for Pending<K> {
    fn default() -> Self {
        Pending {
            entries: Vec::new(),
            limit: PENDING_MIN_LIMIT,
        }
    }
}

impl<K: Ord> Pending<K> {
    fn push(&mut self, id: K, removed: bool) {
        self.entries.push((id, removed));
    }

    fn is_over_limit(&self) -> bool {
        self.entries.len() > self.limit
    }

    /// Takes the entries, sorted by id, one per id (`removed` if any was).
    fn take_sorted(&mut self) -> Vec<(K, bool)> {
        let mut entries = std::mem::take(&mut self.entries);
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        entries.dedup_by(|later, earlier| {
            if later.0 == earlier.0 {
                earlier.1 |= later.1;
                true
            } else {
                false
            }
        });
        self.limit = PENDING_MIN_LIMIT;
        entries
    }

    /// Drops entries a checkpoint would skip (`keep` says which matter).
    fn compact(&mut self, mut keep: impl FnMut(&K, bool) -> bool) {
        let mut entries = self.take_sorted();
        entries.retain(|(id, removed)| keep(id, *removed));
        self.limit = PENDING_MIN_LIMIT.max(entries.len().saturating_mul(2));
        self.entries = entries;
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.limit = PENDING_MIN_LIMIT;
    }
}

fn duration_ms(duration: Duration, min: i64) -> i64 {
    let ms = i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
    ms.clamp(min, EVENT_TIME_LIMIT_MS)
}

// ---------------------------------------------------------------------------
// WindowOperator.
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// Tumbling (`hop == size`) and hopping windows.
    Fixed {
        size: i64,
        hop: i64,
    },
    Session {
        gap: i64,
    },
}

/// One open window.
#[derive(Clone, Debug)]
struct Window {
    start: i64,
    end: i64,
    acc: Acc,
    /// Changed since the last checkpoint (and listed in `pending`).
    dirty: bool,
    /// Written by some checkpoint (so removing it needs a removal).
    persisted: bool,
}

impl Window {
    fn new(start: i64, end: i64) -> Window {
        Window {
            start,
            end,
            acc: Acc::default(),
            dirty: false,
            persisted: false,
        }
    }
}

/// A group's open windows, sorted by start (and, being disjoint for
/// sessions and equally long otherwise, by end too).
#[derive(Debug)]
struct KeyWindows {
    key: GroupKey,
    windows: VecDeque<Window>,
}

impl KeyWindows {
    fn new(key: GroupKey) -> KeyWindows {
        KeyWindows {
            key,
            windows: VecDeque::new(),
        }
    }

    fn position(&self, start: i64) -> Result<usize, usize> {
        self.windows
            .binary_search_by(|window| window.start.cmp(&start))
    }
}

/// The firing index and checkpoint bookkeeping.
#[derive(Debug, Default)]
struct Book {
    /// Every open window as `(end, start, key)`.
    index: BTreeSet<(i64, i64, GroupKey)>,
    pending: Pending<(GroupKey, i64)>,
}

impl Book {
    fn touch(&mut self, key: &GroupKey, window: &mut Window) {
        if !window.dirty {
            window.dirty = true;
            self.pending.push((key.clone(), window.start), false);
        }
    }
}

/// Keyed event-time windows (`type = "window"`): tumbling, hopping or
/// session windows per key, with a watermark and allowed lateness; see the
/// [module documentation](self) for the exact semantics, the result JSON and
/// the state encoding.
#[derive(Debug)]
pub struct WindowOperator {
    shape: Shape,
    lateness: i64,
    spec: Spec,
    reader: ValueReader,
    groups: Groups<KeyWindows>,
    book: Book,
    max_time: Option<i64>,
    max_time_dirty: bool,
}

impl WindowOperator {
    /// An operator for `config`. Durations are taken in whole milliseconds
    /// and capped at [`EVENT_TIME_LIMIT_MS`]; a size, hop or gap under 1 ms
    /// counts as 1 ms (configuration checking should reject those).
    pub fn new(config: &WindowConfig) -> WindowOperator {
        let shape = match config.kind {
            WindowKind::Tumbling { size } => {
                let size = duration_ms(size, 1);
                Shape::Fixed { size, hop: size }
            }
            WindowKind::Hopping { size, hop } => Shape::Fixed {
                size: duration_ms(size, 1),
                hop: duration_ms(hop, 1),
            },
            WindowKind::Session { gap } => Shape::Session {
                gap: duration_ms(gap, 1),
            },
        };
        let spec = Spec::new(&config.function);
        let number = spec.needs_field().then_some(config.field.as_ref());
        WindowOperator {
            shape,
            lateness: duration_ms(config.allowed_lateness, 0),
            reader: ValueReader::new(config.time_field.as_ref(), number),
            spec,
            groups: Groups::default(),
            book: Book::default(),
            max_time: None,
            max_time_dirty: false,
        }
    }

    /// The current watermark: the largest event time seen minus the allowed
    /// lateness; `None` before the first event.
    pub fn watermark(&self) -> Option<i64> {
        self.max_time.map(|max| max - self.lateness)
    }

    /// How many windows are open (counted, not yet fired).
    pub fn open_windows(&self) -> usize {
        self.book.index.len()
    }

    fn late_context(&self, watermark: i64) -> String {
        format!(
            "watermark {watermark} (largest event time {} minus allowed lateness {} ms)",
            watermark + self.lateness,
            self.lateness
        )
    }

    /// Counts `x` at time `t` in every open tumbling/hopping window
    /// containing it, or says why it is late.
    fn add_fixed(
        &mut self,
        key: Option<&[u8]>,
        t: i64,
        x: f64,
        size: i64,
        hop: i64,
    ) -> Option<String> {
        let last = t.div_euclid(hop) * hop;
        let first_containing = (t - size).div_euclid(hop) * hop + hop;
        if first_containing > last {
            return Some(format!(
                "event time {t} falls in no window: hopping windows of {size} ms every {hop} ms \
                 leave a gap there, so it cannot be counted"
            ));
        }
        let mut first = first_containing;
        if let Some(watermark) = self.watermark() {
            // Open windows end after the watermark: start > watermark - size.
            let first_open = (watermark - size).div_euclid(hop) * hop + hop;
            if first_open > last {
                let which = if hop == size {
                    "its window"
                } else {
                    "the last window containing it,"
                };
                return Some(format!(
                    "event time {t} is too late: the {} has passed the end of {which} [{last}, {}), \
                     which already fired",
                    self.late_context(watermark),
                    last + size
                ));
            }
            first = first.max(first_open);
        }
        let Self {
            groups, book, spec, ..
        } = self;
        groups.with_entry(key, KeyWindows::new, |group| {
            let mut at = group.windows.partition_point(|window| window.start < first);
            let mut start = first;
            while start <= last {
                if group
                    .windows
                    .get(at)
                    .is_none_or(|window| window.start != start)
                {
                    group.windows.insert(at, Window::new(start, start + size));
                    book.index.insert((start + size, start, group.key.clone()));
                }
                if let Some(window) = group.windows.get_mut(at) {
                    window.acc.add(&spec.func, x, false);
                    book.touch(&group.key, window);
                }
                at += 1;
                start += hop;
            }
        });
        None
    }

    /// Adds `x` at time `t` to the key's session, merging sessions it
    /// bridges, or says why it is late.
    fn add_session(&mut self, key: Option<&[u8]>, t: i64, x: f64, gap: i64) -> Option<String> {
        let end = t + gap;
        if let Some(watermark) = self.watermark() {
            if end <= watermark {
                return Some(format!(
                    "event time {t} is too late: its session window [{t}, {end}) (gap {gap} ms) \
                     would end at or before the {}",
                    self.late_context(watermark)
                ));
            }
        }
        let Self {
            groups, book, spec, ..
        } = self;
        groups.with_entry(key, KeyWindows::new, |group| {
            let windows = &mut group.windows;
            // Sessions overlapping [t, end): end > t and start < end.
            let lo = windows.partition_point(|window| window.end <= t);
            let mut hi = lo;
            while windows.get(hi).is_some_and(|window| window.start < end) {
                hi += 1;
            }
            if lo == hi {
                let mut window = Window::new(t, end);
                window.acc.add(&spec.func, x, false);
                book.index.insert((end, t, group.key.clone()));
                book.touch(&group.key, &mut window);
                windows.insert(lo, window);
                return;
            }
            // Merge the later overlapping sessions into the first.
            let mut absorbed = Vec::new();
            for _ in lo + 1..hi {
                if let Some(window) = windows.remove(lo + 1) {
                    absorbed.push(window);
                }
            }
            let Some(target) = windows.get_mut(lo) else {
                return;
            };
            let old = (target.end, target.start);
            for window in absorbed {
                book.index
                    .remove(&(window.end, window.start, group.key.clone()));
                if window.persisted {
                    book.pending.push((group.key.clone(), window.start), true);
                }
                target.end = target.end.max(window.end);
                target.acc.merge(&spec.func, window.acc);
            }
            target.end = target.end.max(end);
            if t < target.start {
                // A new identity: the stored entry under the old start goes.
                if target.persisted {
                    book.pending.push((group.key.clone(), target.start), true);
                }
                target.persisted = false;
                target.dirty = false;
                target.start = t;
            }
            if (target.end, target.start) != old {
                book.index.remove(&(old.0, old.1, group.key.clone()));
                book.index
                    .insert((target.end, target.start, group.key.clone()));
            }
            target.acc.add(&spec.func, x, false);
            book.touch(&group.key, target);
        });
        None
    }

    /// Fires every window the watermark has passed, `trigger` being the
    /// event that moved it.
    fn fire(&mut self, trigger: &Event, out: &mut Emitter) {
        let Some(watermark) = self.watermark() else {
            return;
        };
        while self
            .book
            .index
            .first()
            .is_some_and(|(end, _, _)| *end <= watermark)
        {
            let Some((end, start, key)) = self.book.index.pop_first() else {
                break;
            };
            let Some(group) = self.groups.get_mut(key.as_deref()) else {
                continue;
            };
            let Ok(at) = group.position(start) else {
                continue;
            };
            let Some(mut window) = group.windows.remove(at) else {
                continue;
            };
            if group.windows.is_empty() {
                self.groups.remove(key.as_deref());
            }
            if window.persisted {
                self.book.pending.push((key.clone(), start), true);
            }
            window.acc.values.sort_unstable_by(f64::total_cmp);
            let mut json = open_result(key.as_deref(), 96);
            let _ = write!(json, ",\"window_start\":{start},\"window_end\":{end}");
            window.acc.write_json(&self.spec, &mut json);
            json.push('}');
            out.emit(Event {
                key: key.as_deref().map(Bytes::copy_from_slice),
                value: Some(Bytes::from(json)),
                headers: Vec::new(),
                timestamp_ms: end - 1,
                origin: trigger.origin.clone(),
                position: trigger.position,
            });
        }
    }

    fn window(&self, key: Option<&[u8]>, start: i64) -> Option<&Window> {
        let group = self.groups.get(key)?;
        group.windows.get(group.position(start).ok()?)
    }

    fn compact_pending(&mut self) {
        let Self { groups, book, .. } = self;
        book.pending.compact(|(key, start), removed| {
            let window = groups.get(key.as_deref()).and_then(|group| {
                group
                    .position(*start)
                    .ok()
                    .and_then(|at| group.windows.get(at))
            });
            match window {
                Some(window) => window.dirty,
                None => removed,
            }
        });
    }

    fn encode_window(&self, window: &Window) -> Vec<u8> {
        let mut out = Vec::with_capacity(26 + 8 * window.acc.values.len());
        out.push(STATE_VERSION);
        out.push(self.spec.tag());
        out.extend_from_slice(&window.end.to_le_bytes());
        window.acc.encode(&self.spec.func, &mut out);
        out
    }

    fn reset(&mut self) {
        self.groups = Groups::default();
        self.book = Book::default();
        self.max_time = None;
        self.max_time_dirty = false;
    }

    fn restore_entries(&mut self, entries: Vec<(Vec<u8>, Vec<u8>)>) -> Result<(), OperatorError> {
        const WHAT: &str = "window";
        for (key, value) in entries {
            match key.first() {
                Some(&TAG_META) => {
                    if key.len() != 1 {
                        return Err(corrupt(WHAT, &key, "the meta key has extra bytes"));
                    }
                    let mut reader = ByteReader::new(&value);
                    let max = reader
                        .version()
                        .and_then(|()| reader.i64("the largest event time"))
                        .and_then(|max| reader.finish().map(|()| max))
                        .map_err(|problem| corrupt(WHAT, &key, problem))?;
                    if max.unsigned_abs() > EVENT_TIME_LIMIT_MS as u64 {
                        return Err(corrupt(
                            WHAT,
                            &key,
                            format!("largest event time {max} is out of range"),
                        ));
                    }
                    self.max_time = Some(max);
                }
                Some(&TAG_WINDOW) => self
                    .restore_window(&key, &value)
                    .map_err(|problem| corrupt(WHAT, &key, problem))?,
                Some(other) => {
                    return Err(corrupt(
                        WHAT,
                        &key,
                        format!("unknown entry tag {other:#04x}"),
                    ))
                }
                None => return Err(corrupt(WHAT, &key, "the key is empty")),
            }
        }
        if let Shape::Session { .. } = self.shape {
            for group in self.groups.values() {
                let mut windows = group.windows.iter();
                let mut previous = windows.next();
                for window in windows {
                    if let Some(before) = previous {
                        if before.end > window.start {
                            return Err(OperatorError::permanent(format!(
                                "corrupt window state: sessions [{}, {}) and [{}, {}) of one key overlap",
                                before.start, before.end, window.start, window.end
                            )));
                        }
                    }
                    previous = Some(window);
                }
            }
        }
        if self.max_time.is_none() && !self.book.index.is_empty() {
            return Err(OperatorError::permanent(
                "corrupt window state: window entries without the largest-event-time entry (key 0x00)",
            ));
        }
        Ok(())
    }

    fn restore_window(&mut self, key: &[u8], value: &[u8]) -> Result<(), String> {
        let mut key_reader = ByteReader::new(key);
        key_reader.u8("the tag")?;
        let start = unsortable_i64(key_reader.array8("the window start")?);
        let group_key = parse_group(key_reader.rest())?;
        let mut reader = ByteReader::new(value);
        reader.version()?;
        let tag = reader.u8("the function tag")?;
        if tag != self.spec.tag() {
            return Err(format!(
                "written by aggregate function {tag} ({}), but this window computes {}",
                aggregate_tag_name(tag),
                aggregate_tag_name(self.spec.tag())
            ));
        }
        let end = reader.i64("the window end")?;
        if start.unsigned_abs() > STATE_TIME_LIMIT_MS as u64
            || end.unsigned_abs() > STATE_TIME_LIMIT_MS as u64
        {
            return Err(format!("window [{start}, {end}) is out of range"));
        }
        match self.shape {
            Shape::Fixed { size, hop } => {
                if start.rem_euclid(hop) != 0 || end - start != size {
                    return Err(format!(
                        "window [{start}, {end}) is not a window of {size} ms starting at a \
                         multiple of {hop} ms (did the window configuration change?)"
                    ));
                }
            }
            Shape::Session { gap } => {
                if end - start < gap {
                    return Err(format!(
                        "session [{start}, {end}) is shorter than the gap of {gap} ms \
                         (did the window configuration change?)"
                    ));
                }
            }
        }
        let acc = Acc::decode(&self.spec.func, &mut reader)?;
        let mut duplicate = false;
        let book = &mut self.book;
        self.groups.with_entry(group_key, KeyWindows::new, |group| {
            match group.position(start) {
                Ok(_) => duplicate = true,
                Err(at) => {
                    book.index.insert((end, start, group.key.clone()));
                    group.windows.insert(
                        at,
                        Window {
                            start,
                            end,
                            acc,
                            dirty: false,
                            persisted: true,
                        },
                    );
                }
            }
        });
        if duplicate {
            return Err(format!(
                "a second window starting at {start} for the same key"
            ));
        }
        Ok(())
    }
}

impl Operator for WindowOperator {
    fn process(&mut self, event: &Event, out: &mut Emitter) -> Result<(), OperatorError> {
        let (time, x) = self.reader.read(event)?;
        let t = time.unwrap_or(event.timestamp_ms);
        if t.unsigned_abs() > EVENT_TIME_LIMIT_MS as u64 {
            let source = match &self.reader.time {
                Some((_, name)) => name.as_str(),
                None => "the record timestamp",
            };
            return Err(OperatorError::permanent(format!(
                "{source} ({t}) is outside the supported event-time range (±{EVENT_TIME_LIMIT_MS} ms)"
            )));
        }
        let key = event.key.as_deref();
        let late = match self.shape {
            Shape::Fixed { size, hop } => self.add_fixed(key, t, x, size, hop),
            Shape::Session { gap } => self.add_session(key, t, x, gap),
        };
        if let Some(reason) = late {
            out.late(event.clone(), reason);
        }
        if self.max_time.is_none_or(|max| t > max) {
            self.max_time = Some(t);
            self.max_time_dirty = true;
        }
        self.fire(event, out);
        if self.book.pending.is_over_limit() {
            self.compact_pending();
        }
        Ok(())
    }

    fn is_stateful(&self) -> bool {
        true
    }

    fn checkpoint(&mut self, deltas: &mut Vec<StateDelta>) {
        if self.max_time_dirty {
            if let Some(max) = self.max_time {
                let mut value = Vec::with_capacity(9);
                value.push(STATE_VERSION);
                value.extend_from_slice(&max.to_le_bytes());
                deltas.push(StateDelta {
                    key: vec![TAG_META],
                    value: Some(value),
                });
            }
            self.max_time_dirty = false;
        }
        for ((key, start), removed) in self.book.pending.take_sorted() {
            let state_key = || {
                let mut out = Vec::with_capacity(10 + key.as_deref().map_or(0, <[u8]>::len));
                out.push(TAG_WINDOW);
                out.extend_from_slice(&sortable_i64(start));
                put_group(&mut out, key.as_deref());
                out
            };
            let encoded = match self.window(key.as_deref(), start) {
                Some(window) if window.dirty => Some(self.encode_window(window)),
                Some(_) => continue,
                None if removed => None,
                None => continue,
            };
            if encoded.is_some() {
                if let Some(window) = self.groups.get_mut(key.as_deref()).and_then(|group| {
                    let at = group.position(start).ok()?;
                    group.windows.get_mut(at)
                }) {
                    window.dirty = false;
                    window.persisted = true;
                }
            }
            deltas.push(StateDelta {
                key: state_key(),
                value: encoded,
            });
        }
    }

    fn restore(&mut self, entries: Vec<(Vec<u8>, Vec<u8>)>) -> Result<(), OperatorError> {
        self.reset();
        let result = self.restore_entries(entries);
        if result.is_err() {
            self.reset();
        }
        result
    }
}

// ---------------------------------------------------------------------------
// AggregateOperator.
// ---------------------------------------------------------------------------

#[derive(Debug)]
struct AggState {
    key: GroupKey,
    acc: Acc,
    dirty: bool,
}

/// A running keyed aggregate without windows (`type = "aggregate"`): after
/// each event it emits the event key's new aggregate, as
/// `{"key":"k1","count":4,"sum":17}` (the fields are named as in window
/// results: `count` always, then `sum`, `min`, `max`, `mean` or `pN`), with
/// the event's key, timestamp, origin and position and no headers.
///
/// State is one small entry per key ever seen (keys are never forgotten).
/// Percentiles are supported but keep every value of a key for ever, sorted:
/// 8 bytes per event in memory and in each checkpoint that key changed in,
/// and an insertion costs O(values); use them on low-volume keys only.
#[derive(Debug)]
pub struct AggregateOperator {
    spec: Spec,
    reader: ValueReader,
    groups: Groups<AggState>,
    pending: Pending<GroupKey>,
}

impl AggregateOperator {
    /// An operator for `config`. Without `field`, numeric functions read the
    /// whole value as a number.
    pub fn new(config: &AggregateConfig) -> AggregateOperator {
        let spec = Spec::new(&config.function);
        let number = spec.needs_field().then_some(config.field.as_ref());
        AggregateOperator {
            reader: ValueReader::new(None, number),
            spec,
            groups: Groups::default(),
            pending: Pending::default(),
        }
    }

    /// How many keys it holds an aggregate for.
    pub fn keys(&self) -> usize {
        self.groups.len()
    }

    fn restore_entry(&mut self, key: &[u8], value: &[u8]) -> Result<(), String> {
        let group = parse_group_key(TAG_AGGREGATE, key)?;
        let mut reader = ByteReader::new(value);
        reader.version()?;
        let tag = reader.u8("the function tag")?;
        if tag != self.spec.tag() {
            return Err(format!(
                "written by aggregate function {tag} ({}), but this operator computes {}",
                aggregate_tag_name(tag),
                aggregate_tag_name(self.spec.tag())
            ));
        }
        let mut acc = Acc::decode(&self.spec.func, &mut reader)?;
        acc.values.sort_unstable_by(f64::total_cmp);
        let mut duplicate = false;
        self.groups.with_entry(
            group,
            |key| AggState {
                key,
                acc: Acc::default(),
                dirty: false,
            },
            |state| {
                duplicate = state.acc.count != 0;
                state.acc = acc;
            },
        );
        if duplicate {
            return Err("a second entry for the same key".to_owned());
        }
        Ok(())
    }
}

impl Operator for AggregateOperator {
    fn process(&mut self, event: &Event, out: &mut Emitter) -> Result<(), OperatorError> {
        let (_, x) = self.reader.read(event)?;
        let key = event.key.as_deref();
        let Self {
            spec,
            groups,
            pending,
            ..
        } = self;
        let json = groups.with_entry(
            key,
            |key| AggState {
                key,
                acc: Acc::default(),
                dirty: false,
            },
            |state| {
                state.acc.add(&spec.func, x, true);
                if !state.dirty {
                    state.dirty = true;
                    pending.push(state.key.clone(), false);
                }
                let mut json = open_result(key, 64);
                state.acc.write_json(spec, &mut json);
                json.push('}');
                json
            },
        );
        out.emit(result_event(event, json));
        Ok(())
    }

    fn is_stateful(&self) -> bool {
        true
    }

    fn checkpoint(&mut self, deltas: &mut Vec<StateDelta>) {
        for (key, _) in self.pending.take_sorted() {
            let Some(state) = self.groups.get_mut(key.as_deref()) else {
                continue;
            };
            if !state.dirty {
                continue;
            }
            state.dirty = false;
            let mut value = Vec::with_capacity(18 + 8 * state.acc.values.len());
            value.push(STATE_VERSION);
            value.push(self.spec.tag());
            state.acc.encode(&self.spec.func, &mut value);
            deltas.push(StateDelta {
                key: group_state_key(TAG_AGGREGATE, key.as_deref()),
                value: Some(value),
            });
        }
    }

    fn restore(&mut self, entries: Vec<(Vec<u8>, Vec<u8>)>) -> Result<(), OperatorError> {
        self.groups = Groups::default();
        self.pending.clear();
        let result = restore_each("aggregate", entries, |key, value| {
            self.restore_entry(key, value)
        });
        if result.is_err() {
            self.groups = Groups::default();
        }
        result
    }
}

// ---------------------------------------------------------------------------
// ReduceOperator.
// ---------------------------------------------------------------------------

#[derive(Debug)]
enum Reduced {
    /// Just created; replaced by the first event.
    Empty,
    Number(f64),
    Latest(Vec<u8>),
    Object(serde_json::Map<String, serde_json::Value>),
}

#[derive(Debug)]
struct ReduceState {
    key: GroupKey,
    value: Reduced,
    dirty: bool,
    persisted: bool,
}

fn reduce_tag(function: ReduceFunction) -> u8 {
    match function {
        ReduceFunction::Sum => 1,
        ReduceFunction::Min => 2,
        ReduceFunction::Max => 3,
        ReduceFunction::Latest => 4,
        ReduceFunction::Merge => 5,
    }
}

fn reduce_name(function: ReduceFunction) -> &'static str {
    match function {
        ReduceFunction::Sum => "sum",
        ReduceFunction::Min => "min",
        ReduceFunction::Max => "max",
        ReduceFunction::Latest => "latest",
        ReduceFunction::Merge => "merge",
    }
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// A running keyed reduction (`type = "reduce"`), emitting the key's new
/// result after each event:
///
/// - `sum`, `min`, `max` of `field` (or of the whole value as a number if no
///   `field` is set): `{"key":"k1","sum":17}` (`"min"`, `"max"`), with the
///   event's key, timestamp, origin and position and no headers. A
///   tombstone, or a value without the number, is a permanent error.
/// - `latest`: the event itself, unchanged; the state is the key's latest
///   value (a copy of it).
/// - `merge`: the key's objects merged at the top level, later fields
///   winning; the event is emitted with the merged object as its value
///   (everything else kept). A value that is not a JSON object is a
///   permanent error.
///
/// For `latest` and `merge` a tombstone clears the key's state and passes
/// through unchanged.
#[derive(Debug)]
pub struct ReduceOperator {
    function: ReduceFunction,
    reader: ValueReader,
    groups: Groups<ReduceState>,
    pending: Pending<GroupKey>,
}

impl ReduceOperator {
    /// An operator for `config`.
    pub fn new(config: &ReduceConfig) -> ReduceOperator {
        let numeric = matches!(
            config.function,
            ReduceFunction::Sum | ReduceFunction::Min | ReduceFunction::Max
        );
        ReduceOperator {
            function: config.function,
            reader: ValueReader::new(None, numeric.then_some(config.field.as_ref())),
            groups: Groups::default(),
            pending: Pending::default(),
        }
    }

    /// How many keys it holds a result for.
    pub fn keys(&self) -> usize {
        self.groups.len()
    }

    fn remove_key(&mut self, key: Option<&[u8]>) {
        if let Some(state) = self.groups.remove(key) {
            if state.persisted {
                self.pending.push(state.key, true);
            }
        }
    }

    /// Updates the key's result with `f` and returns what `f` returns.
    fn update<R>(&mut self, key: Option<&[u8]>, f: impl FnOnce(&mut Reduced) -> R) -> R {
        let Self {
            groups, pending, ..
        } = self;
        groups.with_entry(
            key,
            |key| ReduceState {
                key,
                value: Reduced::Empty,
                dirty: false,
                persisted: false,
            },
            |state| {
                if !state.dirty {
                    state.dirty = true;
                    pending.push(state.key.clone(), false);
                }
                f(&mut state.value)
            },
        )
    }

    fn encode(&self, value: &Reduced) -> Vec<u8> {
        let mut out = vec![STATE_VERSION, reduce_tag(self.function)];
        match value {
            Reduced::Empty => {}
            Reduced::Number(number) => out.extend_from_slice(&number.to_le_bytes()),
            Reduced::Latest(bytes) => out.extend_from_slice(bytes),
            Reduced::Object(map) => {
                // Serializing a map with string keys cannot fail.
                if let Err(error) = serde_json::to_writer(&mut out, map) {
                    tracing::error!(%error, "reduce state did not serialize");
                }
            }
        }
        out
    }

    fn decode(&self, value: &[u8]) -> Result<Reduced, String> {
        let mut reader = ByteReader::new(value);
        reader.version()?;
        let tag = reader.u8("the reduce tag")?;
        if tag != reduce_tag(self.function) {
            return Err(format!(
                "written by reduce function {tag}, but this operator computes {} ({})",
                reduce_name(self.function),
                reduce_tag(self.function)
            ));
        }
        let reduced = match self.function {
            ReduceFunction::Sum | ReduceFunction::Min | ReduceFunction::Max => {
                Reduced::Number(reader.f64("the result")?)
            }
            ReduceFunction::Latest => Reduced::Latest(reader.rest().to_vec()),
            ReduceFunction::Merge => match serde_json::from_slice(reader.rest()) {
                Ok(serde_json::Value::Object(map)) => Reduced::Object(map),
                Ok(other) => {
                    return Err(format!(
                        "the merged value is {}, not an object",
                        json_kind(&other)
                    ))
                }
                Err(error) => return Err(format!("the merged value is not JSON: {error}")),
            },
        };
        reader.finish()?;
        Ok(reduced)
    }

    fn restore_entry(&mut self, key: &[u8], value: &[u8]) -> Result<(), String> {
        let group = parse_group_key(TAG_REDUCE, key)?;
        let reduced = self.decode(value)?;
        let mut duplicate = false;
        self.groups.with_entry(
            group,
            |key| ReduceState {
                key,
                value: Reduced::Empty,
                dirty: false,
                persisted: true,
            },
            |state| {
                duplicate = !matches!(state.value, Reduced::Empty);
                state.value = reduced;
            },
        );
        if duplicate {
            return Err("a second entry for the same key".to_owned());
        }
        Ok(())
    }
}

impl Operator for ReduceOperator {
    fn process(&mut self, event: &Event, out: &mut Emitter) -> Result<(), OperatorError> {
        let key = event.key.as_deref();
        match self.function {
            ReduceFunction::Sum | ReduceFunction::Min | ReduceFunction::Max => {
                let (_, x) = self.reader.read(event)?;
                let function = self.function;
                let result = self.update(key, |reduced| {
                    let next = match (&*reduced, function) {
                        (Reduced::Number(old), ReduceFunction::Sum) => old + x,
                        (Reduced::Number(old), ReduceFunction::Min) => old.min(x),
                        (Reduced::Number(old), ReduceFunction::Max) => old.max(x),
                        _ => x,
                    };
                    *reduced = Reduced::Number(next);
                    next
                });
                let mut json = open_result(key, 48);
                json.push_str(",\"");
                json.push_str(reduce_name(function));
                json.push_str("\":");
                json_f64(&mut json, result);
                json.push('}');
                out.emit(result_event(event, json));
            }
            ReduceFunction::Latest => {
                match event.value.as_deref() {
                    None => self.remove_key(key),
                    Some(value) => self.update(key, |reduced| match reduced {
                        Reduced::Latest(bytes) => {
                            bytes.clear();
                            bytes.extend_from_slice(value);
                        }
                        other => *other = Reduced::Latest(value.to_vec()),
                    }),
                }
                out.emit(event.clone());
            }
            ReduceFunction::Merge => {
                let Some(value) = event.value.as_deref() else {
                    self.remove_key(key);
                    out.emit(event.clone());
                    return Ok(());
                };
                let fields = match serde_json::from_slice::<serde_json::Value>(value) {
                    Ok(serde_json::Value::Object(fields)) => fields,
                    Ok(other) => {
                        return Err(OperatorError::permanent(format!(
                            "reduce merge needs a JSON object as the value, found {}",
                            json_kind(&other)
                        )))
                    }
                    Err(error) => {
                        return Err(OperatorError::permanent(format!(
                            "reduce merge needs a JSON object as the value, but it is not valid JSON ({error})"
                        )))
                    }
                };
                let merged = self.update(key, |reduced| {
                    if let Reduced::Object(map) = reduced {
                        for (name, field) in fields {
                            map.insert(name, field);
                        }
                    } else {
                        *reduced = Reduced::Object(fields);
                    }
                    match reduced {
                        Reduced::Object(map) => serde_json::to_vec(map),
                        _ => Ok(Vec::new()),
                    }
                });
                let merged = merged.map_err(|error| {
                    OperatorError::permanent(format!("merged object did not serialize: {error}"))
                })?;
                out.emit(event.with_value(merged));
            }
        }
        if self.pending.is_over_limit() {
            let groups = &self.groups;
            self.pending
                .compact(|key, removed| match groups.get(key.as_deref()) {
                    Some(state) => state.dirty,
                    None => removed,
                });
        }
        Ok(())
    }

    fn is_stateful(&self) -> bool {
        true
    }

    fn checkpoint(&mut self, deltas: &mut Vec<StateDelta>) {
        for (key, removed) in self.pending.take_sorted() {
            let value = match self.groups.get(key.as_deref()) {
                Some(state) if state.dirty => Some(self.encode(&state.value)),
                Some(_) => continue,
                None if removed => None,
                None => continue,
            };
            if let Some(state) = self.groups.get_mut(key.as_deref()) {
                state.dirty = false;
                state.persisted = true;
            }
            deltas.push(StateDelta {
                key: group_state_key(TAG_REDUCE, key.as_deref()),
                value,
            });
        }
    }

    fn restore(&mut self, entries: Vec<(Vec<u8>, Vec<u8>)>) -> Result<(), OperatorError> {
        self.groups = Groups::default();
        self.pending.clear();
        let result = restore_each("reduce", entries, |key, value| {
            self.restore_entry(key, value)
        });
        if result.is_err() {
            self.groups = Groups::default();
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::config::LatePolicy;
    use crate::pipeline::Origin;
    use crate::types::{Header, Offset, PartitionId};
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    // -- helpers ----------------------------------------------------------

    fn event_bytes(
        key: Option<&[u8]>,
        timestamp_ms: i64,
        value: Option<&str>,
        offset: u64,
    ) -> Event {
        Event {
            key: key.map(Bytes::copy_from_slice),
            value: value.map(|v| Bytes::copy_from_slice(v.as_bytes())),
            headers: Vec::new(),
            timestamp_ms,
            origin: Origin {
                topic: Arc::from("in"),
                partition: PartitionId(3),
                offset: Offset(offset),
            },
            position: Offset(offset),
        }
    }

    fn event(key: Option<&str>, timestamp_ms: i64, value: &str, offset: u64) -> Event {
        event_bytes(key.map(str::as_bytes), timestamp_ms, Some(value), offset)
    }

    fn path(text: &str) -> FieldPath {
        FieldPath::parse(text).expect("valid path")
    }

    fn ms(value: i64) -> Duration {
        Duration::from_millis(u64::try_from(value).expect("non-negative"))
    }

    fn window_config(
        kind: WindowKind,
        lateness_ms: i64,
        function: AggregateFunction,
    ) -> WindowConfig {
        WindowConfig {
            kind,
            allowed_lateness: ms(lateness_ms),
            function,
            field: Some(path("v")),
            time_field: None,
            late: LatePolicy::DeadLetter,
        }
    }

    fn tumbling(size: i64) -> WindowKind {
        WindowKind::Tumbling { size: ms(size) }
    }

    fn run(operator: &mut dyn Operator, events: &[Event]) -> (Vec<Event>, Vec<(Event, String)>) {
        let mut out = Emitter::new();
        for event in events {
            operator.process(event, &mut out).expect("process");
        }
        (out.take(), out.take_late())
    }

    fn texts(events: &[Event]) -> Vec<String> {
        events
            .iter()
            .map(|e| String::from_utf8(e.value.as_deref().expect("value").to_vec()).expect("utf-8"))
            .collect()
    }

    type Store = BTreeMap<Vec<u8>, Vec<u8>>;

    fn checkpoint_into(operator: &mut dyn Operator, store: &mut Store) -> Vec<StateDelta> {
        let mut deltas = Vec::new();
        operator.checkpoint(&mut deltas);
        for delta in &deltas {
            match &delta.value {
                Some(value) => {
                    store.insert(delta.key.clone(), value.clone());
                }
                None => {
                    store.remove(&delta.key);
                }
            }
        }
        deltas
    }

    fn entries(store: &Store) -> Vec<(Vec<u8>, Vec<u8>)> {
        store.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    // -- field extraction -------------------------------------------------

    fn found_from_value(value: Option<&serde_json::Value>) -> Found {
        match value {
            None => Found::Missing,
            Some(serde_json::Value::Number(n)) => Found::Float(n.as_f64().expect("finite")),
            Some(other) => Found::Other(json_kind(other)),
        }
    }

    fn as_float(found: Found) -> Found {
        match found {
            Found::Int(v) => Found::Float(v as f64),
            Found::UInt(v) => Found::Float(v as f64),
            other => other,
        }
    }

    #[test]
    fn extractor_agrees_with_field_path_get() {
        let docs = [
            r#"{"a":1,"b":{"c":2.5,"d":[10,{"e":-3}]},"s":"x","n":null,"t":true}"#,
            r#"[1,2,{"a":7,"b":[{"c":{"d":8}}]}]"#,
            r#"{"a\"q":4,"esc\u0061ped":5,"x":{"y":{"z":{"w":[0,[1,[2,3]]]}}}}"#,
            "12",
            r#""text""#,
            r#"{"big":18446744073709551615,"neg":-9223372036854775808,"f":1e300,"o":{}}"#,
            r#"  { "sp" : [ 1 , 2 ] , "a" : { "b" : 3 } }  "#,
        ];
        let paths = [
            "a",
            "b",
            "b.c",
            "b.d.0",
            "b.d.1.e",
            "b.d.1",
            "b.d.2",
            "s",
            "n",
            "t",
            "0",
            "2.a",
            "2.b.0.c.d",
            "a\"q",
            "escaped",
            "x.y.z.w.1.1.0",
            "big",
            "neg",
            "f",
            "o",
            "o.p",
            "missing.x",
            "a.b",
            "sp.1",
            "sp.01",
            "sp.+1",
        ];
        for doc in docs {
            let tree: serde_json::Value = serde_json::from_str(doc).expect("valid doc");
            for first in paths {
                for second in paths {
                    let mut extractor = Extractor::default();
                    extractor.add(Some(&path(first)));
                    extractor.add(Some(&path(second)));
                    let found = [Cell::new(Found::Missing), Cell::new(Found::Missing)];
                    extractor.extract(doc.as_bytes(), &found).expect("extract");
                    for (slot, text) in found.iter().zip([first, second]) {
                        let expected = found_from_value(path(text).get(&tree));
                        assert_eq!(as_float(slot.get()), expected, "doc {doc} path {text}");
                    }
                }
            }
            // No path: the whole value.
            let mut whole = Extractor::default();
            whole.add(None);
            let found = [Cell::new(Found::Missing)];
            whole.extract(doc.as_bytes(), &found).expect("extract");
            assert_eq!(
                as_float(found[0].get()),
                found_from_value(Some(&tree)),
                "doc {doc}"
            );
        }
    }

    #[test]
    fn extractor_rejects_invalid_json_even_off_the_path() {
        let mut extractor = Extractor::default();
        extractor.add(Some(&path("a")));
        let found = [Cell::new(Found::Missing)];
        for doc in [
            "",
            "{",
            "{\"a\":1} x",
            "{\"a\":}",
            "[1,]",
            "{\"a\":1,\"b\":[1,2,}",
            "{\"b\":tru,\"a\":1}",
            "nul",
        ] {
            assert!(
                extractor.extract(doc.as_bytes(), &found).is_err(),
                "accepted {doc:?}"
            );
        }
    }

    // -- window basics ----------------------------------------------------

    #[test]
    fn tumbling_counts_by_key_and_fires_when_the_watermark_passes_the_end() {
        let mut op = WindowOperator::new(&window_config(tumbling(10), 0, AggregateFunction::Count));
        let (out, late) = run(
            &mut op,
            &[
                event(Some("a"), 1, "not json: count reads nothing", 0),
                event(Some("b"), 3, "", 1),
                event(Some("a"), 9, "", 2),
                event_bytes(None, 5, None, 3),
            ],
        );
        assert!(out.is_empty() && late.is_empty());
        assert_eq!(op.open_windows(), 3);
        assert_eq!(op.watermark(), Some(9));
        let mut trigger = event(Some("a"), 10, "", 4);
        trigger.headers.push(Header {
            key: "h".into(),
            value: Bytes::from_static(b"x"),
        });
        let (out, late) = run(&mut op, &[trigger.clone()]);
        assert!(late.is_empty());
        assert_eq!(
            texts(&out),
            [
                r#"{"key":null,"window_start":0,"window_end":10,"count":1}"#,
                r#"{"key":"a","window_start":0,"window_end":10,"count":2}"#,
                r#"{"key":"b","window_start":0,"window_end":10,"count":1}"#,
            ]
        );
        for (result, key) in out.iter().zip([None, Some(&b"a"[..]), Some(&b"b"[..])]) {
            assert_eq!(result.key.as_deref(), key);
            assert_eq!(result.timestamp_ms, 9);
            assert_eq!(result.origin, trigger.origin);
            assert_eq!(result.position, trigger.position);
            assert!(result.headers.is_empty());
        }
        assert_eq!(op.open_windows(), 1);
    }

    #[test]
    fn negative_event_times_align_to_the_epoch() {
        let mut op = WindowOperator::new(&window_config(tumbling(10), 0, AggregateFunction::Count));
        let (out, _) = run(
            &mut op,
            &[
                event(None, -11, "", 0),
                event(None, -10, "", 1),
                event(None, -1, "", 2),
                event(None, 0, "", 3),
            ],
        );
        assert_eq!(
            texts(&out),
            [
                r#"{"key":null,"window_start":-20,"window_end":-10,"count":1}"#,
                r#"{"key":null,"window_start":-10,"window_end":0,"count":2}"#,
            ]
        );
    }

    #[test]
    fn hopping_counts_an_event_in_every_window_containing_it() {
        let kind = WindowKind::Hopping {
            size: ms(10),
            hop: ms(5),
        };
        let mut op = WindowOperator::new(&window_config(kind, 0, AggregateFunction::Count));
        let (out, late) = run(
            &mut op,
            &[
                event(None, 7, "", 0),
                event(None, 12, "", 1),
                event(None, 100, "", 2),
            ],
        );
        assert!(late.is_empty());
        assert_eq!(
            texts(&out),
            [
                r#"{"key":null,"window_start":0,"window_end":10,"count":1}"#,
                r#"{"key":null,"window_start":5,"window_end":15,"count":2}"#,
                r#"{"key":null,"window_start":10,"window_end":20,"count":1}"#,
            ]
        );
    }

    #[test]
    fn hopping_with_gaps_reports_events_between_windows() {
        let kind = WindowKind::Hopping {
            size: ms(5),
            hop: ms(10),
        };
        let mut op = WindowOperator::new(&window_config(kind, 0, AggregateFunction::Count));
        let (out, late) = run(&mut op, &[event(None, 3, "", 0), event(None, 7, "", 1)]);
        assert_eq!(late.len(), 1);
        assert_eq!(late[0].0.position, Offset(1));
        assert!(late[0].1.contains("falls in no window"), "{}", late[0].1);
        // The gap event still moved the watermark past [0, 5).
        assert_eq!(
            texts(&out),
            [r#"{"key":null,"window_start":0,"window_end":5,"count":1}"#]
        );
        assert_eq!(op.open_windows(), 0);
    }

    #[test]
    fn sessions_extend_merge_and_bridge() {
        let kind = WindowKind::Session { gap: ms(10) };
        let mut op = WindowOperator::new(&window_config(kind, 100, AggregateFunction::Sum));
        let value = |v: i64| format!("{{\"v\":{v}}}");
        let (out, late) = run(
            &mut op,
            &[
                event(Some("a"), 0, &value(1), 0),
                event(Some("a"), 25, &value(2), 1),
                event(Some("a"), 12, &value(4), 2),
            ],
        );
        assert!(out.is_empty() && late.is_empty());
        assert_eq!(op.open_windows(), 3);
        // 18 bridges [12, 22) and [25, 35).
        run(&mut op, &[event(Some("a"), 18, &value(8), 3)]);
        assert_eq!(op.open_windows(), 2);
        // 5 bridges [0, 10) and [12, 35).
        run(&mut op, &[event(Some("a"), 5, &value(16), 4)]);
        assert_eq!(op.open_windows(), 1);
        let (out, _) = run(&mut op, &[event(Some("b"), 145, &value(0), 5)]);
        assert_eq!(
            texts(&out),
            [r#"{"key":"a","window_start":0,"window_end":35,"count":5,"sum":31}"#]
        );
        // Exactly `gap` apart is not closer than `gap`: a new session.
        let (out, _) = run(
            &mut op,
            &[
                event(Some("b"), 155, &value(1), 6),
                event(Some("b"), 300, &value(0), 7),
            ],
        );
        assert_eq!(
            texts(&out),
            [
                r#"{"key":"b","window_start":145,"window_end":155,"count":1,"sum":0}"#,
                r#"{"key":"b","window_start":155,"window_end":165,"count":1,"sum":1}"#,
            ]
        );
    }

    #[test]
    fn late_events_are_reported_with_a_reason_and_not_counted() {
        let mut op = WindowOperator::new(&window_config(tumbling(10), 5, AggregateFunction::Count));
        let (out, late) = run(
            &mut op,
            &[
                event(Some("a"), 0, "", 0),
                event(Some("a"), 20, "", 1),
                event(Some("a"), 12, "", 2),
                event(Some("a"), 9, "", 3),
                event(Some("a"), 40, "", 4),
            ],
        );
        assert_eq!(
            texts(&out),
            [
                r#"{"key":"a","window_start":0,"window_end":10,"count":1}"#,
                r#"{"key":"a","window_start":10,"window_end":20,"count":1}"#,
                r#"{"key":"a","window_start":20,"window_end":30,"count":1}"#,
            ]
        );
        assert_eq!(late.len(), 1);
        assert_eq!(late[0].0, event(Some("a"), 9, "", 3));
        let reason = &late[0].1;
        for part in [
            "event time 9",
            "watermark 15",
            "[0, 10)",
            "allowed lateness 5 ms",
        ] {
            assert!(reason.contains(part), "{reason}");
        }

        let kind = WindowKind::Session { gap: ms(10) };
        let mut op = WindowOperator::new(&window_config(kind, 0, AggregateFunction::Count));
        let (_, late) = run(
            &mut op,
            &[
                event(None, 30, "", 0),
                event(None, 20, "", 1),
                event(None, 21, "", 2),
            ],
        );
        assert_eq!(late.len(), 1);
        assert_eq!(late[0].0.position, Offset(1));
        assert!(late[0].1.contains("[20, 30)"), "{}", late[0].1);
    }

    #[test]
    fn result_json_for_every_function() {
        let cases = [
            (AggregateFunction::Sum, r#","sum":3.5"#),
            (AggregateFunction::Min, r#","min":-2"#),
            (AggregateFunction::Max, r#","max":4"#),
            (AggregateFunction::Mean, r#","mean":1.1666666666666667"#),
            (
                AggregateFunction::Percentiles(vec![0.0, 50.0, 99.9, 100.0]),
                r#","p0":-2,"p50":1.5,"p99.9":4,"p100":4"#,
            ),
        ];
        for (function, fields) in cases {
            let mut op = WindowOperator::new(&window_config(tumbling(10), 0, function));
            let (out, _) = run(
                &mut op,
                &[
                    event(Some("a\"b"), 1, r#"{"v":1.5}"#, 0),
                    event(Some("a\"b"), 2, r#"{"v":4}"#, 1),
                    event(Some("a\"b"), 3, r#"{"v":-2}"#, 2),
                    event(Some("a\"b"), 10, r#"{"v":0}"#, 3),
                ],
            );
            assert_eq!(
                texts(&out),
                [format!(
                    r#"{{"key":"a\"b","window_start":0,"window_end":10,"count":3{fields}}}"#
                )]
            );
        }
        let mut op = WindowOperator::new(&window_config(tumbling(10), 0, AggregateFunction::Count));
        let (out, _) = run(
            &mut op,
            &[
                event_bytes(Some(&[0xff, b'\n']), 1, Some(""), 0),
                event(None, 10, "", 1),
            ],
        );
        let value: serde_json::Value =
            serde_json::from_slice(out[0].value.as_deref().expect("value")).expect("json");
        assert_eq!(value["key"], "\u{fffd}\n");
        assert_eq!(out[0].key.as_deref(), Some(&[0xff, b'\n'][..]));
    }

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn window_state_size_is_as_documented() {
        assert_eq!(std::mem::size_of::<Window>(), 64);
        assert_eq!(std::mem::size_of::<(i64, i64, GroupKey)>(), 32);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let values: Vec<f64> = (1..=1000).map(f64::from).collect();
        for (p, expected) in [
            (0.0, 1.0),
            (0.1, 1.0),
            (1.0, 10.0),
            (50.0, 500.0),
            (99.0, 990.0),
            (99.9, 999.0),
            (100.0, 1000.0),
            (250.0, 1000.0),
            (f64::NAN, 1.0),
        ] {
            assert_eq!(nearest_rank(&values, p), Some(expected), "p{p}");
        }
        assert_eq!(nearest_rank(&[7.0], 99.0), Some(7.0));
        assert_eq!(nearest_rank(&[], 50.0), None);
        assert_eq!(
            Spec::new(&AggregateFunction::Percentiles(vec![50.0, 99.9, 0.5])).names,
            ["p50", "p99.9", "p0.5"]
        );
    }

    #[test]
    fn time_field_sets_event_time_and_errors_are_permanent() {
        let mut config = window_config(tumbling(10), 0, AggregateFunction::Sum);
        config.time_field = Some(path("meta.ts"));
        let mut op = WindowOperator::new(&config);
        // The record timestamp is ignored; a float time is rounded down.
        let (out, _) = run(
            &mut op,
            &[
                event(None, 999, r#"{"meta":{"ts":3},"v":1}"#, 0),
                event(None, -999, r#"{"v":2,"meta":{"ts":9.9}}"#, 1),
                event(None, 0, r#"{"meta":{"ts":1e1},"v":0}"#, 2),
            ],
        );
        assert_eq!(
            texts(&out),
            [r#"{"key":null,"window_start":0,"window_end":10,"count":2,"sum":3}"#]
        );
        let failures = [
            (Some(r#"{"v":1}"#), "time_field `meta.ts` is missing"),
            (Some(r#"{"meta":{"ts":"12"},"v":1}"#), "time_field `meta.ts` must be a number of epoch milliseconds, found a string"),
            (Some(r#"{"meta":{"ts":12},"v":1"#), "not valid JSON"),
            (Some(r#"{"meta":{"ts":12}}"#), "field `v` is missing"),
            (Some(r#"{"meta":{"ts":12},"v":[1]}"#), "field `v` must be a number, found an array"),
            (Some(r#"{"meta":{"ts":1e20},"v":1}"#), "outside the supported event-time range"),
            (Some(r#"{"meta":{"ts":18446744073709551615},"v":1}"#), "outside the supported event-time range"),
            (Some(r#"{"meta":{"ts":-9007199254740993},"v":1}"#), "time_field `meta.ts` (-9007199254740993) is outside the supported event-time range"),
            (None, "tombstone"),
        ];
        for (value, message) in failures {
            let mut out = Emitter::new();
            let error = op
                .process(&event_bytes(None, 12, value, 9), &mut out)
                .expect_err("must fail");
            assert!(!error.retryable);
            assert!(
                error.message.contains(message),
                "{value:?}: {}",
                error.message
            );
            assert!(out.emitted().is_empty());
            // Nothing changed.
            assert_eq!(op.watermark(), Some(10));
            assert_eq!(op.open_windows(), 1);
        }
        // Without time_field, the record timestamp, range-checked.
        let mut op = WindowOperator::new(&window_config(tumbling(10), 0, AggregateFunction::Count));
        let error = op
            .process(&event(None, i64::MIN, "", 0), &mut Emitter::new())
            .expect_err("out of range");
        assert!(error.message.contains("the record timestamp (-9223372036854775808) is outside the supported event-time range"), "{}", error.message);
    }

    #[test]
    fn numeric_window_without_field_reads_the_whole_value() {
        let mut config = window_config(tumbling(10), 0, AggregateFunction::Max);
        config.field = None;
        let mut op = WindowOperator::new(&config);
        let (out, _) = run(
            &mut op,
            &[
                event(None, 1, "5", 0),
                event(None, 2, "7.25", 1),
                event(None, 10, "1", 2),
            ],
        );
        assert_eq!(
            texts(&out),
            [r#"{"key":null,"window_start":0,"window_end":10,"count":2,"max":7.25}"#]
        );
        let error = op
            .process(&event(None, 11, r#"{"v":1}"#, 3), &mut Emitter::new())
            .expect_err("object");
        assert!(
            error
                .message
                .contains("the value (no `field` configured) must be a number, found an object"),
            "{}",
            error.message
        );
    }

    // -- reference model --------------------------------------------------

    const KEYS: [Option<&str>; 4] = [None, Some("a"), Some("b"), Some("c")];

    #[derive(Clone, Debug)]
    struct Input {
        key: Option<&'static str>,
        t: i64,
        x: i64,
    }

    fn inputs() -> impl Strategy<Value = Vec<Input>> {
        let back = prop_oneof![3 => Just(0i64), 1 => 0i64..30];
        prop::collection::vec((0usize..4, 0i64..5, back, -20i64..20), 0..60).prop_map(|raw| {
            let mut clock = -40;
            raw.into_iter()
                .map(|(key, step, back, x)| {
                    clock += step;
                    Input {
                        key: KEYS[key],
                        t: clock - back,
                        x,
                    }
                })
                .collect()
        })
    }

    fn kinds() -> impl Strategy<Value = WindowKind> {
        prop_oneof![
            (1i64..20).prop_map(tumbling),
            (1i64..20, 1i64..12).prop_map(|(size, hop)| WindowKind::Hopping {
                size: ms(size),
                hop: ms(hop)
            }),
            (1i64..15).prop_map(|gap| WindowKind::Session { gap: ms(gap) }),
        ]
    }

    fn functions() -> impl Strategy<Value = AggregateFunction> {
        prop_oneof![
            Just(AggregateFunction::Count),
            Just(AggregateFunction::Sum),
            Just(AggregateFunction::Min),
            Just(AggregateFunction::Max),
            Just(AggregateFunction::Mean),
            Just(AggregateFunction::Percentiles(vec![
                0.0, 25.0, 50.0, 90.0, 100.0
            ])),
        ]
    }

    fn to_events(inputs: &[Input], use_time_field: bool) -> Vec<Event> {
        inputs
            .iter()
            .enumerate()
            .map(|(i, input)| {
                if use_time_field {
                    let value = format!(r#"{{"ts":{},"v":{}}}"#, input.t, input.x);
                    event(input.key, 7, &value, i as u64)
                } else {
                    event(
                        input.key,
                        input.t,
                        &format!(r#"{{"v":{}}}"#, input.x),
                        i as u64,
                    )
                }
            })
            .collect()
    }

    fn config_for(
        kind: WindowKind,
        lateness: i64,
        function: AggregateFunction,
        use_time_field: bool,
    ) -> WindowConfig {
        let mut config = window_config(kind, lateness, function);
        if use_time_field {
            config.time_field = Some(path("ts"));
        }
        config
    }

    struct RefWindow {
        key: Option<&'static str>,
        start: i64,
        end: i64,
        values: Vec<i64>,
    }

    /// The windows a plain replay says should fire: (trigger index, window),
    /// and the indexes of the late events.
    fn reference(
        kind: WindowKind,
        lateness: i64,
        inputs: &[Input],
    ) -> (Vec<(usize, RefWindow)>, Vec<usize>) {
        let millis = |d: Duration| i64::try_from(d.as_millis()).expect("small");
        let mut max: Option<i64> = None;
        let mut open: Vec<RefWindow> = Vec::new();
        let mut fired = Vec::new();
        let mut late = Vec::new();
        for (i, input) in inputs.iter().enumerate() {
            let watermark = max.map(|m| m - lateness);
            let still_open = |end: i64| watermark.is_none_or(|w| end > w);
            match kind {
                WindowKind::Tumbling { .. } | WindowKind::Hopping { .. } => {
                    let (size, hop) = match kind {
                        WindowKind::Tumbling { size } => (millis(size), millis(size)),
                        WindowKind::Hopping { size, hop } => (millis(size), millis(hop)),
                        WindowKind::Session { .. } => unreachable!(),
                    };
                    let starts: Vec<i64> = (input.t - size + 1..=input.t)
                        .filter(|s| s.rem_euclid(hop) == 0 && still_open(s + size))
                        .collect();
                    if starts.is_empty() {
                        late.push(i);
                    }
                    for start in starts {
                        match open
                            .iter_mut()
                            .find(|w| w.key == input.key && w.start == start)
                        {
                            Some(window) => window.values.push(input.x),
                            None => open.push(RefWindow {
                                key: input.key,
                                start,
                                end: start + size,
                                values: vec![input.x],
                            }),
                        }
                    }
                }
                WindowKind::Session { gap } => {
                    let gap = millis(gap);
                    if !still_open(input.t + gap) {
                        late.push(i);
                    } else {
                        let mut merged = RefWindow {
                            key: input.key,
                            start: input.t,
                            end: input.t + gap,
                            values: vec![input.x],
                        };
                        let mut rest = Vec::new();
                        for window in open {
                            if window.key == input.key
                                && window.start < input.t + gap
                                && window.end > input.t
                            {
                                merged.start = merged.start.min(window.start);
                                merged.end = merged.end.max(window.end);
                                merged.values.extend(window.values);
                            } else {
                                rest.push(window);
                            }
                        }
                        rest.push(merged);
                        open = rest;
                    }
                }
            }
            max = Some(max.map_or(input.t, |m| m.max(input.t)));
            let watermark = input.t.max(max.unwrap_or(input.t)) - lateness;
            let (mut ready, keep): (Vec<_>, Vec<_>) =
                open.into_iter().partition(|w| w.end <= watermark);
            open = keep;
            ready.sort_by(|a, b| (a.end, a.start, a.key).cmp(&(b.end, b.start, b.key)));
            fired.extend(ready.into_iter().map(|w| (i, w)));
        }
        (fired, late)
    }

    type Row = (
        u64,
        i64,
        Option<Vec<u8>>,
        BTreeMap<String, serde_json::Value>,
    );

    fn expected_row(function: &AggregateFunction, trigger: usize, window: &RefWindow) -> Row {
        let n = window.values.len() as i64;
        let sum: i64 = window.values.iter().sum();
        let mut fields = BTreeMap::new();
        let number = |v: f64| serde_json::Value::from(v);
        fields.insert(
            "key".to_owned(),
            window
                .key
                .map_or(serde_json::Value::Null, serde_json::Value::from),
        );
        fields.insert("window_start".to_owned(), number(window.start as f64));
        fields.insert("window_end".to_owned(), number(window.end as f64));
        fields.insert("count".to_owned(), number(n as f64));
        match function {
            AggregateFunction::Count => {}
            AggregateFunction::Sum => {
                fields.insert("sum".to_owned(), number(sum as f64));
            }
            AggregateFunction::Min => {
                fields.insert(
                    "min".to_owned(),
                    number(*window.values.iter().min().expect("one") as f64),
                );
            }
            AggregateFunction::Max => {
                fields.insert(
                    "max".to_owned(),
                    number(*window.values.iter().max().expect("one") as f64),
                );
            }
            AggregateFunction::Mean => {
                fields.insert("mean".to_owned(), number(sum as f64 / n as f64));
            }
            AggregateFunction::Percentiles(ps) => {
                let mut sorted = window.values.clone();
                sorted.sort();
                for p in ps {
                    let p = *p as i64;
                    let rank = ((p * n + 99) / 100).max(1);
                    fields.insert(format!("p{p}"), number(sorted[(rank - 1) as usize] as f64));
                }
            }
        }
        (
            trigger as u64,
            window.end - 1,
            window.key.map(|k| k.as_bytes().to_vec()),
            fields,
        )
    }

    fn actual_row(event: &Event) -> Row {
        let value: serde_json::Value =
            serde_json::from_slice(event.value.as_deref().expect("value")).expect("json");
        let fields = value
            .as_object()
            .expect("object")
            .iter()
            .map(|(name, field)| {
                let field = match field {
                    serde_json::Value::Number(n) => {
                        serde_json::Value::from(n.as_f64().expect("finite"))
                    }
                    other => other.clone(),
                };
                (name.clone(), field)
            })
            .collect();
        (
            event.position.0,
            event.timestamp_ms,
            event.key.as_deref().map(<[u8]>::to_vec),
            fields,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn windows_match_reference(
            kind in kinds(),
            lateness in prop_oneof![Just(0i64), 0i64..15],
            function in functions(),
            use_time_field in any::<bool>(),
            inputs in inputs(),
        ) {
            let config = config_for(kind, lateness, function.clone(), use_time_field);
            let mut op = WindowOperator::new(&config);
            let (out, late) = run(&mut op, &to_events(&inputs, use_time_field));
            let (fired, expected_late) = reference(kind, lateness, &inputs);
            let actual: Vec<Row> = out.iter().map(actual_row).collect();
            let expected: Vec<Row> = fired.iter().map(|(i, w)| expected_row(&function, *i, w)).collect();
            prop_assert_eq!(actual, expected);
            let late: Vec<usize> = late.iter().map(|(e, _)| e.position.0 as usize).collect();
            prop_assert_eq!(late, expected_late);
        }

        #[test]
        fn checkpoint_restore_matches_an_uninterrupted_run(
            kind in kinds(),
            lateness in 0i64..15,
            function in functions(),
            use_time_field in any::<bool>(),
            inputs in inputs(),
            actions in prop::collection::vec(prop_oneof![6 => Just(0u8), 2 => Just(1u8), 2 => Just(2u8)], 60),
        ) {
            let config = config_for(kind, lateness, function, use_time_field);
            let events = to_events(&inputs, use_time_field);
            let mut whole = WindowOperator::new(&config);
            let expected = run(&mut whole, &events);

            let mut store = Store::new();
            let mut op = WindowOperator::new(&config);
            let mut out = Emitter::new();
            for (event, action) in events.iter().zip(&actions) {
                op.process(event, &mut out).expect("process");
                if *action >= 1 {
                    checkpoint_into(&mut op, &mut store);
                }
                if *action == 2 {
                    op = WindowOperator::new(&config);
                    op.restore(entries(&store)).expect("restore");
                }
            }
            prop_assert_eq!((out.take(), out.take_late()), expected);

            // The store holds exactly the open windows and the event time.
            checkpoint_into(&mut op, &mut store);
            let windows = store.keys().filter(|key| key.first() == Some(&TAG_WINDOW)).count();
            prop_assert_eq!(windows, op.open_windows());
            prop_assert_eq!(store.contains_key(&[TAG_META][..]), !events.is_empty());
            let mut fresh = WindowOperator::new(&config);
            fresh.restore(entries(&store)).expect("restore");
            prop_assert_eq!(fresh.open_windows(), op.open_windows());
            prop_assert_eq!(fresh.watermark(), op.watermark());
            let mut deltas = Vec::new();
            fresh.checkpoint(&mut deltas);
            prop_assert!(deltas.is_empty());
        }

        #[test]
        fn restore_never_panics_on_arbitrary_entries(
            raw in prop::collection::vec(
                (prop::collection::vec(any::<u8>(), 0..14), prop::collection::vec(any::<u8>(), 0..40)),
                0..6,
            ),
            tag in 0u8..4,
        ) {
            let raw: Vec<(Vec<u8>, Vec<u8>)> = raw
                .into_iter()
                .map(|(mut key, value)| {
                    if let Some(first) = key.first_mut() {
                        *first %= 4;
                        if *first == 0 { *first = tag; }
                    }
                    (key, value)
                })
                .collect();
            for function in [AggregateFunction::Count, AggregateFunction::Sum, AggregateFunction::Percentiles(vec![50.0])] {
                for kind in [tumbling(10), WindowKind::Session { gap: ms(5) }] {
                    let mut op = WindowOperator::new(&window_config(kind, 0, function.clone()));
                    if op.restore(raw.clone()).is_ok() {
                        // Whatever was accepted must also work.
                        let _ = op.process(&event(Some("k"), 1_000_000, r#"{"v":1}"#, 0), &mut Emitter::new());
                    }
                }
                let _ = AggregateOperator::new(&AggregateConfig { function: function.clone(), field: Some(path("v")) }).restore(raw.clone());
            }
            for function in [ReduceFunction::Sum, ReduceFunction::Latest, ReduceFunction::Merge] {
                let _ = ReduceOperator::new(&ReduceConfig { function, field: Some(path("v")) }).restore(raw.clone());
            }
        }
    }

    // -- checkpoints ------------------------------------------------------

    fn summarize(deltas: &[StateDelta]) -> Vec<(u8, Option<i64>, bool)> {
        deltas
            .iter()
            .map(|delta| {
                let start = (delta.key.first() == Some(&TAG_WINDOW)).then(|| {
                    let mut bytes = [0u8; 8];
                    bytes.copy_from_slice(&delta.key[1..9]);
                    unsortable_i64(bytes)
                });
                (delta.key[0], start, delta.value.is_some())
            })
            .collect()
    }

    #[test]
    fn checkpoint_writes_changes_only_and_removes_fired_windows() {
        let mut op = WindowOperator::new(&window_config(tumbling(10), 0, AggregateFunction::Count));
        let mut store = Store::new();
        let mut step = |op: &mut WindowOperator, events: &[Event]| {
            run(op, events);
            summarize(&checkpoint_into(op, &mut store))
        };
        assert_eq!(
            step(&mut op, &[event(Some("a"), 1, "", 0)]),
            [(TAG_META, None, true), (TAG_WINDOW, Some(0), true)]
        );
        assert_eq!(step(&mut op, &[]), []);
        assert_eq!(
            step(&mut op, &[event(Some("a"), 0, "", 1)]),
            [(TAG_WINDOW, Some(0), true)]
        );
        assert_eq!(
            step(&mut op, &[event(Some("a"), 15, "", 2)]),
            [
                (TAG_META, None, true),
                (TAG_WINDOW, Some(0), false),
                (TAG_WINDOW, Some(10), true)
            ]
        );
        // [20, 30) of b opens and fires between checkpoints: nothing about it.
        assert_eq!(
            step(
                &mut op,
                &[event(Some("b"), 21, "", 3), event(Some("a"), 45, "", 4)]
            ),
            [
                (TAG_META, None, true),
                (TAG_WINDOW, Some(10), false),
                (TAG_WINDOW, Some(40), true)
            ]
        );
        assert_eq!(store.len(), 2);
    }

    #[test]
    fn checkpoint_is_complete_after_the_pending_list_was_compacted() {
        let config = window_config(tumbling(10), 3, AggregateFunction::Sum);
        let events: Vec<Event> = (0..30_000)
            .map(|i: i64| {
                let key = format!("k{}", i % 97);
                event(
                    Some(&key),
                    i / 7 - (i % 5),
                    &format!(r#"{{"v":{}}}"#, i % 11),
                    i as u64,
                )
            })
            .collect();
        let (head, tail) = events.split_at(20_000);
        let mut whole = WindowOperator::new(&config);
        run(&mut whole, head);
        let expected = run(&mut whole, tail);

        let mut op = WindowOperator::new(&config);
        let mut store = Store::new();
        run(&mut op, &head[..500]);
        checkpoint_into(&mut op, &mut store);
        run(&mut op, &head[500..]);
        assert!(
            op.book.pending.entries.len() < 10_000,
            "pending was compacted"
        );
        checkpoint_into(&mut op, &mut store);
        let windows = store.keys().filter(|key| key[0] == TAG_WINDOW).count();
        assert_eq!(windows, op.open_windows());
        let mut restored = WindowOperator::new(&config);
        restored.restore(entries(&store)).expect("restore");
        assert_eq!(run(&mut restored, tail), expected);
    }

    #[test]
    fn session_merges_across_checkpoints_remove_the_absorbed_entries() {
        let kind = WindowKind::Session { gap: ms(10) };
        let config = window_config(kind, 100, AggregateFunction::Sum);
        let value = |v: i64| format!("{{\"v\":{v}}}");
        let mut op = WindowOperator::new(&config);
        let mut store = Store::new();
        run(
            &mut op,
            &[
                event(Some("a"), 0, &value(1), 0),
                event(Some("a"), 12, &value(2), 1),
                event(Some("a"), 30, &value(4), 2),
            ],
        );
        checkpoint_into(&mut op, &mut store);
        assert_eq!(store.len(), 4);
        // 21 bridges [12, 22) and [30, 40): [12, 40) stays, [30, 40) goes.
        run(&mut op, &[event(Some("a"), 21, &value(8), 3)]);
        let deltas = checkpoint_into(&mut op, &mut store);
        assert_eq!(
            summarize(&deltas),
            [(TAG_WINDOW, Some(12), true), (TAG_WINDOW, Some(30), false)]
        );
        // -3 moves the start of [0, 10): a new entry, the old one goes.
        run(&mut op, &[event(Some("a"), -3, &value(16), 4)]);
        let deltas = checkpoint_into(&mut op, &mut store);
        assert_eq!(
            summarize(&deltas),
            [(TAG_WINDOW, Some(-3), true), (TAG_WINDOW, Some(0), false)]
        );
        // 5 bridges [-3, 10) and [12, 40).
        run(&mut op, &[event(Some("a"), 5, &value(32), 5)]);
        let deltas = checkpoint_into(&mut op, &mut store);
        assert_eq!(
            summarize(&deltas),
            [(TAG_WINDOW, Some(-3), true), (TAG_WINDOW, Some(12), false)]
        );
        assert_eq!(store.len(), 2);
        let mut restored = WindowOperator::new(&config);
        restored.restore(entries(&store)).expect("restore");
        let (out, _) = run(&mut restored, &[event(None, 200, &value(0), 6)]);
        assert_eq!(
            texts(&out),
            [r#"{"key":"a","window_start":-3,"window_end":40,"count":6,"sum":63}"#]
        );
    }

    #[test]
    fn restore_with_less_lateness_fires_on_the_next_event() {
        let mut op =
            WindowOperator::new(&window_config(tumbling(10), 20, AggregateFunction::Count));
        run(&mut op, &[event(None, 5, "", 0), event(None, 25, "", 1)]);
        let mut store = Store::new();
        checkpoint_into(&mut op, &mut store);
        let mut strict =
            WindowOperator::new(&window_config(tumbling(10), 0, AggregateFunction::Count));
        strict.restore(entries(&store)).expect("restore");
        let (out, late) = run(&mut strict, &[event(None, 3, "", 2)]);
        assert_eq!(late.len(), 1);
        assert_eq!(
            texts(&out),
            [r#"{"key":null,"window_start":0,"window_end":10,"count":1}"#]
        );
        assert_eq!(out[0].position, Offset(2));
    }

    fn valid_window_store(kind: WindowKind, function: AggregateFunction) -> Store {
        let mut op = WindowOperator::new(&window_config(kind, 0, function));
        run(
            &mut op,
            &[
                event(Some("a"), 21, r#"{"v":2}"#, 0),
                event(None, 25, r#"{"v":3}"#, 1),
            ],
        );
        let mut store = Store::new();
        checkpoint_into(&mut op, &mut store);
        store
    }

    fn window_key(start: i64, key: Option<&[u8]>) -> Vec<u8> {
        let mut out = vec![TAG_WINDOW];
        out.extend_from_slice(&sortable_i64(start));
        put_group(&mut out, key);
        out
    }

    fn window_value(tag: u8, end: i64, count: u64, payload: &[f64]) -> Vec<u8> {
        let mut out = vec![STATE_VERSION, tag];
        out.extend_from_slice(&end.to_le_bytes());
        out.extend_from_slice(&count.to_le_bytes());
        for value in payload {
            out.extend_from_slice(&value.to_le_bytes());
        }
        out
    }

    #[test]
    fn restore_rejects_corrupt_window_entries() {
        let sum = AggregateFunction::Sum;
        let base = valid_window_store(tumbling(10), sum.clone());
        assert_eq!(base.len(), 3);
        let meta = (vec![TAG_META], base[&vec![TAG_META]].clone());
        let a_key = window_key(20, Some(b"a"));
        let a_value = base[&a_key].clone();
        assert_eq!(a_value, window_value(1, 30, 1, &[2.0]));

        let with = |extra: Vec<(Vec<u8>, Vec<u8>)>| {
            let mut all = vec![meta.clone()];
            all.extend(extra);
            all
        };
        let mut truncated = a_value.clone();
        truncated.pop();
        let mut trailing = a_value.clone();
        trailing.push(0);
        let mut version = a_value.clone();
        version[0] = 9;
        let mut bad_group = a_key.clone();
        bad_group[9] = 7;
        let mut none_with_bytes = window_key(20, None);
        none_with_bytes.push(1);
        type Entries = Vec<(Vec<u8>, Vec<u8>)>;
        let cases: Vec<(&str, Entries, &str)> = vec![
            (
                "empty key",
                with(vec![(vec![], vec![])]),
                "the key is empty",
            ),
            (
                "unknown tag",
                with(vec![(vec![7, 1], vec![])]),
                "unknown entry tag 0x07",
            ),
            (
                "meta key",
                vec![(vec![TAG_META, 0], meta.1.clone())],
                "extra bytes",
            ),
            (
                "meta value",
                vec![(vec![TAG_META], vec![STATE_VERSION, 1, 2])],
                "truncated",
            ),
            (
                "meta range",
                vec![(vec![TAG_META], {
                    let mut v = vec![STATE_VERSION];
                    v.extend_from_slice(&i64::MAX.to_le_bytes());
                    v
                })],
                "out of range",
            ),
            (
                "truncated",
                with(vec![(a_key.clone(), truncated)]),
                "truncated",
            ),
            (
                "trailing",
                with(vec![(a_key.clone(), trailing)]),
                "unexpected bytes",
            ),
            (
                "version",
                with(vec![(a_key.clone(), version)]),
                "unknown version 9",
            ),
            (
                "function",
                with(vec![(a_key.clone(), window_value(0, 30, 1, &[]))]),
                "this window computes sum",
            ),
            (
                "misaligned",
                with(vec![(
                    window_key(23, Some(b"a")),
                    window_value(1, 33, 1, &[2.0]),
                )]),
                "not a window of 10 ms",
            ),
            (
                "size",
                with(vec![(a_key.clone(), window_value(1, 40, 1, &[2.0]))]),
                "not a window of 10 ms",
            ),
            (
                "count 0",
                with(vec![(a_key.clone(), window_value(1, 30, 0, &[2.0]))]),
                "the count is 0",
            ),
            (
                "group marker",
                with(vec![(bad_group, a_value.clone())]),
                "unknown group marker",
            ),
            (
                "keyless extra",
                with(vec![(none_with_bytes, a_value.clone())]),
                "after the keyless-group marker",
            ),
            (
                "short key",
                with(vec![(vec![TAG_WINDOW, 1, 2], a_value.clone())]),
                "truncated",
            ),
            (
                "no meta",
                vec![(a_key.clone(), a_value.clone())],
                "without the largest-event-time entry",
            ),
            (
                "duplicate",
                with(vec![
                    (a_key.clone(), a_value.clone()),
                    (a_key.clone(), a_value.clone()),
                ]),
                "a second window",
            ),
            (
                "huge time",
                with(vec![(
                    window_key(i64::MIN, Some(b"a")),
                    window_value(1, i64::MIN + 10, 1, &[2.0]),
                )]),
                "out of range",
            ),
        ];
        for (name, entries, message) in cases {
            let mut op = WindowOperator::new(&window_config(tumbling(10), 0, sum.clone()));
            let error = op.restore(entries).expect_err(name);
            assert!(!error.retryable, "{name}");
            assert!(error.message.contains(message), "{name}: {}", error.message);
            assert!(
                error.message.starts_with("corrupt window state"),
                "{name}: {}",
                error.message
            );
            assert_eq!(
                (op.open_windows(), op.watermark()),
                (0, None),
                "{name}: left empty"
            );
        }

        // Percentiles: the value count must match.
        let percentiles = AggregateFunction::Percentiles(vec![50.0]);
        let store = valid_window_store(tumbling(10), percentiles.clone());
        let mut op = WindowOperator::new(&window_config(tumbling(10), 0, percentiles.clone()));
        op.restore(entries(&store)).expect("valid");
        let bad = with(vec![(a_key.clone(), window_value(5, 30, 2, &[1.0]))]);
        let error = op.restore(bad).expect_err("count mismatch");
        assert!(
            error.message.contains("the count is 2 but 8 bytes"),
            "{}",
            error.message
        );

        // Sessions must not overlap.
        let kind = WindowKind::Session { gap: ms(5) };
        let store = valid_window_store(kind, sum.clone());
        let mut op = WindowOperator::new(&window_config(kind, 0, sum.clone()));
        op.restore(entries(&store)).expect("valid");
        let overlapping = with(vec![
            (window_key(20, Some(b"a")), window_value(1, 30, 1, &[1.0])),
            (window_key(25, Some(b"a")), window_value(1, 31, 1, &[1.0])),
        ]);
        let error = op.restore(overlapping).expect_err("overlap");
        assert!(error.message.contains("overlap"), "{}", error.message);
        let short = with(vec![(
            window_key(20, Some(b"a")),
            window_value(1, 23, 1, &[1.0]),
        )]);
        assert!(op
            .restore(short)
            .expect_err("short")
            .message
            .contains("shorter than the gap"));
    }

    // -- aggregate --------------------------------------------------------

    fn aggregate(function: AggregateFunction) -> AggregateOperator {
        AggregateOperator::new(&AggregateConfig {
            function,
            field: Some(path("v")),
        })
    }

    #[test]
    fn aggregate_emits_the_running_result_after_each_event() {
        let mut op = aggregate(AggregateFunction::Count);
        let mut input = event(Some("a"), 5, "anything", 0);
        input.headers.push(Header {
            key: "h".into(),
            value: Bytes::new(),
        });
        let (out, _) = run(
            &mut op,
            &[
                input.clone(),
                event(Some("a"), 6, "", 1),
                event(None, 7, "", 2),
            ],
        );
        assert_eq!(
            texts(&out),
            [
                r#"{"key":"a","count":1}"#,
                r#"{"key":"a","count":2}"#,
                r#"{"key":null,"count":1}"#
            ]
        );
        assert_eq!(out[0].timestamp_ms, 5);
        assert_eq!(out[0].origin, input.origin);
        assert_eq!(out[0].key, input.key);
        assert!(out[0].headers.is_empty());
        assert_eq!(op.keys(), 2);

        let values = [r#"{"v":3}"#, r#"{"v":-1}"#, r#"{"v":2.5}"#];
        let expect = [
            (
                AggregateFunction::Sum,
                [r#""sum":3"#, r#""sum":2"#, r#""sum":4.5"#],
            ),
            (
                AggregateFunction::Min,
                [r#""min":3"#, r#""min":-1"#, r#""min":-1"#],
            ),
            (
                AggregateFunction::Max,
                [r#""max":3"#, r#""max":3"#, r#""max":3"#],
            ),
            (
                AggregateFunction::Mean,
                [r#""mean":3"#, r#""mean":1"#, r#""mean":1.5"#],
            ),
            (
                AggregateFunction::Percentiles(vec![50.0, 100.0]),
                [
                    r#""p50":3,"p100":3"#,
                    r#""p50":-1,"p100":3"#,
                    r#""p50":2.5,"p100":3"#,
                ],
            ),
        ];
        for (function, fields) in expect {
            let mut op = aggregate(function);
            let events: Vec<Event> = values
                .iter()
                .enumerate()
                .map(|(i, v)| event(Some("k"), 1, v, i as u64))
                .collect();
            let (out, _) = run(&mut op, &events);
            let expected: Vec<String> = fields
                .iter()
                .enumerate()
                .map(|(i, f)| format!(r#"{{"key":"k","count":{},{f}}}"#, i + 1))
                .collect();
            assert_eq!(texts(&out), expected);
        }
    }

    #[test]
    fn aggregate_errors_are_permanent_and_change_nothing() {
        let mut op = aggregate(AggregateFunction::Sum);
        run(&mut op, &[event(Some("a"), 1, r#"{"v":1}"#, 0)]);
        for (value, message) in [
            (Some(r#"{"w":1}"#), "field `v` is missing"),
            (Some(r#"{"v":true}"#), "found a boolean"),
            (Some("{"), "not valid JSON"),
            (None, "tombstone"),
        ] {
            let error = op
                .process(&event_bytes(Some(b"b"), 1, value, 1), &mut Emitter::new())
                .expect_err("fails");
            assert!(!error.retryable);
            assert!(error.message.contains(message), "{}", error.message);
        }
        assert_eq!(op.keys(), 1);
    }

    #[test]
    fn aggregate_checkpoint_and_restore() {
        for function in [
            AggregateFunction::Mean,
            AggregateFunction::Percentiles(vec![10.0, 50.0, 90.0]),
        ] {
            let events: Vec<Event> = (0..200)
                .map(|i: i64| {
                    let key = (i % 3 != 0).then(|| format!("k{}", i % 5));
                    event(
                        key.as_deref(),
                        i,
                        &format!(r#"{{"v":{}}}"#, (i * 37) % 101),
                        i as u64,
                    )
                })
                .collect();
            let mut whole = aggregate(function.clone());
            let expected = run(&mut whole, &events);
            let mut op = aggregate(function.clone());
            let mut store = Store::new();
            let mut out = Vec::new();
            for (i, chunk) in events.chunks(30).enumerate() {
                out.extend(run(&mut op, chunk).0);
                let deltas = checkpoint_into(&mut op, &mut store);
                assert!(deltas
                    .iter()
                    .all(|d| d.value.is_some() && d.key[0] == TAG_AGGREGATE));
                let mut again = Vec::new();
                op.checkpoint(&mut again);
                assert!(again.is_empty());
                if i % 2 == 1 {
                    op = aggregate(function.clone());
                    op.restore(entries(&store)).expect("restore");
                }
            }
            assert_eq!(out, expected.0);
            assert_eq!(store.len(), op.keys());
        }
    }

    #[test]
    fn aggregate_restore_rejects_corrupt_entries() {
        let mut op = aggregate(AggregateFunction::Sum);
        run(&mut op, &[event(Some("a"), 1, r#"{"v":1}"#, 0)]);
        let mut store = Store::new();
        checkpoint_into(&mut op, &mut store);
        let (key, value) = store
            .iter()
            .next()
            .map(|(k, v)| (k.clone(), v.clone()))
            .expect("one");
        assert_eq!(key, [TAG_AGGREGATE, GROUP_SOME, b'a']);
        let mut zero = value.clone();
        zero[2..10].copy_from_slice(&0u64.to_le_bytes());
        let cases = [
            (
                vec![(vec![TAG_WINDOW, 0], value.clone())],
                "unknown entry tag",
            ),
            (
                vec![(vec![TAG_AGGREGATE], value.clone())],
                "the group key is missing",
            ),
            (vec![(key.clone(), value[..5].to_vec())], "truncated"),
            (
                vec![(key.clone(), [&value[..], &[0][..]].concat())],
                "unexpected bytes",
            ),
            (vec![(key.clone(), zero)], "the count is 0"),
            (
                vec![(key.clone(), value.clone()), (key.clone(), value.clone())],
                "second entry",
            ),
        ];
        for (entries, message) in cases {
            let error = aggregate(AggregateFunction::Sum)
                .restore(entries)
                .expect_err(message);
            assert!(error.message.contains(message), "{}", error.message);
        }
        let error = aggregate(AggregateFunction::Max)
            .restore(entries(&store))
            .expect_err("function");
        assert!(
            error.message.contains("this operator computes max"),
            "{}",
            error.message
        );
    }

    // -- reduce -----------------------------------------------------------

    fn reduce(function: ReduceFunction) -> ReduceOperator {
        ReduceOperator::new(&ReduceConfig {
            function,
            field: Some(path("v")),
        })
    }

    #[test]
    fn reduce_sum_min_max() {
        let events = [
            event(Some("a"), 1, r#"{"v":3}"#, 0),
            event(Some("a"), 2, r#"{"v":-4.5}"#, 1),
            event(None, 3, r#"{"v":10}"#, 2),
            event(Some("a"), 4, r#"{"v":7}"#, 3),
        ];
        for (function, expected) in [
            (
                ReduceFunction::Sum,
                [
                    r#"{"key":"a","sum":3}"#,
                    r#"{"key":"a","sum":-1.5}"#,
                    r#"{"key":null,"sum":10}"#,
                    r#"{"key":"a","sum":5.5}"#,
                ],
            ),
            (
                ReduceFunction::Min,
                [
                    r#"{"key":"a","min":3}"#,
                    r#"{"key":"a","min":-4.5}"#,
                    r#"{"key":null,"min":10}"#,
                    r#"{"key":"a","min":-4.5}"#,
                ],
            ),
            (
                ReduceFunction::Max,
                [
                    r#"{"key":"a","max":3}"#,
                    r#"{"key":"a","max":3}"#,
                    r#"{"key":null,"max":10}"#,
                    r#"{"key":"a","max":7}"#,
                ],
            ),
        ] {
            let mut op = reduce(function);
            let (out, _) = run(&mut op, &events);
            assert_eq!(texts(&out), expected);
            assert_eq!(out[3].timestamp_ms, 4);
            let error = op
                .process(&event(Some("a"), 5, r#"{"v":"1"}"#, 4), &mut Emitter::new())
                .expect_err("string");
            assert!(
                error
                    .message
                    .contains("field `v` must be a number, found a string"),
                "{}",
                error.message
            );
            let error = op
                .process(&event_bytes(Some(b"a"), 5, None, 4), &mut Emitter::new())
                .expect_err("tombstone");
            assert!(error.message.contains("tombstone"), "{}", error.message);
        }
    }

    #[test]
    fn reduce_latest_passes_events_through_and_tombstones_clear() {
        let mut op = reduce(ReduceFunction::Latest);
        let events = [
            event(Some("a"), 1, "first", 0),
            event(Some("a"), 2, "not json at all", 1),
            event(Some("b"), 3, "x", 2),
            event_bytes(Some(b"a"), 4, None, 3),
        ];
        let (out, _) = run(&mut op, &events);
        assert_eq!(out, events);
        assert_eq!(op.keys(), 1);
    }

    #[test]
    fn reduce_merge_merges_objects_later_fields_winning() {
        let mut op = reduce(ReduceFunction::Merge);
        let (out, _) = run(
            &mut op,
            &[
                event(Some("a"), 1, r#"{"x":1,"y":{"z":1}}"#, 0),
                event(Some("a"), 2, r#"{"y":2,"w":[1]}"#, 1),
                event(Some("b"), 3, r#"{}"#, 2),
            ],
        );
        assert_eq!(
            texts(&out),
            [r#"{"x":1,"y":{"z":1}}"#, r#"{"w":[1],"x":1,"y":2}"#, "{}"]
        );
        assert_eq!(out[1].position, Offset(1));
        for (value, message) in [
            ("[1]", "found an array"),
            ("3", "found a number"),
            ("{", "not valid JSON"),
        ] {
            let error = op
                .process(&event(Some("a"), 4, value, 3), &mut Emitter::new())
                .expect_err(value);
            assert!(!error.retryable);
            assert!(error.message.contains(message), "{}", error.message);
        }
        let (out, _) = run(
            &mut op,
            &[
                event_bytes(Some(b"a"), 5, None, 4),
                event(Some("a"), 6, r#"{"q":0}"#, 5),
            ],
        );
        assert_eq!(out[0].value, None);
        assert_eq!(texts(&out[1..]), [r#"{"q":0}"#]);
    }

    #[test]
    fn reduce_checkpoint_and_restore() {
        for function in [
            ReduceFunction::Sum,
            ReduceFunction::Latest,
            ReduceFunction::Merge,
        ] {
            let events: Vec<Event> = (0..120u64)
                .map(|i| {
                    let key = format!("k{}", i % 4);
                    if i % 9 == 8 && function != ReduceFunction::Sum {
                        event_bytes(Some(key.as_bytes()), i as i64, None, i)
                    } else {
                        event(
                            Some(&key),
                            i as i64,
                            &format!(r#"{{"v":{},"f{}":{}}}"#, i % 13, i % 3, i),
                            i,
                        )
                    }
                })
                .collect();
            let mut whole = reduce(function);
            let expected = run(&mut whole, &events);
            let mut op = reduce(function);
            let mut store = Store::new();
            let mut out = Vec::new();
            let mut removals = 0;
            for (i, chunk) in events.chunks(7).enumerate() {
                out.extend(run(&mut op, chunk).0);
                removals += checkpoint_into(&mut op, &mut store)
                    .iter()
                    .filter(|d| d.value.is_none())
                    .count();
                if i % 3 == 2 {
                    op = reduce(function);
                    op.restore(entries(&store)).expect("restore");
                }
            }
            assert_eq!(out, expected.0, "{function:?}");
            assert_eq!(store.len(), op.keys());
            assert_eq!(removals > 0, function != ReduceFunction::Sum);
        }
    }

    #[test]
    fn reduce_restore_rejects_corrupt_entries() {
        let key = vec![TAG_REDUCE, GROUP_SOME, b'a'];
        let cases = [
            (
                ReduceFunction::Sum,
                vec![STATE_VERSION, 1, 0, 0],
                "truncated",
            ),
            (
                ReduceFunction::Sum,
                vec![STATE_VERSION, 2, 0, 0, 0, 0, 0, 0, 0, 0],
                "this operator computes sum",
            ),
            (
                ReduceFunction::Merge,
                [&[STATE_VERSION, 5][..], b"[1]"].concat(),
                "not an object",
            ),
            (
                ReduceFunction::Merge,
                [&[STATE_VERSION, 5][..], b"{"].concat(),
                "not JSON",
            ),
            (ReduceFunction::Latest, vec![2, 4], "unknown version 2"),
        ];
        for (function, value, message) in cases {
            let error = reduce(function)
                .restore(vec![(key.clone(), value)])
                .expect_err(message);
            assert!(error.message.contains(message), "{}", error.message);
            assert!(
                error
                    .message
                    .starts_with("corrupt reduce state entry 0x0301"),
                "{}",
                error.message
            );
        }
        let error = reduce(ReduceFunction::Latest)
            .restore(vec![(vec![TAG_AGGREGATE, 0], vec![1, 4])])
            .expect_err("tag");
        assert!(
            error.message.contains("unknown entry tag 0x02"),
            "{}",
            error.message
        );
        let mut op = reduce(ReduceFunction::Latest);
        op.restore(vec![(key.clone(), vec![STATE_VERSION, 4])])
            .expect("an empty latest value is valid");
        assert_eq!(op.keys(), 1);
    }
}
