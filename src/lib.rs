//! millrace: an embeddable actor-model stream-processing runtime.
#![deny(missing_docs)]

pub mod config;
pub mod storage;
pub mod types;

pub use types::{FetchedRecord, Header, Offset, PartitionId, Record, Term};
