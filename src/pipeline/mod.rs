//! Pipelines: a source (a topic read by a consumer group), a chain of
//! operators, and a sink, run partition-parallel by actors.
//!
//! This module holds the vocabulary every part shares; the parts are:
//!
//! - [`config`]: `[[pipeline]]` sections of the TOML file.
//! - [`json`]: JSON field paths, predicates and projections, so simple
//!   pipelines need no Rust code.
//! - [`operators`]: the [`Operator`] trait and the built-in stateless ones.
//! - [`window`]: event-time windows (tumbling, hopping, session) with
//!   watermarks and allowed lateness, and keyed aggregates.
//! - [`sink`]: the [`Sink`] trait and the built-in sinks (topic, sled table,
//!   JSON lines, stdout).
//! - [`dlq`]: the dead-letter queue's entry format.
//!
//! The actors that run them live in `actors/group.rs` (the consumer-group
//! coordinator) and `actors/pipeline.rs` (members and their sink stage).
//!
//! # Identity
//!
//! Every event carries the [`Origin`] of the source record it came from:
//! topic, partition, offset. A record re-injected from the dead-letter queue
//! keeps the origin of its first delivery (header [`ORIGIN_HEADER`]), so a
//! sink that keys rows by origin, or by fields of the record, writes the same
//! rows however often a record is replayed.

pub mod config;
pub mod dlq;
pub mod json;
pub mod operators;
pub mod registry;
pub mod sink;
pub mod window;

use crate::types::{FetchedRecord, Header, Offset, PartitionId};
use bytes::Bytes;
use std::fmt;
use std::sync::Arc;

pub use operators::{Emitter, Operator, OperatorError};
pub use registry::Registry;
pub use sink::{Sink, SinkBatch, SinkError};

/// Header that carries a replayed record's original identity,
/// `TOPIC/PARTITION/OFFSET`.
pub const ORIGIN_HEADER: &str = "millrace.origin";

/// Where a record was first delivered: its stable identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Origin {
    /// Source topic.
    pub topic: Arc<str>,
    /// Source partition.
    pub partition: PartitionId,
    /// Offset in that partition.
    pub offset: Offset,
}

impl fmt::Display for Origin {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "{}/{}/{}",
            self.topic, self.partition, self.offset
        )
    }
}

impl Origin {
    /// Parses `TOPIC/PARTITION/OFFSET` (the [`ORIGIN_HEADER`] value).
    pub fn parse(text: &str) -> Option<Origin> {
        let mut parts = text.rsplitn(3, '/');
        let offset = parts.next()?.parse().ok()?;
        let partition = parts.next()?.parse().ok()?;
        let topic = parts.next()?;
        if topic.is_empty() {
            return None;
        }
        Some(Origin {
            topic: Arc::from(topic),
            partition: PartitionId(partition),
            offset: Offset(offset),
        })
    }
}

/// One record moving through a pipeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Key (partitioning, keyed state, windows).
    pub key: Option<Bytes>,
    /// Value; `None` for a tombstone.
    pub value: Option<Bytes>,
    /// Headers.
    pub headers: Vec<Header>,
    /// Event time, milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// The source record it came from.
    pub origin: Origin,
    /// Where the source record was read: equal to `origin` except for
    /// records replayed from the dead-letter queue.
    pub position: Offset,
}

impl Event {
    /// The event for a fetched source record. A record replayed from the
    /// dead-letter queue keeps its first identity (its [`ORIGIN_HEADER`]).
    pub fn from_fetched(topic: &Arc<str>, partition: PartitionId, record: FetchedRecord) -> Event {
        let replayed = record
            .headers
            .iter()
            .find(|header| header.key == ORIGIN_HEADER)
            .and_then(|header| std::str::from_utf8(&header.value).ok())
            .and_then(Origin::parse);
        let origin = replayed.unwrap_or_else(|| Origin {
            topic: Arc::clone(topic),
            partition,
            offset: record.offset,
        });
        Event {
            key: record.key,
            value: record.value,
            headers: record.headers,
            timestamp_ms: record.timestamp_ms,
            origin,
            position: record.offset,
        }
    }

    /// The value as UTF-8 text, if it is.
    pub fn value_str(&self) -> Option<&str> {
        self.value
            .as_deref()
            .and_then(|value| std::str::from_utf8(value).ok())
    }

    /// A copy with another value, everything else kept.
    pub fn with_value(&self, value: impl Into<Bytes>) -> Event {
        Event {
            value: Some(value.into()),
            ..self.clone()
        }
    }
}

/// A change to one operator's keyed state, stored at a checkpoint: the
/// operator's own key bytes and the new value (`None` removes the key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateDelta {
    /// Operator-defined key.
    pub key: Vec<u8>,
    /// New value, or `None` to remove.
    pub value: Option<Vec<u8>>,
}
