//! The I/O a [`PartitionLog`](super::PartitionLog) asks its owner to do, and
//! the primitives that do it. Every primitive has a `fail` failpoint so fault
//! tests inject real errors: `storage::write`, `storage::fsync`,
//! `storage::rename`, `storage::delete`, `storage::create`.

use crate::types::Offset;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::segment::SegmentFile;

/// One piece of I/O planned by the log, run in order by the owner's writer.
#[derive(Debug)]
pub enum IoJob {
    /// Write encoded frames at a position of the active segment.
    Append(AppendJob),
    /// Seal a full segment into a block (index file, rename, directory fsync).
    Seal(SealJob),
    /// Delete the files of a block removed by retention.
    Delete(DeleteJob),
}

/// Write `bytes` at `position` of `file`. Once written and fsynced, every
/// offset below `next_offset` is durable.
#[derive(Debug)]
pub struct AppendJob {
    /// The active segment.
    pub file: Arc<SegmentFile>,
    /// Byte position of the first byte of `bytes` in the file.
    pub position: u64,
    /// Encoded frames (and the segment header when `position == 0`).
    pub bytes: Vec<u8>,
    /// The offset after the last record in `bytes`.
    pub next_offset: Offset,
    /// The file was created for this job: fsync its directory too, so the
    /// file's name is as durable as its contents.
    pub sync_directory: bool,
}

/// Make a full segment a sealed block: write its index beside it (temp file,
/// fsync, rename), rename `.wal` to `.log`, fsync the directory.
#[derive(Debug)]
pub struct SealJob {
    /// The segment being sealed (still open; readers keep using it).
    pub file: Arc<SegmentFile>,
    /// Its base offset.
    pub base_offset: Offset,
    /// The encoded index file ([`super::index`]).
    pub index_bytes: Vec<u8>,
}

/// Delete the files of one block.
#[derive(Debug)]
pub struct DeleteJob {
    /// The block's base offset (its id in logs and errors).
    pub base_offset: Offset,
    /// Its files (data and index).
    pub paths: Vec<PathBuf>,
}

/// What a seal did besides sealing.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SealOutcome {
    /// Leftover temp files from an earlier failed attempt, removed first.
    pub orphans_removed: u64,
}

/// An I/O failure: which operation, on which file, and the OS error.
#[derive(Debug, thiserror::Error)]
#[error("{operation} {path}: {source}")]
pub struct IoError {
    /// The operation that failed ("write", "fsync", "rename", ...).
    pub operation: &'static str,
    /// The file or directory it was applied to.
    pub path: PathBuf,
    /// The OS error.
    #[source]
    pub source: std::io::Error,
}

/// Writes all of `bytes` at `position` (pwrite; no shared cursor).
pub fn write_at(file: &SegmentFile, position: u64, bytes: &[u8]) -> Result<(), IoError> {
    let _ = (file, position, bytes);
    todo!()
}

/// fdatasync of a segment file.
pub fn sync_data(file: &SegmentFile) -> Result<(), IoError> {
    let _ = file;
    todo!()
}

/// fsync of a directory, so that created, renamed and removed names are durable.
pub fn sync_directory(directory: &Path) -> Result<(), IoError> {
    let _ = directory;
    todo!()
}

/// Runs a seal. Idempotent: a failed seal can be retried with the same job.
pub fn run_seal(job: &SealJob) -> Result<SealOutcome, IoError> {
    let _ = job;
    todo!()
}

/// Deletes one file (a missing file is not an error).
pub fn delete_file(path: &Path) -> Result<(), IoError> {
    let _ = path;
    todo!()
}
