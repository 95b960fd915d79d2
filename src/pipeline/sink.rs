//! The [`Sink`] trait and the built-in sinks.
//!
//! A sink receives the output of one source batch: the events, and the
//! source range they came from. It returns once the batch is as durable as
//! the sink makes it; only then does the pipeline build the token that lets
//! it commit the source offset (see [`crate::offsets::CommitToken`]).

use super::Event;
use crate::types::{Offset, PartitionId};

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
