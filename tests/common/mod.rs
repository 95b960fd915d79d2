//! Helpers shared by the integration suites: temp data directories, configs,
//! a seeded RNG, condition waits with deadlines, whole-partition reads, the
//! history checker ([`history`]), a tracing capture layer ([`capture`]) and a
//! store spread over 14 days for the startup-load tests ([`timed`]), and
//! self-checking keyed records with a key → latest-value model for the
//! compaction suites ([`keyed`]).
//!
//! Each test binary uses a different subset, hence the `dead_code` allowance.
#![allow(dead_code)]

pub mod capture;
pub mod history;
pub mod kafka;
pub mod keyed;
pub mod timed;

use millrace::config::{Config, TopicConfig};
use millrace::{FetchOptions, FetchedRecord, Offset, PartitionId, Runtime};
use std::path::Path;
use std::time::{Duration, Instant};

/// A config with `data_dir` and these topics.
pub fn config(data_dir: &Path, topics: Vec<TopicConfig>) -> Config {
    let mut config = Config::new(data_dir);
    config.topics = topics;
    config
}

/// A topic with `partitions` partitions and every other key at its default.
pub fn topic(name: &str, partitions: u32) -> TopicConfig {
    TopicConfig {
        partitions,
        ..TopicConfig::with_defaults(name)
    }
}

/// xorshift64*: a tiny deterministic RNG, so every run of a test makes the
/// same choices (no extra dependency).
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> XorShift {
        XorShift(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform-ish in `0..bound` (`bound > 0`).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }
}

/// Free loopback ports, found by binding port 0 (then released, for a
/// node to bind: a test starting nodes with fixed peer addresses).
pub fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> = (0..count)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    listeners
        .iter()
        .map(|listener| listener.local_addr().expect("address").port())
        .collect()
}

/// Polls `condition` every 20 ms until it holds; panics naming `what` after
/// `deadline`. This waits for an observable state, it never sleeps as a way
/// to order events.
pub fn wait_until(deadline: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    loop {
        if condition() {
            return;
        }
        assert!(
            started.elapsed() < deadline,
            "timed out after {deadline:?} waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Options for reading what is already there: no waiting at the end.
pub fn no_wait(max_bytes: usize) -> FetchOptions {
    FetchOptions {
        max_bytes,
        max_wait: Duration::ZERO,
    }
}

/// Every readable record of one partition, from its log start offset to the
/// high watermark at the time of the call. Asserts offset continuity: each
/// fetch starts exactly where the previous one said to continue.
pub fn read_partition(
    runtime: &Runtime,
    topic: &str,
    partition: PartitionId,
) -> Vec<FetchedRecord> {
    let offsets = runtime
        .offsets_blocking(topic, partition)
        .expect("partition offsets");
    let mut position = offsets.log_start_offset;
    let mut records = Vec::new();
    while position < offsets.high_watermark {
        let fetched = runtime
            .fetch_blocking(topic, partition, position, no_wait(1 << 20))
            .unwrap_or_else(|error| panic!("fetch {topic}/{partition} at {position}: {error}"));
        assert!(
            fetched.next_offset > position,
            "{topic}/{partition}: fetch at {position} below the high watermark {} made no \
             progress: {} records, next offset {}, high watermark {}, log start {}",
            offsets.high_watermark,
            fetched.records.len(),
            fetched.next_offset,
            fetched.high_watermark,
            fetched.log_start_offset
        );
        for record in &fetched.records {
            assert_eq!(
                record.offset,
                Offset(offsets.log_start_offset.0 + records.len() as u64),
                "records of one partition must have consecutive offsets"
            );
            records.push(record.clone());
        }
        position = fetched.next_offset;
    }
    records
}

/// The value of a fetched record as bytes (tombstones are a test failure here).
pub fn value_of(record: &FetchedRecord) -> &[u8] {
    record
        .value
        .as_deref()
        .unwrap_or_else(|| panic!("record {} is a tombstone", record.offset))
}

/// Files in `directory` whose names end with `suffix`.
pub fn files_ending(directory: &Path, suffix: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(directory)
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok())
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .filter(|name| name.ends_with(suffix))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The directory of one partition (the layout documented in `storage`).
pub fn partition_directory(data_dir: &Path, topic: &str, partition: u32) -> std::path::PathBuf {
    data_dir.join("topics").join(format!("{topic}-{partition}"))
}
