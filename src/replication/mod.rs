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
