//! The dead-letter queue's entry format.
//!
//! Each pipeline has a dead-letter topic, `<name>.dlq`
//! ([`super::config::dlq_topic`]). A record that still fails after its
//! retries, or that an operator rejects as malformed, is written there as
//! one record, [`DlqEntry::to_record`]: the original record unchanged
//! (key, value, headers, timestamp) plus these headers, all UTF-8 text:
//!
//! | header | value |
//! |---|---|
//! | `millrace.dlq.origin` | the record's first identity, `TOPIC/PARTITION/OFFSET` ([`Origin`]'s `Display`) |
//! | `millrace.dlq.pipeline` | the pipeline's name |
//! | `millrace.dlq.stage` | where it failed: `sink`, or the operator (`operator[INDEX] TYPE`) |
//! | `millrace.dlq.error` | the last error's message |
//! | `millrace.dlq.attempts` | attempts made, decimal `u32` |
//! | `millrace.dlq.first_failed_ms` | first failure, milliseconds since the Unix epoch, decimal `i64` |
//! | `millrace.dlq.failed_ms` | last failure, same unit |
//!
//! The original headers come first, in their order; the `millrace.dlq.*`
//! headers follow. [`DlqEntry::from_record`] reads an entry back; every
//! `millrace.dlq.*` header must be there exactly once and well formed.
//!
//! # Durability
//!
//! The dead-letter topic is an ordinary topic: its batches are stored in
//! frames with a CRC-32C over the whole batch (checked on every read; a torn
//! tail is cut at recovery) and a produce is acknowledged only once fsynced.
//! The pipeline produces its dead letters and waits for that
//! acknowledgement before it commits the source offset that skips them, so
//! a crash can repeat a dead letter but never lose one.
//!
//! # Replay
//!
//! [`DlqEntry::replay_record`] rebuilds the original record for the source
//! topic, with header [`ORIGIN_HEADER`] holding its origin:
//! [`Event::from_fetched`](super::Event::from_fetched) then gives the
//! replayed record its first identity, and sinks that key rows by origin or
//! by record fields overwrite the rows of the first delivery instead of
//! adding new ones.

use super::{Origin, ORIGIN_HEADER};
use crate::types::{FetchedRecord, Header, Record};
use bytes::Bytes;

/// Prefix of every header the dead-letter queue adds.
pub const DLQ_HEADER_PREFIX: &str = "millrace.dlq.";
/// Header: the original record's origin.
pub const ORIGIN: &str = "millrace.dlq.origin";
/// Header: the pipeline's name.
pub const PIPELINE: &str = "millrace.dlq.pipeline";
/// Header: the stage that failed.
pub const STAGE: &str = "millrace.dlq.stage";
/// Header: the last error message.
pub const ERROR: &str = "millrace.dlq.error";
/// Header: attempts made.
pub const ATTEMPTS: &str = "millrace.dlq.attempts";
/// Header: first failure time (epoch milliseconds).
pub const FIRST_FAILED_MS: &str = "millrace.dlq.first_failed_ms";
/// Header: last failure time (epoch milliseconds).
pub const FAILED_MS: &str = "millrace.dlq.failed_ms";

/// One dead letter: the original record and why it failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DlqEntry {
    /// The original record's first identity.
    pub origin: Origin,
    /// The pipeline it failed in.
    pub pipeline: String,
    /// The stage that failed.
    pub stage: String,
    /// The last error's message.
    pub error: String,
    /// Attempts made.
    pub attempts: u32,
    /// First failure, milliseconds since the Unix epoch.
    pub first_failed_ms: i64,
    /// Last failure, milliseconds since the Unix epoch.
    pub failed_ms: i64,
    /// The original key.
    pub key: Option<Bytes>,
    /// The original value (`None`: a tombstone).
    pub value: Option<Bytes>,
    /// The original headers.
    pub headers: Vec<Header>,
    /// The original timestamp, milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
}

impl DlqEntry {
    /// The record stored in the dead-letter topic (layout in the module
    /// doc).
    pub fn to_record(&self) -> Record {
        let mut headers = self.headers.clone();
        let mut add = |key: &str, value: String| {
            headers.push(Header {
                key: key.to_owned(),
                value: Bytes::from(value),
            })
        };
        add(ORIGIN, self.origin.to_string());
        add(PIPELINE, self.pipeline.clone());
        add(STAGE, self.stage.clone());
        add(ERROR, self.error.clone());
        add(ATTEMPTS, self.attempts.to_string());
        add(FIRST_FAILED_MS, self.first_failed_ms.to_string());
        add(FAILED_MS, self.failed_ms.to_string());
        Record {
            key: self.key.clone(),
            value: self.value.clone(),
            headers,
            timestamp_ms: Some(self.timestamp_ms),
        }
    }

    /// Reads an entry back from a record of the dead-letter topic. A
    /// missing, repeated or malformed `millrace.dlq.*` header is an error
    /// naming it.
    pub fn from_record(record: &FetchedRecord) -> Result<DlqEntry, String> {
        let headers = DlqHeaders::collect(record)?;
        let origin_text = headers.text(ORIGIN)?;
        let origin = Origin::parse(origin_text).ok_or_else(|| {
            format!("malformed header {ORIGIN}: {origin_text:?} is not TOPIC/PARTITION/OFFSET")
        })?;
        Ok(DlqEntry {
            origin,
            pipeline: headers.text(PIPELINE)?.to_owned(),
            stage: headers.text(STAGE)?.to_owned(),
            error: headers.text(ERROR)?.to_owned(),
            attempts: headers.number(ATTEMPTS)?,
            first_failed_ms: headers.number(FIRST_FAILED_MS)?,
            failed_ms: headers.number(FAILED_MS)?,
            key: record.key.clone(),
            value: record.value.clone(),
            headers: record
                .headers
                .iter()
                .filter(|header| !header.key.starts_with(DLQ_HEADER_PREFIX))
                .cloned()
                .collect(),
            timestamp_ms: record.timestamp_ms,
        })
    }

    /// The original record, to produce again to the source topic: its key,
    /// value, timestamp and headers (without `millrace.dlq.*` headers and
    /// without any older [`ORIGIN_HEADER`]), plus [`ORIGIN_HEADER`] set to
    /// its origin, so the replay keeps its first identity.
    pub fn replay_record(&self) -> Record {
        let mut headers: Vec<Header> = self
            .headers
            .iter()
            .filter(|header| {
                header.key != ORIGIN_HEADER && !header.key.starts_with(DLQ_HEADER_PREFIX)
            })
            .cloned()
            .collect();
        headers.push(Header {
            key: ORIGIN_HEADER.to_owned(),
            value: Bytes::from(self.origin.to_string()),
        });
        Record {
            key: self.key.clone(),
            value: self.value.clone(),
            headers,
            timestamp_ms: Some(self.timestamp_ms),
        }
    }

    /// The entry as JSON, for `millrace dlq list`. Key, value and header
    /// values are text when they are UTF-8 (`"key"`, `"value"`), lower-case
    /// hex otherwise (`"key_hex"`, `"value_hex"`); a missing key or a
    /// tombstone is `null`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut object = serde_json::Map::new();
        let mut put = |name: &str, value: serde_json::Value| {
            object.insert(name.to_owned(), value);
        };
        put("origin", self.origin.to_string().into());
        put("pipeline", self.pipeline.clone().into());
        put("stage", self.stage.clone().into());
        put("error", self.error.clone().into());
        put("attempts", self.attempts.into());
        put("first_failed_ms", self.first_failed_ms.into());
        put("failed_ms", self.failed_ms.into());
        put("timestamp_ms", self.timestamp_ms.into());
        let (name, value) = bytes_json("key", self.key.as_deref());
        put(&name, value);
        let (name, value) = bytes_json("value", self.value.as_deref());
        put(&name, value);
        let headers = self
            .headers
            .iter()
            .map(|header| {
                let (name, value) = bytes_json("value", Some(&header.value));
                let mut pair = serde_json::Map::new();
                pair.insert("key".to_owned(), header.key.clone().into());
                pair.insert(name, value);
                serde_json::Value::Object(pair)
            })
            .collect();
        put("headers", serde_json::Value::Array(headers));
        serde_json::Value::Object(object)
    }
}

/// `(name, text)` for UTF-8 bytes, `(name_hex, hex)` otherwise, `(name,
/// null)` for none.
fn bytes_json(name: &str, bytes: Option<&[u8]>) -> (String, serde_json::Value) {
    match bytes {
        None => (name.to_owned(), serde_json::Value::Null),
        Some(bytes) => match std::str::from_utf8(bytes) {
            Ok(text) => (name.to_owned(), text.into()),
            Err(_) => (format!("{name}_hex"), hex(bytes).into()),
        },
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        // Writing to a String cannot fail.
        let _ = write!(text, "{byte:02x}");
    }
    text
}

/// The `millrace.dlq.*` headers of one record, each checked to be there
/// once.
struct DlqHeaders<'r> {
    headers: Vec<&'r Header>,
}

impl<'r> DlqHeaders<'r> {
    fn collect(record: &'r FetchedRecord) -> Result<DlqHeaders<'r>, String> {
        let headers: Vec<&Header> = record
            .headers
            .iter()
            .filter(|header| header.key.starts_with(DLQ_HEADER_PREFIX))
            .collect();
        for (index, header) in headers.iter().enumerate() {
            if headers[..index].iter().any(|other| other.key == header.key) {
                return Err(format!("malformed header {}: it appears twice", header.key));
            }
        }
        Ok(DlqHeaders { headers })
    }

    fn text(&self, name: &str) -> Result<&'r str, String> {
        let header = self
            .headers
            .iter()
            .find(|header| header.key == name)
            .ok_or_else(|| format!("missing header {name}"))?;
        std::str::from_utf8(&header.value)
            .map_err(|_| format!("malformed header {name}: not UTF-8"))
    }

    fn number<N: std::str::FromStr>(&self, name: &str) -> Result<N, String>
    where
        N::Err: std::fmt::Display,
    {
        let text = self.text(name)?;
        text.parse()
            .map_err(|error| format!("malformed header {name}: {text:?}: {error}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Offset, PartitionId};
    use std::sync::Arc;

    fn entry() -> DlqEntry {
        DlqEntry {
            origin: Origin {
                topic: Arc::from("spans"),
                partition: PartitionId(3),
                offset: Offset(41),
            },
            pipeline: "ingest".to_owned(),
            stage: "sink".to_owned(),
            error: "table spans: key field span_id is missing".to_owned(),
            attempts: 4,
            first_failed_ms: 1_700_000_000_000,
            failed_ms: 1_700_000_000_900,
            key: Some(Bytes::from_static(b"trace-1")),
            value: Some(Bytes::from_static(b"{\"a\":1}")),
            headers: vec![Header {
                key: "content-type".to_owned(),
                value: Bytes::from_static(b"application/json"),
            }],
            timestamp_ms: 1_699_999_999_000,
        }
    }

    fn fetched(record: Record) -> FetchedRecord {
        FetchedRecord {
            offset: Offset(7),
            timestamp_ms: record.timestamp_ms.unwrap_or(0),
            key: record.key,
            value: record.value,
            headers: record.headers,
        }
    }

    fn header<'r>(record: &'r Record, name: &str) -> Option<&'r [u8]> {
        record
            .headers
            .iter()
            .find(|header| header.key == name)
            .map(|header| &header.value[..])
    }

    #[test]
    fn the_record_holds_the_original_and_every_dlq_header() {
        let record = entry().to_record();
        assert_eq!(record.key.as_deref(), Some(&b"trace-1"[..]));
        assert_eq!(record.value.as_deref(), Some(&b"{\"a\":1}"[..]));
        assert_eq!(record.timestamp_ms, Some(1_699_999_999_000));
        assert_eq!(record.headers[0].key, "content-type");
        assert_eq!(header(&record, ORIGIN), Some(&b"spans/3/41"[..]));
        assert_eq!(header(&record, PIPELINE), Some(&b"ingest"[..]));
        assert_eq!(header(&record, STAGE), Some(&b"sink"[..]));
        assert_eq!(header(&record, ATTEMPTS), Some(&b"4"[..]));
        assert_eq!(
            header(&record, FIRST_FAILED_MS),
            Some(&b"1700000000000"[..])
        );
        assert_eq!(header(&record, FAILED_MS), Some(&b"1700000000900"[..]));
        assert_eq!(record.headers.len(), 8);
    }

    #[test]
    fn round_trips_through_a_fetched_record() {
        let original = entry();
        assert_eq!(
            DlqEntry::from_record(&fetched(original.to_record())),
            Ok(original)
        );
        let tombstone = DlqEntry {
            key: None,
            value: None,
            headers: Vec::new(),
            ..entry()
        };
        assert_eq!(
            DlqEntry::from_record(&fetched(tombstone.to_record())),
            Ok(tombstone)
        );
    }

    #[test]
    fn each_missing_or_malformed_header_is_named() {
        for name in [
            ORIGIN,
            PIPELINE,
            STAGE,
            ERROR,
            ATTEMPTS,
            FIRST_FAILED_MS,
            FAILED_MS,
        ] {
            let mut record = fetched(entry().to_record());
            record.headers.retain(|header| header.key != name);
            let error = DlqEntry::from_record(&record).unwrap_err();
            assert_eq!(error, format!("missing header {name}"));
        }
        for (name, bad) in [
            (ORIGIN, &b"no-slashes"[..]),
            (ATTEMPTS, b"-1"),
            (FIRST_FAILED_MS, b"soon"),
            (FAILED_MS, b""),
            (PIPELINE, b"\xff"),
        ] {
            let mut record = fetched(entry().to_record());
            for header in &mut record.headers {
                if header.key == name {
                    header.value = Bytes::copy_from_slice(bad);
                }
            }
            let error = DlqEntry::from_record(&record).unwrap_err();
            assert!(
                error.starts_with(&format!("malformed header {name}")),
                "{error}"
            );
        }
        let mut record = fetched(entry().to_record());
        record.headers.push(Header {
            key: STAGE.to_owned(),
            value: Bytes::from_static(b"again"),
        });
        let error = DlqEntry::from_record(&record).unwrap_err();
        assert_eq!(error, format!("malformed header {STAGE}: it appears twice"));
    }

    #[test]
    fn a_replay_keeps_the_original_and_its_first_identity() {
        let mut first = entry();
        first.headers.push(Header {
            key: ORIGIN_HEADER.to_owned(),
            value: Bytes::from_static(b"older/0/0"),
        });
        first.headers.push(Header {
            key: "millrace.dlq.stale".to_owned(),
            value: Bytes::from_static(b"x"),
        });
        let replay = first.replay_record();
        assert_eq!(replay.key, first.key);
        assert_eq!(replay.value, first.value);
        assert_eq!(replay.timestamp_ms, Some(first.timestamp_ms));
        let names: Vec<&str> = replay
            .headers
            .iter()
            .map(|header| header.key.as_str())
            .collect();
        assert_eq!(names, ["content-type", ORIGIN_HEADER]);
        assert_eq!(header(&replay, ORIGIN_HEADER), Some(&b"spans/3/41"[..]));

        // Read back from the source topic at another offset, it keeps its origin.
        let event = super::super::Event::from_fetched(
            &Arc::from("spans"),
            PartitionId(0),
            FetchedRecord {
                offset: Offset(900),
                ..fetched(replay)
            },
        );
        assert_eq!(event.origin, first.origin);
        assert_eq!(event.position, Offset(900));
    }

    #[test]
    fn a_dead_letter_of_a_replay_round_trips_to_the_same_origin() {
        let replay = entry().replay_record();
        let event = super::super::Event::from_fetched(
            &Arc::from("spans"),
            PartitionId(0),
            FetchedRecord {
                offset: Offset(5),
                ..fetched(replay)
            },
        );
        let again = DlqEntry {
            origin: event.origin.clone(),
            headers: event.headers.clone(),
            ..entry()
        };
        let read = DlqEntry::from_record(&fetched(again.to_record())).unwrap();
        assert_eq!(read.origin, entry().origin);
        let replay = read.replay_record();
        let names: Vec<&str> = replay.headers.iter().map(|h| h.key.as_str()).collect();
        assert_eq!(names, ["content-type", ORIGIN_HEADER]);
    }

    #[test]
    fn json_has_text_or_hex() {
        let mut binary = entry();
        binary.value = Some(Bytes::from_static(&[0xff, 0x00, 0x10]));
        binary.key = None;
        let json = binary.to_json();
        assert_eq!(json["origin"], "spans/3/41");
        assert_eq!(json["attempts"], 4);
        assert_eq!(json["value_hex"], "ff0010");
        assert!(json.get("value").is_none());
        assert_eq!(json["key"], serde_json::Value::Null);
        assert_eq!(json["headers"][0]["key"], "content-type");
        assert_eq!(json["headers"][0]["value"], "application/json");
        assert_eq!(entry().to_json()["value"], "{\"a\":1}");
    }
}
