//! The actors (and the blocking threads they own). One module per actor:
//! its private state, its messages, its handlers.
//!
//! - [`partition`]: `PartitionActor`, one per partition, on the core arbiters.
//! - [`writer`]: the group-commit thread each partition actor owns.
//! - [`deleter`]: the runtime's file-deletion thread.
//! - [`raft_node`]: `RaftNode`, the node's Raft router: peer messages in and out.

pub(crate) mod compactor;
pub(crate) mod deleter;
pub(crate) mod group;
pub(crate) mod loader;
pub(crate) mod mailbox;
pub(crate) mod partition;
pub(crate) mod pipeline;
pub(crate) mod producers;
pub(crate) mod raft_node;
pub(crate) mod writer;
