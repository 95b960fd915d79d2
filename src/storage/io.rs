//! The I/O a [`PartitionLog`](super::PartitionLog) asks its owner to do, and
//! the primitives that do it. Every primitive has a `fail` failpoint so fault
//! tests inject real errors: `storage::write`, `storage::fsync`,
//! `storage::rename`, `storage::delete`, `storage::create`.

use crate::types::Offset;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::FileExt;
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
    /// The end of one Raft ready's I/O (replicated partitions): write the
    /// Raft state if it changed, fsync everything the round wrote whatever
    /// the fsync policy, then report the ready persisted.
    RaftReady(RaftReadyJob),
}

/// See [`IoJob::RaftReady`].
#[derive(Debug)]
pub struct RaftReadyJob {
    /// raft-rs's number of the ready.
    pub number: u64,
    /// The Raft state to write, if it changed.
    pub state: Option<StateWrite>,
}

/// Bytes to write at a position of a small metadata file, then fsync.
#[derive(Debug)]
pub struct StateWrite {
    /// The open file.
    pub file: Arc<File>,
    /// Its path (for errors).
    pub path: PathBuf,
    /// Byte position.
    pub position: u64,
    /// The bytes.
    pub bytes: Vec<u8>,
}

impl StateWrite {
    /// Writes the bytes (pwrite), without syncing.
    pub fn write(&self) -> Result<(), IoError> {
        fail::fail_point!("storage::write", |_| Err(injected("write", &self.path)));
        self.file
            .write_all_at(&self.bytes, self.position)
            .map_err(|source| IoError {
                operation: "write",
                path: self.path.clone(),
                source,
            })
    }

    /// fdatasync of the file.
    pub fn sync(&self) -> Result<(), IoError> {
        fail::fail_point!("storage::fsync", |_| Err(injected("fsync", &self.path)));
        self.file.sync_data().map_err(|source| IoError {
            operation: "fsync",
            path: self.path.clone(),
            source,
        })
    }
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

/// An injected failure, as a real [`IoError`], for a `fail` failpoint.
#[cfg(feature = "failpoints")]
fn injected(operation: &'static str, path: &Path) -> IoError {
    IoError {
        operation,
        path: path.to_path_buf(),
        source: std::io::Error::other(format!("injected {operation} failure")),
    }
}

/// Writes all of `bytes` at `position` (pwrite; no shared cursor).
pub fn write_at(file: &SegmentFile, position: u64, bytes: &[u8]) -> Result<(), IoError> {
    let path = || SegmentFile::wal_path(&file.directory, file.base_offset);
    fail::fail_point!("storage::write", |_| Err(injected("write", &path())));
    file.file
        .write_all_at(bytes, position)
        .map_err(|source| IoError {
            operation: "write",
            path: path(),
            source,
        })
}

/// fdatasync of a segment file.
pub fn sync_data(file: &SegmentFile) -> Result<(), IoError> {
    let path = || SegmentFile::wal_path(&file.directory, file.base_offset);
    fail::fail_point!("storage::fsync", |_| Err(injected("fsync", &path())));
    file.file.sync_data().map_err(|source| IoError {
        operation: "fsync",
        path: path(),
        source,
    })
}

/// fsync of a directory, so that created, renamed and removed names are durable.
pub fn sync_directory(directory: &Path) -> Result<(), IoError> {
    fail::fail_point!("storage::fsync", |_| Err(injected(
        "fsync directory",
        directory
    )));
    let error = |operation| {
        move |source| IoError {
            operation,
            path: directory.to_path_buf(),
            source,
        }
    };
    let handle = File::open(directory).map_err(error("open directory"))?;
    handle.sync_all().map_err(error("fsync directory"))
}

/// Path of the temp file an index is written to before its rename.
fn index_temp_path(directory: &Path, base_offset: Offset) -> PathBuf {
    directory.join(format!("{:020}.idx.tmp", base_offset.0))
}

/// Renames `from` to `to` (failpoint `storage::rename`).
fn rename(from: &Path, to: &Path) -> Result<(), IoError> {
    fail::fail_point!("storage::rename", |_| Err(injected("rename", from)));
    std::fs::rename(from, to).map_err(|source| IoError {
        operation: "rename",
        path: from.to_path_buf(),
        source,
    })
}

/// Writes `bytes` to a new file at `path` and fsyncs it.
fn write_new_file(path: &Path, bytes: &[u8]) -> Result<(), IoError> {
    let error = |operation| {
        move |source| IoError {
            operation,
            path: path.to_path_buf(),
            source,
        }
    };
    fail::fail_point!("storage::create", |_| Err(injected("create", path)));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(error("create"))?;
    fail::fail_point!("storage::write", |_| Err(injected("write", path)));
    file.write_all(bytes).map_err(error("write"))?;
    fail::fail_point!("storage::fsync", |_| Err(injected("fsync", path)));
    file.sync_all().map_err(error("fsync"))
}

/// Runs a seal. Idempotent: a failed seal can be retried with the same job.
///
/// Steps, each safe to repeat: remove a leftover `.idx.tmp` from an earlier
/// attempt (counted), write the index to `.idx.tmp` and fsync it, rename it
/// to `.idx`, rename `.wal` to `.log` (already done is fine), fsync the
/// directory so both renames are durable.
pub fn run_seal(job: &SealJob) -> Result<SealOutcome, IoError> {
    let directory = &job.file.directory;
    let base_offset = job.base_offset;
    let mut outcome = SealOutcome::default();

    let temp_path = index_temp_path(directory, base_offset);
    match std::fs::remove_file(&temp_path) {
        Ok(()) => outcome.orphans_removed += 1,
        Err(error) if error.kind() == ErrorKind::NotFound => {}
        Err(source) => {
            return Err(IoError {
                operation: "remove orphan",
                path: temp_path,
                source,
            })
        }
    }

    write_new_file(&temp_path, &job.index_bytes)?;
    rename(&temp_path, &SegmentFile::index_path(directory, base_offset))?;

    let wal_path = SegmentFile::wal_path(directory, base_offset);
    let log_path = SegmentFile::log_path(directory, base_offset);
    if let Err(error) = rename(&wal_path, &log_path) {
        // A retry after the data rename succeeded (but a later step failed)
        // finds the .wal gone and the .log present: that step is done.
        let already_renamed = !wal_path.exists() && log_path.exists();
        if !already_renamed {
            return Err(error);
        }
    }

    sync_directory(directory)?;
    Ok(outcome)
}

/// Deletes one file (a missing file is not an error).
pub fn delete_file(path: &Path) -> Result<(), IoError> {
    fail::fail_point!("storage::delete", |_| Err(injected("delete", path)));
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == ErrorKind::NotFound => Ok(()),
        Err(source) => Err(IoError {
            operation: "delete",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Asks the kernel to start reading `path` into the page cache
/// (`posix_fadvise(WILLNEED)`), so the next block's read overlaps the
/// current block's verification. Best effort: errors are ignored.
pub fn prefetch(path: &Path) {
    use std::os::fd::AsRawFd;
    if let Ok(file) = std::fs::File::open(path) {
        // SAFETY: the descriptor is open for the duration of the call.
        unsafe {
            libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_WILLNEED);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    fn seal_job(directory: &Path, base_offset: Offset, index_bytes: &[u8]) -> SealJob {
        let file = SegmentFile::create(directory, base_offset).expect("create segment");
        write_at(&file, 0, b"segment bytes").expect("write");
        SealJob {
            file: Arc::new(file),
            base_offset,
            index_bytes: index_bytes.to_vec(),
        }
    }

    fn names(directory: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(directory)
            .expect("read dir")
            .map(|entry| {
                entry
                    .expect("entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        names
    }

    #[test]
    fn write_at_writes_at_positions_and_syncs() {
        let directory = tempfile::tempdir().unwrap();
        let file = SegmentFile::create(directory.path(), Offset(0)).unwrap();
        write_at(&file, 4, b"world").unwrap();
        write_at(&file, 0, b"hey ").unwrap();
        sync_data(&file).unwrap();
        sync_directory(directory.path()).unwrap();
        let mut read = [0u8; 9];
        file.file.read_exact_at(&mut read, 0).unwrap();
        assert_eq!(&read, b"hey world");
    }

    #[test]
    fn sync_directory_of_missing_directory_fails() {
        let directory = tempfile::tempdir().unwrap();
        let missing = directory.path().join("missing");
        let error = sync_directory(&missing).unwrap_err();
        assert_eq!(error.path, missing);
        assert_eq!(error.source.kind(), ErrorKind::NotFound);
    }

    #[test]
    fn seal_writes_index_and_renames_wal() {
        let directory = tempfile::tempdir().unwrap();
        let job = seal_job(directory.path(), Offset(100), b"index");
        let outcome = run_seal(&job).unwrap();
        assert_eq!(outcome, SealOutcome { orphans_removed: 0 });
        assert_eq!(
            names(directory.path()),
            ["00000000000000000100.idx", "00000000000000000100.log"]
        );
        let index = std::fs::read(SegmentFile::index_path(directory.path(), Offset(100))).unwrap();
        assert_eq!(index, b"index");
        let data = std::fs::read(SegmentFile::log_path(directory.path(), Offset(100))).unwrap();
        assert_eq!(data, b"segment bytes");
        // Readers holding the open file still read it after the rename.
        let mut read = [0u8; 7];
        job.file.file.read_exact_at(&mut read, 0).unwrap();
        assert_eq!(&read, b"segment");
    }

    #[test]
    fn seal_retry_is_idempotent_and_removes_orphan_temp() {
        let directory = tempfile::tempdir().unwrap();
        let job = seal_job(directory.path(), Offset(7), b"index v1");
        run_seal(&job).unwrap();
        // An earlier failed attempt left a temp file behind.
        std::fs::write(
            directory.path().join("00000000000000000007.idx.tmp"),
            b"torn",
        )
        .unwrap();
        let outcome = run_seal(&job).unwrap();
        assert_eq!(outcome.orphans_removed, 1);
        assert_eq!(
            names(directory.path()),
            ["00000000000000000007.idx", "00000000000000000007.log"]
        );
        assert_eq!(
            std::fs::read(SegmentFile::index_path(directory.path(), Offset(7))).unwrap(),
            b"index v1"
        );
    }

    #[test]
    fn seal_without_data_file_fails() {
        let directory = tempfile::tempdir().unwrap();
        let job = seal_job(directory.path(), Offset(3), b"index");
        std::fs::remove_file(SegmentFile::wal_path(directory.path(), Offset(3))).unwrap();
        let error = run_seal(&job).unwrap_err();
        assert_eq!(error.operation, "rename");
        assert!(!SegmentFile::log_path(directory.path(), Offset(3)).exists());
    }

    #[test]
    fn delete_file_removes_and_tolerates_missing() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("00000000000000000000.log");
        std::fs::write(&path, b"x").unwrap();
        delete_file(&path).unwrap();
        assert!(!path.exists());
        delete_file(&path).unwrap();
        // Other errors are reported, not swallowed.
        let error = delete_file(directory.path()).unwrap_err();
        assert_eq!(error.operation, "delete");
    }

    /// Failpoints are process-global: each test holds a `FailScenario`
    /// (which serializes scenarios) and arms only a counted failure.
    #[cfg(feature = "failpoints")]
    mod faults {
        use super::*;

        #[test]
        fn failed_renames_leave_a_bounded_orphan_that_the_retry_removes() {
            crate::run_isolated(
                module_path!(),
                "failed_renames_leave_a_bounded_orphan_that_the_retry_removes",
                || {
                    let scenario = fail::FailScenario::setup();
                    let directory = tempfile::tempdir().unwrap();
                    let job = seal_job(directory.path(), Offset(9), b"index");
                    fail::cfg("storage::rename", "3*return").unwrap();
                    let mut orphans = 0;
                    let mut failures = 0;
                    loop {
                        match run_seal(&job) {
                            Ok(outcome) => {
                                orphans += outcome.orphans_removed;
                                break;
                            }
                            Err(error) => {
                                assert_eq!(error.operation, "rename");
                                failures += 1;
                                // The only leftover is the one temp file, never more.
                                assert!(
                                    names(directory.path()).len() <= 2,
                                    "{:?}",
                                    names(directory.path())
                                );
                            }
                        }
                    }
                    assert_eq!(failures, 3);
                    assert_eq!(orphans, 1);
                    assert_eq!(
                        names(directory.path()),
                        ["00000000000000000009.idx", "00000000000000000009.log"]
                    );
                    scenario.teardown();
                },
            );
        }

        #[test]
        fn injected_failures_are_io_errors() {
            crate::run_isolated(module_path!(), "injected_failures_are_io_errors", || {
                let scenario = fail::FailScenario::setup();
                let directory = tempfile::tempdir().unwrap();
                let file = SegmentFile::create(directory.path(), Offset(0)).unwrap();
                fail::cfg("storage::write", "1*return").unwrap();
                assert_eq!(write_at(&file, 0, b"x").unwrap_err().operation, "write");
                fail::cfg("storage::fsync", "1*return").unwrap();
                assert_eq!(sync_data(&file).unwrap_err().operation, "fsync");
                fail::cfg("storage::delete", "1*return").unwrap();
                assert_eq!(
                    delete_file(&directory.path().join("x"))
                        .unwrap_err()
                        .operation,
                    "delete"
                );
                fail::cfg("storage::create", "1*return").unwrap();
                assert_eq!(
                    SegmentFile::create(directory.path(), Offset(1))
                        .unwrap_err()
                        .operation,
                    "create"
                );
                scenario.teardown();
            });
        }
    }
}
