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
pub mod error;
pub mod health;
pub(crate) mod http;
pub mod metrics;
pub mod partitioner;
pub mod runtime;
pub mod storage;
pub mod types;

pub use error::{FetchError, ProduceError, ShutdownError, StartError};
pub use runtime::{
    AppendAck, FetchOptions, FetchResult, PartitionConsumer, PartitionOffsets, Producer,
    RecordMetadata, Runtime,
};
pub use types::{FetchedRecord, Header, Offset, PartitionId, Record, Term};
