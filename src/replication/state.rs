//! The Raft state of one replicated partition: `raft.state` beside its
//! segments.
//!
//! Two 4 KiB slots, written alternately, so a torn write never loses the
//! previous state. A slot is `magic "MRRS"`, `seq` u64, `len` u32, `crc`
//! u32 (CRC-32C of seq, len and payload), all little-endian, then `len`
//! bytes of payload: the [`PersistedState`], bincode-encoded. The valid
//! slot with the larger `seq` wins. The file is created with a valid first
//! slot and fsynced before anything else is written, so a file with no
//! valid slot is damage, reported, never reset.

use crate::storage::io::{IoError, StateWrite};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// File name of the Raft state in a partition directory.
pub const STATE_FILE: &str = "raft.state";
const SLOT_BYTES: usize = 4096;
const SLOT_HEADER_BYTES: usize = 20;
const MAGIC: [u8; 4] = *b"MRRS";

/// What a replica must find again after a restart.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistedState {
    /// Raft's current term.
    pub term: u64,
    /// Who this node voted for in `term` (0: nobody).
    pub vote: u64,
    /// Highest index known committed.
    pub commit: u64,
    /// Highest index applied (configuration changes take effect on apply).
    pub applied: u64,
    /// The configuration, as raft-rs's `ConfState`, protobuf-encoded.
    pub conf_state: Vec<u8>,
    /// Index and term of the entry just before the first frame of the log
    /// (0 and 0 for a log that starts at the beginning).
    pub anchor_index: u64,
    /// Term of that entry.
    pub anchor_term: u64,
    /// The offset where the entry after the anchor starts.
    pub anchor_offset: u64,
}

/// Why the state file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading or creating it failed.
    #[error(transparent)]
    Io(#[from] IoError),
    /// Neither slot holds a valid state.
    #[error("{path}: no valid Raft state in either slot ({reason}); the file is damaged")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What was wrong with the slots.
        reason: String,
    },
}

/// The open state file of one replica.
#[derive(Debug)]
pub struct StateFile {
    file: Arc<File>,
    path: PathBuf,
    seq: u64,
}

impl StateFile {
    /// Opens the state file in `directory`, or creates it holding `initial`
    /// (fsynced, as is the directory). Returns the file and the state it
    /// holds, or `None` if it was just created.
    pub fn open(
        directory: &Path,
        initial: &PersistedState,
    ) -> Result<(StateFile, Option<PersistedState>), StateError> {
        let path = directory.join(STATE_FILE);
        let io = |operation: &'static str| {
            let path = path.clone();
            move |source| IoError {
                operation,
                path,
                source,
            }
        };
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io("open"))?;
        let length = file.metadata().map_err(io("stat"))?.len();
        let mut state_file = StateFile {
            file: Arc::new(file),
            path: path.clone(),
            seq: 0,
        };
        if !existed || length == 0 {
            let write = state_file.write(initial);
            write.write()?;
            write.sync()?;
            crate::storage::io::sync_directory(directory)?;
            return Ok((state_file, None));
        }
        let mut bytes = vec![0u8; (SLOT_BYTES * 2).min(length as usize)];
        state_file
            .file
            .read_exact_at(&mut bytes, 0)
            .map_err(io("read"))?;
        let mut best: Option<(u64, PersistedState)> = None;
        let mut reasons = Vec::new();
        for (slot, chunk) in bytes.chunks(SLOT_BYTES).enumerate() {
            match decode_slot(chunk) {
                Ok((seq, state)) => {
                    if best.as_ref().is_none_or(|(best_seq, _)| seq > *best_seq) {
                        best = Some((seq, state));
                    }
                }
                Err(reason) => reasons.push(format!("slot {slot}: {reason}")),
            }
        }
        match best {
            Some((seq, state)) => {
                state_file.seq = seq;
                Ok((state_file, Some(state)))
            }
            None => Err(StateError::Damaged {
                path,
                reason: reasons.join("; "),
            }),
        }
    }

    /// The write of `state` into the next slot (run by the partition's
    /// writer thread, or inline by [`StateWrite::write`] and `sync`).
    pub fn write(&mut self, state: &PersistedState) -> StateWrite {
        self.seq += 1;
        let payload = bincode::serde::encode_to_vec(state, bincode::config::standard())
            .expect("a PersistedState always encodes");
        assert!(
            payload.len() <= SLOT_BYTES - SLOT_HEADER_BYTES,
            "Raft state of {} bytes does not fit a slot",
            payload.len()
        );
        let mut bytes = Vec::with_capacity(SLOT_HEADER_BYTES + payload.len());
        bytes.extend_from_slice(&MAGIC);
        bytes.extend_from_slice(&self.seq.to_le_bytes());
        bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        let crc = crc32c::crc32c_append(crc32c::crc32c(&bytes[4..16]), &payload);
        bytes.extend_from_slice(&crc.to_le_bytes());
        bytes.extend_from_slice(&payload);
        StateWrite {
            file: Arc::clone(&self.file),
            path: self.path.clone(),
            position: (self.seq % 2) * SLOT_BYTES as u64,
            bytes,
        }
    }
}

fn decode_slot(slot: &[u8]) -> Result<(u64, PersistedState), String> {
    if slot.len() < SLOT_HEADER_BYTES {
        return Err("shorter than a slot header".to_string());
    }
    if slot[0..4] != MAGIC {
        return Err("bad magic".to_string());
    }
    let seq = u64::from_le_bytes(slot[4..12].try_into().expect("8 bytes"));
    let len = u32::from_le_bytes(slot[12..16].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(slot[16..20].try_into().expect("4 bytes"));
    if len > slot.len() - SLOT_HEADER_BYTES {
        return Err(format!("payload length {len} runs past the slot"));
    }
    let payload = &slot[SLOT_HEADER_BYTES..SLOT_HEADER_BYTES + len];
    if crc32c::crc32c_append(crc32c::crc32c(&slot[4..16]), payload) != crc {
        return Err("checksum mismatch".to_string());
    }
    let (state, _) = bincode::serde::decode_from_slice(
        payload,
        bincode::config::standard().with_limit::<SLOT_BYTES>(),
    )
    .map_err(|error| format!("undecodable payload: {error}"))?;
    Ok((seq, state))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(term: u64) -> PersistedState {
        PersistedState {
            term,
            vote: 2,
            commit: 7,
            ..PersistedState::default()
        }
    }

    fn persist(file: &mut StateFile, value: &PersistedState) {
        let write = file.write(value);
        write.write().unwrap();
        write.sync().unwrap();
    }

    #[test]
    fn the_latest_state_survives_a_reopen_and_a_torn_slot() {
        let dir = tempfile::tempdir().unwrap();
        let (mut file, found) = StateFile::open(dir.path(), &state(0)).unwrap();
        assert_eq!(found, None);
        persist(&mut file, &state(1));
        persist(&mut file, &state(2));
        drop(file);
        let (mut file, found) = StateFile::open(dir.path(), &state(0)).unwrap();
        assert_eq!(found, Some(state(2)));
        // A torn write of the next slot: the previous state is still there.
        let mut torn = file.write(&state(3));
        torn.bytes.truncate(10);
        torn.write().unwrap();
        drop(file);
        let (_, found) = StateFile::open(dir.path(), &state(0)).unwrap();
        assert_eq!(found, Some(state(2)));
    }

    #[test]
    fn a_file_with_no_valid_slot_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (mut file, _) = StateFile::open(dir.path(), &state(0)).unwrap();
        persist(&mut file, &state(1));
        drop(file);
        let path = dir.path().join(STATE_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[20] ^= 1;
        bytes[SLOT_BYTES + 20] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let error = StateFile::open(dir.path(), &state(0)).unwrap_err();
        assert!(error.to_string().contains("checksum mismatch"), "{error}");
    }
}
