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

use crate::types::Offset;
use std::fs::File;
use std::path::{Path, PathBuf};

/// Bytes of the segment file header.
pub const SEGMENT_HEADER_BYTES: u64 = 16;

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
}

/// The 16-byte header every segment file starts with.
pub fn encode_header() -> [u8; SEGMENT_HEADER_BYTES as usize] {
    todo!()
}

/// Checks a segment file header (magic, version, CRC); the error names the rule broken.
pub fn check_header(bytes: &[u8]) -> Result<(), String> {
    let _ = bytes;
    todo!()
}
