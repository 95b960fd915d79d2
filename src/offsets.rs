//! Committed consumer offsets: durable, per (group, topic, partition), and
//! never moving backwards.
//!
//! This is the one place committed offsets live. The consumer-group
//! coordinator (stream-processing issue) will own the store and be its only
//! writer; a Kafka-protocol front end will reach it through that
//! coordinator, not through a second copy.
//!
//! A committed offset is the *next* offset to read. A commit needs a
//! [`CommitToken`], which only the crate can build: the pipeline builds one
//! when a batch's sink write has completed, so an offset can never be
//! committed for a batch that did not reach its sink (LESSONS.md, section 1).
//!
//! # Layout (sled tree `consumer_offsets`)
//!
//! | part  | bytes                                           |
//! |-------|-------------------------------------------------|
//! | key   | group length u16 BE, group, topic length u16 BE, topic, partition u32 BE |
//! | value | next offset u64 LE                              |
//!
//! The store is flushed (sled `flush`, an fsync) before a commit returns.

use crate::types::{Offset, PartitionId};

/// Longest group name, in bytes (Kafka has no limit; a bound keeps keys small).
pub const GROUP_NAME_BYTES_MAX: usize = 255;
/// Name of the sled tree.
const TREE: &str = "consumer_offsets";

/// Proof that the records below `next_offset` of one partition reached their
/// sink for `group`: the only thing that allows a commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitToken {
    group: String,
    topic: String,
    partition: PartitionId,
    next_offset: Offset,
}

impl CommitToken {
    /// Built where a sink write has completed; nowhere else.
    pub(crate) fn after_sink_write(
        group: &str,
        topic: &str,
        partition: PartitionId,
        next_offset: Offset,
    ) -> CommitToken {
        CommitToken {
            group: group.to_owned(),
            topic: topic.to_owned(),
            partition,
            next_offset,
        }
    }

    /// The offset it allows committing (the next offset to read).
    pub fn next_offset(&self) -> Offset {
        self.next_offset
    }

    /// The group it commits for.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The partition.
    pub fn partition(&self) -> PartitionId {
        self.partition
    }
}

/// State changes committed in the same transaction as an offset: keys and
/// new values (`None` removes) of one sled tree.
pub(crate) struct StateChanges<'a> {
    pub(crate) tree: &'a sled::Tree,
    pub(crate) changes: &'a [(Vec<u8>, Option<Vec<u8>>)],
}

/// Why a commit or a lookup failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OffsetError {
    /// The commit would move the group's offset backwards. Final for that
    /// token; nothing changed.
    #[error("group {group:?}, topic {topic} partition {partition}: offset {requested} is behind the committed {committed}")]
    Backwards {
        /// Group.
        group: String,
        /// Topic.
        topic: String,
        /// Partition.
        partition: PartitionId,
        /// Already committed.
        committed: Offset,
        /// Asked for.
        requested: Offset,
    },
    /// The group name is empty or longer than [`GROUP_NAME_BYTES_MAX`]. Final.
    #[error("invalid group name {0:?}: 1 to 255 bytes")]
    InvalidGroup(String),
    /// A stored value is not 8 bytes: damage, reported, never guessed. Final
    /// until repaired.
    #[error("stored offset of {0} is damaged ({1} bytes, expected 8)")]
    Damaged(String, usize),
    /// The store failed (I/O). Retryable; nothing is acknowledged.
    #[error("offset store: {0}")]
    Storage(String),
}

/// The committed offsets of every group, in the runtime's metadata store.
/// Clones share the store; only the group coordinator commits.
#[derive(Clone)]
pub struct OffsetStore {
    tree: sled::Tree,
}

impl OffsetStore {
    /// Opens the offsets tree of `database` (the runtime's metadata store).
    pub(crate) fn open(database: &sled::Db) -> Result<OffsetStore, OffsetError> {
        let tree = database.open_tree(TREE).map_err(storage)?;
        Ok(OffsetStore { tree })
    }

    /// The committed next offset of `group` on a partition, if any.
    pub fn committed(
        &self,
        group: &str,
        topic: &str,
        partition: PartitionId,
    ) -> Result<Option<Offset>, OffsetError> {
        let key = key(group, topic, partition)?;
        match self.tree.get(&key).map_err(storage)? {
            None => Ok(None),
            Some(value) => decode(&value, group, topic, partition).map(Some),
        }
    }

    /// Commits the token's offset durably (flushed before returning).
    /// Committing the offset already stored is a no-op; a lower one is
    /// refused with [`OffsetError::Backwards`].
    #[cfg(test)]
    pub(crate) fn commit(&self, token: &CommitToken) -> Result<Offset, OffsetError> {
        self.commit_with_state(token, None)
    }

    /// Commits the token's offset and, in the same sled transaction, the
    /// keyed state that is consistent with it: after a crash either both
    /// are stored or neither. Flushed (fsync) before returning. A lower
    /// offset than the stored one is refused and nothing is written.
    pub(crate) fn commit_with_state(
        &self,
        token: &CommitToken,
        state: Option<StateChanges<'_>>,
    ) -> Result<Offset, OffsetError> {
        use sled::transaction::{ConflictableTransactionError, TransactionError};
        use sled::Transactional;
        let CommitToken {
            group,
            topic,
            partition,
            next_offset,
        } = token;
        let key = key(group, topic, *partition)?;
        let new_value = next_offset.0.to_le_bytes();
        let check = |current: Option<sled::IVec>| -> Result<bool, OffsetError> {
            let Some(value) = current else {
                return Ok(true);
            };
            let committed = decode(&value, group, topic, *partition)?;
            if *next_offset < committed {
                return Err(OffsetError::Backwards {
                    group: group.clone(),
                    topic: topic.clone(),
                    partition: *partition,
                    committed,
                    requested: *next_offset,
                });
            }
            Ok(*next_offset > committed)
        };
        let result = match &state {
            None => self.tree.transaction(|offsets| {
                if check(offsets.get(&key)?).map_err(ConflictableTransactionError::Abort)? {
                    offsets.insert(key.as_slice(), &new_value[..])?;
                }
                Ok(())
            }),
            Some(state) => (&self.tree, state.tree).transaction(|(offsets, tree)| {
                check(offsets.get(&key)?).map_err(ConflictableTransactionError::Abort)?;
                offsets.insert(key.as_slice(), &new_value[..])?;
                for (state_key, value) in state.changes {
                    match value {
                        Some(value) => tree.insert(state_key.as_slice(), value.as_slice())?,
                        None => tree.remove(state_key.as_slice())?,
                    };
                }
                Ok(())
            }),
        };
        match result {
            Ok(()) => {}
            Err(TransactionError::Abort(error)) => return Err(error),
            Err(TransactionError::Storage(error)) => return Err(storage(error)),
        }
        // Flushes the whole store (sled has one log): the commit is durable.
        self.tree.flush().map_err(storage)?;
        Ok(*next_offset)
    }
}

fn storage(error: sled::Error) -> OffsetError {
    OffsetError::Storage(error.to_string())
}

fn key(group: &str, topic: &str, partition: PartitionId) -> Result<Vec<u8>, OffsetError> {
    if group.is_empty() || group.len() > GROUP_NAME_BYTES_MAX {
        return Err(OffsetError::InvalidGroup(group.to_owned()));
    }
    let mut key = Vec::with_capacity(8 + group.len() + topic.len());
    key.extend_from_slice(&(group.len() as u16).to_be_bytes());
    key.extend_from_slice(group.as_bytes());
    key.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    key.extend_from_slice(topic.as_bytes());
    key.extend_from_slice(&partition.0.to_be_bytes());
    Ok(key)
}

fn decode(
    value: &[u8],
    group: &str,
    topic: &str,
    partition: PartitionId,
) -> Result<Offset, OffsetError> {
    let bytes: [u8; 8] = value.try_into().map_err(|_| {
        OffsetError::Damaged(format!("group {group:?} {topic}-{partition}"), value.len())
    })?;
    Ok(Offset(u64::from_le_bytes(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn database(directory: &std::path::Path) -> sled::Db {
        sled::Config::new()
            .path(directory.join("meta"))
            .open()
            .unwrap()
    }

    fn token(group: &str, partition: u32, offset: u64) -> CommitToken {
        CommitToken::after_sink_write(group, "events", PartitionId(partition), Offset(offset))
    }

    #[test]
    fn commits_are_durable_across_a_reopen() {
        let directory = tempfile::tempdir().unwrap();
        {
            let store = OffsetStore::open(&database(directory.path())).unwrap();
            assert_eq!(store.committed("g", "events", PartitionId(0)), Ok(None));
            assert_eq!(store.commit(&token("g", 0, 42)), Ok(Offset(42)));
        }
        let store = OffsetStore::open(&database(directory.path())).unwrap();
        assert_eq!(
            store.committed("g", "events", PartitionId(0)),
            Ok(Some(Offset(42)))
        );
    }

    #[test]
    fn a_commit_never_moves_backwards_and_repeating_one_is_harmless() {
        let directory = tempfile::tempdir().unwrap();
        let store = OffsetStore::open(&database(directory.path())).unwrap();
        store.commit(&token("g", 0, 100)).unwrap();
        assert_eq!(store.commit(&token("g", 0, 100)), Ok(Offset(100)));
        assert!(matches!(
            store.commit(&token("g", 0, 99)),
            Err(OffsetError::Backwards {
                committed: Offset(100),
                requested: Offset(99),
                ..
            })
        ));
        assert_eq!(
            store.committed("g", "events", PartitionId(0)),
            Ok(Some(Offset(100)))
        );
        store.commit(&token("g", 0, 101)).unwrap();
        assert_eq!(
            store.committed("g", "events", PartitionId(0)),
            Ok(Some(Offset(101)))
        );
    }

    #[test]
    fn groups_topics_and_partitions_are_independent() {
        let directory = tempfile::tempdir().unwrap();
        let store = OffsetStore::open(&database(directory.path())).unwrap();
        store.commit(&token("a", 0, 5)).unwrap();
        store.commit(&token("a", 1, 7)).unwrap();
        store.commit(&token("ab", 0, 9)).unwrap();
        assert_eq!(
            store.committed("a", "events", PartitionId(0)),
            Ok(Some(Offset(5)))
        );
        assert_eq!(
            store.committed("a", "events", PartitionId(1)),
            Ok(Some(Offset(7)))
        );
        assert_eq!(
            store.committed("ab", "events", PartitionId(0)),
            Ok(Some(Offset(9)))
        );
        assert_eq!(store.committed("a", "other", PartitionId(0)), Ok(None));
    }

    #[test]
    fn bad_group_names_and_damaged_values_are_errors_not_panics() {
        let directory = tempfile::tempdir().unwrap();
        let database = database(directory.path());
        let store = OffsetStore::open(&database).unwrap();
        assert!(matches!(
            store.commit(&token("", 0, 1)),
            Err(OffsetError::InvalidGroup(_))
        ));
        let long = "g".repeat(GROUP_NAME_BYTES_MAX + 1);
        assert!(matches!(
            store.committed(&long, "events", PartitionId(0)),
            Err(OffsetError::InvalidGroup(_))
        ));
        let tree = database.open_tree(TREE).unwrap();
        tree.insert(key("g", "events", PartitionId(3)).unwrap(), &b"short"[..])
            .unwrap();
        assert!(matches!(
            store.committed("g", "events", PartitionId(3)),
            Err(OffsetError::Damaged(_, 5))
        ));
        assert!(matches!(
            store.commit(&token("g", 3, 1)),
            Err(OffsetError::Damaged(_, 5))
        ));
    }
}
