//! JSON field paths, predicates and projections.
//!
//! - [`FieldPath`]: a dotted path into a JSON value, to read, set and remove.
//! - [`parse`] and [`parse_at`]: JSON text to a value; `parse_at` builds
//!   only the value at one path, which is what `filter`, `extract`,
//!   `key_by` and `event_time` need.
//! - [`Predicate::matches`], [`MapConfig::apply`], [`key_text`],
//!   [`timestamp_ms`]: what the built-in operators do with values.

use super::config::{MapConfig, Predicate, Test};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::fmt;

/// A dotted path into a JSON value: `"span.attributes.http_status"`. A
/// segment that is all digits also indexes arrays (`"items.0.id"`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldPath {
    text: String,
    segments: Vec<String>,
}

impl FieldPath {
    /// Parses a path: one or more non-empty segments separated by `.`.
    pub fn parse(text: &str) -> Result<FieldPath, String> {
        if text.is_empty() || text.split('.').any(str::is_empty) {
            return Err(format!(
                "invalid field path {text:?}: one or more names separated by \".\", none empty"
            ));
        }
        Ok(FieldPath {
            text: text.to_owned(),
            segments: text.split('.').map(str::to_owned).collect(),
        })
    }

    /// The path as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Its segments.
    pub fn segments(&self) -> &[String] {
        &self.segments
    }

    /// The value at this path, if there is one.
    pub fn get<'v>(&self, value: &'v serde_json::Value) -> Option<&'v serde_json::Value> {
        self.segments
            .iter()
            .try_fold(value, |current, segment| match current {
                serde_json::Value::Object(map) => map.get(segment),
                serde_json::Value::Array(items) => segment
                    .parse::<usize>()
                    .ok()
                    .and_then(|index| items.get(index)),
                _ => None,
            })
    }
}

impl std::fmt::Display for FieldPath {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.text)
    }
}

// ---------------------------------------------------------------------------
// Reading, writing and removing values at a path.

impl FieldPath {
    /// The value at this path, mutably, if there is one.
    pub fn get_mut<'v>(&self, value: &'v mut Value) -> Option<&'v mut Value> {
        self.segments
            .iter()
            .try_fold(value, |current, segment| match current {
                Value::Object(map) => map.get_mut(segment),
                Value::Array(items) => segment
                    .parse::<usize>()
                    .ok()
                    .and_then(move |index| items.get_mut(index)),
                _ => None,
            })
    }

    /// Removes the value at this path and returns it; `None` (and nothing
    /// changed) when there is none. An array element is removed, so later
    /// elements move down by one.
    pub fn remove(&self, value: &mut Value) -> Option<Value> {
        let (last, parents) = self.segments.split_last()?;
        let parent = parents
            .iter()
            .try_fold(value, |current, segment| match current {
                Value::Object(map) => map.get_mut(segment),
                Value::Array(items) => segment
                    .parse::<usize>()
                    .ok()
                    .and_then(move |index| items.get_mut(index)),
                _ => None,
            })?;
        match parent {
            Value::Object(map) => map.remove(last),
            Value::Array(items) => {
                let index = last.parse::<usize>().ok()?;
                (index < items.len()).then(|| items.remove(index))
            }
            _ => None,
        }
    }

    /// Stores `new` at this path, replacing what was there.
    ///
    /// Missing objects on the way are created, and so is a `null` on the way
    /// (it becomes an object). An existing array is indexed by an all-digit
    /// segment, which must name an existing element. Any other value on the
    /// way (a string, a number, a boolean) is an error, and `root` is left
    /// as it was.
    pub fn set(&self, root: &mut Value, new: Value) -> Result<(), String> {
        // Check first, so that a failed set changes nothing.
        self.check_settable(root)?;
        let mut current = root;
        for segment in &self.segments {
            if current.is_null() {
                *current = Value::Object(Map::new());
            }
            current = match current {
                Value::Object(map) => map.entry(segment.as_str()).or_insert(Value::Null),
                Value::Array(items) => match segment.parse::<usize>().ok() {
                    Some(index) if index < items.len() => &mut items[index],
                    // `check_settable` rules this out; kept total.
                    _ => return Err(self.cannot_set(segment, "an array")),
                },
                // `check_settable` rules this out; kept total.
                _ => return Err(self.cannot_set(segment, "not an object")),
            };
        }
        *current = new;
        Ok(())
    }

    /// Whether [`FieldPath::set`] can store at this path in `root`.
    fn check_settable(&self, root: &Value) -> Result<(), String> {
        let mut current = Some(root);
        for (depth, segment) in self.segments.iter().enumerate() {
            current = match current {
                // Missing or null: created from here on.
                None | Some(Value::Null) => return Ok(()),
                Some(Value::Object(map)) => map.get(segment),
                Some(Value::Array(items)) => match segment.parse::<usize>() {
                    Ok(index) if index < items.len() => items.get(index),
                    _ => {
                        return Err(format!(
                            "cannot set `{self}`: `{}` is an array of {} elements and {segment:?} \
                             is not the index of one",
                            self.prefix(depth),
                            items.len()
                        ))
                    }
                },
                Some(other) => {
                    return Err(format!(
                        "cannot set `{self}`: `{}` is {}, not an object",
                        self.prefix(depth),
                        type_name(other)
                    ))
                }
            };
        }
        Ok(())
    }

    fn cannot_set(&self, segment: &str, what: &str) -> String {
        format!("cannot set `{self}`: the value before {segment:?} is {what}")
    }

    /// The first `count` segments as text (`"$"`, the whole value, for 0).
    fn prefix(&self, count: usize) -> String {
        if count == 0 {
            "$".to_owned()
        } else {
            self.segments[..count].join(".")
        }
    }
}

/// A JSON value's type, with its article, for messages: "a string", "an object".
pub fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

// ---------------------------------------------------------------------------
// Parsing.

/// Parses a whole JSON document. The bytes must be UTF-8 (checked here, so
/// that invalid bytes are reported even inside strings). The error describes
/// what is wrong, for `value is not JSON: ...`.
pub fn parse(json: &[u8]) -> Result<Value, String> {
    let text = utf8(json)?;
    serde_json::from_str(text).map_err(|error| error.to_string())
}

/// Parses a JSON document and returns only the value at `path` (`None`
/// when it has none). The whole document is checked, as [`parse`] does, but
/// nothing outside `path` is built: no strings copied, no maps allocated.
/// Of duplicate keys the last wins, as with [`parse`].
pub fn parse_at(json: &[u8], path: &FieldPath) -> Result<Option<Value>, String> {
    let text = utf8(json)?;
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let found = PathSeed {
        segments: &path.segments,
    }
    .deserialize(&mut deserializer)
    .map_err(|error| error.to_string())?;
    deserializer.end().map_err(|error| error.to_string())?;
    Ok(found)
}

fn utf8(json: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(json).map_err(|error| format!("invalid UTF-8: {error}"))
}

/// Deserializes the value at `segments` of whatever comes next, skipping the rest.
struct PathSeed<'p> {
    segments: &'p [String],
}

impl<'de> DeserializeSeed<'de> for PathSeed<'_> {
    type Value = Option<Value>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Option<Value>, D::Error> {
        match self.segments.split_first() {
            None => Value::deserialize(deserializer).map(Some),
            Some((segment, rest)) => deserializer.deserialize_any(PathVisitor { segment, rest }),
        }
    }
}

/// Looks for `segment` in an object or array; a scalar has no fields.
struct PathVisitor<'p> {
    segment: &'p str,
    rest: &'p [String],
}

impl<'de> Visitor<'de> for PathVisitor<'_> {
    type Value = Option<Value>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Option<Value>, E> {
        Ok(None)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Option<Value>, E> {
        Ok(None)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Option<Value>, E> {
        Ok(None)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Option<Value>, E> {
        Ok(None)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Option<Value>, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Option<Value>, E> {
        Ok(None)
    }

    fn visit_none<E: de::Error>(self) -> Result<Option<Value>, E> {
        Ok(None)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<Value>, A::Error> {
        let mut found = None;
        while let Some(is_segment) = map.next_key_seed(KeyIs(self.segment))? {
            if is_segment {
                // A later duplicate replaces an earlier one, as in a Value.
                found = map.next_value_seed(PathSeed {
                    segments: self.rest,
                })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Option<Value>, A::Error> {
        let wanted = self.segment.parse::<usize>().ok();
        let mut found = None;
        let mut index = 0usize;
        loop {
            if wanted == Some(index) {
                match seq.next_element_seed(PathSeed {
                    segments: self.rest,
                })? {
                    Some(value) => found = value,
                    None => break,
                }
            } else if seq.next_element::<IgnoredAny>()?.is_none() {
                break;
            }
            index = index.saturating_add(1);
        }
        Ok(found)
    }
}

/// Compares an object key with a segment without copying it.
struct KeyIs<'p>(&'p str);

impl<'de> DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyIs<'_> {
    type Value = bool;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<bool, E> {
        Ok(key == self.0)
    }
}

// ---------------------------------------------------------------------------
// Comparisons, predicates, keys and timestamps.

/// JSON equality with numbers compared by value: `5 == 5.0`, and so inside
/// arrays and objects. Integers are compared exactly; a float against
/// anything as `f64`.
pub fn json_equal(left: &Value, right: &Value) -> bool {
    match (left, right) {
        (Value::Number(left), Value::Number(right)) => numbers_equal(left, right),
        (Value::Array(left), Value::Array(right)) => {
            left.len() == right.len()
                && left
                    .iter()
                    .zip(right)
                    .all(|(left, right)| json_equal(left, right))
        }
        (Value::Object(left), Value::Object(right)) => {
            left.len() == right.len()
                && left
                    .iter()
                    .all(|(key, left)| right.get(key).is_some_and(|right| json_equal(left, right)))
        }
        _ => left == right,
    }
}

fn numbers_equal(left: &serde_json::Number, right: &serde_json::Number) -> bool {
    match (integer(left), integer(right)) {
        (Some(left), Some(right)) => left == right,
        _ => match (left.as_f64(), right.as_f64()) {
            (Some(left), Some(right)) => left == right,
            _ => false,
        },
    }
}

fn integer(number: &serde_json::Number) -> Option<i128> {
    number
        .as_i64()
        .map(i128::from)
        .or_else(|| number.as_u64().map(i128::from))
}

impl Predicate {
    /// Whether `value` (a whole JSON value) passes this predicate.
    pub fn matches(&self, value: &Value) -> bool {
        self.test.matches_field(self.field.get(value))
    }
}

impl Test {
    /// Whether the value found at the predicate's field (`None`: there is
    /// none) passes this test.
    ///
    /// - `Equals`: present and equal ([`json_equal`]: `5` equals `5.0`).
    /// - `NotEquals`: missing, or present and not equal.
    /// - `GreaterThan`, `LessThan`: present, a number, and above (below)
    ///   the bound; anything else (a numeric string, too) does not pass.
    /// - `Exists(true)`: present (a `null` is present); `Exists(false)`: missing.
    /// - `OneOf`: present and equal to one of the values.
    pub fn matches_field(&self, field: Option<&Value>) -> bool {
        match self {
            Test::Equals(expected) => field.is_some_and(|found| json_equal(found, expected)),
            Test::NotEquals(expected) => !field.is_some_and(|found| json_equal(found, expected)),
            Test::GreaterThan(bound) => field
                .and_then(Value::as_f64)
                .is_some_and(|number| number > *bound),
            Test::LessThan(bound) => field
                .and_then(Value::as_f64)
                .is_some_and(|number| number < *bound),
            Test::Exists(expected) => field.is_some() == *expected,
            Test::OneOf(values) => {
                field.is_some_and(|found| values.iter().any(|expected| json_equal(found, expected)))
            }
        }
    }
}

/// The text of a JSON value used as a key (`key_by`, sink row keys): a
/// string as it is, a number or a boolean as its JSON text (`42`, `1.5`,
/// `true`). `None` for `null`, arrays and objects.
pub fn key_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

/// An event time from a JSON value, in milliseconds since the Unix epoch:
/// an integer (epoch milliseconds; a float with no fraction is accepted),
/// or an RFC 3339 string ([`parse_rfc3339_ms`]).
pub fn timestamp_ms(value: &Value) -> Result<i64, String> {
    const EXPECTED: &str = "expected epoch milliseconds (an integer) or an RFC 3339 string \
                            like \"2024-05-01T12:00:00.250Z\"";
    match value {
        Value::Number(number) => {
            if let Some(ms) = number.as_i64() {
                return Ok(ms);
            }
            // 2^63 as f64: the first float past i64::MAX.
            const LIMIT: f64 = 9_223_372_036_854_775_808.0;
            match number.as_f64() {
                Some(ms)
                    if ms.is_finite() && ms.fract() == 0.0 && (-LIMIT..LIMIT).contains(&ms) =>
                {
                    // Exact: a whole number within i64's range.
                    Ok(ms as i64)
                }
                _ => Err(format!("{number} is not a timestamp: {EXPECTED}")),
            }
        }
        Value::String(text) => parse_rfc3339_ms(text).ok_or_else(|| {
            let shown: String = text.chars().take(64).collect();
            format!("{shown:?} is not a timestamp: {EXPECTED}")
        }),
        other => Err(format!(
            "{} is not a timestamp: {EXPECTED}",
            type_name(other)
        )),
    }
}

/// Parses an RFC 3339 timestamp into milliseconds since the Unix epoch
/// (digits past milliseconds are dropped, rounding toward the past).
///
/// `YYYY-MM-DD`, `T` (or `t` or a space), `HH:MM:SS`, an optional fraction
/// `.DIGITS`, and an offset: `Z`, `z`, `+HH:MM` or `-HH:MM`. Leniently, a
/// missing offset means UTC, and a leap second (`:60`) reads as `:59`.
/// Years 0000 to 9999, before 1970 too. `None` if it is not such a timestamp.
pub fn parse_rfc3339_ms(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    if bytes.len() < 19
        || bytes[4] != b'-'
        || bytes[7] != b'-'
        || !matches!(bytes[10], b'T' | b't' | b' ')
        || bytes[13] != b':'
        || bytes[16] != b':'
    {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<i64> {
        bytes[range].iter().try_fold(0i64, |value, &digit| {
            digit
                .is_ascii_digit()
                .then(|| value * 10 + i64::from(digit - b'0'))
        })
    };
    let year = number(0..4)?;
    let month = number(5..7)?;
    let day = number(8..10)?;
    let hour = number(11..13)?;
    let minute = number(14..16)?;
    let second = number(17..19)?;
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    // A leap second reads as the second before it.
    let second = second.min(59);
    let mut rest = &bytes[19..];
    let mut millis = 0i64;
    if let Some((b'.', fraction)) = rest.split_first() {
        let digits = fraction.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        for (place, &digit) in fraction[..digits.min(3)].iter().enumerate() {
            millis += i64::from(digit - b'0') * [100, 10, 1][place];
        }
        rest = &fraction[digits..];
    }
    let offset_minutes = match rest {
        [] | [b'Z'] | [b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let digits = [*h1, *h2, *m1, *m2];
            if !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let hours = i64::from((h1 - b'0') * 10 + (h2 - b'0'));
            let minutes = i64::from((m1 - b'0') * 10 + (m2 - b'0'));
            if hours > 23 || minutes > 59 {
                return None;
            }
            let total = hours * 60 + minutes;
            if *sign == b'-' {
                -total
            } else {
                total
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second - offset_minutes * 60;
    Some(seconds * 1_000 + millis)
}

fn is_leap_year(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to the given date (proleptic Gregorian calendar;
/// Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12; // March = 0
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

// ---------------------------------------------------------------------------
// Map.

impl MapConfig {
    /// Applies the map to a JSON value, in order: `project`, `drop`,
    /// `rename`, `set`.
    ///
    /// - `project`: a new object with only the listed paths that exist,
    ///   each at the same path (`"a.b"` keeps `{"a": {"b": ..}}`). Missing
    ///   paths are skipped. An array index in a projected path becomes an
    ///   object key in the result (`"items.0"` gives `{"items": {"0": ..}}`).
    /// - `drop`: removes the listed paths; missing ones are skipped.
    /// - `rename`: moves the value at each old path to its new path (objects
    ///   on the way are created); a missing old path is skipped.
    /// - `set`: stores each constant at its path (objects created).
    ///
    /// An error (nothing returned) when a value must be stored inside a
    /// string, number or boolean, e.g. `set = { "a.b" = 1 }` on `{"a": 5}`.
    pub fn apply(&self, mut value: Value) -> Result<Value, String> {
        if let Some(project) = &self.project {
            let mut projected = Value::Object(Map::new());
            for path in project {
                let found = match (path.segments.as_slice(), &mut value) {
                    // The common case moves the field out instead of copying
                    // it. Overlapping paths still work: after "a" is moved,
                    // a later "a.b" finds nothing, and "a" already holds it.
                    ([name], Value::Object(fields)) => fields.remove(name),
                    _ => path.get(&value).cloned(),
                };
                if let Some(found) = found {
                    path.set(&mut projected, found)?;
                }
            }
            value = projected;
        }
        for path in &self.drop {
            path.remove(&mut value);
        }
        for (from, to) in &self.rename {
            if let Some(moved) = from.remove(&mut value) {
                to.set(&mut value, moved)?;
            }
        }
        for (path, constant) in &self.set {
            path.set(&mut value, constant.clone())?;
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn path(text: &str) -> FieldPath {
        FieldPath::parse(text).expect("path")
    }

    fn predicate(field: &str, test: Test) -> Predicate {
        Predicate {
            field: path(field),
            test,
        }
    }

    #[test]
    fn paths_parse_and_read() {
        assert!(FieldPath::parse("").is_err());
        assert!(FieldPath::parse("a..b").is_err());
        assert!(FieldPath::parse(".a").is_err());
        let value = json!({"a": {"b": [10, {"c": "x"}]}});
        assert_eq!(path("a.b.0").get(&value), Some(&json!(10)));
        assert_eq!(path("a.b.1.c").get(&value), Some(&json!("x")));
        assert_eq!(path("a.b.2").get(&value), None);
        assert_eq!(path("a.x").get(&value), None);
        assert_eq!(path("a.b.0.c").get(&value), None);
    }

    #[test]
    fn parse_at_builds_only_the_field() {
        let text = br#"{"a": 1, "b": {"c": [1, 2, {"d": "yes"}], "e": null}, "f": "x"}"#;
        assert_eq!(parse_at(text, &path("a")), Ok(Some(json!(1))));
        assert_eq!(parse_at(text, &path("b.c.2.d")), Ok(Some(json!("yes"))));
        assert_eq!(
            parse_at(text, &path("b.c")),
            Ok(Some(json!([1, 2, {"d": "yes"}])))
        );
        assert_eq!(parse_at(text, &path("b.e")), Ok(Some(Value::Null)));
        assert_eq!(parse_at(text, &path("b.c.9")), Ok(None));
        assert_eq!(parse_at(text, &path("f.g")), Ok(None));
        assert_eq!(parse_at(text, &path("missing")), Ok(None));
        assert_eq!(parse_at(b"[5, 6]", &path("1")), Ok(Some(json!(6))));
        assert_eq!(parse_at(b"5", &path("a")), Ok(None));
        // Escaped keys match; duplicates: the last wins, as in a Value.
        assert_eq!(
            parse_at(br#"{"\u0061": 1}"#, &path("a")),
            Ok(Some(json!(1)))
        );
        assert_eq!(
            parse_at(br#"{"a": 1, "a": 2}"#, &path("a")),
            Ok(Some(json!(2)))
        );
        assert_eq!(
            parse_at(br#"{"a": {"b": 1}, "a": 3}"#, &path("a.b")),
            Ok(None)
        );
    }

    #[test]
    fn parse_at_checks_the_whole_document() {
        for bad in [
            &b"{\"a\": 1,"[..],
            b"{\"a\": 1} x",
            b"not json",
            b"",
            b"{\"a\": 1, \"b\": \"\xff\"}",
            b"{\"a\": 1, \"b\": [1, }",
        ] {
            assert!(parse_at(bad, &path("a")).is_err(), "{bad:?}");
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert!(parse(b"\xff").unwrap_err().contains("invalid UTF-8"));
    }

    #[test]
    fn equals_compares_numbers_by_value() {
        assert!(json_equal(&json!(5), &json!(5.0)));
        assert!(json_equal(&json!(-5), &json!(-5.0)));
        assert!(!json_equal(&json!(5), &json!(5.5)));
        assert!(json_equal(&json!(u64::MAX), &json!(u64::MAX)));
        assert!(!json_equal(&json!(u64::MAX), &json!(i64::MAX)));
        assert!(json_equal(&json!([1, {"a": 2}]), &json!([1.0, {"a": 2.0}])));
        assert!(!json_equal(&json!({"a": 1}), &json!({"a": 1, "b": 2})));
        assert!(!json_equal(&json!("5"), &json!(5)));
        assert!(json_equal(&Value::Null, &Value::Null));
    }

    #[test]
    fn predicate_tests() {
        let value = json!({"status": 500, "name": "get", "ratio": 0.5, "nothing": null,
                           "tags": ["a"], "nested": {"n": 5.0}});
        let passes = |field: &str, test: Test| predicate(field, test).matches(&value);

        assert!(passes("status", Test::Equals(json!(500))));
        assert!(passes("status", Test::Equals(json!(500.0))));
        assert!(passes("nested.n", Test::Equals(json!(5))));
        assert!(passes("tags", Test::Equals(json!(["a"]))));
        assert!(!passes("status", Test::Equals(json!("500"))));
        assert!(!passes("missing", Test::Equals(Value::Null)));
        assert!(passes("nothing", Test::Equals(Value::Null)));

        assert!(passes("status", Test::NotEquals(json!(200))));
        assert!(!passes("status", Test::NotEquals(json!(500.0))));
        assert!(passes("missing", Test::NotEquals(json!(200))));

        assert!(passes("status", Test::GreaterThan(499.0)));
        assert!(!passes("status", Test::GreaterThan(500.0)));
        assert!(passes("ratio", Test::LessThan(0.75)));
        assert!(!passes("ratio", Test::LessThan(0.5)));
        assert!(!passes("name", Test::GreaterThan(0.0)));
        assert!(!passes("missing", Test::LessThan(1e9)));
        assert!(!passes("nothing", Test::LessThan(1e9)));

        assert!(passes("nothing", Test::Exists(true)));
        assert!(passes("status", Test::Exists(true)));
        assert!(!passes("missing", Test::Exists(true)));
        assert!(passes("missing", Test::Exists(false)));
        assert!(!passes("status", Test::Exists(false)));

        assert!(passes(
            "name",
            Test::OneOf(vec![json!("put"), json!("get")])
        ));
        assert!(passes(
            "status",
            Test::OneOf(vec![json!(404), json!(500.0)])
        ));
        assert!(!passes("name", Test::OneOf(vec![json!("put")])));
        assert!(!passes("missing", Test::OneOf(vec![Value::Null])));
        assert!(!passes("name", Test::OneOf(Vec::new())));
    }

    #[test]
    fn key_text_of_each_type() {
        assert_eq!(key_text(&json!("user-1")), Some("user-1".to_owned()));
        assert_eq!(key_text(&json!(42)), Some("42".to_owned()));
        assert_eq!(key_text(&json!(-1.5)), Some("-1.5".to_owned()));
        assert_eq!(key_text(&json!(true)), Some("true".to_owned()));
        assert_eq!(key_text(&Value::Null), None);
        assert_eq!(key_text(&json!([1])), None);
        assert_eq!(key_text(&json!({"a": 1})), None);
    }

    fn map(config: MapConfig, value: Value) -> Result<Value, String> {
        config.apply(value)
    }

    #[test]
    fn project_keeps_listed_paths_with_their_nesting() {
        let value = json!({"a": 1, "b": {"c": 2, "d": 3}, "e": [10, 20], "f": 4});
        let project = |paths: &[&str]| MapConfig {
            project: Some(paths.iter().map(|p| path(p)).collect()),
            ..MapConfig::default()
        };
        assert_eq!(
            map(project(&["a", "b.c", "missing"]), value.clone()),
            Ok(json!({"a": 1, "b": {"c": 2}}))
        );
        // Overlapping paths, both orders.
        assert_eq!(
            map(project(&["b.c", "b"]), value.clone()),
            Ok(json!({"b": {"c": 2, "d": 3}}))
        );
        assert_eq!(
            map(project(&["b", "b.c"]), value.clone()),
            Ok(json!({"b": {"c": 2, "d": 3}}))
        );
        assert_eq!(
            map(project(&["e.1"]), value.clone()),
            Ok(json!({"e": {"1": 20}}))
        );
        assert_eq!(map(project(&["x"]), value), Ok(json!({})));
        assert_eq!(map(project(&["a"]), json!(5)), Ok(json!({})));
    }

    #[test]
    fn drop_rename_and_set() {
        let value = json!({"a": 1, "b": {"c": 2, "d": 3}, "e": [10, 20, 30]});
        let config = MapConfig {
            project: None,
            drop: vec![path("b.d"), path("e.0"), path("missing.x")],
            rename: vec![
                (path("a"), path("x.y")),
                (path("nope"), path("z")),
                (path("b.c"), path("c")),
            ],
            set: vec![(path("k"), json!("v")), (path("b.n"), json!(null))],
        };
        assert_eq!(
            map(config, value),
            Ok(json!({"x": {"y": 1}, "b": {"n": null}, "c": 2, "e": [20, 30], "k": "v"}))
        );
        // Set replaces, creates through null, indexes existing elements.
        let config = MapConfig {
            set: vec![
                (path("a"), json!(2)),
                (path("n.m"), json!(true)),
                (path("e.1"), json!("x")),
            ],
            ..MapConfig::default()
        };
        assert_eq!(
            map(config, json!({"a": 1, "n": null, "e": [1, 2]})),
            Ok(json!({"a": 2, "n": {"m": true}, "e": [1, "x"]}))
        );
    }

    #[test]
    fn map_errors_name_the_path() {
        let set = |at: &str| MapConfig {
            set: vec![(path(at), json!(1))],
            ..MapConfig::default()
        };
        let error = map(set("a.b"), json!({"a": 5})).unwrap_err();
        assert!(
            error.contains("cannot set `a.b`: `a` is a number, not an object"),
            "{error}"
        );
        let error = map(set("e.5"), json!({"e": [1]})).unwrap_err();
        assert!(error.contains("cannot set `e.5`"), "{error}");
        let error = map(set("a"), json!("text")).unwrap_err();
        assert!(error.contains("`$` is a string"), "{error}");
        let rename = MapConfig {
            rename: vec![(path("a"), path("b.c"))],
            ..MapConfig::default()
        };
        assert!(map(rename, json!({"a": 1, "b": "x"})).is_err());
    }

    #[test]
    fn timestamps() {
        assert_eq!(
            timestamp_ms(&json!(1_700_000_000_123i64)),
            Ok(1_700_000_000_123)
        );
        assert_eq!(timestamp_ms(&json!(-5)), Ok(-5));
        assert_eq!(timestamp_ms(&json!(1.7e12)), Ok(1_700_000_000_000));
        assert!(timestamp_ms(&json!(1.5)).is_err());
        assert!(timestamp_ms(&json!(u64::MAX)).is_err());
        assert!(timestamp_ms(&json!(1e300)).is_err());
        assert!(timestamp_ms(&json!(true)).is_err());
        assert!(timestamp_ms(&json!(null)).unwrap_err().contains("RFC 3339"));
        assert_eq!(timestamp_ms(&json!("1970-01-01T00:00:00Z")), Ok(0));
        assert_eq!(
            timestamp_ms(&json!("2024-02-29T12:34:56.789Z")),
            Ok(1_709_210_096_789)
        );
        assert!(timestamp_ms(&json!("2023-02-29T00:00:00Z")).is_err());
        assert!(timestamp_ms(&json!("yesterday")).is_err());
    }

    #[test]
    fn rfc3339_forms() {
        let base = 1_714_564_800_000; // 2024-05-01T12:00:00Z
        for (text, expected) in [
            ("2024-05-01T12:00:00Z", Some(base)),
            ("2024-05-01t12:00:00z", Some(base)),
            ("2024-05-01 12:00:00", Some(base)),
            ("2024-05-01T12:00:00+00:00", Some(base)),
            ("2024-05-01T14:30:00+02:30", Some(base)),
            ("2024-05-01T07:00:00-05:00", Some(base)),
            ("2024-05-01T12:00:00.5Z", Some(base + 500)),
            ("2024-05-01T12:00:00.25Z", Some(base + 250)),
            ("2024-05-01T12:00:00.123456789Z", Some(base + 123)),
            ("2024-05-01T12:00:60Z", Some(base + 59_000)),
            ("1969-12-31T23:59:59.500Z", Some(-500)),
            ("0001-01-01T00:00:00Z", Some(-62_135_596_800_000)),
            ("2024-05-01T12:00:00.Z", None),
            ("2024-05-01T12:00:00+0200", None),
            ("2024-05-01T12:00:00+24:00", None),
            ("2024-05-01T24:00:00Z", None),
            ("2024-13-01T12:00:00Z", None),
            ("2024-04-31T12:00:00Z", None),
            ("2024-05-01", None),
            ("2024-05-01T12:00:00Zjunk", None),
            ("2024-05-01T12:0x:00Z", None),
            ("+024-05-01T12:00:00Z", None),
            ("2024-05-01T12:00:61Z", None),
            ("2024-05-01T12:00:00 Z", None),
            ("2024-05-01T12:00:00é", None),
        ] {
            assert_eq!(parse_rfc3339_ms(text), expected, "{text}");
        }
    }

    #[test]
    fn rfc3339_agrees_with_humantime_for_utc() {
        for text in [
            "1970-01-01T00:00:01Z",
            "2000-02-29T23:59:59.999Z",
            "2038-01-19T03:14:07Z",
            "2100-03-01T00:00:00Z",
            "9999-12-31T23:59:59Z",
        ] {
            let system = humantime::parse_rfc3339(text).expect(text);
            let ms = system
                .duration_since(std::time::UNIX_EPOCH)
                .expect("after epoch")
                .as_millis();
            assert_eq!(
                parse_rfc3339_ms(text).map(i128::from),
                Some(ms as i128),
                "{text}"
            );
        }
    }
}
