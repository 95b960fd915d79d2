//! The partition actor: owns one partition's [`PartitionLog`], its writer
//! thread, the acknowledgements waiting for durability, and the fetches
//! waiting for data.
//!
//! Produce: the log assigns offsets and plans the write; the jobs go to the
//! writer; the acknowledgement waits in `pending_acks` until the writer
//! reports the batch durable. Fetch: the actor only *plans* a read (an index
//! lookup); the caller executes it on its own thread, so reads never stall
//! appends. A fetch at the high watermark waits here until data arrives or
//! its `max_wait` passes.

use super::deleter::{DeleteRequest, DeletionOutcome};
use super::writer::{WriterEvent, WriterHandle};
use crate::config::{FsyncPolicy, TopicConfig};
use crate::error::{FetchError, ProduceError};
use crate::metrics::{Metrics, PartitionGauges};
use crate::storage::{AppendError, IoJob, PartitionLog, ReadPlan};
use crate::types::{Offset, PartitionId, Record, Term};
use actix::prelude::*;
use crossbeam_channel::Sender;
use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;

/// Messages waiting in a partition's mailbox before senders wait.
pub(crate) const MAILBOX_CAPACITY: usize = 1024;
/// Fetches parked at the high watermark; more are answered empty at once.
const WAITING_FETCHES_MAX: usize = 4096;
/// Longest a fetch may wait for data.
pub(crate) const FETCH_WAIT_MAX: Duration = Duration::from_secs(60);
/// How often retention and seal retries run.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(1);

/// Offsets of an acknowledged batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendAck {
    /// Partition it went to.
    pub partition: PartitionId,
    /// Offset of its first record.
    pub base_offset: Offset,
    /// Offset of its last record.
    pub last_offset: Offset,
}

/// Append a batch; the reply comes once it is durable.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Produce {
    pub(crate) records: Vec<Record>,
    pub(crate) reply: oneshot::Sender<Result<AppendAck, ProduceError>>,
}

/// What a fetch gets from the actor: a read to execute, or nothing yet.
#[derive(Debug)]
pub(crate) struct FetchReply {
    pub(crate) plan: Option<ReadPlan>,
    pub(crate) high_watermark: Offset,
    pub(crate) log_start_offset: Offset,
}

/// Plan a read from `offset`, waiting up to `max_wait` for data.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Fetch {
    pub(crate) offset: Offset,
    pub(crate) max_bytes: usize,
    pub(crate) max_wait: Duration,
    pub(crate) reply: oneshot::Sender<Result<FetchReply, FetchError>>,
}

/// Offsets of a partition, for `topics` and health.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionOffsets {
    /// First readable offset.
    pub log_start_offset: Offset,
    /// Offset the next appended record gets.
    pub log_end_offset: Offset,
    /// Offsets below this are durable and readable.
    pub high_watermark: Offset,
}

#[derive(Message)]
#[rtype(result = "PartitionOffsets")]
pub(crate) struct Describe;

/// Stop accepting produce, wait until every accepted batch is durable (or
/// failed), stop the writer. The reply carries the fail-stop reason if any.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Drain {
    pub(crate) reply: oneshot::Sender<Result<(), String>>,
}

struct PendingAck {
    next_offset: Offset,
    ack: AppendAck,
    record_count: u64,
    bytes: u64,
    reply: oneshot::Sender<Result<AppendAck, ProduceError>>,
}

struct WaitingFetch {
    id: u64,
    offset: Offset,
    max_bytes: usize,
    reply: oneshot::Sender<Result<FetchReply, FetchError>>,
}

pub(crate) struct PartitionActor {
    name: String,
    partition: PartitionId,
    log: PartitionLog,
    fsync: FsyncPolicy,
    writer: Option<WriterHandle>,
    deleter: Sender<DeleteRequest>,
    pending_acks: VecDeque<PendingAck>,
    waiting_fetches: Vec<WaitingFetch>,
    next_fetch_id: u64,
    fail_stopped: Option<String>,
    accepting: bool,
    drain_waiters: Vec<oneshot::Sender<Result<(), String>>>,
    metrics: Arc<Metrics>,
    gauges: Arc<PartitionGauges>,
}

impl PartitionActor {
    pub(crate) fn new(
        topic: &TopicConfig,
        partition: PartitionId,
        log: PartitionLog,
        deleter: Sender<DeleteRequest>,
        metrics: Arc<Metrics>,
        gauges: Arc<PartitionGauges>,
    ) -> PartitionActor {
        PartitionActor {
            name: format!("{}-{}", topic.name, partition.0),
            partition,
            log,
            fsync: topic.fsync,
            writer: None,
            deleter,
            pending_acks: VecDeque::new(),
            waiting_fetches: Vec::new(),
            next_fetch_id: 0,
            fail_stopped: None,
            accepting: true,
            drain_waiters: Vec::new(),
            metrics,
            gauges,
        }
    }

    fn publish_gauges(&self) {
        self.gauges
            .log_start_offset
            .store(self.log.log_start_offset().0, Relaxed);
        self.gauges
            .log_end_offset
            .store(self.log.log_end_offset().0, Relaxed);
        self.gauges
            .high_watermark
            .store(self.log.high_watermark().0, Relaxed);
        self.gauges.size_bytes.store(self.log.size_bytes(), Relaxed);
    }

    fn fetch_reply(&self, offset: Offset, max_bytes: usize) -> Result<FetchReply, FetchError> {
        let plan = self.log.read_plan(offset, max_bytes)?;
        Ok(FetchReply {
            plan,
            high_watermark: self.log.high_watermark(),
            log_start_offset: self.log.log_start_offset(),
        })
    }

    fn submit(&mut self, jobs: Vec<IoJob>, context: &mut Context<Self>) {
        let mut writes = Vec::with_capacity(jobs.len());
        for job in jobs {
            match job {
                IoJob::Delete(job) => {
                    let request = DeleteRequest {
                        job,
                        topic_partition: self.name.clone(),
                        reply_to: context.address().recipient(),
                    };
                    let _ = self.deleter.send(request);
                }
                other => writes.push(other),
            }
        }
        if writes.is_empty() {
            return;
        }
        match &self.writer {
            Some(writer) => writer.submit(writes),
            None => debug_assert!(false, "{}: jobs after the writer stopped", self.name),
        }
    }

    /// Stops writing for good: every waiting producer gets the reason.
    fn fail_stop(&mut self, reason: String) {
        tracing::error!(partition = %self.name, %reason, "partition fail-stopped: it refuses writes until the runtime is restarted");
        self.gauges.fail_stopped.store(1, Relaxed);
        for pending in self.pending_acks.drain(..) {
            let _ = pending.reply.send(Err(ProduceError::FailStopped {
                reason: reason.clone(),
            }));
        }
        self.fail_stopped = Some(reason);
        self.finish_drain_if_idle();
    }

    fn wake_fetches(&mut self) {
        let high_watermark = self.log.high_watermark();
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting_fetches)
            .into_iter()
            .partition(|fetch| fetch.offset < high_watermark);
        self.waiting_fetches = waiting;
        for fetch in ready {
            let _ = fetch
                .reply
                .send(self.fetch_reply(fetch.offset, fetch.max_bytes));
        }
    }

    fn expire_fetch(&mut self, id: u64) {
        if let Some(index) = self.waiting_fetches.iter().position(|fetch| fetch.id == id) {
            let fetch = self.waiting_fetches.swap_remove(index);
            let _ = fetch
                .reply
                .send(self.fetch_reply(fetch.offset, fetch.max_bytes));
        }
    }

    fn finish_drain_if_idle(&mut self) {
        if self.accepting || !self.pending_acks.is_empty() {
            return;
        }
        if let Some(mut writer) = self.writer.take() {
            writer.stop();
        }
        let result = self.fail_stopped.clone().map_or(Ok(()), Err);
        for waiter in self.drain_waiters.drain(..) {
            let _ = waiter.send(result.clone());
        }
    }

    fn maintenance(&mut self, context: &mut Context<Self>) {
        if self.fail_stopped.is_some() || self.writer.is_none() {
            return;
        }
        let mut jobs = self.log.retry_jobs();
        jobs.extend(self.log.retention_jobs(now_ms()));
        self.submit(jobs, context);
        self.publish_gauges();
    }
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}

impl Actor for PartitionActor {
    type Context = Context<Self>;

    fn started(&mut self, context: &mut Context<Self>) {
        context.set_mailbox_capacity(MAILBOX_CAPACITY);
        let events = context.address().recipient::<WriterEvent>();
        match WriterHandle::spawn(
            format!("millrace-wal-{}", self.name),
            self.fsync,
            events,
            self.metrics.clone(),
        ) {
            Ok(writer) => self.writer = Some(writer),
            Err(error) => self.fail_stop(format!("cannot start the writer thread: {error}")),
        }
        self.publish_gauges();
        context.run_interval(MAINTENANCE_INTERVAL, |actor, context| {
            actor.maintenance(context)
        });
    }

    fn stopped(&mut self, _context: &mut Context<Self>) {
        // Dropping the writer handle writes and syncs what was queued; the
        // producers waiting on it see their reply channel close (Unavailable).
        if let Some(mut writer) = self.writer.take() {
            writer.stop();
        }
    }
}

impl Handler<Produce> for PartitionActor {
    type Result = ();

    fn handle(&mut self, message: Produce, context: &mut Context<Self>) {
        if !self.accepting {
            let _ = message.reply.send(Err(ProduceError::ShuttingDown));
            return;
        }
        if let Some(reason) = &self.fail_stopped {
            let _ = message.reply.send(Err(ProduceError::FailStopped {
                reason: reason.clone(),
            }));
            return;
        }
        let record_count = message.records.len() as u64;
        let outcome = match self.log.append(&message.records, Term(0), now_ms()) {
            Ok(outcome) => outcome,
            Err(error) => {
                let error = match error {
                    AppendError::Empty => ProduceError::Empty,
                    AppendError::TooLarge { bytes, max } => ProduceError::TooLarge { bytes, max },
                    AppendError::Io(error) => {
                        ProduceError::Unavailable.with_log(&self.name, &error)
                    }
                };
                let _ = message.reply.send(Err(error));
                return;
            }
        };
        let bytes = outcome
            .jobs
            .iter()
            .map(|job| match job {
                IoJob::Append(append) => append.bytes.len() as u64,
                _ => 0,
            })
            .sum();
        self.pending_acks.push_back(PendingAck {
            next_offset: outcome.last_offset.next(),
            ack: AppendAck {
                partition: self.partition,
                base_offset: outcome.base_offset,
                last_offset: outcome.last_offset,
            },
            record_count,
            bytes,
            reply: message.reply,
        });
        self.submit(outcome.jobs, context);
    }
}

impl ProduceError {
    fn with_log(self, partition: &str, error: &dyn std::fmt::Display) -> ProduceError {
        tracing::warn!(%partition, %error, "append refused");
        self
    }
}

impl Handler<WriterEvent> for PartitionActor {
    type Result = ();

    fn handle(&mut self, event: WriterEvent, _context: &mut Context<Self>) {
        match event {
            WriterEvent::Durable { next_offset } => {
                if self.fail_stopped.is_some() {
                    return;
                }
                self.log.mark_durable(next_offset);
                while self
                    .pending_acks
                    .front()
                    .is_some_and(|pending| pending.next_offset <= next_offset)
                {
                    let Some(pending) = self.pending_acks.pop_front() else {
                        break;
                    };
                    self.metrics
                        .records_produced_total
                        .fetch_add(pending.record_count, Relaxed);
                    self.metrics
                        .bytes_produced_total
                        .fetch_add(pending.bytes, Relaxed);
                    let _ = pending.reply.send(Ok(pending.ack));
                }
                self.gauges
                    .high_watermark
                    .store(self.log.high_watermark().0, Relaxed);
                self.gauges
                    .log_end_offset
                    .store(self.log.log_end_offset().0, Relaxed);
                self.wake_fetches();
                self.finish_drain_if_idle();
            }
            WriterEvent::Sealed {
                base_offset,
                orphans_removed,
            } => {
                self.log.seal_completed(base_offset);
                self.metrics.segments_sealed_total.fetch_add(1, Relaxed);
                self.metrics
                    .orphaned_blocks_cleaned_total
                    .fetch_add(orphans_removed, Relaxed);
            }
            WriterEvent::SealFailed { base_offset, error } => {
                tracing::warn!(partition = %self.name, block = base_offset.0, %error, "sealing a segment failed; retrying");
                self.metrics.seal_failures_total.fetch_add(1, Relaxed);
                self.log.seal_failed(base_offset);
            }
            WriterEvent::Failed { error } => self.fail_stop(error),
        }
    }
}

impl Handler<DeletionOutcome> for PartitionActor {
    type Result = ();

    fn handle(&mut self, outcome: DeletionOutcome, _context: &mut Context<Self>) {
        if !outcome.failed_paths.is_empty() {
            self.log
                .deletion_failed(outcome.base_offset, outcome.failed_paths);
        }
        self.publish_gauges();
    }
}

impl Handler<Fetch> for PartitionActor {
    type Result = ();

    fn handle(&mut self, message: Fetch, context: &mut Context<Self>) {
        let waits = message.offset == self.log.high_watermark()
            && !message.max_wait.is_zero()
            && self.accepting
            && self.waiting_fetches.len() < WAITING_FETCHES_MAX;
        if !waits {
            let _ = message
                .reply
                .send(self.fetch_reply(message.offset, message.max_bytes));
            return;
        }
        let id = self.next_fetch_id;
        self.next_fetch_id += 1;
        self.waiting_fetches.push(WaitingFetch {
            id,
            offset: message.offset,
            max_bytes: message.max_bytes,
            reply: message.reply,
        });
        context.run_later(message.max_wait.min(FETCH_WAIT_MAX), move |actor, _| {
            actor.expire_fetch(id)
        });
    }
}

impl Handler<Describe> for PartitionActor {
    type Result = MessageResult<Describe>;

    fn handle(&mut self, _message: Describe, _context: &mut Context<Self>) -> Self::Result {
        MessageResult(PartitionOffsets {
            log_start_offset: self.log.log_start_offset(),
            log_end_offset: self.log.log_end_offset(),
            high_watermark: self.log.high_watermark(),
        })
    }
}

impl Handler<Drain> for PartitionActor {
    type Result = ();

    fn handle(&mut self, message: Drain, _context: &mut Context<Self>) {
        self.accepting = false;
        // A consumer waiting at the end gets "no more records" now.
        for fetch in std::mem::take(&mut self.waiting_fetches) {
            let _ = fetch.reply.send(Err(FetchError::ShuttingDown));
        }
        self.drain_waiters.push(message.reply);
        self.finish_drain_if_idle();
    }
}
