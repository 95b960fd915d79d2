//! [`PartitionLog`]: one partition's segments, offsets and recovery.

use super::io::IoJob;
use super::segment::SegmentFile;
use crate::types::{FetchedRecord, Offset, Record, Term};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Limits and policies of one partition log (from the topic config).
#[derive(Clone, Debug)]
pub struct LogOptions {
    /// The active segment is sealed once it would grow past this.
    pub segment_bytes: u64,
    /// The active segment is sealed once its first record is this old.
    pub segment_age: Option<Duration>,
    /// An index entry every this many bytes of frames.
    pub index_interval_bytes: u64,
    /// Largest encoded batch (frame) accepted by `append`.
    pub batch_bytes_max: usize,
    /// Sealed blocks whose newest record is older than this are deleted.
    pub retention: Option<Duration>,
    /// Sealed blocks are deleted, oldest first, while the partition is larger.
    pub retention_bytes: Option<u64>,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            segment_bytes: 64 * 1024 * 1024,
            segment_age: None,
            index_interval_bytes: 4096,
            batch_bytes_max: 1024 * 1024,
            retention: None,
            retention_bytes: None,
        }
    }
}

/// Damage found in a file, with where it is. Never silently cut.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Corruption {
    /// The damaged file.
    pub file: PathBuf,
    /// Byte position of the first bad frame.
    pub position: u64,
    /// First offset that can no longer be read, if known.
    pub offset: Option<Offset>,
    /// What check failed.
    pub reason: String,
}

impl std::fmt::Display for Corruption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at byte {}: {}", self.file.display(), self.position, self.reason)
    }
}

/// What recovery found and did at open.
#[derive(Clone, Debug, Default)]
pub struct RecoveryReport {
    /// Sealed blocks registered.
    pub sealed_blocks: usize,
    /// Temp files and files no index refers to, removed (`orphaned_blocks_cleaned_total`).
    pub orphans_removed: u64,
    /// Bytes cut from a torn tail of the active segment (kept in `.broken`).
    pub torn_tail_bytes: u64,
    /// Seals interrupted by a crash and finished at open.
    pub seals_completed: usize,
    /// Damage found away from the tail: quarantined, reported, never returned.
    pub corruptions: Vec<Corruption>,
}

/// Why a partition log could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// An I/O error; retryable once the cause is fixed.
    #[error(transparent)]
    Io(#[from] super::io::IoError),
    /// A file is not a millrace file of a version this build reads. Final.
    #[error("{file}: {reason}")]
    Format {
        /// The file.
        file: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Why an append was refused. Nothing was written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppendError {
    /// No records. Final.
    #[error("empty batch")]
    Empty,
    /// The encoded batch is larger than the topic allows. Final.
    #[error("batch of {bytes} bytes is over the limit of {max} bytes")]
    TooLarge {
        /// Encoded size.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// Creating the next segment file failed. Retryable.
    #[error(transparent)]
    Io(#[from] super::io::IoError),
}

/// Why a read failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReadError {
    /// The offset is outside the readable range. Final for that offset.
    #[error("offset {requested} is out of range [{log_start_offset}, {high_watermark}]")]
    OffsetOutOfRange {
        /// The offset asked for.
        requested: Offset,
        /// First readable offset.
        log_start_offset: Offset,
        /// The high watermark (reading it waits for data).
        high_watermark: Offset,
    },
    /// The data is damaged; it is not returned. Final until repaired.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// An I/O error while reading. Retryable.
    #[error("read {file}: {message}")]
    Io {
        /// The file.
        file: PathBuf,
        /// The OS error.
        message: String,
    },
}

/// The result of [`PartitionLog::append`]: assigned offsets and the I/O to run.
#[derive(Debug)]
pub struct AppendOutcome {
    /// Offset of the first record.
    pub base_offset: Offset,
    /// Offset of the last record.
    pub last_offset: Offset,
    /// I/O to run in order: a seal of the previous segment if this append
    /// rolled, then the append itself.
    pub jobs: Vec<IoJob>,
}

/// A byte range of one segment file to read.
#[derive(Clone, Debug)]
pub struct ReadRange {
    /// The file (kept open by this `Arc` even if retention deletes it).
    pub file: Arc<SegmentFile>,
    /// First byte to read (a frame boundary).
    pub start_position: u64,
    /// Byte after the last durable frame to read.
    pub end_position: u64,
    /// Reading at or past this position reports corruption instead of data.
    pub corrupt_from: Option<Corruption>,
}

/// A read planned by the log, executed by the caller on any thread.
#[derive(Clone, Debug)]
pub struct ReadPlan {
    /// First offset wanted.
    pub from_offset: Offset,
    /// High watermark when planned: nothing at or past it is returned.
    pub high_watermark: Offset,
    /// First readable offset when planned.
    pub log_start_offset: Offset,
    /// Ranges in offset order.
    pub ranges: Vec<ReadRange>,
}

/// Records read by [`ReadPlan::execute`].
#[derive(Clone, Debug, Default)]
pub struct ReadResult {
    /// Records with `from_offset <= offset < high_watermark`, in order.
    pub records: Vec<FetchedRecord>,
    /// Where the next read should start.
    pub next_offset: Offset,
    /// Frame bytes read.
    pub bytes_read: usize,
}

impl ReadPlan {
    /// Reads whole batches until `max_bytes` is reached, but always at least
    /// one batch (so a batch larger than `max_bytes` never stalls a reader).
    /// Every frame is verified (CRC) before any of its records is returned.
    pub fn execute(&self, max_bytes: usize) -> Result<ReadResult, ReadError> {
        let _ = max_bytes;
        todo!()
    }
}

/// One partition's log. See the [module docs](super).
#[derive(Debug)]
pub struct PartitionLog {
    directory: PathBuf,
    options: LogOptions,
}

impl PartitionLog {
    /// Opens (creating if needed) the log in `directory` and recovers it:
    /// sweeps temp and orphan files, finishes interrupted seals, loads or
    /// rebuilds indexes, scans the active segment and truncates a torn tail
    /// (keeping the cut bytes in `.broken`), quarantines damage elsewhere,
    /// fsyncs. Everything on disk after recovery is durable: the high
    /// watermark starts at the log end offset.
    pub fn open(directory: &Path, options: LogOptions) -> Result<(PartitionLog, RecoveryReport), OpenError> {
        let _ = (directory, options);
        todo!()
    }

    /// Assigns offsets to `records`, encodes them as one batch, and plans its
    /// write (sealing the active segment first if it is full or old).
    /// `log_end_offset` advances now; `high_watermark` only on `mark_durable`.
    pub fn append(&mut self, records: &[Record], term: Term, now_ms: i64) -> Result<AppendOutcome, AppendError> {
        let _ = (records, term, now_ms);
        todo!()
    }

    /// Everything below `next_offset` is durable: advance the high watermark.
    pub fn mark_durable(&mut self, next_offset: Offset) {
        let _ = next_offset;
        todo!()
    }

    /// A seal job finished: the segment is now a sealed block.
    pub fn seal_completed(&mut self, base_offset: Offset) {
        let _ = base_offset;
        todo!()
    }

    /// A seal job failed; it will be returned again by `retry_jobs`.
    pub fn seal_failed(&mut self, base_offset: Offset) {
        let _ = base_offset;
        todo!()
    }

    /// A delete job failed; it will be returned again by `retention_jobs`.
    pub fn deletion_failed(&mut self, base_offset: Offset, paths: Vec<PathBuf>) {
        let _ = (base_offset, paths);
        todo!()
    }

    /// Seals to retry (after failures).
    pub fn retry_jobs(&mut self) -> Vec<IoJob> {
        todo!()
    }

    /// Applies retention at `now_ms`: removes expired sealed blocks (oldest
    /// first, never the active segment) from the log and returns their
    /// deletions, plus deletions that failed before.
    pub fn retention_jobs(&mut self, now_ms: i64) -> Vec<IoJob> {
        let _ = now_ms;
        todo!()
    }

    /// Plans a read from `offset`. `Ok(None)` when `offset` is the high
    /// watermark (nothing to read yet: the caller may wait).
    pub fn read_plan(&self, offset: Offset, max_bytes: usize) -> Result<Option<ReadPlan>, ReadError> {
        let _ = (offset, max_bytes);
        todo!()
    }

    /// Removes every record at or after `from` (a batch boundary, inside the
    /// active segment). For a Raft layer truncating a divergent suffix. The
    /// owner must have no I/O of this log in flight.
    pub fn truncate_suffix(&mut self, from: Offset) -> Result<(), OpenError> {
        let _ = from;
        todo!()
    }

    /// Leader epoch of the batch holding `offset`, if the log holds it.
    pub fn term_at(&self, offset: Offset) -> Option<Term> {
        let _ = offset;
        todo!()
    }

    /// The offset the next appended record gets.
    pub fn log_end_offset(&self) -> Offset {
        todo!()
    }
    /// Offsets below this are durable and readable.
    pub fn high_watermark(&self) -> Offset {
        todo!()
    }
    /// The first readable offset.
    pub fn log_start_offset(&self) -> Offset {
        todo!()
    }
    /// Bytes of all segments.
    pub fn size_bytes(&self) -> u64 {
        todo!()
    }
    /// Sealed blocks plus the active segment.
    pub fn segment_count(&self) -> usize {
        todo!()
    }
    /// The partition directory.
    pub fn directory(&self) -> &Path {
        &self.directory
    }
    /// The options it runs with.
    pub fn options(&self) -> &LogOptions {
        &self.options
    }
}
