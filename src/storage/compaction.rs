//! Key compaction of sealed blocks (Kafka's log cleaner, simplified).

use super::io::IoError;
use super::log::{Corruption, LoadedBlock};
use super::segment::SegmentFile;
use crate::types::Offset;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// One sealed block handed to a compaction (shared, read-only).
#[derive(Clone, Debug)]
pub struct CompactionBlock {
    /// Its base offset.
    pub base_offset: Offset,
    /// The offset after the last record it covers.
    pub next_offset: Offset,
    /// Bytes of its file.
    pub size_bytes: u64,
    /// Largest timestamp in it.
    pub max_timestamp_ms: i64,
    /// The open file.
    pub file: Arc<SegmentFile>,
}

/// What to compact: consecutive sealed blocks of one partition, oldest first
/// (never the active segment).
#[derive(Clone, Debug)]
pub struct CompactionInput {
    /// The partition directory.
    pub directory: PathBuf,
    /// The blocks, oldest first.
    pub blocks: Vec<CompactionBlock>,
    /// Now, for tombstone expiry.
    pub now_ms: i64,
    /// Tombstones older than this are dropped.
    pub delete_retention: Duration,
    /// Index interval of the new blocks.
    pub index_interval_bytes: u64,
    /// Largest new block.
    pub segment_bytes: u64,
}

/// Resources a run needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompactionEstimate {
    /// Memory of the key map at most.
    pub memory_bytes: u64,
    /// Disk the new blocks take at most.
    pub disk_bytes: u64,
    /// Records (offsets) covered at most.
    pub records_max: u64,
}

/// Estimates the resources of a run.
pub fn estimate(input: &CompactionInput) -> CompactionEstimate {
    let _ = input;
    todo!()
}

/// A finished build: new block files beside the old ones, durable, named
/// `*.swap` (the commit point).
#[derive(Debug)]
pub struct CompactedBlocks {
    /// Base offsets of the blocks replaced.
    pub replaced: Vec<Offset>,
    /// The new blocks.
    pub added: Vec<LoadedBlock>,
    /// Bytes of the replaced blocks.
    pub bytes_before: u64,
    /// Bytes of the new blocks.
    pub bytes_after: u64,
    /// Records in the replaced blocks.
    pub records_before: u64,
    /// Records in the new blocks.
    pub records_after: u64,
}

/// Why a compaction step failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CompactionError {
    /// An I/O error. Retryable.
    #[error(transparent)]
    Io(#[from] IoError),
    /// A block is damaged. Final for these blocks.
    #[error("damaged block: {0}")]
    Corrupt(Corruption),
}

/// Why [`super::PartitionLog::swap_compacted`] refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SwapError {
    /// The blocks changed since the input was taken.
    #[error("the blocks changed since the compaction started")]
    Changed,
}

/// Builds the compacted blocks.
pub fn build(input: &CompactionInput) -> Result<CompactedBlocks, CompactionError> {
    let _ = input;
    todo!()
}

/// Completes a swap on disk.
pub fn finish(directory: &Path, compacted: &CompactedBlocks) -> Result<(), CompactionError> {
    let _ = (directory, compacted);
    todo!()
}

/// Abandons a build that was not swapped in.
pub fn abandon(directory: &Path, compacted: &CompactedBlocks) -> Result<(), CompactionError> {
    let _ = (directory, compacted);
    todo!()
}
