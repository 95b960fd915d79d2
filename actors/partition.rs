//! The partition actor: owns one partition's [`PartitionLog`], its writer
//! thread, the acknowledgements waiting for durability, the fetches waiting
//! for data, and its startup load.
//!
//! Produce: the log assigns offsets and plans the write; the jobs go to the
//! writer; the acknowledgement waits in `pending_acks` until the writer
//! reports the batch durable. Fetch: the actor only *plans* a read (an index
//! lookup); the caller executes it on its own thread, so reads never stall
//! appends. A fetch at the high watermark waits here until data arrives or
//! its `max_wait` passes; a fetch of a block not loaded yet waits for that
//! block the same way and then answers `FetchError::Loading`.
//!
//! Startup: the runtime recovers the active segment and lists the sealed
//! blocks ([`PartitionLog::open_deferred`]). In `started` the actor loads
//! the first chunk of blocks inside the hot window (newest first) before it
//! handles any message, so it serves as soon as that chunk is in; the rest of
//! the hot window loads in further chunks (one message each, so produce and
//! fetch interleave). The end of the hot load builds [`HotLoadComplete`] and
//! sends it to the BlockLoader: the only way a background load begins.
//!
//! Supervision: a panic in a handler is caught at the handler boundary; the
//! actor stops and its `Supervisor` restarts it, which reopens the log from
//! disk after a backoff. Producers waiting on it get `Unavailable`
//! (retryable). An fsync failure instead fail-stops the partition: it stays
//! stopped until the runtime restarts, because data under it may be lost.

use super::deleter::{DeleteRequest, DeleterCommand, DeletionOutcome};
use super::loader::{BlockLoaded, BlockLoader, PartitionWork};
use super::producers::{ProducerStates, Sequenced, Verdict};
use super::raft_node::{
    ForwardError, ForwardOutbound, Forwarded, LeaderDirectory, Leading, PeerChange, Quiesced,
    RaftInbound, RaftOutbound, Vouches,
};
use super::writer::{WriterEvent, WriterHandle, WriterReport};
use crate::config::{StartupConfig, TopicConfig};
use crate::error::{FetchError, ProduceError};
use crate::health::{LoadProgress, LoadState, PartitionHealth, Phase, ReplicaHealth, ReplicaLag};
use crate::metrics::{Metrics, PartitionGauges};
use crate::replication::replica::{ProposeError, ReplicaConfig, ReplicaCore};
use crate::replication::transport::GroupId;
use crate::replication::MembershipChange;
use crate::storage::compaction::{CompactedBlocks, CompactionInput, SwapError};
use crate::storage::log::{
    block_timestamp_hint, load_block, LoadedBlock, UnloadedBlock, Verification,
};
use crate::storage::{
    AppendError, AppendOutcome, BatchHeader, IoJob, OpenError, PartitionLog, ReadError, ReadPlan,
    TimeLookup,
};
use crate::types::{Offset, PartitionId, Record, Term};
use actix::prelude::*;
use crossbeam_channel::Sender;
use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;

/// Requests (produce, fetch, describe, time lookups) in flight to one
/// partition before callers wait (see `actors/mailbox.rs`: the bound is a
/// semaphore, the actix mailbox itself is unbounded).
pub(crate) const MAILBOX_CAPACITY: usize = 1024;
/// Fetches parked (at the high watermark or on an unloaded block); more are answered at once.
const WAITING_FETCHES_MAX: usize = 4096;
/// Longest a fetch may wait for data.
pub(crate) const FETCH_WAIT_MAX: Duration = Duration::from_secs(60);
/// How often retention and seal retries run.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(1);
/// First restart backoff; doubles per restart up to `RESTART_BACKOFF_MAX`.
const RESTART_BACKOFF_MIN: Duration = Duration::from_millis(50);
/// Longest restart backoff.
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(10);

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

/// Append a RecordBatch v2 a Kafka client sent, as it is (checked by
/// `storage::batch::validate_client_batch`); the reply comes once it is
/// durable. With `producer`, an idempotent producer's batch: a retry gets
/// its first offsets back and is not stored again (`actors/producers.rs`).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct ProduceBatch {
    pub(crate) batch: bytes::Bytes,
    pub(crate) header: BatchHeader,
    pub(crate) producer: Option<Sequenced>,
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

/// What a time lookup gets from the actor: the log's answer (maybe a scan
/// for the caller to execute on its own thread), and the startup load's
/// progress for a `Loading` error.
#[derive(Debug)]
pub(crate) struct OffsetForTimeReply {
    pub(crate) lookup: TimeLookup,
    pub(crate) loaded_percent: u8,
}

/// Plan a lookup of the earliest offset whose timestamp is at or after
/// `timestamp_ms` ([`PartitionLog::offset_for_timestamp`]). Answered at once:
/// the actor only consults its indexes; the caller runs the scan.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct OffsetForTime {
    pub(crate) timestamp_ms: i64,
    pub(crate) reply: oneshot::Sender<Result<OffsetForTimeReply, FetchError>>,
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

/// This partition's health, answered on a channel the asker can time out.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct GetHealth {
    pub(crate) reply: crossbeam_channel::Sender<PartitionHealth>,
}

/// Stop accepting produce, wait until every accepted batch is durable (or
/// failed), stop the writer. The reply carries the fail-stop reason if any.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Drain {
    pub(crate) reply: crossbeam_channel::Sender<Result<(), String>>,
}

/// The hot load is done: what the BlockLoader needs to load the rest.
///
/// Its fields are private to this module and it is built in one place,
/// [`PartitionActor::finish_hot_load`]: a background load cannot begin
/// before the hot load has finished.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct HotLoadComplete {
    work: PartitionWork,
}

impl HotLoadComplete {
    /// The work it hands over (for the loader).
    pub(crate) fn into_work(self) -> PartitionWork {
        self.work
    }
}

/// Hand the sealed blocks to the compactor (marking them compacting), if
/// the partition can be compacted and, with `min_dirty_ratio`, is dirty enough.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct TakeCompactionInput {
    pub(crate) delete_retention: Duration,
    /// `None`: compact now whatever the ratio (on demand).
    pub(crate) min_dirty_ratio: Option<f64>,
    pub(crate) reply: crossbeam_channel::Sender<Result<Option<CompactionInput>, String>>,
}

/// Swap compacted blocks in, in one step. The build comes back (with the
/// replaced bases, for `finish`) on success, and with the error otherwise.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct SwapCompacted {
    pub(crate) compacted: CompactedBlocks,
    pub(crate) reply:
        crossbeam_channel::Sender<Result<CompactedBlocks, (CompactedBlocks, SwapError)>>,
}

/// The compaction that took the blocks gave up; they are ordinary again.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct CompactionAborted;

/// Load the next chunk of the hot window.
#[derive(Message)]
#[rtype(result = "()")]
struct LoadHotChunk;

/// Reopen the log from disk (after a restart's backoff).
#[derive(Message)]
#[rtype(result = "()")]
struct Reopen;

/// What a partition needs to (re)open its log.
#[derive(Clone)]
pub(crate) struct PartitionSettings {
    pub(crate) topic: TopicConfig,
    pub(crate) partition: PartitionId,
    pub(crate) directory: PathBuf,
    pub(crate) startup: StartupConfig,
}

impl PartitionSettings {
    /// Opens the log: deferred (blocks listed, loaded by the startup load)
    /// unless the hot window is 0, which turns the startup load off.
    pub(crate) fn open_log(
        &self,
    ) -> Result<(PartitionLog, crate::storage::RecoveryReport), OpenError> {
        let options = crate::runtime::log_options(&self.topic);
        // A replica indexes every frame as a Raft entry at open, so its
        // blocks load at once (see ARCHITECTURE.md, "Replication").
        if self.startup.hot_window.is_zero() || self.topic.replication_factor > 1 {
            PartitionLog::open(&self.directory, options)
        } else {
            PartitionLog::open_deferred(&self.directory, options)
        }
    }
}

/// A replicated partition's Raft side, owned by its actor.
pub(crate) struct ReplicaHandle {
    pub(crate) core: ReplicaCore<ReplicaWaiter>,
    pub(crate) config: ReplicaConfig,
    pub(crate) group: GroupId,
    /// The RaftNode, which sends to peers.
    pub(crate) router: Recipient<RaftOutbound>,
    /// The RaftNode again, for forwarded produce traffic.
    pub(crate) forwarder: Recipient<ForwardOutbound>,
    /// The RaftNode again: this replica leads and went quiet, or woke.
    pub(crate) quiescer: Recipient<Quiesced>,
    /// The RaftNode again: a membership change applied.
    pub(crate) peers: Recipient<PeerChange>,
    /// The RaftNode again: this replica started or stopped leading.
    pub(crate) leadership: Recipient<Leading>,
    /// Who leads which group, as leaders announce it: the leader of a
    /// partition this node holds no voting replica of.
    pub(crate) directory: LeaderDirectory,
    /// The term in which this replica last told the RaftNode it leads.
    pub(crate) reported_leading: Option<u64>,
    /// Which nodes vouch for which quiet groups they lead (the RaftNode's).
    pub(crate) vouches: Vouches,
    /// Not ticking: the group is idle (see `PartitionActor::tick`).
    pub(crate) quiet: bool,
    /// When a peer last campaigned (a vote or pre-vote request) or refused
    /// something: it needs the group awake (a restarted replica looking for
    /// its leader, say), so the group ticks for an election timeout after.
    pub(crate) last_message: Instant,
    /// raft-rs's logical clock ticks this often.
    pub(crate) tick: Duration,
}

/// A proposal's producer, waiting for the commit.
pub(crate) struct ReplicaWaiter {
    reply: Answer,
    record_count: u64,
    bytes: u64,
    producer: Option<Sequenced>,
}

/// Who hears how a proposal ended.
enum Answer {
    /// A producer on this node.
    Local(oneshot::Sender<Result<AppendAck, ProduceError>>),
    /// A producer on another node, which forwarded its batch here.
    Remote { node: u64, id: u64 },
}

/// A produce this node forwarded to the leader, waiting for its answer.
struct PendingForward {
    reply: oneshot::Sender<Result<AppendAck, ProduceError>>,
    record_count: u64,
    bytes: u64,
}

/// How long a forwarded produce waits for the leader's answer; then its
/// producer hears "not committed" (the outcome is unknown).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a forwarded membership change waits for the leader's answer.
const CHANGE_FORWARD_TIMEOUT: Duration = Duration::from_secs(3);
/// Forwarded produce requests outstanding at once per partition; more are
/// answered NotLeader (the producer can go to the leader itself).
const FORWARDS_MAX: usize = 1024;

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

/// The startup load of this partition's sealed blocks.
#[derive(Default)]
struct StartupLoad {
    /// Hot blocks not loaded yet, newest first.
    hot: VecDeque<UnloadedBlock>,
    /// Blocks older than the hot window, newest first, for the BlockLoader.
    background: VecDeque<UnloadedBlock>,
    /// Blocks and bytes to load and loaded, hot and background together.
    progress: LoadProgress,
    quarantined: Vec<(Offset, u64)>,
    failed: Option<String>,
    hot_done: bool,
    started: Option<Instant>,
}

pub(crate) struct PartitionActor {
    name: String,
    settings: PartitionSettings,
    log: PartitionLog,
    writer: Option<WriterHandle>,
    writer_generation: u64,
    deleter: Sender<DeleterCommand>,
    loader: Addr<BlockLoader>,
    pending_acks: VecDeque<PendingAck>,
    /// Idempotent producers' sequences (Kafka front end).
    producers: ProducerStates,
    /// Fetches at the high watermark, waiting for data.
    waiting_fetches: Vec<WaitingFetch>,
    /// Fetches of offsets in blocks not loaded yet.
    waiting_for_blocks: Vec<WaitingFetch>,
    next_fetch_id: u64,
    load: StartupLoad,
    serving: bool,
    fail_stopped: Option<String>,
    /// Set while restarting: why, and produce/fetch answer `Unavailable`.
    restarting: Option<String>,
    restarts: u64,
    accepting: bool,
    drain_waiters: Vec<crossbeam_channel::Sender<Result<(), String>>>,
    metrics: Arc<Metrics>,
    gauges: Arc<PartitionGauges>,
    /// The maintenance timer (retention, retries), cancelled by `Retire`.
    maintenance: Option<actix::SpawnHandle>,
    /// Set by `Retire`: the topic was deleted; the actor only waits for its
    /// last address to drop.
    retired: bool,
    /// Replicated partitions: the Raft group's replica on this node.
    replica: Option<ReplicaHandle>,
    /// Embedded produce forwarded to the leader, by request id.
    forwards: std::collections::HashMap<u64, PendingForward>,
    next_forward_id: u64,
}

impl PartitionActor {
    pub(crate) fn new(
        settings: PartitionSettings,
        mut log: PartitionLog,
        deleter: Sender<DeleterCommand>,
        loader: Addr<BlockLoader>,
        metrics: Arc<Metrics>,
        gauges: Arc<PartitionGauges>,
        replica: Option<ReplicaHandle>,
    ) -> PartitionActor {
        let producers = ProducerStates::rebuilt(&log.take_recovered_producer_batches());
        PartitionActor {
            name: format!("{}-{}", settings.topic.name, settings.partition.0),
            settings,
            log,
            writer: None,
            writer_generation: 0,
            producers,
            deleter,
            loader,
            pending_acks: VecDeque::new(),
            waiting_fetches: Vec::new(),
            waiting_for_blocks: Vec::new(),
            next_fetch_id: 0,
            load: StartupLoad::default(),
            serving: false,
            fail_stopped: None,
            restarting: None,
            restarts: 0,
            accepting: true,
            drain_waiters: Vec::new(),
            metrics,
            gauges,
            maintenance: None,
            retired: false,
            replica,
            forwards: std::collections::HashMap::new(),
            next_forward_id: 0,
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
        self.gauges.serving.store(
            u64::from(self.serving && self.restarting.is_none()),
            Relaxed,
        );
        if let Some(replica) = &self.replica {
            let status = replica.core.progress();
            let raft = &self.gauges.raft;
            raft.replicated.store(1, Relaxed);
            raft.leader.store(replica.leader().unwrap_or(0), Relaxed);
            // A node outside the group knows the leader's term from its
            // announcements (Metadata's leader epoch).
            let term = if status.leader == 0 {
                replica
                    .directory
                    .load()
                    .get(&replica.group)
                    .map_or(status.term, |(_, term)| *term)
            } else {
                status.term
            };
            raft.term.store(term, Relaxed);
            raft.commit_index.store(status.commit_index, Relaxed);
            raft.applied_index.store(status.applied_index, Relaxed);
            raft.last_index.store(status.last_index, Relaxed);
        }
    }

    /// Runs a handler body; a panic in it stops the actor so its supervisor
    /// restarts it from disk. Replies captured by the body are dropped, so
    /// their callers see `Unavailable` (retryable).
    fn guarded(
        &mut self,
        context: &mut Context<Self>,
        handler: &'static str,
        body: impl FnOnce(&mut Self, &mut Context<Self>),
    ) {
        let started = Instant::now();
        // A thread-CPU clock read is a system call (about 0.4 µs here), so
        // handlers are timed in CPU time only when asked (benches).
        let cpu_started = handler_cpu_timing().then(thread_cpu_time);
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| body(self, context)));
        self.metrics.observe_handler(started.elapsed());
        if let Some(cpu_started) = cpu_started {
            self.metrics
                .observe_handler_cpu(thread_cpu_time().saturating_sub(cpu_started));
        }
        if let Err(panic) = outcome {
            let reason = panic_message(panic.as_ref());
            tracing::error!(partition = %self.name, handler, %reason, "partition handler panicked; restarting it from disk");
            self.restarting = Some(format!("{handler} panicked: {reason}"));
            context.stop();
        }
    }

    fn fetch_reply(&self, offset: Offset, max_bytes: usize) -> Result<FetchReply, FetchError> {
        let plan = self
            .log
            .read_plan(offset, max_bytes)
            .map_err(|error| match error {
                ReadError::NotLoaded {
                    requested,
                    block_base_offset,
                } => FetchError::Loading {
                    requested,
                    block_base_offset,
                    loaded_percent: self.load.progress.percent(),
                },
                other => FetchError::from(other),
            })?;
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
                    let _ = self.deleter.send(DeleterCommand::Delete(request));
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

    fn start_writer(&mut self, context: &mut Context<Self>) {
        self.writer_generation += 1;
        let events = context.address().recipient::<WriterReport>();
        let name = format!("millrace-wal-{}", self.name);
        match WriterHandle::spawn(
            name,
            self.settings.topic.fsync,
            events,
            self.writer_generation,
            self.metrics.clone(),
        ) {
            Ok(writer) => self.writer = Some(writer),
            Err(error) => self.fail_stop(format!("cannot start the writer thread: {error}")),
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
        self.stop_replica(ProduceError::FailStopped {
            reason: reason.clone(),
        });
        self.fail_stopped = Some(reason);
        self.finish_drain_if_idle();
    }

    /// The replica stops taking part (fail-stop, restart): its waiting and
    /// forwarded produce are answered with `error` (a forwarded one's origin
    /// hears "not committed"), and if it led a quiet group its node stops
    /// vouching for it, so the other replicas wake and elect a leader.
    fn stop_replica(&mut self, error: ProduceError) {
        let Some(replica) = self.replica.as_mut() else {
            return;
        };
        replica
            .core
            .fail_waiting(ProposeError::Dropped(error.to_string()));
        let completed = replica.core.take_completed();
        if replica.quiet {
            replica.quiet = false;
            replica.quiescer.do_send(Quiesced {
                group: replica.group.clone(),
                quiet: false,
            });
        }
        if replica.reported_leading.take().is_some() {
            replica.leadership.do_send(Leading {
                group: replica.group.clone(),
                term: 0,
                leading: false,
            });
        }
        for (waiter, _) in completed {
            match waiter.reply {
                Answer::Local(reply) => {
                    let _ = reply.send(Err(error.clone()));
                }
                Answer::Remote { node, id } => self.send_forward_reply(
                    node,
                    id,
                    Err(ForwardError::NotCommitted(error.to_string())),
                ),
            }
        }
        for (_, pending) in self.forwards.drain() {
            let _ = pending.reply.send(Err(error.clone()));
        }
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

    /// Answers the fetches whose block has loaded since they parked.
    fn wake_block_fetches(&mut self) {
        let mut still_waiting = Vec::new();
        for fetch in std::mem::take(&mut self.waiting_for_blocks) {
            match self.fetch_reply(fetch.offset, fetch.max_bytes) {
                Err(FetchError::Loading { .. }) if self.load.failed.is_none() => {
                    still_waiting.push(fetch)
                }
                answer => {
                    let _ = fetch.reply.send(answer);
                }
            }
        }
        self.waiting_for_blocks = still_waiting;
    }

    fn expire_fetch(&mut self, id: u64) {
        let parked = [&mut self.waiting_fetches, &mut self.waiting_for_blocks];
        let found = parked.into_iter().find_map(|list| {
            let index = list.iter().position(|fetch| fetch.id == id)?;
            Some(list.swap_remove(index))
        });
        if let Some(fetch) = found {
            let _ = fetch
                .reply
                .send(self.fetch_reply(fetch.offset, fetch.max_bytes));
        }
    }

    fn park_fetch(&mut self, message: Fetch, at_block: bool, context: &mut Context<Self>) {
        let id = self.next_fetch_id;
        self.next_fetch_id += 1;
        let fetch = WaitingFetch {
            id,
            offset: message.offset,
            max_bytes: message.max_bytes,
            reply: message.reply,
        };
        if at_block {
            self.waiting_for_blocks.push(fetch);
        } else {
            self.waiting_fetches.push(fetch);
        }
        context.run_later(
            message.max_wait.min(FETCH_WAIT_MAX),
            move |actor, context| {
                actor.guarded(context, "fetch expiry", |actor, _| actor.expire_fetch(id))
            },
        );
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
        if self.fail_stopped.is_some() || self.restarting.is_some() || self.writer.is_none() {
            return;
        }
        let mut jobs = self.log.retry_jobs();
        jobs.extend(self.log.retention_jobs(now_ms()));
        self.submit(jobs, context);
        self.publish_gauges();
    }

    // ---- startup load -------------------------------------------------

    /// Splits the listed blocks into the hot window and the rest, loads the
    /// first hot chunk now, and queues the others.
    fn begin_load(&mut self, context: &mut Context<Self>) {
        let hot_window_ms = self.settings.startup.hot_window.as_millis() as i64;
        let cutoff_ms = now_ms().saturating_sub(hot_window_ms);
        let mut load = StartupLoad {
            started: Some(Instant::now()),
            ..StartupLoad::default()
        };
        // Newest first: blocks are hot until the first one older than the
        // window; everything from there on loads in the background.
        for block in self.log.unloaded_blocks() {
            load.progress.total_blocks += 1;
            load.progress.total_bytes += block.size_bytes;
            // The hint is read only until the first cold block: older
            // blocks go to the background whatever their timestamps.
            let hot = load.background.is_empty()
                && block_timestamp_hint(&self.settings.directory, block.base_offset)
                    .is_none_or(|newest| newest >= cutoff_ms);
            if hot {
                load.hot.push_back(block.clone());
            } else {
                load.background.push_back(block.clone());
            }
        }
        self.load = load;
        self.load_hot_chunk(context);
        self.serving = true;
        self.publish_gauges();
    }

    /// Loads up to `chunk_bytes` of hot blocks (at least one).
    fn load_hot_chunk(&mut self, context: &mut Context<Self>) {
        let mut chunk_bytes = 0;
        while let Some(block) = self.load.hot.pop_front() {
            chunk_bytes += block.size_bytes;
            let result = load_block(
                &self.settings.directory,
                block.base_offset,
                self.settings.topic.index_interval_bytes,
                Verification::Full,
            );
            self.on_block_loaded(block.base_offset, block.size_bytes, result);
            if chunk_bytes >= self.settings.startup.chunk_bytes || self.load.failed.is_some() {
                break;
            }
        }
        if self.load.hot.is_empty() || self.load.failed.is_some() {
            self.finish_hot_load(context);
        } else {
            context.notify(LoadHotChunk);
        }
    }

    /// The hot load is over: hand the rest to the BlockLoader, or end the
    /// load here if there is nothing left.
    fn finish_hot_load(&mut self, _context: &mut Context<Self>) {
        self.load.hot_done = true;
        let seconds = self
            .load
            .started
            .map_or(0.0, |started| started.elapsed().as_secs_f64());
        tracing::info!(
            partition = %self.name,
            blocks = self.load.progress.loaded_blocks,
            bytes = self.load.progress.loaded_bytes,
            seconds,
            "hot load complete"
        );
        if self.load.failed.is_some() || self.load.background.is_empty() {
            self.log_terminal_state();
            return;
        }
        let oldest_loaded = self
            .log
            .loaded_oldest_base_offset()
            .unwrap_or_else(|| self.log.log_end_offset());
        let message = HotLoadComplete {
            work: PartitionWork {
                name: self.name.clone(),
                directory: self.settings.directory.clone(),
                index_interval_bytes: self.settings.topic.index_interval_bytes,
                blocks: std::mem::take(&mut self.load.background),
                oldest_loaded,
                reply_to: _context.address().recipient(),
                started: Instant::now(),
                loaded_bytes: 0,
            },
        };
        // `try_send`: the loader's mailbox is bounded; if it is full the
        // load cannot go on, which must end in a terminal state, not a hang.
        if let Err(error) = self.loader.try_send(message) {
            self.load.failed = Some(format!(
                "cannot hand the background load to the loader: {error}"
            ));
            self.log_terminal_state();
        }
    }

    fn on_block_loaded(
        &mut self,
        base_offset: Offset,
        size_bytes: u64,
        result: Result<LoadedBlock, OpenError>,
    ) {
        match result {
            Ok(loaded) => {
                self.metrics
                    .orphaned_blocks_cleaned_total
                    .fetch_add(loaded.orphans_removed, Relaxed);
                if let Some(corruption) = &loaded.corrupt_from {
                    tracing::error!(partition = %self.name, block = base_offset.0, %corruption, "damaged block quarantined; the load goes on");
                    self.metrics.blocks_quarantined_total.fetch_add(1, Relaxed);
                    self.metrics.corruptions_total.fetch_add(1, Relaxed);
                    self.load.quarantined.push((base_offset, size_bytes));
                }
                self.log.register_block(loaded);
                self.metrics.blocks_loaded_total.fetch_add(1, Relaxed);
                self.load.progress.loaded_blocks += 1;
                self.load.progress.loaded_bytes += size_bytes;
            }
            Err(error) => {
                tracing::error!(partition = %self.name, block = base_offset.0, %error, "loading a block failed; the startup load stops");
                self.load.failed = Some(format!("block {}: {error}", base_offset.0));
            }
        }
        self.wake_block_fetches();
        let everything_tried = self.load.hot_done && self.log.unloaded_blocks().next().is_none();
        if self.load.hot_done && (everything_tried || self.load.failed.is_some()) {
            self.log_terminal_state();
        }
        self.publish_gauges();
    }

    fn load_state(&self) -> LoadState {
        if let Some(error) = &self.load.failed {
            return LoadState::Failed {
                error: error.clone(),
            };
        }
        if !self.load.hot_done {
            return LoadState::WaitingForHotLoad;
        }
        if self.log.unloaded_blocks().next().is_some() {
            return LoadState::Loading(self.load.progress);
        }
        let quarantined_bytes: u64 = self.load.quarantined.iter().map(|(_, bytes)| bytes).sum();
        let sealed_bytes = self.log.loaded_block_bytes();
        let coverage_percent = if sealed_bytes == 0 {
            100.0
        } else {
            100.0 * sealed_bytes.saturating_sub(quarantined_bytes) as f64 / sealed_bytes as f64
        };
        LoadState::Complete {
            coverage_percent,
            quarantined_blocks: self
                .load
                .quarantined
                .iter()
                .map(|(base, _)| base.0)
                .collect(),
        }
    }

    fn log_terminal_state(&self) {
        let seconds = self
            .load
            .started
            .map_or(0.0, |started| started.elapsed().as_secs_f64());
        match self.load_state() {
            LoadState::Complete {
                coverage_percent,
                quarantined_blocks,
            } => tracing::info!(
                partition = %self.name,
                blocks = self.load.progress.loaded_blocks,
                bytes = self.load.progress.loaded_bytes,
                coverage_percent,
                quarantined = quarantined_blocks.len(),
                seconds,
                "startup load complete"
            ),
            LoadState::Failed { error } => {
                tracing::error!(partition = %self.name, %error, seconds, "startup load failed")
            }
            _ => {}
        }
    }

    fn health(&self) -> PartitionHealth {
        let phase = if let Some(reason) = &self.fail_stopped {
            Phase::FailStopped {
                reason: reason.clone(),
            }
        } else if let Some(reason) = &self.restarting {
            Phase::Restarting {
                attempt: self.restarts,
                reason: reason.clone(),
            }
        } else if self.serving {
            Phase::Serving
        } else {
            Phase::Recovering
        };
        let mut degraded = Vec::new();
        for (base, _) in &self.load.quarantined {
            degraded.push(format!("block {} is damaged and quarantined", base.0));
        }
        if let Some(error) = &self.load.failed {
            degraded.push(format!("startup load failed: {error}"));
        }
        if let Some(reason) = &self.fail_stopped {
            degraded.push(format!("fail-stopped: {reason}"));
        }
        if self.restarts > 0 {
            degraded.push(format!("restarted {} times", self.restarts));
        }
        PartitionHealth {
            topic: self.settings.topic.name.clone(),
            partition: self.settings.partition.0,
            phase,
            load: self.load_state(),
            degraded,
            restarts: self.restarts,
            log_start_offset: self.log.log_start_offset().0,
            log_end_offset: self.log.log_end_offset().0,
            high_watermark: self.log.high_watermark().0,
            replica: self.replica.as_ref().map(|replica| {
                let status = replica.core.status();
                ReplicaHealth {
                    node_id: status.id,
                    leader: replica.leader().unwrap_or(0),
                    term: status.term,
                    commit_index: status.commit_index,
                    applied_index: status.applied_index,
                    last_index: status.last_index,
                    voters: status.voters,
                    replicas: status
                        .matched
                        .iter()
                        .map(|&(node_id, matched_index)| ReplicaLag {
                            node_id,
                            matched_index,
                            lag: status.last_index.saturating_sub(matched_index),
                        })
                        .collect(),
                }
            }),
        }
    }

    // ---- restart ------------------------------------------------------

    fn restart_backoff(&self) -> Duration {
        let exponent = self.restarts.saturating_sub(1).min(16) as u32;
        (RESTART_BACKOFF_MIN * 2u32.pow(exponent)).min(RESTART_BACKOFF_MAX)
    }

    fn reopen(&mut self, context: &mut Context<Self>) {
        match self.settings.open_log() {
            Ok((log, report)) => {
                crate::runtime::record_recovery(
                    &self.metrics,
                    &self.settings.topic.name,
                    self.settings.partition,
                    &report,
                );
                self.log = log;
                if let Some(replica) = self.replica.as_mut() {
                    match ReplicaCore::open(
                        &mut self.log,
                        &self.settings.directory,
                        &replica.config,
                    ) {
                        // The old core's waiting producers see Unavailable.
                        Ok(core) => replica.core = core,
                        Err(error) => {
                            let reason = format!("reopen of the replica failed: {error}");
                            tracing::warn!(partition = %self.name, %reason, "partition restart failed; retrying");
                            self.restarting = Some(reason);
                            context.notify_later(Reopen, self.restart_backoff());
                            return;
                        }
                    }
                }
                // The reopened log may lack an unacknowledged tail that the
                // old states still describe: rebuild them from what is stored.
                self.producers =
                    ProducerStates::rebuilt(&self.log.take_recovered_producer_batches());
                self.restarting = None;
                tracing::info!(partition = %self.name, restarts = self.restarts, "partition restarted from disk");
                self.begin_load(context);
            }
            Err(error) => {
                let reason = format!("reopen failed: {error}");
                tracing::warn!(partition = %self.name, %reason, "partition restart failed; retrying");
                self.restarting = Some(reason);
                context.notify_later(Reopen, self.restart_backoff());
            }
        }
        self.publish_gauges();
    }
}

/// What a producer hears when its proposal fails.
fn produce_error(error: ProposeError) -> ProduceError {
    match error {
        ProposeError::NotLeader { leader } => ProduceError::NotLeader { leader },
        ProposeError::Superseded => ProduceError::NotCommitted(error.to_string()),
        // Refused before it entered the log: nothing was stored.
        ProposeError::Dropped(_) => ProduceError::Unavailable,
    }
}

impl ReplicaHandle {
    /// Hands messages to the RaftNode for the peers.
    fn send(&self, messages: Vec<raft::prelude::Message>) {
        if !messages.is_empty() {
            self.router.do_send(RaftOutbound {
                group: self.group.clone(),
                messages,
            });
        }
    }
}

impl Handler<RaftInbound> for PartitionActor {
    type Result = ();

    fn handle(&mut self, message: RaftInbound, context: &mut Context<Self>) {
        self.guarded(context, "raft messages", |actor, context| {
            if actor.fail_stopped.is_some() || actor.restarting.is_some() {
                return;
            }
            if let Some(replica) = actor.replica.as_mut() {
                // A peer that campaigns or is refused needs the group awake
                // (a restarted replica looking for its leader, say).
                if message.messages.iter().any(|raft_message| {
                    raft_message.reject
                        || matches!(
                            raft_message.msg_type,
                            raft::prelude::MessageType::MsgRequestVote
                                | raft::prelude::MessageType::MsgRequestPreVote
                                | raft::prelude::MessageType::MsgTimeoutNow
                        )
                }) {
                    replica.last_message = Instant::now();
                }
                for raft_message in message.messages {
                    replica.core.step(raft_message);
                }
            }
            for forwarded in message.forwarded {
                actor.on_forwarded(forwarded, context);
            }
            actor.drive_replica(context);
        });
    }
}

impl PartitionActor {
    /// Raft's clock, except for idle groups: a leader with nothing to
    /// replicate, whose followers' nodes are alive, stops ticking (no
    /// heartbeats) and its node vouches for the group in its announcements
    /// instead; a caught-up follower stops ticking while its leader's node
    /// keeps vouching. Anything else (a proposal, a message that changes
    /// the log, a silent node, a group no longer vouched for) and ticking
    /// resumes, so elections still happen within a timeout.
    fn tick(&mut self, context: &mut Context<Self>) {
        if self.fail_stopped.is_some() || self.restarting.is_some() || !self.accepting {
            return;
        }
        let Some(replica) = self.replica.as_mut() else {
            return;
        };
        let quiet = replica.may_rest();
        let is_leader = replica.core.progress().is_leader;
        if quiet != replica.quiet {
            replica.quiet = quiet;
            if !quiet {
                replica.core.wake();
            }
            if is_leader || !quiet {
                replica.quiescer.do_send(Quiesced {
                    group: replica.group.clone(),
                    quiet: quiet && is_leader,
                });
            }
            self.gauges.raft.quiet.store(u64::from(quiet), Relaxed);
        }
        if quiet {
            return;
        }
        replica.core.tick();
        self.drive_replica(context);
    }
}

impl ReplicaHandle {
    /// The leader: as this replica knows it, or, for a partition this node
    /// holds no voting replica of, as the leaders announce it.
    fn leader(&self) -> Option<u64> {
        self.core.leader().or_else(|| {
            self.directory
                .load()
                .get(&self.group)
                .map(|(leader, _)| *leader)
        })
    }

    /// Tells the RaftNode when this replica starts or stops leading, for
    /// its announcements (the directory other nodes keep).
    fn report_leadership(&mut self) {
        let status = self.core.progress();
        let now = status.is_leader.then_some(status.term);
        if now != self.reported_leading {
            self.reported_leading = now;
            self.leadership.do_send(Leading {
                group: self.group.clone(),
                term: status.term,
                leading: now.is_some(),
            });
        }
    }

    /// Whether this replica's group is idle and its peers' liveness lets it
    /// skip a tick (see `PartitionActor::tick`).
    fn may_rest(&self) -> bool {
        // Not a voter (this node holds no replica of the partition, or has
        // not been added yet): nothing to tick for. Messages still reach it.
        if !self.core.is_voter(self.config.id) {
            return true;
        }
        let election_timeout = self.tick * (self.config.election_ticks as u32);
        if self.last_message.elapsed() < election_timeout {
            return false;
        }
        // Fresh within half an election timeout: well before a follower
        // that heard nothing would campaign.
        let window = election_timeout / 2;
        let vouches = self.vouches.load();
        let fresh = |node: u64| {
            vouches
                .get(&node)
                .filter(|(at, _)| at.elapsed() < window)
                .map(|(_, groups)| groups)
        };
        if self.core.idle_leader() {
            let status = self.core.status();
            return status
                .voters
                .iter()
                .filter(|&&voter| voter != status.id)
                .all(|&voter| fresh(voter).is_some());
        }
        if self.core.idle_follower() {
            return self
                .core
                .leader()
                .and_then(fresh)
                .is_some_and(|groups| groups.contains(&self.group));
        }
        false
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(message) = panic.downcast_ref::<&str>() {
        (*message).to_owned()
    } else if let Some(message) = panic.downcast_ref::<String>() {
        message.clone()
    } else {
        "panic with a non-string payload".to_owned()
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
        // Unbounded here; `Gated` bounds requests (actix's own bound can
        // leave a sender waiting forever, see actors/mailbox.rs).
        context.set_mailbox_capacity(0);
        if self.retired {
            // Restarted after `Retire`: nothing to serve; stop once the
            // last address drops.
            return;
        }
        self.start_writer(context);
        self.maintenance = Some(
            context.run_interval(MAINTENANCE_INTERVAL, |actor, context| {
                actor.guarded(context, "maintenance", |actor, context| {
                    actor.maintenance(context)
                })
            }),
        );
        if let Some(tick) = self.replica.as_ref().map(|replica| replica.tick) {
            context.run_interval(tick, |actor, context| {
                actor.guarded(context, "raft tick", |actor, context| actor.tick(context))
            });
        }
        if self.restarts == 0 {
            // The first chunk loads here, before any message is handled.
            self.guarded(context, "startup load", |actor, context| {
                actor.begin_load(context)
            });
        } else {
            context.notify_later(Reopen, self.restart_backoff());
        }
        self.publish_gauges();
    }

    fn stopped(&mut self, _context: &mut Context<Self>) {
        // Dropping the writer handle writes and syncs what was queued; the
        // producers waiting on it see their reply channel close (Unavailable).
        if let Some(mut writer) = self.writer.take() {
            writer.stop();
        }
    }
}

impl actix::Supervised for PartitionActor {
    /// Called by the supervisor before `started` runs again: everything in
    /// memory is dropped; the log is reopened from disk after a backoff.
    fn restarting(&mut self, _context: &mut Context<Self>) {
        if let Some(mut writer) = self.writer.take() {
            writer.stop();
        }
        self.stop_replica(ProduceError::Unavailable);
        // Dropping the reply senders tells every waiting caller `Unavailable`.
        self.pending_acks.clear();
        self.waiting_fetches.clear();
        self.waiting_for_blocks.clear();
        self.serving = false;
        self.restarts += 1;
        self.restarting.get_or_insert_with(|| "stopped".to_owned());
        self.metrics.partition_restarts_total.fetch_add(1, Relaxed);
        self.publish_gauges();
    }
}

impl Handler<Produce> for PartitionActor {
    type Result = ();

    fn handle(&mut self, message: Produce, context: &mut Context<Self>) {
        self.guarded(context, "produce", |actor, context| {
            actor.produce(message, context)
        });
    }
}

impl PartitionActor {
    fn produce(&mut self, message: Produce, context: &mut Context<Self>) {
        fail::fail_point!("partition::produce");
        if let Some(error) = self.refusal() {
            let _ = message.reply.send(Err(error));
            return;
        }
        let record_count = message.records.len() as u64;
        if self.replica.is_some() {
            let mut frame = Vec::new();
            crate::storage::batch::encode_frame(
                &mut frame,
                Offset(0),
                Term(0),
                crate::storage::batch::ProducerFields::NONE,
                &message.records,
                now_ms(),
            );
            let max = self.log.options().batch_bytes_max;
            if frame.len() > max {
                let _ = message.reply.send(Err(ProduceError::TooLarge {
                    bytes: frame.len(),
                    max,
                }));
                return;
            }
            let batch =
                bytes::Bytes::from(frame).slice(crate::storage::batch::FRAME_HEADER_BYTES..);
            // On a follower that knows the leader, the batch goes there.
            if let Some(leader) = self.forward_target() {
                let pending = PendingForward {
                    reply: message.reply,
                    record_count,
                    bytes: batch.len() as u64,
                };
                let batch = batch.to_vec();
                self.forward(
                    leader,
                    |from, id| Forwarded::Request { from, id, batch },
                    pending,
                    FORWARD_TIMEOUT,
                    context,
                );
                return;
            }
            let waiter = ReplicaWaiter {
                reply: Answer::Local(message.reply),
                record_count,
                bytes: batch.len() as u64,
                producer: None,
            };
            self.propose(batch, waiter, context);
            return;
        }
        let outcome = self.log.append(&message.records, Term(0), now_ms());
        self.queue_append(outcome, record_count, message.reply, context);
    }

    /// Replicated partitions: proposes a batch to the Raft group; the
    /// producer is answered when it is committed (or not).
    fn propose(&mut self, batch: bytes::Bytes, waiter: ReplicaWaiter, context: &mut Context<Self>) {
        let Some(replica) = self.replica.as_mut() else {
            return;
        };
        if let Err((waiter, error)) = replica.core.propose(batch, waiter) {
            self.answer_proposal(waiter, Err(error));
            return;
        }
        self.drive_replica(context);
    }

    /// Proposes a membership change to this partition's group; the waiter
    /// hears when it is applied.
    fn propose_change(
        &mut self,
        change: MembershipChange,
        waiter: ReplicaWaiter,
        context: &mut Context<Self>,
    ) {
        let Some(replica) = self.replica.as_mut() else {
            return;
        };
        if let Err((waiter, error)) = replica
            .core
            .propose_conf_change(change.to_conf_change(), waiter)
        {
            self.answer_proposal(waiter, Err(error));
            return;
        }
        self.drive_replica(context);
    }

    /// The leader to forward an embedded produce to: another node, known.
    fn forward_target(&self) -> Option<u64> {
        let replica = self.replica.as_ref()?;
        replica
            .leader()
            .filter(|&leader| leader != replica.config.id)
            .filter(|_| self.forwards.len() < FORWARDS_MAX)
    }

    /// Sends `forwarded` (built from this node's id and a request id) to
    /// the leader's node and parks `pending` until the answer
    /// (`Forwarded::Reply`) comes back, or `timeout` passes and its caller
    /// hears "not committed" (outcome unknown).
    fn forward(
        &mut self,
        leader: u64,
        forwarded: impl FnOnce(u64, u64) -> Forwarded,
        pending: PendingForward,
        timeout: Duration,
        context: &mut Context<Self>,
    ) {
        let Some(replica) = self.replica.as_ref() else {
            return;
        };
        let id = self.next_forward_id;
        self.next_forward_id += 1;
        replica.forwarder.do_send(ForwardOutbound {
            to: leader,
            group: replica.group.clone(),
            forwarded: forwarded(replica.config.id, id),
        });
        self.forwards.insert(id, pending);
        context.run_later(timeout, move |actor, _| {
            if let Some(pending) = actor.forwards.remove(&id) {
                let _ = pending.reply.send(Err(ProduceError::NotCommitted(format!(
                    "forwarded to node {leader}, which did not answer within {timeout:?}"
                ))));
            }
        });
    }

    /// Forwarded produce traffic: requests from followers' nodes (this
    /// replica is meant to lead), answers for requests this node sent.
    fn on_forwarded(&mut self, forwarded: Forwarded, context: &mut Context<Self>) {
        match forwarded {
            Forwarded::Request { from, id, batch } => {
                let answer = Answer::Remote { node: from, id };
                let header = match crate::storage::batch::validate_client_batch(&batch) {
                    Ok(header) => header,
                    Err(error) => {
                        self.send_forward_reply(
                            from,
                            id,
                            Err(ForwardError::Refused(error.to_string())),
                        );
                        return;
                    }
                };
                if let Some(error) = self.refusal() {
                    let _ = answer;
                    self.send_forward_reply(
                        from,
                        id,
                        Err(ForwardError::NotCommitted(error.to_string())),
                    );
                    return;
                }
                let waiter = ReplicaWaiter {
                    reply: answer,
                    record_count: u64::from(header.record_count),
                    bytes: batch.len() as u64,
                    producer: None,
                };
                self.propose(bytes::Bytes::from(batch), waiter, context);
            }
            Forwarded::Change { from, id, change } => {
                let waiter = ReplicaWaiter {
                    reply: Answer::Remote { node: from, id },
                    record_count: 0,
                    bytes: 0,
                    producer: None,
                };
                self.propose_change(change, waiter, context);
            }
            Forwarded::Reply { id, result } => {
                let Some(pending) = self.forwards.remove(&id) else {
                    return; // timed out already
                };
                let answer = match result {
                    Ok((base, last)) => Ok(self.acknowledged(
                        pending.record_count,
                        pending.bytes,
                        Offset(base),
                        Offset(last),
                    )),
                    Err(ForwardError::NotLeader(leader)) => Err(ProduceError::NotLeader { leader }),
                    Err(ForwardError::NotCommitted(reason)) => {
                        Err(ProduceError::NotCommitted(reason))
                    }
                    Err(ForwardError::Refused(reason)) => {
                        tracing::warn!(partition = %self.name, %reason, "the leader refused a forwarded batch");
                        Err(ProduceError::Unavailable)
                    }
                };
                let _ = pending.reply.send(answer);
            }
        }
    }

    /// Counts an acknowledged batch and builds its acknowledgement.
    fn acknowledged(
        &self,
        record_count: u64,
        bytes: u64,
        base_offset: Offset,
        last_offset: Offset,
    ) -> AppendAck {
        self.metrics
            .records_produced_total
            .fetch_add(record_count, Relaxed);
        self.metrics.bytes_produced_total.fetch_add(bytes, Relaxed);
        AppendAck {
            partition: self.settings.partition,
            base_offset,
            last_offset,
        }
    }

    fn send_forward_reply(&self, node: u64, id: u64, result: Result<(u64, u64), ForwardError>) {
        if let Some(replica) = &self.replica {
            replica.forwarder.do_send(ForwardOutbound {
                to: node,
                group: replica.group.clone(),
                forwarded: Forwarded::Reply { id, result },
            });
        }
    }

    /// Runs the replica's rounds until one is in flight or there is no
    /// work: sends what may go now, hands the I/O to the writer, answers
    /// the proposals that completed, and wakes fetches.
    fn drive_replica(&mut self, context: &mut Context<Self>) {
        let Some(replica) = self.replica.as_mut() else {
            return;
        };
        let mut jobs = Vec::new();
        let mut truncated = false;
        let mut appended = Vec::new();
        let failure = loop {
            match replica.core.poll(&mut self.log, now_ms()) {
                Ok(Some(round)) => {
                    // Peers first: the round's messages may be for a new one.
                    for change in &round.changes {
                        for peer_change in MembershipChange::from_applied(change) {
                            replica.peers.do_send(PeerChange {
                                change: peer_change,
                            });
                        }
                    }
                    replica.send(round.messages);
                    jobs.extend(round.jobs);
                    if round.truncated {
                        // States from the cut batches must go: rebuild.
                        truncated = true;
                        appended.clear();
                    }
                    appended.extend(round.appended);
                }
                Ok(None) => break None,
                Err(error) => break Some(error.to_string()),
            }
        };
        let completed = replica.core.take_completed();
        replica.report_leadership();
        if truncated {
            self.rebuild_producers();
            // Retries parked on a first copy that was cut: that copy will
            // never be committed.
            for pending in self.pending_acks.drain(..) {
                let _ = pending.reply.send(Err(ProduceError::NotCommitted(
                    "the first copy of this retried batch was replaced by another leader's entries"
                        .to_string(),
                )));
            }
        }
        for header in &appended {
            self.producers.record_header(header);
        }
        if !jobs.is_empty() {
            self.submit(jobs, context);
        }
        for (waiter, outcome) in completed {
            self.answer_proposal(waiter, outcome);
        }
        // Retries answered with their first copy's offsets, once committed.
        self.release_pending_acks(self.log.high_watermark());
        if let Some(reason) = failure {
            self.fail_stop(reason);
        }
        self.publish_gauges();
        self.wake_fetches();
    }

    /// Acknowledges the parked appends whose records are all below `upto`
    /// (durable for a partition of one, committed for a replica).
    fn release_pending_acks(&mut self, upto: Offset) {
        while self
            .pending_acks
            .front()
            .is_some_and(|pending| pending.next_offset <= upto)
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
    }

    /// Idempotent producers' state from the batches of the active segment
    /// (after a divergent suffix was cut from a replica's log).
    fn rebuild_producers(&mut self) {
        match self.log.frame_locations(self.log.active_base_offset()) {
            Ok(frames) => {
                let headers: Vec<BatchHeader> =
                    frames.into_iter().map(|(header, _)| header).collect();
                self.producers = ProducerStates::rebuilt(&headers);
            }
            Err(error) => {
                tracing::warn!(partition = %self.name, %error, "idempotent producers' state not rebuilt; they will reset");
                self.producers = ProducerStates::default();
            }
        }
    }

    fn answer_proposal(
        &mut self,
        waiter: ReplicaWaiter,
        outcome: Result<(Offset, Offset), ProposeError>,
    ) {
        if let Answer::Remote { node, id } = waiter.reply {
            let result = match outcome {
                Ok((base, last)) => Ok((base.0, last.0)),
                Err(ProposeError::NotLeader { leader }) => Err(ForwardError::NotLeader(leader)),
                // Dropped before it entered the log: nothing stored.
                Err(ProposeError::Dropped(_)) => Err(ForwardError::NotLeader(None)),
                Err(error @ ProposeError::Superseded) => {
                    Err(ForwardError::NotCommitted(error.to_string()))
                }
            };
            self.send_forward_reply(node, id, result);
            return;
        }
        let Answer::Local(reply) = waiter.reply else {
            return;
        };
        let answer = match outcome {
            Ok((base_offset, last_offset)) => {
                if let Some(producer) = &waiter.producer {
                    self.producers.record(producer, base_offset, last_offset);
                }
                Ok(self.acknowledged(waiter.record_count, waiter.bytes, base_offset, last_offset))
            }
            Err(error) => Err(produce_error(error)),
        };
        let _ = reply.send(answer);
    }

    /// Why produce is refused right now, if it is.
    fn refusal(&self) -> Option<ProduceError> {
        if !self.accepting {
            return Some(ProduceError::ShuttingDown);
        }
        if let Some(reason) = &self.fail_stopped {
            return Some(ProduceError::FailStopped {
                reason: reason.clone(),
            });
        }
        self.restarting
            .is_some()
            .then_some(ProduceError::Unavailable)
    }

    fn produce_batch(&mut self, message: ProduceBatch, context: &mut Context<Self>) {
        if let Some(error) = self.refusal() {
            let _ = message.reply.send(Err(error));
            return;
        }
        if let Some(producer) = &message.producer {
            match self.producers.check(producer) {
                Ok(Verdict::Append) => {}
                Ok(Verdict::Duplicate(stored)) => {
                    let ack = AppendAck {
                        partition: self.settings.partition,
                        base_offset: stored.base_offset,
                        last_offset: stored.last_offset,
                    };
                    let next_offset = stored.last_offset.next();
                    if next_offset <= self.log.high_watermark() {
                        let _ = message.reply.send(Ok(ack));
                    } else {
                        // The first copy is not durable yet: answer with it.
                        self.pending_acks.push_back(PendingAck {
                            next_offset,
                            ack,
                            record_count: 0,
                            bytes: 0,
                            reply: message.reply,
                        });
                    }
                    return;
                }
                Err(error) => {
                    let _ = message.reply.send(Err(error));
                    return;
                }
            }
        }
        let record_count = u64::from(message.header.record_count);
        if self.replica.is_some() {
            let waiter = ReplicaWaiter {
                reply: Answer::Local(message.reply),
                record_count,
                bytes: message.batch.len() as u64,
                producer: message.producer,
            };
            self.propose(message.batch, waiter, context);
            return;
        }
        let outcome = self
            .log
            .append_batch(&message.batch, &message.header, Term(0), now_ms());
        if let (Some(producer), Ok(outcome)) = (&message.producer, &outcome) {
            self.producers
                .record(producer, outcome.base_offset, outcome.last_offset);
        }
        self.queue_append(outcome, record_count, message.reply, context);
    }

    /// Submits an append's I/O and parks its reply until it is durable.
    fn queue_append(
        &mut self,
        outcome: Result<AppendOutcome, AppendError>,
        record_count: u64,
        reply: oneshot::Sender<Result<AppendAck, ProduceError>>,
        context: &mut Context<Self>,
    ) {
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(error) => {
                let error = match error {
                    AppendError::Empty => ProduceError::Empty,
                    AppendError::TooLarge { bytes, max } => ProduceError::TooLarge { bytes, max },
                    AppendError::Io(error) => {
                        tracing::warn!(partition = %self.name, %error, "append refused");
                        ProduceError::Unavailable
                    }
                };
                let _ = reply.send(Err(error));
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
                partition: self.settings.partition,
                base_offset: outcome.base_offset,
                last_offset: outcome.last_offset,
            },
            record_count,
            bytes,
            reply,
        });
        self.submit(outcome.jobs, context);
    }

    fn on_writer_event(&mut self, event: WriterEvent, context: &mut Context<Self>) {
        match event {
            WriterEvent::Durable { next_offset } => {
                if self.fail_stopped.is_some() {
                    return;
                }
                self.log.mark_durable(next_offset);
                // A replica's acknowledgements wait for the commit, not the
                // local fsync (`drive_replica`).
                if self.replica.is_none() {
                    self.release_pending_acks(next_offset);
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
            WriterEvent::RaftPersisted { number } => {
                if self.fail_stopped.is_some() {
                    return;
                }
                if let Some(replica) = self.replica.as_mut() {
                    let messages = replica.core.persisted(number);
                    replica.send(messages);
                }
                self.drive_replica(context);
            }
            WriterEvent::Failed { error } => self.fail_stop(error),
        }
    }
}

impl Handler<ProduceBatch> for PartitionActor {
    type Result = ();

    fn handle(&mut self, message: ProduceBatch, context: &mut Context<Self>) {
        self.guarded(context, "produce", |actor, context| {
            actor.produce_batch(message, context)
        });
    }
}

impl Handler<WriterReport> for PartitionActor {
    type Result = ();

    fn handle(&mut self, report: WriterReport, context: &mut Context<Self>) {
        if report.generation != self.writer_generation {
            return; // from the writer of a previous incarnation
        }
        self.guarded(context, "writer event", |actor, context| {
            actor.on_writer_event(report.event, context)
        });
    }
}

impl Handler<DeletionOutcome> for PartitionActor {
    type Result = ();

    fn handle(&mut self, outcome: DeletionOutcome, context: &mut Context<Self>) {
        self.guarded(context, "deletion outcome", |actor, _| {
            if !outcome.failed_paths.is_empty() {
                actor
                    .log
                    .deletion_failed(outcome.base_offset, outcome.failed_paths);
            }
            actor.publish_gauges();
        });
    }
}

impl Handler<Fetch> for PartitionActor {
    type Result = ();

    fn handle(&mut self, message: Fetch, context: &mut Context<Self>) {
        self.guarded(context, "fetch", |actor, context| {
            actor.fetch(message, context)
        });
    }
}

impl PartitionActor {
    fn fetch(&mut self, message: Fetch, context: &mut Context<Self>) {
        if !self.accepting {
            // Draining: a consumer gets "no more records" whether it was
            // parked when the drain began or arrives after it.
            let _ = message.reply.send(Err(FetchError::ShuttingDown));
            return;
        }
        if self.restarting.is_some() {
            let _ = message.reply.send(Err(FetchError::Unavailable));
            return;
        }
        if let Some(replica) = &self.replica {
            if !replica.core.serves_reads() {
                let leader = replica.leader();
                let _ = message.reply.send(Err(FetchError::NotLeader { leader }));
                return;
            }
        }
        let can_wait = !message.max_wait.is_zero()
            && self.accepting
            && self.waiting_fetches.len() + self.waiting_for_blocks.len() < WAITING_FETCHES_MAX;
        if can_wait && message.offset == self.log.high_watermark() {
            self.park_fetch(message, false, context);
            return;
        }
        let reply = self.fetch_reply(message.offset, message.max_bytes);
        if can_wait
            && self.load.failed.is_none()
            && matches!(reply, Err(FetchError::Loading { .. }))
        {
            self.park_fetch(message, true, context);
            return;
        }
        let _ = message.reply.send(reply);
    }
}

impl Handler<OffsetForTime> for PartitionActor {
    type Result = ();

    fn handle(&mut self, message: OffsetForTime, context: &mut Context<Self>) {
        self.guarded(context, "offset for time", |actor, _| {
            actor.offset_for_time(message)
        });
    }
}

impl PartitionActor {
    fn offset_for_time(&mut self, message: OffsetForTime) {
        let answer = if !self.accepting {
            Err(FetchError::ShuttingDown)
        } else if self.restarting.is_some() {
            Err(FetchError::Unavailable)
        } else {
            Ok(OffsetForTimeReply {
                lookup: self.log.offset_for_timestamp(message.timestamp_ms),
                loaded_percent: self.load.progress.percent(),
            })
        };
        let _ = message.reply.send(answer);
    }
}

impl Handler<LoadHotChunk> for PartitionActor {
    type Result = ();

    fn handle(&mut self, _message: LoadHotChunk, context: &mut Context<Self>) {
        self.guarded(context, "hot load", |actor, context| {
            actor.load_hot_chunk(context)
        });
    }
}

impl Handler<BlockLoaded> for PartitionActor {
    type Result = ();

    fn handle(&mut self, message: BlockLoaded, context: &mut Context<Self>) {
        if self.restarting.is_some() {
            return; // the reopened log lists its blocks again
        }
        self.guarded(context, "block loaded", |actor, _| {
            actor.on_block_loaded(message.base_offset, message.size_bytes, message.result)
        });
    }
}

impl Handler<Reopen> for PartitionActor {
    type Result = ();

    fn handle(&mut self, _message: Reopen, context: &mut Context<Self>) {
        if self.retired {
            return;
        }
        self.guarded(context, "reopen", |actor, context| actor.reopen(context));
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

impl Handler<GetHealth> for PartitionActor {
    type Result = ();

    fn handle(&mut self, message: GetHealth, _context: &mut Context<Self>) {
        let _ = message.reply.send(self.health());
    }
}

/// Change the group's membership (one node added or removed); answered
/// once the change is applied (forwarded to the leader from a follower).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct ChangeMembership {
    pub(crate) change: MembershipChange,
    pub(crate) reply: oneshot::Sender<Result<AppendAck, ProduceError>>,
}

impl Handler<ChangeMembership> for PartitionActor {
    type Result = ();

    fn handle(&mut self, message: ChangeMembership, context: &mut Context<Self>) {
        self.guarded(context, "change membership", |actor, context| {
            if let Some(error) = actor.refusal() {
                let _ = message.reply.send(Err(error));
                return;
            }
            let Some(replica) = actor.replica.as_ref() else {
                let _ = message
                    .reply
                    .send(Err(ProduceError::NotLeader { leader: None }));
                return;
            };
            let leader = replica.leader();
            let own_id = replica.config.id;
            match leader {
                Some(leader) if leader != own_id => {
                    let pending = PendingForward {
                        reply: message.reply,
                        record_count: 0,
                        bytes: 0,
                    };
                    let change = message.change;
                    // Short: a change is idempotent and the caller tries
                    // again (a leader that removed itself may never hear
                    // its change commit).
                    actor.forward(
                        leader,
                        |from, id| Forwarded::Change { from, id, change },
                        pending,
                        CHANGE_FORWARD_TIMEOUT,
                        context,
                    );
                }
                _ => {
                    let waiter = ReplicaWaiter {
                        reply: Answer::Local(message.reply),
                        record_count: 0,
                        bytes: 0,
                        producer: None,
                    };
                    actor.propose_change(message.change, waiter, context);
                }
            }
        });
    }
}

/// The partition's topic was deleted (after a `Drain`): stop the timers
/// and the writer, so that the actor stops once its last address drops (a
/// supervised actor with live addresses would be restarted by `stop`).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Retire;

impl Handler<Retire> for PartitionActor {
    type Result = ();

    fn handle(&mut self, _message: Retire, context: &mut Context<Self>) {
        self.retired = true;
        self.accepting = false;
        if let Some(handle) = self.maintenance.take() {
            context.cancel_future(handle);
        }
        if let Some(mut writer) = self.writer.take() {
            writer.stop();
        }
        self.serving = false;
    }
}

impl Handler<Drain> for PartitionActor {
    type Result = ();

    fn handle(&mut self, message: Drain, context: &mut Context<Self>) {
        self.guarded(context, "drain", |actor, _| actor.drain(message));
    }
}

impl PartitionActor {
    fn drain(&mut self, message: Drain) {
        self.accepting = false;
        self.stop_replica(ProduceError::ShuttingDown);
        // A consumer waiting at the end gets "no more records" now.
        for fetch in std::mem::take(&mut self.waiting_fetches)
            .into_iter()
            .chain(std::mem::take(&mut self.waiting_for_blocks))
        {
            let _ = fetch.reply.send(Err(FetchError::ShuttingDown));
        }
        self.drain_waiters.push(message.reply);
        self.finish_drain_if_idle();
    }
}

impl Handler<TakeCompactionInput> for PartitionActor {
    type Result = ();

    fn handle(&mut self, message: TakeCompactionInput, context: &mut Context<Self>) {
        self.guarded(context, "take compaction input", |actor, _| {
            let answer = actor.take_compaction_input(&message);
            let _ = message.reply.send(answer);
        });
    }
}

impl PartitionActor {
    fn take_compaction_input(
        &mut self,
        message: &TakeCompactionInput,
    ) -> Result<Option<CompactionInput>, String> {
        if let Some(reason) = &self.fail_stopped {
            return Err(format!("fail-stopped: {reason}"));
        }
        if let Some(reason) = &self.restarting {
            return Err(format!("restarting: {reason}"));
        }
        if self.log.unloaded_blocks().next().is_some() {
            return Err("sealed blocks are still loading".to_owned());
        }
        if !self.load.quarantined.is_empty() {
            return Err(
                "a sealed block is damaged (quarantined); damaged data is never compacted"
                    .to_owned(),
            );
        }
        if let Some(minimum) = message.min_dirty_ratio {
            if self.log.dirty_ratio() < minimum {
                return Ok(None);
            }
        }
        Ok(self
            .log
            .compaction_input(now_ms(), message.delete_retention))
    }
}

impl Handler<SwapCompacted> for PartitionActor {
    type Result = ();

    fn handle(&mut self, message: SwapCompacted, context: &mut Context<Self>) {
        self.guarded(context, "swap compacted", |actor, _| {
            let SwapCompacted {
                mut compacted,
                reply,
            } = message;
            let answer = match actor.log.swap_compacted(&mut compacted) {
                Ok(()) => Ok(compacted),
                Err(error) => {
                    actor.log.compaction_aborted();
                    Err((compacted, error))
                }
            };
            let _ = reply.send(answer);
            actor.publish_gauges();
        });
    }
}

impl Handler<CompactionAborted> for PartitionActor {
    type Result = ();

    fn handle(&mut self, _message: CompactionAborted, context: &mut Context<Self>) {
        self.guarded(context, "compaction aborted", |actor, _| {
            actor.log.compaction_aborted()
        });
    }
}

/// Whether partition handlers are also timed in their thread's CPU time
/// (`millrace_partition_handler_cpu_seconds`): set the environment variable
/// `MILLRACE_HANDLER_CPU_TIME=1` before the runtime starts. Read once.
fn handler_cpu_timing() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        std::env::var_os("MILLRACE_HANDLER_CPU_TIME").is_some_and(|value| value == "1")
    })
}

/// CPU time the calling thread has used (`CLOCK_THREAD_CPUTIME_ID`): a
/// handler's own work, whatever else the machine's cores were doing.
fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec to write; the clock id is a constant.
    let result = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    if result != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        now.tv_sec.max(0) as u64,
        now.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}
