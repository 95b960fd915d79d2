//! The Compactor: key compaction of sealed blocks, one partition at a time,
//! on its own arbiter.
//!
//! A run is a short conversation with the partition plus heavy work that
//! only the compactor does:
//!
//! 1. `TakeCompactionInput` (one message exchange): the partition marks its
//!    sealed blocks as compacting (retention leaves them alone) and hands
//!    over `Arc`s of their files.
//! 2. Resource check: the estimated key map against `[compactor]
//!    memory_budget` and the memory available, the new blocks' bytes against
//!    the free disk space. Short: the run is skipped with its reason.
//! 3. `compaction::build` (here, on the compactor's thread): new blocks are
//!    written beside the old ones, verified, fsynced and renamed `.swap`
//!    (the commit point). It never touches the partition.
//! 4. `SwapCompacted` (one message exchange): the partition swaps the new
//!    blocks in and the old ones out of its block map in one step. Readers
//!    that planned a read before keep their `Arc`s to the old files, so each
//!    reader sees old-and-old or new-and-new, never a mix.
//! 5. `compaction::finish`: old files are renamed `.deleted` and unlinked
//!    when the last reader drops them; new files get their final names.
//!
//! A failure at any step leaves the old blocks in service (the partition is
//! told `CompactionAborted`) and the next run retries. A crash at any step
//! is finished or undone by recovery at the next open.

use super::partition::{CompactionAborted, PartitionActor, SwapCompacted, TakeCompactionInput};
use crate::config::{CompactorConfig, TopicConfig};
use crate::metrics::Metrics;
use crate::storage::compaction::{
    self, CompactedBlocks, CompactionEstimate, CompactionInput, SwapError,
};
use crate::types::PartitionId;
use actix::prelude::*;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// What happened to one partition in a run.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum PartitionCompaction {
    /// New blocks replaced old ones.
    Compacted {
        /// Bytes of the blocks replaced.
        bytes_before: u64,
        /// Bytes of the new blocks.
        bytes_after: u64,
        /// Records before.
        records_before: u64,
        /// Records after.
        records_after: u64,
        /// Wall time of the run.
        seconds: f64,
    },
    /// Nothing to compact (no sealed blocks, or the dirty ratio is below the topic's `min_dirty_ratio`).
    NothingToDo,
    /// The partition cannot be compacted now (blocks still loading, a
    /// damaged block, fail-stopped); retried next time.
    NotCompactable {
        /// Why.
        reason: String,
    },
    /// Skipped by the resource check; retried next time.
    Skipped {
        /// Why (memory or disk, with the figures).
        reason: String,
    },
    /// A step failed; the old blocks stay in service; retried next time.
    Failed {
        /// The error.
        error: String,
    },
}

/// The outcome of compacting one topic.
#[derive(Clone, Debug, PartialEq)]
pub struct CompactionSummary {
    /// The topic.
    pub topic: String,
    /// One entry per partition, in partition order.
    pub partitions: Vec<(PartitionId, PartitionCompaction)>,
}

/// One partition the compactor serves.
#[derive(Clone)]
pub(crate) struct CompactionTarget {
    pub(crate) topic: TopicConfig,
    pub(crate) partition: PartitionId,
    pub(crate) address: Addr<PartitionActor>,
}

/// Compact every partition of `topic` now (ignoring `min_dirty_ratio`).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct CompactNow {
    pub(crate) topic: String,
    pub(crate) reply: oneshot::Sender<Option<CompactionSummary>>,
}

/// Stop: the reply comes once no run is in progress.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct StopCompactor {
    pub(crate) reply: oneshot::Sender<()>,
}

/// Serve these partitions too (a topic created at run time).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct AddCompactionTargets(pub(crate) Vec<CompactionTarget>);

/// Stop serving `topic` (deleted at run time). Handled between runs, so
/// when the reply comes no run touches its partitions.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct RemoveCompactionTargets {
    pub(crate) topic: String,
    pub(crate) reply: oneshot::Sender<()>,
}

/// Check the next partition's policy (the periodic schedule).
#[derive(Message)]
#[rtype(result = "()")]
struct CheckNext;

pub(crate) struct Compactor {
    targets: Vec<CompactionTarget>,
    config: CompactorConfig,
    /// Index of the next target the schedule checks.
    next_target: usize,
    /// Targets whose last attempt found them not compactable.
    not_compactable: Vec<bool>,
    /// Swaps whose answer was late: checked (without waiting) before each run.
    late_swaps: Vec<(std::path::PathBuf, SwapReply)>,
    /// Runs swapped in whose file renames failed: `finish` is retried before
    /// anything else (it is idempotent; until it succeeds, `build` refuses).
    unfinished: Vec<(std::path::PathBuf, CompactedBlocks)>,
    stopped: bool,
    metrics: Arc<Metrics>,
}

/// Whether a run may ignore the topic's dirty ratio.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Trigger {
    /// `runtime.compact(topic)`.
    OnDemand,
    /// The periodic schedule: only above `min_dirty_ratio`.
    Policy,
}

impl Compactor {
    pub(crate) fn new(
        targets: Vec<CompactionTarget>,
        config: CompactorConfig,
        metrics: Arc<Metrics>,
    ) -> Compactor {
        let not_compactable = vec![false; targets.len()];
        Compactor {
            targets,
            config,
            next_target: 0,
            not_compactable,
            unfinished: Vec::new(),
            late_swaps: Vec::new(),
            stopped: false,
            metrics,
        }
    }

    /// Retries the renames of swapped runs; keeps the ones that fail again.
    fn retry_unfinished(&mut self) {
        self.unfinished.retain(|(directory, compacted)| match compaction::finish(directory, compacted) {
            Ok(()) => false,
            Err(error) => {
                tracing::warn!(directory = %directory.display(), %error, "finishing a compaction failed again; retrying later");
                true
            }
        });
    }

    /// Resolves late swap answers that have arrived: a done swap is
    /// finished, a refused one abandoned; the rest keep waiting.
    fn resolve_late_swaps(&mut self) {
        let mut still_late = Vec::new();
        for (directory, swapped) in std::mem::take(&mut self.late_swaps) {
            match swapped.try_recv() {
                Ok(Ok(compacted)) => self.unfinished.push((directory, compacted)),
                Ok(Err((compacted, _))) => {
                    let _ = compaction::abandon(&directory, &compacted);
                }
                Err(crossbeam_channel::TryRecvError::Empty) => {
                    still_late.push((directory, swapped))
                }
                // Dropped with the partition: recovery completes the swap at the next open.
                Err(crossbeam_channel::TryRecvError::Disconnected) => {}
            }
        }
        self.late_swaps = still_late;
    }

    fn run(&mut self, index: usize, trigger: Trigger) -> PartitionCompaction {
        self.resolve_late_swaps();
        self.retry_unfinished();
        let target = self.targets[index].clone();
        let started = Instant::now();
        let outcome = self.run_steps(&target, trigger, started);
        self.not_compactable[index] = matches!(outcome, PartitionCompaction::NotCompactable { .. });
        let gauge = self.not_compactable.iter().filter(|flag| **flag).count() as u64;
        self.metrics
            .partitions_not_compactable
            .store(gauge, Relaxed);
        let partition = format!("{}-{}", target.topic.name, target.partition.0);
        match &outcome {
            PartitionCompaction::Compacted {
                bytes_before,
                bytes_after,
                records_before,
                records_after,
                seconds,
            } => {
                self.metrics.compaction_runs_total.fetch_add(1, Relaxed);
                self.metrics
                    .compaction_bytes_before_total
                    .fetch_add(*bytes_before, Relaxed);
                self.metrics
                    .compaction_bytes_after_total
                    .fetch_add(*bytes_after, Relaxed);
                self.metrics.compaction_seconds.observe(started.elapsed());
                tracing::info!(%partition, bytes_before, bytes_after, records_before, records_after, seconds, "compaction complete");
            }
            PartitionCompaction::Skipped { reason } => {
                self.metrics.compaction_skipped_total.fetch_add(1, Relaxed);
                tracing::warn!(%partition, %reason, "compaction skipped");
            }
            PartitionCompaction::Failed { error } => {
                self.metrics.compaction_failures_total.fetch_add(1, Relaxed);
                tracing::warn!(%partition, %error, "compaction failed; the old blocks stay in service and the run is retried");
            }
            PartitionCompaction::NotCompactable { reason } => {
                tracing::debug!(%partition, %reason, "partition cannot be compacted now");
            }
            PartitionCompaction::NothingToDo => {}
        }
        outcome
    }

    fn run_steps(
        &mut self,
        target: &CompactionTarget,
        trigger: Trigger,
        started: Instant,
    ) -> PartitionCompaction {
        let min_dirty_ratio = (trigger == Trigger::Policy).then_some(target.topic.min_dirty_ratio);
        // 1. One exchange with the partition. Blocking here blocks only the
        // compactor's own arbiter; the partition never waits on us.
        // `do_send` with a oneshot reply: the compactor never parks on the
        // partition's mailbox, and never waits without a bound.
        let (reply, answer) = crossbeam_channel::bounded(1);
        target.address.do_send(TakeCompactionInput {
            delete_retention: target.topic.delete_retention,
            min_dirty_ratio,
            reply,
        });
        let mut input = match wait_for(answer, PARTITION_ANSWER_WAIT) {
            Answer::Ready(Some(Ok(Some(input)))) => input,
            Answer::Ready(Some(Ok(None))) => return PartitionCompaction::NothingToDo,
            Answer::Ready(Some(Err(reason))) => {
                return PartitionCompaction::NotCompactable { reason }
            }
            Answer::Ready(None) => {
                return PartitionCompaction::NotCompactable {
                    reason: "partition unavailable".to_owned(),
                }
            }
            Answer::Late(_) => {
                // If the partition marks its blocks later, this unmarks them
                // (its mailbox is FIFO).
                target.address.do_send(CompactionAborted);
                return PartitionCompaction::NotCompactable {
                    reason: format!("partition did not answer within {PARTITION_ANSWER_WAIT:?}"),
                };
            }
        };
        input.bytes_per_second = self.config.bytes_per_second;
        // 2. Resources.
        input.key_map_bytes_max = Some(key_map_budget(&self.config));
        if let Err(reason) = check_resources(&compaction::estimate(&input), &input, &self.config) {
            target.address.do_send(CompactionAborted);
            return PartitionCompaction::Skipped { reason };
        }
        // 3. Build beside the old blocks.
        let mut compacted = match compaction::build(&input) {
            Ok(compacted) => compacted,
            Err(error) => {
                target.address.do_send(CompactionAborted);
                return PartitionCompaction::Failed {
                    error: error.to_string(),
                };
            }
        };
        let (bytes_before, bytes_after) = (compacted.bytes_before, compacted.bytes_after);
        let (records_before, records_after) = (compacted.records_before, compacted.records_after);
        // 4. One exchange: the swap.
        let (reply, swapped) = crossbeam_channel::bounded(1);
        target.address.do_send(SwapCompacted { compacted, reply });
        compacted = match wait_for(swapped, PARTITION_ANSWER_WAIT) {
            Answer::Ready(Some(Ok(compacted))) => compacted,
            Answer::Ready(Some(Err((compacted, error)))) => {
                let _ = compaction::abandon(&input.directory, &compacted);
                return PartitionCompaction::Failed {
                    error: error.to_string(),
                };
            }
            Answer::Ready(None) => {
                // The partition stopped with the build: the `.swap` files
                // are committed, so recovery completes them at the next open.
                return PartitionCompaction::Failed {
                    error: "partition stopped during the swap".to_owned(),
                };
            }
            Answer::Late(swapped) => {
                // Never abandon a swap that may still happen: resolve it on a later run.
                self.late_swaps.push((input.directory.clone(), swapped));
                return PartitionCompaction::Failed {
                    error: format!("partition did not answer the swap within {PARTITION_ANSWER_WAIT:?}; resolved later"),
                };
            }
        };
        // 5. Final names; old files go when their last reader does.
        if let Err(error) = compaction::finish(&input.directory, &compacted) {
            // Served from memory already. `finish` is retried before the next
            // run, and recovery completes it at the next open if need be.
            self.unfinished.push((input.directory.clone(), compacted));
            return PartitionCompaction::Failed {
                error: format!("swapped, but renaming files failed: {error}"),
            };
        }
        PartitionCompaction::Compacted {
            bytes_before,
            bytes_after,
            records_before,
            records_after,
            seconds: started.elapsed().as_secs_f64(),
        }
    }
}

/// The longest the compactor waits for a partition's answer. Far above a
/// message exchange (microseconds); only a stuck partition reaches it.
const PARTITION_ANSWER_WAIT: Duration = Duration::from_secs(30);

type SwapReply = crossbeam_channel::Receiver<Result<CompactedBlocks, (CompactedBlocks, SwapError)>>;

/// A partition's answer, or the receiver if it did not come in time.
enum Answer<T> {
    /// The answer (`None`: the partition dropped the request).
    Ready(Option<T>),
    /// Not yet; the receiver to check later.
    Late(crossbeam_channel::Receiver<T>),
}

/// Waits for `receiver` up to `limit` on the compactor's own thread.
fn wait_for<T>(receiver: crossbeam_channel::Receiver<T>, limit: Duration) -> Answer<T> {
    match receiver.recv_timeout(limit) {
        Ok(value) => Answer::Ready(Some(value)),
        Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Answer::Ready(None),
        Err(crossbeam_channel::RecvTimeoutError::Timeout) => Answer::Late(receiver),
    }
}

/// Compares what a run needs with the budget, the memory available and the
/// free disk space.
fn check_resources(
    estimate: &CompactionEstimate,
    input: &CompactionInput,
    config: &CompactorConfig,
) -> Result<(), String> {
    // The run takes as many blocks as its key map allows (pass 1 stops at
    // the budget); it can start only if the first block fits.
    let first_block = compaction::first_block_estimate(input);
    let budget = key_map_budget(config);
    if first_block > budget {
        return Err(format!(
            "the oldest block alone needs about {first_block} bytes of key map memory, over the \
             {budget} bytes allowed (memory_budget {}, or the memory available)",
            config.memory_budget
        ));
    }
    if let Some(free) = disk_free_bytes(&input.directory) {
        if estimate.disk_bytes > free {
            return Err(format!(
                "needs up to {} bytes of disk for the new blocks, only {free} bytes are free",
                estimate.disk_bytes
            ));
        }
    }
    Ok(())
}

/// The key map's limit: the budget, or the memory available if less.
fn key_map_budget(config: &CompactorConfig) -> u64 {
    memory_available_bytes().map_or(config.memory_budget, |available| {
        available.min(config.memory_budget)
    })
}

/// `MemAvailable` from /proc/meminfo, if readable.
fn memory_available_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo
        .lines()
        .find(|line| line.starts_with("MemAvailable:"))?;
    let kibibytes: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kibibytes * 1024)
}

/// Free bytes of the file system holding `directory`, if known.
fn disk_free_bytes(directory: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(directory.as_os_str().as_bytes()).ok()?;
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid C string and `stats` a writable statvfs.
    let status = unsafe { libc::statvfs(path.as_ptr(), &mut stats) };
    (status == 0).then(|| stats.f_bavail as u64 * stats.f_frsize as u64)
}

impl Actor for Compactor {
    type Context = Context<Self>;

    fn started(&mut self, context: &mut Context<Self>) {
        context.set_mailbox_capacity(64);
        // Always on: topics created at run time may add targets later
        // (`CheckNext` does nothing while there are none).
        context.run_interval(self.config.interval, |_, context| context.notify(CheckNext));
    }
}

impl Handler<AddCompactionTargets> for Compactor {
    type Result = ();

    fn handle(&mut self, message: AddCompactionTargets, _context: &mut Context<Self>) {
        for target in message.0 {
            self.targets.push(target);
            self.not_compactable.push(false);
        }
    }
}

impl Handler<RemoveCompactionTargets> for Compactor {
    type Result = ();

    fn handle(&mut self, message: RemoveCompactionTargets, _context: &mut Context<Self>) {
        let mut index = 0;
        while index < self.targets.len() {
            if self.targets[index].topic.name == message.topic {
                self.targets.remove(index);
                self.not_compactable.remove(index);
            } else {
                index += 1;
            }
        }
        let gauge = self.not_compactable.iter().filter(|flag| **flag).count() as u64;
        self.metrics
            .partitions_not_compactable
            .store(gauge, Relaxed);
        let _ = message.reply.send(());
    }
}

impl Handler<CheckNext> for Compactor {
    type Result = ();

    /// One partition per step, so `CompactNow` and `StopCompactor` are
    /// handled between partitions.
    fn handle(&mut self, _message: CheckNext, _context: &mut Context<Self>) {
        if self.stopped || self.targets.is_empty() {
            return;
        }
        let index = self.next_target % self.targets.len();
        self.next_target = index + 1;
        self.run(index, Trigger::Policy);
    }
}

impl Handler<CompactNow> for Compactor {
    type Result = ();

    fn handle(&mut self, message: CompactNow, _context: &mut Context<Self>) {
        if self.stopped {
            let _ = message.reply.send(None);
            return;
        }
        let indexes: Vec<usize> = (0..self.targets.len())
            .filter(|index| self.targets[*index].topic.name == message.topic)
            .collect();
        if indexes.is_empty() {
            let _ = message.reply.send(None);
            return;
        }
        let partitions = indexes
            .into_iter()
            .map(|index| {
                (
                    self.targets[index].partition,
                    self.run(index, Trigger::OnDemand),
                )
            })
            .collect();
        let _ = message.reply.send(Some(CompactionSummary {
            topic: message.topic,
            partitions,
        }));
    }
}

impl Handler<StopCompactor> for Compactor {
    type Result = ();

    fn handle(&mut self, message: StopCompactor, context: &mut Context<Self>) {
        self.stopped = true;
        let _ = message.reply.send(());
        context.stop();
    }
}
