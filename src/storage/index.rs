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

impl SegmentIndex {
    /// Encodes the index file (header with magic, version, counts; entries; CRC).
    pub fn encode(&self) -> Vec<u8> {
        todo!()
    }

    /// Decodes and verifies an index file. Lengths are checked against the
    /// input size before anything is allocated; the error names the rule broken.
    pub fn decode(bytes: &[u8]) -> Result<SegmentIndex, String> {
        let _ = bytes;
        todo!()
    }

    /// The last entry whose batch starts at or before `offset`.
    pub fn lookup_offset(&self, offset: Offset) -> Option<OffsetEntry> {
        let _ = offset;
        todo!()
    }

    /// The first entry whose timestamps reach `timestamp_ms`.
    pub fn lookup_time(&self, timestamp_ms: i64) -> Option<TimeEntry> {
        let _ = timestamp_ms;
        todo!()
    }

    /// Records that a batch was appended at `position` (`frame_bytes` long),
    /// adding entries every `interval_bytes` (always for the first batch), and
    /// updating the summary fields.
    pub fn add_batch(&mut self, header: &super::batch::BatchHeader, position: u64, frame_bytes: u64, interval_bytes: u64) {
        let _ = (header, position, frame_bytes, interval_bytes);
        todo!()
    }
}
