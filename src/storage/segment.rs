//! Segment files: the active segment (`.wal`) and sealed blocks (`.log`).
//!
//! # Layout
//!
//! | bytes    | field                                   |
//! |----------|-----------------------------------------|
//! | 0..8     | magic `b"MLRCSEG\0"`                    |
//! | 8..12    | format version, u32 LE (1)              |
//! | 12..16   | CRC-32C of bytes 0..12, u32 LE          |
//! | 16..     | frames ([`super::batch`]), back to back |

use super::io::IoError;
use crate::types::Offset;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Bytes of the segment file header.
pub const SEGMENT_HEADER_BYTES: u64 = 16;
/// Magic at the start of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"MLRCSEG\0";
/// The segment format version this code writes and reads.
pub const SEGMENT_VERSION: u32 = 1;

/// An open segment file, shared (`Arc`) between the log, its writer and
/// readers. Writers use positional writes and readers positional reads, so
/// there is no shared cursor to guard.
#[derive(Debug)]
pub struct SegmentFile {
    /// The partition directory.
    pub directory: PathBuf,
    /// First offset the segment can hold (its name).
    pub base_offset: Offset,
    /// The open file (read and write).
    pub file: File,
    /// Set once the file is obsolete (replaced by a compaction and renamed
    /// to this path): the last holder to drop it unlinks it.
    delete_on_drop: OnceLock<PathBuf>,
}

impl SegmentFile {
    /// Path of the active-segment file for `base_offset`.
    pub fn wal_path(directory: &Path, base_offset: Offset) -> PathBuf {
        directory.join(format!("{:020}.wal", base_offset.0))
    }
    /// Path of the sealed-block file for `base_offset`.
    pub fn log_path(directory: &Path, base_offset: Offset) -> PathBuf {
        directory.join(format!("{:020}.log", base_offset.0))
    }
    /// Path of the index file for `base_offset`.
    pub fn index_path(directory: &Path, base_offset: Offset) -> PathBuf {
        directory.join(format!("{:020}.idx", base_offset.0))
    }

    /// Creates a new, empty active segment `{base:020}.wal` in `directory`
    /// (read and write, `O_CREAT | O_EXCL`: an existing file is an error, never
    /// silently reused). Writes nothing: the caller writes [`encode_header`]
    /// with the first frames and fsyncs the directory. Failpoint `storage::create`.
    pub fn create(directory: &Path, base_offset: Offset) -> Result<SegmentFile, IoError> {
        let path = SegmentFile::wal_path(directory, base_offset);
        fail::fail_point!("storage::create", |_| Err(IoError {
            operation: "create",
            path: path.clone(),
            source: std::io::Error::other("injected create failure"),
        }));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|source| IoError {
                operation: "create",
                path: path.clone(),
                source,
            })?;
        Ok(SegmentFile {
            directory: directory.to_path_buf(),
            base_offset,
            file,
            delete_on_drop: OnceLock::new(),
        })
    }

    /// Marks the file obsolete: once the last `Arc` holding it drops (the
    /// log's block or a reader's `ReadPlan`), the file at `path` (its name
    /// after the compaction renamed it, e.g. `….log.deleted`) is unlinked.
    /// Readers planned before a swap thus keep reading the old bytes. Only
    /// the first call counts. If the process dies first, recovery removes
    /// `*.deleted` files at open.
    pub fn delete_on_drop(&self, path: PathBuf) {
        if let Err(path) = self.delete_on_drop.set(path) {
            tracing::warn!(file = %path.display(), "segment file already marked for deletion");
        }
    }

    /// The path [`SegmentFile::delete_on_drop`] marked, if any.
    pub fn marked_for_deletion(&self) -> Option<&Path> {
        self.delete_on_drop.get().map(PathBuf::as_path)
    }

    /// Opens an existing segment file at `path` (a `.wal` or a `.log`) for
    /// reading and writing.
    pub fn open(
        path: &Path,
        directory: &Path,
        base_offset: Offset,
    ) -> Result<SegmentFile, IoError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| IoError {
                operation: "open",
                path: path.to_path_buf(),
                source,
            })?;
        Ok(SegmentFile {
            directory: directory.to_path_buf(),
            base_offset,
            file,
            delete_on_drop: OnceLock::new(),
        })
    }
}

impl Drop for SegmentFile {
    fn drop(&mut self) {
        let Some(path) = self.delete_on_drop.take() else {
            return;
        };
        // Nobody can wait for a drop: a failure is logged, and recovery
        // sweeps the `.deleted` file at the next open.
        match std::fs::remove_file(&path) {
            Ok(()) => tracing::debug!(file = %path.display(), "deleted an obsolete segment file"),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                tracing::warn!(file = %path.display(), %error, "could not delete an obsolete segment file")
            }
        }
    }
}

/// The 16-byte header every segment file starts with.
pub fn encode_header() -> [u8; SEGMENT_HEADER_BYTES as usize] {
    let mut header = [0u8; SEGMENT_HEADER_BYTES as usize];
    header[0..8].copy_from_slice(&SEGMENT_MAGIC);
    header[8..12].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    let crc = crc32c::crc32c(&header[0..12]);
    header[12..16].copy_from_slice(&crc.to_le_bytes());
    header
}

/// Checks a segment file header (magic, version, CRC); the error names the rule broken.
pub fn check_header(bytes: &[u8]) -> Result<(), String> {
    let Some(header) = bytes.get(..SEGMENT_HEADER_BYTES as usize) else {
        return Err(format!(
            "segment header needs {SEGMENT_HEADER_BYTES} bytes, have {}",
            bytes.len()
        ));
    };
    if header[0..8] != SEGMENT_MAGIC {
        return Err(format!("bad segment magic {:02x?}", &header[0..8]));
    }
    let stored = u32::from_le_bytes([header[12], header[13], header[14], header[15]]);
    let computed = crc32c::crc32c(&header[0..12]);
    if stored != computed {
        return Err(format!(
            "segment header checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
        ));
    }
    let version = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    if version != SEGMENT_VERSION {
        return Err(format!(
            "unsupported segment version {version} (expected {SEGMENT_VERSION})"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let header = encode_header();
        assert_eq!(&header[0..8], b"MLRCSEG\0");
        assert_eq!(
            u32::from_le_bytes([header[8], header[9], header[10], header[11]]),
            1
        );
        assert_eq!(check_header(&header), Ok(()));
        // Frames follow the header; check_header only looks at the first 16 bytes.
        let mut longer = header.to_vec();
        longer.extend_from_slice(b"MRF1....");
        assert_eq!(check_header(&longer), Ok(()));
    }

    #[test]
    fn every_bit_flip_is_detected() {
        let header = encode_header();
        for bit in 0..header.len() * 8 {
            let mut flipped = header;
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(
                check_header(&flipped).is_err(),
                "flip of bit {bit} not detected"
            );
        }
    }

    #[test]
    fn short_header_is_an_error() {
        let header = encode_header();
        for length in 0..header.len() {
            assert!(check_header(&header[..length]).is_err());
        }
    }

    #[test]
    fn wrong_version_with_valid_crc_is_refused() {
        let mut header = encode_header();
        header[8..12].copy_from_slice(&2u32.to_le_bytes());
        let crc = crc32c::crc32c(&header[0..12]);
        header[12..16].copy_from_slice(&crc.to_le_bytes());
        let error = check_header(&header).unwrap_err();
        assert!(error.contains("version"), "{error}");
    }

    #[test]
    fn create_is_exclusive_and_open_reopens() {
        let directory = tempfile::tempdir().unwrap();
        let segment = SegmentFile::create(directory.path(), Offset(42)).unwrap();
        assert_eq!(segment.base_offset, Offset(42));
        assert!(directory.path().join("00000000000000000042.wal").exists());
        // A second create of the same segment must not reuse (and clobber) it.
        let again = SegmentFile::create(directory.path(), Offset(42)).unwrap_err();
        assert_eq!(again.operation, "create");
        assert_eq!(again.source.kind(), std::io::ErrorKind::AlreadyExists);
        drop(segment);
        let path = SegmentFile::wal_path(directory.path(), Offset(42));
        let reopened = SegmentFile::open(&path, directory.path(), Offset(42)).unwrap();
        assert_eq!(reopened.directory, directory.path());
        let missing = SegmentFile::log_path(directory.path(), Offset(7));
        assert!(SegmentFile::open(&missing, directory.path(), Offset(7)).is_err());
    }
}
