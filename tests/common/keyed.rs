//! Self-checking keyed records and a key → latest-value model, for the
//! compaction suites.
//!
//! A value is `KEY|SEQUENCE|CRC|PADDING`, where CRC is the CRC-32C of
//! `KEY|SEQUENCE|PADDING`: a reader can check every record it sees on its
//! own (it carries its key, which must equal the record's key, its sequence
//! number, and a checksum that a torn, mixed or misplaced read breaks).
//! Sequence numbers increase per key in produce order, so within one read
//! pass (offsets increasing) a key's sequence numbers never go backwards.

use millrace::{FetchError, FetchedRecord, Offset, PartitionId, Runtime};
use std::collections::BTreeMap;
use std::time::Duration;

/// The value of record `sequence` of `key`, `padding` bytes of filler.
pub fn keyed_value(key: &str, sequence: u64, padding: usize) -> Vec<u8> {
    let filler = padding_for(sequence, padding);
    let crc = checksum(key, sequence, &filler);
    format!("{key}|{sequence}|{crc:08x}|{filler}").into_bytes()
}

fn padding_for(sequence: u64, padding: usize) -> String {
    let letter = (b'a' + (sequence % 26) as u8) as char;
    std::iter::repeat_n(letter, padding).collect()
}

fn checksum(key: &str, sequence: u64, filler: &str) -> u32 {
    crc32c::crc32c(format!("{key}|{sequence}|{filler}").as_bytes())
}

/// Checks a record made by [`keyed_value`] (or a tombstone with a key):
/// returns its key and sequence (`None` for a tombstone), or what is wrong.
pub fn check_keyed(record: &FetchedRecord) -> Result<(String, Option<u64>), String> {
    let offset = record.offset;
    let key = record
        .key
        .as_deref()
        .ok_or_else(|| format!("offset {offset}: record without a key"))?;
    let key = std::str::from_utf8(key)
        .map_err(|_| format!("offset {offset}: key is not UTF-8: {key:?}"))?
        .to_owned();
    let Some(value) = record.value.as_deref() else {
        return Ok((key, None));
    };
    let text = std::str::from_utf8(value)
        .map_err(|_| format!("offset {offset}: value is not UTF-8 (key {key})"))?;
    let fields: Vec<&str> = text.splitn(4, '|').collect();
    let [value_key, sequence, crc, filler] = fields[..] else {
        return Err(format!("offset {offset}: malformed value {text:?}"));
    };
    if value_key != key {
        return Err(format!(
            "offset {offset}: value of key {value_key:?} under key {key:?}"
        ));
    }
    let sequence: u64 = sequence
        .parse()
        .map_err(|_| format!("offset {offset}: bad sequence in {text:?}"))?;
    let crc = u32::from_str_radix(crc, 16)
        .map_err(|_| format!("offset {offset}: bad checksum field in {text:?}"))?;
    if crc != checksum(&key, sequence, filler) {
        return Err(format!(
            "offset {offset}: checksum mismatch for key {key} sequence {sequence}"
        ));
    }
    Ok((key, Some(sequence)))
}

/// What a test produced to one partition: per key, the offset and the
/// value (or tombstone) of its latest record, and every offset produced.
#[derive(Clone, Debug, Default)]
pub struct Model {
    /// key → (offset, value; `None` for a tombstone, timestamp in ms).
    pub latest: BTreeMap<String, (u64, Option<Vec<u8>>, i64)>,
    /// offset → key of every record produced.
    pub produced: BTreeMap<u64, String>,
}

impl Model {
    /// Records that a record of `key` was acknowledged at `offset`.
    pub fn record(&mut self, key: &str, offset: u64, value: Option<Vec<u8>>, timestamp_ms: i64) {
        self.produced.insert(offset, key.to_owned());
        let previous = self
            .latest
            .insert(key.to_owned(), (offset, value, timestamp_ms));
        if let Some((previous_offset, _, _)) = previous {
            assert!(previous_offset < offset, "acks must increase per key");
        }
    }

    /// Offsets of the latest record of each key (tombstones included).
    pub fn latest_offsets(&self) -> BTreeMap<u64, String> {
        self.latest
            .iter()
            .map(|(key, (offset, _, _))| (*offset, key.clone()))
            .collect()
    }
}

/// Every record of one partition from its log start offset up to the high
/// watermark at the time of the call, fetched `max_bytes` at a time. Asserts that offsets
/// strictly increase, that each fetch makes progress, and that every record
/// lies at or past the offset its fetch asked for (offsets may have gaps:
/// compaction removes records but never renumbers).
pub fn read_all(
    runtime: &Runtime,
    topic: &str,
    partition: PartitionId,
    max_bytes: usize,
) -> Result<Vec<FetchedRecord>, String> {
    let offsets = runtime
        .offsets_blocking(topic, partition)
        .map_err(|error| format!("offsets: {error}"))?;
    read_range(
        runtime,
        topic,
        partition,
        offsets.log_start_offset,
        offsets.high_watermark,
        max_bytes,
    )
}

/// [`read_all`] from `from` to `to` (exclusive).
pub fn read_range(
    runtime: &Runtime,
    topic: &str,
    partition: PartitionId,
    from: Offset,
    to: Offset,
    max_bytes: usize,
) -> Result<Vec<FetchedRecord>, String> {
    let options = millrace::FetchOptions {
        max_bytes,
        max_wait: Duration::ZERO,
    };
    let mut position = from;
    let mut records: Vec<FetchedRecord> = Vec::new();
    while position < to {
        let fetched = runtime
            .fetch_blocking(topic, partition, position, options)
            .map_err(|error: FetchError| {
                format!("fetch {topic}/{partition} at {position}: {error}")
            })?;
        if fetched.next_offset <= position {
            return Err(format!(
                "fetch at {position} below {to} made no progress: {} records, next offset {}, \
                 high watermark {}, log start {}",
                fetched.records.len(),
                fetched.next_offset,
                fetched.high_watermark,
                fetched.log_start_offset
            ));
        }
        for record in fetched.records {
            if record.offset < position {
                return Err(format!(
                    "fetch at {position} returned offset {} before it",
                    record.offset
                ));
            }
            if let Some(last) = records.last() {
                if record.offset <= last.offset {
                    return Err(format!(
                        "offsets went from {} to {} within one pass",
                        last.offset, record.offset
                    ));
                }
            }
            if record.offset >= to {
                break;
            }
            records.push(record);
        }
        position = fetched.next_offset;
    }
    Ok(records)
}

/// The `{base:020}` of the partition's active segment (its `.wal` file):
/// every offset below it is in a sealed block.
pub fn active_segment_base(partition_directory: &std::path::Path) -> u64 {
    super::files_ending(partition_directory, ".wal")
        .iter()
        .map(|name| name.trim_end_matches(".wal").parse::<u64>().unwrap())
        .max()
        .expect("an active segment")
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}
