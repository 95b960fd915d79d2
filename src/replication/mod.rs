//! Replication: one Raft group per replicated partition (raft-rs 0.7),
//! where the partition's log is the Raft log, so data is written once.
//!
//! - [`store`]: [`EntryStore`](store::EntryStore), raft-rs's `Storage`
//!   over the partition's frames.
//! - [`replica`]: [`ReplicaCore`](replica::ReplicaCore), the no-I/O core a
//!   partition actor drives.
//! - [`state`]: the `raft.state` file (term, vote, commit, configuration).
//! - [`transport`]: TCP between nodes, length-prefixed checksummed frames,
//!   batched per peer, reconnecting with backoff.

pub mod replica;
pub mod state;
pub mod store;
pub mod transport;

/// Why a replica cannot go on. Final for the replica: its owner stops it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplicaError {
    /// The log or the Raft state cannot be read or written as Raft needs.
    #[error("replica storage: {0}")]
    Storage(String),
    /// The Raft configuration is invalid.
    #[error("replica configuration: {0}")]
    Config(String),
}

/// raft-rs logs through `slog`; this drain hands its records to `tracing`
/// (raft-rs's info lines, elections and the like, become debug lines: a
/// node with many partitions would otherwise log a line per group).
pub(crate) struct TracingDrain;

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(
        &self,
        record: &slog::Record<'_>,
        _values: &slog::OwnedKVList,
    ) -> Result<(), slog::Never> {
        match record.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::error!(target: "millrace::raft", "{}", record.msg())
            }
            slog::Level::Warning => tracing::warn!(target: "millrace::raft", "{}", record.msg()),
            slog::Level::Info => tracing::debug!(target: "millrace::raft", "{}", record.msg()),
            slog::Level::Debug | slog::Level::Trace => {
                tracing::trace!(target: "millrace::raft", "{}", record.msg())
            }
        }
        Ok(())
    }
}

/// A change to the set of nodes that replicate every replicated partition
/// (`Runtime::change_membership`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum MembershipChange {
    /// A node joins as a voter; `address` is its `[node] listen`. Start it
    /// first with `[node] join = true`.
    Add {
        /// Its node id.
        id: u64,
        /// Its peer address.
        address: std::net::SocketAddr,
    },
    /// A node leaves; stop it once the change is done.
    Remove {
        /// Its node id.
        id: u64,
    },
}

impl MembershipChange {
    /// The raft-rs change: one `AddNode` or `RemoveNode`; an added node's
    /// address travels in the context, so every replica learns it when the
    /// change applies.
    pub fn to_conf_change(&self) -> raft::prelude::ConfChangeV2 {
        use raft::prelude::{ConfChangeSingle, ConfChangeType};
        let (change_type, node_id, context) = match self {
            MembershipChange::Add { id, address } => (
                ConfChangeType::AddNode,
                *id,
                address.to_string().into_bytes(),
            ),
            MembershipChange::Remove { id } => (ConfChangeType::RemoveNode, *id, Vec::new()),
        };
        let single = ConfChangeSingle {
            change_type,
            node_id,
            ..ConfChangeSingle::default()
        };
        raft::prelude::ConfChangeV2 {
            changes: vec![single].into(),
            context: context.into(),
            ..raft::prelude::ConfChangeV2::default()
        }
    }

    /// The changes an applied raft-rs change made to the peers: nodes
    /// added (with the address from its context) and removed.
    pub fn from_applied(change: &raft::prelude::ConfChangeV2) -> Vec<MembershipChange> {
        use raft::prelude::ConfChangeType;
        let address = std::str::from_utf8(&change.context)
            .ok()
            .and_then(|text| text.parse().ok());
        change
            .changes
            .iter()
            .filter_map(|single| match single.change_type {
                ConfChangeType::AddNode => address.map(|address| MembershipChange::Add {
                    id: single.node_id,
                    address,
                }),
                ConfChangeType::RemoveNode => Some(MembershipChange::Remove { id: single.node_id }),
                ConfChangeType::AddLearnerNode => None,
            })
            .collect()
    }
}

/// The nodes that replicate `partition` of `topic`: `replication_factor`
/// of the sorted `members`, consecutive from a start that the topic name's
/// CRC-32C and the partition number pick, so partitions spread over the
/// nodes and every node computes the same answer. Sorted.
pub fn placement(
    topic: &str,
    partition: u32,
    members: &[u64],
    replication_factor: u32,
) -> Vec<u64> {
    let mut sorted = members.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let count = sorted.len();
    if count == 0 {
        return Vec::new();
    }
    let start = (crc32c::crc32c(topic.as_bytes()) as usize + partition as usize) % count;
    let mut replicas: Vec<u64> = (0..(replication_factor as usize).min(count))
        .map(|step| sorted[(start + step) % count])
        .collect();
    replicas.sort_unstable();
    replicas
}

#[cfg(test)]
mod placement_tests {
    use super::placement;

    #[test]
    fn partitions_spread_over_the_nodes_and_every_node_agrees() {
        let members = [3, 1, 2, 5, 4];
        let mut load = [0usize; 6];
        for partition in 0..50 {
            let replicas = placement("events", partition, &members, 3);
            assert_eq!(replicas.len(), 3);
            assert!(replicas.windows(2).all(|pair| pair[0] < pair[1]));
            assert_eq!(
                replicas,
                placement("events", partition, &[1, 2, 3, 4, 5], 3)
            );
            for node in replicas {
                load[node as usize] += 1;
            }
        }
        // 150 replicas over 5 nodes: 30 each.
        assert!(load[1..].iter().all(|&count| count == 30), "{load:?}");
        assert_eq!(placement("events", 0, &members, 5).len(), 5);
    }
}
