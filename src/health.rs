//! Health: what each partition is doing, for `Runtime::health`, `/health`
//! and `/ready`.
//!
//! Every partition's startup load ends in exactly one terminal state,
//! [`LoadState::Complete`] (with coverage) or [`LoadState::Failed`] (with the
//! error); no path leaves it loading forever.

use serde::Serialize;

/// The whole runtime's health.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Health {
    /// Every partition serves and the runtime is not draining.
    pub ready: bool,
    /// Shutdown has begun: produce is refused, `/ready` answers 503.
    pub draining: bool,
    /// Per partition, in topic then partition order.
    pub partitions: Vec<PartitionHealth>,
    /// Per pipeline, in config order.
    pub pipelines: Vec<PipelineHealth>,
}

/// One pipeline's health.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PipelineHealth {
    /// Pipeline name.
    pub name: String,
    /// It stopped writing after an error that retries could not fix (its
    /// offsets stay at the last completed batch; see the logs).
    pub failed: bool,
    /// Sum over its source partitions of high watermark minus committed offset.
    pub lag: u64,
    /// Records sent to its dead-letter queue.
    pub dead_letters: u64,
}

/// One partition's health.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PartitionHealth {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: u32,
    /// Whether it serves.
    pub phase: Phase,
    /// The startup load of its sealed blocks.
    pub load: LoadState,
    /// Why it is degraded (quarantined blocks, fail-stop, restarts); empty when healthy.
    pub degraded: Vec<String>,
    /// Times its actor was restarted after a failure.
    pub restarts: u64,
    /// First readable offset.
    pub log_start_offset: u64,
    /// Offset the next appended record gets.
    pub log_end_offset: u64,
    /// Offsets below this are durable and readable.
    pub high_watermark: u64,
    /// Replicated partitions: this node's replica of the Raft group.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replica: Option<ReplicaHealth>,
}

/// One node's replica of a replicated partition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReplicaHealth {
    /// This node's id.
    pub node_id: u64,
    /// The leader it knows (node id; 0: none).
    pub leader: u64,
    /// Its Raft term.
    pub term: u64,
    /// Highest Raft index known committed.
    pub commit_index: u64,
    /// Highest Raft index applied (the high watermark follows it).
    pub applied_index: u64,
    /// Last Raft index in its log.
    pub last_index: u64,
    /// The group's voters.
    pub voters: Vec<u64>,
    /// On the leader: each replica's matched index and its lag behind the
    /// leader's last index, in entries.
    pub replicas: Vec<ReplicaLag>,
}

/// How far one replica is behind the leader.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReplicaLag {
    /// The replica's node id.
    pub node_id: u64,
    /// Highest index known to match the leader's log.
    pub matched_index: u64,
    /// Leader's last index minus `matched_index`.
    pub lag: u64,
}

/// What a partition is doing.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Phase {
    /// Recovering its active segment (not serving yet).
    Recovering,
    /// Loading the blocks inside the hot window, before serving.
    HotLoading(LoadProgress),
    /// Serving produce and fetch of loaded data.
    Serving,
    /// Restarting after a failure (produce gets a retryable error meanwhile).
    Restarting {
        /// Restarts so far.
        attempt: u64,
        /// The failure.
        reason: String,
    },
    /// Refusing writes after an I/O failure (fsync): data under it may be
    /// lost, so it stays stopped until the runtime is restarted.
    FailStopped {
        /// The failure.
        reason: String,
    },
    /// The partition did not answer in time (its actor is busy or gone).
    Unresponsive,
}

/// Blocks and bytes of a load.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LoadProgress {
    /// Blocks loaded (including quarantined ones).
    pub loaded_blocks: u64,
    /// Blocks to load.
    pub total_blocks: u64,
    /// Bytes loaded.
    pub loaded_bytes: u64,
    /// Bytes to load.
    pub total_bytes: u64,
}

impl LoadProgress {
    /// Loaded bytes in percent (100 when there is nothing to load).
    pub fn percent(&self) -> u8 {
        if self.total_bytes == 0 {
            return 100;
        }
        (self.loaded_bytes.saturating_mul(100) / self.total_bytes).min(100) as u8
    }
}

/// The startup load of one partition's sealed blocks.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum LoadState {
    /// The hot load has not finished, so the background load has not begun.
    WaitingForHotLoad,
    /// The background loader is loading older blocks.
    Loading(LoadProgress),
    /// Terminal: every block was tried. `coverage_percent` is the share of
    /// sealed bytes that loaded without damage (100 unless blocks were
    /// quarantined).
    Complete {
        /// Share of sealed bytes readable, in percent.
        coverage_percent: f64,
        /// Base offsets of quarantined (damaged) blocks.
        quarantined_blocks: Vec<u64>,
    },
    /// Terminal: an I/O error stopped the load; blocks not loaded stay unreadable.
    Failed {
        /// The error.
        error: String,
    },
}

impl LoadState {
    /// Whether this is a terminal state.
    pub fn is_terminal(&self) -> bool {
        matches!(self, LoadState::Complete { .. } | LoadState::Failed { .. })
    }
}

impl Health {
    /// The health as JSON (the `/health` body).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self)
            .unwrap_or_else(|error| format!("{{\"error\":\"{error}\"}}"))
    }
}
