//! Identifiers, offsets and records: the vocabulary every layer shares.

use bytes::Bytes;
use std::fmt;

/// A position in one partition's log. Offsets start at 0 and never repeat.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Offset(pub u64);

impl Offset {
    /// The offset right after this one.
    pub fn next(self) -> Offset {
        Offset(self.0 + 1)
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// A partition number inside one topic.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PartitionId(pub u32);

impl fmt::Display for PartitionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// A leader epoch (Raft term). Single-node logs write epoch 0. Stored in
/// every batch so a Raft layer can later ask the log for the term at an index.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Term(pub u32);

/// One header of a record: a name and an opaque value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Header name (UTF-8).
    pub key: String,
    /// Header value.
    pub value: Bytes,
}

/// A record to produce: an optional key, a value, headers and a timestamp.
///
/// The timestamp is milliseconds since the Unix epoch; `None` means "when the
/// partition appends it". A `None` value is a tombstone (used by key
/// compaction).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Record {
    /// Partitioning and compaction key.
    pub key: Option<Bytes>,
    /// Payload; `None` is a tombstone.
    pub value: Option<Bytes>,
    /// Application headers.
    pub headers: Vec<Header>,
    /// Event time in milliseconds since the Unix epoch.
    pub timestamp_ms: Option<i64>,
}

impl Record {
    /// A record with this value, no key, no headers, timestamped at append.
    pub fn new(value: impl Into<Bytes>) -> Record {
        Record {
            value: Some(value.into()),
            ..Record::default()
        }
    }

    /// Sets the key (records with a key go to a partition by key hash).
    pub fn with_key(mut self, key: impl Into<Bytes>) -> Record {
        self.key = Some(key.into());
        self
    }

    /// Adds a header.
    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<Bytes>) -> Record {
        self.headers.push(Header {
            key: key.into(),
            value: value.into(),
        });
        self
    }

    /// Sets the event timestamp (milliseconds since the Unix epoch).
    pub fn with_timestamp_ms(mut self, timestamp_ms: i64) -> Record {
        self.timestamp_ms = Some(timestamp_ms);
        self
    }

    /// Bytes this record occupies in a batch, roughly (for size limits).
    pub fn approximate_bytes(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|h| h.key.len() + h.value.len() + 4)
            .sum();
        self.key.as_ref().map_or(0, |k| k.len())
            + self.value.as_ref().map_or(0, |v| v.len())
            + headers
            + 24
    }
}

/// A record read back from a partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchedRecord {
    /// Its offset in the partition.
    pub offset: Offset,
    /// Its timestamp, milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Its key, if it had one.
    pub key: Option<Bytes>,
    /// Its value; `None` for a tombstone.
    pub value: Option<Bytes>,
    /// Its headers.
    pub headers: Vec<Header>,
}
