//! The TOML configuration: parsed in one place, validated, passed explicitly.
//!
//! Key names follow the user-facing contract (CONTRACT.md); keys may be
//! added, never renamed. `examples/*.toml` are the commented reference.
//!
//! # How a file becomes a [`Config`]
//!
//! 1. `toml` deserializes the text into private "raw" serde structs with
//!    `deny_unknown_fields`, so an unknown key is an error naming the key and
//!    its line. Every value that a later rule may reject is kept as a
//!    [`toml::Spanned`], so that error can name its line and column too.
//! 2. The raw structs are converted to the public types: sizes through
//!    [`parse_size`], durations through `humantime`, enumerations by name.
//! 3. The semantic rules ([`Config::validate`], shared with hosts that build
//!    a `Config` in code) run on the result; a broken rule is reported at the
//!    span of the key that broke it.
//!
//! Every error is a [`ConfigError`]: origin (file path or `"<string>"`),
//! `:LINE:COLUMN` and/or ` (key path)` such as `topic[1].partitions` or
//! `startup.chunk_bytes`, and the rule broken.
//!
//! # Limits
//!
//! Every bounded key has its bounds as a named constant below
//! ([`PARTITIONS_MAX`], [`SEGMENT_BYTES_MIN`], ...), with the reason beside it.
//!
//! # Pipelines
//!
//! Each `[[pipeline]]` becomes a [`PipelineConfig`] in [`Config::pipelines`].
//! Which keys a stage takes depends on its `type` (and a window's on its
//! `kind`); a key that does not apply is an error at that key, e.g.
//! `key `hop` does not apply to a tumbling window`. Errors name the
//! pipeline, the stage and the key, `pipeline[NAME].operator[INDEX].KEY`
//! or `pipeline[NAME].sink.table[INDEX].KEY` (indexes from 0;
//! `pipeline[INDEX]` while the name is missing or invalid).
//!
//! ```toml
//! [[pipeline]]
//! name = "trace_ingest"          # required; [A-Za-z0-9_-], 1..=200 chars, unique ignoring case
//! members = 1                    # default 1; 1..=256
//! commit_interval = "1s"         # default 1s; "0s" commits after every batch; at most 1h
//! retries = 3                    # default 3; 0..=100
//! retry_backoff = "100ms"        # default 100ms; more than 0s, at most 1h (doubles per retry)
//! fetch_max_bytes = "256 KiB"    # default 256 KiB; 1 KiB..=64 MiB
//! in_flight_batches = 4          # default 4; 1..=64
//!
//! [pipeline.source]              # required
//! topic = "spans"                # required; a [[topic]] of this file (or a pipeline's "<name>.dlq")
//! group = "trace_ingest"         # default: the pipeline's name; 1..=255 bytes of [A-Za-z0-9._-]
//! auto_offset_reset = "earliest" # default; or "latest"
//!
//! [[pipeline.operator]]          # zero or more, applied in order
//! type = "filter"                # field, and exactly one of: equals = VALUE,
//! field = "span.status"          #   not_equals = VALUE (a missing field is not equal),
//! greater_than = 499             #   greater_than = NUMBER, less_than = NUMBER,
//!                                #   exists = true|false, one_of = [VALUES]
//! [[pipeline.operator]]
//! type = "map"                   # at least one of, applied in this order:
//! project = ["trace_id", "span"] #   project = [PATHS] (not empty), drop = [PATHS],
//! drop = ["span.secret"]         #   rename = { "old.path" = "new.path" } (in file order),
//! rename = { "span.name" = "name" }
//! set = { "source" = "ingest" }  #   set = { "path" = VALUE }
//!
//! [[pipeline.operator]]
//! type = "extract"               # field; likewise "flat_map", "key_by", "event_time"
//! field = "payload"
//!
//! [[pipeline.operator]]
//! type = "window"
//! kind = "hopping"               # required: "tumbling" (size), "hopping" (size, hop <= size),
//! size = "5m"                    #   "session" (gap); each more than 0s, at most 36500d
//! hop = "1m"
//! allowed_lateness = "30s"       # default 0s
//! aggregate = "percentiles"      # default "count"; "sum", "min", "max", "mean", "percentiles"
//! field = "duration_ms"          # required except for count (and not allowed with it)
//! percentiles = [50, 99.9]       # aggregate = "percentiles" only; each 0 < p <= 100
//! time_field = "start_time"      # optional: event time from this field
//! late = "side_output"           # default "dlq"; or "side_output", with:
//! side_output = "late_spans"     #   a [[topic]], not the source, not a dead-letter topic
//!
//! [[pipeline.operator]]
//! type = "aggregate"             # aggregate (required), field, percentiles: as for window
//! aggregate = "count"
//!
//! [[pipeline.operator]]
//! type = "reduce"                # function: "sum", "min", "max" (these need field),
//! function = "latest"            #   "latest", "merge" (these take no field)
//!
//! [[pipeline.operator]]
//! type = "custom"                # name (required), params = { any table } (default {})
//! name = "enrich"
//!
//! [pipeline.sink]                # required; type = ...
//! type = "sled"                  # "topic": topic (a [[topic]], not the source, not a
//! path = "./traces"              #   dead-letter topic); "sled": path and one or more tables;
//!                                #   "jsonl": path; "stdout"; "custom": name, params
//! [[pipeline.sink.table]]
//! name = "spans"                 # required, not empty, unique in the sink
//! key = ["trace_id", "span_id"]  # default []: the record's origin
//! each = "logs"                  # optional: one row per element of this array
//! fields = ["name"]              # optional: the row's fields (default: the whole value)
//! ```
//!
//! Paths (`field`, `project`, ...) are [`FieldPath`]s: dotted names, an
//! all-digit segment indexing arrays. Values (`equals`, `set`, `params`)
//! become JSON (a TOML datetime becomes its text). The rules between
//! sections (unique names, topics that exist, no writing to the source or
//! to a dead-letter topic) are in [`Config::validate`] too, so a host that
//! builds pipelines in code gets them.
//!
//! # Paths
//!
//! `data_dir` is kept exactly as written: a relative path is resolved against
//! the current working directory of the process when the runtime opens it, not
//! against the config file's directory. It is never canonicalized and `~` is
//! not expanded.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::pipeline::config::{
    AggregateConfig, AggregateFunction, LatePolicy, MapConfig, OffsetReset, OperatorConfig,
    PipelineConfig, Predicate, ReduceConfig, ReduceFunction, SinkConfig, SledSinkConfig,
    TableConfig, Test, WindowConfig, WindowKind, IN_FLIGHT_BATCHES_MAX, MEMBERS_MAX,
    PIPELINE_NAME_CHARS_MAX, RETRIES_MAX,
};
use crate::pipeline::json::FieldPath;

/// Longest topic name, in characters (Kafka's limit, so names carry over).
pub const TOPIC_NAME_CHARS_MAX: usize = 249;

/// Most partitions one topic may have. Each partition is an actor with open
/// files, so this bounds file descriptors and memory per topic.
pub const PARTITIONS_MAX: u32 = 10_000;

/// Default `segment_bytes`.
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 * MIB;
/// Smallest `segment_bytes`: below a page, sealing and indexing overheads
/// dominate and a directory fills with tiny files.
pub const SEGMENT_BYTES_MIN: u64 = 4 * KIB;
/// Largest `segment_bytes` (Kafka's default ceiling): bounds how much one
/// deletion or recovery scan has to handle at once.
pub const SEGMENT_BYTES_MAX: u64 = GIB;

/// Default `max_batch_bytes`.
pub const MAX_BATCH_BYTES_DEFAULT: u64 = MIB;
/// Smallest `max_batch_bytes`: room for the 61-byte batch header, the
/// frame header and a few small records.
pub const MAX_BATCH_BYTES_MIN: u64 = KIB;
/// Largest `max_batch_bytes`: the limit the batch decoder enforces anywhere
/// ([`crate::storage::batch::BATCH_BYTES_MAX`]).
pub const MAX_BATCH_BYTES_MAX: u64 = crate::storage::batch::BATCH_BYTES_MAX as u64;

/// Default `index_interval_bytes`.
pub const INDEX_INTERVAL_BYTES_DEFAULT: u64 = 4 * KIB;
/// Smallest `index_interval_bytes` (1 byte = an entry for every batch).
pub const INDEX_INTERVAL_BYTES_MIN: u64 = 1;
/// Largest `index_interval_bytes`: a larger interval than the largest segment
/// would only ever index the first batch.
pub const INDEX_INTERVAL_BYTES_MAX: u64 = SEGMENT_BYTES_MAX;

/// Longest `fsync` interval: acknowledged data at risk on power loss is
/// bounded by it, and more than a few seconds of it is not a policy anyone
/// wants by accident.
pub const FSYNC_INTERVAL_MAX: Duration = Duration::from_secs(10);

/// Longest `segment_age`, `retention` and `delete_retention` (100 years of 365
/// days). For the first two absent means "never"; the bound keeps time
/// arithmetic on these values far from overflow.
pub const AGE_MAX: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// Default `replication_factor`: one copy, no Raft.
pub const REPLICATION_FACTOR_DEFAULT: u32 = 1;
/// Largest `replication_factor` (and cluster size): Raft's quorum costs grow
/// with it, and 7 already survives the loss of 3 nodes.
pub const REPLICATION_FACTOR_MAX: u32 = 7;
/// Default `[node] cluster_id`.
pub const CLUSTER_ID_DEFAULT: &str = "millrace";
/// Longest `[node] cluster_id`, in bytes (ASCII, so also characters): it
/// is sent in every peer connection's handshake.
pub const CLUSTER_ID_BYTES_MAX: usize = 64;
/// Default `[node] tick`.
pub const TICK_DEFAULT: Duration = Duration::from_millis(50);
/// Longest `[node] tick`: with the default ticks, an election would take
/// minutes; a longer tick is a typo in the unit, not a policy.
pub const TICK_MAX: Duration = Duration::from_secs(10);
/// Most `[node] election_ticks` and `heartbeat_ticks`: at the default
/// tick that is almost 14 hours without a leader; more is a typo.
pub const TICKS_MAX: usize = 1_000_000;
/// Default `[node] election_ticks`: with the default tick, an election
/// timeout of 0.5 to 1 s (raft-rs randomises it up to twice this).
pub const ELECTION_TICKS_DEFAULT: usize = 10;
/// Default `[node] heartbeat_ticks`.
pub const HEARTBEAT_TICKS_DEFAULT: usize = 2;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const TIB: u64 = 1 << 40;

/// How `AGE_MAX` reads in messages (humantime would print "99years 11months ...").
const AGE_MAX_TEXT: &str = "36500d (100 years)";

/// The whole configuration of one runtime.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The data directory (one runtime per directory, enforced by a lock file).
    /// A relative path is resolved against the process's current working
    /// directory; it is kept as written, never canonicalized.
    pub data_dir: PathBuf,
    /// Topics, in file order.
    pub topics: Vec<TopicConfig>,
    /// `[startup]`: the chunked startup load.
    pub startup: StartupConfig,
    /// `[http]`: the health and metrics listener; `None` (the default) = off.
    pub http: Option<HttpConfig>,
    /// `[kafka]`: the Kafka-protocol listener; `None` (the default) = off.
    pub kafka: Option<KafkaConfig>,
    /// `[node]`: this node's place in a Raft cluster; `None` (the default)
    /// = a single node, and every topic has `replication_factor = 1`.
    pub node: Option<NodeConfig>,
    /// `[compactor]`: the key compactor's budget and schedule.
    pub compactor: CompactorConfig,
    /// `shutdown_timeout` (default "30s"): how long `Runtime::shutdown` waits
    /// for in-flight appends to drain before it stops everything anyway.
    /// More than zero, at most [`SHUTDOWN_TIMEOUT_MAX`].
    pub shutdown_timeout: Duration,
    /// `[[pipeline]]` sections, in file order (see the module docs for their
    /// keys). [`Config::validate`] checks them, and that the topics they
    /// read and write are among `topics`.
    pub pipelines: Vec<PipelineConfig>,
}

/// Default `shutdown_timeout`.
pub const SHUTDOWN_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// Longest `shutdown_timeout`: a drain that has not finished in an hour is
/// stuck, and service managers kill a process long before that anyway.
pub const SHUTDOWN_TIMEOUT_MAX: Duration = Duration::from_secs(60 * 60);

/// The `[startup]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartupConfig {
    /// `hot_window` (default "24h", at most [`HOT_WINDOW_MAX`]): sealed
    /// blocks with records this recent are loaded (verified, indexed) in
    /// chunks at startup, newest first; a partition serves as soon as its
    /// first chunk is in. Older blocks load in the background after the hot
    /// load completes.
    /// `"0s"` turns the startup load off: every block is registered from its
    /// index at open, and the load is complete at once.
    pub hot_window: Duration,
    /// `chunk_bytes` (default "16 MiB"): bytes of blocks loaded per step of
    /// the hot load; the partition serves after the first chunk.
    /// Between [`CHUNK_BYTES_MIN`] and [`CHUNK_BYTES_MAX`].
    pub chunk_bytes: u64,
    /// `background_load_rate` (default none = as fast as the disk allows):
    /// bytes per second the background loader reads, e.g. "200 MiB" (or
    /// "200 MiB/s"). More than zero.
    pub background_load_bytes_per_second: Option<u64>,
}

/// Default `[startup] hot_window`.
pub const HOT_WINDOW_DEFAULT: Duration = Duration::from_secs(24 * 60 * 60);
/// Longest `[startup] hot_window` (the same bound as ages: [`AGE_MAX`]).
pub const HOT_WINDOW_MAX: Duration = AGE_MAX;
/// Default `[startup] chunk_bytes`.
pub const CHUNK_BYTES_DEFAULT: u64 = 16 * MIB;
/// Smallest `[startup] chunk_bytes`: smaller chunks make the hot load a
/// long series of tiny steps, each with its own round trip to the actor.
pub const CHUNK_BYTES_MIN: u64 = 64 * KIB;
/// Largest `[startup] chunk_bytes`: bounds the bytes (and so the time) of
/// one step of the load.
pub const CHUNK_BYTES_MAX: u64 = 4 * GIB;

impl Default for StartupConfig {
    fn default() -> Self {
        StartupConfig {
            hot_window: HOT_WINDOW_DEFAULT,
            chunk_bytes: CHUNK_BYTES_DEFAULT,
            background_load_bytes_per_second: None,
        }
    }
}

/// The `[http]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpConfig {
    /// `listen` (required in `[http]`): address of `/health`, `/ready` and
    /// `/metrics`, an IP address and port (`"127.0.0.1:9644"`, `"[::1]:9644"`;
    /// not a host name). Port 0 picks a free port.
    pub listen: std::net::SocketAddr,
}

/// The `[kafka]` table: the Kafka-protocol listener (see `src/kafka/`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaConfig {
    /// `listen` (required in `[kafka]`): an IP address and port
    /// (`"127.0.0.1:9092"`); port 0 picks a free port.
    pub listen: std::net::SocketAddr,
    /// `advertised` (default: the address it listens on): `"host:port"`
    /// that Metadata tells clients to connect to.
    pub advertised: Option<(String, u16)>,
    /// `max_connections` (default 256): connections beyond this are closed
    /// at once, with a log line.
    pub max_connections: u32,
    /// `request_max_bytes` (default "100 MiB", Kafka's
    /// `socket.request.max.bytes`): a request frame declaring more is
    /// refused and its connection closed, before anything is read into memory.
    pub request_max_bytes: u64,
    /// `allow_topic_management` (default false): whether CreateTopics and
    /// DeleteTopics may create topics at run time and delete them (only
    /// those; topics of the config file are never deleted over the wire).
    /// Off, both answer POLICY_VIOLATION.
    pub allow_topic_management: bool,
}

/// The `[node]` table: this node of a Raft cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    /// `id` (required): this node's id, at least 1, unique in the cluster.
    pub id: u64,
    /// `listen` (required): address of peer (Raft) traffic, an IP address
    /// and port (`"127.0.0.1:7001"`).
    pub listen: std::net::SocketAddr,
    /// `peers` (required): every other node, as `"ID@IP:PORT"`.
    pub peers: Vec<PeerConfig>,
    /// `cluster_id` (default "millrace"): peers with another id are
    /// refused, so two clusters on one network never mix. 1 to
    /// [`CLUSTER_ID_BYTES_MAX`] characters of `[A-Za-z0-9._-]`.
    pub cluster_id: String,
    /// `tick` (default "50ms", more than 0, at most [`TICK_MAX`]): Raft's
    /// logical clock.
    pub tick: Duration,
    /// `election_ticks` (default 10): ticks without a leader before an
    /// election (raft-rs randomises it up to twice this). More than
    /// `heartbeat_ticks` (raft-rs requires it), at most [`TICKS_MAX`].
    pub election_ticks: usize,
    /// `heartbeat_ticks` (default 2, 1 to [`TICKS_MAX`]): ticks between a
    /// leader's heartbeats.
    pub heartbeat_ticks: usize,
    /// `join` (default false): this node is joining a running cluster. Its
    /// new replicas start with `peers` as the voters (not itself) and
    /// become voters when the cluster adds the node
    /// (`Runtime::change_membership`); its data directory must be empty.
    pub join: bool,
}

impl NodeConfig {
    /// Every node id in the cluster, sorted (this node's and its peers').
    pub fn members(&self) -> Vec<u64> {
        let mut members: Vec<u64> = std::iter::once(self.id)
            .chain(self.peers.iter().map(|peer| peer.id))
            .collect();
        members.sort_unstable();
        members
    }
}

/// One entry of `[node] peers`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerConfig {
    /// The peer's node id.
    pub id: u64,
    /// Its `[node] listen` address.
    pub address: std::net::SocketAddr,
}

/// A topic's `acks`: when a produce to a replicated partition is answered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Acks {
    /// `"all"` (default): once a majority of the replicas has the batch
    /// fsynced and it is committed. Survives the loss of any minority.
    #[default]
    All,
    /// `"leader"`: once the leader has it fsynced. Faster; a leader that
    /// dies before its followers have the batch loses it.
    Leader,
}

/// Default `[kafka] max_connections`.
pub const KAFKA_MAX_CONNECTIONS_DEFAULT: u32 = 256;
/// Largest `[kafka] max_connections`.
pub const KAFKA_MAX_CONNECTIONS_MAX: u32 = 65_536;
/// Default `[kafka] request_max_bytes`.
pub const KAFKA_REQUEST_MAX_BYTES_DEFAULT: u64 = 100 * 1024 * 1024;
/// Smallest `[kafka] request_max_bytes`: room for a request header and a small batch.
pub const KAFKA_REQUEST_MAX_BYTES_MIN: u64 = 64 * 1024;
/// Largest `[kafka] request_max_bytes`: a frame length is a signed 32-bit integer.
pub const KAFKA_REQUEST_MAX_BYTES_MAX: u64 = i32::MAX as u64;

/// One `[[topic]]` table.
#[derive(Clone, Debug, PartialEq)]
pub struct TopicConfig {
    /// `name`: `[A-Za-z0-9._-]`, 1..=249 characters, not `.` or `..`.
    pub name: String,
    /// `partitions` (default 1, at most [`PARTITIONS_MAX`]).
    pub partitions: u32,
    /// `segment_bytes` (default 64 MiB): the active segment is sealed past this size.
    /// Between [`SEGMENT_BYTES_MIN`] and [`SEGMENT_BYTES_MAX`].
    pub segment_bytes: u64,
    /// `segment_age` (default none): the active segment is sealed once this old.
    /// More than zero, at most [`AGE_MAX`].
    pub segment_age: Option<Duration>,
    /// `retention` (default none = keep forever): age after which sealed blocks are deleted.
    /// More than zero, at most [`AGE_MAX`].
    pub retention: Option<Duration>,
    /// `retention_bytes` (default none): per-partition size limit. More than zero.
    pub retention_bytes: Option<u64>,
    /// `fsync` (default "always").
    pub fsync: FsyncPolicy,
    /// `max_batch_bytes` (default 1 MiB): largest encoded batch one produce call may append.
    /// Between [`MAX_BATCH_BYTES_MIN`] and [`MAX_BATCH_BYTES_MAX`].
    pub max_batch_bytes: u64,
    /// `index_interval_bytes` (default 4 KiB): bytes between sparse index entries.
    /// Between [`INDEX_INTERVAL_BYTES_MIN`] and [`INDEX_INTERVAL_BYTES_MAX`].
    pub index_interval_bytes: u64,
    /// `cleanup` (default "delete"): what happens to old data.
    pub cleanup: CleanupPolicy,
    /// `delete_retention` (default "24h"): with compaction, how long a
    /// tombstone (a record with a key and no value) is kept after its
    /// timestamp before a compaction removes it.
    /// More than zero, at most [`AGE_MAX`]. Accepted, and ignored, when
    /// `cleanup` is "delete": a topic can be switched to compaction later
    /// without editing it.
    pub delete_retention: Duration,
    /// `min_dirty_ratio` (default 0.5, from 0 to 1): with compaction, the
    /// share of sealed bytes not yet compacted at which a run starts.
    /// A TOML float, or the integer 0 or 1; finite, within 0.0..=1.0.
    /// Accepted, and ignored, when `cleanup` is "delete", like `delete_retention`.
    pub min_dirty_ratio: f64,
    /// `replication_factor` (default 1, at most [`REPLICATION_FACTOR_MAX`]):
    /// copies of each partition, one per node. Above 1 it needs a `[node]`
    /// section, and may not exceed the cluster's size.
    pub replication_factor: u32,
    /// `acks` (default "all"): when a produce to a replicated partition is
    /// answered, see [`Acks`]. Ignored with `replication_factor = 1`.
    pub acks: Acks,
}

/// When a produce is acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// `"always"`: acknowledged after fsync. Nothing acknowledged is lost.
    Always,
    /// A duration such as `"10ms"`: acknowledged after write, fsynced every
    /// interval. A power loss can lose up to one interval of acknowledged data.
    /// More than zero, at most [`FSYNC_INTERVAL_MAX`].
    Interval(Duration),
}

/// What the `cleanup` key asks for old data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CleanupPolicy {
    /// `"delete"`: sealed segments are deleted by `retention` and `retention_bytes`.
    Delete,
    /// `"compact"`: the compactor keeps the latest record per key in sealed
    /// blocks; tombstones go after `delete_retention`. Nothing is deleted by age.
    Compact,
    /// `"compact,delete"`: both.
    CompactAndDelete,
}

impl std::fmt::Display for CleanupPolicy {
    /// The value as written in the config (`"delete"`, `"compact"`, `"compact,delete"`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CleanupPolicy::Delete => "delete",
            CleanupPolicy::Compact => "compact",
            CleanupPolicy::CompactAndDelete => "compact,delete",
        })
    }
}

impl CleanupPolicy {
    /// Whether retention by age and size applies.
    pub fn deletes(self) -> bool {
        matches!(
            self,
            CleanupPolicy::Delete | CleanupPolicy::CompactAndDelete
        )
    }

    /// Whether key compaction applies.
    pub fn compacts(self) -> bool {
        matches!(
            self,
            CleanupPolicy::Compact | CleanupPolicy::CompactAndDelete
        )
    }
}

/// The `[compactor]` table: the runtime-wide key compactor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompactorConfig {
    /// `memory_budget` (default "256 MiB"): a run whose estimated key map is
    /// larger than this (or than the memory available) is skipped, with the
    /// reason logged and counted.
    /// Between [`COMPACTOR_MEMORY_BUDGET_MIN`] and [`COMPACTOR_MEMORY_BUDGET_MAX`].
    pub memory_budget: u64,
    /// `interval` (default "30s"): how often the compactor checks each
    /// compacted topic's dirty ratio.
    /// Between [`COMPACTOR_INTERVAL_MIN`] and [`COMPACTOR_INTERVAL_MAX`].
    pub interval: Duration,
    /// `rate` (default none = as fast as the machine allows): bytes per
    /// second each of a run's two passes reads, e.g. "32 MiB". Bounds the
    /// CPU and disk a run takes from produce and fetch (a run then lasts
    /// about twice the partition's sealed bytes divided by the rate).
    pub bytes_per_second: Option<u64>,
}

/// Default `[compactor] memory_budget`.
pub const COMPACTOR_MEMORY_BUDGET_DEFAULT: u64 = 256 * 1024 * 1024;
/// Smallest `[compactor] memory_budget`: below this a key map holds too few
/// keys for a run to make progress on any real partition.
pub const COMPACTOR_MEMORY_BUDGET_MIN: u64 = MIB;
/// Largest `[compactor] memory_budget`: a bound well past any machine this
/// runs on, so a typo in the unit ("256 TiB") is caught rather than trusted.
pub const COMPACTOR_MEMORY_BUDGET_MAX: u64 = TIB;
/// Default `[compactor] interval`.
pub const COMPACTOR_INTERVAL_DEFAULT: Duration = Duration::from_secs(30);
/// Shortest `[compactor] interval`: checking dirty ratios more often only
/// burns CPU; a run takes far longer than this anyway.
pub const COMPACTOR_INTERVAL_MIN: Duration = Duration::from_millis(100);
/// Longest `[compactor] interval`: a day without a check lets a compacted
/// topic grow unchecked for too long to be anyone's intent.
pub const COMPACTOR_INTERVAL_MAX: Duration = Duration::from_secs(24 * 60 * 60);
/// How `COMPACTOR_INTERVAL_MAX` reads in messages (humantime would print "1day").
const COMPACTOR_INTERVAL_MAX_TEXT: &str = "1d";
/// Default topic `delete_retention`.
pub const DELETE_RETENTION_DEFAULT: Duration = Duration::from_secs(24 * 60 * 60);
/// Default topic `min_dirty_ratio`.
pub const MIN_DIRTY_RATIO_DEFAULT: f64 = 0.5;

impl Default for CompactorConfig {
    fn default() -> Self {
        CompactorConfig {
            memory_budget: COMPACTOR_MEMORY_BUDGET_DEFAULT,
            interval: COMPACTOR_INTERVAL_DEFAULT,
            bytes_per_second: None,
        }
    }
}

/// A configuration error: where it is and what rule it breaks.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{origin}{location}: {message}")]
pub struct ConfigError {
    /// The file, `"<string>"` (or whatever [`Config::from_toml_str`] was
    /// given), or `"<config>"` for [`Config::validate`].
    pub origin: String,
    /// ":LINE:COLUMN" and/or " (key path)", possibly empty.
    pub location: String,
    /// The rule broken.
    pub message: String,
}

impl Config {
    /// A configuration with no topics, for hosts that build it in code.
    pub fn new(data_dir: impl Into<PathBuf>) -> Config {
        Config {
            data_dir: data_dir.into(),
            topics: Vec::new(),
            startup: StartupConfig::default(),
            http: None,
            kafka: None,
            node: None,
            compactor: CompactorConfig::default(),
            shutdown_timeout: SHUTDOWN_TIMEOUT_DEFAULT,
            pipelines: Vec::new(),
        }
    }

    /// Reads, parses and validates a TOML file. Errors name the path as given.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError {
            origin: origin.clone(),
            location: String::new(),
            message: format!("cannot read the config file: {error}"),
        })?;
        Config::from_toml_str(&text, &origin)
    }

    /// Parses and validates TOML text; `origin` names it in errors.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let source = Source { text, origin };
        let raw: RawConfig = toml::from_str(text).map_err(|error| source.toml_error(&error))?;
        let config = raw.into_config(&source)?;
        // Conversion already checked every rule at its span; this is the
        // same check a host building a Config in code gets, kept as a net.
        config.validate().map_err(|error| ConfigError {
            origin: origin.to_owned(),
            ..error
        })?;
        Ok(config)
    }

    /// Checks every rule that parsing alone cannot. The error's origin is
    /// `"<config>"` and its location the key path, e.g. ` (topic[1].partitions)`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let error = |key_path: String, message: String| ConfigError {
            origin: "<config>".to_owned(),
            location: format!(" ({key_path})"),
            message,
        };
        check_data_dir(&self.data_dir).map_err(|message| error("data_dir".to_owned(), message))?;
        check_shutdown_timeout(self.shutdown_timeout)
            .map_err(|message| error("shutdown_timeout".to_owned(), message))?;
        check_startup(&self.startup)
            .map_err(|broken| error(format!("startup.{}", broken.key), broken.message))?;
        check_compactor(&self.compactor)
            .map_err(|broken| error(format!("compactor.{}", broken.key), broken.message))?;
        for (index, topic) in self.topics.iter().enumerate() {
            check_topic(topic).map_err(|broken| {
                error(format!("topic[{index}].{}", broken.key), broken.message)
            })?;
        }
        for index in 0..self.topics.len() {
            check_unique_name(&self.topics, index)
                .map_err(|message| error(format!("topic[{index}].name"), message))?;
        }
        if let Some(node) = &self.node {
            check_node(node)
                .map_err(|broken| error(format!("node.{}", broken.key), broken.message))?;
        }
        check_cluster_links(self).map_err(|(path, message)| error(path, message))?;
        let pipeline_path = |index: usize, path: &str| {
            let name = self
                .pipelines
                .get(index)
                .map(|pipeline| pipeline.name.as_str());
            join_path(&pipeline_label(index, name), path)
        };
        for (index, pipeline) in self.pipelines.iter().enumerate() {
            check_pipeline(pipeline)
                .map_err(|rule| error(pipeline_path(index, &rule.path), rule.message))?;
        }
        check_pipeline_links(&self.pipelines, &self.topics)
            .map_err(|(index, rule)| error(pipeline_path(index, &rule.path), rule.message))?;
        Ok(())
    }

    /// The topic named `name`.
    pub fn topic(&self, name: &str) -> Option<&TopicConfig> {
        self.topics.iter().find(|t| t.name == name)
    }
}

impl TopicConfig {
    /// A topic named `name` with every other key at its default: 1 partition,
    /// 64 MiB segments, no age or retention limits, fsync "always", 1 MiB
    /// batches, 4 KiB index interval, cleanup "delete", delete retention 24h,
    /// min dirty ratio 0.5, replication factor 1.
    /// The name is not checked here; [`Config::validate`] checks it.
    pub fn with_defaults(name: impl Into<String>) -> TopicConfig {
        TopicConfig {
            name: name.into(),
            partitions: 1,
            segment_bytes: SEGMENT_BYTES_DEFAULT,
            segment_age: None,
            retention: None,
            retention_bytes: None,
            fsync: FsyncPolicy::Always,
            max_batch_bytes: MAX_BATCH_BYTES_DEFAULT,
            index_interval_bytes: INDEX_INTERVAL_BYTES_DEFAULT,
            cleanup: CleanupPolicy::Delete,
            delete_retention: DELETE_RETENTION_DEFAULT,
            min_dirty_ratio: MIN_DIRTY_RATIO_DEFAULT,
            replication_factor: REPLICATION_FACTOR_DEFAULT,
            acks: Acks::All,
        }
    }
}

/// Checks a topic name: `[A-Za-z0-9._-]`, 1..=249 characters, not `.` or `..`.
/// The error message states the whole rule.
pub fn validate_topic_name(name: &str) -> Result<(), String> {
    const RULE: &str =
        "a topic name is 1 to 249 characters of [A-Za-z0-9._-], and not \".\" or \"..\"";
    let length = name.chars().count();
    let problem = if length == 0 {
        "it is empty".to_owned()
    } else if let Some(bad) = name.chars().find(|&c| !is_topic_name_char(c)) {
        format!("{bad:?} is not allowed")
    } else if length > TOPIC_NAME_CHARS_MAX {
        format!("it has {length} characters")
    } else if name == "." || name == ".." {
        "it is a path component".to_owned()
    } else {
        return Ok(());
    };
    Err(format!(
        "invalid topic name {}: {problem}; {RULE}",
        shown_name(name)
    ))
}

fn is_topic_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// Parses a size: plain bytes (`1048576`) or a number and unit
/// (`"64 MiB"`, `"10GiB"`, `"500 KB"`, `"1.5 GiB"`).
///
/// Units, case-insensitive: `B`; `KB`, `MB`, `GB`, `TB` (powers of 1000);
/// `KiB`, `MiB`, `GiB`, `TiB` (powers of 1024). Space between number and
/// unit is optional. A decimal fraction needs a unit; a result that is not a
/// whole number of bytes is rounded down. More than `u64::MAX` bytes is an error.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let invalid = |problem: &str| {
        format!(
            "invalid size {text:?}: {problem}; expected bytes (1048576) or a number and a unit \
             (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), like \"64 MiB\""
        )
    };
    let trimmed = text.trim();
    let number_end = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(number_end);
    let unit = unit.trim_start();
    let (whole, fraction) = match number.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (number, None),
    };
    if whole.is_empty() || fraction.is_some_and(|f| f.is_empty() || f.contains('.')) {
        return Err(invalid("expected a number such as 64 or 1.5"));
    }
    if unit.is_empty() && fraction.is_some() {
        return Err(invalid("a fraction needs a unit"));
    }
    let multiplier = if unit.is_empty() {
        1
    } else {
        unit_bytes(unit).ok_or_else(|| invalid(&format!("unknown unit {unit:?}")))?
    };
    let too_large = || invalid("more than 2^64 - 1 bytes");
    let whole: u64 = whole.parse().map_err(|_| too_large())?;
    let fraction_bytes = fraction.map_or(0, |digits| fraction_of(digits, multiplier));
    whole
        .checked_mul(multiplier)
        .and_then(|bytes| bytes.checked_add(fraction_bytes))
        .ok_or_else(too_large)
}

/// Bytes in one `unit`, or `None` if it is not a size unit.
fn unit_bytes(unit: &str) -> Option<u64> {
    const UNITS: [(&str, u64); 9] = [
        ("b", 1),
        ("kb", 1_000),
        ("mb", 1_000_000),
        ("gb", 1_000_000_000),
        ("tb", 1_000_000_000_000),
        ("kib", 1 << 10),
        ("mib", 1 << 20),
        ("gib", 1 << 30),
        ("tib", 1 << 40),
    ];
    let unit = unit.to_ascii_lowercase();
    UNITS
        .iter()
        .find(|(name, _)| *name == unit)
        .map(|&(_, bytes)| bytes)
}

/// `floor(0.DIGITS * multiplier)`, exactly, for any number of digits.
///
/// Horner's rule from the last digit: `v = floor((digit * m + v) / 10)`.
/// Flooring at each step gives the same result as flooring once, because
/// `floor((a + floor(b)) / 10) == floor((a + b) / 10)` for integer `a`. `v`
/// stays below `multiplier` (at most 2^40), so nothing overflows.
fn fraction_of(digits: &str, multiplier: u64) -> u64 {
    digits.bytes().rev().fold(0, |value, digit| {
        (u64::from(digit - b'0') * multiplier + value) / 10
    })
}

/// A size in the largest binary unit that divides it exactly, for messages.
fn format_size(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    UNITS
        .iter()
        .find(|&&(_, unit)| bytes >= unit && bytes.is_multiple_of(unit))
        .map_or_else(
            || format!("{bytes} B"),
            |&(name, unit)| format!("{} {name}", bytes / unit),
        )
}

// ---------------------------------------------------------------------------
// Semantic rules, shared by parsing (located by span) and `validate`.

/// A rule one key of a table broke.
struct BrokenRule {
    /// The key inside the table, e.g. `partitions`.
    key: &'static str,
    /// The rule, e.g. "partitions must be between 1 and 10000, got 0".
    message: String,
}

fn check_data_dir(data_dir: &Path) -> Result<(), String> {
    if data_dir.as_os_str().is_empty() {
        return Err("data_dir must not be empty".to_owned());
    }
    Ok(())
}

fn check_shutdown_timeout(timeout: Duration) -> Result<(), String> {
    check_positive_duration("shutdown_timeout", timeout, SHUTDOWN_TIMEOUT_MAX)
}

/// `duration` is more than zero and at most `max`.
fn check_positive_duration(key: &str, duration: Duration, max: Duration) -> Result<(), String> {
    if duration.is_zero() || duration > max {
        return Err(format!(
            "{key} must be more than 0s and at most {}, got {}",
            humantime::format_duration(max),
            humantime::format_duration(duration)
        ));
    }
    Ok(())
}

/// Every `[startup]` rule, in key order; the first one broken.
fn check_startup(startup: &StartupConfig) -> Result<(), BrokenRule> {
    let checks: [(&'static str, Result<(), String>); 3] = [
        ("hot_window", check_hot_window(startup.hot_window)),
        (
            "chunk_bytes",
            check_bytes(
                "chunk_bytes",
                startup.chunk_bytes,
                CHUNK_BYTES_MIN..=CHUNK_BYTES_MAX,
            ),
        ),
        (
            "background_load_rate",
            check_background_load_rate(startup.background_load_bytes_per_second),
        ),
    ];
    first_broken(checks)
}

fn check_hot_window(hot_window: Duration) -> Result<(), String> {
    if hot_window > HOT_WINDOW_MAX {
        return Err(format!(
            "hot_window must be at most {AGE_MAX_TEXT}, got {} (\"0s\" turns the startup load off)",
            humantime::format_duration(hot_window)
        ));
    }
    Ok(())
}

fn check_background_load_rate(bytes_per_second: Option<u64>) -> Result<(), String> {
    if bytes_per_second == Some(0) {
        return Err(
            "background_load_rate must be more than 0 B per second (leave it out for no limit)"
                .to_owned(),
        );
    }
    Ok(())
}

/// Every `[compactor]` rule, in key order; the first one broken.
fn check_compactor(compactor: &CompactorConfig) -> Result<(), BrokenRule> {
    let rate = match compactor.bytes_per_second {
        Some(0) => Err("rate must be more than 0 bytes per second".to_owned()),
        _ => Ok(()),
    };
    let checks: [(&'static str, Result<(), String>); 3] = [
        ("rate", rate),
        (
            "memory_budget",
            check_bytes(
                "memory_budget",
                compactor.memory_budget,
                COMPACTOR_MEMORY_BUDGET_MIN..=COMPACTOR_MEMORY_BUDGET_MAX,
            ),
        ),
        ("interval", check_compactor_interval(compactor.interval)),
    ];
    first_broken(checks)
}

fn check_compactor_interval(interval: Duration) -> Result<(), String> {
    if (COMPACTOR_INTERVAL_MIN..=COMPACTOR_INTERVAL_MAX).contains(&interval) {
        return Ok(());
    }
    Err(format!(
        "interval must be between {} and {COMPACTOR_INTERVAL_MAX_TEXT}, got {}",
        humantime::format_duration(COMPACTOR_INTERVAL_MIN),
        humantime::format_duration(interval)
    ))
}

/// The first of `checks` that failed, with its key.
fn first_broken<const N: usize>(
    checks: [(&'static str, Result<(), String>); N],
) -> Result<(), BrokenRule> {
    checks
        .into_iter()
        .find_map(|(key, result)| result.err().map(|message| BrokenRule { key, message }))
        .map_or(Ok(()), Err)
}

/// Every per-topic rule (as [`Config::validate`] checks them); the first
/// one broken, as "key: message". For topics made outside the file.
pub(crate) fn check_topic_config(topic: &TopicConfig) -> Result<(), String> {
    check_topic(topic).map_err(|broken| format!("{}: {}", broken.key, broken.message))
}

/// Every per-topic rule, in file key order; the first one broken.
fn check_topic(topic: &TopicConfig) -> Result<(), BrokenRule> {
    let checks: [(&'static str, Result<(), String>); 12] = [
        ("name", validate_topic_name(&topic.name)),
        ("partitions", check_partitions(i64::from(topic.partitions))),
        (
            "segment_bytes",
            check_bytes(
                "segment_bytes",
                topic.segment_bytes,
                SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX,
            ),
        ),
        ("segment_age", check_age("segment_age", topic.segment_age)),
        ("retention", check_age("retention", topic.retention)),
        (
            "retention_bytes",
            check_retention_bytes(topic.retention_bytes),
        ),
        ("fsync", check_fsync(topic.fsync)),
        (
            "max_batch_bytes",
            check_bytes(
                "max_batch_bytes",
                topic.max_batch_bytes,
                MAX_BATCH_BYTES_MIN..=MAX_BATCH_BYTES_MAX,
            ),
        ),
        (
            "index_interval_bytes",
            check_bytes(
                "index_interval_bytes",
                topic.index_interval_bytes,
                INDEX_INTERVAL_BYTES_MIN..=INDEX_INTERVAL_BYTES_MAX,
            ),
        ),
        (
            "delete_retention",
            check_delete_retention(topic.delete_retention),
        ),
        (
            "min_dirty_ratio",
            check_min_dirty_ratio(topic.min_dirty_ratio),
        ),
        (
            "replication_factor",
            check_replication_factor(i64::from(topic.replication_factor))
                .and_then(|()| check_replicated_cleanup(topic)),
        ),
    ];
    first_broken(checks)
}

fn check_partitions(partitions: i64) -> Result<(), String> {
    check_count("partitions", partitions, 1..=PARTITIONS_MAX)
}

fn check_bytes(key: &str, bytes: u64, bounds: std::ops::RangeInclusive<u64>) -> Result<(), String> {
    if bounds.contains(&bytes) {
        return Ok(());
    }
    Err(format!(
        "{key} must be between {} and {}, got {}",
        format_size(*bounds.start()),
        format_size(*bounds.end()),
        format_size(bytes)
    ))
}

fn check_age(key: &str, age: Option<Duration>) -> Result<(), String> {
    match age {
        Some(age) if age.is_zero() || age > AGE_MAX => Err(format!(
            "{key} must be more than 0s and at most {AGE_MAX_TEXT}, got {} (leave it out for no limit)",
            humantime::format_duration(age)
        )),
        _ => Ok(()),
    }
}

fn check_delete_retention(delete_retention: Duration) -> Result<(), String> {
    if delete_retention.is_zero() || delete_retention > AGE_MAX {
        return Err(format!(
            "delete_retention must be more than 0s and at most {AGE_MAX_TEXT}, got {}",
            humantime::format_duration(delete_retention)
        ));
    }
    Ok(())
}

/// `min_dirty_ratio` is a share: finite (TOML can write `nan` and `inf`) and
/// within 0..=1.
fn check_min_dirty_ratio(ratio: f64) -> Result<(), String> {
    if ratio.is_finite() && (0.0..=1.0).contains(&ratio) {
        return Ok(());
    }
    Err(format!(
        "min_dirty_ratio must be a number from 0 to 1, got {ratio}"
    ))
}

fn check_retention_bytes(retention_bytes: Option<u64>) -> Result<(), String> {
    if retention_bytes == Some(0) {
        return Err("retention_bytes must be more than 0 B (leave it out for no limit)".to_owned());
    }
    Ok(())
}

fn check_fsync(fsync: FsyncPolicy) -> Result<(), String> {
    match fsync {
        FsyncPolicy::Interval(interval) if interval.is_zero() || interval > FSYNC_INTERVAL_MAX => {
            Err(format!(
                "fsync interval must be more than 0s and at most {}, got {} (or use \"always\")",
                humantime::format_duration(FSYNC_INTERVAL_MAX),
                humantime::format_duration(interval)
            ))
        }
        _ => Ok(()),
    }
}

fn check_replication_factor(replication_factor: i64) -> Result<(), String> {
    if !(1..=i64::from(REPLICATION_FACTOR_MAX)).contains(&replication_factor) {
        return Err(format!(
            "replication_factor = {replication_factor} is out of range: it must be between 1 and {REPLICATION_FACTOR_MAX}"
        ));
    }
    Ok(())
}

/// A replicated partition's log is its Raft log: it may drop old entries
/// only once a lagging replica can be sent sealed blocks instead
/// (snapshots), which is not built yet. Until then, no retention and no
/// compaction on replicated topics.
fn check_replicated_cleanup(topic: &TopicConfig) -> Result<(), String> {
    if topic.replication_factor <= 1 {
        return Ok(());
    }
    let dropping = if topic.retention.is_some() {
        Some("retention")
    } else if topic.retention_bytes.is_some() {
        Some("retention_bytes")
    } else if topic.cleanup.compacts() {
        Some("cleanup = \"compact\"")
    } else {
        None
    };
    match dropping {
        None => Ok(()),
        Some(what) => Err(format!(
            "replication_factor = {} with {what}: a replicated log cannot drop old entries yet \
             (a lagging replica would need them sent as snapshots, which is not implemented); \
             remove {what}, or use replication_factor = 1",
            topic.replication_factor
        )),
    }
}

/// The `[node]` rules that need no other section, in key order; the first
/// one broken.
fn check_node(node: &NodeConfig) -> Result<(), BrokenRule> {
    let broken = |key: &'static str, message: String| Err(BrokenRule { key, message });
    if node.id == 0 {
        return broken(
            "id",
            "id = 0: node ids start at 1 (Raft reserves 0 for \"none\")".to_owned(),
        );
    }
    if let Err(rule) = check_peers(node) {
        return broken("peers", rule.message);
    }
    if let Err(message) = check_cluster_id(&node.cluster_id) {
        return broken("cluster_id", message);
    }
    if node.tick.is_zero() || node.tick > TICK_MAX {
        return broken(
            "tick",
            format!(
                "tick = {} is out of range: more than 0 and at most {}",
                humantime::format_duration(node.tick),
                humantime::format_duration(TICK_MAX)
            ),
        );
    }
    if node.heartbeat_ticks == 0 || node.heartbeat_ticks > TICKS_MAX {
        return broken(
            "heartbeat_ticks",
            format!(
                "heartbeat_ticks = {} is out of range: at least 1 and at most {TICKS_MAX}",
                node.heartbeat_ticks
            ),
        );
    }
    // raft-rs refuses a config without this; it would also let a follower
    // start elections between a healthy leader's heartbeats.
    if node.election_ticks <= node.heartbeat_ticks || node.election_ticks > TICKS_MAX {
        return broken(
            "election_ticks",
            format!(
                "election_ticks = {} must be more than heartbeat_ticks = {} (a follower would \
                 start elections between a leader's heartbeats) and at most {TICKS_MAX}",
                node.election_ticks, node.heartbeat_ticks
            ),
        );
    }
    Ok(())
}

/// A broken `[node] peers` rule: the entry that broke it, if it is one
/// entry's fault, and the rule.
struct PeerRule {
    index: Option<usize>,
    message: String,
}

/// The `[node] peers` rules: a cluster of at most [`REPLICATION_FACTOR_MAX`]
/// nodes, each with its own id (not 0) and its own address.
fn check_peers(node: &NodeConfig) -> Result<(), PeerRule> {
    let broken = |index: usize, message: String| {
        Err(PeerRule {
            index: Some(index),
            message: format!("peers[{index}] {message}"),
        })
    };
    if node.peers.len() + 1 > REPLICATION_FACTOR_MAX as usize {
        return Err(PeerRule {
            index: None,
            message: format!(
                "a cluster of {} nodes (this one and {} peers) is over the limit of \
                 {REPLICATION_FACTOR_MAX} nodes",
                node.peers.len() + 1,
                node.peers.len()
            ),
        });
    }
    for (index, peer) in node.peers.iter().enumerate() {
        let shown = format!("\"{}@{}\"", peer.id, peer.address);
        if peer.id == 0 {
            return broken(
                index,
                format!("{shown} has id 0: node ids start at 1 (Raft reserves 0 for \"none\")"),
            );
        }
        if peer.id == node.id {
            return broken(index, format!("{shown} has this node's own id {}", node.id));
        }
        if peer.address == node.listen {
            return broken(
                index,
                format!("{shown} has this node's own listen address {}", node.listen),
            );
        }
        let earlier = &node.peers[..index];
        if let Some(other) = earlier.iter().position(|other| other.id == peer.id) {
            return broken(
                index,
                format!("{shown} has the same id as peers[{other}]: node ids are unique"),
            );
        }
        if let Some(other) = earlier
            .iter()
            .position(|other| other.address == peer.address)
        {
            return broken(
                index,
                format!(
                    "{shown} has the same address as peers[{other}]: each node listens on its own"
                ),
            );
        }
    }
    Ok(())
}

/// `cluster_id`: 1 to [`CLUSTER_ID_BYTES_MAX`] bytes of `[A-Za-z0-9._-]`.
fn check_cluster_id(cluster_id: &str) -> Result<(), String> {
    let problem = if cluster_id.is_empty() {
        "it is empty".to_owned()
    } else if let Some(bad) = cluster_id
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        format!("{bad:?} is not allowed")
    } else if cluster_id.len() > CLUSTER_ID_BYTES_MAX {
        format!("it has {} characters", cluster_id.len())
    } else {
        return Ok(());
    };
    Err(format!(
        "invalid cluster_id {cluster_id:?}: {problem}; a cluster id is 1 to \
         {CLUSTER_ID_BYTES_MAX} characters of [A-Za-z0-9._-]"
    ))
}

/// Rules across sections: replicated topics need a cluster large enough,
/// and the node's listen address must not clash with the other listeners.
/// Returns the key path and the message.
fn check_cluster_links(config: &Config) -> Result<(), (String, String)> {
    let members = config.node.as_ref().map_or(1, |node| node.peers.len() + 1);
    for (index, topic) in config.topics.iter().enumerate() {
        if topic.replication_factor as usize > members {
            let message = if config.node.is_none() {
                let peers = topic.replication_factor - 1;
                format!(
                    "replication_factor = {} needs a [node] section with at least {peers} {} \
                     (one copy per node; without [node] this is a single node)",
                    topic.replication_factor,
                    if peers == 1 { "peer" } else { "peers" }
                )
            } else {
                format!(
                    "replication_factor = {} is more than the cluster's {members} nodes \
                     (this node and its peers; one copy per node)",
                    topic.replication_factor
                )
            };
            return Err((format!("topic[{index}].replication_factor"), message));
        }
    }
    if let Some(node) = &config.node {
        let others = [
            ("http.listen", config.http.as_ref().map(|http| http.listen)),
            (
                "kafka.listen",
                config.kafka.as_ref().map(|kafka| kafka.listen),
            ),
        ];
        let present = others
            .into_iter()
            .filter_map(|(key, address)| Some((key, address?)));
        for (key, address) in present {
            if listeners_clash(address, node.listen) {
                return Err((
                    "node.listen".to_owned(),
                    format!(
                        "listen {} clashes with {key} = {address}: peer traffic needs its own port",
                        node.listen
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Whether two listeners could not both bind: the same port on the same
/// IP, or on any IP when one of them is the unspecified address (0.0.0.0
/// or [::] takes the port on every interface). Port 0 picks a free port,
/// so it never clashes.
fn listeners_clash(one: std::net::SocketAddr, other: std::net::SocketAddr) -> bool {
    one.port() != 0
        && one.port() == other.port()
        && (one.ip() == other.ip() || one.ip().is_unspecified() || other.ip().is_unspecified())
}

/// Parses one `[node] peers` entry, `"ID@IP:PORT"`.
fn peer_value(text: &str) -> Result<PeerConfig, String> {
    let bad = |why: String| {
        format!("invalid peer {text:?}: {why}; expected \"ID@IP:PORT\" like \"2@127.0.0.1:7002\"")
    };
    let (id, address) = text
        .trim()
        .split_once('@')
        .ok_or_else(|| bad("no '@' between the node id and the address".to_owned()))?;
    let id: u64 = id
        .parse()
        .map_err(|_| bad(format!("{id:?} is not a node id")))?;
    let address = address.parse().map_err(|error| {
        bad(format!(
            "{address:?} is not an IP address and port ({error})"
        ))
    })?;
    Ok(PeerConfig { id, address })
}

/// Topic names must differ ignoring ASCII case: each topic gets directories
/// named after it, and on a case-insensitive file system (macOS, Windows)
/// "Events" and "events" would share them.
fn check_unique_name(topics: &[TopicConfig], index: usize) -> Result<(), String> {
    let name = &topics[index].name;
    match topics[..index]
        .iter()
        .position(|earlier| earlier.name.eq_ignore_ascii_case(name))
    {
        Some(earlier) => Err(format!(
            "duplicate topic name {name:?}: topic[{earlier}] is already named {:?} \
             (names must differ ignoring letter case)",
            topics[earlier].name
        )),
        None => Ok(()),
    }
}

// ---------------------------------------------------------------------------
// Raw serde structs and their conversion.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    // Optional here so that "missing" gets our message, not serde's.
    data_dir: Option<Spanned<String>>,
    #[serde(default)]
    topic: Vec<Spanned<RawTopic>>,
    shutdown_timeout: Option<Spanned<String>>,
    startup: Option<Spanned<RawStartup>>,
    http: Option<Spanned<RawHttp>>,
    kafka: Option<Spanned<RawKafka>>,
    node: Option<Spanned<RawNode>>,
    compactor: Option<Spanned<RawCompactor>>,
    #[serde(default)]
    pipeline: Vec<Located<RawPipeline>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    id: Option<Spanned<i64>>,
    listen: Option<Spanned<String>>,
    peers: Option<Spanned<Vec<Spanned<String>>>>,
    cluster_id: Option<Spanned<String>>,
    tick: Option<Spanned<String>>,
    election_ticks: Option<Spanned<i64>>,
    heartbeat_ticks: Option<Spanned<i64>>,
    join: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStartup {
    hot_window: Option<Spanned<String>>,
    chunk_bytes: Option<Spanned<RawSize>>,
    background_load_rate: Option<Spanned<RawSize>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    listen: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKafka {
    listen: Option<Spanned<String>>,
    advertised: Option<Spanned<String>>,
    max_connections: Option<Spanned<i64>>,
    request_max_bytes: Option<Spanned<RawSize>>,
    allow_topic_management: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCompactor {
    memory_budget: Option<Spanned<RawSize>>,
    interval: Option<Spanned<String>>,
    rate: Option<Spanned<RawSize>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTopic {
    name: Option<Spanned<String>>,
    // Integers are i64 in TOML; kept wide so that -1 or 2^40 get the range rule's message.
    partitions: Option<Spanned<i64>>,
    segment_bytes: Option<Spanned<RawSize>>,
    segment_age: Option<Spanned<String>>,
    retention: Option<Spanned<String>>,
    retention_bytes: Option<Spanned<RawSize>>,
    fsync: Option<Spanned<String>>,
    max_batch_bytes: Option<Spanned<RawSize>>,
    index_interval_bytes: Option<Spanned<RawSize>>,
    cleanup: Option<Spanned<String>>,
    delete_retention: Option<Spanned<String>>,
    min_dirty_ratio: Option<Spanned<RawRatio>>,
    replication_factor: Option<Spanned<i64>>,
    acks: Option<Spanned<String>>,
}

/// A size as written: a TOML integer (bytes) or a string for [`parse_size`].
enum RawSize {
    Bytes(i64),
    Text(String),
}

impl<'de> Deserialize<'de> for RawSize {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl serde::de::Visitor<'_> for SizeVisitor {
            type Value = RawSize;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter
                    .write_str("a size: an integer number of bytes or a string like \"64 MiB\"")
            }
            fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<RawSize, E> {
                Ok(RawSize::Bytes(value))
            }
            fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<RawSize, E> {
                i64::try_from(value)
                    .map(RawSize::Bytes)
                    .map_err(|_| E::custom("a size of more than 2^63 - 1 bytes"))
            }
            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<RawSize, E> {
                Ok(RawSize::Text(value.to_owned()))
            }
        }
        deserializer.deserialize_any(SizeVisitor)
    }
}

/// A ratio as written: a TOML float, or an integer (`0`, `1`) that reads as
/// one. Any integer is taken here so that `2` gets the range rule's message.
struct RawRatio(f64);

impl<'de> Deserialize<'de> for RawRatio {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RatioVisitor;
        impl serde::de::Visitor<'_> for RatioVisitor {
            type Value = RawRatio;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a number from 0 to 1, like 0.5")
            }
            fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<RawRatio, E> {
                Ok(RawRatio(value))
            }
            // `as` is exact for the integers that pass the range rule (0, 1);
            // the others only appear in its message.
            fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<RawRatio, E> {
                Ok(RawRatio(value as f64))
            }
            fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<RawRatio, E> {
                Ok(RawRatio(value as f64))
            }
        }
        deserializer.deserialize_any(RatioVisitor)
    }
}

/// The text being parsed and its name, to turn spans into locations.
struct Source<'a> {
    text: &'a str,
    origin: &'a str,
}

impl Source<'_> {
    fn error(
        &self,
        span: Option<Range<usize>>,
        key_path: Option<&str>,
        message: String,
    ) -> ConfigError {
        let mut location = String::new();
        if let Some(span) = span {
            let (line, column) = line_column(self.text, span.start);
            location.push_str(&format!(":{line}:{column}"));
        }
        if let Some(key_path) = key_path {
            location.push_str(&format!(" ({key_path})"));
        }
        ConfigError {
            origin: self.origin.to_owned(),
            location,
            message,
        }
    }

    /// A `toml` error (syntax, unknown key, wrong type) with its line, column
    /// and, where the document's shape allows finding it, its key path.
    fn toml_error(&self, error: &toml::de::Error) -> ConfigError {
        let message = error.message().trim_end();
        let unknown_key = message
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split_once('`'))
            .map(|(key, _)| key);
        let key_path = error
            .span()
            .and_then(|span| key_path_at(self.text, span.start, unknown_key));
        // Errors are one line (CONTRACT.md); toml's may have several.
        let message = message
            .replacen("unknown field", "unknown key", 1)
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        self.error(error.span(), key_path.as_deref(), message)
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// A table with the span of each value, to find which key an error is in.
type SpannedValues = BTreeMap<String, Spanned<toml::Value>>;

/// The topic tables with their spans, leniently: any keys, any value types.
#[derive(Deserialize)]
struct TopicTables {
    #[serde(default)]
    topic: Vec<Spanned<toml::Table>>,
}

/// The topic tables with the span of each value. Fails on some documents
/// that [`TopicTables`] reads (a dotted key's table has no span).
#[derive(Deserialize)]
struct TopicValueSpans {
    #[serde(default)]
    topic: Vec<SpannedValues>,
}

/// The key path at byte `offset`, found by re-reading the document leniently.
/// `unknown_key` (from an unknown-key error, whose span is the key itself)
/// names the key when no value contains `offset`. `None` when the document
/// cannot be read that way (a syntax error, a duplicate key) or the key is
/// in a table that only a dotted header such as `[topic.x]` names.
fn key_path_at(text: &str, offset: usize, unknown_key: Option<&str>) -> Option<String> {
    if let Some(path) = pipeline_key_path_at(text, offset, unknown_key) {
        return Some(path);
    }
    let value_at = |table: &SpannedValues| {
        table
            .iter()
            .find(|(_, value)| value.span().contains(&offset))
            .map(|(key, _)| key.clone())
    };
    if let Ok(tables) = toml::from_str::<TopicTables>(text) {
        let topic = tables
            .topic
            .iter()
            .enumerate()
            .find(|(_, table)| table.span().contains(&offset));
        if let Some((index, table)) = topic {
            let key = toml::from_str::<TopicValueSpans>(text)
                .ok()
                .and_then(|spans| spans.topic.get(index).and_then(value_at))
                .or_else(|| {
                    unknown_key
                        .filter(|key| table.get_ref().contains_key(*key))
                        .map(str::to_owned)
                });
            return Some(match key {
                Some(key) => format!("topic[{index}].{key}"),
                None => format!("topic[{index}]"),
            });
        }
    }
    if let Some(key) = toml::from_str::<SpannedValues>(text)
        .ok()
        .as_ref()
        .and_then(value_at)
    {
        let inner = section_key_at(text, &key, offset, unknown_key);
        return Some(match inner {
            Some(inner) => format!("{key}.{inner}"),
            None => key,
        });
    }
    let top: toml::Table = toml::from_str(text).ok()?;
    unknown_key
        .filter(|key| top.contains_key(*key))
        .map(str::to_owned)
}

/// The single tables (`[startup]`, `[http]`, `[compactor]`) with the span
/// of each value, leniently: any keys, any value types.
#[derive(Deserialize)]
struct SectionValueSpans {
    startup: Option<SpannedValues>,
    http: Option<SpannedValues>,
    kafka: Option<SpannedValues>,
    node: Option<SpannedValues>,
    compactor: Option<SpannedValues>,
}

impl SectionValueSpans {
    fn into_section(self, section: &str) -> Option<SpannedValues> {
        match section {
            "startup" => self.startup,
            "http" => self.http,
            "kafka" => self.kafka,
            "node" => self.node,
            "compactor" => self.compactor,
            _ => None,
        }
    }
}

/// The single tables, leniently, to tell whether an unknown key is in one.
#[derive(Deserialize)]
struct SectionTables {
    startup: Option<toml::Table>,
    http: Option<toml::Table>,
    kafka: Option<toml::Table>,
    node: Option<toml::Table>,
    compactor: Option<toml::Table>,
}

impl SectionTables {
    fn into_section(self, section: &str) -> Option<toml::Table> {
        match section {
            "startup" => self.startup,
            "http" => self.http,
            "kafka" => self.kafka,
            "node" => self.node,
            "compactor" => self.compactor,
            _ => None,
        }
    }
}

/// The key inside the single table `section` at byte `offset` (which is
/// inside that table), or `unknown_key` if the table has it. `None` for
/// other top-level keys and documents that cannot be read leniently.
fn section_key_at(
    text: &str,
    section: &str,
    offset: usize,
    unknown_key: Option<&str>,
) -> Option<String> {
    let at_value = toml::from_str::<SectionValueSpans>(text)
        .ok()
        .and_then(|spans| spans.into_section(section))
        .and_then(|table| {
            table
                .into_iter()
                .find(|(_, value)| value.span().contains(&offset))
                .map(|(key, _)| key)
        });
    at_value.or_else(|| {
        let tables = toml::from_str::<SectionTables>(text).ok()?;
        let table = tables.into_section(section)?;
        unknown_key
            .filter(|key| table.contains_key(*key))
            .map(str::to_owned)
    })
}

impl RawConfig {
    fn into_config(self, source: &Source<'_>) -> Result<Config, ConfigError> {
        let data_dir = self.data_dir.ok_or_else(|| {
            source.error(
                None,
                Some("data_dir"),
                "missing required key `data_dir` (the data directory, e.g. data_dir = \"./data\")"
                    .to_owned(),
            )
        })?;
        let data_dir_span = data_dir.span();
        let data_dir = PathBuf::from(data_dir.into_inner());
        check_data_dir(&data_dir)
            .map_err(|message| source.error(Some(data_dir_span), Some("data_dir"), message))?;
        let mut topics = Vec::with_capacity(self.topic.len());
        let mut name_spans = Vec::with_capacity(self.topic.len());
        let mut factor_spans = Vec::with_capacity(self.topic.len());
        for (index, raw) in self.topic.into_iter().enumerate() {
            let table_span = raw.span();
            factor_spans.push(raw.get_ref().replication_factor.as_ref().map(Spanned::span));
            let (topic, name_span) = raw.into_inner().into_topic(index, table_span, source)?;
            topics.push(topic);
            name_spans.push(name_span);
            check_unique_name(&topics, index).map_err(|message| {
                source.error(
                    name_spans.get(index).cloned(),
                    Some(&format!("topic[{index}].name")),
                    message,
                )
            })?;
        }
        let mut config = Config {
            data_dir,
            topics,
            startup: StartupConfig::default(),
            http: None,
            kafka: None,
            node: None,
            compactor: CompactorConfig::default(),
            shutdown_timeout: SHUTDOWN_TIMEOUT_DEFAULT,
            pipelines: Vec::new(),
        };
        if let Some(timeout) = self.shutdown_timeout {
            let span = timeout.span();
            let fail =
                |message| source.error(Some(span.clone()), Some("shutdown_timeout"), message);
            config.shutdown_timeout =
                duration_value("shutdown_timeout", timeout.get_ref()).map_err(fail)?;
            check_shutdown_timeout(config.shutdown_timeout).map_err(fail)?;
        }
        if let Some(startup) = self.startup {
            let table_span = startup.span();
            config.startup = startup.into_inner().into_startup(table_span, source)?;
        }
        if let Some(http) = self.http {
            let table_span = http.span();
            config.http = Some(http.into_inner().into_http(table_span, source)?);
        }
        if let Some(kafka) = self.kafka {
            let table_span = kafka.span();
            config.kafka = Some(kafka.into_inner().into_kafka(table_span, source)?);
        }
        let mut node_listen_span = None;
        if let Some(node) = self.node {
            let table_span = node.span();
            node_listen_span = node.get_ref().listen.as_ref().map(Spanned::span);
            config.node = Some(node.into_inner().into_node(table_span, source)?);
        }
        check_cluster_links(&config).map_err(|(path, message)| {
            let span = if path == "node.listen" {
                node_listen_span
            } else {
                factor_spans
                    .iter()
                    .enumerate()
                    .find(|(index, _)| path == format!("topic[{index}].replication_factor"))
                    .and_then(|(_, span)| span.clone())
            };
            source.error(span, Some(&path), message)
        })?;
        if let Some(compactor) = self.compactor {
            let table_span = compactor.span();
            config.compactor = compactor.into_inner().into_compactor(table_span, source)?;
        }
        let mut pipeline_spans = Vec::with_capacity(self.pipeline.len());
        for (index, raw) in self.pipeline.into_iter().enumerate() {
            let (pipeline, spans) = raw.value.into_pipeline(index, raw.span, source)?;
            config.pipelines.push(pipeline);
            pipeline_spans.push(spans);
        }
        check_pipeline_links(&config.pipelines, &config.topics).map_err(|(index, rule)| {
            let name = config.pipelines.get(index).map(|p| p.name.as_str());
            source.error(
                pipeline_spans
                    .get(index)
                    .and_then(|spans| spans.find(&rule.path)),
                Some(&join_path(&pipeline_label(index, name), &rule.path)),
                rule.message,
            )
        })?;
        Ok(config)
    }
}

impl RawStartup {
    /// Converts the `[startup]` table (at `table_span`) and checks its rules.
    fn into_startup(
        self,
        table_span: Range<usize>,
        source: &Source<'_>,
    ) -> Result<StartupConfig, ConfigError> {
        let mut spans = KeySpans::default();
        spans.record("hot_window", &self.hot_window);
        spans.record("chunk_bytes", &self.chunk_bytes);
        spans.record("background_load_rate", &self.background_load_rate);
        let fail = |key: &str, message: String| {
            source.error(
                Some(spans.get(key).unwrap_or_else(|| table_span.clone())),
                Some(&format!("startup.{key}")),
                message,
            )
        };
        let mut startup = StartupConfig::default();
        if let Some(window) = self.hot_window {
            startup.hot_window = duration_value("hot_window", window.get_ref())
                .map_err(|m| fail("hot_window", m))?;
        }
        if let Some(size) = self.chunk_bytes {
            startup.chunk_bytes =
                size_value("chunk_bytes", size.get_ref()).map_err(|m| fail("chunk_bytes", m))?;
        }
        if let Some(rate) = self.background_load_rate {
            startup.background_load_bytes_per_second = Some(
                rate_value("background_load_rate", rate.get_ref())
                    .map_err(|m| fail("background_load_rate", m))?,
            );
        }
        check_startup(&startup).map_err(|broken| fail(broken.key, broken.message))?;
        Ok(startup)
    }
}

impl RawCompactor {
    /// Converts the `[compactor]` table (at `table_span`) and checks its rules.
    fn into_compactor(
        self,
        table_span: Range<usize>,
        source: &Source<'_>,
    ) -> Result<CompactorConfig, ConfigError> {
        let mut spans = KeySpans::default();
        spans.record("memory_budget", &self.memory_budget);
        spans.record("interval", &self.interval);
        spans.record("rate", &self.rate);
        let fail = |key: &str, message: String| {
            source.error(
                Some(spans.get(key).unwrap_or_else(|| table_span.clone())),
                Some(&format!("compactor.{key}")),
                message,
            )
        };
        let mut compactor = CompactorConfig::default();
        if let Some(size) = self.memory_budget {
            compactor.memory_budget = size_value("memory_budget", size.get_ref())
                .map_err(|m| fail("memory_budget", m))?;
        }
        if let Some(interval) = self.interval {
            compactor.interval =
                duration_value("interval", interval.get_ref()).map_err(|m| fail("interval", m))?;
        }
        if let Some(rate) = self.rate {
            compactor.bytes_per_second =
                Some(rate_value("rate", rate.get_ref()).map_err(|m| fail("rate", m))?);
        }
        check_compactor(&compactor).map_err(|broken| fail(broken.key, broken.message))?;
        Ok(compactor)
    }
}

impl RawNode {
    /// Converts the `[node]` table (at `table_span`).
    fn into_node(
        self,
        table_span: Range<usize>,
        source: &Source<'_>,
    ) -> Result<NodeConfig, ConfigError> {
        let mut spans = KeySpans::default();
        spans.record("id", &self.id);
        spans.record("listen", &self.listen);
        spans.record("peers", &self.peers);
        spans.record("cluster_id", &self.cluster_id);
        spans.record("tick", &self.tick);
        spans.record("election_ticks", &self.election_ticks);
        spans.record("heartbeat_ticks", &self.heartbeat_ticks);
        let fail_at = |key: &str, span: Option<Range<usize>>, message: String| {
            source.error(
                Some(
                    span.or_else(|| spans.get(key))
                        .unwrap_or_else(|| table_span.clone()),
                ),
                Some(&format!("node.{key}")),
                message,
            )
        };
        let fail = |key: &str, message: String| fail_at(key, None, message);
        let missing = |key: &str, example: &str| {
            fail(
                key,
                format!(
                    "missing required key `{key}` in [node] (e.g. {example}; leave [node] out \
                     to run a single node)"
                ),
            )
        };
        let id = self.id.ok_or_else(|| missing("id", "id = 1"))?;
        let id = u64::try_from(*id.get_ref()).map_err(|_| {
            fail(
                "id",
                format!("id = {} is not a node id (1 or more)", id.get_ref()),
            )
        })?;
        let listen = self
            .listen
            .ok_or_else(|| missing("listen", "listen = \"127.0.0.1:7001\""))?;
        let listen = listen_value(listen.get_ref()).map_err(|m| fail("listen", m))?;
        let peers = self.peers.ok_or_else(|| {
            missing(
                "peers",
                "peers = [\"2@127.0.0.1:7002\", \"3@127.0.0.1:7003\"]",
            )
        })?;
        let peer_spans: Vec<Range<usize>> = peers.get_ref().iter().map(Spanned::span).collect();
        let peers = peers
            .into_inner()
            .into_iter()
            .map(|peer| {
                let span = peer.span();
                peer_value(peer.get_ref()).map_err(|m| fail_at("peers", Some(span), m))
            })
            .collect::<Result<Vec<_>, _>>()?;
        // The upper bound is `check_node`'s, at the same span.
        let count = |key: &str, value: Option<Spanned<i64>>, default: usize| match value {
            None => Ok(default),
            Some(value) => usize::try_from(*value.get_ref()).map_err(|_| {
                fail(
                    key,
                    format!(
                        "{key} = {} is out of range: a number of ticks, at most {TICKS_MAX}",
                        value.get_ref()
                    ),
                )
            }),
        };
        let node = NodeConfig {
            id,
            listen,
            peers,
            cluster_id: self
                .cluster_id
                .map_or_else(|| CLUSTER_ID_DEFAULT.to_owned(), |id| id.into_inner()),
            tick: match self.tick {
                None => TICK_DEFAULT,
                Some(tick) => {
                    duration_value("tick", tick.get_ref()).map_err(|m| fail("tick", m))?
                }
            },
            election_ticks: count(
                "election_ticks",
                self.election_ticks,
                ELECTION_TICKS_DEFAULT,
            )?,
            heartbeat_ticks: count(
                "heartbeat_ticks",
                self.heartbeat_ticks,
                HEARTBEAT_TICKS_DEFAULT,
            )?,
            join: self.join.is_some_and(|join| *join.get_ref()),
        };
        check_node(&node).map_err(|broken| {
            // A rule one peer broke is reported at that entry of the array.
            let peer_span = match check_peers(&node) {
                Err(PeerRule {
                    index: Some(index), ..
                }) if broken.key == "peers" => peer_spans.get(index).cloned(),
                _ => None,
            };
            fail_at(broken.key, peer_span, broken.message)
        })?;
        Ok(node)
    }
}

impl RawKafka {
    /// Converts the `[kafka]` table (at `table_span`).
    fn into_kafka(
        self,
        table_span: Range<usize>,
        source: &Source<'_>,
    ) -> Result<KafkaConfig, ConfigError> {
        let mut spans = KeySpans::default();
        spans.record("listen", &self.listen);
        spans.record("advertised", &self.advertised);
        spans.record("max_connections", &self.max_connections);
        spans.record("request_max_bytes", &self.request_max_bytes);
        spans.record("allow_topic_management", &self.allow_topic_management);
        let fail = |key: &str, message: String| {
            source.error(
                Some(spans.get(key).unwrap_or_else(|| table_span.clone())),
                Some(&format!("kafka.{key}")),
                message,
            )
        };
        let listen = self.listen.ok_or_else(|| {
            fail(
                "listen",
                "missing required key `listen` in [kafka] (e.g. listen = \"127.0.0.1:9092\"; \
                 leave [kafka] out to turn the listener off)"
                    .to_owned(),
            )
        })?;
        let listen = listen_value(listen.get_ref()).map_err(|m| fail("listen", m))?;
        let advertised = match self.advertised {
            None => None,
            Some(text) => Some(host_port_value(text.get_ref()).map_err(|m| fail("advertised", m))?),
        };
        let max_connections = match self.max_connections {
            None => KAFKA_MAX_CONNECTIONS_DEFAULT,
            Some(value) => {
                let value = *value.get_ref();
                u32::try_from(value)
                    .ok()
                    .filter(|count| (1..=KAFKA_MAX_CONNECTIONS_MAX).contains(count))
                    .ok_or_else(|| {
                        fail(
                            "max_connections",
                            format!(
                                "max_connections = {value} is out of range: \
                                 it must be between 1 and {KAFKA_MAX_CONNECTIONS_MAX}"
                            ),
                        )
                    })?
            }
        };
        let request_max_bytes = match self.request_max_bytes {
            None => KAFKA_REQUEST_MAX_BYTES_DEFAULT,
            Some(size) => {
                let bytes = size_value("request_max_bytes", size.get_ref())
                    .map_err(|m| fail("request_max_bytes", m))?;
                if !(KAFKA_REQUEST_MAX_BYTES_MIN..=KAFKA_REQUEST_MAX_BYTES_MAX).contains(&bytes) {
                    return Err(fail(
                        "request_max_bytes",
                        format!(
                            "request_max_bytes = {bytes} bytes is out of range: it must be \
                             between {KAFKA_REQUEST_MAX_BYTES_MIN} and {KAFKA_REQUEST_MAX_BYTES_MAX} bytes"
                        ),
                    ));
                }
                bytes
            }
        };
        let allow_topic_management = self
            .allow_topic_management
            .is_some_and(|value| *value.get_ref());
        Ok(KafkaConfig {
            listen,
            advertised,
            max_connections,
            request_max_bytes,
            allow_topic_management,
        })
    }
}

/// Parses `"host:port"` (a host name or IP address, and a port 1..=65535).
fn host_port_value(text: &str) -> Result<(String, u16), String> {
    let bad = || format!("{text:?} is not \"host:port\" (e.g. \"broker.example:9092\")");
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 || host.chars().any(char::is_whitespace) {
        return Err(bad());
    }
    Ok((host.to_owned(), port))
}

impl RawHttp {
    /// Converts the `[http]` table (at `table_span`).
    fn into_http(
        self,
        table_span: Range<usize>,
        source: &Source<'_>,
    ) -> Result<HttpConfig, ConfigError> {
        let listen = self.listen.ok_or_else(|| {
            source.error(
                Some(table_span),
                Some("http.listen"),
                "missing required key `listen` in [http] (e.g. listen = \"127.0.0.1:9644\"; \
                 leave [http] out to turn the listener off)"
                    .to_owned(),
            )
        })?;
        let listen_span = listen.span();
        let listen = listen_value(listen.get_ref())
            .map_err(|m| source.error(Some(listen_span), Some("http.listen"), m))?;
        Ok(HttpConfig { listen })
    }
}

/// Spans of the keys a topic table set, to locate a broken rule.
#[derive(Default)]
struct KeySpans(Vec<(&'static str, Range<usize>)>);

impl KeySpans {
    fn record<T>(&mut self, key: &'static str, value: &Option<Spanned<T>>) {
        if let Some(value) = value {
            self.0.push((key, value.span()));
        }
    }

    fn get(&self, key: &str) -> Option<Range<usize>> {
        self.0
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, span)| span.clone())
    }
}

impl RawTopic {
    /// Converts one `[[topic]]` table (the `index`th, at `table_span`) and
    /// checks its rules. Returns the topic and the span of its name.
    fn into_topic(
        self,
        index: usize,
        table_span: Range<usize>,
        source: &Source<'_>,
    ) -> Result<(TopicConfig, Range<usize>), ConfigError> {
        let mut spans = KeySpans::default();
        spans.record("name", &self.name);
        spans.record("partitions", &self.partitions);
        spans.record("segment_bytes", &self.segment_bytes);
        spans.record("segment_age", &self.segment_age);
        spans.record("retention", &self.retention);
        spans.record("retention_bytes", &self.retention_bytes);
        spans.record("fsync", &self.fsync);
        spans.record("max_batch_bytes", &self.max_batch_bytes);
        spans.record("index_interval_bytes", &self.index_interval_bytes);
        spans.record("cleanup", &self.cleanup);
        spans.record("delete_retention", &self.delete_retention);
        spans.record("min_dirty_ratio", &self.min_dirty_ratio);
        spans.record("replication_factor", &self.replication_factor);
        spans.record("acks", &self.acks);
        // A key that is not set (a missing `name`) is located at its table.
        let fail = |key: &str, message: String| {
            source.error(
                Some(spans.get(key).unwrap_or_else(|| table_span.clone())),
                Some(&format!("topic[{index}].{key}")),
                message,
            )
        };

        let name = self.name.ok_or_else(|| {
            fail(
                "name",
                "missing required key `name` in [[topic]]".to_owned(),
            )
        })?;
        let name_span = name.span();
        let mut topic = TopicConfig::with_defaults(name.into_inner());
        if let Some(partitions) = self.partitions {
            topic.partitions = to_u32(*partitions.get_ref(), check_partitions)
                .map_err(|m| fail("partitions", m))?;
        }
        if let Some(size) = self.segment_bytes {
            topic.segment_bytes = size_value("segment_bytes", size.get_ref())
                .map_err(|m| fail("segment_bytes", m))?;
        }
        if let Some(age) = self.segment_age {
            topic.segment_age = Some(
                duration_value("segment_age", age.get_ref()).map_err(|m| fail("segment_age", m))?,
            );
        }
        if let Some(age) = self.retention {
            topic.retention =
                Some(duration_value("retention", age.get_ref()).map_err(|m| fail("retention", m))?);
        }
        if let Some(size) = self.retention_bytes {
            topic.retention_bytes = Some(
                size_value("retention_bytes", size.get_ref())
                    .map_err(|m| fail("retention_bytes", m))?,
            );
        }
        if let Some(fsync) = self.fsync {
            topic.fsync = fsync_value(fsync.get_ref()).map_err(|m| fail("fsync", m))?;
        }
        if let Some(size) = self.max_batch_bytes {
            topic.max_batch_bytes = size_value("max_batch_bytes", size.get_ref())
                .map_err(|m| fail("max_batch_bytes", m))?;
        }
        if let Some(size) = self.index_interval_bytes {
            topic.index_interval_bytes = size_value("index_interval_bytes", size.get_ref())
                .map_err(|m| fail("index_interval_bytes", m))?;
        }
        if let Some(cleanup) = self.cleanup {
            topic.cleanup = cleanup_value(cleanup.get_ref()).map_err(|m| fail("cleanup", m))?;
        }
        if let Some(retention) = self.delete_retention {
            topic.delete_retention = duration_value("delete_retention", retention.get_ref())
                .map_err(|m| fail("delete_retention", m))?;
        }
        if let Some(ratio) = self.min_dirty_ratio {
            topic.min_dirty_ratio = ratio.get_ref().0;
        }
        if let Some(factor) = self.replication_factor {
            topic.replication_factor = to_u32(*factor.get_ref(), check_replication_factor)
                .map_err(|m| fail("replication_factor", m))?;
        }
        if let Some(acks) = self.acks {
            topic.acks = match acks.get_ref().trim() {
                "all" => Acks::All,
                "leader" => Acks::Leader,
                other => {
                    return Err(fail(
                        "acks",
                        format!(
                            "invalid acks {other:?}: expected \"all\" (a majority) or \"leader\""
                        ),
                    ))
                }
            };
        }
        check_topic(&topic).map_err(|broken| fail(broken.key, broken.message))?;
        Ok((topic, name_span))
    }
}

/// A TOML integer that `rule` accepts, as `u32`. Every rule passed here
/// rejects values outside `u32`; the fallback message covers a rule that doesn't.
fn to_u32(value: i64, rule: fn(i64) -> Result<(), String>) -> Result<u32, String> {
    rule(value)?;
    u32::try_from(value).map_err(|_| format!("{value} is out of range"))
}

fn size_value(key: &str, size: &RawSize) -> Result<u64, String> {
    match size {
        RawSize::Bytes(bytes) => {
            u64::try_from(*bytes).map_err(|_| format!("{key} must not be negative, got {bytes}"))
        }
        RawSize::Text(text) => parse_size(text),
    }
}

/// A size per second: a size, optionally followed by "/s" (`"200 MiB/s"`).
fn rate_value(key: &str, rate: &RawSize) -> Result<u64, String> {
    match rate {
        RawSize::Text(text) => {
            let per_second = text.trim_end();
            let size = per_second.strip_suffix("/s").unwrap_or(per_second);
            parse_size(size)
                .map_err(|error| format!("invalid {key}: {error}, optionally with \"/s\""))
        }
        RawSize::Bytes(_) => size_value(key, rate),
    }
}

fn listen_value(text: &str) -> Result<std::net::SocketAddr, String> {
    text.trim().parse().map_err(|error| {
        format!(
            "invalid listen {text:?}: {error}; expected an IP address and port like \
             \"127.0.0.1:9644\" or \"[::1]:9644\" (not a host name)"
        )
    })
}

fn duration_value(key: &str, text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|error| format!("invalid {key} {text:?}: {error}; expected a duration like \"250ms\", \"24h\" or \"7d\""))
}

fn fsync_value(text: &str) -> Result<FsyncPolicy, String> {
    if text.trim() == "always" {
        return Ok(FsyncPolicy::Always);
    }
    humantime::parse_duration(text.trim())
        .map(FsyncPolicy::Interval)
        .map_err(|_| {
            format!("invalid fsync {text:?}: expected \"always\" or a duration like \"10ms\"")
        })
}

fn cleanup_value(text: &str) -> Result<CleanupPolicy, String> {
    let mut policies: Vec<&str> = text.split(',').map(str::trim).collect();
    policies.sort_unstable();
    match policies.as_slice() {
        ["delete"] => Ok(CleanupPolicy::Delete),
        ["compact"] => Ok(CleanupPolicy::Compact),
        ["compact", "delete"] => Ok(CleanupPolicy::CompactAndDelete),
        _ => Err(format!(
            "invalid cleanup {text:?}: expected \"delete\", \"compact\" or \"compact,delete\""
        )),
    }
}

// ---------------------------------------------------------------------------
// Pipelines: rules (shared by parsing and `validate`), raw structs, conversion.

/// Longest `commit_interval`: offsets committed less often than hourly
/// would make a restart replay an hour of records.
pub const PIPELINE_COMMIT_INTERVAL_MAX: Duration = Duration::from_secs(60 * 60);
/// Longest `retry_backoff` (the first wait; later ones double).
pub const PIPELINE_RETRY_BACKOFF_MAX: Duration = Duration::from_secs(60 * 60);
/// Smallest `fetch_max_bytes`: below this a fetch returns a few records at
/// a time and the per-fetch overhead dominates.
pub const PIPELINE_FETCH_MAX_BYTES_MIN: u64 = KIB;
/// Largest `fetch_max_bytes`: bounds the memory one member holds per fetch
/// (times `in_flight_batches`).
pub const PIPELINE_FETCH_MAX_BYTES_MAX: u64 = 64 * MIB;
/// Longest `[pipeline.source] group`, in bytes.
pub const CONSUMER_GROUP_BYTES_MAX: usize = 255;
/// Longest window `size`, `hop`, `gap` and `allowed_lateness` (the same
/// bound as ages, [`AGE_MAX`]): keeps event-time arithmetic in
/// milliseconds far from overflow.
pub const WINDOW_DURATION_MAX: Duration = AGE_MAX;

/// The operator `type`s, for messages.
const OPERATOR_TYPES: &str = "\"filter\", \"map\", \"extract\", \"flat_map\", \"key_by\", \
                              \"event_time\", \"window\", \"aggregate\", \"reduce\" or \"custom\"";
/// The sink `type`s, for messages.
const SINK_TYPES: &str = "\"topic\", \"sled\", \"jsonl\", \"stdout\" or \"custom\"";
/// The aggregate names, for messages.
const AGGREGATES: &str = "\"count\", \"sum\", \"min\", \"max\", \"mean\" or \"percentiles\"";
/// The filter tests, in the order the message lists them.
const FILTER_TESTS: [&str; 6] = [
    "equals",
    "not_equals",
    "greater_than",
    "less_than",
    "exists",
    "one_of",
];

/// Checks a pipeline name: `[A-Za-z0-9_-]`, 1..=200 characters (so that
/// its dead-letter topic `<name>.dlq` is a valid topic name).
pub fn validate_pipeline_name(name: &str) -> Result<(), String> {
    const RULE: &str = "a pipeline name is 1 to 200 characters of [A-Za-z0-9_-]";
    let length = name.chars().count();
    let problem = if length == 0 {
        "it is empty".to_owned()
    } else if let Some(bad) = name
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
    {
        format!("{bad:?} is not allowed")
    } else if length > PIPELINE_NAME_CHARS_MAX {
        format!("it has {length} characters")
    } else {
        return Ok(());
    };
    Err(format!(
        "invalid pipeline name {}: {problem}; {RULE}",
        shown_name(name)
    ))
}

/// Checks a consumer group name: 1..=255 bytes of `[A-Za-z0-9._-]`.
pub fn validate_group_name(group: &str) -> Result<(), String> {
    const RULE: &str = "a consumer group is 1 to 255 bytes of [A-Za-z0-9._-]";
    let problem = if group.is_empty() {
        "it is empty".to_owned()
    } else if let Some(bad) = group.chars().find(|&c| !is_topic_name_char(c)) {
        format!("{bad:?} is not allowed")
    } else if group.len() > CONSUMER_GROUP_BYTES_MAX {
        format!("it has {} bytes", group.len())
    } else {
        return Ok(());
    };
    Err(format!(
        "invalid group {}: {problem}; {RULE}",
        shown_name(group)
    ))
}

/// A name for a message: quoted, and cut short when long.
fn shown_name(name: &str) -> String {
    if name.chars().count() > 40 {
        let head: String = name.chars().take(20).collect();
        format!("{head:?}...")
    } else {
        format!("{name:?}")
    }
}

/// How a pipeline is named in key paths: `pipeline[NAME]`, or
/// `pipeline[INDEX]` when the name is missing or not a valid name.
fn pipeline_label(index: usize, name: Option<&str>) -> String {
    match name {
        Some(name) if validate_pipeline_name(name).is_ok() => format!("pipeline[{name}]"),
        _ => format!("pipeline[{index}]"),
    }
}

/// `label.path`, or `label` alone for the empty path.
fn join_path(label: &str, path: &str) -> String {
    if path.is_empty() {
        label.to_owned()
    } else {
        format!("{label}.{path}")
    }
}

/// A pipeline rule broken: the key path inside the pipeline (`members`,
/// `operator[2].size`, `sink.table[0].name`; empty for the pipeline itself)
/// and the rule.
#[derive(Debug)]
struct PipelineRule {
    path: String,
    message: String,
}

impl PipelineRule {
    fn new(path: impl Into<String>, message: String) -> PipelineRule {
        PipelineRule {
            path: path.into(),
            message,
        }
    }

    /// This rule, inside the stage `prefix` (`operator[2]`, `sink`).
    fn within(self, prefix: &str) -> PipelineRule {
        PipelineRule {
            path: join_path(prefix, &self.path),
            message: self.message,
        }
    }
}

/// `result` as a rule broken at `path`.
fn rule_at(path: &str, result: Result<(), String>) -> Result<(), PipelineRule> {
    result.map_err(|message| PipelineRule::new(path, message))
}

fn check_count(key: &str, value: i64, bounds: std::ops::RangeInclusive<u32>) -> Result<(), String> {
    if (i64::from(*bounds.start())..=i64::from(*bounds.end())).contains(&value) {
        return Ok(());
    }
    Err(format!(
        "{key} must be between {} and {}, got {value}",
        bounds.start(),
        bounds.end()
    ))
}

fn check_members(members: i64) -> Result<(), String> {
    check_count("members", members, 1..=MEMBERS_MAX)
}

fn check_retries(retries: i64) -> Result<(), String> {
    check_count("retries", retries, 0..=RETRIES_MAX)
}

fn check_in_flight_batches(batches: i64) -> Result<(), String> {
    check_count("in_flight_batches", batches, 1..=IN_FLIGHT_BATCHES_MAX)
}

fn check_commit_interval(interval: Duration) -> Result<(), String> {
    if interval > PIPELINE_COMMIT_INTERVAL_MAX {
        return Err(format!(
            "commit_interval must be at most {}, got {} (\"0s\" commits after every batch)",
            humantime::format_duration(PIPELINE_COMMIT_INTERVAL_MAX),
            humantime::format_duration(interval)
        ));
    }
    Ok(())
}

fn check_retry_backoff(backoff: Duration) -> Result<(), String> {
    check_positive_duration("retry_backoff", backoff, PIPELINE_RETRY_BACKOFF_MAX)
}

/// A window duration: more than zero (unless `zero_allowed`), at most
/// [`WINDOW_DURATION_MAX`].
fn check_window_duration(key: &str, duration: Duration, zero_allowed: bool) -> Result<(), String> {
    if (duration.is_zero() && !zero_allowed) || duration > WINDOW_DURATION_MAX {
        let least = if zero_allowed {
            "at least 0s"
        } else {
            "more than 0s"
        };
        return Err(format!(
            "{key} must be {least} and at most {AGE_MAX_TEXT}, got {}",
            humantime::format_duration(duration)
        ));
    }
    Ok(())
}

fn check_not_empty(key: &str, text: &str) -> Result<(), String> {
    if text.trim().is_empty() {
        return Err(format!("{key} must not be empty"));
    }
    Ok(())
}

/// Every rule of one pipeline on its own (not the topics it names: see
/// [`check_pipeline_links`]); the first one broken.
fn check_pipeline(pipeline: &PipelineConfig) -> Result<(), PipelineRule> {
    rule_at("name", validate_pipeline_name(&pipeline.name))?;
    rule_at("members", check_members(i64::from(pipeline.members)))?;
    rule_at(
        "commit_interval",
        check_commit_interval(pipeline.commit_interval),
    )?;
    rule_at("retries", check_retries(i64::from(pipeline.retries)))?;
    rule_at("retry_backoff", check_retry_backoff(pipeline.retry_backoff))?;
    rule_at(
        "fetch_max_bytes",
        check_bytes(
            "fetch_max_bytes",
            pipeline.fetch_max_bytes,
            PIPELINE_FETCH_MAX_BYTES_MIN..=PIPELINE_FETCH_MAX_BYTES_MAX,
        ),
    )?;
    rule_at(
        "in_flight_batches",
        check_in_flight_batches(i64::from(pipeline.in_flight_batches)),
    )?;
    rule_at("source.topic", validate_topic_name(&pipeline.source.topic))?;
    rule_at("source.group", validate_group_name(&pipeline.source.group))?;
    for (index, operator) in pipeline.operators.iter().enumerate() {
        check_operator(operator).map_err(|rule| rule.within(&format!("operator[{index}]")))?;
    }
    check_sink(&pipeline.sink).map_err(|rule| rule.within("sink"))
}

fn check_operator(operator: &OperatorConfig) -> Result<(), PipelineRule> {
    match operator {
        OperatorConfig::Filter(predicate) => match &predicate.test {
            Test::GreaterThan(bound) if !bound.is_finite() => Err(PipelineRule::new(
                "greater_than",
                format!("greater_than must be a finite number, got {bound}"),
            )),
            Test::LessThan(bound) if !bound.is_finite() => Err(PipelineRule::new(
                "less_than",
                format!("less_than must be a finite number, got {bound}"),
            )),
            Test::OneOf(values) if values.is_empty() => Err(PipelineRule::new(
                "one_of",
                "one_of must list at least one value".to_owned(),
            )),
            _ => Ok(()),
        },
        OperatorConfig::Map(map) => {
            if map.project.as_ref().is_some_and(Vec::is_empty) {
                return Err(PipelineRule::new(
                    "project",
                    "project must list at least one field".to_owned(),
                ));
            }
            if map.project.is_none()
                && map.drop.is_empty()
                && map.rename.is_empty()
                && map.set.is_empty()
            {
                return Err(PipelineRule::new(
                    "",
                    "a map needs at least one of project, drop, rename or set".to_owned(),
                ));
            }
            Ok(())
        }
        OperatorConfig::Extract { .. }
        | OperatorConfig::FlatMap { .. }
        | OperatorConfig::KeyBy { .. }
        | OperatorConfig::EventTime { .. } => Ok(()),
        OperatorConfig::Window(window) => check_window(window),
        OperatorConfig::Aggregate(aggregate) => {
            check_aggregate_function(&aggregate.function, aggregate.field.as_ref())
        }
        OperatorConfig::Reduce(reduce) => {
            let needs_field = matches!(
                reduce.function,
                ReduceFunction::Sum | ReduceFunction::Min | ReduceFunction::Max
            );
            if needs_field && reduce.field.is_none() {
                return Err(PipelineRule::new(
                    "field",
                    format!(
                        "missing required key `field`: function = {:?} needs the number to reduce",
                        reduce_function_name(reduce.function)
                    ),
                ));
            }
            Ok(())
        }
        OperatorConfig::Custom { name, .. } => rule_at("name", check_not_empty("name", name)),
    }
}

fn check_window(window: &WindowConfig) -> Result<(), PipelineRule> {
    match window.kind {
        WindowKind::Tumbling { size } => {
            rule_at("size", check_window_duration("size", size, false))?
        }
        WindowKind::Hopping { size, hop } => {
            rule_at("size", check_window_duration("size", size, false))?;
            rule_at("hop", check_window_duration("hop", hop, false))?;
            if hop > size {
                return Err(PipelineRule::new(
                    "hop",
                    format!(
                        "hop must be at most size ({}), got {}",
                        humantime::format_duration(size),
                        humantime::format_duration(hop)
                    ),
                ));
            }
        }
        WindowKind::Session { gap } => rule_at("gap", check_window_duration("gap", gap, false))?,
    }
    rule_at(
        "allowed_lateness",
        check_window_duration("allowed_lateness", window.allowed_lateness, true),
    )?;
    check_aggregate_function(&window.function, window.field.as_ref())?;
    if let LatePolicy::SideOutput(topic) = &window.late {
        rule_at("side_output", validate_topic_name(topic))?;
    }
    Ok(())
}

fn check_aggregate_function(
    function: &AggregateFunction,
    field: Option<&FieldPath>,
) -> Result<(), PipelineRule> {
    if *function != AggregateFunction::Count && field.is_none() {
        return Err(PipelineRule::new(
            "field",
            format!(
                "missing required key `field`: aggregate = {:?} needs the number to aggregate",
                aggregate_name(function)
            ),
        ));
    }
    if let AggregateFunction::Percentiles(percentiles) = function {
        if percentiles.is_empty() {
            return Err(PipelineRule::new(
                "percentiles",
                "percentiles must list at least one percentile, e.g. percentiles = [50, 99]"
                    .to_owned(),
            ));
        }
        if let Some(bad) = percentiles
            .iter()
            .find(|p| !(p.is_finite() && **p > 0.0 && **p <= 100.0))
        {
            return Err(PipelineRule::new(
                "percentiles",
                format!("each percentile must be more than 0 and at most 100, got {bad}"),
            ));
        }
    }
    Ok(())
}

fn check_sink(sink: &SinkConfig) -> Result<(), PipelineRule> {
    match sink {
        SinkConfig::Topic { topic } => rule_at("topic", validate_topic_name(topic)),
        SinkConfig::Sled(sled) => {
            rule_at(
                "path",
                check_not_empty("path", &sled.path.to_string_lossy()),
            )?;
            if sled.tables.is_empty() {
                return Err(PipelineRule::new(
                    "table",
                    "a sled sink needs at least one [[pipeline.sink.table]]".to_owned(),
                ));
            }
            for (index, table) in sled.tables.iter().enumerate() {
                let path = format!("table[{index}].name");
                rule_at(&path, check_not_empty("name", &table.name))?;
                if let Some(earlier) = sled.tables[..index]
                    .iter()
                    .position(|earlier| earlier.name == table.name)
                {
                    return Err(PipelineRule::new(
                        path,
                        format!(
                            "duplicate table name {:?}: table[{earlier}] is already named so",
                            table.name
                        ),
                    ));
                }
            }
            Ok(())
        }
        SinkConfig::JsonLines { path } => {
            rule_at("path", check_not_empty("path", &path.to_string_lossy()))
        }
        SinkConfig::Stdout => Ok(()),
        SinkConfig::Custom { name, .. } => rule_at("name", check_not_empty("name", name)),
    }
}

/// The rules between pipelines, and between pipelines and topics; the
/// first one broken, with the index of the pipeline that broke it.
///
/// Names are unique (ignoring letter case, like the dead-letter topics
/// named after them). The source topic is a `[[topic]]`, or another
/// pipeline's dead-letter topic (the runtime creates those). The sink topic
/// and side outputs are `[[topic]]`s, not the source, and not any
/// pipeline's dead-letter topic.
fn check_pipeline_links(
    pipelines: &[PipelineConfig],
    topics: &[TopicConfig],
) -> Result<(), (usize, PipelineRule)> {
    let declared = |name: &str| topics.iter().any(|topic| topic.name == name);
    let dead_letter_owner = |topic: &str| {
        pipelines
            .iter()
            .find(|pipeline| pipeline.dlq_topic().eq_ignore_ascii_case(topic))
    };
    for (index, pipeline) in pipelines.iter().enumerate() {
        let broken = |path: &str, message: String| Err((index, PipelineRule::new(path, message)));
        if let Some(earlier) = pipelines[..index]
            .iter()
            .position(|earlier| earlier.name.eq_ignore_ascii_case(&pipeline.name))
        {
            return broken(
                "name",
                format!(
                    "duplicate pipeline name {:?}: pipeline[{earlier}] is already named {:?} \
                     (names must differ ignoring letter case)",
                    pipeline.name, pipelines[earlier].name
                ),
            );
        }
        let source = pipeline.source.topic.as_str();
        match dead_letter_owner(source) {
            Some(owner) if owner.name == pipeline.name => {
                return broken(
                    "source.topic",
                    format!(
                        "source topic {source:?} is this pipeline's own dead-letter queue: \
                         its failures would loop back into it"
                    ),
                );
            }
            Some(_) => {}
            None if declared(source) => {}
            None => {
                return broken(
                    "source.topic",
                    format!("source topic {source:?} is not a [[topic]] of this config"),
                );
            }
        }
        let mut outputs = Vec::new();
        if let SinkConfig::Topic { topic } = &pipeline.sink {
            outputs.push(("sink.topic".to_owned(), "sink topic", topic.as_str()));
        }
        for (operator_index, operator) in pipeline.operators.iter().enumerate() {
            if let OperatorConfig::Window(WindowConfig {
                late: LatePolicy::SideOutput(topic),
                ..
            }) = operator
            {
                outputs.push((
                    format!("operator[{operator_index}].side_output"),
                    "side_output topic",
                    topic.as_str(),
                ));
            }
        }
        for (path, what, topic) in outputs {
            if let Some(owner) = dead_letter_owner(topic) {
                return broken(
                    &path,
                    format!(
                        "{what} {topic:?} is the dead-letter queue of pipeline {:?}; \
                         a pipeline must not write to a dead-letter queue",
                        owner.name
                    ),
                );
            }
            if !declared(topic) {
                return broken(
                    &path,
                    format!("{what} {topic:?} is not a [[topic]] of this config"),
                );
            }
            if topic == source {
                return broken(
                    &path,
                    format!(
                        "{what} {topic:?} is the source topic: a pipeline must not write to \
                         the topic it reads"
                    ),
                );
            }
        }
    }
    Ok(())
}

fn aggregate_name(function: &AggregateFunction) -> &'static str {
    match function {
        AggregateFunction::Count => "count",
        AggregateFunction::Sum => "sum",
        AggregateFunction::Min => "min",
        AggregateFunction::Max => "max",
        AggregateFunction::Mean => "mean",
        AggregateFunction::Percentiles(_) => "percentiles",
    }
}

fn reduce_function_name(function: ReduceFunction) -> &'static str {
    match function {
        ReduceFunction::Sum => "sum",
        ReduceFunction::Min => "min",
        ReduceFunction::Max => "max",
        ReduceFunction::Latest => "latest",
        ReduceFunction::Merge => "merge",
    }
}

// ---------------------------------------------------------------------------
// Pipeline raw structs.
//
// Which keys a stage may have depends on its `type` (and a window's on its
// `kind`), so every stage is one struct with every key optional; after the
// `type` is read, any key that does not belong to it is an error at that
// key. Tables are [`Located`] rather than `Spanned`, so that a table made
// by a dotted key (`source.topic = "spans"`) reads too.

/// One `[[pipeline]]` table:
///
/// ```toml
/// [[pipeline]]
/// name = "trace_ingest"          # required; [A-Za-z0-9_-], 1..=200 chars, unique
/// members = 1                    # 1..=256
/// commit_interval = "1s"         # "0s" (every batch) ..= "1h"
/// retries = 3                    # 0..=100
/// retry_backoff = "100ms"        # more than 0s, at most 1h
/// fetch_max_bytes = "256 KiB"    # 1 KiB ..= 64 MiB
/// in_flight_batches = 4          # 1..=64
/// [pipeline.source]              # required
/// [[pipeline.operator]]          # zero or more, applied in order
/// [pipeline.sink]                # required
/// ```
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    name: Option<Located<String>>,
    members: Option<Located<i64>>,
    commit_interval: Option<Located<String>>,
    retries: Option<Located<i64>>,
    retry_backoff: Option<Located<String>>,
    fetch_max_bytes: Option<Located<RawSize>>,
    in_flight_batches: Option<Located<i64>>,
    source: Option<Located<RawSource>>,
    #[serde(default)]
    operator: Vec<Located<RawOperator>>,
    sink: Option<Located<RawSink>>,
}

/// `[pipeline.source]`:
///
/// ```toml
/// [pipeline.source]
/// topic = "spans"                # required; a [[topic]] of the same file
/// group = "trace_ingest"         # default: the pipeline's name; 1..=255 bytes of [A-Za-z0-9._-]
/// auto_offset_reset = "earliest" # default; or "latest"
/// ```
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    topic: Option<Located<String>>,
    group: Option<Located<String>>,
    auto_offset_reset: Option<Located<String>>,
}

/// One `[[pipeline.operator]]`; `type` says which other keys apply:
///
/// ```toml
/// [[pipeline.operator]]
/// type = "filter"        # field, and exactly one of: equals = VALUE, not_equals = VALUE,
///                        #   greater_than = NUMBER, less_than = NUMBER, exists = BOOL,
///                        #   one_of = [VALUES]
/// type = "map"           # at least one of: project = [PATHS], drop = [PATHS],
///                        #   rename = { "old.path" = "new.path" }, set = { "path" = VALUE }
/// type = "extract"       # field      (also "flat_map", "key_by", "event_time")
/// type = "window"        # kind = "tumbling" (size) | "hopping" (size, hop <= size) | "session" (gap);
///                        #   allowed_lateness (default "0s"); aggregate (default "count"),
///                        #   field (required except for count), percentiles = [50, 99]
///                        #   (aggregate = "percentiles" only; each 0 < p <= 100);
///                        #   time_field; late = "dlq" (default) | "side_output", side_output = TOPIC
///                        #   (required with late = "side_output", and only then)
/// type = "aggregate"     # aggregate (required), field (required except for count), percentiles
/// type = "reduce"        # function = "sum" | "min" | "max" | "latest" | "merge";
///                        #   field (sum, min and max only, and required for them)
/// type = "custom"        # name (required), params = { any table } (default {})
/// ```
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOperator {
    #[serde(rename = "type")]
    kind: Option<Located<String>>,
    field: Option<Located<String>>,
    // filter
    equals: Option<Located<toml::Value>>,
    not_equals: Option<Located<toml::Value>>,
    greater_than: Option<Located<RawNumber>>,
    less_than: Option<Located<RawNumber>>,
    exists: Option<Located<bool>>,
    one_of: Option<Located<Vec<Located<toml::Value>>>>,
    // map
    project: Option<Located<Vec<Located<String>>>>,
    drop: Option<Located<Vec<Located<String>>>>,
    rename: Option<Located<RawEntries<Located<String>>>>,
    set: Option<Located<RawEntries<Located<toml::Value>>>>,
    // window, aggregate
    #[serde(rename = "kind")]
    window_kind: Option<Located<String>>,
    size: Option<Located<String>>,
    hop: Option<Located<String>>,
    gap: Option<Located<String>>,
    allowed_lateness: Option<Located<String>>,
    aggregate: Option<Located<String>>,
    percentiles: Option<Located<Vec<Located<RawNumber>>>>,
    time_field: Option<Located<String>>,
    late: Option<Located<String>>,
    side_output: Option<Located<String>>,
    // reduce
    function: Option<Located<String>>,
    // custom
    name: Option<Located<String>>,
    params: Option<Located<toml::Value>>,
}

/// `[pipeline.sink]`; `type` says which other keys apply:
///
/// ```toml
/// [pipeline.sink]
/// type = "topic"         # topic: a [[topic]] of the file, not the source
/// type = "sled"          # path, and one or more [[pipeline.sink.table]]
/// type = "jsonl"         # path
/// type = "stdout"        # nothing else
/// type = "custom"        # name (required), params = { any table } (default {})
/// ```
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSink {
    #[serde(rename = "type")]
    kind: Option<Located<String>>,
    topic: Option<Located<String>>,
    path: Option<Located<String>>,
    table: Option<Located<Vec<Located<RawTable>>>>,
    name: Option<Located<String>>,
    params: Option<Located<toml::Value>>,
}

/// One `[[pipeline.sink.table]]` of a sled sink:
///
/// ```toml
/// [[pipeline.sink.table]]
/// name = "spans"                 # required, not empty, unique in the sink
/// key = ["trace_id", "span_id"]  # default []: the record's origin
/// each = "logs"                  # optional: one row per element of this array
/// fields = ["name", "duration"]  # optional: the row's fields (default: the whole value)
/// ```
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    name: Option<Located<String>>,
    key: Option<Located<Vec<Located<String>>>>,
    each: Option<Located<String>>,
    fields: Option<Located<Vec<Located<String>>>>,
}

/// A number as written: a TOML float, or an integer read as one.
struct RawNumber(f64);

impl<'de> Deserialize<'de> for RawNumber {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NumberVisitor;
        impl serde::de::Visitor<'_> for NumberVisitor {
            type Value = RawNumber;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a number")
            }
            fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<RawNumber, E> {
                Ok(RawNumber(value))
            }
            // Rounded to the nearest f64 for integers past 2^53, as JSON readers do.
            fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<RawNumber, E> {
                Ok(RawNumber(value as f64))
            }
            fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<RawNumber, E> {
                Ok(RawNumber(value as f64))
            }
        }
        deserializer.deserialize_any(NumberVisitor)
    }
}

/// A table's entries in file order (`rename`, `set`): the order they apply in.
struct RawEntries<V>(Vec<(String, V)>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for RawEntries<V> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntriesVisitor<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> serde::de::Visitor<'de> for EntriesVisitor<V> {
            type Value = RawEntries<V>;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a table")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<RawEntries<V>, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    entries.push((key, map.next_value()?));
                }
                Ok(RawEntries(entries))
            }
        }
        deserializer.deserialize_map(EntriesVisitor(std::marker::PhantomData))
    }
}

/// A value and its span, when the document gives one.
///
/// Like [`toml::Spanned`], except that a value without a span still reads
/// (with `span: None`) instead of failing: `toml` gives no span to a table
/// made by dotted keys (`source.topic = "spans"` makes the table `source`).
/// It speaks the same private protocol as `Spanned` (`serde_spanned`'s
/// struct name and field names, which `toml` recognizes).
struct Located<T> {
    span: Option<Range<usize>>,
    value: T,
}

const SPANNED_NAME: &str = "$__serde_spanned_private_Spanned";
const SPANNED_START: &str = "$__serde_spanned_private_start";
const SPANNED_END: &str = "$__serde_spanned_private_end";
const SPANNED_VALUE: &str = "$__serde_spanned_private_value";

impl<T> Located<T> {
    fn unspanned(value: T) -> Located<T> {
        Located { span: None, value }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Located<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        const FIELDS: [&str; 3] = [SPANNED_START, SPANNED_END, SPANNED_VALUE];
        deserializer.deserialize_struct(
            SPANNED_NAME,
            &FIELDS,
            LocatedVisitor(std::marker::PhantomData),
        )
    }
}

struct LocatedVisitor<T>(std::marker::PhantomData<T>);

/// A map whose first key was already read: gives it again, then the rest.
struct ReplayFirstKey<A> {
    first: Option<String>,
    map: A,
}

impl<'de, A: serde::de::MapAccess<'de>> serde::de::MapAccess<'de> for ReplayFirstKey<A> {
    type Error = A::Error;

    fn next_key_seed<K: serde::de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        use serde::de::IntoDeserializer;
        match self.first.take() {
            Some(key) => seed.deserialize(key.into_deserializer()).map(Some),
            None => self.map.next_key_seed(seed),
        }
    }

    fn next_value_seed<V: serde::de::DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, A::Error> {
        self.map.next_value_seed(seed)
    }
}

impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for LocatedVisitor<T> {
    type Value = Located<T>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a value")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Located<T>, A::Error> {
        use serde::de::Error;
        let first: Option<String> = map.next_key()?;
        if first.as_deref() != Some(SPANNED_START) {
            // No span: this is the value itself, a table.
            let replay = ReplayFirstKey { first, map };
            return T::deserialize(serde::de::value::MapAccessDeserializer::new(replay))
                .map(Located::unspanned);
        }
        let start: usize = map.next_value()?;
        if map.next_key::<String>()?.as_deref() != Some(SPANNED_END) {
            return Err(A::Error::missing_field(SPANNED_END));
        }
        let end: usize = map.next_value()?;
        if map.next_key::<String>()?.as_deref() != Some(SPANNED_VALUE) {
            return Err(A::Error::missing_field(SPANNED_VALUE));
        }
        let value: T = map.next_value()?;
        Ok(Located {
            span: Some(start..end),
            value,
        })
    }

    // Without a span, any other value is the value itself.
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Located<T>, A::Error> {
        T::deserialize(serde::de::value::SeqAccessDeserializer::new(seq)).map(Located::unspanned)
    }

    fn visit_bool<E: serde::de::Error>(self, value: bool) -> Result<Located<T>, E> {
        use serde::de::IntoDeserializer;
        T::deserialize(value.into_deserializer()).map(Located::unspanned)
    }

    fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<Located<T>, E> {
        use serde::de::IntoDeserializer;
        T::deserialize(value.into_deserializer()).map(Located::unspanned)
    }

    fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<Located<T>, E> {
        use serde::de::IntoDeserializer;
        T::deserialize(value.into_deserializer()).map(Located::unspanned)
    }

    fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<Located<T>, E> {
        use serde::de::IntoDeserializer;
        T::deserialize(value.into_deserializer()).map(Located::unspanned)
    }

    fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<Located<T>, E> {
        use serde::de::IntoDeserializer;
        T::deserialize(value.into_deserializer()).map(Located::unspanned)
    }
}

// ---------------------------------------------------------------------------
// Pipeline conversion.

/// The spans of one pipeline's keys, by key path inside the pipeline
/// (`members`, `operator[2].size`, `sink.table[0]`), to locate a broken rule.
struct PipelineSpans {
    /// The `[[pipeline]]` table.
    table: Option<Range<usize>>,
    keys: Vec<(String, Range<usize>)>,
}

impl PipelineSpans {
    fn record(&mut self, path: String, span: Option<&Range<usize>>) {
        if let Some(span) = span {
            self.keys.push((path, span.clone()));
        }
    }

    /// The span of `path`, or else of the nearest enclosing key or table
    /// that has one (`operator[2].size`, `operator[2]`, the pipeline).
    fn find(&self, path: &str) -> Option<Range<usize>> {
        let mut path = path;
        loop {
            if let Some((_, span)) = self.keys.iter().find(|(key, _)| key == path) {
                return Some(span.clone());
            }
            match path.rfind(['.', '[']) {
                Some(end) => path = &path[..end],
                None => return self.table.clone(),
            }
        }
    }
}

/// What converting one pipeline needs to report an error.
struct PipelineContext<'a> {
    source: &'a Source<'a>,
    /// `pipeline[NAME]` or `pipeline[INDEX]`.
    label: String,
    spans: PipelineSpans,
}

impl PipelineContext<'_> {
    /// An error at `path` inside the pipeline, located at its span.
    fn error(&self, path: &str, message: String) -> ConfigError {
        self.error_at(path, None, message)
    }

    /// An error at `path`, located at `span` if given (an array element),
    /// else at the span of `path`.
    fn error_at(&self, path: &str, span: Option<&Range<usize>>, message: String) -> ConfigError {
        let span = span.cloned().or_else(|| self.spans.find(path));
        self.source
            .error(span, Some(&join_path(&self.label, path)), message)
    }

    fn field_path(&self, path: &str, text: &Located<String>) -> Result<FieldPath, ConfigError> {
        FieldPath::parse(&text.value)
            .map_err(|message| self.error_at(path, text.span.as_ref(), message))
    }

    fn field_paths(
        &self,
        path: &str,
        texts: Located<Vec<Located<String>>>,
    ) -> Result<Vec<FieldPath>, ConfigError> {
        texts
            .value
            .iter()
            .map(|text| self.field_path(path, text))
            .collect()
    }

    fn duration(
        &self,
        path: &str,
        key: &str,
        text: &Located<String>,
    ) -> Result<Duration, ConfigError> {
        duration_value(key, &text.value).map_err(|message| self.error(path, message))
    }

    fn json(
        &self,
        path: &str,
        value: &Located<toml::Value>,
    ) -> Result<serde_json::Value, ConfigError> {
        toml_to_json(&value.value)
            .map_err(|message| self.error_at(path, value.span.as_ref(), message))
    }

    /// `params`: a table, as a JSON object; absent, an empty one.
    fn params(
        &self,
        path: &str,
        params: Option<Located<toml::Value>>,
    ) -> Result<serde_json::Value, ConfigError> {
        match params {
            None => Ok(serde_json::Value::Object(serde_json::Map::new())),
            Some(params) if params.value.is_table() => self.json(path, &params),
            Some(params) => Err(self.error(
                path,
                format!("params must be a table, got {}", params.value.type_str()),
            )),
        }
    }
}

/// A TOML value as JSON: a datetime becomes its RFC 3339 text; NaN and
/// infinities, which JSON cannot hold, are errors.
fn toml_to_json(value: &toml::Value) -> Result<serde_json::Value, String> {
    use serde_json::Value as Json;
    Ok(match value {
        toml::Value::String(text) => Json::String(text.clone()),
        toml::Value::Integer(integer) => Json::from(*integer),
        toml::Value::Float(float) => serde_json::Number::from_f64(*float)
            .map(Json::Number)
            .ok_or_else(|| {
                format!("{float} cannot be a JSON value (JSON has no NaN or infinity)")
            })?,
        toml::Value::Boolean(flag) => Json::Bool(*flag),
        toml::Value::Datetime(datetime) => Json::String(datetime.to_string()),
        toml::Value::Array(items) => {
            Json::Array(items.iter().map(toml_to_json).collect::<Result<_, _>>()?)
        }
        toml::Value::Table(table) => Json::Object(
            table
                .iter()
                .map(|(key, value)| Ok((key.clone(), toml_to_json(value)?)))
                .collect::<Result<_, String>>()?,
        ),
    })
}

/// The present keys of a stage (`(name, span)`), in the order they were listed.
type PresentKeys = Vec<(&'static str, Option<Range<usize>>)>;

/// Adds `key` to `keys` if `value` is present.
fn present<T>(keys: &mut PresentKeys, key: &'static str, value: &Option<Located<T>>) {
    if let Some(value) = value {
        keys.push((key, value.span.clone()));
    }
}

/// Of `keys`, the first in the file (by position; unlocated ones last)
/// that `allowed` does not list.
fn first_not_allowed(keys: &PresentKeys, allowed: &[&str]) -> Option<&'static str> {
    keys.iter()
        .filter(|(key, _)| !allowed.contains(key))
        .min_by_key(|(_, span)| span.as_ref().map_or(usize::MAX, |span| span.start))
        .map(|(key, _)| *key)
}

impl RawOperator {
    /// Every key present, but `type`.
    fn present_keys(&self) -> PresentKeys {
        let mut keys = Vec::new();
        present(&mut keys, "field", &self.field);
        present(&mut keys, "equals", &self.equals);
        present(&mut keys, "not_equals", &self.not_equals);
        present(&mut keys, "greater_than", &self.greater_than);
        present(&mut keys, "less_than", &self.less_than);
        present(&mut keys, "exists", &self.exists);
        present(&mut keys, "one_of", &self.one_of);
        present(&mut keys, "project", &self.project);
        present(&mut keys, "drop", &self.drop);
        present(&mut keys, "rename", &self.rename);
        present(&mut keys, "set", &self.set);
        present(&mut keys, "kind", &self.window_kind);
        present(&mut keys, "size", &self.size);
        present(&mut keys, "hop", &self.hop);
        present(&mut keys, "gap", &self.gap);
        present(&mut keys, "allowed_lateness", &self.allowed_lateness);
        present(&mut keys, "aggregate", &self.aggregate);
        present(&mut keys, "percentiles", &self.percentiles);
        present(&mut keys, "time_field", &self.time_field);
        present(&mut keys, "late", &self.late);
        present(&mut keys, "side_output", &self.side_output);
        present(&mut keys, "function", &self.function);
        present(&mut keys, "name", &self.name);
        present(&mut keys, "params", &self.params);
        keys
    }

    /// Converts the operator at `stage` (`operator[2]`).
    fn into_operator(
        self,
        stage: &str,
        context: &PipelineContext<'_>,
    ) -> Result<OperatorConfig, ConfigError> {
        let path = |key: &str| join_path(stage, key);
        let fail = |key: &str, message: String| context.error(&path(key), message);
        let Some(kind) = &self.kind else {
            return Err(fail(
                "type",
                format!(
                    "missing required key `type` in [[pipeline.operator]]: one of {OPERATOR_TYPES}"
                ),
            ));
        };
        let type_name = kind.value.clone();
        let type_name = type_name.as_str();
        let allowed: &[&str] = match type_name {
            "filter" => &[
                "field",
                "equals",
                "not_equals",
                "greater_than",
                "less_than",
                "exists",
                "one_of",
            ],
            "map" => &["project", "drop", "rename", "set"],
            "extract" | "flat_map" | "key_by" | "event_time" => &["field"],
            "window" => &[
                "kind",
                "size",
                "hop",
                "gap",
                "allowed_lateness",
                "aggregate",
                "field",
                "percentiles",
                "time_field",
                "late",
                "side_output",
            ],
            "aggregate" => &["aggregate", "field", "percentiles"],
            "reduce" => &["function", "field"],
            "custom" => &["name", "params"],
            other => {
                return Err(fail(
                    "type",
                    format!("unknown operator type {other:?}: expected {OPERATOR_TYPES}"),
                ))
            }
        };
        let keys = self.present_keys();
        if let Some(key) = first_not_allowed(&keys, allowed) {
            return Err(fail(
                key,
                format!("key `{key}` does not apply to type = {type_name:?}"),
            ));
        }
        let required_field = |field: &Option<Located<String>>| match field {
            Some(field) => context.field_path(&path("field"), field),
            None => Err(fail(
                "field",
                format!("missing required key `field` for type = {type_name:?}"),
            )),
        };
        Ok(match type_name {
            "filter" => {
                let field = required_field(&self.field)?;
                OperatorConfig::Filter(Predicate {
                    field,
                    test: self.into_test(stage, &keys, context)?,
                })
            }
            "map" => {
                let mut map = MapConfig::default();
                if let Some(project) = self.project {
                    map.project = Some(context.field_paths(&path("project"), project)?);
                }
                if let Some(drop) = self.drop {
                    map.drop = context.field_paths(&path("drop"), drop)?;
                }
                if let Some(rename) = self.rename {
                    let key_path = path("rename");
                    for (from, to) in rename.value.0 {
                        let from = FieldPath::parse(&from).map_err(|message| {
                            context.error_at(&key_path, to.span.as_ref(), message)
                        })?;
                        map.rename.push((from, context.field_path(&key_path, &to)?));
                    }
                }
                if let Some(set) = self.set {
                    let key_path = path("set");
                    for (at, value) in set.value.0 {
                        let at = FieldPath::parse(&at).map_err(|message| {
                            context.error_at(&key_path, value.span.as_ref(), message)
                        })?;
                        map.set.push((at, context.json(&key_path, &value)?));
                    }
                }
                OperatorConfig::Map(map)
            }
            "extract" => OperatorConfig::Extract {
                field: required_field(&self.field)?,
            },
            "flat_map" => OperatorConfig::FlatMap {
                field: required_field(&self.field)?,
            },
            "key_by" => OperatorConfig::KeyBy {
                field: required_field(&self.field)?,
            },
            "event_time" => OperatorConfig::EventTime {
                field: required_field(&self.field)?,
            },
            "window" => OperatorConfig::Window(self.into_window(stage, &keys, context)?),
            "aggregate" => {
                let Some(aggregate) = &self.aggregate else {
                    return Err(fail(
                        "aggregate",
                        format!("missing required key `aggregate` for type = \"aggregate\": one of {AGGREGATES}"),
                    ));
                };
                let (function, field) = aggregate_function(
                    stage,
                    Some(aggregate),
                    self.field.as_ref(),
                    self.percentiles,
                    context,
                )?;
                OperatorConfig::Aggregate(AggregateConfig { function, field })
            }
            "reduce" => {
                let Some(function) = &self.function else {
                    return Err(fail(
                        "function",
                        "missing required key `function` for type = \"reduce\": one of \"sum\", \
                         \"min\", \"max\", \"latest\" or \"merge\""
                            .to_owned(),
                    ));
                };
                let function_name = function.value.as_str();
                let function = match function_name {
                    "sum" => ReduceFunction::Sum,
                    "min" => ReduceFunction::Min,
                    "max" => ReduceFunction::Max,
                    "latest" => ReduceFunction::Latest,
                    "merge" => ReduceFunction::Merge,
                    other => {
                        return Err(fail(
                            "function",
                            format!(
                                "unknown function {other:?}: expected \"sum\", \"min\", \"max\", \
                                 \"latest\" or \"merge\""
                            ),
                        ))
                    }
                };
                let field = match (&self.field, function) {
                    (Some(_), ReduceFunction::Latest | ReduceFunction::Merge) => {
                        return Err(fail(
                            "field",
                            format!("key `field` does not apply to function = {function_name:?}"),
                        ))
                    }
                    (Some(field), _) => Some(context.field_path(&path("field"), field)?),
                    (None, ReduceFunction::Latest | ReduceFunction::Merge) => None,
                    (None, _) => {
                        return Err(fail(
                            "field",
                            format!(
                                "missing required key `field`: function = {function_name:?} \
                                 needs the number to reduce"
                            ),
                        ))
                    }
                };
                OperatorConfig::Reduce(ReduceConfig { function, field })
            }
            "custom" => {
                let Some(name) = self.name else {
                    return Err(fail(
                        "name",
                        "missing required key `name` for type = \"custom\" (the name the \
                         operator is registered under)"
                            .to_owned(),
                    ));
                };
                OperatorConfig::Custom {
                    name: name.value,
                    params: context.params(&path("params"), self.params)?,
                }
            }
            // Every other type returned above.
            other => {
                return Err(fail(
                    "type",
                    format!("unknown operator type {other:?}: expected {OPERATOR_TYPES}"),
                ))
            }
        })
    }

    /// A filter's one test.
    fn into_test(
        self,
        stage: &str,
        keys: &PresentKeys,
        context: &PipelineContext<'_>,
    ) -> Result<Test, ConfigError> {
        let mut tests: Vec<&(&'static str, Option<Range<usize>>)> = keys
            .iter()
            .filter(|(key, _)| FILTER_TESTS.contains(key))
            .collect();
        tests.sort_by_key(|(_, span)| span.as_ref().map_or(usize::MAX, |span| span.start));
        match tests.as_slice() {
            [] => {
                return Err(context.error(
                    stage,
                    format!("a filter needs exactly one of {}", FILTER_TESTS.join(", ")),
                ))
            }
            [_] => {}
            [(first, _), (second, _), ..] => {
                return Err(context.error(
                    &join_path(stage, second),
                    format!(
                        "key `{second}` cannot be combined with `{first}`: a filter has exactly \
                         one test (chain two filters for both)"
                    ),
                ))
            }
        }
        let path = |key: &str| join_path(stage, key);
        Ok(if let Some(value) = &self.equals {
            Test::Equals(context.json(&path("equals"), value)?)
        } else if let Some(value) = &self.not_equals {
            Test::NotEquals(context.json(&path("not_equals"), value)?)
        } else if let Some(bound) = &self.greater_than {
            Test::GreaterThan(bound.value.0)
        } else if let Some(bound) = &self.less_than {
            Test::LessThan(bound.value.0)
        } else if let Some(expected) = &self.exists {
            Test::Exists(expected.value)
        } else if let Some(values) = &self.one_of {
            Test::OneOf(
                values
                    .value
                    .iter()
                    .map(|value| context.json(&path("one_of"), value))
                    .collect::<Result<_, _>>()?,
            )
        } else {
            // `tests` has exactly one of these.
            return Err(context.error(stage, "a filter needs exactly one test".to_owned()));
        })
    }

    fn into_window(
        self,
        stage: &str,
        keys: &PresentKeys,
        context: &PipelineContext<'_>,
    ) -> Result<WindowConfig, ConfigError> {
        let path = |key: &str| join_path(stage, key);
        let fail = |key: &str, message: String| context.error(&path(key), message);
        let Some(kind) = &self.window_kind else {
            return Err(fail(
                "kind",
                "missing required key `kind` for type = \"window\": \"tumbling\", \"hopping\" \
                 or \"session\""
                    .to_owned(),
            ));
        };
        let kind_name = kind.value.clone();
        let kind_name = kind_name.as_str();
        let sizes: &[&str] = match kind_name {
            "tumbling" => &["size"],
            "hopping" => &["size", "hop"],
            "session" => &["gap"],
            other => {
                return Err(fail(
                    "kind",
                    format!(
                        "unknown window kind {other:?}: expected \"tumbling\", \"hopping\" or \"session\""
                    ),
                ))
            }
        };
        let size_keys: PresentKeys = keys
            .iter()
            .filter(|(key, _)| ["size", "hop", "gap"].contains(key))
            .cloned()
            .collect();
        if let Some(key) = first_not_allowed(&size_keys, sizes) {
            return Err(fail(
                key,
                format!("key `{key}` does not apply to a {kind_name} window"),
            ));
        }
        let required = |key: &str, value: &Option<Located<String>>| match value {
            Some(value) => context.duration(&path(key), key, value),
            None => Err(fail(
                key,
                format!("missing required key `{key}` for a {kind_name} window"),
            )),
        };
        let kind = match kind_name {
            "tumbling" => WindowKind::Tumbling {
                size: required("size", &self.size)?,
            },
            "hopping" => WindowKind::Hopping {
                size: required("size", &self.size)?,
                hop: required("hop", &self.hop)?,
            },
            _ => WindowKind::Session {
                gap: required("gap", &self.gap)?,
            },
        };
        let allowed_lateness = match &self.allowed_lateness {
            Some(lateness) => {
                context.duration(&path("allowed_lateness"), "allowed_lateness", lateness)?
            }
            None => Duration::ZERO,
        };
        let time_field = match &self.time_field {
            Some(field) => Some(context.field_path(&path("time_field"), field)?),
            None => None,
        };
        let late = match (
            self.late.as_ref().map(|late| late.value.as_str()),
            &self.side_output,
        ) {
            (None | Some("dlq"), None) => LatePolicy::DeadLetter,
            (None, Some(_)) => {
                return Err(fail(
                    "side_output",
                    "key `side_output` does not apply to late = \"dlq\" (the default); set \
                     late = \"side_output\" to send late records there"
                        .to_owned(),
                ))
            }
            (Some("dlq"), Some(_)) => {
                return Err(fail(
                    "side_output",
                    "key `side_output` does not apply to late = \"dlq\"".to_owned(),
                ))
            }
            (Some("side_output"), Some(topic)) => LatePolicy::SideOutput(topic.value.clone()),
            (Some("side_output"), None) => {
                return Err(fail(
                    "side_output",
                    "missing required key `side_output` for late = \"side_output\" (the topic \
                     late records go to)"
                        .to_owned(),
                ))
            }
            (Some(other), _) => {
                return Err(fail(
                    "late",
                    format!("invalid late {other:?}: expected \"dlq\" or \"side_output\""),
                ))
            }
        };
        let (function, field) = aggregate_function(
            stage,
            self.aggregate.as_ref(),
            self.field.as_ref(),
            self.percentiles,
            context,
        )?;
        Ok(WindowConfig {
            kind,
            allowed_lateness,
            function,
            field,
            time_field,
            late,
        })
    }
}

/// `aggregate` (absent: count), `field` and `percentiles` of a window or an
/// aggregate operator at `stage`.
fn aggregate_function(
    stage: &str,
    aggregate: Option<&Located<String>>,
    field: Option<&Located<String>>,
    percentiles: Option<Located<Vec<Located<RawNumber>>>>,
    context: &PipelineContext<'_>,
) -> Result<(AggregateFunction, Option<FieldPath>), ConfigError> {
    let path = |key: &str| join_path(stage, key);
    let fail = |key: &str, message: String| context.error(&path(key), message);
    let name = aggregate.map_or("count", |aggregate| aggregate.value.as_str());
    let function = match (name, percentiles) {
        ("percentiles", Some(percentiles)) => {
            AggregateFunction::Percentiles(percentiles.value.iter().map(|p| p.value.0).collect())
        }
        ("percentiles", None) => {
            return Err(fail(
                "percentiles",
                "missing required key `percentiles` for aggregate = \"percentiles\", e.g. \
                 percentiles = [50, 99]"
                    .to_owned(),
            ))
        }
        ("count" | "sum" | "min" | "max" | "mean", Some(_)) => {
            return Err(fail(
                "percentiles",
                format!("key `percentiles` does not apply to aggregate = {name:?}"),
            ))
        }
        ("count", None) => AggregateFunction::Count,
        ("sum", None) => AggregateFunction::Sum,
        ("min", None) => AggregateFunction::Min,
        ("max", None) => AggregateFunction::Max,
        ("mean", None) => AggregateFunction::Mean,
        (other, _) => {
            return Err(fail(
                "aggregate",
                format!("unknown aggregate {other:?}: expected {AGGREGATES}"),
            ))
        }
    };
    let field = match (field, &function) {
        (Some(_), AggregateFunction::Count) => {
            return Err(fail(
                "field",
                "key `field` does not apply to aggregate = \"count\"".to_owned(),
            ))
        }
        (Some(field), _) => Some(context.field_path(&path("field"), field)?),
        (None, AggregateFunction::Count) => None,
        (None, _) => {
            return Err(fail(
                "field",
                format!(
                    "missing required key `field`: aggregate = {name:?} needs the number to \
                 aggregate"
                ),
            ))
        }
    };
    Ok((function, field))
}

impl RawSink {
    fn present_keys(&self) -> PresentKeys {
        let mut keys = Vec::new();
        present(&mut keys, "topic", &self.topic);
        present(&mut keys, "path", &self.path);
        present(&mut keys, "table", &self.table);
        present(&mut keys, "name", &self.name);
        present(&mut keys, "params", &self.params);
        keys
    }

    fn into_sink(self, context: &PipelineContext<'_>) -> Result<SinkConfig, ConfigError> {
        let path = |key: &str| join_path("sink", key);
        let fail = |key: &str, message: String| context.error(&path(key), message);
        let Some(kind) = &self.kind else {
            return Err(fail(
                "type",
                format!("missing required key `type` in [pipeline.sink]: one of {SINK_TYPES}"),
            ));
        };
        let type_name = kind.value.as_str();
        let allowed: &[&str] = match type_name {
            "topic" => &["topic"],
            "sled" => &["path", "table"],
            "jsonl" => &["path"],
            "stdout" => &[],
            "custom" => &["name", "params"],
            other => {
                return Err(fail(
                    "type",
                    format!("unknown sink type {other:?}: expected {SINK_TYPES}"),
                ))
            }
        };
        if let Some(key) = first_not_allowed(&self.present_keys(), allowed) {
            return Err(fail(
                key,
                format!("key `{key}` does not apply to type = {type_name:?}"),
            ));
        }
        let required = |key: &str, value: Option<Located<String>>| {
            value.map(|value| value.value).ok_or_else(|| {
                fail(
                    key,
                    format!("missing required key `{key}` for type = {type_name:?}"),
                )
            })
        };
        Ok(match type_name {
            "topic" => SinkConfig::Topic {
                topic: required("topic", self.topic)?,
            },
            "sled" => {
                let sled_path = PathBuf::from(required("path", self.path)?);
                let Some(tables) = self.table else {
                    return Err(fail(
                        "table",
                        "a sled sink needs at least one [[pipeline.sink.table]]".to_owned(),
                    ));
                };
                let tables = tables
                    .value
                    .into_iter()
                    .enumerate()
                    .map(|(index, table)| {
                        table
                            .value
                            .into_table(&path(&format!("table[{index}]")), context)
                    })
                    .collect::<Result<_, _>>()?;
                SinkConfig::Sled(SledSinkConfig {
                    path: sled_path,
                    tables,
                })
            }
            "jsonl" => SinkConfig::JsonLines {
                path: PathBuf::from(required("path", self.path)?),
            },
            "stdout" => SinkConfig::Stdout,
            _ => SinkConfig::Custom {
                name: required("name", self.name)?,
                params: context.params(&path("params"), self.params)?,
            },
        })
    }
}

impl RawTable {
    /// Converts the table at `stage` (`sink.table[1]`).
    fn into_table(
        self,
        stage: &str,
        context: &PipelineContext<'_>,
    ) -> Result<TableConfig, ConfigError> {
        let path = |key: &str| join_path(stage, key);
        let Some(name) = self.name else {
            return Err(context.error(
                &path("name"),
                "missing required key `name` in [[pipeline.sink.table]]".to_owned(),
            ));
        };
        Ok(TableConfig {
            name: name.value,
            key: match self.key {
                Some(key) => context.field_paths(&path("key"), key)?,
                None => Vec::new(),
            },
            each: match &self.each {
                Some(each) => Some(context.field_path(&path("each"), each)?),
                None => None,
            },
            fields: match self.fields {
                Some(fields) => Some(context.field_paths(&path("fields"), fields)?),
                None => None,
            },
        })
    }
}

impl RawPipeline {
    /// Records the span of every key, by its path inside the pipeline.
    fn spans(&self, table: Option<Range<usize>>) -> PipelineSpans {
        let mut spans = PipelineSpans {
            table,
            keys: Vec::new(),
        };
        let mut record =
            |path: String, span: &Option<Range<usize>>| spans.record(path, span.as_ref());
        let mut top = Vec::new();
        present(&mut top, "name", &self.name);
        present(&mut top, "members", &self.members);
        present(&mut top, "commit_interval", &self.commit_interval);
        present(&mut top, "retries", &self.retries);
        present(&mut top, "retry_backoff", &self.retry_backoff);
        present(&mut top, "fetch_max_bytes", &self.fetch_max_bytes);
        present(&mut top, "in_flight_batches", &self.in_flight_batches);
        present(&mut top, "source", &self.source);
        present(&mut top, "sink", &self.sink);
        for (key, span) in &top {
            record((*key).to_owned(), span);
        }
        if let Some(source) = &self.source {
            let mut keys = Vec::new();
            present(&mut keys, "topic", &source.value.topic);
            present(&mut keys, "group", &source.value.group);
            present(
                &mut keys,
                "auto_offset_reset",
                &source.value.auto_offset_reset,
            );
            for (key, span) in &keys {
                record(format!("source.{key}"), span);
            }
        }
        for (index, operator) in self.operator.iter().enumerate() {
            let stage = format!("operator[{index}]");
            record(stage.clone(), &operator.span);
            if let Some(kind) = &operator.value.kind {
                record(format!("{stage}.type"), &kind.span);
            }
            for (key, span) in &operator.value.present_keys() {
                record(format!("{stage}.{key}"), span);
            }
        }
        if let Some(sink) = &self.sink {
            if let Some(kind) = &sink.value.kind {
                record("sink.type".to_owned(), &kind.span);
            }
            for (key, span) in &sink.value.present_keys() {
                record(format!("sink.{key}"), span);
            }
            for (index, table) in sink
                .value
                .table
                .iter()
                .flat_map(|tables| tables.value.iter())
                .enumerate()
            {
                let stage = format!("sink.table[{index}]");
                record(stage.clone(), &table.span);
                let mut keys = Vec::new();
                present(&mut keys, "name", &table.value.name);
                present(&mut keys, "key", &table.value.key);
                present(&mut keys, "each", &table.value.each);
                present(&mut keys, "fields", &table.value.fields);
                for (key, span) in &keys {
                    record(format!("{stage}.{key}"), span);
                }
            }
        }
        spans
    }

    /// Converts the `index`th `[[pipeline]]` (at `table_span`) and checks
    /// its own rules ([`check_pipeline`]). Returns it with its key spans.
    fn into_pipeline(
        self,
        index: usize,
        table_span: Option<Range<usize>>,
        source: &Source<'_>,
    ) -> Result<(PipelineConfig, PipelineSpans), ConfigError> {
        let context = PipelineContext {
            source,
            label: pipeline_label(index, self.name.as_ref().map(|name| name.value.as_str())),
            spans: self.spans(table_span),
        };
        let fail = |path: &str, message: String| context.error(path, message);
        let Some(name) = self.name else {
            return Err(fail(
                "name",
                "missing required key `name` in [[pipeline]]".to_owned(),
            ));
        };
        let Some(raw_source) = self.source else {
            return Err(fail(
                "source",
                "missing required table [pipeline.source] (topic = \"...\": the topic the \
                 pipeline reads)"
                    .to_owned(),
            ));
        };
        let raw_source = raw_source.value;
        let Some(topic) = raw_source.topic else {
            return Err(fail(
                "source.topic",
                "missing required key `topic` in [pipeline.source]".to_owned(),
            ));
        };
        let Some(sink) = self.sink else {
            return Err(fail(
                "sink",
                format!("missing required table [pipeline.sink] (type = {SINK_TYPES})"),
            ));
        };
        let sink = sink.value.into_sink(&context)?;
        let mut pipeline = PipelineConfig::new(name.value, topic.value, sink);
        if let Some(group) = raw_source.group {
            pipeline.source.group = group.value;
        }
        if let Some(reset) = raw_source.auto_offset_reset {
            pipeline.source.auto_offset_reset = match reset.value.as_str() {
                "earliest" => OffsetReset::Earliest,
                "latest" => OffsetReset::Latest,
                other => {
                    return Err(fail(
                        "source.auto_offset_reset",
                        format!(
                            "invalid auto_offset_reset {other:?}: expected \"earliest\" or \
                         \"latest\""
                        ),
                    ))
                }
            };
        }
        if let Some(members) = self.members {
            pipeline.members =
                to_u32(members.value, check_members).map_err(|m| fail("members", m))?;
        }
        if let Some(interval) = &self.commit_interval {
            pipeline.commit_interval =
                context.duration("commit_interval", "commit_interval", interval)?;
        }
        if let Some(retries) = self.retries {
            pipeline.retries =
                to_u32(retries.value, check_retries).map_err(|m| fail("retries", m))?;
        }
        if let Some(backoff) = &self.retry_backoff {
            pipeline.retry_backoff = context.duration("retry_backoff", "retry_backoff", backoff)?;
        }
        if let Some(size) = &self.fetch_max_bytes {
            pipeline.fetch_max_bytes = size_value("fetch_max_bytes", &size.value)
                .map_err(|m| fail("fetch_max_bytes", m))?;
        }
        if let Some(batches) = self.in_flight_batches {
            pipeline.in_flight_batches = to_u32(batches.value, check_in_flight_batches)
                .map_err(|m| fail("in_flight_batches", m))?;
        }
        for (index, operator) in self.operator.into_iter().enumerate() {
            let stage = format!("operator[{index}]");
            pipeline
                .operators
                .push(operator.value.into_operator(&stage, &context)?);
        }
        check_pipeline(&pipeline).map_err(|rule| fail(&rule.path, rule.message))?;
        Ok((pipeline, context.spans))
    }
}

// ---------------------------------------------------------------------------
// Key paths of `toml` errors inside pipelines.

/// Any TOML value with the spans of everything inside it, to find which key
/// an error is in. Reads any document shape.
enum SpanTree {
    Table(Vec<(String, Located<SpanTree>)>),
    Array(Vec<Located<SpanTree>>),
    Text(String),
    Other,
}

impl<'de> Deserialize<'de> for SpanTree {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TreeVisitor;
        impl<'de> serde::de::Visitor<'de> for TreeVisitor {
            type Value = SpanTree;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("any TOML value")
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<SpanTree, E> {
                Ok(SpanTree::Other)
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<SpanTree, E> {
                Ok(SpanTree::Other)
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<SpanTree, E> {
                Ok(SpanTree::Other)
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<SpanTree, E> {
                Ok(SpanTree::Other)
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<SpanTree, E> {
                Ok(SpanTree::Text(text.to_owned()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<SpanTree, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    entries.push((key, map.next_value()?));
                }
                Ok(SpanTree::Table(entries))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<SpanTree, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(SpanTree::Array(items))
            }
        }
        deserializer.deserialize_any(TreeVisitor)
    }
}

/// The pipeline tables, leniently: any keys, any value types.
#[derive(Deserialize)]
struct PipelineTrees {
    #[serde(default)]
    pipeline: Vec<Located<SpanTree>>,
}

/// One step of a key path.
enum PathStep<'t> {
    Key(&'t str),
    Index(usize),
}

/// The deepest value under `node` (itself included) whose span contains
/// `offset`, and the steps to it. Children are searched whatever the
/// parent's span: a `[pipeline.source]` table lies outside the span of its
/// `[[pipeline]]` table.
fn deepest_at(node: &Located<SpanTree>, offset: usize) -> Option<(Vec<PathStep<'_>>, &SpanTree)> {
    let found = match &node.value {
        SpanTree::Table(entries) => entries.iter().find_map(|(key, child)| {
            deepest_at(child, offset).map(|(mut steps, tree)| {
                steps.insert(0, PathStep::Key(key));
                (steps, tree)
            })
        }),
        SpanTree::Array(items) => items.iter().enumerate().find_map(|(index, child)| {
            deepest_at(child, offset).map(|(mut steps, tree)| {
                steps.insert(0, PathStep::Index(index));
                (steps, tree)
            })
        }),
        SpanTree::Text(_) | SpanTree::Other => None,
    };
    found.or_else(|| {
        node.span
            .as_ref()
            .filter(|span| span.contains(&offset))
            .map(|_| (Vec::new(), &node.value))
    })
}

/// The key path (`pipeline[NAME].operator[2].size`) of byte `offset` if it
/// is inside a `[[pipeline]]`; `unknown_key` names the key when the offset
/// is in a table that has it but in none of its values.
fn pipeline_key_path_at(text: &str, offset: usize, unknown_key: Option<&str>) -> Option<String> {
    let trees = toml::from_str::<PipelineTrees>(text).ok()?;
    trees
        .pipeline
        .iter()
        .enumerate()
        .find_map(|(index, pipeline)| {
            let (steps, found) = deepest_at(pipeline, offset)?;
            let name = match &pipeline.value {
                SpanTree::Table(entries) => {
                    entries.iter().find_map(|(key, value)| match &value.value {
                        SpanTree::Text(name) if key == "name" => Some(name.as_str()),
                        _ => None,
                    })
                }
                _ => None,
            };
            let mut path = pipeline_label(index, name);
            for step in &steps {
                match step {
                    PathStep::Key(key) => {
                        path.push('.');
                        path.push_str(key);
                    }
                    PathStep::Index(index) => path.push_str(&format!("[{index}]")),
                }
            }
            if let (SpanTree::Table(entries), Some(unknown)) = (found, unknown_key) {
                if entries.iter().any(|(key, _)| key == unknown) {
                    path.push('.');
                    path.push_str(unknown);
                }
            }
            Some(path)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const UNITS: [(&str, u64); 9] = [
        ("B", 1),
        ("KB", 1_000),
        ("MB", 1_000_000),
        ("GB", 1_000_000_000),
        ("TB", 1_000_000_000_000),
        ("KiB", 1 << 10),
        ("MiB", 1 << 20),
        ("GiB", 1 << 30),
        ("TiB", 1 << 40),
    ];

    /// `bytes / unit` written as an exact decimal (it terminates: every unit
    /// is 2^a * 5^b).
    fn exact_decimal(bytes: u64, unit: u64) -> String {
        let mut text = (bytes / unit).to_string();
        let mut remainder = bytes % unit;
        if remainder != 0 {
            text.push('.');
        }
        while remainder != 0 {
            let scaled = u128::from(remainder) * 10;
            text.push(char::from(b'0' + (scaled / u128::from(unit)) as u8));
            remainder = (scaled % u128::from(unit)) as u64;
        }
        text
    }

    #[test]
    fn plain_bytes() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("1048576"), Ok(1_048_576));
        assert_eq!(parse_size(" 42 "), Ok(42));
        assert_eq!(parse_size("18446744073709551615"), Ok(u64::MAX));
    }

    #[test]
    fn units() {
        assert_eq!(parse_size("64 MiB"), Ok(64 << 20));
        assert_eq!(parse_size("10GiB"), Ok(10 << 30));
        assert_eq!(parse_size("500 KB"), Ok(500_000));
        assert_eq!(parse_size("4 kib"), Ok(4096));
        assert_eq!(parse_size("4 KIB"), Ok(4096));
        assert_eq!(parse_size("7 b"), Ok(7));
        assert_eq!(parse_size("2 TB"), Ok(2_000_000_000_000));
        assert_eq!(parse_size("1 TiB"), Ok(1 << 40));
    }

    #[test]
    fn decimals() {
        assert_eq!(parse_size("1.5 GiB"), Ok(3 << 29));
        assert_eq!(parse_size("0.5KiB"), Ok(512));
        assert_eq!(parse_size("2.25 MB"), Ok(2_250_000));
        // Not a whole number of bytes: rounded down.
        assert_eq!(parse_size("0.1 KiB"), Ok(102));
        assert_eq!(parse_size("1.5 B"), Ok(1));
        assert_eq!(parse_size("0.0009765625 KiB"), Ok(1));
    }

    #[test]
    fn rejects_malformed() {
        for text in [
            "",
            " ",
            "MiB",
            "1.5",
            "-1",
            "-1 KiB",
            "1 XB",
            "1 MiBs",
            "1..5 MiB",
            "1. MiB",
            ".5 MiB",
            "1.2.3 MiB",
            "1 M iB",
            "one",
            "1e3",
            "0x10",
            "1_000",
        ] {
            let error = parse_size(text).expect_err(text);
            assert!(error.contains("invalid size"), "{text:?}: {error}");
            assert!(error.contains("like \"64 MiB\""), "{text:?}: {error}");
        }
    }

    #[test]
    fn rejects_overflow() {
        assert!(parse_size("18446744073709551616")
            .unwrap_err()
            .contains("more than 2^64 - 1 bytes"));
        assert!(parse_size("16777216 TiB")
            .unwrap_err()
            .contains("more than 2^64 - 1 bytes"));
        assert!(parse_size("99999999999999999999999 B").is_err());
        assert_eq!(
            parse_size("16777215.999999 TiB"),
            Ok((16_777_215 << 40) + 1_099_510_528_264)
        );
    }

    #[test]
    fn formats_sizes_for_messages() {
        assert_eq!(format_size(4096), "4 KiB");
        assert_eq!(format_size(1 << 30), "1 GiB");
        assert_eq!(format_size(1500), "1500 B");
        assert_eq!(format_size(0), "0 B");
    }

    #[test]
    fn line_column_counts_characters() {
        let text = "a = 1\nbé = \"x\"\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 6), (2, 1));
        assert_eq!(line_column(text, 9), (2, 3)); // after the 2-byte 'é'
        assert_eq!(line_column(text, 8), (2, 2)); // inside 'é': its start
        assert_eq!(line_column(text, 1000), (3, 1));
    }

    #[test]
    fn topic_name_rule() {
        for good in ["events", "a", "A.b_c-9", "...", ".a", &"x".repeat(249)] {
            assert_eq!(validate_topic_name(good), Ok(()), "{good:?}");
        }
        for bad in ["", ".", "..", "a b", "a/b", "é", "a\n", &"x".repeat(250)] {
            let error = validate_topic_name(bad).expect_err(bad);
            assert!(error.contains("[A-Za-z0-9._-]"), "{bad:?}: {error}");
        }
    }

    #[test]
    fn cleanup_values() {
        assert_eq!(cleanup_value("delete"), Ok(CleanupPolicy::Delete));
        assert_eq!(cleanup_value(" delete "), Ok(CleanupPolicy::Delete));
        assert_eq!(cleanup_value("compact"), Ok(CleanupPolicy::Compact));
        for text in [
            "compact,delete",
            "delete,compact",
            "delete, compact",
            " compact , delete ",
        ] {
            assert_eq!(
                cleanup_value(text),
                Ok(CleanupPolicy::CompactAndDelete),
                "{text}"
            );
        }
        for text in [
            "purge",
            "",
            "compact,",
            "compact,compact",
            "delete,delete",
            "compact,delete,delete",
            "compact delete",
            "Compact",
        ] {
            assert!(
                cleanup_value(text)
                    .unwrap_err()
                    .contains("expected \"delete\", \"compact\" or \"compact,delete\""),
                "{text:?}"
            );
        }
    }

    #[test]
    fn cleanup_policy_predicates() {
        assert!(CleanupPolicy::Delete.deletes() && !CleanupPolicy::Delete.compacts());
        assert!(!CleanupPolicy::Compact.deletes() && CleanupPolicy::Compact.compacts());
        assert!(CleanupPolicy::CompactAndDelete.deletes());
        assert!(CleanupPolicy::CompactAndDelete.compacts());
    }

    #[test]
    fn min_dirty_ratio_rule() {
        for good in [0.0, 0.5, 1.0, f64::MIN_POSITIVE] {
            assert_eq!(check_min_dirty_ratio(good), Ok(()), "{good}");
        }
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -0.1, 1.0001] {
            assert!(check_min_dirty_ratio(bad)
                .unwrap_err()
                .contains("min_dirty_ratio must be a number from 0 to 1"));
        }
    }

    proptest! {
        #[test]
        fn whole_units_parse_back_exactly(bytes in any::<u64>(), unit_index in 0..UNITS.len()) {
            let (unit, unit_bytes) = UNITS[unit_index];
            let whole = bytes - bytes % unit_bytes;
            let count = whole / unit_bytes;
            prop_assert_eq!(parse_size(&format!("{count} {unit}")), Ok(whole));
            prop_assert_eq!(parse_size(&format!("{count}{}", unit.to_lowercase())), Ok(whole));
            prop_assert_eq!(parse_size(&format!("{count}{}", unit.to_uppercase())), Ok(whole));
        }

        #[test]
        fn exact_decimals_parse_back_exactly(bytes in any::<u64>(), unit_index in 0..UNITS.len()) {
            let (unit, unit_bytes) = UNITS[unit_index];
            prop_assert_eq!(parse_size(&format!("{} {unit}", exact_decimal(bytes, unit_bytes))), Ok(bytes));
        }

        #[test]
        fn plain_integers_parse_back(bytes in any::<u64>()) {
            prop_assert_eq!(parse_size(&bytes.to_string()), Ok(bytes));
        }

        #[test]
        fn never_panics(text in "\\PC{0,24}") {
            let _ = parse_size(&text);
            let _ = validate_topic_name(&text);
        }

        #[test]
        fn from_toml_str_never_panics(text in "[a-z_=\\[\\]\"., 0-9\n{}#]{0,80}") {
            let _ = Config::from_toml_str(&text, "<string>");
        }
    }
}
