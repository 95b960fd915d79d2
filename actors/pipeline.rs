//! The actors that run a pipeline.
//!
//! ```text
//!   PipelineSupervisor (one per pipeline: starts, scales and stops the others)
//!        │
//!   PipelineMember × members ──WriteBatch (bounded mailbox)──▶ SinkStage
//!   (own thread each: fetch,                                   (own thread: dead letters,
//!    operators, checkpoints)                                    side outputs, sink write,
//!        ▲   AssignmentChange                                   commit through the coordinator)
//!        └──────────────── GroupCoordinator ◀── Commit / Revoked ──┘
//! ```
//!
//! A member owns the operator instances of the partitions it is assigned
//! (one chain per partition, so keyed state never crosses threads). It
//! fetches a partition's next batch only once the previous one has been
//! accepted by the sink stage's mailbox, whose capacity is
//! `in_flight_batches`: a slow sink fills the mailbox and stops the
//! fetching. Memory is bounded by `members × in_flight_batches` batches.
//!
//! The sink stage is the only place a [`CommitToken`] is built: after the
//! batch's dead letters are durable in `<pipeline>.dlq` and its sink write
//! has completed. The commit carries the keyed state checkpointed with that
//! batch, so state and offset are stored in one transaction.

use super::group::{AssignmentChange, Commit, GroupCoordinator, GroupError, Join, Leave, Revoked};
use super::mailbox::Gated;
use super::partition::{Describe, PartitionActor};
use crate::error::FetchError;
use crate::metrics::PipelineMetrics;
use crate::offsets::{CommitToken, OffsetStore};
use crate::pipeline::config::{LatePolicy, OffsetReset, OperatorConfig, PipelineConfig};
use crate::pipeline::dlq::DlqEntry;
use crate::pipeline::{Emitter, Event, Operator, OperatorError, Sink, SinkBatch, SinkError};
use crate::runtime::{fetch_from, FetchOptions, Producer};
use crate::types::{FetchedRecord, Offset, PartitionId, Record};
use actix::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How long one source fetch waits for new records.
const FETCH_WAIT: Duration = Duration::from_millis(200);
/// Wait before fetching again after a retryable fetch error.
const FETCH_RETRY_WAIT: Duration = Duration::from_millis(100);
/// Longest wait between two retries.
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Builds one operator instance (one per assigned partition).
pub(crate) type OperatorBuilder =
    Arc<dyn Fn() -> Result<Box<dyn Operator>, String> + Send + Sync + 'static>;

/// Everything a pipeline's actors share; immutable once built.
pub(crate) struct PipelineSpec {
    pub(crate) config: PipelineConfig,
    pub(crate) source_topic: Arc<str>,
    pub(crate) source_partitions: Vec<Gated<PartitionActor>>,
    /// One builder per `[[pipeline.operator]]`, in order.
    pub(crate) operators: Vec<OperatorBuilder>,
    pub(crate) dlq: Producer,
    pub(crate) side_outputs: HashMap<String, Producer>,
    /// The keyed-state tree, when an operator keeps state.
    pub(crate) state: Option<sled::Tree>,
    pub(crate) coordinator: Addr<GroupCoordinator>,
    /// For reading committed offsets (only the coordinator writes them).
    pub(crate) offsets: OffsetStore,
    pub(crate) metrics: Arc<PipelineMetrics>,
}

impl PipelineSpec {
    fn group(&self) -> &str {
        &self.config.source.group
    }

    fn backoff(&self, attempt: u32) -> Duration {
        self.config
            .retry_backoff
            .saturating_mul(1u32 << attempt.min(16))
            .min(RETRY_BACKOFF_MAX)
    }
}

// ---------------------------------------------------------------------------
// Messages.

/// What to do once a batch is written and committed.
pub(crate) enum After {
    Nothing,
    /// Tell the coordinator the member is done with these partitions.
    Revoked(Vec<PartitionId>),
    /// Leave the group for the member, then answer its stop.
    Stopped(oneshot::Sender<()>),
}

/// The output of one source batch, handed from a member to the sink stage.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct WriteBatch {
    member: String,
    partition: PartitionId,
    first_offset: Offset,
    next_offset: Offset,
    events: Vec<Event>,
    /// The source records as read (shared bytes), for dead letters of
    /// records the sink refuses: an entry keeps the original record.
    originals: Vec<FetchedRecord>,
    dead_letters: Vec<DlqEntry>,
    side_outputs: Vec<(String, Event)>,
    /// Commit `next_offset` after the write, with these state changes.
    commit: Option<crate::offsets::StateWrites>,
    after: After,
}

/// The sink's own record of progress for a partition.
#[derive(Message)]
#[rtype(result = "Result<Option<Offset>, SinkError>")]
pub(crate) struct AppliedOffset {
    partition: PartitionId,
}

/// Stops a member: it finishes in-flight batches, commits and leaves.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct StopMember {
    reply: oneshot::Sender<()>,
}

/// Stops the sink stage (after the batches already in its mailbox).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct StopSinkStage;

/// Sets the number of members.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Scale {
    pub(crate) members: u32,
    pub(crate) reply: oneshot::Sender<()>,
}

/// Stops every member, then the sink stage.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct StopPipeline {
    pub(crate) reply: crossbeam_channel::Sender<StoppedPipeline>,
}

/// A partition's start position has been resolved.
#[derive(Message)]
#[rtype(result = "()")]
struct Started {
    partition: PartitionId,
    result: Result<Offset, String>,
}

// ---------------------------------------------------------------------------
// The sink stage.

pub(crate) struct SinkStage {
    spec: Arc<PipelineSpec>,
    sink: Box<dyn Sink>,
    /// Set by an error that retries could not fix: nothing more is written
    /// or committed (the source offsets stay where they were, so a restart
    /// resumes from the last good batch).
    failed: Option<String>,
}

impl SinkStage {
    pub(crate) fn new(spec: Arc<PipelineSpec>, sink: Box<dyn Sink>) -> SinkStage {
        SinkStage {
            spec,
            sink,
            failed: None,
        }
    }

    /// Produces records to a topic, retrying retryable errors.
    fn produce(&self, producer: &Producer, records: Vec<Record>) -> Result<(), String> {
        let mut attempt = 0;
        loop {
            match producer.send_batch_blocking(records.clone()) {
                Ok(_) => return Ok(()),
                Err(error) if attempt < self.spec.config.retries => {
                    tracing::warn!(pipeline = %self.spec.config.name, topic = producer.topic(), %error, attempt, "produce failed; retrying");
                    std::thread::sleep(self.spec.backoff(attempt));
                    attempt += 1;
                }
                Err(error) => return Err(format!("producing to {}: {error}", producer.topic())),
            }
        }
    }

    /// One write attempt, with a panic in the sink turned into an error.
    fn write_once(&mut self, batch: &SinkBatch<'_>) -> Result<(), SinkError> {
        match std::panic::catch_unwind(AssertUnwindSafe(|| self.sink.write(batch))) {
            Ok(result) => result,
            Err(panic) => Err(SinkError::retryable(format!(
                "the sink panicked: {}",
                panic_text(&*panic)
            ))),
        }
    }

    /// Writes with bounded retries; returns the last error and the failure.
    fn write_with_retries(&mut self, batch: &SinkBatch<'_>) -> Result<(), (SinkError, Failure)> {
        let mut attempt = 0;
        let mut first_failed_ms = None;
        loop {
            let started = Instant::now();
            let result = self.write_once(batch);
            self.spec
                .metrics
                .sink_write_seconds
                .observe(started.elapsed());
            match result {
                Ok(()) => return Ok(()),
                Err(error) if error.retryable && attempt < self.spec.config.retries => {
                    first_failed_ms.get_or_insert_with(now_ms);
                    self.spec.metrics.retries_total.fetch_add(1, Relaxed);
                    tracing::warn!(pipeline = %self.spec.config.name, partition = %batch.partition, %error, attempt, "sink write failed; retrying");
                    std::thread::sleep(self.spec.backoff(attempt));
                    attempt += 1;
                }
                Err(error) => {
                    let failure = Failure {
                        error: error.message.clone(),
                        attempts: attempt + 1,
                        first_failed_ms: first_failed_ms.unwrap_or_else(now_ms),
                    };
                    return Err((error, failure));
                }
            }
        }
    }

    /// Writes the batch; if it keeps failing, writes it record by record so
    /// that only the records that fail on their own become dead letters.
    fn write(&mut self, batch: &WriteBatch) -> Result<Vec<DlqEntry>, String> {
        if batch.events.is_empty() {
            return Ok(Vec::new());
        }
        let spec = Arc::clone(&self.spec);
        let whole = SinkBatch {
            pipeline: &spec.config.name,
            source_topic: &spec.source_topic,
            partition: batch.partition,
            first_offset: batch.first_offset,
            next_offset: batch.next_offset,
            events: &batch.events,
        };
        let Err((error, _)) = self.write_with_retries(&whole) else {
            return Ok(Vec::new());
        };
        tracing::warn!(pipeline = %spec.config.name, partition = %batch.partition, %error, "the batch keeps failing; writing it record by record");
        let mut dead_letters = Vec::new();
        let mut start = 0;
        while start < batch.events.len() {
            let position = batch.events[start].position;
            let end = start
                + batch.events[start..]
                    .iter()
                    .take_while(|event| event.position == position)
                    .count();
            let events = &batch.events[start..end];
            let single = SinkBatch {
                pipeline: &spec.config.name,
                source_topic: &spec.source_topic,
                partition: batch.partition,
                first_offset: position,
                next_offset: position.next(),
                events,
            };
            if let Err((error, failure)) = self.write_with_retries(&single) {
                if error.retryable {
                    // Not the record's fault (I/O, a service down): stop here.
                    return Err(format!("sink write failed: {error}"));
                }
                dead_letters.push(dead_letter(
                    &spec.config.name,
                    &batch.originals,
                    &events[0],
                    "sink",
                    &failure,
                ));
            }
            start = end;
        }
        Ok(dead_letters)
    }

    fn handle_batch(&mut self, batch: &mut WriteBatch) -> Result<(), String> {
        let spec = Arc::clone(&self.spec);
        let metrics = &spec.metrics;
        // 1. Dead letters first: durable before the offset that skips them commits.
        if !batch.dead_letters.is_empty() {
            let records = batch.dead_letters.iter().map(DlqEntry::to_record).collect();
            self.produce(&self.spec.dlq, records)?;
            metrics
                .dead_letters_total
                .fetch_add(batch.dead_letters.len() as u64, Relaxed);
        }
        // 2. Late records to their side outputs.
        let mut by_topic: BTreeMap<&str, Vec<Record>> = BTreeMap::new();
        for (topic, event) in &batch.side_outputs {
            by_topic
                .entry(topic.as_str())
                .or_default()
                .push(record_of(event));
        }
        for (topic, records) in by_topic {
            let producer = self
                .spec
                .side_outputs
                .get(topic)
                .ok_or_else(|| format!("no producer for side output {topic}"))?;
            self.produce(producer, records)?;
        }
        // 3. The sink.
        let dead_letters = self.write(batch)?;
        if !dead_letters.is_empty() {
            let records = dead_letters.iter().map(DlqEntry::to_record).collect();
            self.produce(&self.spec.dlq, records)?;
            metrics
                .dead_letters_total
                .fetch_add(dead_letters.len() as u64, Relaxed);
        }
        metrics
            .records_out_total
            .fetch_add(batch.events.len() as u64, Relaxed);
        // 4. Only now may the offset be committed.
        if let Some(state) = batch.commit.take() {
            let token = CommitToken::after_sink_write(
                self.spec.group(),
                &self.spec.source_topic,
                batch.partition,
                batch.next_offset,
            );
            let state = self
                .spec
                .state
                .as_ref()
                .filter(|_| !state.is_empty())
                .map(|tree| (tree.clone(), state));
            let commit = Commit {
                member: batch.member.clone(),
                token,
                state,
            };
            // Crash tests stop the process exactly here: the sink write is
            // done, the commit is not. `return(abort)` aborts the process.
            fail::fail_point!("pipeline::before_commit", |action| {
                if action.as_deref() == Some("abort") {
                    std::process::abort();
                }
                Err("failpoint pipeline::before_commit".to_owned())
            });
            let answer = crate::runtime::block_on(self.spec.coordinator.send(commit));
            tracing::debug!(pipeline = %spec.config.name, partition = %batch.partition, ?answer, "sink stage: committed");
            match answer {
                Ok(Ok(offset)) => {
                    if let Some(gauges) =
                        self.spec.metrics.partitions.get(batch.partition.0 as usize)
                    {
                        gauges.committed.store(offset.0, Relaxed);
                    }
                }
                Ok(Err(GroupError::NotOwner { .. })) => {
                    // Another member owns it now and resumes from the last commit.
                    tracing::warn!(pipeline = %self.spec.config.name, partition = %batch.partition, "commit refused: the partition moved to another member");
                }
                Ok(Err(error)) => return Err(format!("commit failed: {error}")),
                Err(_) => return Err("the group coordinator has stopped".to_owned()),
            }
        }
        Ok(())
    }
}

impl Actor for SinkStage {
    type Context = Context<Self>;

    fn started(&mut self, context: &mut Self::Context) {
        // Unbounded here: members hold one of `in_flight_batches` permits
        // per batch until it is written (actors/mailbox.rs says why).
        context.set_mailbox_capacity(0);
    }
}

impl Handler<WriteBatch> for SinkStage {
    type Result = ();

    fn handle(&mut self, mut batch: WriteBatch, _: &mut Self::Context) {
        tracing::debug!(pipeline = %self.spec.config.name, partition = %batch.partition, first = %batch.first_offset, next = %batch.next_offset, events = batch.events.len(), commit = batch.commit.is_some(), "sink stage: batch");
        if self.failed.is_none() {
            if let Err(reason) = self.handle_batch(&mut batch) {
                tracing::error!(pipeline = %self.spec.config.name, partition = %batch.partition, %reason, "pipeline stopped writing; its source offsets stay at the last completed batch");
                self.spec.metrics.failed.store(1, Relaxed);
                self.failed = Some(reason);
            }
        }
        match std::mem::replace(&mut batch.after, After::Nothing) {
            After::Nothing => {}
            After::Revoked(partitions) => self.spec.coordinator.do_send(Revoked {
                group: self.spec.group().to_owned(),
                member: batch.member,
                partitions,
            }),
            After::Stopped(reply) => {
                self.spec.coordinator.do_send(Leave {
                    group: self.spec.group().to_owned(),
                    member: batch.member,
                });
                let _ = reply.send(());
            }
        }
    }
}

impl Handler<AppliedOffset> for SinkStage {
    type Result = Result<Option<Offset>, SinkError>;

    fn handle(&mut self, message: AppliedOffset, _: &mut Self::Context) -> Self::Result {
        self.sink.applied_offset(
            &self.spec.config.name,
            &self.spec.source_topic,
            message.partition,
        )
    }
}

impl Handler<StopSinkStage> for SinkStage {
    type Result = ();

    fn handle(&mut self, _: StopSinkStage, context: &mut Self::Context) {
        context.stop();
    }
}

fn record_of(event: &Event) -> Record {
    Record {
        key: event.key.clone(),
        value: event.value.clone(),
        headers: event.headers.clone(),
        timestamp_ms: Some(event.timestamp_ms),
    }
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|text| (*text).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-text panic".to_owned())
}

// ---------------------------------------------------------------------------
// Members.

/// One assigned partition of a member.
struct PartitionTask {
    operators: Vec<Box<dyn Operator>>,
    /// Next offset to fetch (`None` until the start position is known).
    position: Option<Offset>,
    /// A fetch, or the hand-off of its batch to the sink stage, is under way.
    busy: bool,
    /// The coordinator asked for it back.
    revoking: bool,
    /// The last offset handed to the sink stage with a commit request.
    committed_through: Option<Offset>,
    last_commit: Instant,
}

/// A member of the pipeline's consumer group.
pub(crate) struct PipelineMember {
    spec: Arc<PipelineSpec>,
    id: String,
    sink: Gated<SinkStage>,
    tasks: BTreeMap<PartitionId, PartitionTask>,
    stopping: Option<oneshot::Sender<()>>,
}

impl PipelineMember {
    pub(crate) fn new(spec: Arc<PipelineSpec>, id: String, sink: Gated<SinkStage>) -> Self {
        PipelineMember {
            spec,
            id,
            sink,
            tasks: BTreeMap::new(),
            stopping: None,
        }
    }

    fn build_operators(&self) -> Result<Vec<Box<dyn Operator>>, String> {
        self.spec.operators.iter().map(|build| build()).collect()
    }

    /// Restores the operators' state for `partition` from the state tree.
    fn restore(
        &self,
        partition: PartitionId,
        operators: &mut [Box<dyn Operator>],
    ) -> Result<(), String> {
        let Some(tree) = &self.spec.state else {
            return Ok(());
        };
        // Operator index -> its (key, value) entries.
        type Entries = Vec<(Vec<u8>, Vec<u8>)>;
        let mut per_operator: BTreeMap<u16, Entries> = BTreeMap::new();
        for entry in tree.scan_prefix(partition.0.to_be_bytes()) {
            let (key, value) = entry.map_err(|error| format!("reading state: {error}"))?;
            if key.len() < 6 {
                return Err(format!("damaged state key of {} bytes", key.len()));
            }
            let index = u16::from_be_bytes([key[4], key[5]]);
            per_operator
                .entry(index)
                .or_default()
                .push((key[6..].to_vec(), value.to_vec()));
        }
        for (index, entries) in per_operator {
            let operator = operators
                .get_mut(index as usize)
                .ok_or_else(|| format!("state for operator {index}, which does not exist"))?;
            operator
                .restore(entries)
                .map_err(|error| format!("restoring operator {index}: {error}"))?;
        }
        Ok(())
    }

    /// State changes of every operator since its last checkpoint, with keys
    /// prefixed by partition and operator index.
    fn checkpoint(task: &mut PartitionTask, partition: PartitionId) -> crate::offsets::StateWrites {
        let mut changes = Vec::new();
        let mut deltas = Vec::new();
        for (index, operator) in task.operators.iter_mut().enumerate() {
            if !operator.is_stateful() {
                continue;
            }
            deltas.clear();
            operator.checkpoint(&mut deltas);
            for delta in deltas.drain(..) {
                let mut key = Vec::with_capacity(6 + delta.key.len());
                key.extend_from_slice(&partition.0.to_be_bytes());
                key.extend_from_slice(&(index as u16).to_be_bytes());
                key.extend_from_slice(&delta.key);
                changes.push((key, delta.value));
            }
        }
        changes
    }

    fn start_partition(&mut self, partition: PartitionId, context: &mut Context<Self>) {
        let mut operators = match self.build_operators() {
            Ok(operators) => operators,
            Err(error) => {
                tracing::error!(pipeline = %self.spec.config.name, %partition, %error, "cannot build the operators");
                self.spec.metrics.failed.store(1, Relaxed);
                return;
            }
        };
        if let Err(error) = self.restore(partition, &mut operators) {
            tracing::error!(pipeline = %self.spec.config.name, %partition, %error, "cannot restore keyed state; the partition is not processed");
            self.spec.metrics.failed.store(1, Relaxed);
            return;
        }
        self.tasks.insert(
            partition,
            PartitionTask {
                operators,
                position: None,
                busy: true,
                revoking: false,
                committed_through: None,
                last_commit: Instant::now(),
            },
        );
        let spec = Arc::clone(&self.spec);
        let sink = self.sink.clone();
        let address = context.address();
        actix::spawn(async move {
            let result = start_position(&spec, &sink, partition).await;
            address.do_send(Started { partition, result });
        });
    }

    fn schedule_fetch(&mut self, partition: PartitionId, context: &mut Context<Self>) {
        let Some(task) = self.tasks.get_mut(&partition) else {
            return;
        };
        let Some(position) = task.position else {
            return;
        };
        if task.busy || task.revoking || self.stopping.is_some() {
            return;
        }
        task.busy = true;
        let Some(address) = self
            .spec
            .source_partitions
            .get(partition.0 as usize)
            .cloned()
        else {
            return;
        };
        let options = FetchOptions {
            max_bytes: self.spec.config.fetch_max_bytes as usize,
            max_wait: FETCH_WAIT,
        };
        context.spawn(
            async move { fetch_from(&address, position, options).await }
                .into_actor(self)
                .map(move |result, member, context| member.on_fetched(partition, result, context)),
        );
    }

    fn on_fetched(
        &mut self,
        partition: PartitionId,
        result: Result<crate::runtime::FetchResult, FetchError>,
        context: &mut Context<Self>,
    ) {
        let Some(task) = self.tasks.get_mut(&partition) else {
            return;
        };
        task.busy = false;
        match result {
            Ok(fetched) => {
                if let Some(gauges) = self.spec.metrics.partitions.get(partition.0 as usize) {
                    gauges
                        .high_watermark
                        .store(fetched.high_watermark.0, Relaxed);
                }
                if fetched.records.is_empty() {
                    self.maybe_commit_idle(partition, context);
                } else {
                    self.process(partition, fetched.records, fetched.next_offset, context);
                    return;
                }
            }
            Err(FetchError::ShuttingDown) => {}
            Err(FetchError::OffsetOutOfRange {
                requested,
                log_start_offset,
                high_watermark,
            }) => {
                let reset = match self.spec.config.source.auto_offset_reset {
                    OffsetReset::Earliest => log_start_offset,
                    OffsetReset::Latest => high_watermark,
                };
                tracing::warn!(pipeline = %self.spec.config.name, %partition, %requested, %reset, "offset out of range; resetting per auto_offset_reset");
                task.position = Some(reset);
            }
            Err(error) => {
                tracing::warn!(pipeline = %self.spec.config.name, %partition, %error, "fetch failed; retrying");
                task.busy = true;
                context.run_later(FETCH_RETRY_WAIT, move |member, context| {
                    if let Some(task) = member.tasks.get_mut(&partition) {
                        task.busy = false;
                    }
                    member.after_step(partition, context);
                });
                return;
            }
        }
        self.after_step(partition, context);
    }

    /// The partition is idle: what next (fetch again, finish a revocation,
    /// or finish stopping).
    fn after_step(&mut self, partition: PartitionId, context: &mut Context<Self>) {
        let Some(task) = self.tasks.get(&partition) else {
            return;
        };
        if task.busy {
            return;
        }
        if task.revoking {
            self.finish_partition(partition, After::Revoked(vec![partition]));
            return;
        }
        if self.stopping.is_some() {
            self.try_finish_stop(context);
            return;
        }
        self.schedule_fetch(partition, context);
    }

    /// Commits what was processed but not yet committed after an empty poll.
    fn maybe_commit_idle(&mut self, partition: PartitionId, context: &mut Context<Self>) {
        let Some(task) = self.tasks.get_mut(&partition) else {
            return;
        };
        let Some(position) = task.position else {
            return;
        };
        if task.committed_through == Some(position) {
            return;
        }
        task.committed_through = Some(position);
        task.last_commit = Instant::now();
        let state = Self::checkpoint(task, partition);
        let batch = self.empty_batch(partition, position, Some(state), After::Nothing);
        self.hand_off(partition, batch, context);
    }

    fn empty_batch(
        &self,
        partition: PartitionId,
        position: Offset,
        commit: Option<crate::offsets::StateWrites>,
        after: After,
    ) -> WriteBatch {
        WriteBatch {
            member: self.id.clone(),
            partition,
            first_offset: position,
            next_offset: position,
            events: Vec::new(),
            originals: Vec::new(),
            dead_letters: Vec::new(),
            side_outputs: Vec::new(),
            commit,
            after,
        }
    }

    /// Hands a batch to the sink stage; the partition stays busy until the
    /// stage's mailbox has room for it (backpressure): one of the
    /// `in_flight_batches` permits, held until the stage has handled the
    /// batch. The batch is queued as soon as the permit comes, so the
    /// partition fetches and processes its next batch while this one is
    /// written; a partition's batches, and its final commit (`do_send`,
    /// later), still reach the stage in order.
    fn hand_off(&mut self, partition: PartitionId, batch: WriteBatch, context: &mut Context<Self>) {
        if let Some(task) = self.tasks.get_mut(&partition) {
            task.busy = true;
        }
        let sink = self.sink.clone();
        context.spawn(
            async move {
                let permit = sink.permit().await;
                (sink, permit)
            }
            .into_actor(self)
            .map(move |(sink, permit), member, context| {
                // Queued now (the stage's actix mailbox is unbounded).
                let handled = sink.address().send(batch);
                actix::spawn(async move {
                    let _ = handled.await;
                    drop(permit);
                });
                if let Some(task) = member.tasks.get_mut(&partition) {
                    task.busy = false;
                }
                member.after_step(partition, context);
            }),
        );
    }

    /// Sends the partition's final commit (with its state) and forgets it.
    fn finish_partition(&mut self, partition: PartitionId, after: After) {
        let Some(mut task) = self.tasks.remove(&partition) else {
            return;
        };
        // A partition that never started has nothing to commit, but the
        // answer (`after`) must still come.
        let commit = task
            .position
            .map(|_| Self::checkpoint(&mut task, partition));
        let position = task.position.unwrap_or(Offset(0));
        let batch = self.empty_batch(partition, position, commit, after);
        self.sink.address().do_send(batch);
    }

    fn try_finish_stop(&mut self, context: &mut Context<Self>) {
        if self.tasks.values().any(|task| task.busy) {
            return;
        }
        let partitions: Vec<PartitionId> = self.tasks.keys().copied().collect();
        for partition in partitions {
            self.finish_partition(partition, After::Nothing);
        }
        if let Some(reply) = self.stopping.take() {
            // Behind every final commit in the stage's mailbox.
            let (done, finished) = oneshot::channel();
            let batch = self.empty_batch(PartitionId(0), Offset(0), None, After::Stopped(done));
            // The stage leaves the group for us once the final commits
            // above are through (a Leave first would make them refused).
            self.sink.address().do_send(batch);
            actix::spawn(async move {
                let _ = finished.await;
                let _ = reply.send(());
            });
            context.stop();
        }
    }

    /// Runs the operators over one fetched batch and hands the result on.
    fn process(
        &mut self,
        partition: PartitionId,
        records: Vec<FetchedRecord>,
        next_offset: Offset,
        context: &mut Context<Self>,
    ) {
        let spec = Arc::clone(&self.spec);
        let Some(task) = self.tasks.get_mut(&partition) else {
            return;
        };
        let first_offset = records.first().map_or(next_offset, |record| record.offset);
        spec.metrics
            .records_in_total
            .fetch_add(records.len() as u64, Relaxed);
        let mut events: Vec<Event> = records
            .iter()
            .map(|record| Event::from_fetched(&spec.source_topic, partition, record.clone()))
            .collect();
        let mut dead_letters = Vec::new();
        let mut side_outputs = Vec::new();
        let mut emitter = Emitter::new();
        for (index, operator) in task.operators.iter_mut().enumerate() {
            let stage = stage_name(&spec.config.operators[index], index);
            emitter.out = Vec::with_capacity(events.len());
            for event in &events {
                let kept = emitter.out.len();
                if let Err(failure) =
                    process_with_retries(&spec, operator.as_mut(), event, &mut emitter)
                {
                    emitter.out.truncate(kept);
                    dead_letters.push(dead_letter(
                        &spec.config.name,
                        &records,
                        event,
                        &stage,
                        &failure,
                    ));
                }
            }
            if let Err(error) = catch(|| operator.on_batch_end(&mut emitter)) {
                tracing::error!(pipeline = %spec.config.name, %partition, %stage, %error, "operator failed at the end of a batch");
            }
            for (event, reason) in emitter.take_late() {
                spec.metrics.late_total.fetch_add(1, Relaxed);
                match late_policy(&spec.config.operators[index]) {
                    Some(LatePolicy::SideOutput(topic)) => {
                        side_outputs.push((topic.clone(), event))
                    }
                    _ => {
                        let failure = Failure {
                            error: reason,
                            attempts: 1,
                            first_failed_ms: now_ms(),
                        };
                        dead_letters.push(dead_letter(
                            &spec.config.name,
                            &records,
                            &event,
                            &stage,
                            &failure,
                        ));
                    }
                }
            }
            events = emitter.take();
        }
        task.position = Some(next_offset);
        let due = spec.config.commit_interval.is_zero()
            || task.last_commit.elapsed() >= spec.config.commit_interval;
        let commit = due.then(|| {
            task.last_commit = Instant::now();
            task.committed_through = Some(next_offset);
            Self::checkpoint(task, partition)
        });
        let batch = WriteBatch {
            member: self.id.clone(),
            partition,
            first_offset,
            next_offset,
            events,
            originals: records,
            dead_letters,
            side_outputs,
            commit,
            after: After::Nothing,
        };
        self.hand_off(partition, batch, context);
    }
}

fn stage_name(config: &OperatorConfig, index: usize) -> String {
    match config {
        OperatorConfig::Custom { name, .. } => format!("operator[{index}] custom {name}"),
        other => format!("operator[{index}] {}", other.type_name()),
    }
}

fn late_policy(config: &OperatorConfig) -> Option<&LatePolicy> {
    match config {
        OperatorConfig::Window(window) => Some(&window.late),
        _ => None,
    }
}

fn catch<T>(body: impl FnOnce() -> Result<T, OperatorError>) -> Result<T, OperatorError> {
    std::panic::catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|panic| {
        Err(OperatorError::permanent(format!(
            "the operator panicked: {}",
            panic_text(&*panic)
        )))
    })
}

/// Why a record is being dead-lettered.
struct Failure {
    error: String,
    attempts: u32,
    first_failed_ms: i64,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}

/// Calls the operator, retrying retryable errors with backoff.
fn process_with_retries(
    spec: &PipelineSpec,
    operator: &mut dyn Operator,
    event: &Event,
    emitter: &mut Emitter,
) -> Result<(), Failure> {
    let mut attempt = 0;
    let mut first_failed_ms = None;
    loop {
        let kept = emitter.out.len();
        match catch(|| operator.process(event, emitter)) {
            Ok(()) => return Ok(()),
            Err(error) => {
                let first = *first_failed_ms.get_or_insert_with(now_ms);
                if !(error.retryable && attempt < spec.config.retries) {
                    return Err(Failure {
                        error: error.message,
                        attempts: attempt + 1,
                        first_failed_ms: first,
                    });
                }
                emitter.out.truncate(kept);
                spec.metrics.retries_total.fetch_add(1, Relaxed);
                std::thread::sleep(spec.backoff(attempt));
                attempt += 1;
            }
        }
    }
}

/// A dead letter keeps the source record as it was read, whatever the
/// operators had made of it.
fn dead_letter(
    pipeline: &str,
    records: &[FetchedRecord],
    event: &Event,
    stage: &str,
    failure: &Failure,
) -> DlqEntry {
    let original = records
        .binary_search_by_key(&event.position, |record| record.offset)
        .ok()
        .map(|index| &records[index]);
    let mut entry = entry_from_event(event, pipeline, stage, failure);
    if let Some(record) = original {
        entry.key = record.key.clone();
        entry.value = record.value.clone();
        entry.headers = record.headers.clone();
        entry.timestamp_ms = record.timestamp_ms;
    }
    entry
}

/// A dead letter holding `event` itself (when the source record is not at hand).
fn entry_from_event(event: &Event, pipeline: &str, stage: &str, failure: &Failure) -> DlqEntry {
    DlqEntry {
        origin: event.origin.clone(),
        pipeline: pipeline.to_owned(),
        stage: stage.to_owned(),
        error: failure.error.clone(),
        attempts: failure.attempts,
        first_failed_ms: failure.first_failed_ms,
        failed_ms: now_ms(),
        key: event.key.clone(),
        value: event.value.clone(),
        headers: event.headers.clone(),
        timestamp_ms: event.timestamp_ms,
    }
}

/// Where a newly assigned partition starts: the committed offset (with its
/// state), moved forward to what an effectively-once sink has already
/// applied when no state depends on the skipped records; with no commit,
/// `auto_offset_reset`.
async fn start_position(
    spec: &PipelineSpec,
    sink: &Gated<SinkStage>,
    partition: PartitionId,
) -> Result<Offset, String> {
    let committed = spec
        .offsets
        .committed(spec.group(), &spec.source_topic, partition)
        .map_err(|error| error.to_string())?;
    let applied = if spec.state.is_some() {
        None
    } else {
        sink.send(AppliedOffset { partition })
            .await
            .map_err(|_| "the sink stage has stopped".to_owned())?
            .map_err(|error| error.to_string())?
    };
    if let Some(offset) = committed.max(applied) {
        return Ok(offset);
    }
    let address = spec
        .source_partitions
        .get(partition.0 as usize)
        .ok_or_else(|| format!("no partition {partition}"))?;
    let offsets = address
        .send(Describe)
        .await
        .map_err(|_| "the source partition has stopped".to_owned())?;
    Ok(match spec.config.source.auto_offset_reset {
        OffsetReset::Earliest => offsets.log_start_offset,
        OffsetReset::Latest => offsets.high_watermark,
    })
}

impl Actor for PipelineMember {
    type Context = Context<Self>;

    fn started(&mut self, context: &mut Self::Context) {
        let join = Join {
            group: self.spec.group().to_owned(),
            topic: self.spec.source_topic.to_string(),
            partitions: self.spec.source_partitions.len() as u32,
            member: self.id.clone(),
            notify: context.address().recipient(),
        };
        self.spec.coordinator.do_send(join);
    }
}

impl Handler<AssignmentChange> for PipelineMember {
    type Result = ();

    fn handle(&mut self, change: AssignmentChange, context: &mut Self::Context) {
        for partition in change.revoked {
            match self.tasks.get_mut(&partition) {
                Some(task) => {
                    task.revoking = true;
                    self.after_step(partition, context);
                }
                None => self.spec.coordinator.do_send(Revoked {
                    group: self.spec.group().to_owned(),
                    member: self.id.clone(),
                    partitions: vec![partition],
                }),
            }
        }
        for partition in change.assigned {
            self.start_partition(partition, context);
        }
    }
}

impl Handler<Started> for PipelineMember {
    type Result = ();

    fn handle(&mut self, started: Started, context: &mut Self::Context) {
        let partition = started.partition;
        let Some(task) = self.tasks.get_mut(&partition) else {
            return;
        };
        task.busy = false;
        match started.result {
            Ok(offset) => {
                tracing::info!(pipeline = %self.spec.config.name, member = %self.id, %partition, %offset, "partition assigned");
                task.position = Some(offset);
                // Unknown whether this position is committed (it may come
                // from auto_offset_reset): the first idle poll commits it.
                task.committed_through = None;
                self.after_step(partition, context);
            }
            Err(error) => {
                tracing::error!(pipeline = %self.spec.config.name, %partition, %error, "cannot find where to start; the partition is not processed");
                self.spec.metrics.failed.store(1, Relaxed);
                if task.revoking || self.stopping.is_some() {
                    self.after_step(partition, context);
                }
            }
        }
    }
}

impl Handler<StopMember> for PipelineMember {
    type Result = ();

    fn handle(&mut self, stop: StopMember, context: &mut Self::Context) {
        self.stopping = Some(stop.reply);
        self.try_finish_stop(context);
    }
}

// ---------------------------------------------------------------------------
// The supervisor.

/// Starts, scales and stops one pipeline's members and its sink stage.
/// Each member and the sink stage run on an arbiter (a thread) of their own.
pub(crate) struct PipelineSupervisor {
    spec: Arc<PipelineSpec>,
    sink: Gated<SinkStage>,
    sink_arbiter: Option<Arbiter>,
    members: Vec<(String, Addr<PipelineMember>, Arbiter)>,
    /// Arbiters of members that have stopped, joined when the pipeline stops.
    retired: Vec<Arbiter>,
    next_member: u32,
}

impl PipelineSupervisor {
    /// Starts the sink stage and `spec.config.members` members.
    pub(crate) fn new(spec: Arc<PipelineSpec>, sink: Box<dyn Sink>) -> PipelineSupervisor {
        let sink_arbiter = Arbiter::new();
        let stage_spec = Arc::clone(&spec);
        let sink = SinkStage::start_in_arbiter(&sink_arbiter.handle(), move |_| {
            SinkStage::new(stage_spec, sink)
        });
        let sink = Gated::new(sink, spec.config.in_flight_batches as usize);
        let mut supervisor = PipelineSupervisor {
            spec,
            sink,
            sink_arbiter: Some(sink_arbiter),
            members: Vec::new(),
            retired: Vec::new(),
            next_member: 0,
        };
        let members = supervisor.spec.config.members;
        supervisor.add_members(members);
        supervisor
    }

    fn add_members(&mut self, count: u32) {
        for _ in 0..count {
            let id = format!("{}-{}", self.spec.config.name, self.next_member);
            self.next_member += 1;
            let arbiter = Arbiter::new();
            let spec = Arc::clone(&self.spec);
            let sink = self.sink.clone();
            let member_id = id.clone();
            let address = PipelineMember::start_in_arbiter(&arbiter.handle(), move |_| {
                PipelineMember::new(spec, member_id, sink)
            });
            self.members.push((id, address, arbiter));
        }
    }

    /// Stops the last `count` members; resolves when each has committed and left.
    fn remove_members(&mut self, count: usize) -> Vec<oneshot::Receiver<()>> {
        let keep = self.members.len().saturating_sub(count);
        let mut stopped = Vec::new();
        for (_, address, arbiter) in self.members.drain(keep..) {
            let (reply, done) = oneshot::channel();
            address.do_send(StopMember { reply });
            stopped.push(done);
            self.retired.push(arbiter);
        }
        stopped
    }
}

impl Actor for PipelineSupervisor {
    type Context = Context<Self>;

    fn started(&mut self, context: &mut Self::Context) {
        // Few callers, each waiting for its answer (actors/mailbox.rs).
        context.set_mailbox_capacity(0);
    }
}

impl Handler<Scale> for PipelineSupervisor {
    type Result = ();

    fn handle(&mut self, scale: Scale, context: &mut Self::Context) {
        let wanted = scale.members.clamp(1, crate::pipeline::config::MEMBERS_MAX) as usize;
        let current = self.members.len();
        if wanted > current {
            self.add_members((wanted - current) as u32);
            let _ = scale.reply.send(());
            return;
        }
        let stopped = self.remove_members(current - wanted);
        context.spawn(
            async move {
                for done in stopped {
                    let _ = done.await;
                }
                let _ = scale.reply.send(());
            }
            .into_actor(self),
        );
    }
}

/// Answer to [`StopPipeline`]: the threads to join.
pub(crate) struct StoppedPipeline {
    pub(crate) arbiters: Vec<Arbiter>,
}

impl Handler<StopPipeline> for PipelineSupervisor {
    type Result = ();

    fn handle(&mut self, stop: StopPipeline, context: &mut Self::Context) {
        let count = self.members.len();
        let stopped = self.remove_members(count);
        let sink = self.sink.clone();
        let mut arbiters: Vec<Arbiter> = self.retired.drain(..).collect();
        arbiters.extend(self.sink_arbiter.take());
        context.spawn(
            async move {
                for done in stopped {
                    let _ = done.await;
                }
                // Behind every final commit of every member.
                let _ = sink.send(StopSinkStage).await;
                let _ = stop.reply.send(StoppedPipeline { arbiters });
            }
            .into_actor(self),
        );
    }
}
