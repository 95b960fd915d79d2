//! Idempotent producers: the per-partition sequence state a partition
//! actor keeps, so a retried batch is stored once.
//!
//! A Kafka idempotent producer stamps each batch with its producer id, an
//! epoch and the sequence number of the first record; sequences count
//! records per partition and wrap from `i32::MAX` to 0. The partition keeps,
//! per producer, its epoch and the last [`CACHED_BATCHES`] batches it stored
//! (Kafka's clients keep at most five in flight per partition), so:
//!
//! - a batch equal to a cached one is a retry: it is answered with the
//!   offsets it got the first time, and nothing is appended;
//! - a batch whose first sequence is not the next one is a gap:
//!   [`ProduceError::OutOfOrderSequence`], nothing is appended;
//! - an older epoch is fenced: [`ProduceError::InvalidProducerEpoch`];
//! - a newer epoch must start at sequence 0, and resets the state.
//!
//! The state lives in the partition actor's memory and is bounded
//! ([`PRODUCERS_MAX`], least recently used out). At open it is rebuilt from
//! the producer fields of the batches in the active segment (recovery reads
//! every frame of it anyway), so a retry that crosses a restart is still
//! answered with its first offsets. A producer the partition does not know
//! (new, evicted, or whose last batches are only in sealed blocks) may start
//! only at sequence 0; otherwise it is told
//! [`ProduceError::UnknownProducerId`], and Kafka clients then reset their
//! producer id: refused, never stored twice.

use crate::error::ProduceError;
use crate::storage::BatchHeader;
use crate::types::Offset;
use std::collections::{HashMap, VecDeque};

/// Batches remembered per producer and partition.
pub(crate) const CACHED_BATCHES: usize = 5;
/// Producers remembered per partition.
pub(crate) const PRODUCERS_MAX: usize = 10_000;

/// Where a stored batch went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StoredBatch {
    first_sequence: i32,
    last_sequence: i32,
    pub(crate) base_offset: Offset,
    pub(crate) last_offset: Offset,
}

#[derive(Debug)]
struct ProducerEntry {
    epoch: i16,
    batches: VecDeque<StoredBatch>,
    last_used: u64,
}

/// The producer fields of one incoming batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Sequenced {
    pub(crate) producer_id: i64,
    pub(crate) epoch: i16,
    pub(crate) first_sequence: i32,
    pub(crate) record_count: u32,
}

impl Sequenced {
    fn last_sequence(&self) -> i32 {
        wrap_add(self.first_sequence, self.record_count.saturating_sub(1))
    }
}

/// What to do with a batch.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Append it, then [`ProducerStates::record`] where it went.
    Append,
    /// A retry of a stored batch: answer with these offsets.
    Duplicate(StoredBatch),
}

/// Every producer's state for one partition.
#[derive(Debug, Default)]
pub(crate) struct ProducerStates {
    producers: HashMap<i64, ProducerEntry>,
    clock: u64,
}

/// `sequence + count`, wrapping past `i32::MAX` to 0 as Kafka does.
fn wrap_add(sequence: i32, count: u32) -> i32 {
    ((i64::from(sequence) + i64::from(count)) % (i64::from(i32::MAX) + 1)) as i32
}

impl ProducerStates {
    /// Checks a batch against the producer's state; changes nothing.
    pub(crate) fn check(&self, batch: &Sequenced) -> Result<Verdict, ProduceError> {
        let Some(entry) = self.producers.get(&batch.producer_id) else {
            if batch.first_sequence == 0 {
                return Ok(Verdict::Append);
            }
            return Err(ProduceError::UnknownProducerId {
                producer_id: batch.producer_id,
                received: batch.first_sequence,
            });
        };
        if batch.epoch < entry.epoch {
            return Err(ProduceError::InvalidProducerEpoch {
                producer_id: batch.producer_id,
                current: entry.epoch,
                received: batch.epoch,
            });
        }
        if batch.epoch > entry.epoch {
            if batch.first_sequence == 0 {
                return Ok(Verdict::Append);
            }
            return Err(ProduceError::OutOfOrderSequence {
                producer_id: batch.producer_id,
                expected: 0,
                received: batch.first_sequence,
            });
        }
        let last_sequence = batch.last_sequence();
        if let Some(stored) = entry.batches.iter().find(|stored| {
            stored.first_sequence == batch.first_sequence && stored.last_sequence == last_sequence
        }) {
            return Ok(Verdict::Duplicate(*stored));
        }
        let expected = entry
            .batches
            .back()
            .map_or(0, |last| wrap_add(last.last_sequence, 1));
        if batch.first_sequence != expected {
            return Err(ProduceError::OutOfOrderSequence {
                producer_id: batch.producer_id,
                expected,
                received: batch.first_sequence,
            });
        }
        Ok(Verdict::Append)
    }

    /// Remembers a batch that [`ProducerStates::check`] let through and
    /// the log accepted.
    pub(crate) fn record(&mut self, batch: &Sequenced, base_offset: Offset, last_offset: Offset) {
        self.clock += 1;
        if !self.producers.contains_key(&batch.producer_id) && self.producers.len() >= PRODUCERS_MAX
        {
            if let Some(oldest) = self
                .producers
                .iter()
                .min_by_key(|(_, entry)| entry.last_used)
                .map(|(id, _)| *id)
            {
                self.producers.remove(&oldest);
            }
        }
        let entry = self
            .producers
            .entry(batch.producer_id)
            .or_insert_with(|| ProducerEntry {
                epoch: batch.epoch,
                batches: VecDeque::with_capacity(CACHED_BATCHES),
                last_used: 0,
            });
        if batch.epoch != entry.epoch {
            entry.epoch = batch.epoch;
            entry.batches.clear();
        }
        if entry.batches.len() == CACHED_BATCHES {
            entry.batches.pop_front();
        }
        entry.batches.push_back(StoredBatch {
            first_sequence: batch.first_sequence,
            last_sequence: batch.last_sequence(),
            base_offset,
            last_offset,
        });
        entry.last_used = self.clock;
    }

    /// The states that the stored batches `headers` (in offset order, as
    /// recovery found them) imply: a retry of one of them after a restart
    /// gets its offsets back, and the producer can go on with its sequence.
    pub(crate) fn rebuilt(headers: &[BatchHeader]) -> ProducerStates {
        let mut states = ProducerStates::default();
        for header in headers {
            states.record_header(header);
        }
        states
    }

    /// Records a stored batch from its header (a replica's appended entry,
    /// or a batch found at open); batches of no idempotent producer are
    /// passed over.
    pub(crate) fn record_header(&mut self, header: &BatchHeader) {
        if header.producer_id < 0 {
            return;
        }
        let batch = Sequenced {
            producer_id: header.producer_id,
            epoch: header.producer_epoch,
            first_sequence: header.base_sequence,
            // Sequences count offsets (a compacted batch keeps its span).
            record_count: header.last_offset_delta + 1,
        };
        self.record(&batch, header.base_offset, header.last_offset());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(epoch: i16, first_sequence: i32, record_count: u32) -> Sequenced {
        Sequenced {
            producer_id: 7,
            epoch,
            first_sequence,
            record_count,
        }
    }

    fn append(states: &mut ProducerStates, batch: Sequenced, base: u64) {
        assert_eq!(states.check(&batch), Ok(Verdict::Append));
        states.record(
            &batch,
            Offset(base),
            Offset(base + u64::from(batch.record_count) - 1),
        );
    }

    #[test]
    fn a_retried_batch_gets_its_first_offsets_back() {
        let mut states = ProducerStates::default();
        append(&mut states, batch(0, 0, 10), 100);
        append(&mut states, batch(0, 10, 5), 110);
        match states.check(&batch(0, 0, 10)) {
            Ok(Verdict::Duplicate(stored)) => {
                assert_eq!(
                    (stored.base_offset, stored.last_offset),
                    (Offset(100), Offset(109))
                )
            }
            other => panic!("expected a duplicate, got {other:?}"),
        }
        assert_eq!(states.check(&batch(0, 15, 1)), Ok(Verdict::Append));
    }

    #[test]
    fn a_gap_is_refused_and_an_old_epoch_is_fenced() {
        let mut states = ProducerStates::default();
        append(&mut states, batch(1, 0, 10), 0);
        assert!(matches!(
            states.check(&batch(1, 11, 1)),
            Err(ProduceError::OutOfOrderSequence {
                expected: 10,
                received: 11,
                ..
            })
        ));
        assert!(matches!(
            states.check(&batch(0, 10, 1)),
            Err(ProduceError::InvalidProducerEpoch { current: 1, .. })
        ));
        // A new epoch starts again at 0, and only at 0.
        assert!(states.check(&batch(2, 10, 1)).is_err());
        append(&mut states, batch(2, 0, 1), 10);
        assert!(matches!(
            states.check(&batch(2, 0, 1)),
            Ok(Verdict::Duplicate(_))
        ));
    }

    #[test]
    fn an_unknown_producer_must_start_at_zero() {
        let states = ProducerStates::default();
        assert!(matches!(
            states.check(&batch(0, 5, 1)),
            Err(ProduceError::UnknownProducerId { received: 5, .. })
        ));
        assert_eq!(states.check(&batch(0, 0, 1)), Ok(Verdict::Append));
    }

    #[test]
    fn sequences_wrap_past_i32_max() {
        let mut states = ProducerStates::default();
        append(&mut states, batch(0, 0, 1), 0);
        // Pretend the producer got near the top.
        let entry = states.producers.get_mut(&7).expect("entry");
        entry.batches.back_mut().expect("batch").last_sequence = i32::MAX - 2;
        append(&mut states, batch(0, i32::MAX - 1, 4), 1);
        assert_eq!(states.check(&batch(0, 2, 1)), Ok(Verdict::Append));
    }

    #[test]
    fn only_the_last_five_batches_are_remembered() {
        let mut states = ProducerStates::default();
        for index in 0..7u32 {
            append(&mut states, batch(0, index as i32, 1), u64::from(index));
        }
        assert!(matches!(
            states.check(&batch(0, 2, 1)),
            Ok(Verdict::Duplicate(_))
        ));
        // Batch 0 fell out: a retry of it is now a sequence error, not a second copy.
        assert!(states.check(&batch(0, 0, 1)).is_err());
    }
}
