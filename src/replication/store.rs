//! [`EntryStore`]: raft-rs's `Storage` over a partition log, so the
//! partition's log *is* its Raft log and data is written once.
//!
//! Every Raft entry is exactly one frame of the partition log:
//! - a normal entry with data: the Kafka RecordBatch it carries, stored
//!   with its base offset and leader epoch (= the entry's term) set;
//! - the empty entry a new leader appends: a control batch of type
//!   [`CONTROL_LEADER_CHANGE`];
//! - a configuration change: a control batch of type
//!   [`CONTROL_RAFT_CONF_CHANGE`] whose payload is the entry type (one
//!   byte) and the raft-rs message.
//!
//! So the entry at Raft index `i` is the `(i - anchor)`th frame after the
//! anchor, and its offsets follow from the frames before it: replicas that
//! agree on the log agree on every offset. The store keeps one small
//! [`EntryMeta`] per entry (term, end offset, where the frame is) and a
//! bounded cache of recent entries, so a leader feeds followers from
//! memory and reads older entries back from the files.

use super::ReplicaError;
use crate::storage::batch::{
    control_record, validate_client_batch, CONTROL_LEADER_CHANGE, CONTROL_RAFT_CONF_CHANGE,
};
use crate::storage::{BatchHeader, FrameLocation, IoJob, PartitionLog};
use crate::types::{Offset, Term};
use protobuf::Message as _;
use raft::prelude::{ConfState, Entry, EntryType, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};
use std::collections::VecDeque;

/// Recent entries kept in memory for followers, beyond the unwritten ones.
const CACHE_BYTES_MAX: usize = 32 * 1024 * 1024;

/// What the store knows of one entry.
#[derive(Clone, Debug)]
struct EntryMeta {
    term: u64,
    /// The offset after the entry's frame.
    next_offset: Offset,
    location: FrameLocation,
}

/// The Raft log of one replicated partition. See the module docs.
#[derive(Debug)]
pub struct EntryStore {
    hard_state: HardState,
    conf_state: ConfState,
    /// The entry before the first one held (index 0, term 0 for a log that
    /// starts at the beginning).
    anchor_index: u64,
    anchor_term: u64,
    /// The offset where the entry after the anchor starts.
    anchor_offset: Offset,
    metas: VecDeque<EntryMeta>,
    /// Recent entries, the last `cache.len()` of the log.
    cache: VecDeque<Entry>,
    cache_bytes: usize,
    /// Entries up to this index are on disk (the cache may drop them).
    durable_index: u64,
}

impl EntryStore {
    /// A store over `log`, whose frames from `anchor_offset` on are the
    /// entries after (`anchor_index`, `anchor_term`).
    pub fn open(
        log: &PartitionLog,
        hard_state: HardState,
        conf_state: ConfState,
        anchor: (u64, u64, Offset),
    ) -> Result<EntryStore, ReplicaError> {
        let (anchor_index, anchor_term, anchor_offset) = anchor;
        let frames = log
            .frame_locations(anchor_offset)
            .map_err(|error| ReplicaError::Storage(error.to_string()))?;
        let mut metas = VecDeque::with_capacity(frames.len());
        let mut expected = anchor_offset;
        for (header, location) in frames {
            if header.base_offset != expected {
                return Err(ReplicaError::Storage(format!(
                    "Raft entry {} should start at offset {expected}, but the frame there starts at {}",
                    anchor_index + metas.len() as u64 + 1,
                    header.base_offset
                )));
            }
            expected = header.next_offset();
            metas.push_back(EntryMeta {
                term: u64::from(header.leader_epoch.0),
                next_offset: expected,
                location,
            });
        }
        let last_index = anchor_index + metas.len() as u64;
        Ok(EntryStore {
            hard_state,
            conf_state,
            anchor_index,
            anchor_term,
            anchor_offset,
            metas,
            cache: VecDeque::new(),
            cache_bytes: 0,
            durable_index: last_index,
        })
    }

    /// The index of the last entry held.
    pub fn last_index(&self) -> u64 {
        self.anchor_index + self.metas.len() as u64
    }

    /// The offset after entry `index` (the anchor's offset for the anchor).
    pub fn next_offset_of(&self, index: u64) -> Option<Offset> {
        if index == self.anchor_index {
            return Some(self.anchor_offset);
        }
        self.meta(index).map(|meta| meta.next_offset)
    }

    /// The offsets of entry `index`: first and last.
    pub fn offsets_of(&self, index: u64) -> Option<(Offset, Offset)> {
        let next = self.meta(index)?.next_offset;
        let base = self.next_offset_of(index - 1)?;
        Some((base, Offset(next.0 - 1)))
    }

    /// The hard state held (what was last handed to the writer).
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// The configuration held.
    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// The anchor: index, term and offset.
    pub fn anchor(&self) -> (u64, u64, Offset) {
        (self.anchor_index, self.anchor_term, self.anchor_offset)
    }

    pub(crate) fn set_hard_state(&mut self, hard_state: HardState) {
        self.hard_state = hard_state;
    }

    pub(crate) fn set_conf_state(&mut self, conf_state: ConfState) {
        self.conf_state = conf_state;
    }

    fn meta(&self, index: u64) -> Option<&EntryMeta> {
        let position = index.checked_sub(self.anchor_index + 1)?;
        self.metas.get(position as usize)
    }

    /// Appends `entries` (a ready's, contiguous) to `log`, first truncating
    /// a conflicting suffix when they start at or before the last index.
    /// Returns the I/O to run and whether a suffix was cut; pushes the
    /// header of each data batch stored to `appended`. The owner must have
    /// no I/O of `log` in flight.
    pub(crate) fn append(
        &mut self,
        log: &mut PartitionLog,
        entries: &[Entry],
        now_ms: i64,
        appended: &mut Vec<BatchHeader>,
    ) -> Result<(Vec<IoJob>, bool), ReplicaError> {
        let Some(first) = entries.first() else {
            return Ok((Vec::new(), false));
        };
        if first.index <= self.anchor_index {
            return Err(ReplicaError::Storage(format!(
                "entry {} is at or before the log's first entry {}: it cannot be replaced",
                first.index,
                self.anchor_index + 1
            )));
        }
        let truncated = first.index <= self.last_index();
        if truncated {
            self.truncate_from(log, first.index)?;
        } else if first.index != self.last_index() + 1 {
            return Err(ReplicaError::Storage(format!(
                "entry {} does not follow the last entry {}",
                first.index,
                self.last_index()
            )));
        }
        let mut jobs = Vec::with_capacity(entries.len() + 1);
        for entry in entries {
            let term = Term(u32::try_from(entry.term).map_err(|_| {
                ReplicaError::Storage(format!("term {} does not fit a leader epoch", entry.term))
            })?);
            let outcome = match entry.entry_type {
                EntryType::EntryNormal if entry.data.is_empty() => {
                    log.append_control(term, CONTROL_LEADER_CHANGE, &[], now_ms)
                }
                EntryType::EntryNormal => {
                    let header = validate_client_batch(&entry.data).map_err(|error| {
                        ReplicaError::Storage(format!("entry {}: {error}", entry.index))
                    })?;
                    let outcome = log.append_batch(&entry.data, &header, term, now_ms);
                    if let Ok(outcome) = &outcome {
                        appended.push(BatchHeader {
                            base_offset: outcome.base_offset,
                            leader_epoch: term,
                            ..header
                        });
                    }
                    outcome
                }
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    let mut payload = Vec::with_capacity(1 + entry.data.len());
                    payload.push(entry.entry_type as u8);
                    payload.extend_from_slice(&entry.data);
                    log.append_control(term, CONTROL_RAFT_CONF_CHANGE, &payload, now_ms)
                }
            }
            .map_err(|error| ReplicaError::Storage(format!("entry {}: {error}", entry.index)))?;
            jobs.extend(outcome.jobs);
            self.metas.push_back(EntryMeta {
                term: entry.term,
                next_offset: log.log_end_offset(),
                location: outcome.location,
            });
            self.cache_bytes += entry.data.len();
            self.cache.push_back(entry.clone());
        }
        self.trim_cache();
        Ok((jobs, truncated))
    }

    /// Removes entries `from` and after, from the log and the store.
    fn truncate_from(&mut self, log: &mut PartitionLog, from: u64) -> Result<(), ReplicaError> {
        let offset = self
            .next_offset_of(from - 1)
            .expect("from - 1 is between the anchor and the last index");
        log.truncate_suffix(offset).map_err(|error| {
            ReplicaError::Storage(format!("truncating from entry {from}: {error}"))
        })?;
        let keep = (from - self.anchor_index - 1) as usize;
        self.metas.truncate(keep);
        while self.cache.back().is_some_and(|entry| entry.index >= from) {
            let entry = self.cache.pop_back().expect("checked");
            self.cache_bytes -= entry.data.len();
        }
        self.durable_index = self.durable_index.min(from - 1);
        Ok(())
    }

    /// Entries up to `index` are on disk.
    pub(crate) fn mark_durable(&mut self, index: u64) {
        self.durable_index = self.durable_index.max(index.min(self.last_index()));
        self.trim_cache();
    }

    fn trim_cache(&mut self) {
        while self.cache_bytes > CACHE_BYTES_MAX {
            match self.cache.front() {
                Some(entry) if entry.index <= self.durable_index => {
                    self.cache_bytes -= entry.data.len();
                    self.cache.pop_front();
                }
                _ => break,
            }
        }
    }

    fn entry_at(&self, index: u64) -> Result<Entry, StorageError> {
        if let Some(first) = self.cache.front() {
            if index >= first.index {
                return Ok(self.cache[(index - first.index) as usize].clone());
            }
        }
        let meta = self.meta(index).ok_or(StorageError::Unavailable)?;
        let view = meta
            .location
            .read()
            .map_err(|error| StorageError::Other(Box::new(error)))?;
        let mut entry = Entry {
            term: meta.term,
            index,
            ..Entry::default()
        };
        match control_record(&view).map_err(|error| StorageError::Other(Box::new(error)))? {
            None => entry.data = view.record_batch(),
            Some((CONTROL_LEADER_CHANGE, _)) => {}
            Some((CONTROL_RAFT_CONF_CHANGE, payload)) if !payload.is_empty() => {
                entry.entry_type = if payload[0] == EntryType::EntryConfChange as u8 {
                    EntryType::EntryConfChange
                } else {
                    EntryType::EntryConfChangeV2
                };
                entry.data = payload.slice(1..);
            }
            Some((other, _)) => {
                return Err(StorageError::Other(
                    format!("entry {index}: unknown control batch type {other}").into(),
                ))
            }
        }
        Ok(entry)
    }
}

impl raft::Storage for EntryStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState {
            hard_state: self.hard_state.clone(),
            conf_state: self.conf_state.clone(),
        })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.anchor_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last_index() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let max_size = max_size.into();
        let mut entries = Vec::with_capacity((high - low).min(1024) as usize);
        let mut size = 0u64;
        for index in low..high {
            let entry = self.entry_at(index).map_err(raft::Error::Store)?;
            size += u64::from(entry.compute_size());
            if !entries.is_empty() && max_size.is_some_and(|max| size > max) {
                break;
            }
            entries.push(entry);
        }
        Ok(entries)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        if index == self.anchor_index {
            return Ok(self.anchor_term);
        }
        if index < self.anchor_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        self.meta(index)
            .map(|meta| meta.term)
            .ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.anchor_index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(EntryStore::last_index(self))
    }

    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        // Followers behind the anchor catch up from sealed blocks; until
        // that transfer exists, the log keeps every entry since the anchor.
        Err(raft::Error::Store(
            StorageError::SnapshotTemporarilyUnavailable,
        ))
    }
}
