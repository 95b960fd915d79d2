//! `[[pipeline]]` sections: what a pipeline reads, does and writes.
//!
//! The TOML keys are documented in `examples/*.toml`; parsing and the
//! location of errors (`pipeline[NAME].operator[INDEX].KEY`) are in
//! [`crate::config`]. These types can also be built in code.

use super::json::FieldPath;
use std::path::PathBuf;
use std::time::Duration;

/// Default `members`.
pub const MEMBERS_DEFAULT: u32 = 1;
/// Most members one pipeline may run in-process (each is a thread).
pub const MEMBERS_MAX: u32 = 256;
/// Default `commit_interval`.
pub const COMMIT_INTERVAL_DEFAULT: Duration = Duration::from_secs(1);
/// Default `retries`: attempts after the first, before the dead-letter queue.
pub const RETRIES_DEFAULT: u32 = 3;
/// Most `retries`.
pub const RETRIES_MAX: u32 = 100;
/// Default `retry_backoff`: the first wait; each retry doubles it.
pub const RETRY_BACKOFF_DEFAULT: Duration = Duration::from_millis(100);
/// Default `fetch_max_bytes`.
pub const FETCH_MAX_BYTES_DEFAULT: u64 = 256 * 1024;
/// Default `in_flight_batches`: batches between a member and its sink stage.
pub const IN_FLIGHT_BATCHES_DEFAULT: u32 = 4;
/// Most `in_flight_batches`.
pub const IN_FLIGHT_BATCHES_MAX: u32 = 64;
/// Longest pipeline name: `<name>.dlq` must still be a valid topic name.
pub const PIPELINE_NAME_CHARS_MAX: usize = 200;

/// One `[[pipeline]]` section.
#[derive(Clone, Debug, PartialEq)]
pub struct PipelineConfig {
    /// `name`: `[A-Za-z0-9_-]`, 1 to 200 characters. Its dead-letter queue is
    /// the topic `<name>.dlq`.
    pub name: String,
    /// `[pipeline.source]`.
    pub source: SourceConfig,
    /// `[[pipeline.operator]]`, applied in order.
    pub operators: Vec<OperatorConfig>,
    /// `[pipeline.sink]`.
    pub sink: SinkConfig,
    /// `members`: group members this runtime runs for the pipeline; the
    /// source's partitions are shared among them.
    pub members: u32,
    /// `commit_interval`: how often completed batches' offsets are
    /// committed; `"0s"` commits after every batch.
    pub commit_interval: Duration,
    /// `retries`: attempts after the first before a record goes to the
    /// dead-letter queue.
    pub retries: u32,
    /// `retry_backoff`: wait before the first retry; doubles each time.
    pub retry_backoff: Duration,
    /// `fetch_max_bytes`: the size of one source fetch.
    pub fetch_max_bytes: u64,
    /// `in_flight_batches`: processed batches waiting for the sink stage,
    /// shared by the pipeline's members (the backpressure bound).
    pub in_flight_batches: u32,
}

impl PipelineConfig {
    /// A pipeline with every optional key at its default.
    pub fn new(name: impl Into<String>, source_topic: impl Into<String>, sink: SinkConfig) -> Self {
        let name = name.into();
        PipelineConfig {
            source: SourceConfig {
                topic: source_topic.into(),
                group: name.clone(),
                auto_offset_reset: OffsetReset::Earliest,
            },
            name,
            operators: Vec::new(),
            sink,
            members: MEMBERS_DEFAULT,
            commit_interval: COMMIT_INTERVAL_DEFAULT,
            retries: RETRIES_DEFAULT,
            retry_backoff: RETRY_BACKOFF_DEFAULT,
            fetch_max_bytes: FETCH_MAX_BYTES_DEFAULT,
            in_flight_batches: IN_FLIGHT_BATCHES_DEFAULT,
        }
    }

    /// The name of its dead-letter topic.
    pub fn dlq_topic(&self) -> String {
        dlq_topic(&self.name)
    }
}

/// The dead-letter topic of pipeline `name`.
pub fn dlq_topic(name: &str) -> String {
    format!("{name}.dlq")
}

/// `[pipeline.source]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceConfig {
    /// `topic`: must be a `[[topic]]` of the same file.
    pub topic: String,
    /// `group`: the consumer group (default: the pipeline's name).
    pub group: String,
    /// `auto_offset_reset`: where a partition with no committed offset starts.
    pub auto_offset_reset: OffsetReset,
}

/// Where a consumer with no committed offset starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffsetReset {
    /// `"earliest"`: the log start.
    Earliest,
    /// `"latest"`: the high watermark when the partition is assigned.
    Latest,
}

/// One `[[pipeline.operator]]`, chosen by its `type` key.
#[derive(Clone, Debug, PartialEq)]
pub enum OperatorConfig {
    /// `type = "filter"`: keep events whose JSON value passes `predicate`.
    Filter(Predicate),
    /// `type = "map"`: reshape the JSON value.
    Map(MapConfig),
    /// `type = "extract"`: replace the value with the JSON value at `field`.
    Extract {
        /// `field`.
        field: FieldPath,
    },
    /// `type = "flat_map"`: one event per element of the array at `field`.
    FlatMap {
        /// `field`.
        field: FieldPath,
    },
    /// `type = "key_by"`: the key becomes the text of `field`.
    KeyBy {
        /// `field`.
        field: FieldPath,
    },
    /// `type = "event_time"`: the event time becomes `field` (epoch
    /// milliseconds, or an RFC 3339 string).
    EventTime {
        /// `field`.
        field: FieldPath,
    },
    /// `type = "window"`: keyed event-time windows.
    Window(WindowConfig),
    /// `type = "aggregate"`: a running keyed aggregate, no windows.
    Aggregate(AggregateConfig),
    /// `type = "reduce"`: a running keyed reduction of values.
    Reduce(ReduceConfig),
    /// `type = "custom"`: an operator registered on the runtime by `name`.
    Custom {
        /// `name`.
        name: String,
        /// `params`: any table, handed to the operator's factory.
        params: serde_json::Value,
    },
}

impl OperatorConfig {
    /// The `type` key's value.
    pub fn type_name(&self) -> &'static str {
        match self {
            OperatorConfig::Filter(_) => "filter",
            OperatorConfig::Map(_) => "map",
            OperatorConfig::Extract { .. } => "extract",
            OperatorConfig::FlatMap { .. } => "flat_map",
            OperatorConfig::KeyBy { .. } => "key_by",
            OperatorConfig::EventTime { .. } => "event_time",
            OperatorConfig::Window(_) => "window",
            OperatorConfig::Aggregate(_) => "aggregate",
            OperatorConfig::Reduce(_) => "reduce",
            OperatorConfig::Custom { .. } => "custom",
        }
    }
}

/// A test on one JSON field (`filter`).
#[derive(Clone, Debug, PartialEq)]
pub struct Predicate {
    /// `field`.
    pub field: FieldPath,
    /// The test: exactly one of `equals`, `not_equals`, `greater_than`,
    /// `less_than`, `exists`, `one_of`.
    pub test: Test,
}

/// What a [`Predicate`] checks.
#[derive(Clone, Debug, PartialEq)]
pub enum Test {
    /// `equals = VALUE`.
    Equals(serde_json::Value),
    /// `not_equals = VALUE` (a missing field is not equal).
    NotEquals(serde_json::Value),
    /// `greater_than = NUMBER`.
    GreaterThan(f64),
    /// `less_than = NUMBER`.
    LessThan(f64),
    /// `exists = true|false`.
    Exists(bool),
    /// `one_of = [VALUES]`.
    OneOf(Vec<serde_json::Value>),
}

/// `type = "map"`: applied in this order: `project`, `drop`, `rename`, `set`.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct MapConfig {
    /// `project = ["a", "b.c"]`: keep only these fields (nested paths keep
    /// their nesting).
    pub project: Option<Vec<FieldPath>>,
    /// `drop = ["x"]`: remove these fields.
    pub drop: Vec<FieldPath>,
    /// `rename = { "old.path" = "new.path" }`.
    pub rename: Vec<(FieldPath, FieldPath)>,
    /// `set = { "field" = VALUE }`: set constant values.
    pub set: Vec<(FieldPath, serde_json::Value)>,
}

/// The window shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowKind {
    /// `kind = "tumbling"`, `size`.
    Tumbling {
        /// `size`.
        size: Duration,
    },
    /// `kind = "hopping"`, `size`, `hop` (a new window every `hop`).
    Hopping {
        /// `size`.
        size: Duration,
        /// `hop`.
        hop: Duration,
    },
    /// `kind = "session"`, `gap`: a key's window closes after `gap` without events.
    Session {
        /// `gap`.
        gap: Duration,
    },
}

/// What a window or a running aggregate computes per key.
#[derive(Clone, Debug, PartialEq)]
pub enum AggregateFunction {
    /// `"count"`.
    Count,
    /// `"sum"` of `field`.
    Sum,
    /// `"min"` of `field`.
    Min,
    /// `"max"` of `field`.
    Max,
    /// `"mean"` of `field`.
    Mean,
    /// `"percentiles"` of `field`, with `percentiles = [50, 99]` (exact,
    /// nearest-rank).
    Percentiles(Vec<f64>),
}

/// Where records too late for their window go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LatePolicy {
    /// `late = "dlq"` (default): the pipeline's dead-letter queue.
    DeadLetter,
    /// `late = "side_output"`, `side_output = "TOPIC"`.
    SideOutput(String),
}

/// `type = "window"`.
#[derive(Clone, Debug, PartialEq)]
pub struct WindowConfig {
    /// `kind` and its sizes.
    pub kind: WindowKind,
    /// `allowed_lateness` (default 0s): how far behind the largest event
    /// time seen a record may be and still count. A window fires once the
    /// watermark (largest event time minus this) passes its end.
    pub allowed_lateness: Duration,
    /// `aggregate` (default "count").
    pub function: AggregateFunction,
    /// `field`: the number aggregated (not needed for count).
    pub field: Option<FieldPath>,
    /// `time_field`: event time from this JSON field instead of the
    /// record's timestamp.
    pub time_field: Option<FieldPath>,
    /// `late` and `side_output`.
    pub late: LatePolicy,
}

/// `type = "aggregate"`: emits the key's new aggregate after each event.
#[derive(Clone, Debug, PartialEq)]
pub struct AggregateConfig {
    /// `aggregate`.
    pub function: AggregateFunction,
    /// `field`: the number aggregated (not needed for count).
    pub field: Option<FieldPath>,
}

/// The built-in reductions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceFunction {
    /// `"sum"` of `field`.
    Sum,
    /// `"min"` of `field`.
    Min,
    /// `"max"` of `field`.
    Max,
    /// `"latest"`: the last value.
    Latest,
    /// `"merge"`: JSON objects merged, later fields win.
    Merge,
}

/// `type = "reduce"`.
#[derive(Clone, Debug, PartialEq)]
pub struct ReduceConfig {
    /// `function`.
    pub function: ReduceFunction,
    /// `field`, for sum, min and max.
    pub field: Option<FieldPath>,
}

/// `[pipeline.sink]`, chosen by its `type` key.
#[derive(Clone, Debug, PartialEq)]
pub enum SinkConfig {
    /// `type = "topic"`, `topic`: a `[[topic]]` of the same file.
    Topic {
        /// `topic`.
        topic: String,
    },
    /// `type = "sled"`: tables in a sled database, one transaction per batch.
    Sled(SledSinkConfig),
    /// `type = "jsonl"`, `path`: JSON lines appended to a file, fsynced per batch.
    JsonLines {
        /// `path`.
        path: PathBuf,
    },
    /// `type = "stdout"`: one value per line on standard output.
    Stdout,
    /// `type = "custom"`: a sink registered on the runtime by `name`.
    Custom {
        /// `name`.
        name: String,
        /// `params`.
        params: serde_json::Value,
    },
}

impl SinkConfig {
    /// The `type` key's value.
    pub fn type_name(&self) -> &'static str {
        match self {
            SinkConfig::Topic { .. } => "topic",
            SinkConfig::Sled(_) => "sled",
            SinkConfig::JsonLines { .. } => "jsonl",
            SinkConfig::Stdout => "stdout",
            SinkConfig::Custom { .. } => "custom",
        }
    }
}

/// `type = "sled"`.
#[derive(Clone, Debug, PartialEq)]
pub struct SledSinkConfig {
    /// `path`: the sled database (a directory).
    pub path: PathBuf,
    /// `[[pipeline.sink.table]]`: each event writes a row to every table.
    pub tables: Vec<TableConfig>,
}

/// `[[pipeline.sink.table]]`: one sled tree.
#[derive(Clone, Debug, PartialEq)]
pub struct TableConfig {
    /// `name`: the tree.
    pub name: String,
    /// `key = ["trace_id", "span_id"]`: the row key, these fields' text
    /// joined by `/`. Empty (the default): the event's origin, so a
    /// replayed record overwrites its own row.
    pub key: Vec<FieldPath>,
    /// `each = "logs"`: one row per element of this array (the element's
    /// fields are then what `key` and `fields` read, with the parent's
    /// fields under `parent.`). Events without the array write no row here.
    pub each: Option<FieldPath>,
    /// `fields = [...]`: the row is these fields as a JSON object; absent,
    /// the whole value (or element).
    pub fields: Option<Vec<FieldPath>>,
}
