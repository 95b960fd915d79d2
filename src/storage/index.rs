//! Sparse offset and time index of one segment.
//!
//! An entry is added for the first batch and then every
//! `index_interval_bytes` of frames. Lookups give the position of the last
//! indexed batch at or before an offset (or time); the reader scans forward.
//!
//! # Index file layout (`{base:020}.idx`, little-endian)
//!
//! Filled in by the implementation; see the module body.

use crate::types::{Offset, Term};

/// One offset index entry: a batch starts at `position` with `base_offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OffsetEntry {
    /// Base offset of the batch.
    pub base_offset: Offset,
    /// Byte position of its frame in the segment file.
    pub position: u64,
}

/// One time index entry: from `offset` on, timestamps reach `timestamp_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeEntry {
    /// Largest timestamp seen up to and including this batch.
    pub timestamp_ms: i64,
    /// Base offset of the batch.
    pub offset: Offset,
}

/// The index of one segment, plus the summary a sealed block needs at open.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SegmentIndex {
    /// Offset entries, increasing.
    pub offsets: Vec<OffsetEntry>,
    /// Time entries, increasing in both fields.
    pub times: Vec<TimeEntry>,
    /// Leader epoch changes: (epoch, first offset with it), increasing.
    pub epochs: Vec<(Term, Offset)>,
    /// The offset after the last record of the segment.
    pub next_offset: Offset,
    /// Segment file size the index describes (a mismatch means stale).
    pub segment_bytes: u64,
    /// Largest timestamp in the segment.
    pub max_timestamp_ms: i64,
}
