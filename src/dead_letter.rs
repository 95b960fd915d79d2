//! Reading and replaying a pipeline's dead-letter queue (`<pipeline>.dlq`).
//!
//! Replay re-injects each entry's original record into the pipeline's
//! source topic, on the partition it was first read from, with header
//! [`crate::pipeline::ORIGIN_HEADER`] carrying its first identity. Sinks that
//! key rows by that identity, or by fields of the record, write the same rows
//! however often a record is replayed, so a replay is idempotent.
//!
//! Progress is kept as the committed offset of group `<pipeline>.dlq-replay`
//! on the dead-letter topic, committed once the re-injected records are
//! durable: a replay resumes after the last entry replayed. `ReplayFrom::Start`
//! replays every entry again.

use crate::error::{FetchError, ProduceError};
use crate::offsets::{CommitToken, OffsetError};
use crate::pipeline::config::dlq_topic;
use crate::pipeline::dlq::DlqEntry;
use crate::runtime::{FetchOptions, Runtime};
use crate::types::{Offset, PartitionId, Record};
use std::time::Duration;

/// One entry of a dead-letter queue and where it is stored.
#[derive(Clone, Debug)]
pub struct DeadLetter {
    /// Partition of the dead-letter topic.
    pub partition: PartitionId,
    /// Offset in it.
    pub offset: Offset,
    /// The entry.
    pub entry: DlqEntry,
}

/// Where a replay starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplayFrom {
    /// After the last entry an earlier replay re-injected.
    LastReplayed,
    /// From the first entry (every entry again).
    Start,
}

/// What a replay did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplaySummary {
    /// Entries re-injected.
    pub replayed: u64,
    /// Entries that could not be decoded (reported, left in place).
    pub undecodable: Vec<(PartitionId, Offset, String)>,
}

/// Why reading or replaying a dead-letter queue failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeadLetterError {
    /// No pipeline of that name in the config.
    #[error("no pipeline named {0:?} in the config")]
    UnknownPipeline(String),
    /// Reading the dead-letter topic failed.
    #[error("reading {topic}: {source}")]
    Fetch {
        /// The dead-letter topic.
        topic: String,
        /// Why.
        #[source]
        source: FetchError,
    },
    /// Re-injecting into the source topic failed; entries from the one that
    /// failed on were not marked replayed.
    #[error("re-injecting into {topic}: {source}")]
    Produce {
        /// The source topic.
        topic: String,
        /// Why.
        #[source]
        source: ProduceError,
    },
    /// Recording replay progress failed.
    #[error("recording replay progress: {0}")]
    Progress(#[from] OffsetError),
}

/// Entries re-injected per produce batch.
const REPLAY_BATCH_MAX: usize = 500;

impl Runtime {
    /// Every entry of `pipeline`'s dead-letter queue, oldest first per
    /// partition. Entries that do not decode are returned as errors in the
    /// second list, with their place.
    #[allow(clippy::type_complexity)]
    pub fn dead_letters(
        &self,
        pipeline: &str,
    ) -> Result<(Vec<DeadLetter>, Vec<(PartitionId, Offset, String)>), DeadLetterError> {
        self.pipeline_config(pipeline)?;
        let topic = dlq_topic(pipeline);
        let mut letters = Vec::new();
        let mut undecodable = Vec::new();
        for partition in 0..self.partition_count(&topic).unwrap_or(0) {
            let partition = PartitionId(partition);
            self.scan(&topic, partition, None, |offset, record| {
                match DlqEntry::from_record(record) {
                    Ok(entry) => letters.push(DeadLetter {
                        partition,
                        offset,
                        entry,
                    }),
                    Err(error) => undecodable.push((partition, offset, error)),
                }
                Ok(())
            })?;
        }
        Ok((letters, undecodable))
    }

    /// Re-injects `pipeline`'s dead letters into its source topic (see the
    /// module docs). Safe to run while the pipeline runs.
    pub fn replay_dead_letters(
        &self,
        pipeline: &str,
        from: ReplayFrom,
    ) -> Result<ReplaySummary, DeadLetterError> {
        let config = self.pipeline_config(pipeline)?.clone();
        let topic = dlq_topic(pipeline);
        let group = format!("{topic}-replay");
        let producer =
            self.producer(&config.source.topic)
                .map_err(|source| DeadLetterError::Produce {
                    topic: config.source.topic.clone(),
                    source,
                })?;
        let source_partitions = self.partition_count(&config.source.topic).unwrap_or(1);
        let mut summary = ReplaySummary::default();
        for partition in 0..self.partition_count(&topic).unwrap_or(0) {
            let partition = PartitionId(partition);
            let start = match from {
                ReplayFrom::Start => None,
                ReplayFrom::LastReplayed => self.committed_offset(&group, &topic, partition)?,
            };
            let mut pending: Vec<(PartitionId, Record)> = Vec::new();
            let flush = |pending: &mut Vec<(PartitionId, Record)>,
                         next: Offset|
             -> Result<(), DeadLetterError> {
                for (target, record) in pending.drain(..) {
                    producer
                        .send_batch_to_blocking(target, vec![record])
                        .map_err(|source| DeadLetterError::Produce {
                            topic: config.source.topic.clone(),
                            source,
                        })?;
                }
                // The re-injected records are durable: this is the sink write
                // that allows the commit.
                let token = CommitToken::after_sink_write(&group, &topic, partition, next);
                self.commit_replay_progress(&token)?;
                Ok(())
            };
            self.scan(&topic, partition, start, |offset, record| {
                match DlqEntry::from_record(record) {
                    Ok(entry) => {
                        let target = if entry.origin.partition.0 < source_partitions {
                            entry.origin.partition
                        } else {
                            PartitionId(0)
                        };
                        pending.push((target, entry.replay_record()));
                        summary.replayed += 1;
                    }
                    Err(error) => summary.undecodable.push((partition, offset, error)),
                }
                if pending.len() >= REPLAY_BATCH_MAX {
                    flush(&mut pending, offset.next())?;
                }
                Ok(())
            })
            .and_then(|end| flush(&mut pending, end))?;
        }
        Ok(summary)
    }

    fn pipeline_config(
        &self,
        pipeline: &str,
    ) -> Result<&crate::pipeline::config::PipelineConfig, DeadLetterError> {
        self.config()
            .pipelines
            .iter()
            .find(|candidate| candidate.name == pipeline)
            .ok_or_else(|| DeadLetterError::UnknownPipeline(pipeline.to_owned()))
    }

    /// Calls `visit` for every record of one partition from `start` (log
    /// start if `None`) to the high watermark at the time of the call;
    /// returns the offset after the last one.
    fn scan(
        &self,
        topic: &str,
        partition: PartitionId,
        start: Option<Offset>,
        mut visit: impl FnMut(Offset, &crate::types::FetchedRecord) -> Result<(), DeadLetterError>,
    ) -> Result<Offset, DeadLetterError> {
        let fetch_error = |source| DeadLetterError::Fetch {
            topic: topic.to_owned(),
            source,
        };
        let offsets = self
            .offsets_blocking(topic, partition)
            .map_err(fetch_error)?;
        let mut position = start
            .unwrap_or(offsets.log_start_offset)
            .max(offsets.log_start_offset);
        let options = FetchOptions {
            max_wait: Duration::ZERO,
            ..FetchOptions::default()
        };
        while position < offsets.high_watermark {
            let fetched = self
                .fetch_blocking(topic, partition, position, options)
                .map_err(fetch_error)?;
            if fetched.records.is_empty() {
                break;
            }
            for record in &fetched.records {
                if record.offset >= offsets.high_watermark {
                    return Ok(position);
                }
                visit(record.offset, record)?;
                position = record.offset.next();
            }
        }
        Ok(position)
    }
}
