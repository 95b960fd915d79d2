//! A store whose records are spread over 14 days, for the startup-load
//! tests: most sealed blocks lie outside a 24 h hot window, so a test over it
//! fails when the background load does nothing (LESSONS.md section 4: a test
//! whose fixture was all "hot" passed with the loader stubbed out).
//!
//! Timestamps run in order from now - 14 d to now - 25 h ("cold"), then from
//! now - 23 h to now - 1 min ("hot"). The 2 h gap around the 24 h cutoff
//! makes the hot/cold split of every block independent of how long the test
//! takes between building the store and restarting it.

use super::{config, no_wait};
use millrace::config::{Config, StartupConfig, TopicConfig};
use millrace::{FetchedRecord, Offset, PartitionId, Record, Runtime};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const MINUTE_MS: i64 = 60 * 1000;
pub const HOUR_MS: i64 = 60 * MINUTE_MS;
pub const DAY_MS: i64 = 24 * HOUR_MS;
/// The hot window the fixture is laid out around.
pub const HOT_WINDOW: Duration = Duration::from_secs(24 * 60 * 60);
/// Small segments, so the store has dozens of sealed blocks.
pub const SEGMENT_BYTES: u64 = 8 * 1024;
/// The smallest `chunk_bytes` the config accepts.
pub const CHUNK_BYTES: u64 = 64 * 1024;

/// Shape of a [`TimedStore`].
#[derive(Clone, Copy, Debug)]
pub struct TimedSpec {
    /// Records older than now - 25 h.
    pub cold_records: usize,
    /// Records newer than now - 23 h.
    pub hot_records: usize,
    /// Bytes of each record's value.
    pub value_bytes: usize,
    /// Records per produce call.
    pub records_per_batch: usize,
}

/// One record as produced (its offset is its index in `TimedStore::records`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimedRecord {
    pub timestamp_ms: i64,
    pub value: Vec<u8>,
}

/// A sealed block as it lies on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockOnDisk {
    pub base_offset: u64,
    /// One past its last offset (the next block's or the active segment's base).
    pub end_offset: u64,
    pub size_bytes: u64,
    /// Timestamp of its newest record (what its index header says).
    pub max_timestamp_ms: i64,
}

/// A partition-0-only topic with 8 KiB segments, built and shut down.
pub struct TimedStore {
    pub data_dir: PathBuf,
    pub topic: String,
    /// When the timestamps were laid out.
    pub now_ms: i64,
    pub records: Vec<TimedRecord>,
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

/// The topic of a timed store: one partition, 8 KiB segments.
pub fn timed_topic(name: &str) -> TopicConfig {
    TopicConfig {
        segment_bytes: SEGMENT_BYTES,
        ..TopicConfig::with_defaults(name)
    }
}

/// The config of a timed store with this `[startup]` table.
pub fn timed_config(data_dir: &Path, topic: &str, startup: StartupConfig) -> Config {
    let mut config = config(data_dir, vec![timed_topic(topic)]);
    config.startup = startup;
    config
}

/// `[startup]` with a 24 h hot window, 64 KiB chunks and this background rate.
pub fn startup(background_load_bytes_per_second: Option<u64>) -> StartupConfig {
    StartupConfig {
        hot_window: HOT_WINDOW,
        chunk_bytes: CHUNK_BYTES,
        background_load_bytes_per_second,
    }
}

impl TimedStore {
    /// Produces the records (each batch acknowledged, so durable) and shuts
    /// the runtime down.
    pub fn build(data_dir: &Path, topic: &str, spec: TimedSpec) -> TimedStore {
        let now_ms = now_ms();
        let cold_from = now_ms - 14 * DAY_MS;
        let cold_to = now_ms - 25 * HOUR_MS;
        let hot_from = now_ms - 23 * HOUR_MS;
        let hot_to = now_ms - MINUTE_MS;
        let mut records = Vec::with_capacity(spec.cold_records + spec.hot_records);
        let spread = |from: i64, to: i64, index: usize, count: usize| {
            from + (to - from) * index as i64 / count.max(2).saturating_sub(1) as i64
        };
        for index in 0..spec.cold_records {
            records.push(spread(cold_from, cold_to, index, spec.cold_records));
        }
        for index in 0..spec.hot_records {
            records.push(spread(hot_from, hot_to, index, spec.hot_records));
        }
        let records: Vec<TimedRecord> = records
            .into_iter()
            .enumerate()
            .map(|(offset, timestamp_ms)| TimedRecord {
                timestamp_ms,
                value: value_for(offset, spec.value_bytes),
            })
            .collect();

        let runtime =
            Runtime::start(timed_config(data_dir, topic, StartupConfig::default())).unwrap();
        let producer = runtime.producer(topic).unwrap();
        for (batch_index, batch) in records.chunks(spec.records_per_batch).enumerate() {
            let first = batch_index * spec.records_per_batch;
            let ack = producer
                .send_batch_to_blocking(
                    PartitionId(0),
                    batch
                        .iter()
                        .map(|record| {
                            Record::new(record.value.clone()).with_timestamp_ms(record.timestamp_ms)
                        })
                        .collect(),
                )
                .unwrap_or_else(|error| panic!("fixture batch at {first}: {error}"));
            assert_eq!(ack.base_offset, Offset(first as u64), "fixture offsets");
        }
        runtime.shutdown().unwrap();
        let store = TimedStore {
            data_dir: data_dir.to_owned(),
            topic: topic.to_owned(),
            now_ms,
            records,
        };
        for block in store.blocks() {
            let in_gap = block.max_timestamp_ms > cold_to && block.max_timestamp_ms < hot_from;
            assert!(!in_gap, "no block may end inside the gap: {block:?}");
        }
        store
    }

    /// The partition's directory.
    pub fn partition_dir(&self) -> PathBuf {
        super::partition_directory(&self.data_dir, &self.topic, 0)
    }

    /// Sealed blocks, oldest first, from the file names and the records
    /// produced (block `i` holds offsets from its base to the next base).
    pub fn blocks(&self) -> Vec<BlockOnDisk> {
        let directory = self.partition_dir();
        let bases = |suffix: &str| -> Vec<u64> {
            super::files_ending(&directory, suffix)
                .iter()
                .map(|name| name.trim_end_matches(suffix).parse().unwrap())
                .collect()
        };
        let logs = bases(".log");
        let active = bases(".wal");
        assert_eq!(active.len(), 1, "exactly one active segment: {active:?}");
        let ends = logs.iter().skip(1).chain(active.iter());
        logs.iter()
            .zip(ends)
            .map(|(&base_offset, &end_offset)| {
                assert!(end_offset > base_offset, "a sealed block holds records");
                let path = directory.join(format!("{base_offset:020}.log"));
                BlockOnDisk {
                    base_offset,
                    end_offset,
                    size_bytes: std::fs::metadata(&path).unwrap().len(),
                    max_timestamp_ms: self.records[end_offset as usize - 1].timestamp_ms,
                }
            })
            .collect()
    }

    /// Blocks inside the 24 h hot window (their newest record is recent).
    pub fn hot_blocks(&self) -> Vec<BlockOnDisk> {
        let cutoff = self.now_ms - HOT_WINDOW.as_millis() as i64;
        self.blocks()
            .into_iter()
            .filter(|block| block.max_timestamp_ms >= cutoff)
            .collect()
    }

    /// Blocks the background loader must load.
    pub fn cold_blocks(&self) -> Vec<BlockOnDisk> {
        let cutoff = self.now_ms - HOT_WINDOW.as_millis() as i64;
        self.blocks()
            .into_iter()
            .filter(|block| block.max_timestamp_ms < cutoff)
            .collect()
    }

    /// Asserts `fetched` (read from `first_offset` on) matches the records
    /// produced at those offsets: value and timestamp.
    pub fn assert_matches(&self, first_offset: u64, fetched: &[FetchedRecord]) {
        for (index, record) in fetched.iter().enumerate() {
            let offset = first_offset + index as u64;
            assert_eq!(record.offset, Offset(offset), "consecutive offsets");
            let expected = &self.records[offset as usize];
            assert_eq!(
                record.value.as_deref(),
                Some(expected.value.as_slice()),
                "value at offset {offset}"
            );
            assert_eq!(
                record.timestamp_ms, expected.timestamp_ms,
                "timestamp at offset {offset}"
            );
        }
    }

    /// Reads offsets `from..to` (no waiting; every fetch must succeed).
    pub fn read_range(&self, runtime: &Runtime, from: u64, to: u64) -> Vec<FetchedRecord> {
        let mut position = Offset(from);
        let mut records = Vec::new();
        while position.0 < to {
            let fetched = runtime
                .fetch_blocking(&self.topic, PartitionId(0), position, no_wait(64 * 1024))
                .unwrap_or_else(|error| panic!("fetch at {position}: {error}"));
            assert!(
                fetched.next_offset > position,
                "fetch at {position} made progress"
            );
            records.extend(fetched.records.into_iter().filter(|r| r.offset.0 < to));
            position = fetched.next_offset;
        }
        records
    }

    /// Reads every record and checks each against what was produced.
    pub fn assert_all_present(&self, runtime: &Runtime) {
        let fetched = super::read_partition(runtime, &self.topic, PartitionId(0));
        assert_eq!(
            fetched.len(),
            self.records.len(),
            "every produced record is readable"
        );
        self.assert_matches(0, &fetched);
    }
}

/// A value that names its offset, padded to `bytes`.
pub fn value_for(offset: usize, bytes: usize) -> Vec<u8> {
    let mut value = format!("record-{offset:08}-").into_bytes();
    let mut filler = offset as u64 | 1;
    while value.len() < bytes {
        filler = filler
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        value.push(b'a' + (filler >> 59) as u8 % 26);
    }
    value
}
