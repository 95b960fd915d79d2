//! Committed consumer offsets: durable, per (group, topic, partition).
//!
//! This is the one place committed offsets live. The consumer-group
//! coordinator (actors/group.rs) owns the store and is its only writer;
//! the Kafka-protocol front end reaches it through that coordinator, not
//! through a second copy, so a Kafka consumer sees a pipeline's commits and
//! a pipeline sees a Kafka consumer's.
//!
//! A committed offset is the *next* offset to read. Two kinds of commit:
//!
//! - a pipeline's, which needs a [`CommitToken`], which only the crate can
//!   build: the pipeline builds one when a batch's sink write has completed,
//!   so an offset can never be committed for a batch that did not reach its
//!   sink (LESSONS.md, section 1). These never move backwards.
//! - a Kafka client's OffsetCommit ([`OffsetStore::commit_client_offsets`]),
//!   which, as in Kafka, may move an offset backwards (a consumer that seeks
//!   back and commits) and carries a metadata string.
//!
//! # Layout (sled tree `consumer_offsets`)
//!
//! | part  | bytes                                           |
//! |-------|-------------------------------------------------|
//! | key   | group length u16 BE, group, topic length u16 BE, topic, partition u32 BE |
//! | value | next offset u64 LE; then, only if a Kafka client stored metadata: the byte `1`, the metadata (UTF-8, at most [`METADATA_BYTES_MAX`] bytes) |
//!
//! An 8-byte value (all values written before metadata existed, and every
//! value a pipeline commit writes) has no metadata: a pipeline commit that
//! writes drops metadata a Kafka client stored with an earlier offset.
//!
//! The store is flushed (sled `flush`, an fsync) before a commit returns.

use crate::types::{Offset, PartitionId};

/// Keyed-state writes that go with a commit: (key, new value or `None` to delete).
pub(crate) type StateWrites = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// Longest group name, in bytes (Kafka has no limit; a bound keeps keys small).
pub const GROUP_NAME_BYTES_MAX: usize = 255;
/// Longest metadata string of a Kafka client's commit, in bytes (Kafka's
/// `offset.metadata.max.bytes` default).
pub const METADATA_BYTES_MAX: usize = 4096;
/// Name of the sled tree.
const TREE: &str = "consumer_offsets";
/// The byte after the offset of a value that carries metadata.
const VALUE_WITH_METADATA: u8 = 1;

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

/// One partition's entry of a Kafka client's OffsetCommit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ClientOffset<'a> {
    pub(crate) topic: &'a str,
    pub(crate) partition: PartitionId,
    pub(crate) next_offset: Offset,
    pub(crate) metadata: Option<&'a str>,
}

/// A committed offset and the metadata a Kafka client stored with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommittedOffset {
    /// The next offset to read.
    pub next_offset: Offset,
    /// The client's metadata string (`None`: none stored, e.g. a pipeline's commit).
    pub metadata: Option<String>,
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
    /// The topic name is longer than a key can hold (65,535 bytes). Final.
    #[error("invalid topic name: {0} bytes")]
    InvalidTopic(usize),
    /// A Kafka client's metadata is longer than [`METADATA_BYTES_MAX`]. Final.
    #[error("offset metadata of {0} bytes is longer than 4096")]
    MetadataTooLarge(usize),
    /// A stored value is neither 8 bytes nor 8 bytes, the metadata marker and
    /// valid metadata: damage, reported, never guessed. Final until repaired
    /// (a Kafka client's commit overwrites it).
    #[error("stored offset of {0} is damaged ({1} bytes, expected 8, or 9 and metadata)")]
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
        Ok(self
            .committed_with_metadata(group, topic, partition)?
            .map(|committed| committed.next_offset))
    }

    /// The committed next offset of `group` on a partition and the metadata
    /// a Kafka client stored with it, if any.
    pub(crate) fn committed_with_metadata(
        &self,
        group: &str,
        topic: &str,
        partition: PartitionId,
    ) -> Result<Option<CommittedOffset>, OffsetError> {
        let key = key(group, topic, partition)?;
        match self.tree.get(&key).map_err(storage)? {
            None => Ok(None),
            Some(value) => decode_value(&value, group, topic, partition).map(Some),
        }
    }

    /// Every committed partition of `group` (topic, partition, offset), in
    /// key order, at most `limit` of them. A damaged value is reported with
    /// `Err` in its place; a key that does not parse is skipped (it cannot
    /// have been written by this module).
    #[allow(clippy::type_complexity)]
    pub(crate) fn committed_in_group(
        &self,
        group: &str,
        limit: usize,
    ) -> Result<Vec<(String, PartitionId, Result<CommittedOffset, OffsetError>)>, OffsetError> {
        let prefix = group_prefix(group)?;
        let mut found = Vec::new();
        for entry in self.tree.scan_prefix(&prefix) {
            if found.len() >= limit {
                break;
            }
            let (key, value) = entry.map_err(storage)?;
            let Some((topic, partition)) = parse_key_rest(&key[prefix.len()..]) else {
                tracing::warn!(group, key = ?key, "offset store: a key that does not parse; skipped");
                continue;
            };
            let committed = decode_value(&value, group, &topic, partition);
            found.push((topic, partition, committed));
        }
        Ok(found)
    }

    /// The names of the groups with committed offsets, in key order (by
    /// name length, then bytes), at most `limit`. One seek per group, not
    /// one step per committed partition.
    pub(crate) fn group_names(&self, limit: usize) -> Result<Vec<String>, OffsetError> {
        let mut names = Vec::new();
        let mut from: Vec<u8> = Vec::new();
        while names.len() < limit {
            let Some(entry) = self.tree.range(from.as_slice()..).next() else {
                break;
            };
            let (key, _) = entry.map_err(storage)?;
            let Some((length, rest)) = key.split_first_chunk::<2>() else {
                // Shorter than any key written here: step past it.
                from = successor(&key);
                continue;
            };
            let length = usize::from(u16::from_be_bytes(*length));
            let Some(name) = rest.get(..length) else {
                from = successor(&key);
                continue;
            };
            let prefix_length = 2 + length;
            if let Ok(name) = std::str::from_utf8(name) {
                if !name.is_empty() {
                    names.push(name.to_owned());
                }
            }
            // Past every key of this group: the prefix, incremented.
            match prefix_end(&key[..prefix_length]) {
                Some(end) => from = end,
                None => break,
            }
        }
        Ok(names)
    }

    /// Whether `group` has a committed offset.
    pub(crate) fn has_group(&self, group: &str) -> Result<bool, OffsetError> {
        let prefix = group_prefix(group)?;
        match self.tree.scan_prefix(&prefix).next() {
            None => Ok(false),
            Some(entry) => entry.map(|_| true).map_err(storage),
        }
    }

    /// Stores a Kafka client's OffsetCommit: every entry in one sled
    /// transaction, flushed (fsync) before returning; all or nothing.
    /// Unlike a pipeline's commit, an offset may move backwards (Kafka
    /// allows a consumer that seeks back to commit the lower offset), and
    /// the metadata is stored with it. A damaged stored value is overwritten.
    pub(crate) fn commit_client_offsets(
        &self,
        group: &str,
        offsets: &[ClientOffset<'_>],
    ) -> Result<(), OffsetError> {
        use sled::transaction::TransactionError;
        let mut writes = Vec::with_capacity(offsets.len());
        for offset in offsets {
            let key = key(group, offset.topic, offset.partition)?;
            writes.push((key, encode_value(offset.next_offset, offset.metadata)?));
        }
        if writes.is_empty() {
            return Ok(());
        }
        let result: Result<(), TransactionError<OffsetError>> = self.tree.transaction(|tree| {
            for (key, value) in &writes {
                tree.insert(key.as_slice(), value.as_slice())?;
            }
            Ok(())
        });
        match result {
            Ok(()) => {}
            Err(TransactionError::Abort(error)) => return Err(error),
            Err(TransactionError::Storage(error)) => return Err(storage(error)),
        }
        self.tree.flush().map_err(storage)?;
        Ok(())
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

/// The key prefix every partition of `group` shares.
fn group_prefix(group: &str) -> Result<Vec<u8>, OffsetError> {
    if group.is_empty() || group.len() > GROUP_NAME_BYTES_MAX {
        return Err(OffsetError::InvalidGroup(group.to_owned()));
    }
    let mut prefix = Vec::with_capacity(2 + group.len());
    prefix.extend_from_slice(&(group.len() as u16).to_be_bytes());
    prefix.extend_from_slice(group.as_bytes());
    Ok(prefix)
}

/// The smallest key greater than `key`.
fn successor(key: &[u8]) -> Vec<u8> {
    let mut next = key.to_vec();
    next.push(0);
    next
}

/// The smallest key greater than every key starting with `prefix` (`None`:
/// there is none).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

fn key(group: &str, topic: &str, partition: PartitionId) -> Result<Vec<u8>, OffsetError> {
    let topic_length =
        u16::try_from(topic.len()).map_err(|_| OffsetError::InvalidTopic(topic.len()))?;
    let mut key = group_prefix(group)?;
    key.reserve(6 + topic.len());
    key.extend_from_slice(&topic_length.to_be_bytes());
    key.extend_from_slice(topic.as_bytes());
    key.extend_from_slice(&partition.0.to_be_bytes());
    Ok(key)
}

/// The topic and partition of a key, after the group prefix.
fn parse_key_rest(rest: &[u8]) -> Option<(String, PartitionId)> {
    let (length, rest) = rest.split_first_chunk::<2>()?;
    let length = usize::from(u16::from_be_bytes(*length));
    if rest.len() != length + 4 {
        return None;
    }
    let (topic, partition) = rest.split_at(length);
    let topic = std::str::from_utf8(topic).ok()?.to_owned();
    let partition: [u8; 4] = partition.try_into().ok()?;
    Some((topic, PartitionId(u32::from_be_bytes(partition))))
}

fn encode_value(next_offset: Offset, metadata: Option<&str>) -> Result<Vec<u8>, OffsetError> {
    let metadata = metadata.unwrap_or("");
    if metadata.len() > METADATA_BYTES_MAX {
        return Err(OffsetError::MetadataTooLarge(metadata.len()));
    }
    let mut value = Vec::with_capacity(9 + metadata.len());
    value.extend_from_slice(&next_offset.0.to_le_bytes());
    if !metadata.is_empty() {
        value.push(VALUE_WITH_METADATA);
        value.extend_from_slice(metadata.as_bytes());
    }
    Ok(value)
}

fn decode_value(
    value: &[u8],
    group: &str,
    topic: &str,
    partition: PartitionId,
) -> Result<CommittedOffset, OffsetError> {
    let damaged =
        || OffsetError::Damaged(format!("group {group:?} {topic}-{partition}"), value.len());
    let (offset, rest) = value.split_first_chunk::<8>().ok_or_else(damaged)?;
    let next_offset = Offset(u64::from_le_bytes(*offset));
    let metadata = match rest.split_first() {
        None => None,
        Some((&VALUE_WITH_METADATA, metadata)) if metadata.len() <= METADATA_BYTES_MAX => Some(
            std::str::from_utf8(metadata)
                .map_err(|_| damaged())?
                .to_owned(),
        ),
        Some(_) => return Err(damaged()),
    };
    Ok(CommittedOffset {
        next_offset,
        metadata,
    })
}

fn decode(
    value: &[u8],
    group: &str,
    topic: &str,
    partition: PartitionId,
) -> Result<Offset, OffsetError> {
    decode_value(value, group, topic, partition).map(|committed| committed.next_offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn database(directory: &std::path::Path) -> sled::Db {
        // A handle dropped a moment ago may still hold sled's file lock.
        crate::runtime::open_sled_waiting_for_release(&directory.join("meta")).unwrap()
    }

    fn token(group: &str, partition: u32, offset: u64) -> CommitToken {
        CommitToken::after_sink_write(group, "events", PartitionId(partition), Offset(offset))
    }

    #[test]
    fn group_names_lists_each_group_once_up_to_the_limit() {
        let directory = tempfile::tempdir().unwrap();
        let store = OffsetStore::open(&database(directory.path())).unwrap();
        assert_eq!(store.group_names(10), Ok(Vec::new()));
        let long = "\u{ff}".repeat(100);
        for group in ["b", "a", "ab", long.as_str()] {
            for partition in 0..3 {
                store.commit(&token(group, partition, 1)).unwrap();
            }
        }
        // Key order: by name length, then bytes.
        assert_eq!(
            store.group_names(10),
            Ok(vec![
                "a".to_owned(),
                "b".to_owned(),
                "ab".to_owned(),
                long.clone()
            ])
        );
        assert_eq!(
            store.group_names(2),
            Ok(vec!["a".to_owned(), "b".to_owned()])
        );
        assert_eq!(store.has_group("ab"), Ok(true));
        assert_eq!(store.has_group("c"), Ok(false));
        assert!(store.has_group("").is_err());
        assert_eq!(prefix_end(&[1, 0xff, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff]), None);
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

    fn client<'a>(
        topic: &'a str,
        partition: u32,
        offset: u64,
        metadata: Option<&'a str>,
    ) -> ClientOffset<'a> {
        ClientOffset {
            topic,
            partition: PartitionId(partition),
            next_offset: Offset(offset),
            metadata,
        }
    }

    #[test]
    fn old_values_stay_readable_and_client_commits_store_metadata() {
        let directory = tempfile::tempdir().unwrap();
        let database = database(directory.path());
        let store = OffsetStore::open(&database).unwrap();
        // A value as every earlier version wrote it: 8 bytes.
        let tree = database.open_tree(TREE).unwrap();
        tree.insert(
            key("g", "events", PartitionId(0)).unwrap(),
            &7u64.to_le_bytes()[..],
        )
        .unwrap();
        assert_eq!(
            store.committed_with_metadata("g", "events", PartitionId(0)),
            Ok(Some(CommittedOffset {
                next_offset: Offset(7),
                metadata: None
            }))
        );
        assert_eq!(
            store.committed("g", "events", PartitionId(0)),
            Ok(Some(Offset(7)))
        );
        store
            .commit_client_offsets(
                "g",
                &[
                    client("events", 1, 10, Some("hello")),
                    client("other", 0, 3, None),
                ],
            )
            .unwrap();
        assert_eq!(
            store.committed("g", "events", PartitionId(1)),
            Ok(Some(Offset(10)))
        );
        assert_eq!(
            store.committed_with_metadata("g", "events", PartitionId(1)),
            Ok(Some(CommittedOffset {
                next_offset: Offset(10),
                metadata: Some("hello".into())
            }))
        );
        assert_eq!(
            store.committed_with_metadata("g", "other", PartitionId(0)),
            Ok(Some(CommittedOffset {
                next_offset: Offset(3),
                metadata: None
            }))
        );
    }

    #[test]
    fn client_commits_may_move_backwards_but_pipeline_commits_may_not() {
        let directory = tempfile::tempdir().unwrap();
        let store = OffsetStore::open(&database(directory.path())).unwrap();
        store.commit(&token("g", 0, 100)).unwrap();
        store
            .commit_client_offsets("g", &[client("events", 0, 40, Some("m"))])
            .unwrap();
        assert_eq!(
            store.committed("g", "events", PartitionId(0)),
            Ok(Some(Offset(40)))
        );
        assert!(matches!(
            store.commit(&token("g", 0, 39)),
            Err(OffsetError::Backwards {
                committed: Offset(40),
                ..
            })
        ));
        // A pipeline commit reads the value with metadata and replaces it.
        store.commit(&token("g", 0, 41)).unwrap();
        assert_eq!(
            store.committed_with_metadata("g", "events", PartitionId(0)),
            Ok(Some(CommittedOffset {
                next_offset: Offset(41),
                metadata: None
            }))
        );
    }

    #[test]
    fn a_client_commit_is_all_or_nothing_and_checks_its_input() {
        let directory = tempfile::tempdir().unwrap();
        let store = OffsetStore::open(&database(directory.path())).unwrap();
        let long = "m".repeat(METADATA_BYTES_MAX + 1);
        assert_eq!(
            store.commit_client_offsets(
                "g",
                &[
                    client("events", 0, 1, None),
                    client("events", 1, 1, Some(&long))
                ]
            ),
            Err(OffsetError::MetadataTooLarge(METADATA_BYTES_MAX + 1))
        );
        assert_eq!(store.committed("g", "events", PartitionId(0)), Ok(None));
        let exact = "m".repeat(METADATA_BYTES_MAX);
        store
            .commit_client_offsets("g", &[client("events", 0, 1, Some(&exact))])
            .unwrap();
        assert_eq!(
            store
                .committed_with_metadata("g", "events", PartitionId(0))
                .unwrap()
                .unwrap()
                .metadata
                .map(|m| m.len()),
            Some(METADATA_BYTES_MAX)
        );
        let topic = "t".repeat(usize::from(u16::MAX) + 1);
        assert!(matches!(
            store.commit_client_offsets("g", &[client(&topic, 0, 1, None)]),
            Err(OffsetError::InvalidTopic(_))
        ));
        assert!(matches!(
            store.commit_client_offsets("", &[client("events", 0, 1, None)]),
            Err(OffsetError::InvalidGroup(_))
        ));
        assert_eq!(store.commit_client_offsets("g", &[]), Ok(()));
    }

    #[test]
    fn a_group_lists_its_own_committed_partitions_only() {
        let directory = tempfile::tempdir().unwrap();
        let database = database(directory.path());
        let store = OffsetStore::open(&database).unwrap();
        store.commit(&token("a", 1, 5)).unwrap();
        store
            .commit_client_offsets(
                "a",
                &[
                    client("x", 0, 2, Some("meta")),
                    client("events", 0, 9, None),
                ],
            )
            .unwrap();
        store.commit(&token("ab", 0, 9)).unwrap();
        store.commit(&token("b", 0, 9)).unwrap();
        let listed: Vec<(String, PartitionId, Result<CommittedOffset, OffsetError>)> =
            store.committed_in_group("a", 100).unwrap();
        let simple: Vec<(String, u32, u64, Option<String>)> = listed
            .into_iter()
            .map(|(topic, partition, committed)| {
                let committed = committed.unwrap();
                (
                    topic,
                    partition.0,
                    committed.next_offset.0,
                    committed.metadata,
                )
            })
            .collect();
        assert_eq!(
            simple,
            // Key order: the topic's length comes first.
            vec![
                ("x".to_owned(), 0, 2, Some("meta".to_owned())),
                ("events".to_owned(), 0, 9, None),
                ("events".to_owned(), 1, 5, None),
            ]
        );
        assert_eq!(store.committed_in_group("a", 2).unwrap().len(), 2);
        assert!(store.committed_in_group("nobody", 10).unwrap().is_empty());
        // A damaged value is reported in its place, and a client commit repairs it.
        let tree = database.open_tree(TREE).unwrap();
        for bad in [
            &[1u8, 2, 3, 4, 5, 6, 7, 8, 2, b'x'][..],
            &[0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff][..],
        ] {
            tree.insert(key("b", "events", PartitionId(0)).unwrap(), bad)
                .unwrap();
            let listed = store.committed_in_group("b", 10).unwrap();
            assert!(matches!(listed[0].2, Err(OffsetError::Damaged(_, 10))));
            assert!(matches!(
                store.committed("b", "events", PartitionId(0)),
                Err(OffsetError::Damaged(_, 10))
            ));
        }
        store
            .commit_client_offsets("b", &[client("events", 0, 4, None)])
            .unwrap();
        assert_eq!(
            store.committed("b", "events", PartitionId(0)),
            Ok(Some(Offset(4)))
        );
    }
}
