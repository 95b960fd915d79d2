//! millrace: an embeddable actor-model stream-processing runtime.
//!
//! # Layout
//!
//! - [`config`]: the TOML configuration, parsed and validated in one place.
//! - [`storage`]: the partition log, a synchronous core with no actix or tokio.
//! - `actors/` (private): the partition actors and the threads they own.
//! - [`runtime`]: [`Runtime`], the entry point, and its handles.
//! - [`metrics`], [`error`], [`types`], [`partitioner`].
//!
//! # Embedding
//!
//! ```no_run
//! use millrace::{config::Config, Record, Runtime, PartitionId, Offset};
//!
//! let config = Config::from_toml_str(r#"
//!     data_dir = "./data"
//!     [[topic]]
//!     name = "events"
//!     partitions = 4
//! "#, "<inline>").unwrap();
//! let runtime = Runtime::start(config).unwrap();
//! let producer = runtime.producer("events").unwrap();
//! let placed = producer.send_blocking(Record::new("hello").with_key("user-1")).unwrap();
//! let fetched = runtime
//!     .fetch_blocking("events", placed.partition, Offset(0), Default::default())
//!     .unwrap();
//! assert!(!fetched.records.is_empty());
//! runtime.shutdown().unwrap();
//! ```
#![deny(missing_docs)]

#[path = "../actors/mod.rs"]
mod actors;
pub mod config;
pub mod dead_letter;
pub mod error;
pub mod health;
pub(crate) mod http;
pub mod kafka;
pub mod metrics;
pub mod offsets;
pub mod partitioner;
pub mod pipeline;
pub mod replication;
pub mod runtime;
pub mod storage;
mod time_lookup;
pub mod types;

pub use error::{FetchError, ProduceError, ShutdownError, StartError};
pub use runtime::{
    AppendAck, FetchOptions, FetchResult, PartitionConsumer, PartitionOffsets, Producer,
    RecordMetadata, Runtime,
};
pub use types::{FetchedRecord, Header, Offset, PartitionId, Record, Term};

/// Runs a failpoint unit test alone in a child process. Failpoints are
/// process-wide, so a failure armed by one test would hit whatever storage
/// I/O another test runs at the same time; the child re-runs this test
/// binary with only this test selected.
#[cfg(all(test, feature = "failpoints"))]
pub(crate) fn run_isolated(module_path: &str, test: &str, body: impl FnOnce()) {
    const CHILD_MARKER: &str = "MILLRACE_ISOLATED_TEST";
    let name = format!("{}::{test}", module_path.trim_start_matches("millrace::"));
    if std::env::var(CHILD_MARKER).as_deref() == Ok(name.as_str()) {
        body();
        return;
    }
    let executable = std::env::current_exe().expect("test binary path");
    let output = std::process::Command::new(executable)
        .args([name.as_str(), "--exact", "--test-threads=1", "--nocapture"])
        .env(CHILD_MARKER, &name)
        .output()
        .expect("run the isolated test");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "isolated test {name} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
