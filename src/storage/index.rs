//! Sparse offset and time index of one segment.
//!
//! An entry is added for the first batch and then every
//! `index_interval_bytes` of frames. Lookups give the position of the last
//! indexed batch at or before an offset (or time); the reader scans forward.
//!
//! # Index file layout (`{base:020}.idx`, little-endian)
//!
//! | bytes            | field                                                 |
//! |------------------|-------------------------------------------------------|
//! | 0..8             | magic `b"MLRCIDX\0"`                                  |
//! | 8..12            | format version, u32 (1)                               |
//! | 12..16           | `O`: offset entry count, u32                          |
//! | 16..20           | `T`: time entry count, u32                            |
//! | 20..24           | `E`: epoch entry count, u32                           |
//! | 24..32           | `next_offset`, u64                                    |
//! | 32..40           | `segment_bytes`, u64                                  |
//! | 40..48           | `max_timestamp_ms`, i64                               |
//! | 48..48+16·O      | offset entries: `base_offset` u64, `position` u64     |
//! | then 16·T        | time entries: `timestamp_ms` i64, `offset` u64        |
//! | then 12·E        | epochs: `term` u32, first `offset` u64                |
//! | last 4           | CRC-32C of every byte before it, u32                  |
//!
//! Each count is at most [`INDEX_ENTRIES_MAX`], and the file length must be
//! exactly what the counts say: decode checks both before it allocates. It
//! also checks the invariants (entries strictly increasing, inside the
//! segment), so a stale or forged index is refused, not trusted.
//!
//! # Entries
//!
//! An offset entry is added for the first batch, then for a batch that
//! starts at least `interval_bytes` after the last entry's batch. A time
//! entry is added with an offset entry when the segment's largest timestamp
//! so far has grown since the last time entry. Because timestamps need not
//! grow with offsets, records reaching a time can sit in unindexed batches
//! before the first time entry that reaches it: [`SegmentIndex::time_scan_start`]
//! gives the safe place to scan from.

use crate::types::{Offset, Term};

/// Magic at the start of an index file.
pub const INDEX_MAGIC: [u8; 8] = *b"MLRCIDX\0";
/// The index format version this code writes and reads.
pub const INDEX_VERSION: u32 = 1;
/// Bytes of the fixed index header, before the entries.
pub const INDEX_HEADER_BYTES: usize = 48;
/// Bytes of the trailing CRC.
pub const INDEX_CRC_BYTES: usize = 4;
/// Most entries of one kind in an index file. A 1 GiB segment with a 4 KiB
/// interval needs 256 Ki entries; this leaves room and bounds decode memory.
pub const INDEX_ENTRIES_MAX: u32 = 1 << 22;
const OFFSET_ENTRY_BYTES: usize = 16;
const TIME_ENTRY_BYTES: usize = 16;
const EPOCH_ENTRY_BYTES: usize = 12;

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
    /// Panics if an entry list is over [`INDEX_ENTRIES_MAX`] (a bug: segments are far smaller).
    pub fn encode(&self) -> Vec<u8> {
        let count = |length: usize| {
            u32::try_from(length)
                .ok()
                .filter(|&count| count <= INDEX_ENTRIES_MAX)
                .expect("index entries over INDEX_ENTRIES_MAX")
        };
        let total = INDEX_HEADER_BYTES
            + self.offsets.len() * OFFSET_ENTRY_BYTES
            + self.times.len() * TIME_ENTRY_BYTES
            + self.epochs.len() * EPOCH_ENTRY_BYTES
            + INDEX_CRC_BYTES;
        let mut out = Vec::with_capacity(total);
        out.extend_from_slice(&INDEX_MAGIC);
        out.extend_from_slice(&INDEX_VERSION.to_le_bytes());
        out.extend_from_slice(&count(self.offsets.len()).to_le_bytes());
        out.extend_from_slice(&count(self.times.len()).to_le_bytes());
        out.extend_from_slice(&count(self.epochs.len()).to_le_bytes());
        out.extend_from_slice(&self.next_offset.0.to_le_bytes());
        out.extend_from_slice(&self.segment_bytes.to_le_bytes());
        out.extend_from_slice(&self.max_timestamp_ms.to_le_bytes());
        for entry in &self.offsets {
            out.extend_from_slice(&entry.base_offset.0.to_le_bytes());
            out.extend_from_slice(&entry.position.to_le_bytes());
        }
        for entry in &self.times {
            out.extend_from_slice(&entry.timestamp_ms.to_le_bytes());
            out.extend_from_slice(&entry.offset.0.to_le_bytes());
        }
        for (term, offset) in &self.epochs {
            out.extend_from_slice(&term.0.to_le_bytes());
            out.extend_from_slice(&offset.0.to_le_bytes());
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        debug_assert_eq!(out.len(), total);
        out
    }

    /// Decodes and verifies an index file. Lengths are checked against the
    /// input size before anything is allocated; the error names the rule broken.
    pub fn decode(bytes: &[u8]) -> Result<SegmentIndex, String> {
        if bytes.len() < INDEX_HEADER_BYTES + INDEX_CRC_BYTES {
            return Err(format!(
                "index of {} bytes is shorter than its header and CRC",
                bytes.len()
            ));
        }
        let mut reader = Reader { bytes, position: 0 };
        if reader.array::<8>() != INDEX_MAGIC {
            return Err(format!("bad index magic {:02x?}", &bytes[0..8]));
        }
        let version = reader.u32();
        let counts = [reader.u32(), reader.u32(), reader.u32()];
        if let Some(count) = counts.iter().find(|&&count| count > INDEX_ENTRIES_MAX) {
            return Err(format!(
                "index entry count {count} is over the maximum {INDEX_ENTRIES_MAX}"
            ));
        }
        let [offset_count, time_count, epoch_count] = counts.map(|count| count as usize);
        let expected = INDEX_HEADER_BYTES
            + offset_count * OFFSET_ENTRY_BYTES
            + time_count * TIME_ENTRY_BYTES
            + epoch_count * EPOCH_ENTRY_BYTES
            + INDEX_CRC_BYTES;
        if bytes.len() != expected {
            return Err(format!(
                "index is {} bytes, its entry counts say {expected}",
                bytes.len()
            ));
        }
        let (body, crc) = bytes.split_at(bytes.len() - INDEX_CRC_BYTES);
        let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
        let computed = crc32c::crc32c(body);
        if stored != computed {
            return Err(format!(
                "index checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
            ));
        }
        if version != INDEX_VERSION {
            return Err(format!(
                "unsupported index version {version} (expected {INDEX_VERSION})"
            ));
        }
        let next_offset = Offset(reader.u64());
        let segment_bytes = reader.u64();
        let max_timestamp_ms = reader.u64() as i64;
        // The counts were checked against the input length above.
        let offsets = (0..offset_count)
            .map(|_| OffsetEntry {
                base_offset: Offset(reader.u64()),
                position: reader.u64(),
            })
            .collect();
        let times = (0..time_count)
            .map(|_| TimeEntry {
                timestamp_ms: reader.u64() as i64,
                offset: Offset(reader.u64()),
            })
            .collect();
        let epochs = (0..epoch_count)
            .map(|_| (Term(reader.u32()), Offset(reader.u64())))
            .collect();
        let index = SegmentIndex {
            offsets,
            times,
            epochs,
            next_offset,
            segment_bytes,
            max_timestamp_ms,
        };
        index.check()?;
        Ok(index)
    }

    /// The invariants [`SegmentIndex::add_batch`] keeps; the error names the one broken.
    pub fn check(&self) -> Result<(), String> {
        let increasing =
            |what: &str, pairs: &mut dyn Iterator<Item = (u64, u64)>| -> Result<(), String> {
                let mut previous: Option<(u64, u64)> = None;
                for (first, second) in pairs {
                    if let Some((previous_first, previous_second)) = previous {
                        if first <= previous_first || second <= previous_second {
                            return Err(format!("{what} entries are not strictly increasing"));
                        }
                    }
                    previous = Some((first, second));
                }
                Ok(())
            };
        increasing(
            "offset",
            &mut self
                .offsets
                .iter()
                .map(|entry| (entry.base_offset.0, entry.position)),
        )?;
        // Timestamps compare as signed: flip the sign bit to keep the order in u64.
        let ordered = |timestamp_ms: i64| (timestamp_ms as u64) ^ (1 << 63);
        increasing(
            "time",
            &mut self
                .times
                .iter()
                .map(|entry| (ordered(entry.timestamp_ms), entry.offset.0)),
        )?;
        increasing(
            "epoch",
            &mut self
                .epochs
                .iter()
                .map(|(term, offset)| (u64::from(term.0), offset.0)),
        )?;
        let offsets_in_segment = self.offsets.iter().map(|entry| entry.base_offset);
        let times_in_segment = self.times.iter().map(|entry| entry.offset);
        let epochs_in_segment = self.epochs.iter().map(|(_, offset)| *offset);
        if offsets_in_segment
            .chain(times_in_segment)
            .chain(epochs_in_segment)
            .any(|offset| offset >= self.next_offset)
        {
            return Err(format!(
                "an entry is at or past next_offset {}",
                self.next_offset
            ));
        }
        if self
            .offsets
            .last()
            .is_some_and(|entry| entry.position >= self.segment_bytes)
        {
            return Err(format!(
                "an offset entry is at or past segment_bytes {}",
                self.segment_bytes
            ));
        }
        if self
            .times
            .last()
            .is_some_and(|entry| entry.timestamp_ms > self.max_timestamp_ms)
        {
            return Err(format!(
                "a time entry is past max_timestamp_ms {}",
                self.max_timestamp_ms
            ));
        }
        Ok(())
    }

    /// The last entry whose batch starts at or before `offset`.
    pub fn lookup_offset(&self, offset: Offset) -> Option<OffsetEntry> {
        let after = self
            .offsets
            .partition_point(|entry| entry.base_offset <= offset);
        after.checked_sub(1).map(|index| self.offsets[index])
    }

    /// The first entry whose timestamps reach `timestamp_ms`.
    ///
    /// Records at or after `timestamp_ms` can also sit in unindexed batches
    /// between the previous entry and this one; use
    /// [`SegmentIndex::time_scan_start`] to find the first such record.
    pub fn lookup_time(&self, timestamp_ms: i64) -> Option<TimeEntry> {
        let first_reaching = self
            .times
            .partition_point(|entry| entry.timestamp_ms < timestamp_ms);
        self.times.get(first_reaching).copied()
    }

    /// Where to start scanning forward for the first record whose timestamp
    /// is at or after `timestamp_ms`: every record before the returned
    /// entry's batch is earlier. `None` if no record of the segment reaches it.
    pub fn time_scan_start(&self, timestamp_ms: i64) -> Option<OffsetEntry> {
        if self.offsets.is_empty() || self.max_timestamp_ms < timestamp_ms {
            return None;
        }
        let first_reaching = self
            .times
            .partition_point(|entry| entry.timestamp_ms < timestamp_ms);
        // All records up to and including the batch of the last time entry
        // that does not reach it are earlier; the next batch may not be.
        match first_reaching.checked_sub(1) {
            None => self.offsets.first().copied(),
            Some(index) => self.lookup_offset(self.times[index].offset),
        }
    }

    /// Records that a batch was appended at `position` (`frame_bytes` long),
    /// adding entries every `interval_bytes` (always for the first batch), and
    /// updating the summary fields.
    pub fn add_batch(
        &mut self,
        header: &super::batch::BatchHeader,
        position: u64,
        frame_bytes: u64,
        interval_bytes: u64,
    ) {
        debug_assert!(
            position >= self.segment_bytes || self.offsets.is_empty(),
            "batches are added in order"
        );
        debug_assert!(
            self.offsets.is_empty() || header.base_offset >= self.next_offset,
            "offsets increase"
        );
        let is_first = self.offsets.is_empty();
        self.max_timestamp_ms = if is_first {
            header.max_timestamp_ms
        } else {
            self.max_timestamp_ms.max(header.max_timestamp_ms)
        };
        // Bytes of frames since the last entry's batch started (including it).
        let bytes_since_entry = self
            .offsets
            .last()
            .map_or(0, |entry| position.saturating_sub(entry.position));
        if is_first || bytes_since_entry >= interval_bytes {
            self.offsets.push(OffsetEntry {
                base_offset: header.base_offset,
                position,
            });
            if self
                .times
                .last()
                .is_none_or(|entry| self.max_timestamp_ms > entry.timestamp_ms)
            {
                self.times.push(TimeEntry {
                    timestamp_ms: self.max_timestamp_ms,
                    offset: header.base_offset,
                });
            }
        }
        match self.epochs.last() {
            Some((term, _)) if *term == header.leader_epoch => {}
            last => {
                debug_assert!(
                    last.is_none_or(|(term, _)| *term < header.leader_epoch),
                    "leader epochs increase"
                );
                self.epochs.push((header.leader_epoch, header.base_offset));
            }
        }
        self.next_offset = header.next_offset();
        self.segment_bytes = position + frame_bytes;
    }
}

/// Little-endian reads from a buffer whose length was already checked.
struct Reader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl Reader<'_> {
    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut array = [0u8; N];
        array.copy_from_slice(&self.bytes[self.position..self.position + N]);
        self.position += N;
        array
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::batch::BatchHeader;
    use crate::storage::segment::SEGMENT_HEADER_BYTES;
    use proptest::prelude::*;

    /// A batch of the model: what the index is told about it.
    #[derive(Clone, Debug)]
    struct ModelBatch {
        header: BatchHeader,
        position: u64,
        frame_bytes: u64,
    }

    fn header(
        base_offset: u64,
        record_count: u32,
        max_timestamp_ms: i64,
        leader_epoch: u32,
    ) -> BatchHeader {
        BatchHeader {
            base_offset: Offset(base_offset),
            leader_epoch: Term(leader_epoch),
            attributes: 0,
            last_offset_delta: record_count - 1,
            base_timestamp_ms: max_timestamp_ms,
            max_timestamp_ms,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            record_count,
        }
    }

    /// (record count, frame bytes, max timestamp, epoch increment) per batch.
    fn batches_strategy() -> impl Strategy<Value = (u64, Vec<ModelBatch>)> {
        let batch = (
            1u32..5,
            70u64..600,
            -1_000i64..1_000,
            prop_oneof![4 => Just(0u32), 1 => 1u32..3],
        );
        (0u64..1_000_000, proptest::collection::vec(batch, 1..60)).prop_map(
            |(base_offset, specs)| {
                let mut next_offset = base_offset;
                let mut position = SEGMENT_HEADER_BYTES;
                let mut epoch = 0;
                let batches = specs
                    .into_iter()
                    .map(
                        |(record_count, frame_bytes, max_timestamp_ms, epoch_increment)| {
                            epoch += epoch_increment;
                            let batch = ModelBatch {
                                header: header(next_offset, record_count, max_timestamp_ms, epoch),
                                position,
                                frame_bytes,
                            };
                            next_offset += u64::from(record_count);
                            position += frame_bytes;
                            batch
                        },
                    )
                    .collect();
                (base_offset, batches)
            },
        )
    }

    fn build(batches: &[ModelBatch], interval_bytes: u64) -> SegmentIndex {
        let mut index = SegmentIndex::default();
        for batch in batches {
            index.add_batch(
                &batch.header,
                batch.position,
                batch.frame_bytes,
                interval_bytes,
            );
        }
        index
    }

    fn sample() -> SegmentIndex {
        let mut index = SegmentIndex::default();
        index.add_batch(&header(100, 3, 50, 1), 16, 200, 300);
        index.add_batch(&header(103, 2, 40, 1), 216, 200, 300);
        index.add_batch(&header(105, 1, 90, 2), 416, 100, 300);
        index.add_batch(&header(106, 4, 80, 2), 516, 100, 300);
        index
    }

    #[test]
    fn add_batch_indexes_first_batch_then_every_interval() {
        let index = sample();
        assert_eq!(
            index.offsets,
            [
                OffsetEntry {
                    base_offset: Offset(100),
                    position: 16
                },
                OffsetEntry {
                    base_offset: Offset(105),
                    position: 416
                },
            ]
        );
        assert_eq!(
            index.times,
            [
                TimeEntry {
                    timestamp_ms: 50,
                    offset: Offset(100)
                },
                TimeEntry {
                    timestamp_ms: 90,
                    offset: Offset(105)
                }
            ]
        );
        assert_eq!(
            index.epochs,
            [(Term(1), Offset(100)), (Term(2), Offset(105))]
        );
        assert_eq!(index.next_offset, Offset(110));
        assert_eq!(index.segment_bytes, 616);
        assert_eq!(index.max_timestamp_ms, 90);
        assert_eq!(index.check(), Ok(()));
    }

    #[test]
    fn lookups_on_the_sample() {
        let index = sample();
        assert_eq!(index.lookup_offset(Offset(99)), None);
        assert_eq!(
            index.lookup_offset(Offset(100)).map(|entry| entry.position),
            Some(16)
        );
        assert_eq!(
            index.lookup_offset(Offset(104)).map(|entry| entry.position),
            Some(16)
        );
        assert_eq!(
            index.lookup_offset(Offset(105)).map(|entry| entry.position),
            Some(416)
        );
        assert_eq!(
            index
                .lookup_offset(Offset(1_000))
                .map(|entry| entry.position),
            Some(416)
        );
        assert_eq!(
            index.lookup_time(-5).map(|entry| entry.offset),
            Some(Offset(100))
        );
        assert_eq!(
            index.lookup_time(50).map(|entry| entry.offset),
            Some(Offset(100))
        );
        assert_eq!(
            index.lookup_time(51).map(|entry| entry.offset),
            Some(Offset(105))
        );
        assert_eq!(index.lookup_time(91), None);
        assert_eq!(
            index.time_scan_start(60).map(|entry| entry.position),
            Some(16)
        );
        assert_eq!(index.time_scan_start(91), None);
        assert_eq!(SegmentIndex::default().lookup_offset(Offset(0)), None);
        assert_eq!(SegmentIndex::default().time_scan_start(0), None);
    }

    #[test]
    fn empty_index_round_trips() {
        let index = SegmentIndex::default();
        let bytes = index.encode();
        assert_eq!(bytes.len(), INDEX_HEADER_BYTES + INDEX_CRC_BYTES);
        assert_eq!(SegmentIndex::decode(&bytes), Ok(index));
    }

    #[test]
    fn layout_matches_the_module_doc() {
        let index = sample();
        let bytes = index.encode();
        assert_eq!(&bytes[0..8], b"MLRCIDX\0");
        assert_eq!(bytes[8..12], 1u32.to_le_bytes());
        assert_eq!(bytes[12..16], 2u32.to_le_bytes());
        assert_eq!(bytes[16..20], 2u32.to_le_bytes());
        assert_eq!(bytes[20..24], 2u32.to_le_bytes());
        assert_eq!(bytes[24..32], 110u64.to_le_bytes());
        assert_eq!(bytes[32..40], 616u64.to_le_bytes());
        assert_eq!(bytes[40..48], 90i64.to_le_bytes());
        assert_eq!(bytes[48..56], 100u64.to_le_bytes());
        assert_eq!(bytes[56..64], 16u64.to_le_bytes());
        assert_eq!(bytes.len(), 48 + 2 * 16 + 2 * 16 + 2 * 12 + 4);
        let crc = crc32c::crc32c(&bytes[..bytes.len() - 4]);
        assert_eq!(bytes[bytes.len() - 4..], crc.to_le_bytes());
    }

    #[test]
    fn every_bit_flip_and_truncation_is_detected() {
        let bytes = sample().encode();
        for bit in 0..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(
                SegmentIndex::decode(&flipped).is_err(),
                "flip of bit {bit} not detected"
            );
        }
        for length in 0..bytes.len() {
            assert!(SegmentIndex::decode(&bytes[..length]).is_err());
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(SegmentIndex::decode(&longer).is_err());
    }

    /// Rewrites the CRC so a test reaches the checks behind it.
    fn reseal(bytes: &mut [u8]) {
        let body = bytes.len() - INDEX_CRC_BYTES;
        let crc = crc32c::crc32c(&bytes[..body]);
        bytes[body..].copy_from_slice(&crc.to_le_bytes());
    }

    #[test]
    fn counts_and_invariants_are_checked_behind_the_crc() {
        let bytes = sample().encode();
        let mut huge = bytes.clone();
        huge[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        reseal(&mut huge);
        assert!(SegmentIndex::decode(&huge).unwrap_err().contains("maximum"));

        let mut version = bytes.clone();
        version[8..12].copy_from_slice(&2u32.to_le_bytes());
        reseal(&mut version);
        assert!(SegmentIndex::decode(&version)
            .unwrap_err()
            .contains("version"));

        let mut unordered = bytes.clone();
        unordered[48 + 16..48 + 24].copy_from_slice(&50u64.to_le_bytes()); // second base offset below the first
        reseal(&mut unordered);
        assert!(SegmentIndex::decode(&unordered)
            .unwrap_err()
            .contains("increasing"));

        let mut stale = bytes.clone();
        stale[32..40].copy_from_slice(&100u64.to_le_bytes()); // segment shorter than an entry's position
        reseal(&mut stale);
        assert!(SegmentIndex::decode(&stale)
            .unwrap_err()
            .contains("segment_bytes"));

        let mut past_end = bytes.clone();
        past_end[24..32].copy_from_slice(&105u64.to_le_bytes());
        reseal(&mut past_end);
        assert!(SegmentIndex::decode(&past_end)
            .unwrap_err()
            .contains("next_offset"));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn round_trip_and_bit_flips((_, batches) in batches_strategy(), interval_bytes in 0u64..3_000, position in any::<prop::sample::Index>()) {
            let index = build(&batches, interval_bytes);
            prop_assert_eq!(index.check(), Ok(()));
            let bytes = index.encode();
            prop_assert_eq!(SegmentIndex::decode(&bytes), Ok(index));
            let bit = position.index(bytes.len() * 8);
            let mut flipped = bytes;
            flipped[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(SegmentIndex::decode(&flipped).is_err(), "flip of bit {} not detected", bit);
        }

        #[test]
        fn lookups_match_a_linear_scan_model(
            (base_offset, batches) in batches_strategy(),
            interval_bytes in 0u64..3_000,
            probes in proptest::collection::vec((0u64..400, -1_200i64..1_200), 20),
        ) {
            let index = build(&batches, interval_bytes);
            let last = batches.last().unwrap();
            prop_assert_eq!(index.next_offset, last.header.next_offset());
            prop_assert_eq!(index.segment_bytes, last.position + last.frame_bytes);
            let model_max = batches.iter().map(|batch| batch.header.max_timestamp_ms).max().unwrap();
            prop_assert_eq!(index.max_timestamp_ms, model_max);

            // Every entry is a batch start, and no batch is far from its entry.
            prop_assert_eq!(index.offsets[0].position, SEGMENT_HEADER_BYTES);
            for batch in &batches {
                let entry = index.lookup_offset(batch.header.base_offset).unwrap();
                prop_assert!(batches.iter().any(|b| b.position == entry.position && b.header.base_offset == entry.base_offset));
                prop_assert!(batch.position - entry.position < interval_bytes.max(1));
            }

            for (offset_delta, timestamp_ms) in probes {
                let offset = Offset(base_offset.saturating_sub(5) + offset_delta);
                let linear = index.offsets.iter().rev().find(|entry| entry.base_offset <= offset).copied();
                prop_assert_eq!(index.lookup_offset(offset), linear);

                let linear_time = index.times.iter().find(|entry| entry.timestamp_ms >= timestamp_ms).copied();
                prop_assert_eq!(index.lookup_time(timestamp_ms), linear_time);

                // Scanning from time_scan_start misses no batch reaching the time.
                let first_reaching = batches.iter().find(|batch| batch.header.max_timestamp_ms >= timestamp_ms);
                match (index.time_scan_start(timestamp_ms), first_reaching) {
                    (None, None) => {}
                    (Some(start), Some(batch)) => prop_assert!(start.position <= batch.position),
                    (start, batch) => prop_assert!(false, "scan start {:?} for first reaching batch {:?}", start, batch),
                }
            }

            // Epochs: one entry per change, at the first batch of the new epoch.
            let mut model_epochs: Vec<(Term, Offset)> = Vec::new();
            for batch in &batches {
                if model_epochs.last().map(|(term, _)| *term) != Some(batch.header.leader_epoch) {
                    model_epochs.push((batch.header.leader_epoch, batch.header.base_offset));
                }
            }
            prop_assert_eq!(&index.epochs, &model_epochs);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300), with_magic in any::<bool>()) {
            let mut bytes = bytes;
            if with_magic && bytes.len() >= 8 {
                bytes[..8].copy_from_slice(&INDEX_MAGIC);
            }
            let _ = SegmentIndex::decode(&bytes);
        }
    }
}
