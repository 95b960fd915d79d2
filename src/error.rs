//! Errors of the public API, one enum per operation. Each variant says
//! whether it is final or retryable. Shutdown is reported as `ShuttingDown`,
//! never as a failure of the data path.

use crate::config::ConfigError;
use crate::storage::{OpenError, ReadError};
use crate::types::{Offset, PartitionId};
use std::path::PathBuf;

/// Why [`Runtime::start`](crate::Runtime::start) failed. Nothing was started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The configuration is invalid. Final until the file is fixed.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Another process holds the data directory. Retryable once it stops.
    #[error("data directory {directory} is in use by {holder} (lock file {lock_file})")]
    Locked {
        /// The data directory.
        directory: PathBuf,
        /// The lock file.
        lock_file: PathBuf,
        /// Who holds it, as written in the lock file ("process 1234").
        holder: String,
    },
    /// A file or directory could not be used.
    #[error("{operation} {path}: {source}")]
    Io {
        /// What was attempted.
        operation: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A partition's log could not be opened.
    #[error("topic {topic} partition {partition}: {source}")]
    Open {
        /// Topic.
        topic: String,
        /// Partition.
        partition: PartitionId,
        /// Why.
        #[source]
        source: OpenError,
    },
    /// The `[http]` listener could not bind its address. Retryable once the
    /// address is free.
    #[error("http listener {address}: {source}")]
    Listen {
        /// The address in `[http] listen`.
        address: std::net::SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The cluster (`[node]`) cannot start as configured: a replicated
    /// topic this node cannot hold, a Raft state that does not name this
    /// node, a damaged Raft state. Final for this config and data.
    #[error("cluster: {message}")]
    Cluster {
        /// What was wrong, naming the topic and partition.
        message: String,
    },
    /// The metadata store failed or holds something this config contradicts.
    #[error("metadata store {path}: {message}")]
    Metadata {
        /// The store's path.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A pipeline could not be built: an unregistered custom operator or
    /// sink, a factory that refused its params, a sink that cannot open.
    #[error("pipeline {pipeline}, {stage}: {message}")]
    Pipeline {
        /// The pipeline's name.
        pipeline: String,
        /// `operator[INDEX]` or `sink`.
        stage: String,
        /// What is wrong.
        message: String,
    },
}

/// Why a produce was not acknowledged. Unless the variant says so, nothing
/// of the batch is stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProduceError {
    /// No such topic. Final.
    #[error("unknown topic {0:?}")]
    UnknownTopic(String),
    /// No such partition. Final.
    #[error("topic {topic} has no partition {partition} (it has {partitions})")]
    UnknownPartition {
        /// Topic.
        topic: String,
        /// The partition asked for.
        partition: PartitionId,
        /// How many it has.
        partitions: u32,
    },
    /// An empty batch. Final.
    #[error("empty batch")]
    Empty,
    /// The encoded batch is over the topic's `max_batch_bytes`. Final.
    #[error("batch of {bytes} bytes is over the limit of {max} bytes (max_batch_bytes)")]
    TooLarge {
        /// Encoded size.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// The partition stopped writing after an I/O failure (for example a
    /// failed fsync: data under it may be lost, so it never retries). Final
    /// until the runtime is restarted. The batch may or may not be stored.
    #[error("partition is fail-stopped: {reason}")]
    FailStopped {
        /// The failure that stopped it.
        reason: String,
    },
    /// The runtime is shutting down. Final for this runtime.
    #[error("runtime is shutting down")]
    ShuttingDown,
    /// The partition actor is not running (it stopped, or is restarting).
    /// Retryable. The batch may or may not be stored.
    #[error("partition unavailable")]
    Unavailable,
    /// A replicated partition: this node's replica does not lead. Nothing
    /// was stored; send to `leader` (a node id), or retry once one is
    /// elected if it is `None`. Retryable (Kafka's NOT_LEADER_OR_FOLLOWER).
    #[error("this node does not lead the partition (leader: {})", leader.map_or("unknown".to_string(), |id| format!("node {id}")))]
    NotLeader {
        /// The leader this node knows, if any.
        leader: Option<u64>,
    },
    /// A replicated partition: the batch was not committed by a majority
    /// (the leader changed, or the node lost its majority). It may or may
    /// not be stored; an idempotent producer's retry is safe. Retryable.
    #[error("the batch was not committed: {0}")]
    NotCommitted(String),
    /// An idempotent producer's batch does not follow its previous one
    /// (a gap: an earlier batch was lost). Final for that batch.
    #[error("producer {producer_id}: sequence {received} received, {expected} expected")]
    OutOfOrderSequence {
        /// Producer id.
        producer_id: i64,
        /// Sequence the partition expected next.
        expected: i32,
        /// First sequence of the batch.
        received: i32,
    },
    /// An idempotent producer's epoch is older than the partition has seen
    /// (a newer instance of that producer exists). Final.
    #[error("producer {producer_id}: epoch {received} is older than {current}")]
    InvalidProducerEpoch {
        /// Producer id.
        producer_id: i64,
        /// Newest epoch seen.
        current: i16,
        /// Epoch of the batch.
        received: i16,
    },
    /// The partition has no state for this producer id and the batch does
    /// not start a sequence (its state was evicted or lost in a restart).
    /// The producer must reset its id.
    #[error("producer {producer_id} is unknown to the partition (sequence {received})")]
    UnknownProducerId {
        /// Producer id.
        producer_id: i64,
        /// First sequence of the batch.
        received: i32,
    },
}

/// Why a fetch failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// No such topic. Final.
    #[error("unknown topic {0:?}")]
    UnknownTopic(String),
    /// No such partition. Final.
    #[error("topic {topic} has no partition {partition} (it has {partitions})")]
    UnknownPartition {
        /// Topic.
        topic: String,
        /// The partition asked for.
        partition: PartitionId,
        /// How many it has.
        partitions: u32,
    },
    /// The offset is not in `[log_start_offset, high_watermark]`. Final for
    /// that offset; restart from one end of the range.
    #[error("offset {requested} is out of range [{log_start_offset}, {high_watermark}]")]
    OffsetOutOfRange {
        /// The offset asked for.
        requested: Offset,
        /// First readable offset.
        log_start_offset: Offset,
        /// The high watermark.
        high_watermark: Offset,
    },
    /// Stored data is damaged; it is not returned. Final until repaired.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// The offset is in a block the startup load has not reached yet, and
    /// it was not loaded within the fetch's `max_wait`. Retryable.
    #[error("offset {requested} is still loading (block {block_base_offset}; background load {loaded_percent}% done)")]
    Loading {
        /// The offset asked for.
        requested: Offset,
        /// The block holding it.
        block_base_offset: Offset,
        /// Bytes of sealed blocks loaded, in percent.
        loaded_percent: u8,
    },
    /// An I/O error while reading. Retryable.
    #[error("read error: {0}")]
    Io(String),
    /// The runtime is shutting down: there are no more records. Final.
    #[error("runtime is shutting down")]
    ShuttingDown,
    /// The partition actor is not running. Retryable.
    #[error("partition unavailable")]
    Unavailable,
    /// A replicated partition: reads are served by the leader once it has
    /// committed an entry of its term; this node's replica is not that.
    /// Retryable at `leader` (a node id), if known.
    #[error("this node does not serve reads of the partition (leader: {})", leader.map_or("unknown".to_string(), |id| format!("node {id}")))]
    NotLeader {
        /// The leader this node knows, if any.
        leader: Option<u64>,
    },
}

impl From<ReadError> for FetchError {
    fn from(error: ReadError) -> FetchError {
        match error {
            ReadError::OffsetOutOfRange {
                requested,
                log_start_offset,
                high_watermark,
            } => FetchError::OffsetOutOfRange {
                requested,
                log_start_offset,
                high_watermark,
            },
            ReadError::Corrupt(message) => FetchError::Corrupt(message),
            ReadError::NotLoaded {
                requested,
                block_base_offset,
            } => FetchError::Loading {
                requested,
                block_base_offset,
                loaded_percent: 0,
            },
            ReadError::Io { file, message } => {
                FetchError::Io(format!("{}: {message}", file.display()))
            }
        }
    }
}

/// Why shutdown did not complete cleanly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShutdownError {
    /// A partition failed to drain (its writes were already refused or
    /// fail-stopped); acknowledged data is still durable.
    #[error("topic {topic} partition {partition}: {reason}")]
    Partition {
        /// Topic.
        topic: String,
        /// Partition.
        partition: PartitionId,
        /// What happened.
        reason: String,
    },
    /// The actor system thread panicked.
    #[error("runtime thread panicked")]
    ThreadPanicked,
    /// A pipeline did not finish its in-flight batches in time; what it had
    /// not committed is processed again after the restart (at least once).
    #[error("pipeline {pipeline}: {reason}")]
    Pipeline {
        /// The pipeline.
        pipeline: String,
        /// What happened.
        reason: String,
    },
}
