//! The [`Operator`] trait and the built-in stateless operators.
//!
//! An operator instance belongs to one source partition of one pipeline
//! member: it is called from one thread, in offset order, and owns its state
//! outright (no locks). Stateful operators report their changes at a
//! checkpoint ([`Operator::checkpoint`]) and get them back after a restart
//! ([`Operator::restore`]); the runtime stores them with the source offset
//! they are consistent with.

use super::{Event, StateDelta};

/// Collects what an operator produces for one input event.
#[derive(Debug, Default)]
pub struct Emitter {
    pub(crate) out: Vec<Event>,
    pub(crate) late: Vec<(Event, String)>,
}

impl Emitter {
    /// An empty emitter.
    pub fn new() -> Emitter {
        Emitter::default()
    }

    /// Passes `event` to the next stage.
    pub fn emit(&mut self, event: Event) {
        self.out.push(event);
    }

    /// Reports `event` as too late for its window: the pipeline sends it to
    /// its dead-letter queue or its side output, as configured. Never dropped.
    pub fn late(&mut self, event: Event, reason: impl Into<String>) {
        self.late.push((event, reason.into()));
    }

    /// Events emitted so far.
    pub fn emitted(&self) -> &[Event] {
        &self.out
    }

    /// Takes the emitted events, leaving it empty.
    pub fn take(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.out)
    }

    /// Takes the late events, leaving none.
    pub fn take_late(&mut self) -> Vec<(Event, String)> {
        std::mem::take(&mut self.late)
    }
}

/// Why an operator could not process an event.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct OperatorError {
    /// What went wrong, for the dead-letter queue and the logs.
    pub message: String,
    /// Whether trying again may succeed. A malformed record never will, so
    /// it goes to the dead-letter queue at once; a retryable error is tried
    /// again (bounded, with backoff) first.
    pub retryable: bool,
}

impl OperatorError {
    /// An error that trying again cannot fix (bad input).
    pub fn permanent(message: impl Into<String>) -> OperatorError {
        OperatorError {
            message: message.into(),
            retryable: false,
        }
    }

    /// An error that may go away (an external service, a resource).
    pub fn retryable(message: impl Into<String>) -> OperatorError {
        OperatorError {
            message: message.into(),
            retryable: true,
        }
    }
}

/// One step of a pipeline.
pub trait Operator: Send {
    /// Processes one event, emitting zero or more. On an error nothing it
    /// emitted for this event is kept.
    fn process(&mut self, event: &Event, out: &mut Emitter) -> Result<(), OperatorError>;

    /// Called after the last event of each source batch with the largest
    /// event time seen so far on this partition; windows fire here.
    fn on_batch_end(&mut self, _out: &mut Emitter) -> Result<(), OperatorError> {
        Ok(())
    }

    /// Whether it keeps state that must survive a restart.
    fn is_stateful(&self) -> bool {
        false
    }

    /// Appends every state change since the last checkpoint.
    fn checkpoint(&mut self, _deltas: &mut Vec<StateDelta>) {}

    /// Restores state saved by earlier checkpoints (called before the first
    /// event, with every stored entry of this operator and partition).
    fn restore(&mut self, _entries: Vec<(Vec<u8>, Vec<u8>)>) -> Result<(), OperatorError> {
        Ok(())
    }
}
