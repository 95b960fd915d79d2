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

/// The only `replication_factor` accepted until replication is implemented.
pub const REPLICATION_FACTOR_DEFAULT: u32 = 1;

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
    /// `[compactor]`: the key compactor's budget and schedule.
    pub compactor: CompactorConfig,
    /// `shutdown_timeout` (default "30s"): how long `Runtime::shutdown` waits
    /// for in-flight appends to drain before it stops everything anyway.
    /// More than zero, at most [`SHUTDOWN_TIMEOUT_MAX`].
    pub shutdown_timeout: Duration,
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
    /// `replication_factor` (default 1; only 1 until replication is implemented).
    pub replication_factor: u32,
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
            compactor: CompactorConfig::default(),
            shutdown_timeout: SHUTDOWN_TIMEOUT_DEFAULT,
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
    let shown = if length > 40 {
        // A long name would drown the rule; the count says enough.
        let head: String = name.chars().take(20).collect();
        format!("{head:?}...")
    } else {
        format!("{name:?}")
    };
    Err(format!("invalid topic name {shown}: {problem}; {RULE}"))
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
    if timeout.is_zero() || timeout > SHUTDOWN_TIMEOUT_MAX {
        return Err(format!(
            "shutdown_timeout must be more than 0s and at most {}, got {}",
            humantime::format_duration(SHUTDOWN_TIMEOUT_MAX),
            humantime::format_duration(timeout)
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
            check_replication_factor(i64::from(topic.replication_factor)),
        ),
    ];
    first_broken(checks)
}

fn check_partitions(partitions: i64) -> Result<(), String> {
    if (1..=i64::from(PARTITIONS_MAX)).contains(&partitions) {
        return Ok(());
    }
    Err(format!(
        "partitions must be between 1 and {PARTITIONS_MAX}, got {partitions}"
    ))
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
    if replication_factor == i64::from(REPLICATION_FACTOR_DEFAULT) {
        return Ok(());
    }
    if replication_factor < 1 {
        return Err(format!(
            "replication_factor must be at least 1, got {replication_factor}"
        ));
    }
    Err(format!(
        "replication_factor = {replication_factor}: replication is not implemented yet; only 1 is accepted"
    ))
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
    compactor: Option<Spanned<RawCompactor>>,
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
    compactor: Option<SpannedValues>,
}

impl SectionValueSpans {
    fn into_section(self, section: &str) -> Option<SpannedValues> {
        match section {
            "startup" => self.startup,
            "http" => self.http,
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
    compactor: Option<toml::Table>,
}

impl SectionTables {
    fn into_section(self, section: &str) -> Option<toml::Table> {
        match section {
            "startup" => self.startup,
            "http" => self.http,
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
        for (index, raw) in self.topic.into_iter().enumerate() {
            let table_span = raw.span();
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
            compactor: CompactorConfig::default(),
            shutdown_timeout: SHUTDOWN_TIMEOUT_DEFAULT,
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
        if let Some(compactor) = self.compactor {
            let table_span = compactor.span();
            config.compactor = compactor.into_inner().into_compactor(table_span, source)?;
        }
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
