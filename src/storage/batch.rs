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
//!
//! Byte positions of the RecordBatch v2 header, relative to the batch start:
//!
//! | bytes  | field                                  |
//! |--------|----------------------------------------|
//! | 0..8   | baseOffset i64                         |
//! | 8..12  | batchLength i32 (= batch bytes - 12)   |
//! | 12..16 | partitionLeaderEpoch i32               |
//! | 16     | magic i8 (2)                           |
//! | 17..21 | crc u32 (CRC-32C of bytes 21..end)     |
//! | 21..23 | attributes i16                         |
//! | 23..27 | lastOffsetDelta i32                    |
//! | 27..35 | baseTimestamp i64                      |
//! | 35..43 | maxTimestamp i64                       |
//! | 43..51 | producerId i64                         |
//! | 51..53 | producerEpoch i16                      |
//! | 53..57 | baseSequence i32                       |
//! | 57..61 | recordCount i32                        |
//! | 61..   | records                                |
//!
//! We write attributes 0 (no compression, CreateTime). Decoding refuses
//! compressed batches (their records are not readable in place); with the
//! LogAppendTime bit set, every record's timestamp is maxTimestamp, as in
//! Kafka. A null header value (length -1, which Kafka allows) decodes as an
//! empty value, since [`Header::value`] cannot be null.

use crate::types::{FetchedRecord, Header, Offset, Record, Term};
use bytes::Bytes;
use std::ops::Range;

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
    /// A control batch ([`encode_control_frame`]): it takes an offset but
    /// holds no application record; readers skip it, as Kafka clients do.
    pub fn is_control(&self) -> bool {
        self.attributes & ATTRIBUTES_CONTROL != 0
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
    pub const NONE: ProducerFields = ProducerFields {
        producer_id: -1,
        producer_epoch: -1,
        base_sequence: -1,
    };
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
        let mut records = Vec::new();
        self.records_into(&mut records, Offset(0))?;
        Ok(records)
    }

    /// Appends the records at or after `from_offset` to `out` (one growth
    /// of `out` per batch at most, no temporary vector). On error, `out` is
    /// left as it was.
    pub fn records_into(
        &self,
        out: &mut Vec<FetchedRecord>,
        from_offset: Offset,
    ) -> Result<(), FrameError> {
        if self.header.is_control() {
            // Raft's own entries (leader changes, configuration changes):
            // no application record in them.
            return Ok(());
        }
        let batch = self.frame.get(FRAME_HEADER_BYTES..).unwrap_or_default();
        check_record_count(&self.header, batch.len())?;
        // Bounded: the count was checked against the bytes it needs.
        out.reserve(self.header.record_count as usize);
        let length_before = out.len();
        let mut collector = RecordCollector {
            frame: &self.frame,
            header: &self.header,
            from_offset,
            records: out,
            skipping: false,
        };
        let walked = walk_records(batch, &self.header, &mut collector);
        if walked.is_err() {
            out.truncate(length_before);
        }
        walked
    }
}

/// Encodes `records` as one frame appended to `out`, with offsets from
/// `base_offset`. Records without a timestamp get `now_ms`. Returns the header
/// written. Panics if `records` is empty (a caller bug), or if the batch would
/// be over [`BATCH_BYTES_MAX`] or its offsets over `i64::MAX` (caller bugs too:
/// per-topic limits are lower).
pub fn encode_frame(
    out: &mut Vec<u8>,
    base_offset: Offset,
    leader_epoch: Term,
    producer: ProducerFields,
    records: &[Record],
    now_ms: i64,
) -> BatchHeader {
    assert!(
        !records.is_empty(),
        "encode_frame: a batch needs at least one record"
    );
    let record_count = u32::try_from(records.len())
        .ok()
        .filter(|&count| count <= i32::MAX as u32);
    let record_count = record_count.expect("encode_frame: too many records for one batch");
    let last_offset_delta = record_count - 1;
    assert!(
        base_offset
            .0
            .checked_add(u64::from(last_offset_delta))
            .is_some_and(|last| last <= i64::MAX as u64),
        "encode_frame: offsets over i64::MAX"
    );
    let timestamp_of = |record: &Record| record.timestamp_ms.unwrap_or(now_ms);
    let base_timestamp_ms = timestamp_of(&records[0]);
    let max_timestamp_ms = records
        .iter()
        .map(timestamp_of)
        .max()
        .unwrap_or(base_timestamp_ms);
    let header = BatchHeader {
        base_offset,
        leader_epoch,
        attributes: 0,
        last_offset_delta,
        base_timestamp_ms,
        max_timestamp_ms,
        producer_id: producer.producer_id,
        producer_epoch: producer.producer_epoch,
        base_sequence: producer.base_sequence,
        record_count,
    };

    let frame_start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER_BYTES]);
    write_batch_header(out, &header);
    for (offset_delta, record) in records.iter().enumerate() {
        let timestamp_delta = timestamp_of(record).wrapping_sub(base_timestamp_ms);
        // offset_delta <= last_offset_delta <= i32::MAX, checked above.
        write_record(
            out,
            RecordFields::from(record),
            timestamp_delta,
            offset_delta as i32,
        );
    }

    finish_frame(out, frame_start);
    header
}

/// Control type of the frame a Raft leader writes for the empty entry it
/// appends on election (the type KRaft gives its LeaderChange record).
pub const CONTROL_LEADER_CHANGE: i16 = 2;
/// Control type of a Raft configuration change (millrace's own type; the
/// payload is the raft-rs `ConfChangeV2`, protobuf-encoded).
pub const CONTROL_RAFT_CONF_CHANGE: i16 = 0x4d52;

/// Encodes a control batch of one record, as Kafka writes transaction
/// markers: attributes bit 5 set, key = version 0 (i16) and `control_type`
/// (i16), value = `payload`. It takes one offset; readers of this crate and
/// Kafka clients skip it. Replicated partitions store Raft's own entries
/// this way, so every Raft entry is exactly one frame.
pub fn encode_control_frame(
    out: &mut Vec<u8>,
    base_offset: Offset,
    leader_epoch: Term,
    control_type: i16,
    payload: &[u8],
    now_ms: i64,
) -> BatchHeader {
    let mut key = [0u8; 4];
    key[2..4].copy_from_slice(&control_type.to_be_bytes());
    let record = Record {
        key: Some(Bytes::copy_from_slice(&key)),
        value: Some(Bytes::copy_from_slice(payload)),
        headers: Vec::new(),
        timestamp_ms: Some(now_ms),
    };
    let frame_start = out.len();
    let mut header = encode_frame(
        out,
        base_offset,
        leader_epoch,
        ProducerFields::NONE,
        std::slice::from_ref(&record),
        now_ms,
    );
    header.attributes |= ATTRIBUTES_CONTROL;
    let attributes_at = frame_start + FRAME_HEADER_BYTES + BATCH_ATTRIBUTES_POSITION;
    out[attributes_at..attributes_at + 2].copy_from_slice(&header.attributes.to_be_bytes());
    finish_frame(out, frame_start);
    header
}

/// The type and payload of a control batch's record, `None` for a batch
/// that is not a control batch.
pub fn control_record(view: &FrameView) -> Result<Option<(i16, Bytes)>, FrameError> {
    if !view.header.is_control() {
        return Ok(None);
    }
    let mut plain = view.clone();
    plain.header.attributes &= !ATTRIBUTES_CONTROL;
    let records = plain.records()?;
    let [record] = records.as_slice() else {
        return Err(malformed(format!(
            "a control batch holds one record, not {}",
            records.len()
        )));
    };
    let key = record.key.as_deref().unwrap_or_default();
    let &[0, 0, high, low] = key else {
        return Err(malformed(format!(
            "control record key of {} bytes, expected version 0 and a type",
            key.len()
        )));
    };
    let payload = record.value.clone().unwrap_or_default();
    Ok(Some((i16::from_be_bytes([high, low]), payload)))
}

/// Fills in the lengths and both CRCs of the frame that starts at
/// `frame_start` of `out` and runs to its end (header and records written).
fn finish_frame(out: &mut [u8], frame_start: usize) {
    let batch_start = frame_start + FRAME_HEADER_BYTES;
    let batch_len = out.len() - batch_start;
    assert!(
        batch_len <= BATCH_BYTES_MAX,
        "encode_frame: batch of {batch_len} bytes is over BATCH_BYTES_MAX"
    );
    let batch = &mut out[batch_start..];
    let batch_length_field = (batch_len - BATCH_LENGTH_FIELD_END) as i32;
    batch[BATCH_LENGTH_POSITION..BATCH_LENGTH_FIELD_END]
        .copy_from_slice(&batch_length_field.to_be_bytes());
    let kafka_crc = crc32c::crc32c(&batch[BATCH_ATTRIBUTES_POSITION..]);
    batch[BATCH_CRC_POSITION..BATCH_ATTRIBUTES_POSITION].copy_from_slice(&kafka_crc.to_be_bytes());

    let batch_len_bytes = (batch_len as u32).to_le_bytes();
    let frame_crc = crc32c::crc32c_append(crc32c::crc32c(&batch_len_bytes), &out[batch_start..]);
    let frame_header = &mut out[frame_start..batch_start];
    frame_header[0..4].copy_from_slice(&FRAME_MAGIC);
    frame_header[4..8].copy_from_slice(&batch_len_bytes);
    frame_header[8..12].copy_from_slice(&frame_crc.to_le_bytes());
}

/// Re-encodes the records of one batch that survived a compaction as one
/// frame appended to `out`, keeping everything a reader could observe: the
/// template's base offset and `lastOffsetDelta` (the batch still ends where it
/// did, so the next batch's offsets follow on), leader epoch, attributes,
/// producer fields, base and max timestamps, and each record's own offset
/// (as `offset - base_offset`) and timestamp. Only `recordCount` and the
/// records change; the offset deltas become sparse, which decoding accepts.
///
/// `maxTimestamp` is kept rather than recomputed over the survivors: it is
/// still an upper bound of every record's timestamp (which decode checks),
/// time-based retention of the block keeps seeing the same age, and with
/// LogAppendTime it *is* every record's timestamp.
///
/// Returns the header written. Panics on caller bugs: `records` empty, not
/// strictly increasing by offset, or outside the template's offsets.
pub fn encode_compacted_frame(
    out: &mut Vec<u8>,
    template: &BatchHeader,
    records: &[FetchedRecord],
) -> BatchHeader {
    assert!(
        !records.is_empty(),
        "encode_compacted_frame: a batch needs at least one record"
    );
    assert!(
        records.len() <= template.record_count as usize,
        "encode_compacted_frame: more records than the template batch had"
    );
    let header = BatchHeader {
        record_count: records.len() as u32,
        ..*template
    };
    let frame_start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER_BYTES]);
    write_batch_header(out, &header);
    let mut previous: Option<Offset> = None;
    for record in records {
        assert!(
            record.offset >= template.base_offset && record.offset <= template.last_offset(),
            "encode_compacted_frame: record offset {} outside the batch [{}, {}]",
            record.offset,
            template.base_offset,
            template.last_offset()
        );
        assert!(
            previous.is_none_or(|previous| record.offset > previous),
            "encode_compacted_frame: record offsets must increase"
        );
        previous = Some(record.offset);
        // offset - base <= lastOffsetDelta <= i32::MAX (decode checked the template).
        let offset_delta = (record.offset.0 - template.base_offset.0) as i32;
        let timestamp_delta = record.timestamp_ms.wrapping_sub(template.base_timestamp_ms);
        write_record(
            out,
            RecordFields::from(record),
            timestamp_delta,
            offset_delta,
        );
    }
    finish_frame(out, frame_start);
    header
}

/// Attributes bit 4: the batch belongs to a transaction.
const ATTRIBUTES_TRANSACTIONAL: i16 = 0x10;
/// Attributes bit 5: a control batch (transaction markers).
const ATTRIBUTES_CONTROL: i16 = 0x20;

/// Checks a RecordBatch v2 that a client sent (Kafka's Produce), before
/// anything is stored: lengths (against `batch.len()`, nothing allocated),
/// magic 2, Kafka's CRC, no compression, not transactional or control, and
/// every record's structure, with offset deltas exactly `0..recordCount`
/// as producers write them. The base offset and leader epoch are ignored:
/// the log assigns them ([`encode_frame_from_batch`]).
pub fn validate_client_batch(batch: &[u8]) -> Result<BatchHeader, FrameError> {
    if batch.len() > BATCH_BYTES_MAX {
        return Err(FrameError::TooLong {
            what: "batch",
            length: batch.len() as u64,
            max: BATCH_BYTES_MAX as u64,
        });
    }
    // A client may send any base offset (Kafka clients send 0); only its
    // sign matters to the header check, so check a copy with 0.
    let mut header = decode_batch_header_with_base(batch, 0)?;
    if header.attributes & (ATTRIBUTES_TRANSACTIONAL | ATTRIBUTES_CONTROL) != 0 {
        return Err(malformed(format!(
            "transactional and control batches are not supported (attributes {:#06x})",
            header.attributes
        )));
    }
    if u64::from(header.record_count) != u64::from(header.last_offset_delta) + 1 {
        return Err(malformed(format!(
            "recordCount {} does not match lastOffsetDelta {} + 1",
            header.record_count, header.last_offset_delta
        )));
    }
    check_record_count(&header, batch.len())?;
    walk_records(batch, &header, &mut RecordValidator)?;
    header.base_offset = Offset(0);
    Ok(header)
}

/// Appends a frame holding `batch` (checked by [`validate_client_batch`])
/// to `out` with its base offset and leader epoch set; every other byte of
/// the client's batch is kept (producer id and sequence, timestamps,
/// records), and Kafka's CRC, which does not cover those two fields, stays
/// valid. Returns the header as stored.
pub fn encode_frame_from_batch(
    out: &mut Vec<u8>,
    batch: &[u8],
    checked: &BatchHeader,
    base_offset: Offset,
    leader_epoch: Term,
) -> BatchHeader {
    let frame_start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER_BYTES]);
    let batch_start = out.len();
    out.extend_from_slice(batch);
    let stored = &mut out[batch_start..];
    stored[0..8].copy_from_slice(&(base_offset.0 as i64).to_be_bytes());
    stored[12..16].copy_from_slice(&(leader_epoch.0 as i32).to_be_bytes());
    let batch_len_bytes = (batch.len() as u32).to_le_bytes();
    let frame_crc = crc32c::crc32c_append(crc32c::crc32c(&batch_len_bytes), &out[batch_start..]);
    let frame_header = &mut out[frame_start..batch_start];
    frame_header[0..4].copy_from_slice(&FRAME_MAGIC);
    frame_header[4..8].copy_from_slice(&batch_len_bytes);
    frame_header[8..12].copy_from_slice(&frame_crc.to_le_bytes());
    BatchHeader {
        base_offset,
        leader_epoch,
        ..*checked
    }
}

/// Decodes and verifies the frame at the start of `buffer` (magic, lengths
/// against [`BATCH_BYTES_MAX`] before anything is allocated, both CRCs,
/// header rules, and every record's structure). Returns the frame; its
/// length is `frame.frame.len()`. Bytes after the frame are not looked at.
pub fn decode_frame(buffer: &Bytes) -> Result<FrameView, FrameError> {
    let view = decode_frame_checksummed(buffer)?;
    let batch = &view.frame[FRAME_HEADER_BYTES..];
    walk_records(batch, &view.header, &mut RecordValidator)?;
    Ok(view)
}

/// [`decode_frame`] without the walk over the records: magic, lengths
/// (checked before anything is allocated), both CRCs, the batch header and
/// the record count against the bytes. The frame CRC covers every byte, so
/// this detects any damage; the record structure is checked by
/// [`FrameView::records_into`] when the records are read. Used by scans
/// (recovery, block loading) and reads, where a second walk would only cost.
pub fn decode_frame_checksummed(buffer: &Bytes) -> Result<FrameView, FrameError> {
    let available = buffer.len();
    let Some(frame_header) = buffer.first_chunk::<FRAME_HEADER_BYTES>() else {
        if let Some(magic) = buffer.first_chunk::<4>() {
            check_magic(magic)?;
        }
        return Err(FrameError::Incomplete {
            needed: FRAME_HEADER_BYTES,
            available,
        });
    };
    let frame_len = peek_frame_len(frame_header)?;
    if available < frame_len {
        return Err(FrameError::Incomplete {
            needed: frame_len,
            available,
        });
    }
    let batch = &buffer[FRAME_HEADER_BYTES..frame_len];
    let stored = read_u32_le(&frame_header[8..12]);
    let computed = crc32c::crc32c_append(crc32c::crc32c(&frame_header[4..8]), batch);
    if stored != computed {
        return Err(FrameError::Checksum { stored, computed });
    }
    let header = decode_batch_header(batch)?;
    check_record_count(&header, batch.len())?;
    Ok(FrameView {
        header,
        frame: buffer.slice(..frame_len),
    })
}

/// Reads only the frame header (magic and batch length), to size a read
/// before decoding. Returns the length of the whole frame:
/// [`FRAME_HEADER_BYTES`] + the batch length. Fails on bad magic, or a batch
/// length over [`BATCH_BYTES_MAX`] or under [`BATCH_HEADER_BYTES`].
pub fn peek_frame_len(header: &[u8; FRAME_HEADER_BYTES]) -> Result<usize, FrameError> {
    check_magic(&[header[0], header[1], header[2], header[3]])?;
    let batch_len = read_u32_le(&header[4..8]) as usize;
    if batch_len > BATCH_BYTES_MAX {
        return Err(FrameError::TooLong {
            what: "batch",
            length: batch_len as u64,
            max: BATCH_BYTES_MAX as u64,
        });
    }
    if batch_len < BATCH_HEADER_BYTES {
        return Err(FrameError::Malformed(format!(
            "batch length {batch_len} is under the batch header size {BATCH_HEADER_BYTES}"
        )));
    }
    Ok(FRAME_HEADER_BYTES + batch_len)
}

// Positions inside the RecordBatch (see the table in the module doc).
const BATCH_LENGTH_POSITION: usize = 8;
const BATCH_LENGTH_FIELD_END: usize = 12;
const BATCH_MAGIC_POSITION: usize = 16;
const BATCH_CRC_POSITION: usize = 17;
const BATCH_ATTRIBUTES_POSITION: usize = 21;
/// The only RecordBatch magic (format version) we read and write.
const BATCH_MAGIC: u8 = 2;
/// Attributes bits 0..3: compression codec (0 = none).
const ATTRIBUTES_COMPRESSION_MASK: i16 = 0x07;
/// Attributes bit 3: timestamps are LogAppendTime (maxTimestamp) rather than CreateTime.
const ATTRIBUTES_LOG_APPEND_TIME: i16 = 0x08;
/// Fewest bytes one record can take: length, attributes, timestampDelta,
/// offsetDelta, keyLength, valueLength and headerCount, one byte each.
const RECORD_BYTES_MIN: usize = 7;
/// Fewest bytes one record header can take: keyLength and valueLength.
const RECORD_HEADER_BYTES_MIN: usize = 2;
/// Longest varint (32-bit) and varlong (64-bit) encodings.
const VARINT_BYTES_MAX: usize = 5;
const VARLONG_BYTES_MAX: usize = 10;

fn check_magic(magic: &[u8; 4]) -> Result<(), FrameError> {
    if *magic != FRAME_MAGIC {
        return Err(FrameError::BadMagic { found: *magic });
    }
    Ok(())
}

fn read_u32_le(bytes: &[u8]) -> u32 {
    let mut array = [0u8; 4];
    array.copy_from_slice(&bytes[..4]);
    u32::from_le_bytes(array)
}

fn malformed(message: impl Into<String>) -> FrameError {
    FrameError::Malformed(message.into())
}

fn write_batch_header(out: &mut Vec<u8>, header: &BatchHeader) {
    out.extend_from_slice(&(header.base_offset.0 as i64).to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes()); // batchLength, filled in at the end
    out.extend_from_slice(&(header.leader_epoch.0 as i32).to_be_bytes());
    out.push(BATCH_MAGIC);
    out.extend_from_slice(&0u32.to_be_bytes()); // crc, filled in at the end
    out.extend_from_slice(&header.attributes.to_be_bytes());
    out.extend_from_slice(&(header.last_offset_delta as i32).to_be_bytes());
    out.extend_from_slice(&header.base_timestamp_ms.to_be_bytes());
    out.extend_from_slice(&header.max_timestamp_ms.to_be_bytes());
    out.extend_from_slice(&header.producer_id.to_be_bytes());
    out.extend_from_slice(&header.producer_epoch.to_be_bytes());
    out.extend_from_slice(&header.base_sequence.to_be_bytes());
    out.extend_from_slice(&(header.record_count as i32).to_be_bytes());
}

fn zigzag32(value: i32) -> u32 {
    ((value << 1) ^ (value >> 31)) as u32
}

fn zigzag64(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

fn unzigzag32(value: u32) -> i32 {
    ((value >> 1) as i32) ^ -((value & 1) as i32)
}

fn unzigzag64(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

fn unsigned_varint_bytes(mut value: u64) -> usize {
    let mut bytes = 1;
    while value >= 0x80 {
        value >>= 7;
        bytes += 1;
    }
    bytes
}

fn varint_bytes(value: i32) -> usize {
    unsigned_varint_bytes(u64::from(zigzag32(value)))
}

fn write_unsigned_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn write_varint(out: &mut Vec<u8>, value: i32) {
    write_unsigned_varint(out, u64::from(zigzag32(value)));
}

fn write_varlong(out: &mut Vec<u8>, value: i64) {
    write_unsigned_varint(out, zigzag64(value));
}

/// A length as a Kafka varint length field; lengths are far under
/// `i32::MAX` because the whole batch is under [`BATCH_BYTES_MAX`] (asserted
/// after encoding; this guards the conversion before it).
fn length_field(length: usize) -> i32 {
    assert!(
        length <= BATCH_BYTES_MAX,
        "encode_frame: field of {length} bytes is over BATCH_BYTES_MAX"
    );
    length as i32
}

fn optional_length_field(bytes: Option<&Bytes>) -> i32 {
    bytes.map_or(-1, |bytes| length_field(bytes.len()))
}

/// The fields of one record that go into its encoding (a [`Record`] to
/// append, or a [`FetchedRecord`] being re-encoded by a compaction).
#[derive(Clone, Copy)]
struct RecordFields<'a> {
    key: Option<&'a Bytes>,
    value: Option<&'a Bytes>,
    headers: &'a [Header],
}

impl<'a> From<&'a Record> for RecordFields<'a> {
    fn from(record: &'a Record) -> Self {
        RecordFields {
            key: record.key.as_ref(),
            value: record.value.as_ref(),
            headers: &record.headers,
        }
    }
}

impl<'a> From<&'a FetchedRecord> for RecordFields<'a> {
    fn from(record: &'a FetchedRecord) -> Self {
        RecordFields {
            key: record.key.as_ref(),
            value: record.value.as_ref(),
            headers: &record.headers,
        }
    }
}

fn record_body_bytes(record: RecordFields<'_>, timestamp_delta: i64, offset_delta: i32) -> usize {
    let optional_bytes = |bytes: Option<&Bytes>| {
        varint_bytes(optional_length_field(bytes)) + bytes.map_or(0, |bytes| bytes.len())
    };
    let headers: usize = record
        .headers
        .iter()
        .map(|header| {
            varint_bytes(length_field(header.key.len()))
                + header.key.len()
                + varint_bytes(length_field(header.value.len()))
                + header.value.len()
        })
        .sum();
    1 + unsigned_varint_bytes(zigzag64(timestamp_delta))
        + varint_bytes(offset_delta)
        + optional_bytes(record.key)
        + optional_bytes(record.value)
        + varint_bytes(length_field(record.headers.len()))
        + headers
}

fn write_record(
    out: &mut Vec<u8>,
    record: RecordFields<'_>,
    timestamp_delta: i64,
    offset_delta: i32,
) {
    let body_bytes = record_body_bytes(record, timestamp_delta, offset_delta);
    out.reserve(body_bytes + VARINT_BYTES_MAX);
    write_varint(out, length_field(body_bytes));
    let body_start = out.len();
    out.push(0); // record attributes: unused
    write_varlong(out, timestamp_delta);
    write_varint(out, offset_delta);
    for bytes in [record.key, record.value] {
        write_varint(out, optional_length_field(bytes));
        if let Some(bytes) = bytes {
            out.extend_from_slice(bytes);
        }
    }
    write_varint(out, length_field(record.headers.len()));
    for header in record.headers {
        write_varint(out, length_field(header.key.len()));
        out.extend_from_slice(header.key.as_bytes());
        write_varint(out, length_field(header.value.len()));
        out.extend_from_slice(&header.value);
    }
    debug_assert_eq!(out.len() - body_start, body_bytes);
}

/// Decodes and checks the fixed fields of a RecordBatch whose frame CRC
/// already matched. `batch` is the whole RecordBatch.
fn decode_batch_header(batch: &[u8]) -> Result<BatchHeader, FrameError> {
    let Some(fixed) = batch.first_chunk::<8>() else {
        return Err(malformed(format!(
            "batch of {} bytes is under its header size",
            batch.len()
        )));
    };
    decode_batch_header_with_base(batch, i64::from_be_bytes(*fixed))
}

/// [`decode_batch_header`] with `base_offset` in place of the batch's own.
fn decode_batch_header_with_base(
    batch: &[u8],
    base_offset: i64,
) -> Result<BatchHeader, FrameError> {
    let Some(fixed) = batch.first_chunk::<BATCH_HEADER_BYTES>() else {
        return Err(malformed(format!(
            "batch of {} bytes is under its header size",
            batch.len()
        )));
    };
    let i16_at = |position: usize| i16::from_be_bytes([fixed[position], fixed[position + 1]]);
    let i32_at = |position: usize| {
        i32::from_be_bytes([
            fixed[position],
            fixed[position + 1],
            fixed[position + 2],
            fixed[position + 3],
        ])
    };
    let i64_at = |position: usize| {
        let mut array = [0u8; 8];
        array.copy_from_slice(&fixed[position..position + 8]);
        i64::from_be_bytes(array)
    };

    let magic = fixed[BATCH_MAGIC_POSITION];
    if magic != BATCH_MAGIC {
        return Err(malformed(format!(
            "record batch magic {magic}, expected {BATCH_MAGIC}"
        )));
    }
    let batch_length = i32_at(BATCH_LENGTH_POSITION);
    if i64::from(batch_length) != (batch.len() - BATCH_LENGTH_FIELD_END) as i64 {
        return Err(malformed(format!(
            "batchLength {batch_length} does not match the frame's batch of {} bytes",
            batch.len()
        )));
    }
    let stored = i32_at(BATCH_CRC_POSITION) as u32;
    let computed = crc32c::crc32c(&batch[BATCH_ATTRIBUTES_POSITION..]);
    if stored != computed {
        return Err(FrameError::Checksum { stored, computed });
    }
    let attributes = i16_at(21);
    if attributes & ATTRIBUTES_COMPRESSION_MASK != 0 {
        return Err(malformed(format!(
            "compressed batches are not supported (attributes {attributes:#06x})"
        )));
    }
    let last_offset_delta = i32_at(23);
    let record_count = i32_at(57);
    if base_offset < 0 {
        return Err(malformed(format!("negative baseOffset {base_offset}")));
    }
    if last_offset_delta < 0 {
        return Err(malformed(format!(
            "negative lastOffsetDelta {last_offset_delta}"
        )));
    }
    if base_offset
        .checked_add(i64::from(last_offset_delta))
        .is_none()
    {
        return Err(malformed(format!(
            "lastOffsetDelta {last_offset_delta} overflows baseOffset {base_offset}"
        )));
    }
    if record_count < 1 || i64::from(record_count) > i64::from(last_offset_delta) + 1 {
        return Err(malformed(format!(
            "recordCount {record_count} is not in 1..={} (lastOffsetDelta + 1)",
            i64::from(last_offset_delta) + 1
        )));
    }
    Ok(BatchHeader {
        base_offset: Offset(base_offset as u64),
        leader_epoch: Term(i32_at(12) as u32),
        attributes,
        last_offset_delta: last_offset_delta as u32,
        base_timestamp_ms: i64_at(27),
        max_timestamp_ms: i64_at(35),
        producer_id: i64_at(43),
        producer_epoch: i16_at(51),
        base_sequence: i32_at(53),
        record_count: record_count as u32,
    })
}

/// Refuses a record count the bytes cannot hold, before anything is sized by it.
fn check_record_count(header: &BatchHeader, batch_bytes: usize) -> Result<(), FrameError> {
    let records_bytes = batch_bytes.saturating_sub(BATCH_HEADER_BYTES);
    let count_max = records_bytes / RECORD_BYTES_MIN;
    if header.record_count as usize > count_max {
        return Err(FrameError::TooLong {
            what: "record count",
            length: u64::from(header.record_count),
            max: count_max as u64,
        });
    }
    Ok(())
}

/// A read position in a RecordBatch; every read is bounds checked.
struct Cursor<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl Cursor<'_> {
    fn read_u8(&mut self) -> Result<u8, FrameError> {
        let byte = *self
            .bytes
            .get(self.position)
            .ok_or_else(|| malformed("record runs past the batch"))?;
        self.position += 1;
        Ok(byte)
    }

    fn read_unsigned_varint(
        &mut self,
        bytes_max: usize,
        value_max: u64,
    ) -> Result<u64, FrameError> {
        let first = self.read_u8()?;
        if first < 0x80 {
            return Ok(u64::from(first));
        }
        let mut value = u64::from(first & 0x7f);
        for index in 1..bytes_max {
            let byte = self.read_u8()?;
            value |= u64::from(byte & 0x7f) << (7 * index);
            if byte < 0x80 {
                // The last byte of a 10-byte varlong may only carry one bit.
                if value > value_max || (index == VARLONG_BYTES_MAX - 1 && byte > 1) {
                    return Err(malformed("varint out of range"));
                }
                return Ok(value);
            }
        }
        Err(malformed("varint too long"))
    }

    fn read_varint(&mut self) -> Result<i32, FrameError> {
        let value = self.read_unsigned_varint(VARINT_BYTES_MAX, u64::from(u32::MAX))?;
        Ok(unzigzag32(value as u32))
    }

    fn read_varlong(&mut self) -> Result<i64, FrameError> {
        Ok(unzigzag64(
            self.read_unsigned_varint(VARLONG_BYTES_MAX, u64::MAX)?,
        ))
    }

    /// Bytes left before the end of `bytes`.
    fn remaining(&self) -> usize {
        // `position` only advances by checked reads, so it never passes the end.
        self.bytes.len() - self.position
    }

    /// The range of the next `length` bytes.
    fn take(&mut self, length: usize, what: &str) -> Result<Range<usize>, FrameError> {
        if length > self.remaining() {
            return Err(malformed(format!(
                "{what} of {length} bytes runs past its record"
            )));
        }
        let start = self.position;
        self.position = start + length;
        Ok(start..self.position)
    }

    /// A varint length field (-1 = null) followed by that many bytes.
    fn read_optional_bytes(&mut self, what: &str) -> Result<Option<Range<usize>>, FrameError> {
        let length = self.read_varint()?;
        if length == -1 {
            return Ok(None);
        }
        let length =
            usize::try_from(length).map_err(|_| malformed(format!("{what} length {length}")))?;
        self.take(length, what).map(Some)
    }
}

/// One parsed record, as positions in the RecordBatch.
struct RecordParts {
    offset: Offset,
    timestamp_ms: i64,
    key: Option<Range<usize>>,
    value: Option<Range<usize>>,
    header_count: usize,
}

/// What [`walk_records`] hands each record and header to.
trait RecordVisitor {
    fn record(&mut self, parts: RecordParts);
    /// A header of the last record; `key` is checked UTF-8.
    fn header(&mut self, key: &str, value: Option<Range<usize>>);
}

/// Checks structure only (decode_frame); allocates nothing.
struct RecordValidator;

impl RecordVisitor for RecordValidator {
    fn record(&mut self, _parts: RecordParts) {}
    fn header(&mut self, _key: &str, _value: Option<Range<usize>>) {}
}

/// Builds [`FetchedRecord`]s whose bytes are slices of the frame.
struct RecordCollector<'a> {
    frame: &'a Bytes,
    header: &'a BatchHeader,
    /// Records below this are walked (and checked) but not collected.
    from_offset: Offset,
    records: &'a mut Vec<FetchedRecord>,
    /// The record being walked is below `from_offset`: its headers are skipped too.
    skipping: bool,
}

impl RecordCollector<'_> {
    /// A slice of the frame; `range` is inside the RecordBatch (checked by the walk).
    fn slice(&self, range: Range<usize>) -> Bytes {
        self.frame
            .slice(range.start + FRAME_HEADER_BYTES..range.end + FRAME_HEADER_BYTES)
    }
}

impl RecordVisitor for RecordCollector<'_> {
    fn record(&mut self, parts: RecordParts) {
        self.skipping = parts.offset < self.from_offset;
        if self.skipping {
            return;
        }
        let timestamp_ms = if self.header.attributes & ATTRIBUTES_LOG_APPEND_TIME != 0 {
            self.header.max_timestamp_ms
        } else {
            parts.timestamp_ms
        };
        let record = FetchedRecord {
            offset: parts.offset,
            timestamp_ms,
            key: parts.key.map(|range| self.slice(range)),
            value: parts.value.map(|range| self.slice(range)),
            // Bounded by the bytes (checked by the walk); Vec::new when 0 does not allocate.
            headers: if parts.header_count == 0 {
                Vec::new()
            } else {
                Vec::with_capacity(parts.header_count)
            },
        };
        self.records.push(record);
    }

    fn header(&mut self, key: &str, value: Option<Range<usize>>) {
        let value = value.map_or_else(Bytes::new, |range| self.slice(range));
        if self.skipping {
            return;
        }
        if let Some(record) = self.records.last_mut() {
            record.headers.push(Header {
                key: key.to_owned(),
                value,
            });
        }
    }
}

/// Parses every record of `batch` (the whole RecordBatch) and checks the
/// rules: each record exactly fills its length, offset deltas increase and
/// stay within lastOffsetDelta, CreateTime timestamps stay within
/// maxTimestamp, header keys are UTF-8, the count matches recordCount, and
/// nothing follows the last record.
fn walk_records(
    batch: &[u8],
    header: &BatchHeader,
    visitor: &mut impl RecordVisitor,
) -> Result<(), FrameError> {
    if batch.len() < BATCH_HEADER_BYTES {
        return Err(malformed(format!(
            "batch of {} bytes is under its header size",
            batch.len()
        )));
    }
    let check_timestamps = header.attributes & ATTRIBUTES_LOG_APPEND_TIME == 0;
    let mut position = BATCH_HEADER_BYTES;
    let mut previous_offset_delta: i64 = -1;
    for index in 0..header.record_count {
        let mut cursor = Cursor {
            bytes: batch,
            position,
        };
        let length = cursor.read_varint()?;
        let length = usize::try_from(length)
            .map_err(|_| malformed(format!("record {index} length {length}")))?;
        if length > cursor.remaining() {
            return Err(malformed(format!(
                "record {index} of {length} bytes runs past the batch"
            )));
        }
        let end = cursor.position + length;
        // Every field read below is bounded by the record's own length.
        let mut cursor = Cursor {
            bytes: &batch[..end],
            position: cursor.position,
        };
        let _attributes = cursor.read_u8()?;
        let timestamp_delta = cursor.read_varlong()?;
        let offset_delta = cursor.read_varint()?;
        if i64::from(offset_delta) <= previous_offset_delta
            || offset_delta as u32 > header.last_offset_delta
        {
            return Err(malformed(format!(
                "record {index} offsetDelta {offset_delta} is not after {previous_offset_delta} and within lastOffsetDelta {}",
                header.last_offset_delta
            )));
        }
        previous_offset_delta = i64::from(offset_delta);
        let timestamp_ms = header.base_timestamp_ms.wrapping_add(timestamp_delta);
        if check_timestamps && timestamp_ms > header.max_timestamp_ms {
            return Err(malformed(format!(
                "record {index} timestamp {timestamp_ms} is after maxTimestamp {}",
                header.max_timestamp_ms
            )));
        }
        let offset = header
            .base_offset
            .0
            .checked_add(offset_delta as u64)
            .map(Offset)
            .ok_or_else(|| malformed("record offset overflows"))?;
        let key = cursor.read_optional_bytes("key")?;
        let value = cursor.read_optional_bytes("value")?;
        let header_count = cursor.read_varint()?;
        let header_count = usize::try_from(header_count)
            .ok()
            .filter(|&count| count <= cursor.remaining() / RECORD_HEADER_BYTES_MIN)
            .ok_or_else(|| {
                malformed(format!(
                    "record {index} headerCount {header_count} does not fit its record"
                ))
            })?;
        visitor.record(RecordParts {
            offset,
            timestamp_ms,
            key,
            value,
            header_count,
        });
        for _ in 0..header_count {
            let key_length = cursor.read_varint()?;
            let key_length = usize::try_from(key_length)
                .map_err(|_| malformed(format!("record {index} header key length {key_length}")))?;
            let key_range = cursor.take(key_length, "header key")?;
            let key = std::str::from_utf8(&batch[key_range])
                .map_err(|_| malformed(format!("record {index} header key is not UTF-8")))?;
            let value = cursor.read_optional_bytes("header value")?;
            visitor.header(key, value);
        }
        if cursor.position != end {
            return Err(malformed(format!(
                "record {index} has {} bytes after its fields",
                end - cursor.position
            )));
        }
        position = end;
    }
    if position != batch.len() {
        return Err(malformed(format!(
            "{} bytes after the last of {} records",
            batch.len() - position,
            header.record_count
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW_MS: i64 = 1_700_000_000_000;

    fn encode(base_offset: u64, records: &[Record]) -> (Vec<u8>, BatchHeader) {
        let mut out = Vec::new();
        let header = encode_frame(
            &mut out,
            Offset(base_offset),
            Term(3),
            ProducerFields::NONE,
            records,
            NOW_MS,
        );
        (out, header)
    }

    fn expected(base_offset: u64, records: &[Record]) -> Vec<FetchedRecord> {
        records
            .iter()
            .enumerate()
            .map(|(index, record)| FetchedRecord {
                offset: Offset(base_offset + index as u64),
                timestamp_ms: record.timestamp_ms.unwrap_or(NOW_MS),
                key: record.key.clone(),
                value: record.value.clone(),
                headers: record.headers.clone(),
            })
            .collect()
    }

    /// Replaces the Kafka CRC and then the frame CRC, so a test can check a
    /// rule that sits behind both checksums.
    fn reseal(frame: &mut [u8]) {
        let batch = &mut frame[FRAME_HEADER_BYTES..];
        let kafka_crc = crc32c::crc32c(&batch[21..]);
        batch[17..21].copy_from_slice(&kafka_crc.to_be_bytes());
        let frame_crc = crc32c::crc32c(&frame[4..8]);
        let frame_crc = crc32c::crc32c_append(frame_crc, &frame[FRAME_HEADER_BYTES..]);
        frame[8..12].copy_from_slice(&frame_crc.to_le_bytes());
    }

    fn set_batch_len(frame: &mut [u8], batch_len: usize) {
        frame[4..8].copy_from_slice(&(batch_len as u32).to_le_bytes());
        frame[FRAME_HEADER_BYTES + 8..FRAME_HEADER_BYTES + 12]
            .copy_from_slice(&((batch_len - 12) as i32).to_be_bytes());
    }

    fn malformed_message(result: Result<FrameView, FrameError>) -> String {
        match result {
            Err(FrameError::Malformed(message)) => message,
            other => panic!("expected Malformed, got {other:?}"),
        }
    }

    #[test]
    fn crc32c_is_castagnoli() {
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn known_answer_tiny_batch() {
        let records = [Record::new(&b"a"[..]).with_timestamp_ms(1000)];
        let mut out = b"prefix".to_vec();
        let header = encode_frame(
            &mut out,
            Offset(5),
            Term(3),
            ProducerFields::NONE,
            &records,
            NOW_MS,
        );
        let frame = &out[6..];

        // The RecordBatch v2, written out by hand from Kafka's documentation.
        let mut batch = Vec::new();
        batch.extend_from_slice(&5i64.to_be_bytes()); // baseOffset
        batch.extend_from_slice(&57i32.to_be_bytes()); // batchLength: 69 - 12
        batch.extend_from_slice(&3i32.to_be_bytes()); // partitionLeaderEpoch
        batch.push(2); // magic
        batch.extend_from_slice(&[0; 4]); // crc, below
        batch.extend_from_slice(&0i16.to_be_bytes()); // attributes
        batch.extend_from_slice(&0i32.to_be_bytes()); // lastOffsetDelta
        batch.extend_from_slice(&1000i64.to_be_bytes()); // baseTimestamp
        batch.extend_from_slice(&1000i64.to_be_bytes()); // maxTimestamp
        batch.extend_from_slice(&(-1i64).to_be_bytes()); // producerId
        batch.extend_from_slice(&(-1i16).to_be_bytes()); // producerEpoch
        batch.extend_from_slice(&(-1i32).to_be_bytes()); // baseSequence
        batch.extend_from_slice(&1i32.to_be_bytes()); // recordCount
                                                      // length 7 (zigzag 14), attributes, timestampDelta 0, offsetDelta 0,
                                                      // key null (zigzag(-1) = 1), value length 1 (zigzag 2), "a", 0 headers.
        batch.extend_from_slice(&[0x0e, 0x00, 0x00, 0x00, 0x01, 0x02, b'a', 0x00]);
        assert_eq!(batch.len(), 69);
        let kafka_crc = crc32c::crc32c(&batch[21..]);
        batch[17..21].copy_from_slice(&kafka_crc.to_be_bytes());

        assert_eq!(&frame[0..4], b"MRF1");
        assert_eq!(&frame[4..8], &69u32.to_le_bytes());
        let mut covered = frame[4..8].to_vec();
        covered.extend_from_slice(&batch);
        assert_eq!(&frame[8..12], &crc32c::crc32c(&covered).to_le_bytes());
        assert_eq!(&frame[12..], &batch[..]);
        assert_eq!(header.record_count, 1);
        assert_eq!(header.next_offset(), Offset(6));

        let decoded = decode_frame(&Bytes::copy_from_slice(frame)).unwrap();
        assert_eq!(decoded.header, header);
        assert_eq!(decoded.record_batch(), Bytes::copy_from_slice(&batch));
        assert_eq!(decoded.records().unwrap(), expected(5, &records));
    }

    #[test]
    fn the_checksummed_decode_detects_every_single_bit_flip() {
        let records = vec![
            Record::new("a").with_key("k").with_header("h", "v"),
            Record::new("bb").with_timestamp_ms(5),
        ];
        let (frame, header) = encode(7, &records);
        let view = decode_frame_checksummed(&Bytes::from(frame.clone())).unwrap();
        assert_eq!(view.header, header);
        assert_eq!(view.records().unwrap(), expected(7, &records));
        for bit in 0..frame.len() * 8 {
            let mut damaged = frame.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(
                decode_frame_checksummed(&Bytes::from(damaged)).is_err(),
                "flip of bit {bit} went unnoticed"
            );
        }
    }

    #[test]
    fn records_into_skips_records_below_the_offset_with_their_headers() {
        let records: Vec<Record> = (0..4)
            .map(|i| {
                Record::new(format!("value-{i}"))
                    .with_timestamp_ms(1_000 + i)
                    .with_header(format!("h{i}"), format!("x{i}"))
            })
            .collect();
        let (frame, _) = encode(10, &records);
        let view = decode_frame(&Bytes::from(frame)).unwrap();
        let mut out = vec![expected(0, &records[..1]).remove(0)];
        view.records_into(&mut out, Offset(12)).unwrap();
        let mut wanted = expected(0, &records[..1]);
        wanted.extend(expected(10, &records).into_iter().skip(2));
        assert_eq!(
            out, wanted,
            "offsets 10 and 11 and their headers are skipped"
        );
    }

    #[test]
    fn round_trip_with_headers_and_out_of_order_timestamps() {
        let records = vec![
            Record::new(&b"one"[..])
                .with_key(&b"k"[..])
                .with_timestamp_ms(50)
                .with_header("trace", &b"x"[..]),
            Record {
                value: None,
                key: Some(Bytes::from_static(b"gone")),
                ..Record::default()
            },
            Record::new(Bytes::new())
                .with_timestamp_ms(-7)
                .with_header("", Bytes::new())
                .with_header("é", &b"2"[..]),
        ];
        let producer = ProducerFields {
            producer_id: 9,
            producer_epoch: 2,
            base_sequence: 40,
        };
        let mut out = Vec::new();
        let header = encode_frame(
            &mut out,
            Offset(1 << 40),
            Term(u32::MAX),
            producer,
            &records,
            NOW_MS,
        );
        assert_eq!(header.base_timestamp_ms, 50);
        assert_eq!(header.max_timestamp_ms, NOW_MS);
        assert_eq!(header.last_offset_delta, 2);
        let frame = decode_frame(&Bytes::from(out)).unwrap();
        assert_eq!(frame.header, header);
        assert_eq!(frame.header.leader_epoch, Term(u32::MAX));
        assert_eq!(frame.records().unwrap(), expected(1 << 40, &records));
    }

    #[test]
    fn decoded_bytes_are_slices_of_the_input() {
        let records = [Record::new(vec![7u8; 100])
            .with_key(vec![1u8; 10])
            .with_header("h", vec![2u8; 20])];
        let (out, _) = encode(0, &records);
        let buffer = Bytes::from(out);
        let range = buffer.as_ptr() as usize..buffer.as_ptr() as usize + buffer.len();
        let frame = decode_frame(&buffer).unwrap();
        assert_eq!(frame.frame.as_ptr(), buffer.as_ptr());
        let fetched = frame.records().unwrap();
        let record = &fetched[0];
        for bytes in [
            record.key.as_ref().unwrap(),
            record.value.as_ref().unwrap(),
            &record.headers[0].value,
        ] {
            assert!(
                range.contains(&(bytes.as_ptr() as usize)),
                "copied, not sliced"
            );
        }
    }

    #[test]
    fn frames_back_to_back_decode_one_at_a_time() {
        let mut out = Vec::new();
        let first = encode_frame(
            &mut out,
            Offset(0),
            Term(1),
            ProducerFields::NONE,
            &[Record::new("a"), Record::new("b")],
            NOW_MS,
        );
        let first_len = out.len();
        let second = encode_frame(
            &mut out,
            first.next_offset(),
            Term(2),
            ProducerFields::NONE,
            &[Record::new("c")],
            NOW_MS,
        );
        let buffer = Bytes::from(out);
        let one = decode_frame(&buffer).unwrap();
        assert_eq!(one.frame.len(), first_len);
        assert_eq!(one.header, first);
        let two = decode_frame(&buffer.slice(first_len..)).unwrap();
        assert_eq!(two.header, second);
        assert_eq!(two.records().unwrap()[0].offset, Offset(2));
    }

    #[test]
    fn peek_frame_len_reads_the_frame_length() {
        let (out, _) = encode(0, &[Record::new("abc")]);
        let header: [u8; FRAME_HEADER_BYTES] = out[..FRAME_HEADER_BYTES].try_into().unwrap();
        assert_eq!(peek_frame_len(&header), Ok(out.len()));
        let mut bad = header;
        bad[0] = b'X';
        assert_eq!(
            peek_frame_len(&bad),
            Err(FrameError::BadMagic { found: *b"XRF1" })
        );
        let mut long = header;
        long[4..8].copy_from_slice(&(BATCH_BYTES_MAX as u32 + 1).to_le_bytes());
        assert!(matches!(
            peek_frame_len(&long),
            Err(FrameError::TooLong { what: "batch", .. })
        ));
        let mut short = header;
        short[4..8].copy_from_slice(&(BATCH_HEADER_BYTES as u32 - 1).to_le_bytes());
        assert!(matches!(
            peek_frame_len(&short),
            Err(FrameError::Malformed(_))
        ));
    }

    #[test]
    fn huge_length_is_refused_before_reading_or_allocating() {
        let mut bytes = b"MRF1".to_vec();
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        bytes.extend_from_slice(&[0; 4]);
        let error = decode_frame(&Bytes::from(bytes)).unwrap_err();
        assert!(
            matches!(error, FrameError::TooLong { length, .. } if length == u64::from(u32::MAX))
        );
    }

    #[test]
    fn short_buffers_are_incomplete_or_bad_magic() {
        assert_eq!(
            decode_frame(&Bytes::new()).unwrap_err(),
            FrameError::Incomplete {
                needed: 12,
                available: 0
            }
        );
        assert!(matches!(
            decode_frame(&Bytes::from_static(b"MRF1xx")),
            Err(FrameError::Incomplete {
                needed: 12,
                available: 6
            })
        ));
        assert!(matches!(
            decode_frame(&Bytes::from_static(b"JUNKxx")),
            Err(FrameError::BadMagic { .. })
        ));
        let (out, _) = encode(0, &[Record::new("abc")]);
        let cut = Bytes::copy_from_slice(&out[..out.len() - 1]);
        assert_eq!(
            decode_frame(&cut).unwrap_err(),
            FrameError::Incomplete {
                needed: out.len(),
                available: out.len() - 1
            }
        );
    }

    #[test]
    fn rules_behind_the_checksums_are_checked() {
        let (out, _) = encode(10, &[Record::new("abc"), Record::new("def")]);
        let batch = FRAME_HEADER_BYTES;

        let mut magic = out.clone();
        magic[batch + 16] = 1;
        reseal(&mut magic);
        assert!(malformed_message(decode_frame(&Bytes::from(magic))).contains("magic"));

        let mut batch_length = out.clone();
        batch_length[batch + 8..batch + 12].copy_from_slice(&1000i32.to_be_bytes());
        reseal(&mut batch_length);
        assert!(malformed_message(decode_frame(&Bytes::from(batch_length))).contains("batchLength"));

        let mut compressed = out.clone();
        compressed[batch + 22] = 1; // gzip
        reseal(&mut compressed);
        assert!(malformed_message(decode_frame(&Bytes::from(compressed))).contains("compressed"));

        let mut negative_offset = out.clone();
        negative_offset[batch..batch + 8].copy_from_slice(&(-1i64).to_be_bytes());
        reseal(&mut negative_offset);
        assert!(
            malformed_message(decode_frame(&Bytes::from(negative_offset))).contains("baseOffset")
        );

        // recordCount 1 with two records: the second is trailing garbage.
        let mut count = out.clone();
        count[batch + 57..batch + 61].copy_from_slice(&1i32.to_be_bytes());
        reseal(&mut count);
        assert!(malformed_message(decode_frame(&Bytes::from(count))).contains("after the last"));

        // recordCount 3 with two records and lastOffsetDelta 2: runs out.
        let mut count = out.clone();
        count[batch + 57..batch + 61].copy_from_slice(&3i32.to_be_bytes());
        count[batch + 23..batch + 27].copy_from_slice(&2i32.to_be_bytes());
        reseal(&mut count);
        assert!(decode_frame(&Bytes::from(count)).is_err());

        // recordCount over what the bytes can hold is refused before sizing anything.
        let mut count = out.clone();
        count[batch + 57..batch + 61].copy_from_slice(&i32::MAX.to_be_bytes());
        count[batch + 23..batch + 27].copy_from_slice(&i32::MAX.to_be_bytes());
        reseal(&mut count);
        assert!(matches!(
            decode_frame(&Bytes::from(count)),
            Err(FrameError::TooLong {
                what: "record count",
                ..
            })
        ));

        // lastOffsetDelta 0 with a record at offsetDelta 1.
        let mut delta = out.clone();
        delta[batch + 23..batch + 27].copy_from_slice(&0i32.to_be_bytes());
        delta[batch + 57..batch + 61].copy_from_slice(&1i32.to_be_bytes());
        reseal(&mut delta);
        assert!(decode_frame(&Bytes::from(delta)).is_err());

        let mut max_timestamp = out.clone();
        max_timestamp[batch + 35..batch + 43].copy_from_slice(&(NOW_MS - 1).to_be_bytes());
        reseal(&mut max_timestamp);
        assert!(
            malformed_message(decode_frame(&Bytes::from(max_timestamp))).contains("maxTimestamp")
        );

        // Trailing garbage inside the batch, with consistent lengths and CRCs.
        let mut trailing = out.clone();
        trailing.push(0);
        let batch_len = trailing.len() - FRAME_HEADER_BYTES;
        set_batch_len(&mut trailing, batch_len);
        reseal(&mut trailing);
        assert!(malformed_message(decode_frame(&Bytes::from(trailing))).contains("after the last"));
    }

    #[test]
    fn offset_deltas_must_increase() {
        let (out, _) = encode(0, &[Record::new("abc"), Record::new("def")]);
        // Second record: length at 61+8, attributes, timestampDelta, offsetDelta.
        let first_record_bytes = 10; // length, attributes, timestampDelta, offsetDelta, key, value length, "abc", headerCount
        let offset_delta_position =
            FRAME_HEADER_BYTES + BATCH_HEADER_BYTES + first_record_bytes + 3;
        assert_eq!(out[offset_delta_position], 2, "zigzag(1)");
        let mut repeated = out.clone();
        repeated[offset_delta_position] = 0;
        reseal(&mut repeated);
        assert!(malformed_message(decode_frame(&Bytes::from(repeated))).contains("offsetDelta"));
    }

    #[test]
    fn header_keys_must_be_utf8() {
        let (out, _) = encode(0, &[Record::new("v").with_header("k", &b"x"[..])]);
        let key_position = out.iter().rposition(|&byte| byte == b'k').unwrap();
        let mut invalid = out.clone();
        invalid[key_position] = 0xff;
        reseal(&mut invalid);
        assert!(malformed_message(decode_frame(&Bytes::from(invalid))).contains("UTF-8"));
    }

    #[test]
    fn records_of_a_forged_view_error_instead_of_panicking() {
        let (out, header) = encode(0, &[Record::new("abc")]);
        let forged = FrameView {
            header: BatchHeader {
                record_count: u32::MAX,
                ..header
            },
            frame: Bytes::from(out.clone()),
        };
        assert!(forged.records().is_err());
        let short = FrameView {
            header,
            frame: Bytes::copy_from_slice(&out[..5]),
        };
        assert!(short.records().is_err());
    }

    /// A compacted batch keeps its base offset, last offset delta, epoch,
    /// producer fields and timestamps; only the dropped records are gone,
    /// and the survivors keep their offsets and timestamps.
    #[test]
    fn a_compacted_batch_keeps_its_offsets_and_fields() {
        let records: Vec<Record> = (0..6)
            .map(|index| Record {
                key: Some(Bytes::from(format!("k{}", index % 3))),
                value: (index != 4).then(|| Bytes::from(format!("v{index}"))),
                headers: vec![Header {
                    key: format!("h{index}"),
                    value: Bytes::from_static(b"x"),
                }],
                timestamp_ms: Some(NOW_MS - 100 + index * 7),
            })
            .collect();
        let mut original = Vec::new();
        let producer = ProducerFields {
            producer_id: 77,
            producer_epoch: 2,
            base_sequence: 40,
        };
        let template = encode_frame(
            &mut original,
            Offset(500),
            Term(9),
            producer,
            &records,
            NOW_MS,
        );
        let decoded = decode_frame(&Bytes::from(original))
            .unwrap()
            .records()
            .unwrap();
        // Keep offsets 501, 504 (a tombstone) and 505: sparse deltas 1, 4, 5.
        let survivors: Vec<FetchedRecord> = [1, 4, 5].iter().map(|&i| decoded[i].clone()).collect();
        let mut out = vec![0xAB]; // bytes already in `out` are left alone
        let header = encode_compacted_frame(&mut out, &template, &survivors);
        assert_eq!(out[0], 0xAB);
        assert_eq!(
            header,
            BatchHeader {
                record_count: 3,
                ..template
            }
        );
        let view = decode_frame(&Bytes::from(out.split_off(1))).unwrap();
        assert_eq!(view.header, header);
        assert_eq!(view.header.base_offset, Offset(500));
        assert_eq!(view.header.next_offset(), Offset(506));
        assert_eq!(view.header.producer_id, 77);
        assert_eq!(view.records().unwrap(), survivors);
        let mut from_504 = Vec::new();
        view.records_into(&mut from_504, Offset(502)).unwrap();
        assert_eq!(from_504, survivors[1..].to_vec());
    }

    /// Decode accepts every sparse subset, the first record dropped or not.
    #[test]
    fn every_subset_of_a_batch_re_encodes_and_decodes() {
        let records: Vec<Record> = (0..5)
            .map(|index| Record::new(format!("value {index}")))
            .collect();
        let (original, template) = encode(1 << 40, &records);
        let decoded = decode_frame(&Bytes::from(original))
            .unwrap()
            .records()
            .unwrap();
        for mask in 1u32..(1 << records.len()) {
            let survivors: Vec<FetchedRecord> = decoded
                .iter()
                .enumerate()
                .filter(|(index, _)| mask & (1 << index) != 0)
                .map(|(_, record)| record.clone())
                .collect();
            let mut out = Vec::new();
            encode_compacted_frame(&mut out, &template, &survivors);
            let view = decode_frame(&Bytes::from(out)).unwrap();
            assert_eq!(
                view.header.last_offset(),
                template.last_offset(),
                "mask {mask:#b}"
            );
            assert_eq!(view.records().unwrap(), survivors, "mask {mask:#b}");
        }
    }

    #[test]
    #[should_panic(expected = "must increase")]
    fn compacted_records_out_of_order_are_a_caller_bug() {
        let (original, template) = encode(0, &[Record::new("a"), Record::new("b")]);
        let mut decoded = decode_frame(&Bytes::from(original))
            .unwrap()
            .records()
            .unwrap();
        decoded.reverse();
        encode_compacted_frame(&mut Vec::new(), &template, &decoded);
    }

    #[test]
    #[should_panic(expected = "at least one record")]
    fn encoding_no_records_is_a_caller_bug() {
        encode(0, &[]);
    }

    fn bytes_strategy() -> impl Strategy<Value = Option<Bytes>> {
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300).prop_map(Bytes::from))
    }

    fn record_strategy() -> impl Strategy<Value = Record> {
        let header = (
            "[a-zA-Z0-9é_-]{0,12}",
            proptest::collection::vec(any::<u8>(), 0..40),
        )
            .prop_map(|(key, value)| Header {
                key,
                value: Bytes::from(value),
            });
        (
            bytes_strategy(),
            bytes_strategy(),
            proptest::collection::vec(header, 0..4),
            proptest::option::of(prop_oneof![any::<i64>(), 0i64..2_000_000_000_000]),
        )
            .prop_map(|(key, value, headers, timestamp_ms)| Record {
                key,
                value,
                headers,
                timestamp_ms,
            })
    }

    fn frame_strategy() -> impl Strategy<Value = (u64, Vec<Record>)> {
        (
            0u64..(1 << 62),
            proptest::collection::vec(record_strategy(), 1..8),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn encode_then_decode_is_identity((base_offset, records) in frame_strategy()) {
            let (out, header) = encode(base_offset, &records);
            let frame = decode_frame(&Bytes::from(out.clone())).unwrap();
            prop_assert_eq!(frame.frame.len(), out.len());
            prop_assert_eq!(frame.header, header);
            prop_assert_eq!(frame.header.record_count as usize, records.len());
            prop_assert_eq!(frame.records().unwrap(), expected(base_offset, &records));
        }

        #[test]
        fn every_bit_flip_is_detected((base_offset, records) in frame_strategy(), position in any::<prop::sample::Index>()) {
            let (out, _) = encode(base_offset, &records);
            let bit = position.index(out.len() * 8);
            let mut flipped = out.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(decode_frame(&Bytes::from(flipped)).is_err(), "flip of bit {} not detected", bit);
        }

        #[test]
        fn every_truncation_is_an_error((base_offset, records) in frame_strategy()) {
            let (out, _) = encode(base_offset, &records);
            let buffer = Bytes::from(out);
            for length in 0..buffer.len() {
                let error = decode_frame(&buffer.slice(..length)).unwrap_err();
                if length >= 4 {
                    prop_assert_eq!(error, FrameError::Incomplete {
                        needed: if length < FRAME_HEADER_BYTES { FRAME_HEADER_BYTES } else { buffer.len() },
                        available: length,
                    });
                }
            }
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2000), with_magic in any::<bool>()) {
            let mut bytes = bytes;
            if with_magic && bytes.len() >= 4 {
                bytes[..4].copy_from_slice(&FRAME_MAGIC);
            }
            let _ = decode_frame(&Bytes::from(bytes));
        }

        /// Garbage behind valid checksums and a plausible header exercises
        /// the record parser itself, which the CRCs otherwise shield.
        #[test]
        fn garbage_records_behind_valid_checksums_never_panic(
            record_bytes in proptest::collection::vec(any::<u8>(), 0..400),
            record_count in 1i32..40,
            last_offset_delta in 0i32..60,
        ) {
            let (mut out, _) = encode(0, &[Record::new("x")]);
            out.truncate(FRAME_HEADER_BYTES + BATCH_HEADER_BYTES);
            out.extend_from_slice(&record_bytes);
            let batch = FRAME_HEADER_BYTES;
            out[batch + 57..batch + 61].copy_from_slice(&record_count.to_be_bytes());
            out[batch + 23..batch + 27].copy_from_slice(&last_offset_delta.to_be_bytes());
            out[batch + 35..batch + 43].copy_from_slice(&i64::MAX.to_be_bytes());
            let batch_len = out.len() - FRAME_HEADER_BYTES;
            set_batch_len(&mut out, batch_len);
            reseal(&mut out);
            let buffer = Bytes::from(out);
            if let Ok(frame) = decode_frame(&buffer) {
                let records = frame.records().unwrap();
                prop_assert_eq!(records.len(), record_count as usize);
            }
        }
    }

    #[test]
    fn every_bit_flip_of_a_small_frame_is_detected() {
        let records = [
            Record::new("value")
                .with_key("key")
                .with_header("h", &b"v"[..]),
            Record::default(),
        ];
        let (out, _) = encode(3, &records);
        for bit in 0..out.len() * 8 {
            let mut flipped = out.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(
                decode_frame(&Bytes::from(flipped)).is_err(),
                "flip of bit {bit} not detected"
            );
        }
    }
}
