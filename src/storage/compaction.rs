//! Key compaction of sealed blocks: keep the latest record of every key
//! (Kafka's log cleaner, simplified). Synchronous and actor-free like the rest
//! of [`super`]; the compactor actor calls these functions on its own thread
//! and the partition swaps the result in with one message.
//!
//! # A run
//!
//! 1. [`PartitionLog::compaction_input`](super::PartitionLog::compaction_input)
//!    hands out the sealed blocks (marked *compacting*: retention leaves them
//!    alone). [`estimate`] says what the run needs; the caller checks it
//!    against its budget and skips if short.
//! 2. [`build`]: pass 1 maps every key (a 128-bit hash of it) to its latest
//!    offset; pass 2 copies the surviving records into new blocks, written as
//!    `.cleaned` files, fsynced, read back and verified, then renamed to
//!    `.swap` and the directory fsynced. **The last rename to `.swap` is the
//!    commit point**: from then on a crash completes the run at open.
//! 3. [`PartitionLog::swap_compacted`](super::PartitionLog::swap_compacted):
//!    the new blocks replace the old in the log's map in one step.
//! 4. [`finish`]: old files renamed `.deleted` (the `.log` is unlinked when
//!    the last reader's `Arc<SegmentFile>` drops), new files renamed to their
//!    final names, directory fsynced. Or, if the swap was refused, [`abandon`].
//!
//! Offsets are never renumbered: a batch keeps its base offset and last
//! offset delta and only loses records, and a batch with no survivor is
//! dropped. Readers skip the holes (`read_plan` handles gaps), so a fetch of
//! a removed offset returns the next record that exists.
//!
//! # Files (beside the partition's own, see [`super`])
//!
//! | name                         | what                                             |
//! |------------------------------|--------------------------------------------------|
//! | `{base:020}.log.cleaned`     | a new block being written; never valid           |
//! | `{base:020}.idx.cleaned`     | its index                                        |
//! | `{base:020}.log.swap`        | a new block, built and verified (committed)      |
//! | `{base:020}.idx.swap`        | its index; `[base, next_offset)` is the range it replaces |
//! | `{base:020}.log.deleted`     | an old block, replaced, kept while readers hold it |
//! | `{base:020}.idx.deleted`     | its index, removed at the end of [`finish`]      |
//!
//! At open ([`PartitionLog::open`](super::PartitionLog::open)): `.cleaned`
//! and `.deleted` files are removed; `.swap` files next to a `.cleaned` one
//! are an uncommitted build and removed too; otherwise the swap is completed
//! (old `.log`/`.idx` whose base lies in a swap's range removed, `.swap`
//! renamed). So after any crash exactly the old or the new blocks are
//! visible. One run per partition at a time: [`build`] refuses to start while
//! `.swap` files of an earlier run are still there.
//!
//! Failpoints (feature `failpoints`): `compaction::write`,
//! `compaction::fsync`, `compaction::rename`, `compaction::sync_directory`,
//! `compaction::swap`, `compaction::delete`.

use super::batch::{encode_compacted_frame, FrameView};
use super::index::SegmentIndex;
use super::io::{self, IoError};
use super::log::{Corruption, FrameReadError, FrameReader, LoadedBlock, SCAN_CHUNK_BYTES};
use super::segment::{check_header, encode_header, SegmentFile, SEGMENT_HEADER_BYTES};
use crate::types::{FetchedRecord, Offset};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::hash::{BuildHasherDefault, DefaultHasher, Hasher};
use std::io::{ErrorKind, Write as _};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// One sealed block handed to a compaction (shared, read-only).
#[derive(Clone, Debug)]
pub struct CompactionBlock {
    /// Its base offset (its name).
    pub base_offset: Offset,
    /// The offset after the last record it covers (the next block's base
    /// when it is not the last).
    pub next_offset: Offset,
    /// Bytes of its file (all durable).
    pub size_bytes: u64,
    /// Largest record timestamp in it.
    pub max_timestamp_ms: i64,
    /// The open file; the run reads it with positional reads.
    pub file: Arc<SegmentFile>,
}

/// What to compact: consecutive sealed blocks of one partition, oldest first
/// (never the active segment).
#[derive(Clone, Debug)]
pub struct CompactionInput {
    /// The partition directory.
    pub directory: PathBuf,
    /// The blocks, oldest first, consecutive.
    pub blocks: Vec<CompactionBlock>,
    /// "Now", for tombstone expiry (injected so tests control it).
    pub now_ms: i64,
    /// A tombstone (a record with a key and no value) that is the latest of
    /// its key is kept this long after its timestamp, so consumers see the
    /// delete, then dropped.
    pub delete_retention: Duration,
    /// An index entry every this many bytes of frames in the new blocks.
    pub index_interval_bytes: u64,
    /// New blocks are at most this large (unless one batch is larger).
    pub segment_bytes: u64,
    /// Bytes per second each pass may read (`None`: no limit). Pacing
    /// sleeps between frames, so a run leaves CPU and disk to others.
    pub bytes_per_second: Option<u64>,
    /// Most memory the key map may take (`None`: no limit). Pass 1 stops
    /// before a block that could push the map (its distinct keys so far,
    /// plus one entry per offset of that block) past this, and the run
    /// compacts the blocks before it, as Kafka's cleaner does. The first
    /// block is always taken: check [`first_block_estimate`] first.
    pub key_map_bytes_max: Option<u64>,
}

/// Resources a run needs, for the caller to check against its budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompactionEstimate {
    /// Memory of the key map, at most (`records_max` × [`KEY_MAP_ENTRY_BYTES`]).
    /// The rest of a run is bounded by a few batches and write buffers.
    pub memory_bytes: u64,
    /// Disk the new blocks take, at most (the old ones' size: compaction
    /// only removes records). Freed again when the old files go.
    pub disk_bytes: u64,
    /// Records the input can hold, at most (its offset range).
    pub records_max: u64,
}

/// Bytes one key takes in the key map, at most: a 128-bit key hash and a u64
/// offset (24 bytes) plus hashbrown's control byte, at a load factor down to
/// 7/16 right after the table doubles: (24 + 1) × 16/7 ≈ 57, rounded up.
pub const KEY_MAP_ENTRY_BYTES: u64 = 64;

/// Output is written in chunks of this size: a run never holds a block.
const WRITE_BUFFER_BYTES: usize = 1024 * 1024;

/// What a run needs: one key-map entry per offset the input can hold (every
/// record could have its own key), and as much disk as the input takes.
pub fn estimate(input: &CompactionInput) -> CompactionEstimate {
    let records_max: u64 = input
        .blocks
        .iter()
        .map(|block| block.next_offset.0.saturating_sub(block.base_offset.0))
        .sum();
    CompactionEstimate {
        memory_bytes: records_max.saturating_mul(KEY_MAP_ENTRY_BYTES),
        disk_bytes: input.blocks.iter().map(|block| block.size_bytes).sum(),
        records_max,
    }
}

/// The key-map memory the first block alone may need: a run that cannot
/// afford it cannot start (its `key_map_bytes_max` must be at least this).
pub fn first_block_estimate(input: &CompactionInput) -> u64 {
    input.blocks.first().map_or(0, |block| {
        block
            .next_offset
            .0
            .saturating_sub(block.base_offset.0)
            .saturating_mul(KEY_MAP_ENTRY_BYTES)
    })
}

/// A finished build: new block files beside the old ones, durable, named
/// `*.swap` (the commit point).
#[derive(Debug)]
pub struct CompactedBlocks {
    /// Base offsets of the blocks replaced (all of the input), oldest first.
    pub replaced: Vec<Offset>,
    /// The new blocks, oldest first; taken out by `swap_compacted`.
    pub added: Vec<LoadedBlock>,
    /// Bytes of the replaced blocks.
    pub bytes_before: u64,
    /// Bytes of the new blocks.
    pub bytes_after: u64,
    /// Records in the replaced blocks.
    pub records_before: u64,
    /// Records in the new blocks.
    pub records_after: u64,
    /// The replaced blocks' files, marked for deletion by `finish`.
    replaced_files: Vec<Arc<SegmentFile>>,
    /// Base offsets of the new blocks (still known once `added` is taken).
    added_bases: Vec<Offset>,
}

/// Why a compaction step failed. A failure before the commit point leaves
/// the old blocks as they were and no file of the run behind.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CompactionError {
    /// An I/O error (or an injected one). Retryable: run again later; for
    /// [`finish`], call it again (it is idempotent) or let the next open
    /// complete it.
    #[error(transparent)]
    Io(#[from] IoError),
    /// An input block is damaged. Final for these blocks: a damaged block is
    /// never compacted (that would launder its damage into a valid-looking
    /// block); it stays quarantined for an operator.
    #[error("damaged block: {0}")]
    Corrupt(Corruption),
    /// A new block did not read back as it was written. Retryable (it was
    /// removed); a repeat points at the disk.
    #[error("verification of {file} failed: {reason}")]
    Verification {
        /// The new file.
        file: PathBuf,
        /// What did not match.
        reason: String,
    },
    /// `.swap` files of an earlier run are still in the directory: that run
    /// was committed but not finished (or abandoned). Retryable once
    /// [`finish`] or [`abandon`] ran for it (a restart completes it too).
    #[error("an earlier compaction left {file}: finish or abandon it first")]
    Unfinished {
        /// One of its files.
        file: PathBuf,
    },
}

/// Why [`PartitionLog::swap_compacted`](super::PartitionLog::swap_compacted)
/// refused. Nothing was changed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SwapError {
    /// A replaced block is gone or no longer marked compacting (e.g. the run
    /// was aborted meanwhile). Final for this build: [`abandon`] it, call
    /// `compaction_aborted`, and start again from a new input.
    #[error("the blocks changed since the compaction started")]
    Changed,
}

// ---------------------------------------------------------------------------
// Keys

/// The key map: a 128-bit hash of a key → the latest offset with that key.
///
/// Like Kafka's cleaner (which keys its map by MD5), we store a hash, not the
/// key, so the map's size does not depend on key sizes. Two different keys
/// with the same 128-bit hash would make the older key's latest record look
/// superseded and drop it; at 2^-128 per pair (about 10^-26 for a billion
/// keys) that is far below the rate of undetected disk errors, which is the
/// trade-off Kafka makes too. The hash never leaves the process, so its
/// function may change between builds.
type KeyMap = HashMap<u128, Offset, BuildHasherDefault<KeyHashHasher>>;

/// Salts that make two independent 64-bit SipHash functions out of
/// `DefaultHasher` (fixed keys, so a run is deterministic).
const KEY_HASH_SALTS: [u64; 2] = [0x6d69_6c6c_7261_6365, 0x636f_6d70_6163_7421];

fn key_hash(key: &[u8]) -> u128 {
    let half = |salt: u64| {
        let mut hasher = DefaultHasher::new();
        hasher.write_u64(salt);
        hasher.write(key);
        hasher.finish()
    };
    (u128::from(half(KEY_HASH_SALTS[0])) << 64) | u128::from(half(KEY_HASH_SALTS[1]))
}

/// The map's keys are already hashes: folding them is enough, and saves
/// hashing a million keys a second time.
#[derive(Default)]
struct KeyHashHasher(u64);

impl Hasher for KeyHashHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*byte);
        }
    }
    fn write_u128(&mut self, value: u128) {
        self.0 = (value as u64) ^ ((value >> 64) as u64);
    }
}

// ---------------------------------------------------------------------------
// Errors and file names

fn io_error(operation: &'static str, path: &Path, source: std::io::Error) -> CompactionError {
    CompactionError::Io(IoError {
        operation,
        path: path.to_path_buf(),
        source,
    })
}

/// An injected failure for a failpoint.
#[cfg(feature = "failpoints")]
fn injected(operation: &'static str, path: &Path) -> CompactionError {
    io_error(
        operation,
        path,
        std::io::Error::other(format!("injected {operation} failure")),
    )
}

/// `{base:020}.{kind}.{state}`, e.g. `…0042.log.swap`.
fn path_of(directory: &Path, base_offset: Offset, kind: FileKind, state: &str) -> PathBuf {
    directory.join(format!(
        "{:020}.{}.{state}",
        base_offset.0,
        kind.extension()
    ))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FileKind {
    Log,
    Index,
}

impl FileKind {
    fn extension(self) -> &'static str {
        match self {
            FileKind::Log => "log",
            FileKind::Index => "idx",
        }
    }
    fn final_path(self, directory: &Path, base_offset: Offset) -> PathBuf {
        match self {
            FileKind::Log => SegmentFile::log_path(directory, base_offset),
            FileKind::Index => SegmentFile::index_path(directory, base_offset),
        }
    }
}

const CLEANED: &str = "cleaned";
const SWAP: &str = "swap";
const DELETED: &str = "deleted";

/// Renames, treating "already renamed" (`from` gone) as done.
fn rename_if_present(from: &Path, to: &Path) -> Result<bool, CompactionError> {
    match std::fs::rename(from, to) {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == ErrorKind::NotFound => Ok(false),
        Err(error) => Err(io_error("rename", from, error)),
    }
}

fn remove_if_present(path: &Path) -> Result<(), CompactionError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == ErrorKind::NotFound => Ok(()),
        Err(error) => Err(io_error("remove", path, error)),
    }
}

fn sync_directory(directory: &Path) -> Result<(), CompactionError> {
    fail::fail_point!("compaction::sync_directory", |_| Err(injected(
        "fsync directory",
        directory
    )));
    io::sync_directory(directory).map_err(CompactionError::Io)
}

// ---------------------------------------------------------------------------
// Reading the input

/// Calls `visit` with every frame of `block`, in order, checking that batches
/// stay inside the block's range and go forward.
fn for_each_frame(
    directory: &Path,
    block: &CompactionBlock,
    bytes_per_second: Option<u64>,
    mut visit: impl FnMut(FrameView) -> Result<(), CompactionError>,
) -> Result<(), CompactionError> {
    let mut pace = Pace::new(bytes_per_second);
    let path = SegmentFile::log_path(directory, block.base_offset);
    let corrupt = |position: u64, reason: String| {
        CompactionError::Corrupt(Corruption {
            file: path.clone(),
            position,
            offset: None,
            reason,
        })
    };
    let mut header = [0u8; SEGMENT_HEADER_BYTES as usize];
    block
        .file
        .file
        .read_exact_at(&mut header, 0)
        .map_err(|error| io_error("read", &path, error))?;
    check_header(&header).map_err(|reason| corrupt(0, reason))?;
    let mut reader = FrameReader::new(
        &block.file.file,
        SEGMENT_HEADER_BYTES,
        block.size_bytes,
        SCAN_CHUNK_BYTES,
    );
    let mut next_offset = block.base_offset;
    loop {
        let (position, view) = match reader.next_frame() {
            Ok(Some(found)) => found,
            Ok(None) => return Ok(()),
            Err(FrameReadError::Io(error)) => return Err(io_error("read", &path, error)),
            Err(FrameReadError::Frame { position, error }) => {
                return Err(corrupt(position, error.to_string()))
            }
        };
        let header = view.header;
        if header.base_offset < next_offset || header.next_offset() > block.next_offset {
            let reason = format!(
                "batch [{}, {}] is not after offset {next_offset} and inside the block's range [{}, {})",
                header.base_offset,
                header.last_offset(),
                block.base_offset,
                block.next_offset
            );
            return Err(corrupt(position, reason));
        }
        next_offset = header.next_offset();
        pace.consumed(view.frame.len() as u64);
        visit(view).map_err(|error| match error {
            CompactionError::Corrupt(mut corruption) => {
                corruption.position = position;
                CompactionError::Corrupt(corruption)
            }
            other => other,
        })?;
    }
}

/// Keeps reading at or under a rate by sleeping once it is ahead of it.
struct Pace {
    bytes_per_second: Option<u64>,
    started: std::time::Instant,
    bytes: u64,
}

impl Pace {
    /// Sleeping for less than this is not worth the system call.
    const SLEEP_MIN: Duration = Duration::from_millis(1);

    fn new(bytes_per_second: Option<u64>) -> Pace {
        Pace {
            bytes_per_second,
            started: std::time::Instant::now(),
            bytes: 0,
        }
    }

    fn consumed(&mut self, bytes: u64) {
        let Some(rate) = self.bytes_per_second.filter(|rate| *rate > 0) else {
            return;
        };
        self.bytes += bytes;
        let due = Duration::from_secs_f64(self.bytes as f64 / rate as f64);
        let ahead = due.saturating_sub(self.started.elapsed());
        if ahead >= Self::SLEEP_MIN {
            std::thread::sleep(ahead);
        }
    }
}

fn records_of(view: &FrameView, file: &Path) -> Result<Vec<FetchedRecord>, CompactionError> {
    view.records().map_err(|error| {
        CompactionError::Corrupt(Corruption {
            file: file.to_path_buf(),
            position: 0,
            offset: Some(view.header.base_offset),
            reason: error.to_string(),
        })
    })
}

/// Pass 1: the latest offset of every key, and the number of records.
/// Pass 1: each key's latest offset, over the blocks the memory limit
/// allows (at least one). Returns the map, the records read, and how many
/// of the input's blocks it covers.
fn latest_offsets(input: &CompactionInput) -> Result<(KeyMap, u64, usize), CompactionError> {
    let mut map = KeyMap::default();
    let mut records_before = 0u64;
    let mut covered = 0;
    for block in &input.blocks {
        let block_offsets = block.next_offset.0.saturating_sub(block.base_offset.0);
        let worst_case = (map.len() as u64)
            .saturating_add(block_offsets)
            .saturating_mul(KEY_MAP_ENTRY_BYTES);
        if covered > 0 && input.key_map_bytes_max.is_some_and(|max| worst_case > max) {
            break;
        }
        covered += 1;
        let path = SegmentFile::log_path(&input.directory, block.base_offset);
        for_each_frame(&input.directory, block, input.bytes_per_second, |view| {
            for record in records_of(&view, &path)? {
                records_before += 1;
                if let Some(key) = &record.key {
                    map.insert(key_hash(key), record.offset);
                }
            }
            Ok(())
        })?;
    }
    Ok((map, records_before, covered))
}

/// Whether a record survives, given the key map: a record without a key is
/// always kept (there is nothing to supersede it; Kafka refuses them on
/// compacted topics, we keep them rather than lose data). A keyed record is
/// kept iff it is its key's latest, except an expired latest tombstone.
fn survives(record: &FetchedRecord, map: &KeyMap, now_ms: i64, delete_retention_ms: i64) -> bool {
    let Some(key) = &record.key else {
        return true;
    };
    if map.get(&key_hash(key)) != Some(&record.offset) {
        return false;
    }
    record.value.is_some() || now_ms.saturating_sub(record.timestamp_ms) <= delete_retention_ms
}

// ---------------------------------------------------------------------------
// Writing the output

/// A new block being written as `.cleaned` files.
struct OutputBlock {
    base_offset: Offset,
    file: File,
    path: PathBuf,
    index: SegmentIndex,
    /// Bytes written or buffered so far (the position of the next frame).
    position: u64,
    /// Frames not yet written, at most about [`WRITE_BUFFER_BYTES`].
    buffer: Vec<u8>,
    /// Position of the buffer's first byte.
    buffer_position: u64,
    frames: u64,
}

/// A new block whose files are complete (fsynced), not yet committed.
struct WrittenBlock {
    base_offset: Offset,
    index: SegmentIndex,
    frames: u64,
}

/// Where a build stands: which of its files exist, so a failure removes them.
struct Build<'a> {
    input: &'a CompactionInput,
    written: Vec<WrittenBlock>,
    current: Option<OutputBlock>,
    /// Files created, with the state they are in (`cleaned` or `swap`).
    files: Vec<(Offset, FileKind, &'static str)>,
}

impl Build<'_> {
    fn directory(&self) -> &Path {
        &self.input.directory
    }

    /// Starts a new block at `base_offset` (`.log.cleaned`, header written).
    fn start_block(&mut self, base_offset: Offset) -> Result<(), CompactionError> {
        let path = path_of(self.directory(), base_offset, FileKind::Log, CLEANED);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|error| io_error("create", &path, error))?;
        self.files.push((base_offset, FileKind::Log, CLEANED));
        let mut buffer = Vec::with_capacity(WRITE_BUFFER_BYTES + SEGMENT_HEADER_BYTES as usize);
        buffer.extend_from_slice(&encode_header());
        self.current = Some(OutputBlock {
            base_offset,
            file,
            path,
            index: SegmentIndex {
                next_offset: base_offset,
                max_timestamp_ms: i64::MIN,
                ..SegmentIndex::default()
            },
            position: SEGMENT_HEADER_BYTES,
            buffer,
            buffer_position: 0,
            frames: 0,
        });
        Ok(())
    }

    /// Appends one frame (with header `header`) to the current block,
    /// starting a new block first if it would grow past `segment_bytes`.
    fn add_frame(
        &mut self,
        frame: &[u8],
        header: &super::batch::BatchHeader,
    ) -> Result<(), CompactionError> {
        let full = self.current.as_ref().is_some_and(|block| {
            block.frames > 0 && block.position + frame.len() as u64 > self.input.segment_bytes
        });
        if full {
            self.close_block(header.base_offset)?;
            self.start_block(header.base_offset)?;
        }
        let interval_bytes = self.input.index_interval_bytes;
        let block = self.current.as_mut().expect("a block is open");
        block
            .index
            .add_batch(header, block.position, frame.len() as u64, interval_bytes);
        block.buffer.extend_from_slice(frame);
        block.position += frame.len() as u64;
        block.frames += 1;
        if block.buffer.len() >= WRITE_BUFFER_BYTES {
            flush(block)?;
        }
        Ok(())
    }

    /// Completes the current block: it covers offsets up to `next_offset`
    /// (the next block's base, or the input's end), so no offset of the
    /// replaced range falls outside every block. Data and index fsynced.
    fn close_block(&mut self, next_offset: Offset) -> Result<(), CompactionError> {
        let mut block = self.current.take().expect("a block is open");
        flush(&mut block)?;
        fail::fail_point!("compaction::fsync", |_| Err(injected("fsync", &block.path)));
        block
            .file
            .sync_all()
            .map_err(|error| io_error("fsync", &block.path, error))?;
        block.index.next_offset = next_offset;
        block.index.segment_bytes = block.position;
        let index_path = path_of(
            self.directory(),
            block.base_offset,
            FileKind::Index,
            CLEANED,
        );
        self.files
            .push((block.base_offset, FileKind::Index, CLEANED));
        write_index(&index_path, &block.index.encode())?;
        self.written.push(WrittenBlock {
            base_offset: block.base_offset,
            index: block.index,
            frames: block.frames,
        });
        Ok(())
    }

    /// Reads a written block back: header, every frame decoded, and an index
    /// rebuilt from them equal to the one written (and to the index file).
    fn verify(&self, written: &WrittenBlock) -> Result<(), CompactionError> {
        let directory = self.directory();
        let path = path_of(directory, written.base_offset, FileKind::Log, CLEANED);
        let failed = |reason: String| CompactionError::Verification {
            file: path.clone(),
            reason,
        };
        let file = File::open(&path).map_err(|error| io_error("open", &path, error))?;
        let size_bytes = file
            .metadata()
            .map_err(|error| io_error("stat", &path, error))?
            .len();
        if size_bytes != written.index.segment_bytes {
            let expected = written.index.segment_bytes;
            return Err(failed(format!("{size_bytes} bytes, wrote {expected}")));
        }
        let mut header = [0u8; SEGMENT_HEADER_BYTES as usize];
        file.read_exact_at(&mut header, 0)
            .map_err(|error| io_error("read", &path, error))?;
        check_header(&header).map_err(&failed)?;
        let mut rebuilt = SegmentIndex {
            next_offset: written.base_offset,
            max_timestamp_ms: i64::MIN,
            ..SegmentIndex::default()
        };
        rebuilt.segment_bytes = SEGMENT_HEADER_BYTES;
        let mut reader =
            FrameReader::new(&file, SEGMENT_HEADER_BYTES, size_bytes, SCAN_CHUNK_BYTES);
        let mut frames = 0u64;
        loop {
            match reader.next_frame() {
                Ok(Some((position, view))) => {
                    view.records()
                        .map_err(|error| failed(format!("byte {position}: {error}")))?;
                    let frame_bytes = view.frame.len() as u64;
                    rebuilt.add_batch(
                        &view.header,
                        position,
                        frame_bytes,
                        self.input.index_interval_bytes,
                    );
                    frames += 1;
                }
                Ok(None) => break,
                Err(FrameReadError::Io(error)) => return Err(io_error("read", &path, error)),
                Err(FrameReadError::Frame { position, error }) => {
                    return Err(failed(format!("byte {position}: {error}")))
                }
            }
        }
        rebuilt.next_offset = written.index.next_offset;
        if frames != written.frames || rebuilt != written.index {
            return Err(failed(format!(
                "read back {frames} frames, wrote {}; index matches: {}",
                written.frames,
                rebuilt == written.index
            )));
        }
        let index_path = path_of(directory, written.base_offset, FileKind::Index, CLEANED);
        let stored =
            std::fs::read(&index_path).map_err(|error| io_error("read", &index_path, error))?;
        match SegmentIndex::decode(&stored) {
            Ok(index) if index == written.index => Ok(()),
            Ok(_) => Err(failed("the index file does not match".to_string())),
            Err(reason) => Err(failed(format!("the index file: {reason}"))),
        }
    }

    /// The commit: every file renamed `.cleaned` → `.swap` (the `.cleaned`
    /// names were made durable first, so a crash halfway leaves a mix, which
    /// open rolls back), then the directory fsynced.
    fn commit(&mut self) -> Result<(), CompactionError> {
        for position in 0..self.files.len() {
            let (base_offset, kind, _) = self.files[position];
            let from = path_of(self.directory(), base_offset, kind, CLEANED);
            let to = path_of(self.directory(), base_offset, kind, SWAP);
            fail::fail_point!("compaction::rename", |_| Err(injected("rename", &from)));
            std::fs::rename(&from, &to).map_err(|error| io_error("rename", &from, error))?;
            self.files[position].2 = SWAP;
        }
        sync_directory(self.directory())
    }

    /// Removes every file of a failed build. Committed (`.swap`) files are
    /// un-committed first, so a crash during the removal cannot leave a set
    /// of `.swap` files that open would take for a complete build.
    fn remove_files(&self) {
        if let Err(error) = remove_build_files(self.directory(), &self.files) {
            // Open sweeps whatever is left (a mix of states is rolled back).
            tracing::warn!(%error, "could not remove the files of a failed compaction");
        }
    }
}

/// Removes a build's files: uncommit (one `.swap` back to `.cleaned`, made
/// durable), then every `.swap`, then every `.cleaned`.
fn remove_build_files(
    directory: &Path,
    files: &[(Offset, FileKind, &'static str)],
) -> Result<(), CompactionError> {
    if let Some((base_offset, kind, _)) = files.iter().find(|(_, _, state)| *state == SWAP) {
        let from = path_of(directory, *base_offset, *kind, SWAP);
        let to = path_of(directory, *base_offset, *kind, CLEANED);
        if rename_if_present(&from, &to)? {
            io::sync_directory(directory)?;
        }
    }
    for state in [SWAP, CLEANED] {
        for (base_offset, kind, _) in files {
            remove_if_present(&path_of(directory, *base_offset, *kind, state))?;
        }
    }
    Ok(())
}

/// Writes frames buffered in `block` to its file.
fn flush(block: &mut OutputBlock) -> Result<(), CompactionError> {
    if block.buffer.is_empty() {
        return Ok(());
    }
    fail::fail_point!("compaction::write", |_| Err(injected("write", &block.path)));
    block
        .file
        .write_all_at(&block.buffer, block.buffer_position)
        .map_err(|error| io_error("write", &block.path, error))?;
    block.buffer_position += block.buffer.len() as u64;
    block.buffer.clear();
    Ok(())
}

fn write_index(path: &Path, bytes: &[u8]) -> Result<(), CompactionError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|error| io_error("create", path, error))?;
    fail::fail_point!("compaction::write", |_| Err(injected("write", path)));
    file.write_all(bytes)
        .map_err(|error| io_error("write", path, error))?;
    fail::fail_point!("compaction::fsync", |_| Err(injected("fsync", path)));
    file.sync_all()
        .map_err(|error| io_error("fsync", path, error))
}

/// Removes `.cleaned` files a failed, unremoved build left (they are never
/// valid), and refuses to start while an earlier build's `.swap` files wait
/// for `finish` or `abandon`.
fn prepare_directory(directory: &Path) -> Result<(), CompactionError> {
    let entries =
        std::fs::read_dir(directory).map_err(|error| io_error("list", directory, error))?;
    let mut leftovers = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|error| io_error("list", directory, error))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".swap") {
            return Err(CompactionError::Unfinished { file: entry.path() });
        }
        if name.ends_with(".cleaned") {
            leftovers.push(entry.path());
        }
    }
    for path in leftovers {
        remove_if_present(&path)?;
        tracing::info!(file = %path.display(), "removed a file of a failed compaction");
    }
    Ok(())
}

/// Builds the compacted blocks (see the [module docs](self)). Streams: reads
/// the input frame by frame (twice) and writes in chunks of
/// `WRITE_BUFFER_BYTES`; only the key map grows with the input, as
/// [`estimate`] says. On error nothing of the run is left and the old blocks
/// are untouched. Panics if the input has no block (a caller bug).
pub fn build(input: &CompactionInput) -> Result<CompactedBlocks, CompactionError> {
    assert!(!input.blocks.is_empty(), "compaction::build: no blocks");
    debug_assert!(
        input
            .blocks
            .windows(2)
            .all(|pair| pair[0].next_offset <= pair[1].base_offset),
        "compaction::build: blocks out of order"
    );
    prepare_directory(&input.directory)?;
    let mut build = Build {
        input,
        written: Vec::new(),
        current: None,
        files: Vec::new(),
    };
    match run(&mut build) {
        Ok(compacted) => Ok(compacted),
        Err(error) => {
            build.current = None;
            build.remove_files();
            Err(error)
        }
    }
}

fn run(build: &mut Build<'_>) -> Result<CompactedBlocks, CompactionError> {
    let input = build.input;
    let (map, records_before, covered) = latest_offsets(input)?;
    let blocks = &input.blocks[..covered];
    let delete_retention_ms = i64::try_from(input.delete_retention.as_millis()).unwrap_or(i64::MAX);
    let first = &blocks[0];
    let end = blocks[blocks.len() - 1].next_offset;
    build.start_block(first.base_offset)?;
    let mut records_after = 0u64;
    let mut frame = Vec::new();
    for block in blocks {
        let path = SegmentFile::log_path(&input.directory, block.base_offset);
        for_each_frame(&input.directory, block, input.bytes_per_second, |view| {
            let mut records = records_of(&view, &path)?;
            let count = records.len();
            records.retain(|record| survives(record, &map, input.now_ms, delete_retention_ms));
            if records.is_empty() {
                return Ok(());
            }
            records_after += records.len() as u64;
            if records.len() == count {
                // Nothing removed: the frame is copied as it is.
                return build.add_frame(&view.frame, &view.header);
            }
            frame.clear();
            let header = encode_compacted_frame(&mut frame, &view.header, &records);
            build.add_frame(&frame, &header)
        })?;
    }
    build.close_block(end)?;
    drop(map);
    // The `.cleaned` names are durable before any of them becomes `.swap`.
    sync_directory(&input.directory)?;
    for written in &build.written {
        build.verify(written)?;
    }
    build.commit()?;

    let mut added = Vec::with_capacity(build.written.len());
    for written in &build.written {
        let path = path_of(&input.directory, written.base_offset, FileKind::Log, SWAP);
        let file = SegmentFile::open(&path, &input.directory, written.base_offset)?;
        added.push(LoadedBlock {
            base_offset: written.base_offset,
            size_bytes: written.index.segment_bytes,
            corrupt_from: None,
            index_rebuilt: false,
            orphans_removed: 0,
            file: Arc::new(file),
            index: written.index.clone(),
            compacted: true,
        });
    }
    Ok(CompactedBlocks {
        replaced: blocks.iter().map(|block| block.base_offset).collect(),
        bytes_before: blocks.iter().map(|block| block.size_bytes).sum(),
        bytes_after: added.iter().map(|block| block.size_bytes).sum(),
        records_before,
        records_after,
        replaced_files: blocks.iter().map(|block| Arc::clone(&block.file)).collect(),
        added_bases: added.iter().map(|block| block.base_offset).collect(),
        added,
    })
}

/// After the partition swapped the new blocks in: each replaced
/// `{base}.log`/`.idx` renamed `.log.deleted`/`.idx.deleted` (the old
/// `SegmentFile` is marked so the `.log.deleted` is unlinked when the last
/// reader drops it), then each `.swap` renamed to its final name, the
/// directory fsynced, and the `.idx.deleted` files removed (nothing reads
/// them: indexes live in memory).
///
/// Idempotent: after an error, call it again (or let the next open complete
/// it, which gives the same result). Never call it for a build the partition
/// did not swap in: that is what [`abandon`] is for.
pub fn finish(directory: &Path, compacted: &CompactedBlocks) -> Result<(), CompactionError> {
    for (base_offset, file) in compacted.replaced.iter().zip(&compacted.replaced_files) {
        let replaced_by_same_base = compacted.added_bases.contains(base_offset);
        for kind in [FileKind::Log, FileKind::Index] {
            // Where a new block has this base, its final name may already
            // be the new file (a retry): only move the old one while the
            // new one is still `.swap`.
            if replaced_by_same_base && !path_of(directory, *base_offset, kind, SWAP).exists() {
                continue;
            }
            let from = kind.final_path(directory, *base_offset);
            let to = path_of(directory, *base_offset, kind, DELETED);
            fail::fail_point!("compaction::delete", |_| Err(injected("rename", &from)));
            rename_if_present(&from, &to)?;
        }
        if file.marked_for_deletion().is_none() {
            file.delete_on_drop(path_of(directory, *base_offset, FileKind::Log, DELETED));
        }
    }
    for base_offset in &compacted.added_bases {
        // The index first: a `.log.swap` left alone then means "old files
        // gone already" to the open that completes it.
        for kind in [FileKind::Index, FileKind::Log] {
            let from = path_of(directory, *base_offset, kind, SWAP);
            fail::fail_point!("compaction::swap", |_| Err(injected("rename", &from)));
            rename_if_present(&from, &kind.final_path(directory, *base_offset))?;
        }
    }
    sync_directory(directory)?;
    for base_offset in &compacted.replaced {
        let path = path_of(directory, *base_offset, FileKind::Index, DELETED);
        fail::fail_point!("compaction::delete", |_| Err(injected("remove", &path)));
        remove_if_present(&path)?;
    }
    Ok(())
}

/// Abandons a build that was not swapped in (e.g. the swap was refused):
/// removes its `.cleaned`/`.swap` files, un-committing it first so a crash
/// halfway is rolled back at open. The old blocks are untouched.
pub fn abandon(directory: &Path, compacted: &CompactedBlocks) -> Result<(), CompactionError> {
    let files: Vec<(Offset, FileKind, &'static str)> = compacted
        .added_bases
        .iter()
        .flat_map(|base_offset| {
            [FileKind::Log, FileKind::Index].map(|kind| (*base_offset, kind, SWAP))
        })
        .collect();
    remove_build_files(directory, &files)
}

// ---------------------------------------------------------------------------
// Recovery

/// What [`recover`] found and did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct RecoveryOutcome {
    /// `.cleaned`, `.deleted` and rolled-back `.swap` files removed.
    pub(crate) orphans_removed: u64,
    /// Committed builds whose swap was completed.
    pub(crate) swaps_completed: usize,
}

fn open_io_error(operation: &'static str, path: &Path, source: std::io::Error) -> IoError {
    IoError {
        operation,
        path: path.to_path_buf(),
        source,
    }
}

/// `{base:020}.{log|idx}.{state}` -> (base, kind, state).
fn parse_compaction_name(name: &str) -> Option<(Offset, FileKind, &str)> {
    let (stem, rest) = name.split_once('.')?;
    if stem.len() != 20 || !stem.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    let (extension, state) = rest.split_once('.')?;
    let kind = match extension {
        "log" => FileKind::Log,
        "idx" => FileKind::Index,
        _ => return None,
    };
    matches!(state, CLEANED | SWAP | DELETED).then_some(())?;
    Some((Offset(stem.parse().ok()?), kind, state))
}

/// Brings a partition directory to exactly the old or the new blocks after a
/// crash at any step of a run, before the log lists its files:
///
/// - `.deleted`: removed (replaced blocks; no reader survives a restart).
/// - `.swap` beside any `.cleaned`: the commit did not complete. Every
///   `.swap` is removed first, then every `.cleaned` (so a crash during this
///   still leaves a mix), and the old blocks stay.
/// - `.swap` alone: committed. For each `.log.swap` + `.idx.swap` pair,
///   every `.log`/`.idx` whose base lies in `[base, next_offset)` of the
///   pair's index is removed (the old blocks it replaces), then the pair is
///   renamed, index first. A `.log.swap` without its `.idx.swap` had its
///   index renamed already by `finish`, which removes all old files first:
///   it is only renamed.
/// - `.cleaned` alone: removed.
pub(crate) fn recover(directory: &Path) -> Result<RecoveryOutcome, super::log::OpenError> {
    let mut outcome = RecoveryOutcome::default();
    let mut cleaned = Vec::new();
    let mut swaps: std::collections::BTreeMap<Offset, [bool; 2]> = Default::default();
    let mut finals: Vec<(Offset, FileKind)> = Vec::new();
    let entries =
        std::fs::read_dir(directory).map_err(|error| open_io_error("list", directory, error))?;
    let mut changed = false;
    for entry in entries {
        let entry = entry.map_err(|error| open_io_error("list", directory, error))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some((base_offset, kind, state)) = parse_compaction_name(name) {
            match state {
                DELETED => {
                    io::delete_file(&entry.path())?;
                    outcome.orphans_removed += 1;
                    changed = true;
                }
                CLEANED => cleaned.push(entry.path()),
                _ => swaps.entry(base_offset).or_default()[kind as usize] = true,
            }
            continue;
        }
        if let Some((stem, extension)) = name.split_once('.') {
            let kind = match extension {
                "log" => FileKind::Log,
                "idx" => FileKind::Index,
                _ => continue,
            };
            if stem.len() == 20 && stem.bytes().all(|byte| byte.is_ascii_digit()) {
                if let Ok(base) = stem.parse() {
                    finals.push((Offset(base), kind));
                }
            }
        }
    }
    if !cleaned.is_empty() {
        // Not committed: the swaps go first, so a crash here still shows a mix.
        for (base_offset, kinds) in &swaps {
            for kind in [FileKind::Log, FileKind::Index] {
                if kinds[kind as usize] {
                    io::delete_file(&path_of(directory, *base_offset, kind, SWAP))?;
                    outcome.orphans_removed += 1;
                }
            }
        }
        for path in &cleaned {
            io::delete_file(path)?;
            outcome.orphans_removed += 1;
        }
        changed = true;
        swaps.clear();
        tracing::info!(directory = %directory.display(), "rolled back a compaction a crash interrupted before its commit");
    }
    for (base_offset, kinds) in &swaps {
        let [log_swap, index_swap] = *kinds;
        if log_swap && index_swap {
            let index_path = path_of(directory, *base_offset, FileKind::Index, SWAP);
            let bytes = std::fs::read(&index_path)
                .map_err(|error| open_io_error("read", &index_path, error))?;
            let index =
                SegmentIndex::decode(&bytes).map_err(|reason| super::log::OpenError::Format {
                    file: index_path.clone(),
                    reason: format!("a committed compaction's index is unreadable: {reason}"),
                })?;
            let replaced = *base_offset..index.next_offset;
            for (old_base, kind) in &finals {
                if replaced.contains(old_base) {
                    io::delete_file(&kind.final_path(directory, *old_base))?;
                }
            }
        }
        for kind in [FileKind::Index, FileKind::Log] {
            if kinds[kind as usize] {
                let from = path_of(directory, *base_offset, kind, SWAP);
                std::fs::rename(&from, kind.final_path(directory, *base_offset))
                    .map_err(|error| open_io_error("rename", &from, error))?;
            }
        }
        changed = true;
    }
    if !swaps.is_empty() {
        outcome.swaps_completed = 1;
        tracing::info!(directory = %directory.display(), "completed a compaction a crash interrupted after its commit");
    }
    if changed {
        io::sync_directory(directory)?;
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::log::{LogOptions, PartitionLog};
    use crate::types::{Record, Term};
    use bytes::Bytes;
    use proptest::prelude::*;

    const NOW_MS: i64 = 10_000_000;

    /// Failpoints are process-wide: with them compiled in, every test of
    /// this module runs alone, so an injected failure hits only its test.
    fn serial() -> std::sync::MutexGuard<'static, ()> {
        static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
        LOCK.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
    const DELETE_RETENTION: Duration = Duration::from_secs(1);

    /// One record to append: key number (None = no key), value number (None
    /// = tombstone), and how old it is at `NOW_MS`.
    #[derive(Clone, Copy, Debug)]
    struct Op {
        key: Option<u8>,
        value: Option<u16>,
        age_ms: i64,
    }

    fn record(op: &Op) -> Record {
        Record {
            key: op.key.map(|key| Bytes::from(format!("key-{key}"))),
            value: op
                .value
                .map(|value| Bytes::from(format!("value-{value}-{}", "x".repeat(20)))),
            headers: Vec::new(),
            timestamp_ms: Some(NOW_MS - op.age_ms),
        }
    }

    fn options() -> LogOptions {
        LogOptions {
            segment_bytes: 600,
            index_interval_bytes: 128,
            ..LogOptions::default()
        }
    }

    use crate::storage::log::tests::run_jobs;

    fn append_all(log: &mut PartitionLog, batches: &[Vec<Op>]) {
        for batch in batches {
            let records: Vec<Record> = batch.iter().map(record).collect();
            let outcome = log.append(&records, Term(1), NOW_MS).unwrap();
            run_jobs(log, outcome.jobs);
        }
    }

    /// Every record from `from` to the high watermark, through read plans.
    fn read_from(log: &PartitionLog, from: Offset) -> Vec<FetchedRecord> {
        let mut records = Vec::new();
        let mut offset = from;
        while let Some(plan) = log.read_plan(offset, 300).unwrap() {
            let result = plan.execute(300).unwrap();
            records.extend(result.records);
            assert!(result.next_offset > offset, "a read made no progress");
            offset = result.next_offset;
        }
        records
    }

    fn read_all(log: &PartitionLog) -> Vec<FetchedRecord> {
        read_from(log, log.log_start_offset())
    }

    /// The model: what a compaction of every offset below `end` keeps.
    fn model(old: &[FetchedRecord], end: Offset) -> Vec<FetchedRecord> {
        let mut latest: HashMap<Bytes, Offset> = HashMap::new();
        for record in old.iter().filter(|record| record.offset < end) {
            if let Some(key) = &record.key {
                latest.insert(key.clone(), record.offset);
            }
        }
        let retention_ms = DELETE_RETENTION.as_millis() as i64;
        old.iter()
            .filter(|record| {
                let Some(key) = &record.key else { return true };
                record.offset >= end
                    || (latest[key] == record.offset
                        && (record.value.is_some() || NOW_MS - record.timestamp_ms <= retention_ms))
            })
            .cloned()
            .collect()
    }

    /// key -> latest value (None: a tombstone) as a consumer would build it.
    fn latest_values(records: &[FetchedRecord]) -> HashMap<Bytes, Option<Bytes>> {
        let mut map = HashMap::new();
        for record in records {
            if let Some(key) = &record.key {
                map.insert(key.clone(), record.value.clone());
            }
        }
        map
    }

    /// File names of the compaction states left in `directory`.
    fn leftovers(directory: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(directory)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .filter(|name| {
                name.ends_with(".cleaned") || name.ends_with(".swap") || name.ends_with(".deleted")
            })
            .collect();
        names.sort();
        names
    }

    /// Many keys, few overwrites, some tombstones (old and young) and
    /// unkeyed records: several input blocks and several output blocks.
    fn workload() -> Vec<Vec<Op>> {
        (0u16..60)
            .map(|batch| {
                (0..4)
                    .map(|index| {
                        let number = batch * 4 + index;
                        Op {
                            key: (number % 17 != 0).then_some((number % 53) as u8),
                            value: (number % 11 != 0).then_some(number),
                            age_ms: if number % 2 == 0 { 5_000 } else { 10 },
                        }
                    })
                    .collect()
            })
            .collect()
    }

    fn open(directory: &Path) -> PartitionLog {
        PartitionLog::open(directory, options()).unwrap().0
    }

    /// A log with the workload appended; its content before compaction.
    fn setup(directory: &Path) -> (PartitionLog, Vec<FetchedRecord>) {
        let mut log = open(directory);
        append_all(&mut log, &workload());
        let old = read_all(&log);
        (log, old)
    }

    fn input_of(log: &mut PartitionLog) -> CompactionInput {
        log.compaction_input(NOW_MS, DELETE_RETENTION)
            .expect("sealed blocks to compact")
    }

    #[test]
    fn a_run_stops_at_the_key_map_budget_and_the_next_run_takes_the_rest() {
        let directory = tempfile::tempdir().unwrap();
        let (mut log, old) = setup(directory.path());
        let mut input = input_of(&mut log);
        assert!(input.blocks.len() >= 3, "the workload spans several blocks");
        // Room for the first block's offsets and little more.
        input.key_map_bytes_max = Some(first_block_estimate(&input) + KEY_MAP_ENTRY_BYTES);
        let mut compacted = build(&input).unwrap();
        assert!(
            compacted.replaced.len() < input.blocks.len(),
            "the budget must cut the run short: {:?}",
            compacted.replaced
        );
        assert_eq!(
            compacted.replaced,
            input.blocks[..compacted.replaced.len()]
                .iter()
                .map(|block| block.base_offset)
                .collect::<Vec<_>>(),
            "a prefix of the input"
        );
        let partial_end = input.blocks[compacted.replaced.len() - 1].next_offset;
        drop(input);
        log.swap_compacted(&mut compacted).unwrap();
        finish(log.directory(), &compacted).unwrap();
        drop(compacted);
        // The prefix keeps each key's latest *within* it; later blocks are untouched.
        check_reads(&log, &model(&old, partial_end));
        // Without a limit, the next run covers everything.
        let end = compact(&mut log);
        check_reads(&log, &model(&old, end));
        assert!(leftovers(directory.path()).is_empty());
    }

    /// A whole run; returns the end of the compacted range.
    fn compact(log: &mut PartitionLog) -> Offset {
        let input = input_of(log);
        let end = input.blocks.last().unwrap().next_offset;
        let mut compacted = build(&input).unwrap();
        log.swap_compacted(&mut compacted).unwrap();
        finish(log.directory(), &compacted).unwrap();
        end
    }

    fn check_reads(log: &PartitionLog, expected: &[FetchedRecord]) {
        let read = read_all(log);
        assert_eq!(
            read.iter().map(|record| record.offset).collect::<Vec<_>>(),
            expected
                .iter()
                .map(|record| record.offset)
                .collect::<Vec<_>>()
        );
        assert_eq!(read, expected);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// The key -> latest value map is the model's; surviving records keep
        /// their offsets; young tombstones stay and old ones go; a read from
        /// any removed offset returns the next record that exists; the same
        /// holds after a reopen.
        #[test]
        fn compaction_keeps_the_latest_record_of_every_key(
            batches in proptest::collection::vec(
                proptest::collection::vec(
                    (
                        proptest::option::weighted(0.9, 0u8..6),
                        proptest::option::weighted(0.8, any::<u16>()),
                        0i64..2_000,
                    ).prop_map(|(key, value, age_ms)| Op { key, value, age_ms }),
                    1..6,
                ),
                8..30,
            ),
        ) {
            let _serial = serial();
            let directory = tempfile::tempdir().unwrap();
            let mut log = open(directory.path());
            append_all(&mut log, &batches);
            let old = read_all(&log);
            let end = compact(&mut log);
            let expected = model(&old, end);
            let read = read_all(&log);
            prop_assert_eq!(&read, &expected);
            prop_assert_eq!(latest_values(&read), latest_values(&old).into_iter().filter(|(key, value)| {
                // Expired tombstones are gone with their key (unless a record
                // of the key past the compacted range brought it back).
                value.is_some() || read.iter().any(|record| record.key.as_ref() == Some(key))
            }).collect::<HashMap<_, _>>());
            for record in &read {
                if record.offset < end && record.key.is_some() && record.value.is_none() {
                    prop_assert!(NOW_MS - record.timestamp_ms <= 1_000, "an expired tombstone survived");
                }
            }
            let high_watermark = log.high_watermark();
            for offset in log.log_start_offset().0..high_watermark.0 {
                let next = expected.iter().find(|record| record.offset.0 >= offset);
                let plan = log.read_plan(Offset(offset), 1).unwrap().unwrap();
                let first = plan.execute(1).unwrap().records.into_iter().next();
                prop_assert_eq!(first.map(|record| record.offset), next.map(|record| record.offset));
            }
            drop(log);
            let log = open(directory.path());
            prop_assert_eq!(read_all(&log), expected);
            prop_assert!(leftovers(directory.path()).is_empty());
        }
    }

    #[test]
    fn a_run_over_several_blocks_writes_several_and_keeps_offsets() {
        let _serial = serial();
        let directory = tempfile::tempdir().unwrap();
        let (mut log, old) = setup(directory.path());
        let input = input_of(&mut log);
        assert!(input.blocks.len() >= 4, "{} blocks", input.blocks.len());
        let end = input.blocks.last().unwrap().next_offset;
        let mut compacted = build(&input).unwrap();
        assert!(
            compacted.added.len() >= 2,
            "{} new blocks",
            compacted.added.len()
        );
        assert_eq!(compacted.added[0].base_offset, input.blocks[0].base_offset);
        assert_eq!(compacted.replaced.len(), input.blocks.len());
        assert!(compacted.bytes_after < compacted.bytes_before);
        let expected = model(&old, end);
        let survivors = expected.iter().filter(|record| record.offset < end).count();
        assert_eq!(compacted.records_after, survivors as u64);
        assert_eq!(
            compacted.records_before,
            old.iter().filter(|record| record.offset < end).count() as u64
        );
        // Before the swap, the log still serves the old blocks.
        check_reads(&log, &old);
        log.swap_compacted(&mut compacted).unwrap();
        assert!(compacted.added.is_empty());
        check_reads(&log, &expected);
        finish(directory.path(), &compacted).unwrap();
        drop((input, compacted));
        assert!(leftovers(directory.path()).is_empty());
        check_reads(&log, &expected);
        assert!(log.dirty_ratio() < 0.5);
        // A second run over compacted blocks changes nothing but is fine.
        append_all(&mut log, &workload()[..20]);
        let before = read_all(&log);
        let end = compact(&mut log);
        check_reads(&log, &model(&before, end));
    }

    #[test]
    fn a_plan_made_before_the_swap_reads_the_old_file_until_it_drops() {
        let _serial = serial();
        let directory = tempfile::tempdir().unwrap();
        let (mut log, old) = setup(directory.path());
        let first_base = log.log_start_offset();
        let plan = log.read_plan(first_base, 1 << 20).unwrap().unwrap();
        let input = input_of(&mut log);
        let mut compacted = build(&input).unwrap();
        log.swap_compacted(&mut compacted).unwrap();
        finish(directory.path(), &compacted).unwrap();
        drop((input, compacted));
        let deleted = path_of(directory.path(), first_base, FileKind::Log, DELETED);
        assert!(deleted.exists(), "the old file went while a plan holds it");
        let result = plan.execute(1 << 20).unwrap();
        assert!(!result.records.is_empty());
        assert_eq!(result.records, old[..result.records.len()].to_vec());
        drop(plan);
        assert!(!deleted.exists(), "the old file outlived its last reader");
        assert!(leftovers(directory.path()).is_empty());
    }

    #[test]
    fn the_estimate_covers_the_key_map() {
        let _serial = serial();
        let directory = tempfile::tempdir().unwrap();
        let mut log = PartitionLog::open(
            directory.path(),
            LogOptions {
                segment_bytes: 64 * 1024,
                ..LogOptions::default()
            },
        )
        .unwrap()
        .0;
        let batches: Vec<Vec<Op>> = (0..200u16)
            .map(|batch| {
                (0..50u16)
                    .map(|index| Op {
                        // 10,000 records, 10,000 distinct keys: the map's worst case.
                        key: None,
                        value: Some(batch * 50 + index),
                        age_ms: 0,
                    })
                    .collect()
            })
            .collect();
        for batch in &batches {
            let records: Vec<Record> = batch
                .iter()
                .map(|op| record(op).with_key(format!("k{}", op.value.unwrap())))
                .collect();
            let outcome = log.append(&records, Term(1), NOW_MS).unwrap();
            run_jobs(&mut log, outcome.jobs);
        }
        let input = input_of(&mut log);
        let (map, records, _) = latest_offsets(&input).unwrap();
        let estimate = estimate(&input);
        assert_eq!(estimate.records_max, records);
        let entry_bytes = std::mem::size_of::<(u128, Offset)>() as u64 + 1;
        let used = map.capacity() as u64 * entry_bytes;
        assert!(
            estimate.memory_bytes >= used,
            "estimate {} < used {used}",
            estimate.memory_bytes
        );
        assert!(
            estimate.memory_bytes <= 4 * used,
            "estimate {estimate:?}, used {used}"
        );
        let disk: u64 = input.blocks.iter().map(|block| block.size_bytes).sum();
        assert_eq!(estimate.disk_bytes, disk);
        let compacted = build(&input).unwrap();
        assert!(compacted.bytes_after <= estimate.disk_bytes);
        abandon(directory.path(), &compacted).unwrap();
        assert!(leftovers(directory.path()).is_empty());
    }

    #[test]
    fn retention_skips_blocks_being_compacted() {
        let _serial = serial();
        let directory = tempfile::tempdir().unwrap();
        let mut log = PartitionLog::open(
            directory.path(),
            LogOptions {
                retention_bytes: Some(1),
                ..options()
            },
        )
        .unwrap()
        .0;
        append_all(&mut log, &workload()[..20]);
        let input = input_of(&mut log);
        assert!(
            log.compaction_input(NOW_MS, DELETE_RETENTION).is_none(),
            "one run at a time"
        );
        assert!(log.retention_jobs(NOW_MS).is_empty());
        log.compaction_aborted();
        assert_eq!(log.retention_jobs(NOW_MS).len(), input.blocks.len());
    }

    #[test]
    fn a_swap_after_an_abort_is_refused_and_the_build_abandoned() {
        let _serial = serial();
        let directory = tempfile::tempdir().unwrap();
        let (mut log, old) = setup(directory.path());
        let input = input_of(&mut log);
        let mut compacted = build(&input).unwrap();
        log.compaction_aborted();
        assert_eq!(log.swap_compacted(&mut compacted), Err(SwapError::Changed));
        assert!(!compacted.added.is_empty());
        check_reads(&log, &old);
        // An unfinished run blocks the next one.
        let blocked = build(&input_of(&mut log)).unwrap_err();
        assert!(
            matches!(blocked, CompactionError::Unfinished { .. }),
            "{blocked}"
        );
        abandon(directory.path(), &compacted).unwrap();
        assert!(leftovers(directory.path()).is_empty());
        drop(log);
        check_reads(&open(directory.path()), &old);
    }

    #[test]
    fn a_damaged_block_is_never_compacted() {
        let _serial = serial();
        let directory = tempfile::tempdir().unwrap();
        let (mut log, _) = setup(directory.path());
        let input = input_of(&mut log);
        let victim = &input.blocks[1];
        let position = SEGMENT_HEADER_BYTES + 30;
        let mut byte = [0u8];
        victim.file.file.read_exact_at(&mut byte, position).unwrap();
        victim
            .file
            .file
            .write_all_at(&[byte[0] ^ 0x10], position)
            .unwrap();
        let error = build(&input).unwrap_err();
        assert!(matches!(error, CompactionError::Corrupt(_)), "{error}");
        assert!(leftovers(directory.path()).is_empty());
    }

    /// How a crash left the files of a committed build, by hand.
    #[derive(Clone, Copy, Debug)]
    enum Crash {
        /// Only `.cleaned` files: before any rename.
        BeforeCommit,
        /// One `.swap` back to `.cleaned`: in the middle of the commit renames.
        DuringCommit,
        /// All `.swap`, nothing of `finish` done.
        AfterCommit,
        /// `finish` moved the first old block's `.log` only.
        DuringDeletion,
        /// `finish` moved every old file and renamed the first new index.
        DuringRename,
    }

    #[test]
    fn a_crash_at_any_step_leaves_old_or_new_and_no_orphans() {
        let _serial = serial();
        for crash in [
            Crash::BeforeCommit,
            Crash::DuringCommit,
            Crash::AfterCommit,
            Crash::DuringDeletion,
            Crash::DuringRename,
        ] {
            let directory = tempfile::tempdir().unwrap();
            let path = directory.path();
            let (mut log, old) = setup(path);
            let input = input_of(&mut log);
            let end = input.blocks.last().unwrap().next_offset;
            let compacted = build(&input).unwrap();
            assert!(compacted.added_bases.len() >= 2);
            let new_bases = compacted.added_bases.clone();
            let old_bases = compacted.replaced.clone();
            drop((log, input, compacted));
            let rename = |base: Offset, kind: FileKind, from: &str, to: &str| {
                std::fs::rename(
                    path_of(path, base, kind, from),
                    path_of(path, base, kind, to),
                )
                .unwrap();
            };
            let visible_new = match crash {
                Crash::BeforeCommit => {
                    for base in &new_bases {
                        rename(*base, FileKind::Log, SWAP, CLEANED);
                        rename(*base, FileKind::Index, SWAP, CLEANED);
                    }
                    false
                }
                Crash::DuringCommit => {
                    rename(new_bases[1], FileKind::Index, SWAP, CLEANED);
                    false
                }
                Crash::AfterCommit => true,
                Crash::DuringDeletion => {
                    std::fs::rename(
                        SegmentFile::log_path(path, old_bases[0]),
                        path_of(path, old_bases[0], FileKind::Log, DELETED),
                    )
                    .unwrap();
                    true
                }
                Crash::DuringRename => {
                    for base in &old_bases {
                        for kind in [FileKind::Log, FileKind::Index] {
                            std::fs::rename(
                                kind.final_path(path, *base),
                                path_of(path, *base, kind, DELETED),
                            )
                            .unwrap();
                        }
                    }
                    std::fs::rename(
                        path_of(path, new_bases[0], FileKind::Index, SWAP),
                        SegmentFile::index_path(path, new_bases[0]),
                    )
                    .unwrap();
                    true
                }
            };
            let (log, report) = PartitionLog::open(path, options()).unwrap();
            let expected = if visible_new {
                model(&old, end)
            } else {
                old.clone()
            };
            assert_eq!(read_all(&log), expected, "{crash:?}");
            assert_eq!(
                report.compactions_completed,
                usize::from(visible_new),
                "{crash:?}"
            );
            assert!(
                report.corruptions.is_empty(),
                "{crash:?}: {:?}",
                report.corruptions
            );
            assert!(
                leftovers(path).is_empty(),
                "{crash:?}: {:?}",
                leftovers(path)
            );
            // And the log compacts from there.
            let mut log = log;
            let end = compact(&mut log);
            check_reads(&log, &model(&expected, end));
        }
    }

    /// Failpoints at each step of a build: the run fails, the old blocks
    /// still read, no file of the run is left, and a retry succeeds.
    #[cfg(feature = "failpoints")]
    #[test]
    fn a_failed_build_step_leaves_the_old_blocks_and_can_be_retried() {
        crate::run_isolated(
            module_path!(),
            "a_failed_build_step_leaves_the_old_blocks_and_can_be_retried",
            || {
                let _serial = serial();
                let steps = [
                    ("compaction::write", "return"),
                    ("compaction::write", "1*off->return"),
                    ("compaction::fsync", "return"),
                    ("compaction::fsync", "2*off->return"),
                    ("compaction::rename", "return"),
                    ("compaction::rename", "3*off->return"),
                    ("compaction::sync_directory", "return"),
                    ("compaction::sync_directory", "1*off->return"),
                ];
                for (failpoint, actions) in steps {
                    let scenario = fail::FailScenario::setup();
                    let directory = tempfile::tempdir().unwrap();
                    let (mut log, old) = setup(directory.path());
                    fail::cfg(failpoint, actions).unwrap();
                    let input = input_of(&mut log);
                    let error = build(&input).unwrap_err();
                    assert!(
                        matches!(error, CompactionError::Io(_)),
                        "{failpoint}: {error}"
                    );
                    assert!(
                        error.to_string().contains("injected"),
                        "{failpoint}: {error}"
                    );
                    assert!(
                        leftovers(directory.path()).is_empty(),
                        "{failpoint} {actions}"
                    );
                    log.compaction_aborted();
                    drop(input);
                    check_reads(&log, &old);
                    fail::remove(failpoint);
                    let end = compact(&mut log);
                    check_reads(&log, &model(&old, end));
                    assert!(
                        leftovers(directory.path()).is_empty(),
                        "{failpoint} {actions}"
                    );
                    scenario.teardown();
                }
            },
        );
    }

    /// Failpoints in `finish` (after the swap): reads are already the new
    /// blocks; a retry of `finish` completes, and so does a reopen instead.
    #[cfg(feature = "failpoints")]
    #[test]
    fn a_failed_finish_is_completed_by_a_retry_or_by_the_next_open() {
        crate::run_isolated(
            module_path!(),
            "a_failed_finish_is_completed_by_a_retry_or_by_the_next_open",
            || {
                let _serial = serial();
                let steps = [
                    ("compaction::delete", "return"),
                    ("compaction::delete", "2*off->return"),
                    ("compaction::swap", "return"),
                    ("compaction::swap", "1*off->return"),
                    ("compaction::sync_directory", "return"),
                ];
                for (failpoint, actions) in steps {
                    for reopen in [false, true] {
                        let scenario = fail::FailScenario::setup();
                        let directory = tempfile::tempdir().unwrap();
                        let (mut log, old) = setup(directory.path());
                        let input = input_of(&mut log);
                        let end = input.blocks.last().unwrap().next_offset;
                        let expected = model(&old, end);
                        let mut compacted = build(&input).unwrap();
                        log.swap_compacted(&mut compacted).unwrap();
                        fail::cfg(failpoint, actions).unwrap();
                        let error = finish(directory.path(), &compacted)
                            .expect_err(&format!("{failpoint} {actions}"));
                        assert!(
                            error.to_string().contains("injected"),
                            "{failpoint}: {error}"
                        );
                        fail::remove(failpoint);
                        check_reads(&log, &expected);
                        if reopen {
                            drop((log, input, compacted));
                            let (log, report) =
                                PartitionLog::open(directory.path(), options()).unwrap();
                            check_reads(&log, &expected);
                            assert!(report.corruptions.is_empty());
                        } else {
                            finish(directory.path(), &compacted).unwrap();
                            drop((input, compacted));
                            check_reads(&log, &expected);
                            drop(log);
                            check_reads(&open(directory.path()), &expected);
                        }
                        assert!(
                            leftovers(directory.path()).is_empty(),
                            "{failpoint} {actions} reopen {reopen}: {:?}",
                            leftovers(directory.path())
                        );
                        scenario.teardown();
                    }
                }
            },
        );
    }
}
