//! Frames and record batches: the unit of append, replication and fetch.
//!
//! A segment holds frames back to back. A frame wraps one Kafka RecordBatch
//! v2 (big-endian, exactly as Kafka documents it, so a Kafka front end can
//! serve stored batches without re-encoding) in a small little-endian header
//! whose CRC covers the *whole* batch. Kafka's own CRC skips the base offset,
//! length and leader epoch; ours does not, so every bit flip is detected.
//!
//! # Frame layout (little-endian header)
//!
//! | bytes      | field                                              |
//! |------------|----------------------------------------------------|
//! | 0..4       | magic `b"MRF1"`                                    |
//! | 4..8       | `batch_len`: bytes of the RecordBatch, u32 LE      |
//! | 8..12      | CRC-32C of bytes 4..8 and the RecordBatch, u32 LE  |
//! | 12..12+len | Kafka RecordBatch v2                               |
//!
//! # RecordBatch v2 (big-endian, Kafka's layout)
//!
//! baseOffset i64, batchLength i32 (bytes after this field), partitionLeaderEpoch
//! i32 (our [`Term`]), magic i8 = 2, crc u32 (CRC-32C of attributes..end),
//! attributes i16, lastOffsetDelta i32, baseTimestamp i64, maxTimestamp i64,
//! producerId i64, producerEpoch i16, baseSequence i32, recordCount i32, then
//! records: length varint, attributes i8, timestampDelta varlong, offsetDelta
//! varint, keyLength varint (-1 = null), key, valueLength varint (-1 = null),
//! value, headerCount varint, headers (keyLength varint, key, valueLength
//! varint, value).

use crate::types::{FetchedRecord, Offset, Record, Term};
use bytes::Bytes;

/// Bytes of the frame header.
pub const FRAME_HEADER_BYTES: usize = 12;
/// Magic of a frame.
pub const FRAME_MAGIC: [u8; 4] = *b"MRF1";
/// Bytes of the RecordBatch v2 header, before the records.
pub const BATCH_HEADER_BYTES: usize = 61;
/// Largest RecordBatch accepted anywhere (decode refuses larger lengths
/// before allocating). Per-topic limits are lower.
pub const BATCH_BYTES_MAX: usize = 64 * 1024 * 1024;

/// The fixed fields of a RecordBatch v2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    /// Offset of the first record.
    pub base_offset: Offset,
    /// Leader epoch (Raft term) of the leader that appended it.
    pub leader_epoch: Term,
    /// Kafka attributes (compression, timestamp type, transactional, control).
    pub attributes: i16,
    /// last offset - base offset.
    pub last_offset_delta: u32,
    /// Timestamp of the first record (ms).
    pub base_timestamp_ms: i64,
    /// Largest timestamp in the batch (ms).
    pub max_timestamp_ms: i64,
    /// Idempotent producer id, -1 if none.
    pub producer_id: i64,
    /// Idempotent producer epoch, -1 if none.
    pub producer_epoch: i16,
    /// Sequence of the first record, -1 if none.
    pub base_sequence: i32,
    /// Number of records.
    pub record_count: u32,
}

impl BatchHeader {
    /// Offset of the last record.
    pub fn last_offset(&self) -> Offset {
        Offset(self.base_offset.0 + u64::from(self.last_offset_delta))
    }
    /// The offset after the last record.
    pub fn next_offset(&self) -> Offset {
        self.last_offset().next()
    }
}

/// Idempotent-producer fields of a batch (all -1 for a plain producer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProducerFields {
    /// Producer id.
    pub producer_id: i64,
    /// Producer epoch.
    pub producer_epoch: i16,
    /// Sequence of the first record.
    pub base_sequence: i32,
}

impl ProducerFields {
    /// No idempotent producer.
    pub const NONE: ProducerFields = ProducerFields { producer_id: -1, producer_epoch: -1, base_sequence: -1 };
}

/// Why bytes are not a valid frame. Every variant is final for those bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The buffer ends before the frame does (a torn tail, if at the end of a file).
    #[error("incomplete frame: need {needed} bytes, have {available}")]
    Incomplete {
        /// Bytes the frame needs.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
    /// The frame does not start with the magic.
    #[error("bad frame magic {found:02x?}")]
    BadMagic {
        /// The four bytes found.
        found: [u8; 4],
    },
    /// A length is over its maximum.
    #[error("{what} length {length} is over the maximum {max}")]
    TooLong {
        /// Which length.
        what: &'static str,
        /// The length read.
        length: u64,
        /// Its maximum.
        max: u64,
    },
    /// The checksum does not match.
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum {
        /// CRC stored in the frame.
        stored: u32,
        /// CRC of the bytes.
        computed: u32,
    },
    /// The bytes pass the checksum but break a rule of the format.
    #[error("malformed batch: {0}")]
    Malformed(String),
}

/// One verified frame inside a buffer.
#[derive(Clone, Debug)]
pub struct FrameView {
    /// The batch's fixed fields.
    pub header: BatchHeader,
    /// The whole frame (frame header + RecordBatch), a slice of the input.
    pub frame: Bytes,
}

impl FrameView {
    /// The Kafka RecordBatch bytes (what a Kafka Fetch would send).
    pub fn record_batch(&self) -> Bytes {
        self.frame.slice(FRAME_HEADER_BYTES..)
    }

    /// Decodes the records; keys, values and header values are slices of
    /// the frame, not copies.
    pub fn records(&self) -> Result<Vec<FetchedRecord>, FrameError> {
        todo!()
    }
}

/// Encodes `records` as one frame appended to `out`, with offsets from
/// `base_offset`. Records without a timestamp get `now_ms`. Returns the header
/// written. Panics if `records` is empty (a caller bug).
pub fn encode_frame(
    out: &mut Vec<u8>,
    base_offset: Offset,
    leader_epoch: Term,
    producer: ProducerFields,
    records: &[Record],
    now_ms: i64,
) -> BatchHeader {
    let _ = (out, base_offset, leader_epoch, producer, records, now_ms);
    todo!()
}

/// Decodes and verifies the frame at the start of `buffer` (magic, lengths
/// against [`BATCH_BYTES_MAX`] before anything is allocated, both CRCs,
/// header rules). Returns the frame; its length is `frame.frame.len()`.
pub fn decode_frame(buffer: &Bytes) -> Result<FrameView, FrameError> {
    let _ = buffer;
    todo!()
}

/// Reads only the frame header's batch length, to size a read before
/// decoding. Fails on bad magic or a length over `BATCH_BYTES_MAX`.
pub fn peek_frame_len(header: &[u8; FRAME_HEADER_BYTES]) -> Result<usize, FrameError> {
    let _ = header;
    todo!()
}
