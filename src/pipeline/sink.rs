//! The [`Sink`] trait and the built-in sinks.
//!
//! A sink receives the output of one source batch: the events, and the
//! source range they came from. It returns once the batch is as durable as
//! the sink makes it; only then does the pipeline build the token that lets
//! it commit the source offset (see [`crate::offsets::CommitToken`]).
//!
//! The built-in sinks:
//!
//! | sink | a batch is | after a crash | delivery |
//! |---|---|---|---|
//! | [`SledTableSink`] | one sled transaction over every table and the applied-offset tree, then `flush` (fsync) | all of a batch's rows or none | effectively once: positions below the stored applied offset are skipped |
//! | [`JsonLinesSink`] | one `write` of all its lines, then `sync_data` | a torn last line is cut at the next open | at least once |
//! | [`StdoutSink`] | one `write` of all its lines, then `flush` | n/a | at least once |
//! | [`TopicSink`] | one `send_batch` (one atomic batch per target partition), acknowledged when fsynced | per partition, all or none | at least once |

use super::json::FieldPath;
use super::Event;
use crate::pipeline::config::{SledSinkConfig, TableConfig};
use crate::runtime::Producer;
use crate::types::{Offset, PartitionId, Record};
use crate::ProduceError;
use serde_json::Value;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The output of one source batch.
#[derive(Debug)]
pub struct SinkBatch<'a> {
    /// The pipeline's name.
    pub pipeline: &'a str,
    /// Source topic.
    pub source_topic: &'a str,
    /// Source partition.
    pub partition: PartitionId,
    /// The first source offset this batch covers.
    pub first_offset: Offset,
    /// The source offset after the last record this batch covers: what the
    /// pipeline commits once the write completes.
    pub next_offset: Offset,
    /// The events to write, in source order.
    pub events: &'a [Event],
}

/// Why a sink write failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SinkError {
    /// What went wrong.
    pub message: String,
    /// Whether trying the same batch again may succeed.
    pub retryable: bool,
}

impl SinkError {
    /// An error that retrying will not fix (for example a record the sink
    /// cannot represent).
    pub fn permanent(message: impl Into<String>) -> SinkError {
        SinkError {
            message: message.into(),
            retryable: false,
        }
    }

    /// An error that may go away (I/O, a full disk, a busy service).
    pub fn retryable(message: impl Into<String>) -> SinkError {
        SinkError {
            message: message.into(),
            retryable: true,
        }
    }
}

/// Where a pipeline's output goes.
///
/// `write` is called from the pipeline's sink stage, one batch at a time, in
/// source order per partition. A write either completes (the whole batch is
/// stored) or fails; a failed batch is retried, then split record by record
/// so that only the records that still fail go to the dead-letter queue.
pub trait Sink: Send {
    /// Stores one batch.
    fn write(&mut self, batch: &SinkBatch<'_>) -> Result<(), SinkError>;

    /// For a sink that records its progress with its data (effectively
    /// once): the next source offset it has already applied for this
    /// partition, so the pipeline can resume there. `None` otherwise.
    fn applied_offset(
        &mut self,
        _pipeline: &str,
        _source_topic: &str,
        _partition: PartitionId,
    ) -> Result<Option<Offset>, SinkError> {
        Ok(None)
    }
}

// ---------------------------------------------------------------------------
// Sled tables
// ---------------------------------------------------------------------------

/// The tree that maps (pipeline, source topic, partition) to the next source
/// offset the sink has applied.
pub const APPLIED_TREE: &str = "__millrace_applied";

/// Writes each event as rows of sled trees ("tables"), effectively once.
///
/// # Layout
///
/// One tree per [`TableConfig`] (named by `name`) and the tree
/// [`APPLIED_TREE`]:
///
/// | tree | key | value |
/// |---|---|---|
/// | a table | the key fields' text joined by `/` (strings as they are, numbers and booleans as JSON text); with no key fields, the event's origin `TOPIC/PARTITION/OFFSET`, plus `/INDEX` for an `each` row | the projection of `fields` as a compact JSON object (nested paths keep their nesting), or without `fields` the whole value (its own text, whitespace removed) or element; projections and elements are re-serialized by `serde_json`, object keys sorted |
/// | `__millrace_applied` | `u16` BE length, pipeline name, `u16` BE length, source topic, `u32` BE partition | the next source offset applied, `u64` LE |
///
/// With `each = "spans"`, a table gets one row per element of the array at
/// `spans`; paths then read the element, except paths starting with
/// `parent.`, which read the event's whole value (`["parent.trace_id",
/// "span_id"]`). An event without the array (or with `null`) writes no row
/// to that table. A tombstone writes no row to any table.
///
/// # Atomicity and effectively once
///
/// A batch is one sled transaction over every table and the applied tree:
/// it reads the stored applied offset of the batch's (pipeline, topic,
/// partition), skips every event whose `position` is below it (an earlier
/// run applied it), writes the rows of the others and stores
/// `max(stored, next_offset)`. Then the database is flushed (fsync) before
/// `write` returns. An error or a panic inside the transaction leaves
/// nothing of the batch. Rows are keyed by record fields or by origin, so a
/// record replayed from the dead-letter queue overwrites its own rows.
///
/// Clones share the database (sled allows one open per process): give each
/// pipeline member a clone.
#[derive(Clone)]
pub struct SledTableSink {
    database: sled::Db,
    tables: Vec<TableConfig>,
    /// The tables' trees in `tables` order, then the applied tree: the
    /// slice one transaction covers.
    trees: Vec<sled::Tree>,
}

impl std::fmt::Debug for SledTableSink {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("SledTableSink")
            .field("tables", &self.tables)
            .finish_non_exhaustive()
    }
}

/// A row of a table: key and value bytes.
pub type Row = (Vec<u8>, Vec<u8>);

/// One event's rows, per table in `tables` order, or why it has none.
struct PreparedEvent {
    position: Offset,
    rows: Result<Vec<Vec<Row>>, SinkError>,
}

impl SledTableSink {
    /// Opens (or creates) the database at `config.path` and a tree per
    /// table. Refuses a table named empty, twice, or with the reserved
    /// prefixes `__millrace` and `__sled` (permanent); a storage failure is
    /// retryable.
    pub fn open(config: &SledSinkConfig) -> Result<SledTableSink, SinkError> {
        check_table_names(&config.tables)?;
        let database =
            crate::runtime::open_sled_waiting_for_release(&config.path).map_err(|error| {
                SinkError::retryable(format!("sled sink {}: {error}", config.path.display()))
            })?;
        let mut trees = Vec::with_capacity(config.tables.len() + 1);
        for table in &config.tables {
            trees.push(open_tree(&database, &table.name)?);
        }
        trees.push(open_tree(&database, APPLIED_TREE)?);
        Ok(SledTableSink {
            database,
            tables: config.tables.clone(),
            trees,
        })
    }

    /// Every row of `table` in key order (for tests, examples and tools;
    /// it reads the whole tree). A table that is not configured is a
    /// permanent error.
    pub fn table_rows(&self, table: &str) -> Result<Vec<Row>, SinkError> {
        self.table_tree(table)?
            .iter()
            .map(|entry| {
                entry
                    .map(|(key, value)| (key.to_vec(), value.to_vec()))
                    .map_err(storage_error)
            })
            .collect()
    }

    /// The row of `table` at `key`, if there is one (for tests, examples
    /// and tools).
    pub fn row(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, SinkError> {
        self.table_tree(table)?
            .get(key)
            .map(|value| value.map(|value| value.to_vec()))
            .map_err(storage_error)
    }

    /// The next source offset applied for (pipeline, topic, partition), if
    /// any batch of it was written.
    pub fn applied(
        &self,
        pipeline: &str,
        source_topic: &str,
        partition: PartitionId,
    ) -> Result<Option<Offset>, SinkError> {
        let key = applied_key(pipeline, source_topic, partition)?;
        let stored = self.applied_tree().get(&key).map_err(storage_error)?;
        stored
            .map(|value| decode_applied(&value, pipeline, source_topic, partition))
            .transpose()
    }

    fn table_tree(&self, table: &str) -> Result<&sled::Tree, SinkError> {
        self.tables
            .iter()
            .position(|config| config.name == table)
            .and_then(|index| self.trees.get(index))
            .ok_or_else(|| SinkError::permanent(format!("sled sink has no table {table:?}")))
    }

    fn applied_tree(&self) -> &sled::Tree {
        // `open` always pushes the applied tree last.
        &self.trees[self.trees.len() - 1]
    }

    /// Parses every event and computes its rows, outside the transaction
    /// (sled may run the transaction's closure more than once). An event
    /// that cannot be written keeps its error: it fails the batch only if
    /// it has not been applied already.
    fn prepare(&self, events: &[Event]) -> Vec<PreparedEvent> {
        events
            .iter()
            .map(|event| PreparedEvent {
                position: event.position,
                rows: self.event_rows(event),
            })
            .collect()
    }

    fn event_rows(&self, event: &Event) -> Result<Vec<Vec<Row>>, SinkError> {
        let Some(raw) = event.value.as_deref() else {
            return Ok(vec![Vec::new(); self.tables.len()]);
        };
        if self.tables.is_empty() {
            return Ok(Vec::new());
        }
        let value: Value = serde_json::from_slice(raw).map_err(|error| {
            SinkError::permanent(format!(
                "sled sink: event {} is not JSON: {error}",
                event.origin
            ))
        })?;
        self.tables
            .iter()
            .map(|table| table_rows(table, event, raw, &value))
            .collect()
    }

    /// The transaction. Tables are written one after the other (all rows
    /// of the first table, then the next): a failure between two of them
    /// must leave nothing, which the failpoint
    /// `pipeline::sled_sink::after_first_table` tests.
    fn apply(&self, batch: &SinkBatch<'_>, prepared: &[PreparedEvent]) -> Result<(), SinkError> {
        use sled::transaction::{ConflictableTransactionError, TransactionError};
        use sled::Transactional;

        let key = applied_key(batch.pipeline, batch.source_topic, batch.partition)?;
        let result = self.trees.as_slice().transaction(
            |trees| -> Result<(), ConflictableTransactionError<SinkError>> {
                let Some((applied_tree, table_trees)) = trees.split_last() else {
                    return Err(ConflictableTransactionError::Abort(SinkError::permanent(
                        "sled sink: no applied tree",
                    )));
                };
                let stored = match applied_tree.get(&key)? {
                    Some(value) => Some(
                        decode_applied(&value, batch.pipeline, batch.source_topic, batch.partition)
                            .map_err(ConflictableTransactionError::Abort)?,
                    ),
                    None => None,
                };
                let applied_before = stored.unwrap_or(Offset(0));
                let mut pending = Vec::with_capacity(prepared.len());
                for event in prepared
                    .iter()
                    .filter(|event| event.position >= applied_before)
                {
                    match &event.rows {
                        Ok(rows) => pending.push(rows),
                        Err(error) => {
                            return Err(ConflictableTransactionError::Abort(error.clone()))
                        }
                    }
                }
                for (index, tree) in table_trees.iter().enumerate() {
                    for rows in &pending {
                        for (row_key, row_value) in rows.get(index).into_iter().flatten() {
                            tree.insert(row_key.as_slice(), row_value.as_slice())?;
                        }
                    }
                    if index == 0 {
                        fail::fail_point!("pipeline::sled_sink::after_first_table");
                    }
                }
                let next = applied_before.max(batch.next_offset);
                applied_tree.insert(key.as_slice(), &next.0.to_le_bytes()[..])?;
                Ok(())
            },
        );
        match result {
            Ok(()) => {}
            Err(TransactionError::Abort(error)) => return Err(error),
            Err(TransactionError::Storage(error)) => return Err(storage_error(error)),
        }
        // sled has one log for every tree: this fsyncs the whole batch.
        self.database.flush().map_err(storage_error)?;
        Ok(())
    }
}

impl Sink for SledTableSink {
    fn write(&mut self, batch: &SinkBatch<'_>) -> Result<(), SinkError> {
        let prepared = self.prepare(batch.events);
        self.apply(batch, &prepared)
    }

    fn applied_offset(
        &mut self,
        pipeline: &str,
        source_topic: &str,
        partition: PartitionId,
    ) -> Result<Option<Offset>, SinkError> {
        self.applied(pipeline, source_topic, partition)
    }
}

fn check_table_names(tables: &[TableConfig]) -> Result<(), SinkError> {
    for (index, table) in tables.iter().enumerate() {
        let name = table.name.as_str();
        if name.is_empty() || name.starts_with("__millrace") || name.starts_with("__sled") {
            return Err(SinkError::permanent(format!(
                "sled sink: table name {name:?} is empty or reserved (__millrace*, __sled*)"
            )));
        }
        if tables[..index].iter().any(|other| other.name == name) {
            return Err(SinkError::permanent(format!(
                "sled sink: table {name:?} is configured twice"
            )));
        }
    }
    Ok(())
}

fn open_tree(database: &sled::Db, name: &str) -> Result<sled::Tree, SinkError> {
    database
        .open_tree(name)
        .map_err(|error| SinkError::retryable(format!("sled sink: open tree {name}: {error}")))
}

fn storage_error(error: sled::Error) -> SinkError {
    SinkError::retryable(format!("sled sink: {error}"))
}

fn applied_key(
    pipeline: &str,
    source_topic: &str,
    partition: PartitionId,
) -> Result<Vec<u8>, SinkError> {
    let length = |text: &str| {
        u16::try_from(text.len()).map_err(|_| {
            SinkError::permanent(format!(
                "sled sink: name of {} bytes is too long for the applied tree (at most {})",
                text.len(),
                u16::MAX
            ))
        })
    };
    let mut key = Vec::with_capacity(8 + pipeline.len() + source_topic.len());
    key.extend_from_slice(&length(pipeline)?.to_be_bytes());
    key.extend_from_slice(pipeline.as_bytes());
    key.extend_from_slice(&length(source_topic)?.to_be_bytes());
    key.extend_from_slice(source_topic.as_bytes());
    key.extend_from_slice(&partition.0.to_be_bytes());
    Ok(key)
}

fn decode_applied(
    value: &[u8],
    pipeline: &str,
    source_topic: &str,
    partition: PartitionId,
) -> Result<Offset, SinkError> {
    let bytes: [u8; 8] = value.try_into().map_err(|_| {
        SinkError::permanent(format!(
            "sled sink: applied offset of pipeline {pipeline} {source_topic}-{partition} is damaged ({} bytes, expected 8)",
            value.len()
        ))
    })?;
    Ok(Offset(u64::from_le_bytes(bytes)))
}

/// The rows `event` writes to `table`. `raw` is the value's text, `value`
/// its parse.
fn table_rows(
    table: &TableConfig,
    event: &Event,
    raw: &[u8],
    value: &Value,
) -> Result<Vec<Row>, SinkError> {
    let Some(each) = &table.each else {
        let key = row_key(table, event, value, None, None)?;
        let row = match &table.fields {
            Some(fields) => project(fields, value, None)?,
            None => compact_json(raw),
        };
        return Ok(vec![(key, row)]);
    };
    let items = match each.get(value) {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(SinkError::permanent(format!(
                "sled sink: table {}: field {each} of event {} is not an array",
                table.name, event.origin
            )))
        }
    };
    items
        .iter()
        .enumerate()
        .map(|(index, element)| {
            let key = row_key(table, event, element, Some(value), Some(index))?;
            let row = match &table.fields {
                Some(fields) => project(fields, element, Some(value))?,
                None => serde_json::to_vec(element).map_err(serialize_error)?,
            };
            Ok((key, row))
        })
        .collect()
}

/// The value at `path`: in `parent` for a `parent.` path of an `each` row,
/// otherwise in `value`.
fn lookup<'v>(path: &FieldPath, value: &'v Value, parent: Option<&'v Value>) -> Option<&'v Value> {
    match (parent, path.segments().split_first()) {
        (Some(parent), Some((first, rest))) if first == "parent" && !rest.is_empty() => {
            get_segments(parent, rest)
        }
        _ => path.get(value),
    }
}

fn row_key(
    table: &TableConfig,
    event: &Event,
    value: &Value,
    parent: Option<&Value>,
    index: Option<usize>,
) -> Result<Vec<u8>, SinkError> {
    if table.key.is_empty() {
        return Ok(match index {
            Some(index) => format!("{}/{index}", event.origin),
            None => event.origin.to_string(),
        }
        .into_bytes());
    }
    let element = || match index {
        Some(index) => format!(" (element {index})"),
        None => String::new(),
    };
    let mut key = String::new();
    for (position, path) in table.key.iter().enumerate() {
        if position > 0 {
            key.push('/');
        }
        match lookup(path, value, parent) {
            Some(Value::String(text)) => key.push_str(text),
            Some(scalar @ (Value::Number(_) | Value::Bool(_))) => key.push_str(&scalar.to_string()),
            None | Some(Value::Null) => {
                return Err(SinkError::permanent(format!(
                    "sled sink: table {}: key field {path} is missing in event {}{}",
                    table.name,
                    event.origin,
                    element()
                )))
            }
            Some(_) => {
                return Err(SinkError::permanent(format!(
                    "sled sink: table {}: key field {path} of event {}{} is an object or array, not a string or number",
                    table.name,
                    event.origin,
                    element()
                )))
            }
        }
    }
    Ok(key.into_bytes())
}

/// The `fields` of `value` as one compact JSON object; missing fields are
/// left out.
fn project(
    fields: &[FieldPath],
    value: &Value,
    parent: Option<&Value>,
) -> Result<Vec<u8>, SinkError> {
    let mut object = serde_json::Map::new();
    for path in fields {
        if let Some(found) = lookup(path, value, parent) {
            insert_nested(&mut object, path.segments(), found.clone());
        }
    }
    serde_json::to_vec(&Value::Object(object)).map_err(serialize_error)
}

fn serialize_error(error: serde_json::Error) -> SinkError {
    SinkError::permanent(format!("sled sink: cannot serialize a row: {error}"))
}

// ---------------------------------------------------------------------------
// JSON lines
// ---------------------------------------------------------------------------

/// How many bytes [`JsonLinesSink::open`] reads at a time while looking
/// back for the last newline.
const TAIL_SCAN_CHUNK_BYTES: usize = 64 * 1024;

/// Appends one JSON line per event to a file.
///
/// A line is the value itself if it is valid JSON (whitespace between
/// tokens removed, so it is one line; the text is otherwise kept as it
/// is), a JSON string of the value (lossy UTF-8) if it is not, and `null`
/// for a tombstone. A batch is one `write` and one `sync_data`.
///
/// At open, a last line without its newline (a write torn by a crash) is
/// cut, the cut is fsynced and logged at WARN with its byte count. If a
/// write or sync fails, the next write first cuts the file back to where
/// the last durable batch ended, so a retried batch is never appended
/// after half of itself. One sink per file: two sinks appending to one
/// file would interleave their batches.
#[derive(Debug)]
pub struct JsonLinesSink {
    path: PathBuf,
    file: File,
    /// Where the last durable batch ended.
    durable_bytes: u64,
    /// A write or sync failed: bytes after `durable_bytes` may be there.
    repair_needed: bool,
}

impl JsonLinesSink {
    /// Opens (or creates) the file for appending, creating its parent
    /// directory if missing, and cuts a torn last line. Errors are
    /// retryable I/O errors naming the path.
    pub fn open(path: impl AsRef<Path>) -> Result<JsonLinesSink, SinkError> {
        let path = path.as_ref().to_path_buf();
        let io_error = |operation: &str, error: std::io::Error| {
            SinkError::retryable(format!(
                "jsonl sink: {operation} {}: {error}",
                path.display()
            ))
        };
        let parent = path
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty());
        if let Some(parent) = parent {
            std::fs::create_dir_all(parent)
                .map_err(|error| io_error("create directory for", error))?;
        }
        let existed = path
            .try_exists()
            .map_err(|error| io_error("look up", error))?;
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|error| io_error("open", error))?;
        if !existed {
            // The new name must survive a crash as well as the lines.
            let directory = parent.unwrap_or_else(|| Path::new("."));
            File::open(directory)
                .and_then(|directory| directory.sync_all())
                .map_err(|error| io_error("fsync the directory of", error))?;
        }
        let length = file
            .metadata()
            .map_err(|error| io_error("stat", error))?
            .len();
        let complete = complete_lines_length(&mut file, length)
            .map_err(|error| io_error("read the tail of", error))?;
        if complete < length {
            file.set_len(complete)
                .and_then(|()| file.sync_all())
                .map_err(|error| io_error("cut the torn tail of", error))?;
            tracing::warn!(
                path = %path.display(),
                bytes = length - complete,
                "jsonl sink: cut a torn last line (no trailing newline) left by an interrupted write"
            );
        }
        Ok(JsonLinesSink {
            path,
            file,
            durable_bytes: complete,
            repair_needed: false,
        })
    }

    /// The file it appends to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io_error(&self, operation: &str, error: std::io::Error) -> SinkError {
        SinkError::retryable(format!(
            "jsonl sink: {operation} {}: {error}",
            self.path.display()
        ))
    }
}

impl Sink for JsonLinesSink {
    fn write(&mut self, batch: &SinkBatch<'_>) -> Result<(), SinkError> {
        if batch.events.is_empty() {
            return Ok(());
        }
        if self.repair_needed {
            self.file
                .set_len(self.durable_bytes)
                .and_then(|()| self.file.sync_all())
                .map_err(|error| self.io_error("cut back the failed write of", error))?;
            self.repair_needed = false;
        }
        let mut buffer = Vec::new();
        for event in batch.events {
            json_line(event, &mut buffer);
        }
        let written = self
            .file
            .write_all(&buffer)
            .and_then(|()| self.file.sync_data());
        if let Err(error) = written {
            self.repair_needed = true;
            return Err(self.io_error("append to", error));
        }
        self.durable_bytes += buffer.len() as u64;
        Ok(())
    }
}

/// Appends the line of `event` (with its newline) to `buffer`.
fn json_line(event: &Event, buffer: &mut Vec<u8>) {
    match event.value.as_deref() {
        None => buffer.extend_from_slice(b"null"),
        Some(raw) if is_json(raw) => buffer.extend_from_slice(&compact_json(raw)),
        Some(raw) => {
            let text = String::from_utf8_lossy(raw);
            // Serializing a string cannot fail; fall back to `null` rather
            // than panic if it ever did.
            match serde_json::to_vec(&text) {
                Ok(quoted) => buffer.extend_from_slice(&quoted),
                Err(_) => buffer.extend_from_slice(b"null"),
            }
        }
    }
    buffer.push(b'\n');
}

/// The length of the file up to and including its last newline (0 if it
/// has none), reading backwards from `length` in chunks.
fn complete_lines_length(file: &mut File, length: u64) -> std::io::Result<u64> {
    let mut end = length;
    let mut chunk = vec![0u8; TAIL_SCAN_CHUNK_BYTES];
    while end > 0 {
        let start = end.saturating_sub(TAIL_SCAN_CHUNK_BYTES as u64);
        let size = (end - start) as usize;
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut chunk[..size])?;
        if let Some(newline) = chunk[..size].iter().rposition(|&byte| byte == b'\n') {
            return Ok(start + newline as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

// ---------------------------------------------------------------------------
// Standard output
// ---------------------------------------------------------------------------

/// Writes each event's value to standard output, one per line: the raw
/// bytes and `\n` (`null` for a tombstone), flushed after each batch. A
/// closed pipe (the reader went away) is the permanent error
/// `"stdout closed"`; other errors are retryable.
#[derive(Debug, Default)]
pub struct StdoutSink {
    _private: (),
}

impl StdoutSink {
    /// A sink writing to this process's standard output.
    pub fn new() -> StdoutSink {
        StdoutSink::default()
    }
}

impl Sink for StdoutSink {
    fn write(&mut self, batch: &SinkBatch<'_>) -> Result<(), SinkError> {
        write_lines(&mut std::io::stdout().lock(), batch.events)
    }
}

/// The stdout sink's work, on any writer (tests use a buffer).
fn write_lines(out: &mut impl Write, events: &[Event]) -> Result<(), SinkError> {
    if events.is_empty() {
        return Ok(());
    }
    let mut buffer = Vec::new();
    for event in events {
        buffer.extend_from_slice(event.value.as_deref().unwrap_or(b"null"));
        buffer.push(b'\n');
    }
    out.write_all(&buffer)
        .and_then(|()| out.flush())
        .map_err(|error| match error.kind() {
            std::io::ErrorKind::BrokenPipe => SinkError::permanent("stdout closed"),
            _ => SinkError::retryable(format!("stdout: {error}")),
        })
}

// ---------------------------------------------------------------------------
// Topic
// ---------------------------------------------------------------------------

/// Produces each event to a topic of the same runtime: key, value, headers
/// and event time kept (`timestamp_ms = Some(event.timestamp_ms)`).
///
/// A batch is one [`Producer::send_batch_blocking`]: keyed records go to
/// their key's partition, and `write` returns once every share is
/// durable. Each partition's share is atomic, the shares are not, so a
/// retried batch may repeat records on some partitions (at least once).
/// It blocks the calling thread.
#[derive(Clone)]
pub struct TopicSink {
    producer: Producer,
}

impl std::fmt::Debug for TopicSink {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("TopicSink")
            .field("topic", &self.producer.topic())
            .finish()
    }
}

impl TopicSink {
    /// A sink producing with `producer` (to its topic).
    pub fn new(producer: Producer) -> TopicSink {
        TopicSink { producer }
    }
}

impl Sink for TopicSink {
    fn write(&mut self, batch: &SinkBatch<'_>) -> Result<(), SinkError> {
        if batch.events.is_empty() {
            return Ok(());
        }
        let records = batch.events.iter().map(record_of).collect();
        self.producer
            .send_batch_blocking(records)
            .map(|_| ())
            .map_err(|error| produce_error(self.producer.topic(), error))
    }
}

fn record_of(event: &Event) -> Record {
    Record {
        key: event.key.clone(),
        value: event.value.clone(),
        headers: event.headers.clone(),
        timestamp_ms: Some(event.timestamp_ms),
    }
}

/// What a failed produce means for the batch: records the topic can never
/// take are permanent (the pipeline then splits the batch and dead-letters
/// only those); everything else may pass on a retry.
fn produce_error(topic: &str, error: ProduceError) -> SinkError {
    let message = format!("topic sink {topic}: {error}");
    match error {
        ProduceError::TooLarge { .. }
        | ProduceError::Empty
        | ProduceError::UnknownTopic(_)
        | ProduceError::UnknownPartition { .. }
        // Only the Kafka front end sends idempotent batches; never a sink.
        | ProduceError::OutOfOrderSequence { .. }
        | ProduceError::InvalidProducerEpoch { .. }
        | ProduceError::UnknownProducerId { .. } => SinkError::permanent(message),
        ProduceError::FailStopped { .. }
        | ProduceError::ShuttingDown
        | ProduceError::Unavailable
        | ProduceError::NotLeader { .. }
        | ProduceError::NotCommitted(_) => SinkError::retryable(message),
    }
}

// ---------------------------------------------------------------------------
// Shared JSON helpers (private: json.rs belongs to the operators).
// ---------------------------------------------------------------------------

/// Whether `raw` is one complete JSON document (UTF-8, nothing after it).
fn is_json(raw: &[u8]) -> bool {
    std::str::from_utf8(raw)
        .is_ok_and(|text| serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok())
}

/// `raw`, a valid JSON document (see [`is_json`]), without the whitespace
/// between its tokens. Unlike a parse and re-serialization this keeps the
/// text exactly: key order, number spelling, escapes. Valid JSON has no raw
/// control character inside a string, so every newline it holds is
/// whitespace between tokens, and the result is one line.
fn compact_json(raw: &[u8]) -> Vec<u8> {
    let mut compact = Vec::with_capacity(raw.len());
    let mut in_string = false;
    let mut escaped = false;
    for &byte in raw {
        if in_string {
            compact.push(byte);
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
            continue;
        }
        match byte {
            b' ' | b'\t' | b'\n' | b'\r' => {}
            b'"' => {
                in_string = true;
                compact.push(byte);
            }
            _ => compact.push(byte),
        }
    }
    compact
}

/// The value at `segments` below `value` (the same walk as
/// [`FieldPath::get`], on a sub-path).
fn get_segments<'v>(value: &'v Value, segments: &[String]) -> Option<&'v Value> {
    segments
        .iter()
        .try_fold(value, |current, segment| match current {
            Value::Object(map) => map.get(segment),
            Value::Array(items) => segment
                .parse::<usize>()
                .ok()
                .and_then(|index| items.get(index)),
            _ => None,
        })
}

/// Sets `leaf` at `segments` in `object`, creating the objects on the way
/// (a projection keeps the nesting of its paths). If a shorter path already
/// put a whole non-object value on the way, that value already holds this
/// one: nothing to do.
fn insert_nested(object: &mut serde_json::Map<String, Value>, segments: &[String], leaf: Value) {
    let Some((last, parents)) = segments.split_last() else {
        return;
    };
    let mut current = object;
    for segment in parents {
        let child = current
            .entry(segment.clone())
            .or_insert_with(|| Value::Object(serde_json::Map::new()));
        match child {
            Value::Object(map) => current = map,
            _ => return,
        }
    }
    current.insert(last.clone(), leaf);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::Origin;
    use bytes::Bytes;
    use std::sync::Arc;

    fn event(offset: u64, value: Option<&str>) -> Event {
        let origin = Origin {
            topic: Arc::from("spans"),
            partition: PartitionId(2),
            offset: Offset(offset),
        };
        Event {
            key: None,
            value: value.map(|value| Bytes::copy_from_slice(value.as_bytes())),
            headers: Vec::new(),
            timestamp_ms: 0,
            origin,
            position: Offset(offset),
        }
    }

    fn paths(texts: &[&str]) -> Vec<FieldPath> {
        texts
            .iter()
            .map(|text| FieldPath::parse(text).unwrap())
            .collect()
    }

    fn table(name: &str, key: &[&str], each: Option<&str>, fields: Option<&[&str]>) -> TableConfig {
        TableConfig {
            name: name.to_owned(),
            key: paths(key),
            each: each.map(|each| FieldPath::parse(each).unwrap()),
            fields: fields.map(paths),
        }
    }

    fn rows(table: &TableConfig, event: &Event) -> Result<Vec<(String, String)>, SinkError> {
        let raw = event.value.as_deref().unwrap();
        let value = serde_json::from_slice(raw).unwrap();
        Ok(table_rows(table, event, raw, &value)?
            .into_iter()
            .map(|(key, value)| {
                (
                    String::from_utf8(key).unwrap(),
                    String::from_utf8(value).unwrap(),
                )
            })
            .collect())
    }

    #[test]
    fn compact_json_keeps_strings_and_removes_whitespace() {
        let raw = b"{ \"a b\" : [1,\n 2.50 ],\r\n\t\"c\":\"x\\\" \\n y\", \"z\": 12345678901234567890123 }";
        assert!(is_json(raw));
        assert_eq!(
            compact_json(raw),
            b"{\"a b\":[1,2.50],\"c\":\"x\\\" \\n y\",\"z\":12345678901234567890123}"
        );
        assert!(!is_json(b"{\"a\":1} trailing"));
        assert!(!is_json(b"\"raw\nnewline\""));
        assert!(!is_json(b"\xff"));
    }

    #[test]
    fn rows_keyed_by_fields_or_by_origin() {
        let spans = table(
            "spans",
            &["trace_id", "n"],
            None,
            Some(&["name", "attrs.status", "missing"]),
        );
        let span = event(
            7,
            Some(r#"{"trace_id":"t1","n":3,"name":"GET","attrs":{"status":200,"x":1}}"#),
        );
        assert_eq!(
            rows(&spans, &span).unwrap(),
            [(
                "t1/3".to_owned(),
                r#"{"attrs":{"status":200},"name":"GET"}"#.to_owned()
            )]
        );
        let whole = table("raw", &[], None, None);
        let spaced = event(8, Some("{ \"b\": 1,  \"a\": 2 }"));
        assert_eq!(
            rows(&whole, &spaced).unwrap(),
            [("spans/2/8".to_owned(), r#"{"b":1,"a":2}"#.to_owned())]
        );
    }

    #[test]
    fn each_rows_see_their_element_and_the_parent() {
        let logs = table(
            "logs",
            &["parent.trace_id", "id"],
            Some("logs"),
            Some(&["msg", "parent.service"]),
        );
        let value = event(
            9,
            Some(
                r#"{"trace_id":"t1","service":"api","logs":[{"id":1,"msg":"a"},{"id":"two","msg":"b"}]}"#,
            ),
        );
        assert_eq!(
            rows(&logs, &value).unwrap(),
            [
                (
                    "t1/1".to_owned(),
                    r#"{"msg":"a","parent":{"service":"api"}}"#.to_owned()
                ),
                (
                    "t1/two".to_owned(),
                    r#"{"msg":"b","parent":{"service":"api"}}"#.to_owned()
                ),
            ]
        );
        let by_origin = table("logs", &[], Some("logs"), None);
        assert_eq!(
            rows(&by_origin, &value).unwrap(),
            [
                ("spans/2/9/0".to_owned(), r#"{"id":1,"msg":"a"}"#.to_owned()),
                (
                    "spans/2/9/1".to_owned(),
                    r#"{"id":"two","msg":"b"}"#.to_owned()
                ),
            ]
        );
        assert_eq!(
            rows(&by_origin, &event(10, Some(r#"{"no":"logs"}"#))).unwrap(),
            []
        );
        let error = rows(&by_origin, &event(11, Some(r#"{"logs":3}"#))).unwrap_err();
        assert!(!error.retryable);
        assert!(error.message.contains("spans/2/11"), "{error}");
    }

    #[test]
    fn a_missing_or_composite_key_field_is_permanent_and_named() {
        let spans = table("spans", &["trace_id", "span_id"], None, None);
        let error = rows(&spans, &event(5, Some(r#"{"trace_id":"t"}"#))).unwrap_err();
        assert!(!error.retryable);
        assert_eq!(
            error.message,
            "sled sink: table spans: key field span_id is missing in event spans/2/5"
        );
        let error = rows(
            &spans,
            &event(6, Some(r#"{"trace_id":"t","span_id":{"a":1}}"#)),
        )
        .unwrap_err();
        assert!(error.message.contains("not a string or number"), "{error}");
        let logs = table("logs", &["parent.trace_id", "id"], Some("logs"), None);
        let error = rows(
            &logs,
            &event(7, Some(r#"{"trace_id":"t","logs":[{"id":1},{}]}"#)),
        )
        .unwrap_err();
        assert!(
            error
                .message
                .contains("key field id is missing in event spans/2/7 (element 1)"),
            "{error}"
        );
    }

    #[test]
    fn table_names_are_checked() {
        for names in [
            vec!["a", "a"],
            vec![""],
            vec![APPLIED_TREE],
            vec!["__sled__default"],
        ] {
            let tables: Vec<TableConfig> = names
                .iter()
                .map(|name| table(name, &[], None, None))
                .collect();
            assert!(!check_table_names(&tables).unwrap_err().retryable);
        }
        assert!(
            check_table_names(&[table("a", &[], None, None), table("b", &[], None, None)]).is_ok()
        );
    }

    #[test]
    fn json_lines_are_one_per_event() {
        let mut buffer = Vec::new();
        for value in [Some("{\n \"a\": 1\n}"), Some("plain \"text\"\n"), None] {
            json_line(&event(0, value), &mut buffer);
        }
        let mut invalid = event(0, None);
        invalid.value = Some(Bytes::from_static(b"\xffok"));
        json_line(&invalid, &mut buffer);
        assert_eq!(
            String::from_utf8(buffer).unwrap(),
            "{\"a\":1}\n\"plain \\\"text\\\"\\n\"\nnull\n\"\u{fffd}ok\"\n"
        );
    }

    #[test]
    fn torn_tail_detection_finds_the_last_newline_across_chunks() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("lines.jsonl");
        let mut contents = b"1\n".to_vec();
        contents.extend(std::iter::repeat_n(b'x', TAIL_SCAN_CHUNK_BYTES * 2 + 17));
        std::fs::write(&path, &contents).unwrap();
        let mut file = File::open(&path).unwrap();
        assert_eq!(
            complete_lines_length(&mut file, contents.len() as u64).unwrap(),
            2
        );
        std::fs::write(&path, b"no newline at all").unwrap();
        let mut file = File::open(&path).unwrap();
        assert_eq!(complete_lines_length(&mut file, 17).unwrap(), 0);
        std::fs::write(&path, b"a\nb\n").unwrap();
        let mut file = File::open(&path).unwrap();
        assert_eq!(complete_lines_length(&mut file, 4).unwrap(), 4);
    }

    #[test]
    fn after_a_failed_append_the_next_write_cuts_back_to_the_last_durable_batch() {
        fn batch(events: &[Event]) -> SinkBatch<'_> {
            SinkBatch {
                pipeline: "p",
                source_topic: "spans",
                partition: PartitionId(2),
                first_offset: Offset(0),
                next_offset: Offset(3),
                events,
            }
        }
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("lines.jsonl");
        let mut sink = JsonLinesSink::open(&path).unwrap();
        sink.write(&batch(&[event(0, Some("1"))])).unwrap();
        // What a write that failed halfway leaves behind.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"2\n{\"half")
            .unwrap();
        sink.repair_needed = true;
        sink.write(&batch(&[event(1, Some("2")), event(2, Some("3"))]))
            .unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "1\n2\n3\n");
    }

    #[test]
    fn stdout_lines_and_a_closed_pipe() {
        let events = [event(0, Some("raw")), event(1, None)];
        let mut out = Vec::new();
        write_lines(&mut out, &events).unwrap();
        assert_eq!(out, b"raw\nnull\n");

        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        assert_eq!(
            write_lines(&mut Closed, &events),
            Err(SinkError::permanent("stdout closed"))
        );
    }

    #[test]
    fn produce_errors_map_to_permanent_or_retryable() {
        let permanent = [
            ProduceError::TooLarge { bytes: 2, max: 1 },
            ProduceError::Empty,
            ProduceError::UnknownTopic("t".to_owned()),
        ];
        for error in permanent {
            assert!(!produce_error("out", error).retryable);
        }
        let retryable = [
            ProduceError::Unavailable,
            ProduceError::ShuttingDown,
            ProduceError::FailStopped {
                reason: "fsync".to_owned(),
            },
        ];
        for error in retryable {
            let mapped = produce_error("out", error);
            assert!(mapped.retryable);
            assert!(mapped.message.starts_with("topic sink out: "));
        }
    }
}
