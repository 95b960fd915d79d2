//! [`PartitionLog`]: one partition's segments, offsets and recovery.

use super::batch::{
    decode_frame_checksummed, encode_frame, encode_frame_from_batch, peek_frame_len, BatchHeader,
    FrameError, FrameView, ProducerFields, BATCH_HEADER_BYTES, FRAME_HEADER_BYTES, FRAME_MAGIC,
};
use super::compaction::{CompactedBlocks, CompactionBlock, CompactionInput, SwapError};
use super::index::{SegmentIndex, INDEX_ENTRIES_MAX, INDEX_HEADER_BYTES, INDEX_MAGIC};
use super::io::{self, AppendJob, DeleteJob, IoError, IoJob, SealJob};
use super::segment::{check_header, encode_header, SegmentFile, SEGMENT_HEADER_BYTES};
use crate::types::{FetchedRecord, Offset, Record, Term};
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs::File;
use std::io::Write as _;
use std::os::unix::fs::FileExt;
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
        write!(
            f,
            "{} at byte {}: {}",
            self.file.display(),
            self.position,
            self.reason
        )
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
    /// Key compactions a crash interrupted after their commit, completed.
    /// (Ones interrupted before it are rolled back; their files count as
    /// `orphans_removed`.)
    pub compactions_completed: usize,
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
    /// The offset is in a sealed block the startup load has not reached
    /// yet. Retryable: the block is being loaded in the background.
    #[error("offset {requested} is in block {block_base_offset}, which is not loaded yet")]
    NotLoaded {
        /// The offset asked for.
        requested: Offset,
        /// Base offset of the block holding it.
        block_base_offset: Offset,
    },
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
    /// Where the frame will be once the jobs ran.
    pub location: FrameLocation,
}

/// Where one frame is: its file, byte position and length (frame header
/// included). A Raft layer keeps these to read its entries back.
#[derive(Clone, Debug)]
pub struct FrameLocation {
    /// The segment file (active or sealed; it stays valid across a seal,
    /// which renames the file but keeps it open).
    pub file: Arc<SegmentFile>,
    /// Byte position of the frame header.
    pub position: u64,
    /// Frame bytes.
    pub len: u32,
}

impl FrameLocation {
    /// Reads and verifies the frame (both CRCs; records are checked when read).
    pub fn read(&self) -> Result<FrameView, ReadError> {
        let mut buffer = vec![0u8; self.len as usize];
        self.file
            .file
            .read_exact_at(&mut buffer, self.position)
            .map_err(|error| ReadError::Io {
                file: self.file.directory.clone(),
                message: error.to_string(),
            })?;
        decode_frame_checksummed(&Bytes::from(buffer)).map_err(|error| {
            ReadError::Corrupt(format!(
                "segment {} of {}, byte {}: {error}",
                self.file.base_offset,
                self.file.directory.display(),
                self.position
            ))
        })
    }
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
    /// Records with `from_offset <= offset < high_watermark`, in order
    /// (empty from [`ReadPlan::execute_batches`]).
    pub records: Vec<FetchedRecord>,
    /// From [`ReadPlan::execute_batches`] only: the stored RecordBatches
    /// (Kafka's RecordBatch v2, as a Kafka fetch serves them), each holding
    /// a record at or after `from_offset`; the first may start before it.
    pub batches: Vec<Bytes>,
    /// Where the next read should start.
    pub next_offset: Offset,
    /// Frame bytes read.
    pub bytes_read: usize,
}

impl ReadPlan {
    /// Reads whole batches until `max_bytes` is reached, but always at least
    /// one batch (so a batch larger than `max_bytes` never stalls a reader).
    /// Every frame is verified (CRC) before any of its records is returned.
    ///
    /// Damage or an I/O error after some records were already collected ends
    /// the read early with those records; the next read, starting at
    /// `next_offset`, reports the error. A reader thus gets everything before
    /// the damage and never anything at or after it.
    pub fn execute(&self, max_bytes: usize) -> Result<ReadResult, ReadError> {
        self.run(max_bytes, false)
    }

    /// [`ReadPlan::execute`], but returns the verified RecordBatches as
    /// stored instead of decoding their records: what a Kafka fetch sends.
    pub fn execute_batches(&self, max_bytes: usize) -> Result<ReadResult, ReadError> {
        self.run(max_bytes, true)
    }

    fn run(&self, max_bytes: usize, raw: bool) -> Result<ReadResult, ReadError> {
        let mut result = ReadResult {
            records: Vec::new(),
            batches: Vec::new(),
            next_offset: self.from_offset,
            bytes_read: 0,
        };
        let mut previous_next_offset: Option<Offset> = None;
        for range in &self.ranges {
            match self.read_range(
                range,
                max_bytes,
                raw,
                &mut result,
                &mut previous_next_offset,
            ) {
                Ok(RangeEnd::Exhausted) => {}
                Ok(RangeEnd::Complete) => return Ok(result),
                Err(error) if result.records.is_empty() && result.batches.is_empty() => {
                    return Err(error)
                }
                Err(_) => return Ok(result),
            }
        }
        Ok(result)
    }

    /// Reads the frames of one range into `result`.
    fn read_range(
        &self,
        range: &ReadRange,
        max_bytes: usize,
        raw: bool,
        result: &mut ReadResult,
        previous_next_offset: &mut Option<Offset>,
    ) -> Result<RangeEnd, ReadError> {
        let chunk_bytes = max_bytes
            .saturating_sub(result.bytes_read)
            .clamp(READ_CHUNK_BYTES_MIN, READ_CHUNK_BYTES_MAX);
        let mut reader = FrameReader::new(
            &range.file.file,
            range.start_position,
            range.end_position,
            chunk_bytes,
        );
        loop {
            if let Some(corruption) = &range.corrupt_from {
                if reader.position >= corruption.position && reader.position < range.end_position {
                    return Err(ReadError::Corrupt(corruption.to_string()));
                }
            }
            let (position, view) = match reader.next_frame() {
                Ok(Some(found)) => found,
                Ok(None) => return Ok(RangeEnd::Exhausted),
                Err(FrameReadError::Io(source)) => {
                    return Err(ReadError::Io {
                        file: segment_path(&range.file),
                        message: source.to_string(),
                    })
                }
                Err(FrameReadError::Frame { position, error }) => {
                    return Err(corrupt_read(&range.file, position, error.to_string()))
                }
            };
            let header = view.header;
            if let Some(previous) = *previous_next_offset {
                if header.base_offset < previous {
                    let reason = format!(
                        "batch base offset {} is below the previous batch's end {}",
                        header.base_offset, previous
                    );
                    return Err(corrupt_read(&range.file, position, reason));
                }
            }
            *previous_next_offset = Some(header.next_offset());
            if header.base_offset >= self.high_watermark {
                return Ok(RangeEnd::Complete);
            }
            if header.next_offset() <= self.from_offset {
                continue;
            }
            let high_watermark = self.high_watermark;
            if raw {
                // The high watermark is always at a batch boundary (it is
                // where a durable append ended), so no batch straddles it.
                result.batches.push(view.record_batch());
                result.next_offset = result
                    .next_offset
                    .max(header.next_offset().min(high_watermark));
                result.bytes_read += view.frame.len();
                if result.bytes_read >= max_bytes {
                    return Ok(RangeEnd::Complete);
                }
                continue;
            }
            let records_before = result.records.len();
            view.records_into(&mut result.records, self.from_offset)
                .map_err(|error| corrupt_read(&range.file, position, error.to_string()))?;
            if header.next_offset() > high_watermark {
                // Only a batch straddling the high watermark needs this.
                result
                    .records
                    .retain(|record| record.offset < high_watermark);
            }
            result.next_offset = result
                .next_offset
                .max(header.next_offset().min(high_watermark));
            if result.records.len() == records_before {
                // A compacted batch whose remaining records are all below
                // `from_offset`: step over it without counting it, so a
                // fetch of a removed offset returns the next record that
                // exists rather than an empty result.
                continue;
            }
            result.bytes_read += view.frame.len();
            if result.bytes_read >= max_bytes {
                return Ok(RangeEnd::Complete);
            }
        }
    }
}

/// The answer of [`PartitionLog::offset_for_timestamp`]: either already
/// known, or a scan of segment files that the caller runs on its own thread
/// (like [`ReadPlan::execute`]), so the partition's owner never does
/// the I/O of a time lookup.
#[derive(Clone, Debug)]
pub enum TimeLookup {
    /// Known without reading segment data: no segment holds a record at or
    /// after the time below the high watermark, so the answer is the high
    /// watermark.
    Resolved(Offset),
    /// Segments that may hold the answer; [`TimeScanPlan::execute`] finds it.
    Scan(TimeScanPlan),
}

impl TimeLookup {
    /// The offset: the resolved one, or the result of executing the scan
    /// (file reads on the calling thread).
    pub fn resolve(&self) -> Result<Offset, ReadError> {
        match self {
            TimeLookup::Resolved(offset) => Ok(*offset),
            TimeLookup::Scan(plan) => plan.execute(),
        }
    }
}

/// A time lookup planned by the log: the segments that may hold the
/// earliest record whose timestamp is at or after
/// [`TimeScanPlan::timestamp_ms`], in offset order, each from the position
/// the index proves safe. Files are held by `Arc`, so retention or a
/// compaction swap after planning does not pull them away.
#[derive(Clone, Debug)]
pub struct TimeScanPlan {
    timestamp_ms: i64,
    high_watermark: Offset,
    steps: Vec<TimeScanStep>,
}

/// One segment of a [`TimeScanPlan`].
#[derive(Clone, Debug)]
enum TimeScanStep {
    /// Scan these frames for the first record at or after the time.
    Scan(ReadRange),
    /// A sealed block the startup load has not registered yet. Skipped if
    /// its index file (CRC-verified, describing the file as listed) proves
    /// every record of it is earlier than the time; otherwise the answer
    /// may be in it, and the lookup answers [`ReadError::NotLoaded`].
    Unloaded {
        directory: PathBuf,
        base_offset: Offset,
        size_bytes: u64,
    },
}

/// Largest index file a time lookup reads to check an unloaded block
/// (every entry list at [`INDEX_ENTRIES_MAX`]); a larger file cannot be
/// valid and is not read.
const INDEX_FILE_BYTES_MAX: u64 =
    INDEX_HEADER_BYTES as u64 + 4 + (16 + 16 + 12) * INDEX_ENTRIES_MAX as u64;

impl TimeScanPlan {
    /// The time looked up (milliseconds since the Unix epoch).
    pub fn timestamp_ms(&self) -> i64 {
        self.timestamp_ms
    }

    /// The high watermark when planned: the answer when no record below it
    /// reaches the time.
    pub fn high_watermark(&self) -> Offset {
        self.high_watermark
    }

    /// Finds the earliest offset below the high watermark whose record's
    /// timestamp is at or after the time, or the high watermark if none is.
    /// Reads frames forward from each segment's index position (skipping,
    /// without decoding, batches whose largest timestamp is earlier) and
    /// verifies every frame it reads (CRC).
    ///
    /// Errors: [`ReadError::NotLoaded`] (retryable) when the answer may be
    /// in a block the startup load has not reached yet (`requested` is that
    /// block's base offset); [`ReadError::Corrupt`] when damage comes before
    /// any record reaching the time (the answer may be in the damaged part);
    /// [`ReadError::Io`].
    pub fn execute(&self) -> Result<Offset, ReadError> {
        let mut records = Vec::new();
        for step in &self.steps {
            match step {
                TimeScanStep::Scan(range) => {
                    if let Some(offset) = self.scan_range(range, &mut records)? {
                        return Ok(offset);
                    }
                }
                TimeScanStep::Unloaded {
                    directory,
                    base_offset,
                    size_bytes,
                } => {
                    if !unloaded_block_is_earlier(
                        directory,
                        *base_offset,
                        *size_bytes,
                        self.timestamp_ms,
                    ) {
                        return Err(ReadError::NotLoaded {
                            requested: *base_offset,
                            block_base_offset: *base_offset,
                        });
                    }
                }
            }
        }
        Ok(self.high_watermark)
    }

    /// The first offset in `range` whose record reaches the time (or the
    /// high watermark, if the range reaches it first); `None` if no record
    /// of the range does.
    fn scan_range(
        &self,
        range: &ReadRange,
        records: &mut Vec<FetchedRecord>,
    ) -> Result<Option<Offset>, ReadError> {
        let mut reader = FrameReader::new(
            &range.file.file,
            range.start_position,
            range.end_position,
            READ_CHUNK_BYTES_MAX,
        );
        loop {
            if let Some(corruption) = &range.corrupt_from {
                if reader.position >= corruption.position && reader.position < range.end_position {
                    return Err(ReadError::Corrupt(corruption.to_string()));
                }
            }
            let (position, view) = match reader.next_frame() {
                Ok(Some(found)) => found,
                Ok(None) => return Ok(None),
                Err(FrameReadError::Io(source)) => {
                    return Err(ReadError::Io {
                        file: segment_path(&range.file),
                        message: source.to_string(),
                    })
                }
                Err(FrameReadError::Frame { position, error }) => {
                    return Err(corrupt_read(&range.file, position, error.to_string()))
                }
            };
            let header = view.header;
            if header.base_offset >= self.high_watermark {
                return Ok(Some(self.high_watermark));
            }
            // `maxTimestamp` bounds every record's timestamp (decode checks
            // it for CreateTime; under LogAppendTime it is each record's).
            if header.max_timestamp_ms < self.timestamp_ms {
                continue;
            }
            records.clear();
            view.records_into(records, header.base_offset)
                .map_err(|error| corrupt_read(&range.file, position, error.to_string()))?;
            for record in records.iter() {
                if record.offset >= self.high_watermark {
                    return Ok(Some(self.high_watermark));
                }
                if record.timestamp_ms >= self.timestamp_ms {
                    return Ok(Some(record.offset));
                }
            }
            // A compacted batch can keep a `maxTimestamp` none of its
            // remaining records reaches: go on.
        }
    }
}

/// Whether the index file of an unloaded block proves that every record of
/// it is earlier than `timestamp_ms`. The 48-byte header hint is read first
/// (a block that may reach the time is decided by it alone); a skip is only
/// taken on the whole index file: its CRC checked, and describing the block
/// file at the size it was listed with. Anything missing, damaged or stale
/// proves nothing (the startup load will rebuild it).
fn unloaded_block_is_earlier(
    directory: &Path,
    base_offset: Offset,
    size_bytes: u64,
    timestamp_ms: i64,
) -> bool {
    let index_path = SegmentFile::index_path(directory, base_offset);
    if read_index_timestamp_hint(&index_path).is_none_or(|hint| hint >= timestamp_ms) {
        return false;
    }
    let small_enough =
        std::fs::metadata(&index_path).is_ok_and(|metadata| metadata.len() <= INDEX_FILE_BYTES_MAX);
    if !small_enough {
        return false;
    }
    let Ok(bytes) = std::fs::read(&index_path) else {
        return false;
    };
    SegmentIndex::decode(&bytes).is_ok_and(|index| {
        index.segment_bytes == size_bytes && index.max_timestamp_ms < timestamp_ms
    })
}

/// How reading one range of a plan ended.
enum RangeEnd {
    /// Every frame of the range was read; go on with the next range.
    Exhausted,
    /// The read is complete (enough bytes, or the high watermark reached).
    Complete,
}

/// Reads of segment data are at least this large, so a small fetch still
/// costs one system call per many frames.
const READ_CHUNK_BYTES_MIN: usize = 64 * 1024;
/// Reads of segment data are at most this large: a 4 MiB fetch reads in
/// several chunks instead of allocating (and faulting in) 4 MiB each time.
const READ_CHUNK_BYTES_MAX: usize = 256 * 1024;
/// Recovery and truncation read this much at a time.
pub(crate) const SCAN_CHUNK_BYTES: usize = 1024 * 1024;
/// The search for a valid frame after damage reads this much at a time.
const SEARCH_WINDOW_BYTES: usize = 1024 * 1024;

/// Why the next frame could not be read.
#[derive(Debug)]
pub(crate) enum FrameReadError {
    /// The read itself failed.
    Io(std::io::Error),
    /// The bytes at `position` are not a valid frame.
    Frame {
        /// Byte position of the bad frame.
        position: u64,
        /// What is wrong with it.
        error: FrameError,
    },
}

/// Reads verified frames of one file between two positions, with positional
/// reads of large chunks. A frame is a slice of its chunk (no copy); a frame
/// crossing the end of a chunk starts the next chunk.
pub(crate) struct FrameReader<'a> {
    file: &'a File,
    /// Position of the next frame.
    pub(crate) position: u64,
    /// Byte after the last frame to read.
    end_position: u64,
    chunk: Bytes,
    /// File position of the chunk's first byte.
    chunk_start: u64,
    /// Chunks are this large unless the range or a frame says otherwise.
    chunk_bytes: usize,
}

impl<'a> FrameReader<'a> {
    pub(crate) fn new(
        file: &'a File,
        start_position: u64,
        end_position: u64,
        chunk_bytes: usize,
    ) -> FrameReader<'a> {
        FrameReader {
            file,
            position: start_position,
            end_position,
            chunk: Bytes::new(),
            chunk_start: 0,
            chunk_bytes,
        }
    }

    /// The next verified frame and its position, or `None` at the end.
    pub(crate) fn next_frame(&mut self) -> Result<Option<(u64, FrameView)>, FrameReadError> {
        let position = self.position;
        if position >= self.end_position {
            return Ok(None);
        }
        let remaining = self.end_position - position;
        let incomplete = |needed: usize| FrameReadError::Frame {
            position,
            error: FrameError::Incomplete {
                needed,
                available: remaining as usize,
            },
        };
        if remaining < FRAME_HEADER_BYTES as u64 {
            return Err(incomplete(FRAME_HEADER_BYTES));
        }
        let start = self.load(FRAME_HEADER_BYTES)?;
        let mut header = [0u8; FRAME_HEADER_BYTES];
        header.copy_from_slice(&self.chunk[start..start + FRAME_HEADER_BYTES]);
        // The length is checked against its maximum before anything is allocated for it.
        let frame_bytes =
            peek_frame_len(&header).map_err(|error| FrameReadError::Frame { position, error })?;
        if frame_bytes as u64 > remaining {
            return Err(incomplete(frame_bytes));
        }
        let start = self.load(frame_bytes)?;
        let frame = self.chunk.slice(start..start + frame_bytes);
        let view = decode_frame_checksummed(&frame)
            .map_err(|error| FrameReadError::Frame { position, error })?;
        if view.frame.len() != frame_bytes {
            let reason = format!(
                "frame decodes to {} bytes, its header says {}",
                view.frame.len(),
                frame_bytes
            );
            return Err(FrameReadError::Frame {
                position,
                error: FrameError::Malformed(reason),
            });
        }
        self.position += frame_bytes as u64;
        Ok(Some((position, view)))
    }

    /// Makes the chunk hold `length` bytes from the current position (which
    /// the caller checked are inside the range); returns their index in it.
    fn load(&mut self, length: usize) -> Result<usize, FrameReadError> {
        let chunk_end = self.chunk_start + self.chunk.len() as u64;
        if self.position >= self.chunk_start && self.position + length as u64 <= chunk_end {
            return Ok((self.position - self.chunk_start) as usize);
        }
        let remaining = (self.end_position - self.position) as usize;
        let read_bytes = length.max(self.chunk_bytes.min(remaining));
        let mut buffer = vec![0u8; read_bytes];
        self.file
            .read_exact_at(&mut buffer, self.position)
            .map_err(FrameReadError::Io)?;
        self.chunk = Bytes::from(buffer);
        self.chunk_start = self.position;
        Ok(0)
    }
}

/// The current name of a segment file: `.wal` until its seal renames it.
/// Only used to name a file in an error, so the extra `stat` is off the hot path.
fn segment_path(file: &SegmentFile) -> PathBuf {
    let wal_path = SegmentFile::wal_path(&file.directory, file.base_offset);
    if wal_path.exists() {
        wal_path
    } else {
        SegmentFile::log_path(&file.directory, file.base_offset)
    }
}

fn corrupt_read(file: &SegmentFile, position: u64, reason: String) -> ReadError {
    ReadError::Corrupt(
        Corruption {
            file: segment_path(file),
            position,
            offset: None,
            reason,
        }
        .to_string(),
    )
}

fn io_error(operation: &'static str, path: &Path, source: std::io::Error) -> IoError {
    IoError {
        operation,
        path: path.to_path_buf(),
        source,
    }
}

/// Where a seal stands. Retention leaves a block alone until it is `Sealed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SealState {
    /// Its files are a `.log` and an `.idx`.
    Sealed,
    /// Its seal job was handed out and has not completed.
    Sealing,
    /// Its seal job failed; `retry_jobs` hands it out again.
    Failed,
}

/// A segment that no longer takes appends.
#[derive(Debug)]
struct Block {
    file: Arc<SegmentFile>,
    index: SegmentIndex,
    /// Bytes of the file.
    size_bytes: u64,
    /// Bytes known durable (less than `size_bytes` only while its last
    /// appends are in flight).
    durable_bytes: u64,
    /// Damage found at open: reading at or past it reports corruption.
    corrupt_from: Option<Corruption>,
    seal: SealState,
    /// Handed to a compaction run (`compaction_input`) that has not been
    /// swapped in or aborted: retention stops at it.
    compacting: bool,
    /// Written by a compaction (not known after a restart): its bytes are
    /// clean for [`PartitionLog::dirty_ratio`].
    compacted: bool,
}

/// The segment appends go to.
#[derive(Debug)]
struct ActiveSegment {
    file: Arc<SegmentFile>,
    base_offset: Offset,
    /// Bytes planned so far (written once the planned jobs run).
    write_position: u64,
    /// Bytes known durable.
    durable_position: u64,
    /// Built with `add_batch` as batches are planned.
    index: SegmentIndex,
    /// When the first batch was appended to it (for `segment_age`). After a
    /// restart the age counts from the first append after it, because the
    /// records' own timestamps are event times, not append times.
    first_append_ms: Option<i64>,
}

impl ActiveSegment {
    fn new(
        file: Arc<SegmentFile>,
        base_offset: Offset,
        position: u64,
        index: SegmentIndex,
    ) -> ActiveSegment {
        ActiveSegment {
            file,
            base_offset,
            write_position: position,
            durable_position: position,
            index,
            first_append_ms: None,
        }
    }

    fn has_frames(&self) -> bool {
        self.write_position > SEGMENT_HEADER_BYTES
    }
}

/// A planned append that is not yet known durable.
#[derive(Debug)]
struct UnsyncedAppend {
    next_offset: Offset,
    segment_base: Offset,
    end_position: u64,
}

/// One segment as a reader sees it.
struct SegmentView<'a> {
    base_offset: Offset,
    file: &'a Arc<SegmentFile>,
    index: &'a SegmentIndex,
    next_offset: Offset,
    end_position: u64,
    corrupt_from: Option<&'a Corruption>,
}

impl From<LoadedBlock> for Block {
    fn from(loaded: LoadedBlock) -> Block {
        Block {
            file: loaded.file,
            index: loaded.index,
            size_bytes: loaded.size_bytes,
            durable_bytes: loaded.size_bytes,
            corrupt_from: loaded.corrupt_from,
            seal: SealState::Sealed,
            compacting: false,
            compacted: loaded.compacted,
        }
    }
}

/// The first offset the log holds: the oldest block, loaded or not, or the
/// active segment.
fn first_base_offset(
    blocks: &BTreeMap<Offset, Block>,
    unloaded: &BTreeMap<Offset, UnloadedBlock>,
    active: &ActiveSegment,
) -> Offset {
    let oldest_loaded = blocks.keys().next().copied();
    let oldest_unloaded = unloaded.keys().next().copied();
    match (oldest_loaded, oldest_unloaded) {
        (Some(loaded), Some(listed)) => loaded.min(listed),
        (Some(base), None) | (None, Some(base)) => base,
        (None, None) => active.base_offset,
    }
}

/// The largest timestamp a sealed block's index header claims (bytes 40..48
/// of its `.idx`), unverified: `None` if it cannot be read or has no magic.
/// Only a hint for the hot window. Not read at `open_deferred` (one random
/// read per block would make startup scale with the block count); the startup
/// load reads it newest first and stops at the first block older than the window.
pub fn block_timestamp_hint(directory: &Path, base_offset: Offset) -> Option<i64> {
    read_index_timestamp_hint(&SegmentFile::index_path(directory, base_offset))
}

/// `max_timestamp_ms` from an index file's header (bytes 40..48), without
/// verifying the file: `None` if it cannot be read or has no magic.
fn read_index_timestamp_hint(index_path: &Path) -> Option<i64> {
    let file = File::open(index_path).ok()?;
    let mut header = [0u8; INDEX_HEADER_BYTES];
    file.read_exact_at(&mut header, 0).ok()?;
    if header[..INDEX_MAGIC.len()] != INDEX_MAGIC {
        return None;
    }
    let bytes: [u8; 8] = header[40..48].try_into().ok()?;
    Some(i64::from_le_bytes(bytes))
}

/// An index with no batches for a segment starting at `base_offset`.
fn empty_index(base_offset: Offset) -> SegmentIndex {
    SegmentIndex {
        next_offset: base_offset,
        max_timestamp_ms: i64::MIN,
        ..SegmentIndex::default()
    }
}

/// A sealed block known by its file name, not loaded yet: reads of its
/// offsets answer [`ReadError::NotLoaded`] until [`PartitionLog::register_block`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnloadedBlock {
    /// Its base offset (from the file name).
    pub base_offset: Offset,
    /// Bytes of its `.log` file.
    pub size_bytes: u64,
}

/// How much [`load_block`] checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verification {
    /// Read every frame and check its CRC; rebuild the index if it is
    /// missing, damaged or does not match the data.
    Full,
    /// Trust a valid index; scan only when it is missing, damaged or stale.
    /// Reads still verify every frame they return.
    TrustIndex,
}

/// A block read (and verified) away from its partition, ready for
/// [`PartitionLog::register_block`].
#[derive(Debug)]
pub struct LoadedBlock {
    /// Its base offset.
    pub base_offset: Offset,
    /// Bytes of its file.
    pub size_bytes: u64,
    /// Damage found: reads at or past it report corruption. The block is
    /// kept (quarantined), never cut.
    pub corrupt_from: Option<Corruption>,
    /// The index was missing, damaged or stale and was rewritten.
    pub index_rebuilt: bool,
    /// Leftover temp files removed while rewriting the index.
    pub orphans_removed: u64,
    pub(crate) file: Arc<SegmentFile>,
    pub(crate) index: SegmentIndex,
    /// Written by a compaction.
    pub(crate) compacted: bool,
}

/// Loads one sealed block: opens it, checks it as `verification` says,
/// rebuilds its index if needed (atomically: temp file, fsync, rename).
/// Runs on any thread; the result goes to the partition by message.
pub fn load_block(
    directory: &Path,
    base_offset: Offset,
    index_interval_bytes: u64,
    verification: Verification,
) -> Result<LoadedBlock, OpenError> {
    let path = SegmentFile::log_path(directory, base_offset);
    fail::fail_point!("storage::load_block", |_| Err(io_error(
        "read",
        &path,
        std::io::Error::other("injected load failure")
    )
    .into()));
    let file = SegmentFile::open(&path, directory, base_offset)?;
    let size_bytes = file
        .file
        .metadata()
        .map_err(|error| io_error("stat", &path, error))?
        .len();
    let index_path = SegmentFile::index_path(directory, base_offset);
    let stored = match std::fs::read(&index_path) {
        Ok(bytes) => match SegmentIndex::decode(&bytes) {
            Ok(index) if index.segment_bytes == size_bytes => Some(index),
            Ok(index) => {
                let indexed_bytes = index.segment_bytes;
                let file = index_path.display();
                tracing::warn!(%file, indexed_bytes, size_bytes, "stale index, rebuilding");
                None
            }
            Err(reason) => {
                tracing::warn!(file = %index_path.display(), %reason, "bad index, rebuilding");
                None
            }
        },
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
        Err(error) => return Err(io_error("read", &index_path, error).into()),
    };
    if verification == Verification::TrustIndex {
        if let Some(index) = stored {
            return Ok(LoadedBlock {
                base_offset,
                size_bytes,
                corrupt_from: None,
                index_rebuilt: false,
                orphans_removed: 0,
                file: Arc::new(file),
                index,
                compacted: false,
            });
        }
    }
    let scan = scan_segment(&file, &path, base_offset, index_interval_bytes)?;
    // In a sealed block every kind of damage is damage: it was complete when sealed.
    let (index, corrupt_from) = quarantine_scan(scan, &path);
    let file = Arc::new(file);
    let index_rebuilt = stored.as_ref() != Some(&index);
    let mut orphans_removed = 0;
    if index_rebuilt {
        // A seal of an already renamed file only (re)writes its index, atomically.
        let job = SealJob {
            file: Arc::clone(&file),
            base_offset,
            index_bytes: index.encode(),
        };
        orphans_removed = io::run_seal(&job)?.orphans_removed;
        tracing::info!(file = %index_path.display(), "rebuilt a block index");
    }
    Ok(LoadedBlock {
        base_offset,
        size_bytes,
        corrupt_from,
        index_rebuilt,
        orphans_removed,
        file,
        index,
        compacted: false,
    })
}

/// The index (and corruption, if any) of a segment kept whole despite
/// damage: its index claims every offset seen in it, so a read of an offset
/// past the damage reports the damage instead of skipping it.
fn quarantine_scan(scan: SegmentScan, path: &Path) -> (SegmentIndex, Option<Corruption>) {
    let mut index = scan.index;
    index.segment_bytes = scan.file_bytes;
    let Some(damage) = scan.damage else {
        return (index, None);
    };
    let corruption = Corruption {
        file: path.to_path_buf(),
        position: damage.position,
        offset: Some(index.next_offset),
        reason: damage.reason,
    };
    index.next_offset = index
        .next_offset
        .max(damage.later_next_offset.unwrap_or(index.next_offset));
    (index, Some(corruption))
}

/// Whether `open` loads sealed blocks or only lists them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BlockLoading {
    /// Register every block from its index now.
    Eager,
    /// List blocks as unloaded; the owner loads and registers them.
    Deferred,
}

/// One partition's log. See the [module docs](super).
#[derive(Debug)]
pub struct PartitionLog {
    directory: PathBuf,
    options: LogOptions,
    /// Sealed blocks (and blocks being sealed), by base offset.
    blocks: BTreeMap<Offset, Block>,
    /// Sealed blocks listed at open and not loaded yet, by base offset.
    unloaded: BTreeMap<Offset, UnloadedBlock>,
    active: ActiveSegment,
    log_end_offset: Offset,
    high_watermark: Offset,
    /// Offsets below this are durable (under the fsync policy).
    durable_offset: Offset,
    /// Replicated partitions: offsets below this are committed by Raft; the
    /// high watermark never passes it. `None` for a partition of one.
    commit_limit: Option<Offset>,
    log_start_offset: Offset,
    /// Appends planned and not yet reported durable, oldest first.
    unsynced_appends: VecDeque<UnsyncedAppend>,
    /// Deletions that failed, handed out again by `retention_jobs`.
    failed_deletions: Vec<DeleteJob>,
    /// Idempotent producers' batches found in the active segment at open,
    /// until the owner takes them ([`PartitionLog::take_recovered_producer_batches`]).
    recovered_producer_batches: Vec<BatchHeader>,
}

impl PartitionLog {
    /// The headers of the idempotent producers' batches that recovery found
    /// in the active segment (the last [`PRODUCER_BATCHES_KEPT`] per
    /// producer, in offset order), once: the owner rebuilds its producer
    /// sequences from them, so a retry that crosses a restart is still
    /// recognised. Batches in sealed blocks are not scanned.
    pub fn take_recovered_producer_batches(&mut self) -> Vec<BatchHeader> {
        std::mem::take(&mut self.recovered_producer_batches)
    }

    /// Opens (creating if needed) the log in `directory` and recovers it:
    /// sweeps temp and orphan files, finishes interrupted seals, loads or
    /// rebuilds indexes, scans the active segment and truncates a torn tail
    /// (keeping the cut bytes in `.broken`), quarantines damage elsewhere,
    /// fsyncs. Everything on disk after recovery is durable: the high
    /// watermark starts at the log end offset.
    pub fn open(
        directory: &Path,
        options: LogOptions,
    ) -> Result<(PartitionLog, RecoveryReport), OpenError> {
        PartitionLog::open_with(directory, options, BlockLoading::Eager)
    }

    /// Like [`PartitionLog::open`], but sealed blocks are only listed (file
    /// names and sizes), not read: the active segment is recovered and
    /// served at once, and the owner loads blocks with [`load_block`] and
    /// [`PartitionLog::register_block`] in the order it likes (the chunked
    /// startup load). Until then their offsets answer `NotLoaded`.
    pub fn open_deferred(
        directory: &Path,
        options: LogOptions,
    ) -> Result<(PartitionLog, RecoveryReport), OpenError> {
        PartitionLog::open_with(directory, options, BlockLoading::Deferred)
    }

    fn open_with(
        directory: &Path,
        options: LogOptions,
        loading: BlockLoading,
    ) -> Result<(PartitionLog, RecoveryReport), OpenError> {
        std::fs::create_dir_all(directory)
            .map_err(|error| io_error("create directory", directory, error))?;
        let mut recovery = Recovery {
            directory,
            options: &options,
            report: RecoveryReport::default(),
            producer_batches: Vec::new(),
        };
        let listing = recovery.sweep()?;
        let newest_log = listing.log_bases.iter().next_back().copied();
        let active_base = listing
            .wal_bases
            .iter()
            .next_back()
            .copied()
            .filter(|wal_base| newest_log.is_none_or(|log_base| *wal_base > log_base));

        // Sealed blocks and interrupted seals, in offset order.
        let mut block_bases: Vec<(u64, SegmentKind)> = Vec::new();
        block_bases.extend(
            listing
                .log_bases
                .iter()
                .map(|base| (*base, SegmentKind::Sealed)),
        );
        block_bases.extend(
            listing
                .wal_bases
                .iter()
                .filter(|base| Some(**base) != active_base)
                .map(|base| (*base, SegmentKind::Unsealed)),
        );
        block_bases.sort_unstable();
        let mut blocks = BTreeMap::new();
        let mut unloaded = BTreeMap::new();
        let mut previous_next_offset = Offset(0);
        for (base, kind) in block_bases {
            let base_offset = Offset(base);
            let block = match (kind, loading) {
                (SegmentKind::Sealed, BlockLoading::Eager) => {
                    Some(recovery.load_block(base_offset)?)
                }
                (SegmentKind::Sealed, BlockLoading::Deferred) => {
                    unloaded.insert(base_offset, recovery.list_block(base_offset)?);
                    continue;
                }
                // Interrupted seals are recent data: finished now either way.
                (SegmentKind::Unsealed, _) => recovery.finish_seal(base_offset)?,
            };
            let Some(mut block) = block else { continue };
            if base_offset < previous_next_offset && block.corrupt_from.is_none() {
                let reason = format!(
                    "base offset {base} overlaps the previous block, which ends at {previous_next_offset}"
                );
                let corruption = Corruption {
                    file: SegmentFile::log_path(directory, base_offset),
                    position: SEGMENT_HEADER_BYTES,
                    offset: Some(base_offset),
                    reason,
                };
                recovery.report_corruption(&corruption);
                block.corrupt_from = Some(corruption);
            }
            previous_next_offset = previous_next_offset.max(block.index.next_offset);
            blocks.insert(base_offset, block);
        }

        // Where the newest block's data ends, when that block was read in this
        // open (a seal finished here, or every block is loaded eagerly).
        let newest_block_end = blocks
            .iter()
            .next_back()
            .filter(|(base, _)| {
                unloaded
                    .keys()
                    .next_back()
                    .is_none_or(|listed| listed < *base)
            })
            .map(|(_, block)| block.index.next_offset);
        let active = match active_base {
            Some(base) => {
                let (active, quarantined) =
                    recovery.recover_active(Offset(base), previous_next_offset)?;
                if let Some(block) = quarantined {
                    blocks.insert(Offset(base), block);
                    active
                } else {
                    recovery.rebase_empty_active(active, newest_block_end)?
                }
            }
            None => {
                // Never a base offset some block already has (an empty block
                // ends where it starts).
                let mut base_offset = previous_next_offset;
                if blocks.contains_key(&base_offset) {
                    base_offset = base_offset.next();
                }
                recovery.create_active(base_offset)?
            }
        };
        io::sync_data(&active.file)?;
        io::sync_directory(directory)?;

        let recovered_producer_batches = std::mem::take(&mut recovery.producer_batches);
        let mut report = recovery.report;
        report.sealed_blocks = blocks.len();
        let log_end_offset = active.index.next_offset.max(active.base_offset);
        let log_start_offset = first_base_offset(&blocks, &unloaded, &active);
        let log = PartitionLog {
            directory: directory.to_path_buf(),
            options,
            blocks,
            unloaded,
            active,
            log_end_offset,
            high_watermark: log_end_offset,
            durable_offset: log_end_offset,
            commit_limit: None,
            log_start_offset,
            unsynced_appends: VecDeque::new(),
            failed_deletions: Vec::new(),
            recovered_producer_batches,
        };
        Ok((log, report))
    }

    /// Assigns offsets to `records`, encodes them as one batch, and plans its
    /// write (sealing the active segment first if it is full or old).
    /// `log_end_offset` advances now; `high_watermark` only on `mark_durable`.
    pub fn append(
        &mut self,
        records: &[Record],
        term: Term,
        now_ms: i64,
    ) -> Result<AppendOutcome, AppendError> {
        if records.is_empty() {
            return Err(AppendError::Empty);
        }
        let header_bytes = if self.active.write_position == 0 {
            SEGMENT_HEADER_BYTES as usize
        } else {
            0
        };
        let estimate: usize = records.iter().map(Record::approximate_bytes).sum();
        let mut bytes =
            Vec::with_capacity(header_bytes + FRAME_HEADER_BYTES + BATCH_HEADER_BYTES + estimate);
        if header_bytes > 0 {
            bytes.extend_from_slice(&encode_header());
        }
        let batch = encode_frame(
            &mut bytes,
            self.log_end_offset,
            term,
            ProducerFields::NONE,
            records,
            now_ms,
        );
        debug_assert_eq!(u64::from(batch.record_count), records.len() as u64);
        self.append_frame(bytes, header_bytes, batch, now_ms)
    }

    /// Appends a RecordBatch a client sent, already checked by
    /// [`validate_client_batch`](super::batch::validate_client_batch), as it
    /// is: only its base offset and leader epoch are set. Its producer id,
    /// sequence and timestamps are kept, so a Kafka fetch serves it unchanged.
    pub fn append_batch(
        &mut self,
        batch: &[u8],
        checked: &BatchHeader,
        term: Term,
        now_ms: i64,
    ) -> Result<AppendOutcome, AppendError> {
        let frame_bytes = FRAME_HEADER_BYTES + batch.len();
        if frame_bytes > self.options.batch_bytes_max {
            return Err(AppendError::TooLarge {
                bytes: frame_bytes,
                max: self.options.batch_bytes_max,
            });
        }
        if self
            .log_end_offset
            .0
            .checked_add(u64::from(checked.last_offset_delta))
            .is_none_or(|last| last > i64::MAX as u64)
        {
            return Err(AppendError::TooLarge {
                bytes: frame_bytes,
                max: 0,
            });
        }
        let header_bytes = if self.active.write_position == 0 {
            SEGMENT_HEADER_BYTES as usize
        } else {
            0
        };
        let mut bytes = Vec::with_capacity(header_bytes + frame_bytes);
        if header_bytes > 0 {
            bytes.extend_from_slice(&encode_header());
        }
        let header = encode_frame_from_batch(&mut bytes, batch, checked, self.log_end_offset, term);
        self.append_frame(bytes, header_bytes, header, now_ms)
    }

    /// Queues one encoded frame (after `header_bytes` of segment header, if
    /// the active segment is empty) at the log end: the roll if due, the
    /// index entry, and the append job.
    fn append_frame(
        &mut self,
        mut bytes: Vec<u8>,
        mut header_bytes: usize,
        batch: BatchHeader,
        now_ms: i64,
    ) -> Result<AppendOutcome, AppendError> {
        let frame_bytes = bytes.len() - header_bytes;
        if frame_bytes > self.options.batch_bytes_max {
            return Err(AppendError::TooLarge {
                bytes: frame_bytes,
                max: self.options.batch_bytes_max,
            });
        }
        debug_assert_eq!(batch.base_offset, self.log_end_offset);

        let mut jobs = Vec::with_capacity(2);
        if self.should_roll(frame_bytes, now_ms) {
            jobs.push(self.roll()?);
            // The new file is empty: its first write carries the segment header.
            let mut with_header = Vec::with_capacity(SEGMENT_HEADER_BYTES as usize + bytes.len());
            with_header.extend_from_slice(&encode_header());
            with_header.extend_from_slice(&bytes);
            bytes = with_header;
            header_bytes = SEGMENT_HEADER_BYTES as usize;
        }

        let active = &mut self.active;
        let position = active.write_position;
        let frame_position = position + header_bytes as u64;
        active.index.add_batch(
            &batch,
            frame_position,
            frame_bytes as u64,
            self.options.index_interval_bytes,
        );
        active.write_position = frame_position + frame_bytes as u64;
        active.index.next_offset = batch.next_offset();
        active.index.segment_bytes = active.write_position;
        active.first_append_ms.get_or_insert(now_ms);
        self.log_end_offset = batch.next_offset();
        self.unsynced_appends.push_back(UnsyncedAppend {
            next_offset: batch.next_offset(),
            segment_base: active.base_offset,
            end_position: active.write_position,
        });
        jobs.push(IoJob::Append(AppendJob {
            file: Arc::clone(&active.file),
            position,
            bytes,
            next_offset: batch.next_offset(),
            sync_directory: position == 0,
        }));
        Ok(AppendOutcome {
            base_offset: batch.base_offset,
            last_offset: batch.last_offset(),
            jobs,
            location: FrameLocation {
                file: Arc::clone(&self.active.file),
                position: frame_position,
                len: frame_bytes as u32,
            },
        })
    }

    /// Whether a frame of `frame_bytes` must go to a new segment.
    fn should_roll(&self, frame_bytes: usize, now_ms: i64) -> bool {
        if !self.active.has_frames() {
            // An empty segment takes any batch, even one larger than a segment.
            return false;
        }
        let full = self.active.write_position + frame_bytes as u64 > self.options.segment_bytes;
        let old = match (self.options.segment_age, self.active.first_append_ms) {
            (Some(age), Some(first_append_ms)) => {
                now_ms.saturating_sub(first_append_ms) >= duration_ms(age)
            }
            _ => false,
        };
        full || old
    }

    /// Starts a new active segment at the log end offset; the old one becomes
    /// a block being sealed. Nothing changes if the new file cannot be created.
    fn roll(&mut self) -> Result<IoJob, AppendError> {
        let base_offset = self.log_end_offset;
        let file = Arc::new(SegmentFile::create(&self.directory, base_offset)?);
        let new_active = ActiveSegment::new(file, base_offset, 0, empty_index(base_offset));
        let old = std::mem::replace(&mut self.active, new_active);
        let mut index = old.index;
        index.next_offset = base_offset;
        index.segment_bytes = old.write_position;
        let job = SealJob {
            file: Arc::clone(&old.file),
            base_offset: old.base_offset,
            index_bytes: index.encode(),
        };
        self.blocks.insert(
            old.base_offset,
            Block {
                file: old.file,
                index,
                size_bytes: old.write_position,
                durable_bytes: old.durable_position,
                corrupt_from: None,
                seal: SealState::Sealing,
                compacting: false,
                compacted: false,
            },
        );
        Ok(IoJob::Seal(job))
    }

    /// Everything below `next_offset` is durable: advance the high watermark.
    pub fn mark_durable(&mut self, next_offset: Offset) {
        debug_assert!(
            next_offset <= self.log_end_offset,
            "durable offset {next_offset} is past the log end offset {}",
            self.log_end_offset
        );
        self.durable_offset = self.durable_offset.max(next_offset);
        self.advance_high_watermark();
        while let Some(append) = self.unsynced_appends.front() {
            if append.next_offset > next_offset {
                break;
            }
            if append.segment_base == self.active.base_offset {
                self.active.durable_position =
                    self.active.durable_position.max(append.end_position);
            } else if let Some(block) = self.blocks.get_mut(&append.segment_base) {
                block.durable_bytes = block.durable_bytes.max(append.end_position);
            }
            self.unsynced_appends.pop_front();
        }
    }

    /// Replicated partitions: Raft has committed every offset below
    /// `committed`. The high watermark is the lower of that and the durable
    /// end. The first call may lower it (at open, entries past the last
    /// known commit are not exposed); later calls only raise it.
    pub fn set_commit_limit(&mut self, committed: Offset) {
        match self.commit_limit {
            None => self.high_watermark = self.high_watermark.min(committed),
            Some(limit) if limit >= committed => return,
            Some(_) => {}
        }
        self.commit_limit = Some(committed);
        self.advance_high_watermark();
    }

    fn advance_high_watermark(&mut self) {
        let exposed = match self.commit_limit {
            Some(committed) => committed.min(self.durable_offset),
            None => self.durable_offset,
        };
        self.high_watermark = self.high_watermark.max(exposed);
    }

    /// Appends a control batch (one offset, no application record,
    /// timestamp 0; see
    /// [`encode_control_frame`](super::batch::encode_control_frame)): how a
    /// replicated partition stores Raft's own entries.
    pub fn append_control(
        &mut self,
        term: Term,
        control_type: i16,
        payload: &[u8],
        now_ms: i64,
    ) -> Result<AppendOutcome, AppendError> {
        let header_bytes = if self.active.write_position == 0 {
            SEGMENT_HEADER_BYTES as usize
        } else {
            0
        };
        let mut bytes = Vec::with_capacity(
            header_bytes + FRAME_HEADER_BYTES + BATCH_HEADER_BYTES + 32 + payload.len(),
        );
        if header_bytes > 0 {
            bytes.extend_from_slice(&encode_header());
        }
        let header = super::batch::encode_control_frame(
            &mut bytes,
            self.log_end_offset,
            term,
            control_type,
            payload,
            // Timestamp 0, not the clock: every replica writes the same
            // bytes for the same entry (and retention and time lookups
            // pass over it).
            0,
        );
        self.append_frame(bytes, header_bytes, header, now_ms)
    }

    /// The location and header of every frame from the one holding `from`
    /// to the log end, reading the loaded blocks and the active segment
    /// (every frame's CRC checked). A Raft layer rebuilds its entry list
    /// from this at open. Blocks not loaded yet are an error.
    pub fn frame_locations(
        &self,
        from: Offset,
    ) -> Result<Vec<(BatchHeader, FrameLocation)>, ReadError> {
        if let Some(base_offset) = self.unloaded.keys().next() {
            return Err(ReadError::NotLoaded {
                requested: from,
                block_base_offset: *base_offset,
            });
        }
        let mut segments: Vec<(&Arc<SegmentFile>, u64, u64)> = Vec::new();
        for (base_offset, block) in self.blocks.iter() {
            if block.index.next_offset <= from && *base_offset < self.active.base_offset {
                continue;
            }
            segments.push((
                &block.file,
                SEGMENT_HEADER_BYTES,
                block.durable_bytes.max(block.size_bytes),
            ));
        }
        segments.push((
            &self.active.file,
            SEGMENT_HEADER_BYTES,
            self.active.write_position,
        ));
        let mut out = Vec::new();
        for (file, start, end) in segments {
            let mut reader = FrameReader::new(&file.file, start, end, SCAN_CHUNK_BYTES);
            loop {
                match reader.next_frame() {
                    Ok(Some((position, view))) => {
                        if view.header.next_offset() <= from {
                            continue;
                        }
                        let location = FrameLocation {
                            file: Arc::clone(file),
                            position,
                            len: view.frame.len() as u32,
                        };
                        out.push((view.header, location));
                    }
                    Ok(None) => break,
                    Err(FrameReadError::Io(error)) => {
                        return Err(ReadError::Io {
                            file: file.directory.clone(),
                            message: error.to_string(),
                        })
                    }
                    Err(FrameReadError::Frame { position, error }) => {
                        return Err(ReadError::Corrupt(format!(
                            "segment {} of {}, byte {position}: {error}",
                            file.base_offset,
                            file.directory.display()
                        )))
                    }
                }
            }
        }
        Ok(out)
    }

    /// A seal job finished: the segment is now a sealed block.
    pub fn seal_completed(&mut self, base_offset: Offset) {
        if let Some(block) = self.blocks.get_mut(&base_offset) {
            block.seal = SealState::Sealed;
        }
    }

    /// A seal job failed; it will be returned again by `retry_jobs`.
    pub fn seal_failed(&mut self, base_offset: Offset) {
        if let Some(block) = self.blocks.get_mut(&base_offset) {
            block.seal = SealState::Failed;
        }
    }

    /// A delete job failed; it will be returned again by `retention_jobs`.
    pub fn deletion_failed(&mut self, base_offset: Offset, paths: Vec<PathBuf>) {
        self.failed_deletions.push(DeleteJob { base_offset, paths });
    }

    /// Seals to retry (after failures).
    pub fn retry_jobs(&mut self) -> Vec<IoJob> {
        let mut jobs = Vec::new();
        for (base_offset, block) in self.blocks.iter_mut() {
            if block.seal == SealState::Failed {
                block.seal = SealState::Sealing;
                jobs.push(IoJob::Seal(SealJob {
                    file: Arc::clone(&block.file),
                    base_offset: *base_offset,
                    index_bytes: block.index.encode(),
                }));
            }
        }
        jobs
    }

    /// Applies retention at `now_ms`: removes expired sealed blocks (oldest
    /// first, never the active segment) from the log and returns their
    /// deletions, plus deletions that failed before.
    pub fn retention_jobs(&mut self, now_ms: i64) -> Vec<IoJob> {
        // Failed deletions come back every time until they succeed: the owner
        // reports each new failure with `deletion_failed` again.
        let mut jobs: Vec<IoJob> = self.failed_deletions.drain(..).map(IoJob::Delete).collect();
        if let Some(retention) = self.options.retention {
            let cutoff_ms = now_ms.saturating_sub(duration_ms(retention));
            while let Some(block) = self.oldest_sealed_block() {
                if block.index.max_timestamp_ms >= cutoff_ms {
                    break;
                }
                jobs.push(self.remove_oldest_block());
            }
        }
        if let Some(retention_bytes) = self.options.retention_bytes {
            while self.size_bytes() > retention_bytes && self.oldest_sealed_block().is_some() {
                jobs.push(self.remove_oldest_block());
            }
        }
        jobs
    }

    /// The oldest block, if it is sealed. A block still being sealed stops
    /// retention: deleting past it would leave a hole in the log.
    fn oldest_sealed_block(&self) -> Option<&Block> {
        let (base_offset, block) = self.blocks.iter().next()?;
        // A block not loaded yet stops retention too: its age is unknown
        // until the background load reaches it.
        let older_unloaded = self
            .unloaded
            .keys()
            .next()
            .is_some_and(|unloaded_base| unloaded_base < base_offset);
        // A block being compacted stops it as well: its replacement is
        // about to be swapped in, and the swap must find it still there.
        (block.seal == SealState::Sealed && !block.compacting && !older_unloaded).then_some(block)
    }

    fn remove_oldest_block(&mut self) -> IoJob {
        let (base_offset, _) = self
            .blocks
            .pop_first()
            .expect("called only when a sealed block exists");
        self.log_start_offset = first_base_offset(&self.blocks, &self.unloaded, &self.active);
        IoJob::Delete(DeleteJob {
            base_offset,
            paths: vec![
                SegmentFile::log_path(&self.directory, base_offset),
                SegmentFile::index_path(&self.directory, base_offset),
            ],
        })
    }

    /// Plans a read from `offset`. `Ok(None)` when `offset` is the high
    /// watermark (nothing to read yet: the caller may wait).
    pub fn read_plan(
        &self,
        offset: Offset,
        max_bytes: usize,
    ) -> Result<Option<ReadPlan>, ReadError> {
        if offset < self.log_start_offset || offset > self.high_watermark {
            return Err(ReadError::OffsetOutOfRange {
                requested: offset,
                log_start_offset: self.log_start_offset,
                high_watermark: self.high_watermark,
            });
        }
        if offset == self.high_watermark {
            return Ok(None);
        }
        let holder_loaded = self
            .blocks
            .range(..=offset)
            .next_back()
            .map(|(base, _)| *base);
        let holder_unloaded = self
            .unloaded
            .range(..=offset)
            .next_back()
            .map(|(base, _)| *base);
        if let Some(unloaded_base) = holder_unloaded {
            if offset < self.active.base_offset
                && holder_loaded.is_none_or(|base| base < unloaded_base)
            {
                return Err(ReadError::NotLoaded {
                    requested: offset,
                    block_base_offset: unloaded_base,
                });
            }
        }
        // A plan stops before the next block that is not loaded yet.
        let stop_before = self
            .unloaded
            .range(offset.next()..)
            .next()
            .map(|(base, _)| *base);
        let mut ranges: Vec<ReadRange> = Vec::new();
        let mut planned_bytes = 0u64;
        for view in self.segments_from(offset) {
            if !ranges.is_empty() && stop_before.is_some_and(|stop| view.base_offset >= stop) {
                break;
            }
            if ranges.is_empty() && view.next_offset <= offset {
                // A gap (e.g. compacted away): the next segment has the offset.
                // Offsets lost to damage are not a gap: a damaged block's
                // index claims every offset seen in it, so they land there.
                continue;
            }
            let start_position = if ranges.is_empty() {
                view.index
                    .lookup_offset(offset)
                    .map_or(SEGMENT_HEADER_BYTES, |entry| entry.position)
            } else {
                SEGMENT_HEADER_BYTES
            };
            let start_position = start_position.max(SEGMENT_HEADER_BYTES);
            if view.end_position > start_position {
                planned_bytes += view.end_position - start_position;
                ranges.push(ReadRange {
                    file: Arc::clone(view.file),
                    start_position,
                    end_position: view.end_position,
                    corrupt_from: view.corrupt_from.cloned(),
                });
            }
            // The first range can yield nothing: after a compaction, the
            // records left in its batches may all be below `offset`. Only
            // the first can (later blocks start past `offset`), so the plan
            // always goes on to a second range; `execute` still stops at
            // `max_bytes`, so the extra range costs no read.
            let enough = planned_bytes >= max_bytes as u64 && ranges.len() >= 2;
            if enough || view.next_offset >= self.high_watermark {
                break;
            }
        }
        Ok(Some(ReadPlan {
            from_offset: offset,
            high_watermark: self.high_watermark,
            log_start_offset: self.log_start_offset,
            ranges,
        }))
    }

    /// Plans a lookup of the earliest offset whose record's timestamp is at
    /// or after `timestamp_ms` (Kafka's ListOffsets by time); the answer is
    /// the high watermark if no record below it reaches the time. Only
    /// offsets below the high watermark count.
    ///
    /// No I/O here: each segment's index decides. A sealed block whose
    /// largest timestamp is earlier is skipped whole; the others are
    /// scanned from [`SegmentIndex::time_scan_start`] (every record before
    /// that position is earlier). Timestamps need not grow with offsets, so
    /// the scan takes the *first* record in offset order that reaches the
    /// time, which is not always the one with the smallest such timestamp.
    /// A block the startup load has not registered yet becomes a step that
    /// [`TimeScanPlan::execute`] decides from its index file (skipped when
    /// that proves every record earlier, else `NotLoaded`). A damaged block
    /// is always scanned up to its damage, since its index cannot speak for
    /// what follows the damage.
    ///
    /// The plan holds one step per segment that may hold the answer (a
    /// compacted batch may keep a largest timestamp none of its remaining
    /// records reaches, so later candidates are kept too); execution stops
    /// at the first record found.
    pub fn offset_for_timestamp(&self, timestamp_ms: i64) -> TimeLookup {
        let mut steps = Vec::new();
        let mut loaded = self.blocks.iter().peekable();
        let mut unloaded = self.unloaded.iter().peekable();
        // Sealed blocks, loaded or not, in offset order.
        loop {
            let unloaded_first = match (loaded.peek(), unloaded.peek()) {
                (None, None) => break,
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some((loaded_base, _)), Some((unloaded_base, _))) => unloaded_base < loaded_base,
            };
            if unloaded_first {
                let Some((base_offset, block)) = unloaded.next() else {
                    break;
                };
                if *base_offset >= self.high_watermark {
                    break;
                }
                steps.push(TimeScanStep::Unloaded {
                    directory: self.directory.clone(),
                    base_offset: *base_offset,
                    size_bytes: block.size_bytes,
                });
            } else {
                let Some((base_offset, block)) = loaded.next() else {
                    break;
                };
                if *base_offset >= self.high_watermark {
                    break;
                }
                let view = SegmentView {
                    base_offset: *base_offset,
                    file: &block.file,
                    index: &block.index,
                    next_offset: block.index.next_offset,
                    end_position: block.durable_bytes,
                    corrupt_from: block.corrupt_from.as_ref(),
                };
                steps.extend(time_scan_range(&view, timestamp_ms).map(TimeScanStep::Scan));
            }
        }
        if self.active.base_offset < self.high_watermark {
            let view = SegmentView {
                base_offset: self.active.base_offset,
                file: &self.active.file,
                index: &self.active.index,
                next_offset: self.log_end_offset,
                end_position: self.active.durable_position,
                corrupt_from: None,
            };
            steps.extend(time_scan_range(&view, timestamp_ms).map(TimeScanStep::Scan));
        }
        if steps.is_empty() {
            return TimeLookup::Resolved(self.high_watermark);
        }
        TimeLookup::Scan(TimeScanPlan {
            timestamp_ms,
            high_watermark: self.high_watermark,
            steps,
        })
    }

    /// The segments from the one that may hold `offset` on, in offset order.
    fn segments_from(&self, offset: Offset) -> impl Iterator<Item = SegmentView<'_>> {
        let first_block = self
            .blocks
            .range(..=offset)
            .next_back()
            .map(|(base, _)| *base);
        let blocks = match first_block {
            Some(base) => self.blocks.range(base..),
            None => self.blocks.range(..),
        };
        let active = SegmentView {
            base_offset: self.active.base_offset,
            file: &self.active.file,
            index: &self.active.index,
            next_offset: self.log_end_offset,
            end_position: self.active.durable_position,
            corrupt_from: None,
        };
        blocks
            .map(|(base_offset, block)| SegmentView {
                base_offset: *base_offset,
                file: &block.file,
                index: &block.index,
                next_offset: block.index.next_offset,
                end_position: block.durable_bytes,
                corrupt_from: block.corrupt_from.as_ref(),
            })
            .chain(std::iter::once(active))
    }

    /// Removes every record at or after `from` (a batch boundary, inside the
    /// active segment). For a Raft layer truncating a divergent suffix. The
    /// owner must have no I/O of this log in flight.
    pub fn truncate_suffix(&mut self, from: Offset) -> Result<(), OpenError> {
        if from == self.log_end_offset {
            return Ok(());
        }
        let path = SegmentFile::wal_path(&self.directory, self.active.base_offset);
        let format_error = |reason: String| OpenError::Format {
            file: path.clone(),
            reason: format!("cannot truncate from offset {from}: {reason}"),
        };
        if from < self.active.base_offset || from > self.log_end_offset {
            return Err(format_error(format!(
                "only offsets inside the active segment [{}, {}] can be truncated",
                self.active.base_offset, self.log_end_offset
            )));
        }
        let start_position = self
            .active
            .index
            .lookup_offset(from)
            .map_or(SEGMENT_HEADER_BYTES, |entry| entry.position)
            .max(SEGMENT_HEADER_BYTES);
        let mut reader = FrameReader::new(
            &self.active.file.file,
            start_position,
            self.active.write_position,
            SCAN_CHUNK_BYTES,
        );
        let cut_position = loop {
            let (position, header) = match reader.next_frame() {
                Ok(Some((position, view))) => (position, view.header),
                Ok(None) => return Err(format_error("no batch starts there".to_string())),
                Err(FrameReadError::Io(error)) => {
                    return Err(OpenError::Io(io_error("read", &path, error)))
                }
                Err(FrameReadError::Frame { position, error }) => {
                    return Err(format_error(format!(
                        "damaged frame at byte {position}: {error}"
                    )))
                }
            };
            if header.base_offset == from {
                break position;
            }
            if header.next_offset() > from {
                return Err(format_error(format!(
                    "it is inside the batch [{}, {}], not at a batch boundary",
                    header.base_offset,
                    header.last_offset()
                )));
            }
        };
        self.active
            .file
            .file
            .set_len(cut_position)
            .map_err(|error| io_error("truncate", &path, error))?;
        io::sync_data(&self.active.file)?;
        let scan = scan_segment(
            &self.active.file,
            &path,
            self.active.base_offset,
            self.options.index_interval_bytes,
        )?;
        if let Some(damage) = scan.damage {
            return Err(format_error(format!(
                "after truncation: byte {}: {}",
                damage.position, damage.reason
            )));
        }
        self.active.index = scan.index;
        self.active.write_position = cut_position;
        self.active.durable_position = cut_position;
        if !self.active.has_frames() {
            self.active.first_append_ms = None;
        }
        self.log_end_offset = from;
        self.high_watermark = self.high_watermark.min(from);
        self.durable_offset = self.durable_offset.min(from);
        self.unsynced_appends
            .retain(|append| append.next_offset <= from);
        Ok(())
    }

    /// Leader epoch of the batch holding `offset`, if the log holds it.
    pub fn term_at(&self, offset: Offset) -> Option<Term> {
        if offset < self.log_start_offset || offset >= self.log_end_offset {
            return None;
        }
        let index = if offset >= self.active.base_offset {
            &self.active.index
        } else {
            let (_, block) = self.blocks.range(..=offset).next_back()?;
            if offset >= block.index.next_offset {
                return None;
            }
            &block.index
        };
        index
            .epochs
            .iter()
            .rev()
            .find(|(_, first_offset)| *first_offset <= offset)
            .map(|(term, _)| *term)
    }

    /// Base offset of the active segment.
    pub fn active_base_offset(&self) -> Offset {
        self.active.base_offset
    }

    /// The offset the next appended record gets.
    pub fn log_end_offset(&self) -> Offset {
        self.log_end_offset
    }
    /// Offsets below this are durable and readable.
    pub fn high_watermark(&self) -> Offset {
        self.high_watermark
    }
    /// The first readable offset.
    pub fn log_start_offset(&self) -> Offset {
        self.log_start_offset
    }
    /// Bytes of all segments.
    pub fn size_bytes(&self) -> u64 {
        self.blocks
            .values()
            .map(|block| block.size_bytes)
            .sum::<u64>()
            + self.unloaded_bytes()
            + self.active.write_position
    }
    /// Sealed blocks (loaded or not) plus the active segment.
    pub fn segment_count(&self) -> usize {
        self.blocks.len() + self.unloaded.len() + 1
    }
    /// Sealed blocks listed at open and not registered yet, newest first.
    pub fn unloaded_blocks(&self) -> impl Iterator<Item = &UnloadedBlock> {
        self.unloaded.values().rev()
    }
    /// Bytes of the blocks not loaded yet.
    pub fn unloaded_bytes(&self) -> u64 {
        self.unloaded.values().map(|block| block.size_bytes).sum()
    }
    /// Base offset of the oldest loaded block (or the active segment when
    /// no block is loaded).
    pub fn loaded_oldest_base_offset(&self) -> Option<Offset> {
        Some(
            self.blocks
                .keys()
                .next()
                .copied()
                .unwrap_or(self.active.base_offset),
        )
    }
    /// Bytes of the loaded sealed blocks.
    pub fn loaded_block_bytes(&self) -> u64 {
        self.blocks.values().map(|block| block.size_bytes).sum()
    }

    /// Registers a block loaded by [`load_block`]: its offsets become
    /// readable. Returns `false` (and drops it) if the log was not waiting
    /// for that block. A block whose offsets overlap a loaded neighbour is
    /// registered quarantined (reads report the overlap as corruption).
    pub fn register_block(&mut self, mut loaded: LoadedBlock) -> bool {
        if self.unloaded.remove(&loaded.base_offset).is_none() {
            return false;
        }
        let base_offset = loaded.base_offset;
        let previous_end = self
            .blocks
            .range(..base_offset)
            .next_back()
            .map(|(_, block)| block.index.next_offset);
        let next_base = self
            .blocks
            .range(base_offset.next()..)
            .next()
            .map(|(base, _)| *base)
            .unwrap_or(self.active.base_offset);
        let overlap = if previous_end.is_some_and(|end| end > base_offset) {
            Some(format!(
                "base offset {base_offset} overlaps the previous block"
            ))
        } else if loaded.index.next_offset > next_base {
            Some(format!(
                "block ends at {} past the next segment's base {next_base}",
                loaded.index.next_offset
            ))
        } else {
            None
        };
        if let (Some(reason), None) = (overlap, &loaded.corrupt_from) {
            loaded.corrupt_from = Some(Corruption {
                file: SegmentFile::log_path(&self.directory, base_offset),
                position: SEGMENT_HEADER_BYTES,
                offset: Some(base_offset),
                reason,
            });
        }
        self.blocks.insert(base_offset, Block::from(loaded));
        true
    }
    /// The blocks a key compaction may rewrite now, marked *compacting*
    /// (retention stops at them until [`PartitionLog::swap_compacted`] or
    /// [`PartitionLog::compaction_aborted`]): the sealed blocks, oldest
    /// first, up to the first one that is being sealed, not yet durable or
    /// damaged (a damaged block is never rewritten: its damage would be
    /// laundered into a valid-looking block). `None` while any block is
    /// unloaded, while a run is already in flight, or when no block
    /// qualifies. The active segment is never part of it.
    pub fn compaction_input(
        &mut self,
        now_ms: i64,
        delete_retention: Duration,
    ) -> Option<CompactionInput> {
        if self.blocks.is_empty() || !self.unloaded.is_empty() {
            return None;
        }
        if self.blocks.values().any(|block| block.compacting) {
            return None; // one run at a time
        }
        // The oldest blocks up to the first one that is still sealing, not
        // yet durable, or damaged: under steady writes the newest block is
        // often mid-seal, and that must not keep the rest from compacting.
        // Keeping the latest record per key *within* the prefix is correct:
        // a newer record of a key, if any, is after the prefix and stays.
        let ready = |block: &Block| {
            block.seal == SealState::Sealed
                && block.corrupt_from.is_none()
                && block.durable_bytes == block.size_bytes
        };
        let prefix = self
            .blocks
            .values()
            .take_while(|block| ready(block))
            .count();
        if prefix == 0 {
            return None;
        }
        let blocks = self
            .blocks
            .iter_mut()
            .take(prefix)
            .map(|(base_offset, block)| {
                block.compacting = true;
                CompactionBlock {
                    base_offset: *base_offset,
                    next_offset: block.index.next_offset,
                    size_bytes: block.size_bytes,
                    max_timestamp_ms: block.index.max_timestamp_ms,
                    file: Arc::clone(&block.file),
                }
            })
            .collect();
        Some(CompactionInput {
            directory: self.directory.clone(),
            blocks,
            now_ms,
            delete_retention,
            index_interval_bytes: self.options.index_interval_bytes,
            segment_bytes: self.options.segment_bytes,
            bytes_per_second: None,
            key_map_bytes_max: None,
        })
    }

    /// Swaps the blocks of a finished build in, in one step: the replaced
    /// blocks leave the map and the new ones (taken out of
    /// `compacted.added`) enter it, so every later `read_plan` sees only new
    /// blocks, while plans made before keep the old files open. No I/O;
    /// O(number of blocks). `compacted.replaced` stays for
    /// [`compaction::finish`](super::compaction::finish).
    ///
    /// [`SwapError::Changed`] if a replaced block is gone or no longer
    /// marked compacting: nothing changed (the caller abandons the build
    /// and calls [`PartitionLog::compaction_aborted`]).
    pub fn swap_compacted(&mut self, compacted: &mut CompactedBlocks) -> Result<(), SwapError> {
        let unchanged = compacted.replaced.iter().all(|base_offset| {
            self.blocks
                .get(base_offset)
                .is_some_and(|block| block.compacting)
        });
        if !unchanged {
            return Err(SwapError::Changed);
        }
        for base_offset in &compacted.replaced {
            self.blocks.remove(base_offset);
        }
        for loaded in compacted.added.drain(..) {
            debug_assert!(loaded.corrupt_from.is_none(), "builds are verified");
            let previous = self.blocks.insert(loaded.base_offset, Block::from(loaded));
            debug_assert!(previous.is_none(), "a new block overlaps a kept one");
        }
        self.compaction_aborted();
        self.log_start_offset = first_base_offset(&self.blocks, &self.unloaded, &self.active);
        Ok(())
    }

    /// A run ended without a swap: clears the compacting marks, so
    /// retention and later runs may use the blocks again.
    pub fn compaction_aborted(&mut self) {
        for block in self.blocks.values_mut() {
            block.compacting = false;
        }
    }

    /// Share of the sealed bytes not written by a compaction in this
    /// process (0 with no sealed block): how much a run could still gain.
    /// After a restart every block counts as dirty until compacted again.
    pub fn dirty_ratio(&self) -> f64 {
        let sealed_bytes = self.loaded_block_bytes() + self.unloaded_bytes();
        if sealed_bytes == 0 {
            return 0.0;
        }
        let clean_bytes: u64 = self
            .blocks
            .values()
            .filter(|block| block.compacted)
            .map(|block| block.size_bytes)
            .sum();
        (sealed_bytes - clean_bytes) as f64 / sealed_bytes as f64
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

/// The part of a segment a time lookup must scan: from the index's
/// [`SegmentIndex::time_scan_start`] to its durable end. `None` when no
/// durable record of it can reach the time. A damaged segment is scanned
/// up to its damage even when its index says no record reaches the time:
/// the index knows nothing of what follows the damage.
fn time_scan_range(view: &SegmentView<'_>, timestamp_ms: i64) -> Option<ReadRange> {
    let start_position = match view.index.time_scan_start(timestamp_ms) {
        Some(entry) => entry.position,
        None => view.corrupt_from?.position,
    }
    .max(SEGMENT_HEADER_BYTES);
    (view.end_position > start_position).then(|| ReadRange {
        file: Arc::clone(view.file),
        start_position,
        end_position: view.end_position,
        corrupt_from: view.corrupt_from.cloned(),
    })
}

fn duration_ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Which kind of segment file a base offset was found as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum SegmentKind {
    /// A `.log` (with or without its `.idx`).
    Sealed,
    /// An older `.wal`: a seal interrupted by a crash.
    Unsealed,
}

/// Segment files found in a partition directory, by base offset.
#[derive(Default)]
struct DirectoryListing {
    wal_bases: BTreeSet<u64>,
    log_bases: BTreeSet<u64>,
    index_bases: BTreeSet<u64>,
}

/// `{base:020}.{extension}` -> (base, extension).
fn parse_segment_name(name: &str) -> Option<(u64, &str)> {
    let (stem, extension) = name.split_once('.')?;
    if stem.len() != 20 || !stem.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    Some((stem.parse().ok()?, extension))
}

/// What a full scan of a segment file found.
struct SegmentScan {
    /// Index of the valid frames before any damage; `next_offset` is the
    /// offset after the last of them.
    index: SegmentIndex,
    /// Byte after the last valid frame (0 if the header is bad).
    valid_end: u64,
    /// Size of the file.
    file_bytes: u64,
    damage: Option<Damage>,
    /// Headers of the idempotent producers' batches among the valid frames
    /// (the last [`PRODUCER_BATCHES_KEPT`] per producer), in offset order.
    producer_batches: Vec<BatchHeader>,
}

/// Batches per idempotent producer that a scan keeps (Kafka clients have at
/// most five in flight per partition, so a retry matches one of these).
pub const PRODUCER_BATCHES_KEPT: usize = 5;

/// Keeps the last [`PRODUCER_BATCHES_KEPT`] headers of each producer, in order.
fn keep_last_producer_batches(headers: &mut Vec<BatchHeader>) {
    let mut seen: std::collections::HashMap<i64, usize> = std::collections::HashMap::new();
    let mut kept: Vec<BatchHeader> = headers
        .iter()
        .rev()
        .filter(|header| {
            let count = seen.entry(header.producer_id).or_insert(0);
            *count += 1;
            *count <= PRODUCER_BATCHES_KEPT
        })
        .copied()
        .collect();
    kept.reverse();
    *headers = kept;
}

/// The first invalid bytes a scan met.
struct Damage {
    position: u64,
    reason: String,
    /// Largest `next_offset` of a valid frame after the damage, if any. Some
    /// means the damage is in the middle of the file, not a torn tail.
    later_next_offset: Option<Offset>,
    /// A valid frame whose base offset goes backwards: never a torn write.
    order_violation: bool,
}

impl Damage {
    /// A write that a crash cut short: nothing valid follows it.
    fn is_torn_tail(&self) -> bool {
        self.later_next_offset.is_none() && !self.order_violation
    }
}

/// Reads and verifies every frame of a segment file, building its index.
fn scan_segment(
    file: &SegmentFile,
    path: &Path,
    base_offset: Offset,
    interval_bytes: u64,
) -> Result<SegmentScan, IoError> {
    let file_bytes = file
        .file
        .metadata()
        .map_err(|error| io_error("stat", path, error))?
        .len();
    let mut index = empty_index(base_offset);
    let mut damage = None;
    let mut valid_end = 0;
    let mut producer_batches = Vec::new();
    if file_bytes < SEGMENT_HEADER_BYTES {
        damage = Some((
            0,
            format!("file of {file_bytes} bytes is shorter than the segment header"),
            false,
        ));
    } else {
        let mut header = [0u8; SEGMENT_HEADER_BYTES as usize];
        file.file
            .read_exact_at(&mut header, 0)
            .map_err(|error| io_error("read", path, error))?;
        if let Err(reason) = check_header(&header) {
            damage = Some((0, format!("bad segment header: {reason}"), false));
        }
    }
    if damage.is_none() {
        valid_end = SEGMENT_HEADER_BYTES;
        let mut reader = FrameReader::new(
            &file.file,
            SEGMENT_HEADER_BYTES,
            file_bytes,
            SCAN_CHUNK_BYTES,
        );
        loop {
            match reader.next_frame() {
                Ok(None) => break,
                Ok(Some((position, view))) => {
                    let header = view.header;
                    if header.base_offset < index.next_offset {
                        let reason = format!(
                            "batch base offset {} is below the previous batch's end {}",
                            header.base_offset, index.next_offset
                        );
                        damage = Some((position, reason, true));
                        break;
                    }
                    let frame_bytes = view.frame.len() as u64;
                    index.add_batch(&header, position, frame_bytes, interval_bytes);
                    index.next_offset = header.next_offset();
                    valid_end = position + frame_bytes;
                    if header.producer_id >= 0 && header.base_sequence >= 0 {
                        producer_batches.push(header);
                        if producer_batches.len() >= 1 << 16 {
                            keep_last_producer_batches(&mut producer_batches);
                        }
                    }
                }
                Err(FrameReadError::Io(error)) => return Err(io_error("read", path, error)),
                Err(FrameReadError::Frame { position, error }) => {
                    damage = Some((position, error.to_string(), false));
                    break;
                }
            }
        }
    }
    index.next_offset = index.next_offset.max(base_offset);
    index.segment_bytes = valid_end;
    let damage = match damage {
        None => None,
        Some((position, reason, order_violation)) => {
            let later_next_offset =
                largest_next_offset_after(file, path, position + 1, file_bytes, index.next_offset)?;
            Some(Damage {
                position,
                reason,
                later_next_offset,
                order_violation,
            })
        }
    };
    keep_last_producer_batches(&mut producer_batches);
    Ok(SegmentScan {
        index,
        valid_end,
        file_bytes,
        damage,
        producer_batches,
    })
}

/// The largest `next_offset` of any valid frame in `[from, end)` whose base
/// offset is at least `base_offset_min` (a frame that goes backwards cannot be
/// a later part of this log, e.g. a frame stored inside a record's value).
fn largest_next_offset_after(
    file: &SegmentFile,
    path: &Path,
    from: u64,
    end: u64,
    base_offset_min: Offset,
) -> Result<Option<Offset>, IoError> {
    let mut largest: Option<Offset> = None;
    let mut search_from = from;
    while let Some(found) = find_valid_frame(file, path, search_from, end, base_offset_min)? {
        // Walk forward frame by frame from the one found: a run of valid
        // frames costs one scan, not one search each.
        let mut reader = FrameReader::new(&file.file, found, end, SCAN_CHUNK_BYTES);
        loop {
            match reader.next_frame() {
                Ok(Some((_, view))) => {
                    largest = largest.max(Some(view.header.next_offset()));
                }
                Ok(None) => return Ok(largest),
                Err(FrameReadError::Io(error)) => return Err(io_error("read", path, error)),
                Err(FrameReadError::Frame { position, .. }) => {
                    search_from = position + 1;
                    break;
                }
            }
        }
    }
    Ok(largest)
}

/// Position of the first valid frame in `[from, end)` with a base offset of at
/// least `base_offset_min`: the frame magic, then a full decode.
fn find_valid_frame(
    file: &SegmentFile,
    path: &Path,
    from: u64,
    end: u64,
    base_offset_min: Offset,
) -> Result<Option<u64>, IoError> {
    let overlap = FRAME_MAGIC.len() - 1;
    let mut window_start = from;
    while window_start + FRAME_MAGIC.len() as u64 <= end {
        let window_bytes = ((end - window_start) as usize).min(SEARCH_WINDOW_BYTES + overlap);
        let mut window = vec![0u8; window_bytes];
        file.file
            .read_exact_at(&mut window, window_start)
            .map_err(|error| io_error("read", path, error))?;
        // Windows overlap so a magic across their border is seen; it is only
        // tried in the window where it starts.
        let starts = (window_bytes + 1)
            .saturating_sub(FRAME_MAGIC.len())
            .min(SEARCH_WINDOW_BYTES);
        for start in 0..starts {
            if window[start..start + FRAME_MAGIC.len()] != FRAME_MAGIC {
                continue;
            }
            let position = window_start + start as u64;
            let mut reader = FrameReader::new(&file.file, position, end, FRAME_HEADER_BYTES);
            match reader.next_frame() {
                Ok(Some((_, view))) if view.header.base_offset >= base_offset_min => {
                    return Ok(Some(position))
                }
                Ok(_) | Err(FrameReadError::Frame { .. }) => {}
                Err(FrameReadError::Io(error)) => return Err(io_error("read", path, error)),
            }
        }
        window_start += SEARCH_WINDOW_BYTES as u64;
    }
    Ok(None)
}

/// Recovery state of one `open`.
struct Recovery<'a> {
    directory: &'a Path,
    options: &'a LogOptions,
    report: RecoveryReport,
    /// The active segment's idempotent-producer batches (see `SegmentScan`).
    producer_batches: Vec<BatchHeader>,
}

impl Recovery<'_> {
    /// Lists the directory, removing temp files and indexes of no segment,
    /// after settling an interrupted key compaction (`compaction::recover`).
    fn sweep(&mut self) -> Result<DirectoryListing, OpenError> {
        let directory = self.directory;
        // First, so the listing below sees exactly the old or the new blocks.
        let compaction = super::compaction::recover(directory)?;
        self.report.orphans_removed += compaction.orphans_removed;
        self.report.compactions_completed += compaction.swaps_completed;
        let mut listing = DirectoryListing::default();
        let entries =
            std::fs::read_dir(directory).map_err(|error| io_error("list", directory, error))?;
        for entry in entries {
            let entry = entry.map_err(|error| io_error("list", directory, error))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(".tmp") {
                io::delete_file(&entry.path())?;
                self.report.orphans_removed += 1;
                let file = entry.path();
                tracing::info!(file = %file.display(), "removed a temp file left by a crash");
                continue;
            }
            match parse_segment_name(name) {
                Some((base, "wal")) => listing.wal_bases.insert(base),
                Some((base, "log")) => listing.log_bases.insert(base),
                Some((base, "idx")) => listing.index_bases.insert(base),
                _ => continue,
            };
        }
        if let Some(base) = listing.wal_bases.intersection(&listing.log_bases).next() {
            return Err(OpenError::Format {
                file: SegmentFile::wal_path(directory, Offset(*base)),
                reason: "both a .wal and a .log exist for this base offset".to_string(),
            });
        }
        let orphan_indexes: Vec<u64> = listing
            .index_bases
            .iter()
            .filter(|base| !listing.wal_bases.contains(base) && !listing.log_bases.contains(base))
            .copied()
            .collect();
        for base in orphan_indexes {
            let path = SegmentFile::index_path(directory, Offset(base));
            io::delete_file(&path)?;
            listing.index_bases.remove(&base);
            self.report.orphans_removed += 1;
            tracing::info!(file = %path.display(), "removed an index whose segment is gone");
        }
        Ok(listing)
    }

    fn report_corruption(&mut self, corruption: &Corruption) {
        // Reads at or past the damage report it; nothing is cut.
        tracing::error!(%corruption, "damaged segment quarantined");
        self.report.corruptions.push(corruption.clone());
    }

    /// A sealed block: its index if valid, else a scan that rebuilds it.
    fn load_block(&mut self, base_offset: Offset) -> Result<Block, OpenError> {
        let loaded = load_block(
            self.directory,
            base_offset,
            self.options.index_interval_bytes,
            Verification::TrustIndex,
        )?;
        self.report.orphans_removed += loaded.orphans_removed;
        if let Some(corruption) = &loaded.corrupt_from {
            self.report_corruption(corruption);
        }
        Ok(Block::from(loaded))
    }

    /// A sealed block listed but not read: its size only (its index is
    /// not opened; see [`block_timestamp_hint`]).
    fn list_block(&mut self, base_offset: Offset) -> Result<UnloadedBlock, OpenError> {
        let path = SegmentFile::log_path(self.directory, base_offset);
        let size_bytes = std::fs::metadata(&path)
            .map_err(|error| io_error("stat", &path, error))?
            .len();
        Ok(UnloadedBlock {
            base_offset,
            size_bytes,
        })
    }

    /// The index (and corruption, if any) of a segment kept whole despite
    /// damage: its index claims every offset seen in it, so a read of an
    /// offset past the damage reports the damage instead of skipping it.
    fn quarantine(&mut self, scan: SegmentScan, path: &Path) -> (SegmentIndex, Option<Corruption>) {
        let (index, corruption) = quarantine_scan(scan, path);
        if let Some(corruption) = &corruption {
            self.report_corruption(corruption);
        }
        (index, corruption)
    }

    /// An older `.wal`: a seal a crash interrupted. Scans it (a torn tail is
    /// cut as in the active segment), writes its index and renames it.
    /// `None` if nothing valid was in it (the file is removed).
    fn finish_seal(&mut self, base_offset: Offset) -> Result<Option<Block>, OpenError> {
        let path = SegmentFile::wal_path(self.directory, base_offset);
        let file = SegmentFile::open(&path, self.directory, base_offset)?;
        let mut scan = scan_segment(&file, &path, base_offset, self.options.index_interval_bytes)?;
        if scan.damage.as_ref().is_some_and(Damage::is_torn_tail) {
            self.cut_torn_tail(&file, &path, scan.valid_end, scan.file_bytes)?;
            scan.file_bytes = scan.valid_end;
            scan.damage = None;
        }
        if scan.damage.is_none() && scan.valid_end <= SEGMENT_HEADER_BYTES {
            // Created just before a crash, nothing durable in it: a block
            // with no records would only be in the way of the next file.
            drop(file);
            io::delete_file(&path)?;
            self.report.orphans_removed += 1;
            tracing::info!(file = %path.display(), "removed an empty segment left by a crash");
            return Ok(None);
        }
        // The corruption names the file as it will be called once sealed.
        let (index, corrupt_from) =
            self.quarantine(scan, &SegmentFile::log_path(self.directory, base_offset));
        let block = self.seal_as_block(file, base_offset, index, corrupt_from)?;
        self.report.seals_completed += 1;
        tracing::info!(file = %path.display(), "finished a seal interrupted by a crash");
        Ok(Some(block))
    }

    /// Moves `[from, end)` of a file to its `.broken` file and truncates it.
    fn cut_torn_tail(
        &mut self,
        file: &SegmentFile,
        path: &Path,
        from: u64,
        end: u64,
    ) -> Result<(), OpenError> {
        if end > from {
            let broken_path = self
                .directory
                .join(format!("{:020}.broken", file.base_offset.0));
            let mut broken = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&broken_path)
                .map_err(|error| io_error("create", &broken_path, error))?;
            let mut position = from;
            let mut buffer = vec![0u8; ((end - from) as usize).min(SCAN_CHUNK_BYTES)];
            while position < end {
                let length = ((end - position) as usize).min(buffer.len());
                file.file
                    .read_exact_at(&mut buffer[..length], position)
                    .map_err(|error| io_error("read", path, error))?;
                broken
                    .write_all(&buffer[..length])
                    .map_err(|error| io_error("write", &broken_path, error))?;
                position += length as u64;
            }
            broken
                .sync_all()
                .map_err(|error| io_error("fsync", &broken_path, error))?;
            let (file, bytes) = (path.display(), end - from);
            tracing::warn!(%file, position = from, bytes, "cut a torn tail, kept in .broken");
        }
        file.file
            .set_len(from)
            .map_err(|error| io_error("truncate", path, error))?;
        io::sync_data(file)?;
        self.report.torn_tail_bytes += end - from;
        Ok(())
    }

    /// The newest `.wal`. Returns the active segment, and the file itself as
    /// a quarantined block if it is damaged in the middle (then the active
    /// segment is a new file after every offset seen in it).
    fn recover_active(
        &mut self,
        base_offset: Offset,
        previous_next_offset: Offset,
    ) -> Result<(ActiveSegment, Option<Block>), OpenError> {
        let path = SegmentFile::wal_path(self.directory, base_offset);
        let file = SegmentFile::open(&path, self.directory, base_offset)?;
        let mut scan = scan_segment(&file, &path, base_offset, self.options.index_interval_bytes)?;
        self.producer_batches = std::mem::take(&mut scan.producer_batches);
        if base_offset < previous_next_offset && scan.damage.is_none() {
            scan.damage = Some(Damage {
                position: SEGMENT_HEADER_BYTES.min(scan.file_bytes),
                reason: format!(
                    "base offset {base_offset} overlaps the previous block, \
                     which ends at {previous_next_offset}"
                ),
                later_next_offset: Some(scan.index.next_offset),
                order_violation: true,
            });
            scan.valid_end = SEGMENT_HEADER_BYTES;
        }
        match &scan.damage {
            None => {
                let active =
                    ActiveSegment::new(Arc::new(file), base_offset, scan.valid_end, scan.index);
                Ok((active, None))
            }
            Some(damage) if damage.is_torn_tail() => {
                self.cut_torn_tail(&file, &path, scan.valid_end, scan.file_bytes)?;
                if scan.valid_end < SEGMENT_HEADER_BYTES {
                    // A crash between creating the file and writing its header.
                    io::write_at(&file, 0, &encode_header())?;
                    io::sync_data(&file)?;
                }
                let position = scan.valid_end.max(SEGMENT_HEADER_BYTES);
                let active = ActiveSegment::new(Arc::new(file), base_offset, position, scan.index);
                Ok((active, None))
            }
            Some(_) => {
                // Damage with valid frames after it: never cut. Seal the file
                // as it is and continue in a new file after every offset seen,
                // so no offset is ever given out twice.
                let scanned_next_offset = scan.index.next_offset;
                let later_next_offset = scan
                    .damage
                    .as_ref()
                    .and_then(|damage| damage.later_next_offset);
                let (index, corrupt_from) =
                    self.quarantine(scan, &SegmentFile::log_path(self.directory, base_offset));
                let mut new_base = index
                    .next_offset
                    .max(scanned_next_offset)
                    .max(later_next_offset.unwrap_or(base_offset))
                    .max(previous_next_offset);
                if new_base <= base_offset {
                    new_base = base_offset.next();
                }
                let block = self.seal_as_block(file, base_offset, index, corrupt_from)?;
                let active = self.create_active(new_base)?;
                Ok((active, Some(block)))
            }
        }
    }

    /// A kill right after a roll can leave the new, empty `.wal` named past
    /// where the previous segment's data really ends (its last batches were
    /// planned, never written). Offsets in between were never acknowledged;
    /// recreate the empty segment at that end so no offset is unreadable.
    fn rebase_empty_active(
        &mut self,
        active: ActiveSegment,
        newest_block_end: Option<Offset>,
    ) -> Result<ActiveSegment, OpenError> {
        let Some(end) = newest_block_end else {
            return Ok(active);
        };
        if active.has_frames() || active.base_offset <= end {
            return Ok(active);
        }
        let path = SegmentFile::wal_path(self.directory, active.base_offset);
        drop(active);
        io::delete_file(&path)?;
        tracing::info!(
            file = %path.display(),
            new_base = end.0,
            "recreated an empty segment at the end of the previous segment's data"
        );
        self.create_active(end)
    }

    /// Seals a scanned `.wal` as a block (index written, renamed to `.log`).
    fn seal_as_block(
        &mut self,
        file: SegmentFile,
        base_offset: Offset,
        index: SegmentIndex,
        corrupt_from: Option<Corruption>,
    ) -> Result<Block, OpenError> {
        let file = Arc::new(file);
        let job = SealJob {
            file: Arc::clone(&file),
            base_offset,
            index_bytes: index.encode(),
        };
        self.report.orphans_removed += io::run_seal(&job)?.orphans_removed;
        let size_bytes = index.segment_bytes;
        Ok(Block {
            file,
            index,
            size_bytes,
            durable_bytes: size_bytes,
            corrupt_from,
            seal: SealState::Sealed,
            compacting: false,
            compacted: false,
        })
    }

    /// A new, empty active segment (header written and synced).
    fn create_active(&mut self, base_offset: Offset) -> Result<ActiveSegment, OpenError> {
        let file = SegmentFile::create(self.directory, base_offset)?;
        io::write_at(&file, 0, &encode_header())?;
        io::sync_data(&file)?;
        Ok(ActiveSegment::new(
            Arc::new(file),
            base_offset,
            SEGMENT_HEADER_BYTES,
            empty_index(base_offset),
        ))
    }
}

/// Runs `jobs` on the calling thread, reporting progress to `log`; returns
/// the Raft ready they persisted, if any. For tests and tools that drive a
/// log (or a `ReplicaCore`) without a writer thread. With `fsync` false
/// nothing is synced: for simulations where a "crash" loses only the I/O
/// not run yet.
pub fn run_jobs_inline(
    log: &mut PartitionLog,
    jobs: Vec<IoJob>,
    fsync: bool,
) -> Result<Option<u64>, IoError> {
    let mut persisted = None;
    for job in jobs {
        match job {
            IoJob::Append(append) => {
                io::write_at(&append.file, append.position, &append.bytes)?;
                if fsync {
                    io::sync_data(&append.file)?;
                }
                if fsync && append.sync_directory {
                    io::sync_directory(&append.file.directory)?;
                }
                log.mark_durable(append.next_offset);
            }
            IoJob::Seal(seal) => {
                io::run_seal(&seal)?;
                log.seal_completed(seal.base_offset);
            }
            IoJob::Delete(delete) => {
                for path in &delete.paths {
                    io::delete_file(path)?;
                }
            }
            IoJob::RaftReady(ready) => {
                if let Some(state) = ready.state {
                    state.write()?;
                    if fsync {
                        state.sync()?;
                    }
                }
                persisted = Some(ready.number);
            }
        }
    }
    Ok(persisted)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Runs jobs the way a writer thread would, reporting back to the log.
    pub(crate) fn run_jobs(log: &mut PartitionLog, jobs: Vec<IoJob>) {
        super::run_jobs_inline(log, jobs, true).unwrap();
    }

    /// Writes the appends of `jobs` without reporting them durable.
    fn write_only(jobs: &[IoJob]) {
        for job in jobs {
            if let IoJob::Append(append) = job {
                io::write_at(&append.file, append.position, &append.bytes).unwrap();
            }
        }
    }

    fn records(first: u64, count: u64) -> Vec<Record> {
        (first..first + count)
            .map(|number| Record::new(format!("value-{number}")).with_key(format!("key-{number}")))
            .collect()
    }

    fn value_of(record: &FetchedRecord) -> String {
        String::from_utf8(record.value.clone().unwrap().to_vec()).unwrap()
    }

    /// Appends `batches` batches of `per_batch` records and runs their jobs.
    fn append_batches(log: &mut PartitionLog, batches: u64, per_batch: u64) {
        for _ in 0..batches {
            let first = log.log_end_offset().0;
            let outcome = log
                .append(&records(first, per_batch), Term(0), 1_000)
                .unwrap();
            run_jobs(log, outcome.jobs);
        }
    }

    /// Reads everything from `offset` to the high watermark, in reads of `max_bytes`.
    fn read_all(log: &PartitionLog, offset: Offset, max_bytes: usize) -> Vec<FetchedRecord> {
        let mut next = offset;
        let mut all = Vec::new();
        while let Some(plan) = log.read_plan(next, max_bytes).unwrap() {
            let result = plan.execute(max_bytes).unwrap();
            assert!(result.next_offset > next, "a read must make progress");
            next = result.next_offset;
            all.extend(result.records);
        }
        all
    }

    fn assert_values(records: &[FetchedRecord], first: u64, count: u64) {
        let offsets: Vec<u64> = records.iter().map(|record| record.offset.0).collect();
        assert_eq!(offsets, (first..first + count).collect::<Vec<_>>());
        for record in records {
            assert_eq!(value_of(record), format!("value-{}", record.offset.0));
            assert_eq!(
                record.key.as_deref(),
                Some(format!("key-{}", record.offset.0).as_bytes())
            );
        }
    }

    /// A fresh log with small segments in a temporary directory.
    fn small_log() -> (tempfile::TempDir, PartitionLog) {
        let directory = tempfile::tempdir().unwrap();
        let (log, _) = PartitionLog::open(directory.path(), small_segments()).unwrap();
        (directory, log)
    }

    fn small_segments() -> LogOptions {
        LogOptions {
            segment_bytes: 600,
            index_interval_bytes: 128,
            ..LogOptions::default()
        }
    }

    fn file_names(directory: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(directory)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn flip_bit(path: &Path, position: u64) {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let mut byte = [0u8; 1];
        file.read_exact_at(&mut byte, position).unwrap();
        byte[0] ^= 0x10;
        file.write_all_at(&byte, position).unwrap();
    }

    /// Frame start positions of a segment file (a clean one).
    fn frame_positions(path: &Path) -> Vec<u64> {
        let bytes = std::fs::read(path).unwrap();
        let mut positions = Vec::new();
        let mut position = SEGMENT_HEADER_BYTES as usize;
        while position < bytes.len() {
            positions.push(position as u64);
            let header: [u8; FRAME_HEADER_BYTES] = bytes[position..position + FRAME_HEADER_BYTES]
                .try_into()
                .unwrap();
            position += peek_frame_len(&header).unwrap();
        }
        assert_eq!(position, bytes.len());
        positions
    }

    #[test]
    fn appended_records_are_read_back_after_they_are_durable() {
        let directory = tempfile::tempdir().unwrap();
        let (mut log, report) =
            PartitionLog::open(directory.path(), LogOptions::default()).unwrap();
        assert!(report.corruptions.is_empty());
        let outcome = log.append(&records(0, 5), Term(0), 1_000).unwrap();
        assert_eq!(
            (outcome.base_offset, outcome.last_offset),
            (Offset(0), Offset(4))
        );
        assert_eq!(log.log_end_offset(), Offset(5));
        assert_eq!(log.high_watermark(), Offset(0));
        run_jobs(&mut log, outcome.jobs);
        assert_eq!(log.high_watermark(), Offset(5));
        append_batches(&mut log, 2, 5);

        let result = log
            .read_plan(Offset(0), 1 << 20)
            .unwrap()
            .unwrap()
            .execute(1 << 20)
            .unwrap();
        assert_values(&result.records, 0, 15);
        assert_eq!(result.next_offset, Offset(15));
        assert!(result.bytes_read > 0);
        // From the middle of a batch: earlier records of the batch are skipped.
        let result = log
            .read_plan(Offset(7), 1 << 20)
            .unwrap()
            .unwrap()
            .execute(1 << 20)
            .unwrap();
        assert_values(&result.records, 7, 8);
    }

    #[test]
    fn empty_and_oversized_batches_are_refused_without_changes() {
        let directory = tempfile::tempdir().unwrap();
        let options = LogOptions {
            batch_bytes_max: 200,
            ..LogOptions::default()
        };
        let (mut log, _) = PartitionLog::open(directory.path(), options).unwrap();
        assert!(matches!(
            log.append(&[], Term(0), 0),
            Err(AppendError::Empty)
        ));
        let large = vec![Record::new(vec![7u8; 500])];
        match log.append(&large, Term(0), 0) {
            Err(AppendError::TooLarge { bytes, max }) => assert!(bytes > 500 && max == 200),
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert_eq!(log.log_end_offset(), Offset(0));
        let outcome = log.append(&records(0, 1), Term(0), 0).unwrap();
        assert_eq!(outcome.base_offset, Offset(0));
    }

    #[test]
    fn nothing_at_or_past_the_high_watermark_is_returned() {
        let directory = tempfile::tempdir().unwrap();
        let (mut log, _) = PartitionLog::open(directory.path(), LogOptions::default()).unwrap();
        let outcome = log.append(&records(0, 3), Term(0), 0).unwrap();
        write_only(&outcome.jobs);
        // Written but not durable: nothing is readable.
        assert!(log.read_plan(Offset(0), 1 << 20).unwrap().is_none());
        log.mark_durable(Offset(3));
        let outcome = log.append(&records(3, 3), Term(0), 0).unwrap();
        write_only(&outcome.jobs);
        let result = log
            .read_plan(Offset(0), 1 << 20)
            .unwrap()
            .unwrap()
            .execute(1 << 20)
            .unwrap();
        assert_values(&result.records, 0, 3);
        assert_eq!(result.next_offset, Offset(3));
        assert!(log.read_plan(Offset(3), 1 << 20).unwrap().is_none());

        // A plan is bounded by the high watermark it was made with, even
        // inside a batch and even if the file holds more.
        log.mark_durable(Offset(6));
        let mut plan = log.read_plan(Offset(0), 1 << 20).unwrap().unwrap();
        plan.high_watermark = Offset(4);
        let result = plan.execute(1 << 20).unwrap();
        assert_values(&result.records, 0, 4);
        assert_eq!(result.next_offset, Offset(4));
    }

    #[test]
    fn offsets_outside_the_log_report_the_readable_range() {
        let directory = tempfile::tempdir().unwrap();
        let (mut log, _) = PartitionLog::open(directory.path(), LogOptions::default()).unwrap();
        append_batches(&mut log, 1, 3);
        let error = log.read_plan(Offset(4), 100).unwrap_err();
        assert_eq!(
            error,
            ReadError::OffsetOutOfRange {
                requested: Offset(4),
                log_start_offset: Offset(0),
                high_watermark: Offset(3)
            }
        );
        assert!(log.read_plan(Offset(3), 100).unwrap().is_none());
    }

    #[test]
    fn a_read_returns_at_least_one_whole_batch_and_stops_after_max_bytes() {
        let directory = tempfile::tempdir().unwrap();
        let (mut log, _) = PartitionLog::open(directory.path(), LogOptions::default()).unwrap();
        append_batches(&mut log, 3, 10);
        // max_bytes far below one batch: still the whole first batch, and only it.
        let result = log
            .read_plan(Offset(0), 1)
            .unwrap()
            .unwrap()
            .execute(1)
            .unwrap();
        assert_values(&result.records, 0, 10);
        assert_eq!(result.next_offset, Offset(10));
        let batch_bytes = result.bytes_read;
        // Just over one batch: two batches (the one reaching max_bytes is the last).
        let result = log
            .read_plan(Offset(0), batch_bytes + 1)
            .unwrap()
            .unwrap()
            .execute(batch_bytes + 1)
            .unwrap();
        assert_values(&result.records, 0, 20);
    }

    #[test]
    fn segments_roll_by_size_and_reads_cross_their_boundaries() {
        let (directory, mut log) = small_log();
        let mut seals = 0;
        for _ in 0..20 {
            let first = log.log_end_offset().0;
            let outcome = log.append(&records(first, 4), Term(0), 1_000).unwrap();
            if let [IoJob::Seal(seal), IoJob::Append(append)] = outcome.jobs.as_slice() {
                seals += 1;
                assert_eq!(append.position, 0);
                assert!(append.sync_directory);
                assert_eq!(
                    &append.bytes[..SEGMENT_HEADER_BYTES as usize],
                    &encode_header()
                );
                assert!(seal.base_offset < append.file.base_offset);
            }
            run_jobs(&mut log, outcome.jobs);
        }
        assert!(seals >= 3, "only {seals} rolls");
        assert_eq!(log.segment_count(), seals + 1);
        let names = file_names(directory.path());
        assert_eq!(
            names.iter().filter(|name| name.ends_with(".log")).count(),
            seals
        );
        assert_eq!(
            names.iter().filter(|name| name.ends_with(".idx")).count(),
            seals
        );
        assert_eq!(
            names.iter().filter(|name| name.ends_with(".wal")).count(),
            1
        );
        for name in names
            .iter()
            .filter(|name| name.ends_with(".log") || name.ends_with(".wal"))
        {
            let size = std::fs::metadata(directory.path().join(name))
                .unwrap()
                .len();
            assert!(size <= 600, "{name} is {size} bytes");
        }
        // One read across every segment, and reads of one batch at a time.
        let result = log
            .read_plan(Offset(0), 1 << 20)
            .unwrap()
            .unwrap()
            .execute(1 << 20)
            .unwrap();
        assert_values(&result.records, 0, 80);
        assert_values(&read_all(&log, Offset(0), 1), 0, 80);
        assert_values(&read_all(&log, Offset(37), 100), 37, 43);
        assert_eq!(
            log.size_bytes(),
            names
                .iter()
                .filter(|name| !name.ends_with(".idx"))
                .map(|name| std::fs::metadata(directory.path().join(name))
                    .unwrap()
                    .len())
                .sum::<u64>()
        );
    }

    #[test]
    fn segments_roll_by_age() {
        let directory = tempfile::tempdir().unwrap();
        let options = LogOptions {
            segment_age: Some(Duration::from_secs(10)),
            ..LogOptions::default()
        };
        let (mut log, _) = PartitionLog::open(directory.path(), options).unwrap();
        let outcome = log.append(&records(0, 1), Term(0), 1_000).unwrap();
        assert_eq!(outcome.jobs.len(), 1);
        run_jobs(&mut log, outcome.jobs);
        let outcome = log.append(&records(1, 1), Term(0), 10_999).unwrap();
        assert_eq!(outcome.jobs.len(), 1);
        run_jobs(&mut log, outcome.jobs);
        let outcome = log.append(&records(2, 1), Term(0), 11_000).unwrap();
        assert!(matches!(
            outcome.jobs.as_slice(),
            [IoJob::Seal(_), IoJob::Append(_)]
        ));
        run_jobs(&mut log, outcome.jobs);
        assert_eq!(log.segment_count(), 2);
        assert_values(&read_all(&log, Offset(0), 1 << 20), 0, 3);
    }

    #[test]
    fn reopening_after_clean_runs_gives_the_same_log() {
        let (directory, mut log) = small_log();
        append_batches(&mut log, 15, 3);
        let (log_end_offset, segment_count, size_bytes) =
            (log.log_end_offset(), log.segment_count(), log.size_bytes());
        drop(log);
        let (mut log, report) = PartitionLog::open(directory.path(), small_segments()).unwrap();
        assert!(report.corruptions.is_empty());
        assert_eq!(
            (
                report.torn_tail_bytes,
                report.orphans_removed,
                report.seals_completed
            ),
            (0, 0, 0)
        );
        assert_eq!(report.sealed_blocks, segment_count - 1);
        assert_eq!(log.log_end_offset(), log_end_offset);
        assert_eq!(log.high_watermark(), log_end_offset);
        assert_eq!(log.log_start_offset(), Offset(0));
        assert_eq!(
            (log.segment_count(), log.size_bytes()),
            (segment_count, size_bytes)
        );
        assert_values(&read_all(&log, Offset(0), 1 << 20), 0, 45);
        // Appends go on from where the log ended.
        append_batches(&mut log, 1, 3);
        assert_values(&read_all(&log, Offset(40), 1 << 20), 40, 8);
    }

    #[test]
    fn a_lost_index_is_rebuilt_at_open() {
        let (directory, mut log) = small_log();
        append_batches(&mut log, 10, 3);
        drop(log);
        let index_path = SegmentFile::index_path(directory.path(), Offset(0));
        let original = std::fs::read(&index_path).unwrap();
        std::fs::remove_file(&index_path).unwrap();
        let (log, report) = PartitionLog::open(directory.path(), small_segments()).unwrap();
        assert!(report.corruptions.is_empty());
        assert_eq!(std::fs::read(&index_path).unwrap(), original);
        assert_values(&read_all(&log, Offset(0), 1), 0, 30);
    }

    #[test]
    fn a_torn_tail_cut_at_any_byte_recovers_the_longest_valid_prefix() {
        let source = tempfile::tempdir().unwrap();
        let (mut log, _) = PartitionLog::open(source.path(), LogOptions::default()).unwrap();
        append_batches(&mut log, 4, 3);
        drop(log);
        let wal_path = SegmentFile::wal_path(source.path(), Offset(0));
        let full = std::fs::read(&wal_path).unwrap();
        let positions = frame_positions(&wal_path);
        let cut_from = positions[positions.len() - 2];
        for cut in cut_from..full.len() as u64 {
            let directory = tempfile::tempdir().unwrap();
            let wal = SegmentFile::wal_path(directory.path(), Offset(0));
            std::fs::write(&wal, &full[..cut as usize]).unwrap();
            let (log, report) =
                PartitionLog::open(directory.path(), LogOptions::default()).unwrap();
            // The longest prefix of whole frames that fits in `cut` bytes.
            let whole_frames = positions
                .iter()
                .filter(|position| **position <= cut)
                .count()
                - 1;
            let valid_end = positions.get(whole_frames).copied().unwrap();
            assert!(
                report.corruptions.is_empty(),
                "cut {cut}: {:?}",
                report.corruptions
            );
            assert_eq!(report.torn_tail_bytes, cut - valid_end, "cut {cut}");
            assert_eq!(
                log.log_end_offset(),
                Offset(whole_frames as u64 * 3),
                "cut {cut}"
            );
            assert_eq!(
                std::fs::metadata(&wal).unwrap().len(),
                valid_end,
                "cut {cut}"
            );
            let broken_path = directory.path().join("00000000000000000000.broken");
            if cut > valid_end {
                assert_eq!(
                    std::fs::read(&broken_path).unwrap(),
                    &full[valid_end as usize..cut as usize],
                    "cut {cut}"
                );
            } else {
                assert!(!broken_path.exists());
            }
            assert_values(
                &read_all(&log, Offset(0), 1 << 20),
                0,
                whole_frames as u64 * 3,
            );
        }
    }

    #[test]
    fn an_empty_or_headerless_active_file_gets_its_header_back() {
        for length in [0usize, 7] {
            let directory = tempfile::tempdir().unwrap();
            let wal = SegmentFile::wal_path(directory.path(), Offset(0));
            std::fs::write(&wal, &encode_header()[..length]).unwrap();
            let (mut log, report) =
                PartitionLog::open(directory.path(), LogOptions::default()).unwrap();
            assert_eq!(report.torn_tail_bytes, length as u64);
            assert_eq!(std::fs::read(&wal).unwrap(), encode_header());
            append_batches(&mut log, 1, 2);
            drop(log);
            let (log, _) = PartitionLog::open(directory.path(), LogOptions::default()).unwrap();
            assert_values(&read_all(&log, Offset(0), 1 << 20), 0, 2);
        }
    }

    #[test]
    fn damage_in_the_middle_of_the_active_segment_is_reported_not_cut() {
        let directory = tempfile::tempdir().unwrap();
        let (mut log, _) = PartitionLog::open(directory.path(), LogOptions::default()).unwrap();
        append_batches(&mut log, 5, 3);
        drop(log);
        let wal_path = SegmentFile::wal_path(directory.path(), Offset(0));
        let size = std::fs::metadata(&wal_path).unwrap().len();
        let positions = frame_positions(&wal_path);
        flip_bit(&wal_path, positions[2] + 40);

        let (mut log, report) =
            PartitionLog::open(directory.path(), LogOptions::default()).unwrap();
        assert_eq!(report.torn_tail_bytes, 0);
        assert_eq!(report.corruptions.len(), 1, "{:?}", report.corruptions);
        let corruption = &report.corruptions[0];
        assert_eq!(corruption.position, positions[2]);
        assert_eq!(corruption.offset, Some(Offset(6)));
        let log_path = SegmentFile::log_path(directory.path(), Offset(0));
        assert_eq!(corruption.file, log_path);
        // Nothing was cut, and no offset is given out twice.
        assert_eq!(std::fs::metadata(&log_path).unwrap().len(), size);
        assert_eq!(log.log_end_offset(), Offset(15));
        let outcome = log.append(&records(15, 1), Term(0), 0).unwrap();
        assert_eq!(outcome.base_offset, Offset(15));
        run_jobs(&mut log, outcome.jobs);

        // Before the damage reads work; at or after it they report it.
        let result = log
            .read_plan(Offset(0), 1 << 20)
            .unwrap()
            .unwrap()
            .execute(1 << 20)
            .unwrap();
        assert_values(&result.records, 0, 6);
        for offset in [6, 7, 10, 14] {
            let error = log
                .read_plan(Offset(offset), 1 << 20)
                .unwrap()
                .unwrap()
                .execute(1 << 20)
                .unwrap_err();
            assert!(
                matches!(&error, ReadError::Corrupt(message) if message.contains(".log")),
                "{error:?}"
            );
        }
        assert_values(&read_all(&log, Offset(15), 1 << 20), 15, 1);

        // A second open finds the damage again at read time.
        drop(log);
        let (log, _) = PartitionLog::open(directory.path(), LogOptions::default()).unwrap();
        let error = log
            .read_plan(Offset(8), 1 << 20)
            .unwrap()
            .unwrap()
            .execute(1 << 20)
            .unwrap_err();
        assert!(matches!(error, ReadError::Corrupt(_)), "{error:?}");
        assert_eq!(log.log_end_offset(), Offset(16));
    }

    #[test]
    fn a_flipped_bit_in_a_sealed_block_is_found_at_read_time() {
        let (directory, mut log) = small_log();
        append_batches(&mut log, 12, 3);
        drop(log);
        let log_path = SegmentFile::log_path(directory.path(), Offset(0));
        let positions = frame_positions(&log_path);
        assert!(positions.len() >= 3);
        flip_bit(&log_path, positions[1] + 50);

        let (log, _) = PartitionLog::open(directory.path(), small_segments()).unwrap();
        let mut next = Offset(0);
        let mut returned = Vec::new();
        let error = loop {
            match log
                .read_plan(next, 1 << 20)
                .unwrap()
                .unwrap()
                .execute(1 << 20)
            {
                Ok(result) => {
                    next = result.next_offset;
                    returned.extend(result.records);
                }
                Err(error) => break error,
            }
        };
        assert_values(&returned, 0, 3);
        match error {
            ReadError::Corrupt(message) => {
                assert!(message.contains("00000000000000000000.log"), "{message}");
                assert!(
                    message.contains(&format!("byte {}", positions[1])),
                    "{message}"
                );
            }
            other => panic!("expected corruption, got {other:?}"),
        }
        // Later blocks are still readable.
        let second_block = log.blocks.keys().nth(1).copied().unwrap();
        assert!(!read_all(&log, second_block, 1 << 20).is_empty());
    }

    #[test]
    fn an_interrupted_seal_is_finished_at_open() {
        let (directory, mut log) = small_log();
        let mut seal = None;
        while seal.is_none() {
            let first = log.log_end_offset().0;
            let outcome = log.append(&records(first, 3), Term(0), 0).unwrap();
            for job in outcome.jobs {
                match job {
                    // Crash after writing the index, before the rename.
                    IoJob::Seal(job) => seal = Some(job),
                    other => run_jobs(&mut log, vec![other]),
                }
            }
        }
        let seal = seal.unwrap();
        std::fs::write(
            SegmentFile::index_path(directory.path(), seal.base_offset),
            &seal.index_bytes,
        )
        .unwrap();
        let log_end_offset = log.log_end_offset();
        drop((log, seal));
        assert_eq!(
            file_names(directory.path())
                .iter()
                .filter(|name| name.ends_with(".wal"))
                .count(),
            2
        );

        let (log, report) = PartitionLog::open(directory.path(), small_segments()).unwrap();
        assert_eq!(report.seals_completed, 1);
        assert!(report.corruptions.is_empty());
        assert_eq!(
            file_names(directory.path())
                .iter()
                .filter(|name| name.ends_with(".wal"))
                .count(),
            1,
            "{:?}",
            file_names(directory.path())
        );
        assert!(SegmentFile::log_path(directory.path(), Offset(0)).exists());
        assert_eq!(log.log_end_offset(), log_end_offset);
        assert_values(&read_all(&log, Offset(0), 1 << 20), 0, log_end_offset.0);
    }

    #[test]
    fn a_crash_right_after_a_roll_seals_the_old_file_and_keeps_the_new_one() {
        let (directory, mut log) = small_log();
        let rolled_base = loop {
            let first = log.log_end_offset().0;
            let outcome = log.append(&records(first, 3), Term(0), 0).unwrap();
            if matches!(outcome.jobs.first(), Some(IoJob::Seal(_))) {
                // Crash: neither the seal nor the first write to the new file ran.
                break outcome.base_offset;
            }
            run_jobs(&mut log, outcome.jobs);
        };
        drop(log);
        let new_wal = SegmentFile::wal_path(directory.path(), rolled_base);
        assert_eq!(std::fs::metadata(&new_wal).unwrap().len(), 0);

        let (mut log, report) = PartitionLog::open(directory.path(), small_segments()).unwrap();
        assert_eq!((report.seals_completed, report.sealed_blocks), (1, 1));
        assert!(report.corruptions.is_empty());
        assert_eq!(log.log_end_offset(), rolled_base);
        assert_eq!(std::fs::read(&new_wal).unwrap(), encode_header());
        assert!(SegmentFile::log_path(directory.path(), Offset(0)).exists());
        assert!(SegmentFile::index_path(directory.path(), Offset(0)).exists());
        append_batches(&mut log, 1, 3);
        assert_values(&read_all(&log, Offset(0), 1 << 20), 0, rolled_base.0 + 3);
    }

    #[test]
    fn temp_files_and_orphan_indexes_are_removed_and_counted() {
        let directory = tempfile::tempdir().unwrap();
        let (mut log, _) = PartitionLog::open(directory.path(), LogOptions::default()).unwrap();
        append_batches(&mut log, 1, 2);
        drop(log);
        std::fs::write(
            directory.path().join("00000000000000000000.idx.tmp"),
            b"half an index",
        )
        .unwrap();
        std::fs::write(
            directory.path().join("00000000000000000500.idx"),
            b"index of nothing",
        )
        .unwrap();
        let (log, report) = PartitionLog::open(directory.path(), LogOptions::default()).unwrap();
        assert_eq!(report.orphans_removed, 2);
        assert_eq!(file_names(directory.path()), ["00000000000000000000.wal"]);
        assert_values(&read_all(&log, Offset(0), 1 << 20), 0, 2);
    }

    #[test]
    fn retention_by_bytes_deletes_the_oldest_sealed_blocks_only() {
        let (directory, mut log) = small_log();
        append_batches(&mut log, 20, 4);
        let bases: Vec<Offset> = log.blocks.keys().copied().collect();
        assert!(bases.len() >= 4);
        let limit =
            log.size_bytes() - log.blocks[&bases[0]].size_bytes - log.blocks[&bases[1]].size_bytes;
        log.options.retention_bytes = Some(limit);
        let jobs = log.retention_jobs(0);
        let deleted: Vec<Offset> = jobs
            .iter()
            .map(|job| match job {
                IoJob::Delete(delete) => delete.base_offset,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(deleted, bases[..2]);
        assert_eq!(log.log_start_offset(), bases[2]);
        assert!(log.size_bytes() <= limit);
        run_jobs(&mut log, jobs);
        assert!(!SegmentFile::log_path(directory.path(), bases[0]).exists());
        assert!(!SegmentFile::index_path(directory.path(), bases[1]).exists());
        assert!(
            matches!(log.read_plan(Offset(0), 100), Err(ReadError::OffsetOutOfRange { log_start_offset, .. }) if log_start_offset == bases[2])
        );
        assert_values(
            &read_all(&log, bases[2], 1 << 20),
            bases[2].0,
            80 - bases[2].0,
        );

        // Never the active segment, however small the limit.
        log.options.retention_bytes = Some(1);
        let jobs = log.retention_jobs(0);
        run_jobs(&mut log, jobs);
        assert_eq!(log.segment_count(), 1);
        assert_eq!(log.log_start_offset(), log.active.base_offset);
        assert!(log.retention_jobs(0).is_empty());
        assert!(SegmentFile::wal_path(directory.path(), log.active.base_offset).exists());
        let active_base = log.active.base_offset;
        assert_values(
            &read_all(&log, active_base, 1 << 20),
            active_base.0,
            80 - active_base.0,
        );
    }

    #[test]
    fn retention_by_age_stops_at_the_first_young_block() {
        let (_directory, mut log) = small_log();
        // Timestamps 1_000, 2_000, ... per batch: blocks hold increasing times.
        for batch in 0..20 {
            let first = log.log_end_offset().0;
            let outcome = log
                .append(&records(first, 4), Term(0), 1_000 * (batch + 1))
                .unwrap();
            run_jobs(&mut log, outcome.jobs);
        }
        let bases: Vec<Offset> = log.blocks.keys().copied().collect();
        assert!(bases.len() >= 3);
        let second_newest_ms = log.blocks[&bases[1]].index.max_timestamp_ms;
        log.options.retention = Some(Duration::from_millis(10_000));
        // Everything in the first two blocks is older than the cutoff.
        let jobs = log.retention_jobs(second_newest_ms + 10_001);
        let deleted: Vec<Offset> = jobs
            .iter()
            .filter_map(|job| match job {
                IoJob::Delete(delete) => Some(delete.base_offset),
                _ => None,
            })
            .collect();
        assert_eq!(deleted, bases[..2]);
        assert_eq!(log.log_start_offset(), bases[2]);
        run_jobs(&mut log, jobs);
        // Far in the future every sealed block is old, but the active segment stays.
        let jobs = log.retention_jobs(i64::MAX);
        assert_eq!(jobs.len(), bases.len() - 2);
        assert_eq!(log.segment_count(), 1);
    }

    #[test]
    fn retention_skips_blocks_still_sealing() {
        let directory = tempfile::tempdir().unwrap();
        let options = LogOptions {
            retention_bytes: Some(1),
            ..small_segments()
        };
        let (mut log, _) = PartitionLog::open(directory.path(), options).unwrap();
        let mut pending_seals = Vec::new();
        while pending_seals.len() < 2 {
            let first = log.log_end_offset().0;
            let outcome = log.append(&records(first, 4), Term(0), 0).unwrap();
            for job in outcome.jobs {
                match job {
                    IoJob::Seal(seal) => pending_seals.push(seal),
                    other => run_jobs(&mut log, vec![other]),
                }
            }
        }
        assert!(log.retention_jobs(0).is_empty());
        // The first seal fails: it is retried, and still protects its block.
        log.seal_failed(pending_seals[0].base_offset);
        let retries = log.retry_jobs();
        assert!(
            matches!(retries.as_slice(), [IoJob::Seal(seal)] if seal.base_offset == pending_seals[0].base_offset)
        );
        assert!(log.retry_jobs().is_empty());
        // Only the second block sealed: the first still blocks retention.
        io::run_seal(&pending_seals[1]).unwrap();
        log.seal_completed(pending_seals[1].base_offset);
        assert!(log.retention_jobs(0).is_empty());
        run_jobs(&mut log, retries);
        assert_eq!(log.retention_jobs(0).len(), 2);
    }

    #[test]
    fn failed_deletions_come_back_while_the_others_go_on() {
        let (directory, mut log) = small_log();
        append_batches(&mut log, 20, 4);
        let bases: Vec<Offset> = log.blocks.keys().copied().collect();
        log.options.retention_bytes = Some(log.size_bytes() - log.blocks[&bases[0]].size_bytes);
        let jobs = log.retention_jobs(0);
        let [IoJob::Delete(first)] = jobs.as_slice() else {
            panic!("{jobs:?}")
        };
        // The deleter could not remove the first block.
        log.deletion_failed(first.base_offset, first.paths.clone());
        log.options.retention_bytes = Some(log.size_bytes() - log.blocks[&bases[1]].size_bytes);
        let jobs = log.retention_jobs(0);
        let deleted: Vec<Offset> = jobs
            .iter()
            .map(|job| match job {
                IoJob::Delete(delete) => delete.base_offset,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(deleted, [bases[0], bases[1]]);
        // It failed again: it comes back again, alone.
        log.deletion_failed(bases[0], first.paths.clone());
        let jobs = log.retention_jobs(0);
        assert!(
            matches!(jobs.as_slice(), [IoJob::Delete(delete)] if delete.base_offset == bases[0])
        );
        run_jobs(&mut log, jobs);
        assert!(log.retention_jobs(0).is_empty());
        assert!(!SegmentFile::log_path(directory.path(), bases[0]).exists());
    }

    /// Builds a log with several sealed blocks, closes it, and reopens it
    /// deferred: the blocks are listed, not loaded.
    fn deferred_log_with_blocks(directory: &Path) -> PartitionLog {
        let (mut log, _) = PartitionLog::open(directory, small_segments()).unwrap();
        append_batches(&mut log, 30, 4);
        drop(log);
        let (log, _) = PartitionLog::open_deferred(directory, small_segments()).unwrap();
        log
    }

    #[test]
    fn a_deferred_open_serves_the_active_segment_and_reports_unloaded_blocks() {
        let directory = tempfile::tempdir().unwrap();
        let mut log = deferred_log_with_blocks(directory.path());
        let unloaded: Vec<Offset> = log
            .unloaded_blocks()
            .map(|block| block.base_offset)
            .collect();
        assert!(
            unloaded.len() >= 3,
            "the fixture must have several blocks: {unloaded:?}"
        );
        assert!(
            unloaded.windows(2).all(|pair| pair[0] > pair[1]),
            "newest first"
        );
        assert!(log
            .unloaded_blocks()
            .all(|block| block_timestamp_hint(directory.path(), block.base_offset) == Some(1_000)));
        assert_eq!(log.log_start_offset(), Offset(0));
        assert_eq!(log.high_watermark(), Offset(120));
        // The oldest offset is in a block that is not loaded: a typed answer.
        let oldest_base = *unloaded.last().unwrap();
        assert_eq!(
            log.read_plan(Offset(0), 1 << 20).unwrap_err(),
            ReadError::NotLoaded {
                requested: Offset(0),
                block_base_offset: oldest_base
            }
        );
        // The active segment is served, and appends go on.
        let active_base = log.active.base_offset;
        let tail = read_all(&log, active_base, 1 << 20);
        assert_values(&tail, active_base.0, 120 - active_base.0);
        append_batches(&mut log, 1, 4);
        assert_eq!(log.high_watermark(), Offset(124));
        // Retention cannot judge a block it has not loaded.
        log.options.retention_bytes = Some(1);
        assert!(log.retention_jobs(i64::MAX).is_empty());
    }

    #[test]
    fn registering_blocks_newest_first_makes_every_offset_readable() {
        let directory = tempfile::tempdir().unwrap();
        let mut log = deferred_log_with_blocks(directory.path());
        let bases: Vec<Offset> = log
            .unloaded_blocks()
            .map(|block| block.base_offset)
            .collect();
        for (loaded_count, base) in bases.iter().enumerate() {
            let loaded = load_block(directory.path(), *base, 128, Verification::Full).unwrap();
            assert!(loaded.corrupt_from.is_none());
            assert!(
                !loaded.index_rebuilt,
                "the index written at seal matches the data"
            );
            assert!(log.register_block(loaded));
            // A read from the newest loaded block runs to the end without
            // entering blocks that are still unloaded.
            let from = read_all(&log, *base, 1 << 20);
            assert_values(&from, base.0, 120 - base.0);
            assert_eq!(
                log.unloaded_blocks().count(),
                bases.len() - loaded_count - 1
            );
        }
        assert_values(&read_all(&log, Offset(0), 256), 0, 120);
        // A block registered twice is refused the second time.
        let again = load_block(directory.path(), bases[0], 128, Verification::Full).unwrap();
        assert!(!log.register_block(again));
    }

    #[test]
    fn a_full_load_finds_a_flipped_bit_that_the_index_alone_would_trust() {
        let directory = tempfile::tempdir().unwrap();
        let log = deferred_log_with_blocks(directory.path());
        let base = log.unloaded_blocks().last().unwrap().base_offset;
        let path = SegmentFile::log_path(directory.path(), base);
        let positions = frame_positions(&path);
        flip_bit(&path, positions[1] + 30);
        let trusted = load_block(directory.path(), base, 128, Verification::TrustIndex).unwrap();
        assert!(
            trusted.corrupt_from.is_none(),
            "trusting the index skips the scan"
        );
        let verified = load_block(directory.path(), base, 128, Verification::Full).unwrap();
        let corruption = verified
            .corrupt_from
            .expect("a full load verifies every frame");
        assert_eq!(corruption.position, positions[1]);
        assert_eq!(corruption.file, path);
    }

    #[test]
    fn an_empty_segment_named_past_unwritten_batches_is_recreated_at_the_data_end() {
        let (directory, mut log) = small_log();
        append_batches(&mut log, 2, 4);
        // Plan batches whose jobs never run (a kill before the writer got to
        // them) until one of them rolls: the new file exists, the data not.
        loop {
            let first = log.log_end_offset().0;
            let outcome = log.append(&records(first, 4), Term(0), 1_000).unwrap();
            if outcome.jobs.iter().any(|job| matches!(job, IoJob::Seal(_))) {
                break;
            }
        }
        let planned_end = log.log_end_offset();
        drop(log);
        let (log, _) = PartitionLog::open(directory.path(), small_segments()).unwrap();
        assert!(planned_end > Offset(8));
        assert_eq!(
            log.log_end_offset(),
            Offset(8),
            "the log ends where the data does"
        );
        assert_eq!(log.high_watermark(), Offset(8));
        assert_values(&read_all(&log, Offset(0), 1 << 20), 0, 8);
        assert!(file_names(directory.path()).contains(&format!("{:020}.wal", 8)));
    }

    #[test]
    fn compaction_takes_the_sealed_prefix_while_the_newest_block_is_still_sealing() {
        let (_directory, mut log) = small_log();
        append_batches(&mut log, 30, 4);
        let sealed_before: Vec<Offset> = log.blocks.keys().copied().collect();
        assert!(sealed_before.len() >= 3);
        // A roll whose seal job has not run: the newest block is `Sealing`.
        loop {
            let first = log.log_end_offset().0;
            let outcome = log.append(&records(first, 4), Term(0), 1_000).unwrap();
            if outcome.jobs.iter().any(|job| matches!(job, IoJob::Seal(_))) {
                break;
            }
            run_jobs(&mut log, outcome.jobs);
        }
        let input = log
            .compaction_input(1_000, Duration::from_secs(60))
            .expect("the sealed prefix is compactable");
        let taken: Vec<Offset> = input.blocks.iter().map(|block| block.base_offset).collect();
        assert_eq!(
            taken, sealed_before,
            "every sealed block, not the one being sealed"
        );
        // One run at a time.
        assert!(log
            .compaction_input(1_000, Duration::from_secs(60))
            .is_none());
        log.compaction_aborted();
        assert!(log
            .compaction_input(1_000, Duration::from_secs(60))
            .is_some());
    }

    #[test]
    fn term_at_follows_the_batches_epochs() {
        let (directory, mut log) = small_log();
        for (term, count) in [(1, 30), (2, 30), (5, 3)] {
            for _ in 0..count / 3 {
                let first = log.log_end_offset().0;
                let outcome = log.append(&records(first, 3), Term(term), 0).unwrap();
                run_jobs(&mut log, outcome.jobs);
            }
        }
        assert!(log.segment_count() > 2);
        assert_eq!(log.term_at(Offset(0)), Some(Term(1)));
        assert_eq!(log.term_at(Offset(29)), Some(Term(1)));
        assert_eq!(log.term_at(Offset(30)), Some(Term(2)));
        assert_eq!(log.term_at(Offset(59)), Some(Term(2)));
        assert_eq!(log.term_at(Offset(62)), Some(Term(5)));
        assert_eq!(log.term_at(Offset(63)), None);
        drop(log);
        let (log, _) = PartitionLog::open(directory.path(), small_segments()).unwrap();
        assert_eq!(log.term_at(Offset(45)), Some(Term(2)));
    }

    #[test]
    fn truncate_suffix_cuts_at_a_batch_boundary_of_the_active_segment() {
        let directory = tempfile::tempdir().unwrap();
        let (mut log, _) = PartitionLog::open(directory.path(), LogOptions::default()).unwrap();
        append_batches(&mut log, 4, 3);
        let wal_path = SegmentFile::wal_path(directory.path(), Offset(0));
        let positions = frame_positions(&wal_path);
        assert!(matches!(
            log.truncate_suffix(Offset(7)),
            Err(OpenError::Format { .. })
        ));
        assert!(matches!(
            log.truncate_suffix(Offset(13)),
            Err(OpenError::Format { .. })
        ));
        assert_eq!(log.log_end_offset(), Offset(12));

        log.truncate_suffix(Offset(6)).unwrap();
        assert_eq!(
            (log.log_end_offset(), log.high_watermark()),
            (Offset(6), Offset(6))
        );
        assert_eq!(std::fs::metadata(&wal_path).unwrap().len(), positions[2]);
        assert_values(&read_all(&log, Offset(0), 1 << 20), 0, 6);
        let outcome = log.append(&records(6, 2), Term(3), 0).unwrap();
        assert_eq!(outcome.base_offset, Offset(6));
        run_jobs(&mut log, outcome.jobs);
        assert_eq!(log.term_at(Offset(7)), Some(Term(3)));
        drop(log);
        let (log, report) = PartitionLog::open(directory.path(), LogOptions::default()).unwrap();
        assert_eq!(report.torn_tail_bytes, 0);
        assert_values(&read_all(&log, Offset(0), 1 << 20), 0, 8);
    }

    // ---- offset_for_timestamp ------------------------------------------

    /// Appends one batch whose records carry these timestamps (values and
    /// keys name their offsets, as `records` does); runs its jobs.
    fn append_timed(log: &mut PartitionLog, timestamps: &[i64]) {
        let first = log.log_end_offset().0;
        let batch: Vec<Record> = records(first, timestamps.len() as u64)
            .into_iter()
            .zip(timestamps)
            .map(|(record, timestamp_ms)| record.with_timestamp_ms(*timestamp_ms))
            .collect();
        let outcome = log.append(&batch, Term(0), 0).unwrap();
        run_jobs(log, outcome.jobs);
    }

    /// The answer by definition: the first offset (in offset order) below
    /// the high watermark whose timestamp reaches `timestamp_ms`, else the
    /// high watermark.
    fn model_lookup(timestamps: &[i64], high_watermark: Offset, timestamp_ms: i64) -> Offset {
        timestamps
            .iter()
            .take(high_watermark.0 as usize)
            .position(|ts| *ts >= timestamp_ms)
            .map_or(high_watermark, |offset| Offset(offset as u64))
    }

    fn lookup(log: &PartitionLog, timestamp_ms: i64) -> Result<Offset, ReadError> {
        log.offset_for_timestamp(timestamp_ms).resolve()
    }

    /// Every record's timestamp, one below and one above it, and the two
    /// ends: each answered as the model says.
    fn assert_lookups_match_the_model(log: &PartitionLog, timestamps: &[i64]) {
        let mut probes: Vec<i64> = timestamps
            .iter()
            .flat_map(|ts| [ts - 1, *ts, ts + 1])
            .collect();
        probes.extend([i64::MIN, i64::MAX]);
        for probe in probes {
            assert_eq!(
                lookup(log, probe),
                Ok(model_lookup(timestamps, log.high_watermark(), probe)),
                "timestamp {probe}"
            );
        }
    }

    /// xorshift64*, for seeded timestamps.
    fn next_random(state: &mut u64) -> u64 {
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    #[test]
    fn time_lookups_find_exact_times_times_between_batches_and_both_ends() {
        let (_directory, mut log) = small_log();
        // Batch b holds 4 records at 1_000·(b+1) + 10·i: gaps between batches.
        let mut timestamps = Vec::new();
        for batch in 0..20i64 {
            let batch_times: Vec<i64> = (0..4).map(|i| 1_000 * (batch + 1) + 10 * i).collect();
            append_timed(&mut log, &batch_times);
            timestamps.extend(batch_times);
        }
        let bases: Vec<Offset> = log.blocks.keys().copied().collect();
        assert!(bases.len() >= 3, "several sealed blocks: {bases:?}");
        let active_base = log.active.base_offset;
        assert!(active_base < Offset(80), "the active segment holds records");

        // Exact: the offset of the record with that time.
        assert_eq!(lookup(&log, 1_000), Ok(Offset(0)));
        assert_eq!(lookup(&log, 1_020), Ok(Offset(2)));
        assert_eq!(lookup(&log, 7_030), Ok(Offset(27)));
        // Between batches: the first record of the next batch.
        assert_eq!(lookup(&log, 1_031), Ok(Offset(4)));
        assert_eq!(lookup(&log, 5_500), Ok(Offset(20)));
        // Before the start: the first record.
        assert_eq!(lookup(&log, 0), Ok(Offset(0)));
        assert_eq!(lookup(&log, i64::MIN), Ok(Offset(0)));
        // After the end: the high watermark, without reading anything.
        assert!(matches!(
            log.offset_for_timestamp(20_031),
            TimeLookup::Resolved(Offset(80))
        ));
        assert_eq!(lookup(&log, i64::MAX), Ok(Offset(80)));
        // In a middle block and in the active segment.
        let middle = bases[bases.len() / 2];
        assert_eq!(
            lookup(&log, timestamps[middle.0 as usize + 1]),
            Ok(middle.next())
        );
        let last = Offset(79);
        assert!(last >= active_base);
        assert_eq!(lookup(&log, timestamps[79]), Ok(last));
        assert_lookups_match_the_model(&log, &timestamps);
    }

    #[test]
    fn time_lookups_give_the_earliest_offset_when_timestamps_go_backwards() {
        use crate::storage::index::TimeEntry;
        let directory = tempfile::tempdir().unwrap();
        let options = LogOptions {
            segment_bytes: 100_000,
            index_interval_bytes: 128,
            ..LogOptions::default()
        };
        let (mut log, _) = PartitionLog::open(directory.path(), options).unwrap();
        // Single-record batches of about 90 bytes: every second one is
        // indexed. The unindexed batch 1 is later than the indexed batch 2.
        for timestamp_ms in [100, 300, 200, 150] {
            append_timed(&mut log, &[timestamp_ms]);
        }
        let index = &log.active.index;
        assert_eq!(
            index
                .offsets
                .iter()
                .map(|entry| entry.base_offset)
                .collect::<Vec<_>>(),
            [Offset(0), Offset(2)],
            "the fixture needs an unindexed batch between two entries"
        );
        assert_eq!(
            index.times,
            [
                TimeEntry {
                    timestamp_ms: 100,
                    offset: Offset(0)
                },
                TimeEntry {
                    timestamp_ms: 300,
                    offset: Offset(2)
                }
            ]
        );
        // The time index alone ("largest timestamp so far" reaches 250 at
        // the entry of offset 2) would answer 2, whose record is at 200;
        // the earliest record reaching 250 is offset 1, at 300.
        assert_eq!(
            index.lookup_time(250).map(|entry| entry.offset),
            Some(Offset(2))
        );
        assert_eq!(lookup(&log, 250), Ok(Offset(1)));
        // 200 is reached first by offset 1 (300), not by offset 2 (exactly 200).
        assert_eq!(lookup(&log, 200), Ok(Offset(1)));
        assert_eq!(lookup(&log, 101), Ok(Offset(1)));
        assert_eq!(lookup(&log, 301), Ok(Offset(4)));
        assert_lookups_match_the_model(&log, &[100, 300, 200, 150]);
    }

    #[test]
    fn time_lookups_match_the_model_on_seeded_disordered_timestamps_across_blocks() {
        for seed in 1..=20u64 {
            let (_directory, mut log) = small_log();
            let mut state = seed;
            let mut timestamps = Vec::new();
            for _ in 0..40 {
                let count = 1 + next_random(&mut state) % 4;
                // Mostly rising, often jumping back; within a batch too.
                let batch_times: Vec<i64> = (0..count)
                    .map(|_| {
                        let base = timestamps.len() as i64 * 10;
                        base + (next_random(&mut state) % 400) as i64 - 200
                    })
                    .collect();
                append_timed(&mut log, &batch_times);
                timestamps.extend(batch_times);
            }
            assert!(log.blocks.len() >= 3, "seed {seed}: several blocks");
            assert_lookups_match_the_model(&log, &timestamps);
        }
    }

    #[test]
    fn time_lookups_never_answer_an_offset_at_or_past_the_high_watermark() {
        let directory = tempfile::tempdir().unwrap();
        let (mut log, _) = PartitionLog::open(directory.path(), LogOptions::default()).unwrap();
        append_timed(&mut log, &[10, 20]);
        // Written, not durable: a record at 5_000 is not an answer yet.
        let outcome = log
            .append(&[Record::new("late").with_timestamp_ms(5_000)], Term(0), 0)
            .unwrap();
        write_only(&outcome.jobs);
        assert_eq!(log.high_watermark(), Offset(2));
        assert_eq!(lookup(&log, 30), Ok(Offset(2)));
        assert_eq!(lookup(&log, 5_000), Ok(Offset(2)));
        // A plan made before the record is durable keeps its high watermark.
        let early = log.offset_for_timestamp(5_000);
        log.mark_durable(Offset(3));
        assert_eq!(early.resolve(), Ok(Offset(2)));
        assert_eq!(lookup(&log, 5_000), Ok(Offset(2)));
        assert_eq!(lookup(&log, 5_001), Ok(Offset(3)));
        // An empty log answers its high watermark.
        let empty = tempfile::tempdir().unwrap();
        let (log, _) = PartitionLog::open(empty.path(), LogOptions::default()).unwrap();
        assert!(matches!(
            log.offset_for_timestamp(0),
            TimeLookup::Resolved(Offset(0))
        ));
    }

    /// A log of 30 batches of 4 at 1_000·(b+1) + i, closed and reopened
    /// deferred; returns it with the timestamps.
    fn deferred_timed_log(directory: &Path) -> (PartitionLog, Vec<i64>) {
        let (mut log, _) = PartitionLog::open(directory, small_segments()).unwrap();
        let mut timestamps = Vec::new();
        for batch in 0..30i64 {
            let batch_times: Vec<i64> = (0..4).map(|i| 1_000 * (batch + 1) + i).collect();
            append_timed(&mut log, &batch_times);
            timestamps.extend(batch_times);
        }
        drop(log);
        let (log, _) = PartitionLog::open_deferred(directory, small_segments()).unwrap();
        (log, timestamps)
    }

    #[test]
    fn unloaded_blocks_are_skipped_only_when_their_verified_index_proves_them_earlier() {
        let directory = tempfile::tempdir().unwrap();
        let (mut log, timestamps) = deferred_timed_log(directory.path());
        let bases: Vec<Offset> = log.unloaded.keys().copied().collect();
        assert!(bases.len() >= 3, "several unloaded blocks: {bases:?}");
        let active_base = log.active.base_offset;
        // Every block is earlier than a time in the active segment: answered.
        let in_active = timestamps[active_base.0 as usize + 1];
        assert_eq!(lookup(&log, in_active), Ok(active_base.next()));
        assert_eq!(lookup(&log, i64::MAX), Ok(Offset(120)));
        // A time some unloaded block may reach: "not loaded", naming the
        // first such block, not an answer from a later segment.
        let in_second = timestamps[bases[1].0 as usize + 2];
        assert_eq!(
            lookup(&log, in_second),
            Err(ReadError::NotLoaded {
                requested: bases[1],
                block_base_offset: bases[1]
            })
        );
        assert_eq!(
            lookup(&log, 0),
            Err(ReadError::NotLoaded {
                requested: bases[0],
                block_base_offset: bases[0]
            })
        );
        // A damaged index proves nothing, even where its header hint is fine.
        let index_path = SegmentFile::index_path(directory.path(), bases[0]);
        let original = std::fs::read(&index_path).unwrap();
        let mut damaged = original.clone();
        let entry_byte = INDEX_HEADER_BYTES + 3;
        damaged[entry_byte] ^= 0x01;
        std::fs::write(&index_path, &damaged).unwrap();
        assert_eq!(
            lookup(&log, in_active),
            Err(ReadError::NotLoaded {
                requested: bases[0],
                block_base_offset: bases[0]
            })
        );
        std::fs::write(&index_path, &original).unwrap();
        assert_eq!(lookup(&log, in_active), Ok(active_base.next()));

        // Registered newest first (as the startup load does): the answers
        // come as each block arrives, and match the model once all are in.
        for base in bases.iter().rev() {
            let loaded = load_block(directory.path(), *base, 128, Verification::Full).unwrap();
            assert!(log.register_block(loaded));
            let inside = timestamps[base.0 as usize + 1];
            assert_eq!(lookup(&log, inside), Ok(base.next()));
        }
        assert_lookups_match_the_model(&log, &timestamps);
    }

    #[test]
    fn a_time_lookup_reaching_damage_reports_it_and_other_times_still_answer() {
        let (directory, mut log) = small_log();
        let mut timestamps = Vec::new();
        for batch in 0..12i64 {
            let batch_times: Vec<i64> = (0..3).map(|i| 1_000 * (batch + 1) + i).collect();
            append_timed(&mut log, &batch_times);
            timestamps.extend(batch_times);
        }
        drop(log);
        let log_path = SegmentFile::log_path(directory.path(), Offset(0));
        let positions = frame_positions(&log_path);
        assert!(positions.len() >= 3);
        flip_bit(&log_path, positions[1] + 50);
        let (log, _) = PartitionLog::open(directory.path(), small_segments()).unwrap();
        // The second batch (offsets 3..6) is damaged: a time it may hold
        // cannot be answered past it.
        let error = lookup(&log, 2_001).unwrap_err();
        assert!(
            matches!(&error, ReadError::Corrupt(message) if message.contains("00000000000000000000.log")),
            "{error:?}"
        );
        // Before the damage, and in later blocks, answers are exact.
        assert_eq!(lookup(&log, 1_001), Ok(Offset(1)));
        let second_block = log.blocks.keys().nth(1).copied().unwrap();
        let later = timestamps[second_block.0 as usize];
        assert_eq!(lookup(&log, later), Ok(second_block));
    }
}
