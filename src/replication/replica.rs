//! [`ReplicaCore`]: one partition's Raft group, in the style of raft-rs's
//! `RawNode`: no threads, no I/O of its own. Its owner (the partition
//! actor, or a test's simulated node) feeds it proposals, peer messages and
//! ticks, and drives it in rounds:
//!
//! 1. [`ReplicaCore::poll`] takes raft-rs's `Ready`: it applies the newly
//!    committed entries (answering proposals, raising the high watermark),
//!    appends the new entries to the partition log (truncating a divergent
//!    suffix first), and returns a [`Round`]: the I/O to run, ending in an
//!    [`IoJob::RaftReady`] that writes the hard state and fsyncs, and the
//!    messages that may go out now (a leader's appends, sent while it
//!    persists: raft thesis 10.2.1).
//! 2. When the writer reports the round persisted, [`ReplicaCore::persisted`]
//!    returns the messages that had to wait for it (votes, a follower's
//!    append responses). Then poll again.
//!
//! Only one round is in flight at a time: entries proposed meanwhile
//! gather in raft-rs's unstable log and go out in the next round, which is
//! group commit. It also means a truncation never races a write.

use super::state::{PersistedState, StateFile};
use super::store::EntryStore;
use super::ReplicaError;
pub use crate::config::Acks;
use crate::storage::io::RaftReadyJob;
use crate::storage::{IoJob, PartitionLog};
use crate::types::Offset;
use bytes::Bytes;
use protobuf::Message as _;
use raft::prelude::{ConfChangeV2, ConfState, Entry, EntryType, HardState, Message};
use raft::{RawNode, StateRole};
use std::collections::VecDeque;
use std::path::Path;

/// How a replica runs.
#[derive(Clone, Debug)]
pub struct ReplicaConfig {
    /// This node's id (non-zero).
    pub id: u64,
    /// The group's voters when it is created (ignored once a state exists).
    pub voters: Vec<u64>,
    /// Ticks without a leader before an election (randomised up to 2x).
    pub election_ticks: usize,
    /// Ticks between a leader's heartbeats.
    pub heartbeat_ticks: usize,
    /// The election timeout is drawn from `[election_ticks, this)`; `None`
    /// is raft-rs's default, `2 × election_ticks`. (raft-rs draws it from
    /// an unseeded generator: a simulation that must replay sets
    /// `election_ticks + 1` and jitters its ticks itself.)
    pub election_ticks_max: Option<usize>,
    /// When a produce is acknowledged.
    pub acks: Acks,
}

/// I/O and messages from one [`ReplicaCore::poll`].
#[derive(Debug, Default)]
pub struct Round {
    /// I/O to run in order (on the partition's writer). Empty when the
    /// round had nothing to persist.
    pub jobs: Vec<IoJob>,
    /// Messages to send now.
    pub messages: Vec<Message>,
    /// Headers of the data batches appended to the log in this round (as
    /// stored: offsets set), in log order. Idempotent producers' state is
    /// kept from these on every replica, so a new leader knows it.
    pub appended: Vec<crate::storage::BatchHeader>,
    /// A divergent suffix was cut from the log first: state derived from
    /// the log's tail must be rebuilt.
    pub truncated: bool,
    /// Configuration changes applied in this round (the owner adds or
    /// removes peers; an added node's address is in the change's context).
    pub changes: Vec<ConfChangeV2>,
}

/// A replica's view of its group, for status and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaStatus {
    /// This node's id.
    pub id: u64,
    /// The leader this replica knows (0: none).
    pub leader: u64,
    /// Whether this replica leads.
    pub is_leader: bool,
    /// Its term.
    pub term: u64,
    /// Highest index known committed.
    pub commit_index: u64,
    /// Highest index applied.
    pub applied_index: u64,
    /// Last index in its log.
    pub last_index: u64,
    /// The voters.
    pub voters: Vec<u64>,
    /// On a leader: each replica's matched index (how far its log is known
    /// to agree with the leader's).
    pub matched: Vec<(u64, u64)>,
}

/// A replica's position, without the lists of [`ReplicaStatus`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicaProgress {
    /// The leader this replica knows (0: none).
    pub leader: u64,
    /// Whether this replica leads.
    pub is_leader: bool,
    /// Its term.
    pub term: u64,
    /// Highest index known committed.
    pub commit_index: u64,
    /// Highest index applied.
    pub applied_index: u64,
    /// Last index in its log.
    pub last_index: u64,
}

/// Why a proposal was refused or failed. Tokens come back with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// This replica does not lead; `leader` is the one it knows, if any.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader's node id, if known.
        leader: Option<u64>,
    },
    /// The entry was replaced by another leader's: it was not stored. The
    /// client may retry.
    #[error("the leader changed before the batch was committed; it was not stored")]
    Superseded,
    /// raft-rs dropped it (a leadership transfer, or too much uncommitted).
    #[error("proposal dropped: {0}")]
    Dropped(String),
}

/// A proposal's answer: its first and last offsets, or why it failed.
pub type Completion<T> = (T, Result<(Offset, Offset), ProposeError>);

struct Waiter<T> {
    index: u64,
    term: u64,
    token: T,
}

/// See the module docs. `T` is whatever the owner uses to answer a proposal.
pub struct ReplicaCore<T> {
    node: RawNode<EntryStore>,
    state_file: StateFile,
    /// The state as last written.
    written: PersistedState,
    /// The round being persisted: raft-rs's ready number and the messages
    /// to send once it is.
    in_flight: Option<(u64, Vec<Message>)>,
    waiting: VecDeque<Waiter<T>>,
    completed: Vec<Completion<T>>,
    applied_index: u64,
    acks: Acks,
    /// Configuration changes applied since the last round was taken.
    applied_changes: Vec<ConfChangeV2>,
    /// The configuration changed since the state was last written.
    conf_changed: bool,
}

impl<T> std::fmt::Debug for ReplicaCore<T> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ReplicaCore")
            .field("status", &self.status())
            .finish()
    }
}

impl<T> ReplicaCore<T> {
    /// Opens the replica of the partition whose log is `log` (opened with
    /// every block loaded) in `directory`: reads its Raft state, or creates
    /// it for a new group with `config.voters`, and indexes the log's frames
    /// as entries. A log with data but no Raft state was written without
    /// replication and is refused.
    pub fn open(
        log: &mut PartitionLog,
        directory: &Path,
        config: &ReplicaConfig,
    ) -> Result<ReplicaCore<T>, ReplicaError> {
        let initial = PersistedState {
            conf_state: ConfState::from((config.voters.clone(), Vec::new()))
                .write_to_bytes()
                .expect("a ConfState encodes"),
            anchor_offset: log.log_start_offset().0,
            ..PersistedState::default()
        };
        if log.log_end_offset() > log.log_start_offset()
            && !directory.join(super::state::STATE_FILE).exists()
        {
            return Err(ReplicaError::Storage(format!(
                "{} holds records written without replication (no {}): it cannot become a replica",
                directory.display(),
                super::state::STATE_FILE
            )));
        }
        let (state_file, found) = StateFile::open(directory, &initial)
            .map_err(|error| ReplicaError::Storage(error.to_string()))?;
        let state = found.unwrap_or(initial);
        let conf_state = ConfState::parse_from_bytes(&state.conf_state)
            .map_err(|error| ReplicaError::Storage(format!("Raft configuration: {error}")))?;
        let mut hard_state = HardState {
            term: state.term,
            vote: state.vote,
            ..HardState::default()
        };
        let mut store = EntryStore::open(
            log,
            hard_state.clone(),
            conf_state,
            (
                state.anchor_index,
                state.anchor_term,
                Offset(state.anchor_offset),
            ),
        )?;
        // A commit index past the log's end cannot be (the state is synced
        // after the entries), but a restart must never trust one.
        let last_index = store.last_index();
        let commit = state.commit.min(last_index);
        let applied = state.applied.min(commit);
        hard_state.commit = commit;
        store.set_hard_state(hard_state);
        if let Some(committed) = store.next_offset_of(commit) {
            log.set_commit_limit(committed);
        }
        let raft_config = raft::Config {
            id: config.id,
            election_tick: config.election_ticks,
            heartbeat_tick: config.heartbeat_ticks,
            min_election_tick: config.election_ticks,
            max_election_tick: config
                .election_ticks_max
                .unwrap_or(2 * config.election_ticks),
            applied,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            ..raft::Config::default()
        };
        raft_config
            .validate()
            .map_err(|error| ReplicaError::Config(error.to_string()))?;
        let logger = slog::Logger::root(super::TracingDrain, slog::o!("raft_id" => config.id));
        let node = RawNode::new(&raft_config, store, &logger)
            .map_err(|error| ReplicaError::Storage(error.to_string()))?;
        Ok(ReplicaCore {
            node,
            state_file,
            written: PersistedState {
                commit,
                applied,
                ..state
            },
            in_flight: None,
            waiting: VecDeque::new(),
            completed: Vec::new(),
            applied_index: applied,
            acks: config.acks,
            applied_changes: Vec::new(),
            conf_changed: false,
        })
    }

    /// Proposes a RecordBatch (checked by the caller). On the leader it is
    /// appended to raft-rs's log now; `token` comes back from
    /// [`ReplicaCore::take_completed`] with its offsets once it is
    /// committed (or with an error if another leader replaced it).
    pub fn propose(&mut self, batch: Bytes, token: T) -> Result<(), (T, ProposeError)> {
        if self.node.raft.state != StateRole::Leader {
            return Err((
                token,
                ProposeError::NotLeader {
                    leader: self.leader(),
                },
            ));
        }
        if let Err(error) = self.node.propose(Vec::new(), batch.to_vec()) {
            return Err((token, ProposeError::Dropped(error.to_string())));
        }
        self.track(token);
        Ok(())
    }

    /// Waits for the entry just appended (the last in raft-rs's log).
    fn track(&mut self, token: T) {
        let index = self.node.raft.raft_log.last_index();
        // Waiters at or past this index proposed in an earlier term, and
        // their entries were cut from this log by another leader's: such an
        // entry can never be committed (a leader never overwrites a
        // committed one). Answering them now keeps the queue in index order.
        while self
            .waiting
            .back()
            .is_some_and(|waiter| waiter.index >= index)
        {
            let waiter = self.waiting.pop_back().expect("checked");
            self.completed
                .push((waiter.token, Err(ProposeError::Superseded)));
        }
        self.waiting.push_back(Waiter {
            index,
            term: self.node.raft.term,
            token,
        });
    }

    /// Proposes a configuration change (leader only).
    /// `token` comes back from [`ReplicaCore::take_completed`] once the
    /// change is committed and applied (or with an error if another
    /// leader's entry replaced it). One change at a time: while one is
    /// pending, another is refused (`Dropped`).
    pub fn propose_conf_change(
        &mut self,
        change: ConfChangeV2,
        token: T,
    ) -> Result<(), (T, ProposeError)> {
        if self.node.raft.state != StateRole::Leader {
            let leader = self.leader();
            return Err((token, ProposeError::NotLeader { leader }));
        }
        // raft-rs would turn a second pending change into an empty entry
        // and report success; refuse it here instead.
        if self.node.raft.has_pending_conf() {
            return Err((
                token,
                ProposeError::Dropped("another configuration change is pending".to_string()),
            ));
        }
        if let Err(error) = self.node.propose_conf_change(Vec::new(), change) {
            return Err((token, ProposeError::Dropped(error.to_string())));
        }
        self.track(token);
        Ok(())
    }

    /// A message from a peer. Messages raft-rs refuses (a stale term, an
    /// unknown peer) are dropped, as a lossy network would.
    pub fn step(&mut self, message: Message) {
        if let Err(error) = self.node.step(message) {
            tracing::debug!(%error, "raft message dropped");
        }
    }

    /// Advances raft-rs's logical clock one tick.
    pub fn tick(&mut self) {
        self.node.tick();
    }

    /// Starts an election now (tests and leadership transfer).
    pub fn campaign(&mut self) {
        if let Err(error) = self.node.campaign() {
            tracing::debug!(%error, "campaign refused");
        }
    }

    /// Whether a round is being persisted.
    pub fn round_in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// The group resumes ticking after a quiet spell: its clock restarts
    /// from zero (the peers' liveness stood in for heartbeats meanwhile, so
    /// neither a leader's quorum check nor a follower's election timeout
    /// counts the quiet time), and a leader heartbeats at once.
    pub fn wake(&mut self) {
        self.node.raft.election_elapsed = 0;
        if self.node.raft.state == StateRole::Leader {
            self.node.ping();
        }
    }

    /// A leader with nothing to do: no proposal waiting, no round in
    /// flight or ready, and every replica has matched its last entry and
    /// knows it committed. Such a group need not tick (no heartbeats)
    /// while its followers' nodes are alive.
    pub fn idle_leader(&self) -> bool {
        let raft = &self.node.raft;
        let last_index = raft.raft_log.last_index();
        raft.state == StateRole::Leader
            && self.waiting.is_empty()
            && self.in_flight.is_none()
            && !self.node.has_ready()
            && raft.raft_log.committed == last_index
            && self.applied_index == last_index
            && raft.prs().iter().all(|(id, progress)| {
                *id == raft.id
                    || (progress.matched == last_index && progress.committed_index == last_index)
            })
    }

    /// A follower with nothing to do: it knows a leader, has applied
    /// everything in its log, and nothing is in flight. It need not tick
    /// while that leader's node vouches for the group.
    pub fn idle_follower(&self) -> bool {
        let raft = &self.node.raft;
        let last_index = raft.raft_log.last_index();
        raft.state == StateRole::Follower
            && raft.leader_id != 0
            && self.in_flight.is_none()
            && !self.node.has_ready()
            && raft.raft_log.committed == last_index
            && self.applied_index == last_index
    }

    /// Takes the next round, if there is work and none is in flight. See
    /// the module docs.
    pub fn poll(
        &mut self,
        log: &mut PartitionLog,
        now_ms: i64,
    ) -> Result<Option<Round>, ReplicaError> {
        if self.in_flight.is_some() || !self.node.has_ready() {
            return Ok(None);
        }
        let mut ready = self.node.ready();
        let mut messages = ready.take_messages();
        if !ready.snapshot().is_empty() {
            return Err(ReplicaError::Storage(
                "a snapshot arrived, and installing snapshots is not implemented yet".to_string(),
            ));
        }
        self.apply(log, ready.take_committed_entries())?;
        let mut appended = Vec::new();
        let (mut jobs, truncated) =
            self.node
                .mut_store()
                .append(log, ready.entries(), now_ms, &mut appended)?;
        if let Some(hard_state) = ready.hs() {
            self.node.mut_store().set_hard_state(hard_state.clone());
        }
        let persisted_messages = ready.take_persisted_messages();
        let number = ready.number();
        self.node.advance_append_async(ready);
        let state = self.current_state();
        let state_write = (state != self.written).then(|| {
            let write = self.state_file.write(&state);
            self.written = state;
            self.conf_changed = false;
            write
        });
        if jobs.is_empty() && state_write.is_none() {
            self.node.on_persist_ready(number);
            messages.extend(persisted_messages);
        } else {
            jobs.push(IoJob::RaftReady(RaftReadyJob {
                number,
                state: state_write,
            }));
            self.in_flight = Some((number, persisted_messages));
        }
        Ok(Some(Round {
            jobs,
            messages,
            appended,
            truncated,
            changes: std::mem::take(&mut self.applied_changes),
        }))
    }

    /// The writer has persisted ready `number`: returns the messages that
    /// waited for it. Poll again afterwards.
    pub fn persisted(&mut self, number: u64) -> Vec<Message> {
        match self.in_flight.take() {
            Some((in_flight, messages)) if in_flight == number => {
                self.node.on_persist_ready(number);
                let last_index = self.node.store().last_index();
                self.node.mut_store().mark_durable(last_index);
                if self.acks == Acks::Leader {
                    self.answer_durable(last_index);
                }
                messages
            }
            other => {
                self.in_flight = other;
                Vec::new()
            }
        }
    }

    /// Proposals answered since the last call.
    pub fn take_completed(&mut self) -> Vec<Completion<T>> {
        std::mem::take(&mut self.completed)
    }

    /// Fails every waiting proposal (the owner is stopping).
    pub fn fail_waiting(&mut self, error: ProposeError) {
        for waiter in self.waiting.drain(..) {
            self.completed.push((waiter.token, Err(error.clone())));
        }
    }

    fn apply(&mut self, log: &mut PartitionLog, entries: Vec<Entry>) -> Result<(), ReplicaError> {
        let Some(last) = entries.last() else {
            return Ok(());
        };
        let last_index = last.index;
        for entry in &entries {
            if matches!(
                entry.entry_type,
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2
            ) && entry.index > self.applied_index
            {
                self.apply_conf_change(entry)?;
            }
            if self.acks == Acks::All {
                self.answer_committed(entry);
            }
        }
        self.applied_index = self.applied_index.max(last_index);
        if let Some(committed) = self.node.store().next_offset_of(last_index) {
            log.set_commit_limit(committed);
        }
        self.node.advance_apply_to(last_index);
        Ok(())
    }

    fn apply_conf_change(&mut self, entry: &Entry) -> Result<(), ReplicaError> {
        if entry.entry_type == EntryType::EntryConfChange {
            // millrace proposes only ConfChangeV2; a v1 change is not ours.
            return Err(ReplicaError::Storage(format!(
                "entry {} is a v1 configuration change, which millrace never proposes",
                entry.index
            )));
        }
        let change = ConfChangeV2::parse_from_bytes(&entry.data).map_err(|error| {
            ReplicaError::Storage(format!("configuration change {}: {error}", entry.index))
        })?;
        match self.node.apply_conf_change(&change) {
            Ok(conf_state) => {
                // A leader that removed itself steps down now: raft-rs
                // would go on leading without a progress of its own (and
                // panic computing its commit).
                let raft = &mut self.node.raft;
                if raft.state == StateRole::Leader
                    && !conf_state.voters.contains(&raft.id)
                    && !conf_state.voters_outgoing.contains(&raft.id)
                {
                    let term = raft.term;
                    raft.become_follower(term, raft::INVALID_ID);
                }
                self.node.mut_store().set_conf_state(conf_state);
                self.conf_changed = true;
                self.applied_changes.push(change);
            }
            Err(error) => {
                tracing::warn!(index = entry.index, %error, "configuration change not applied")
            }
        }
        Ok(())
    }

    /// Answers the proposals up to `entry`: the one at its index succeeded
    /// if the terms agree; earlier ones still waiting were replaced.
    fn answer_committed(&mut self, entry: &Entry) {
        while let Some(waiter) = self.waiting.front() {
            if waiter.index > entry.index {
                break;
            }
            let waiter = self.waiting.pop_front().expect("checked");
            let outcome = if waiter.index == entry.index && waiter.term == entry.term {
                self.node
                    .store()
                    .offsets_of(entry.index)
                    .ok_or(ProposeError::Superseded)
            } else {
                Err(ProposeError::Superseded)
            };
            self.completed.push((waiter.token, outcome));
        }
    }

    /// `acks = "leader"`: answers the proposals durable in this log.
    fn answer_durable(&mut self, durable_index: u64) {
        while let Some(waiter) = self.waiting.front() {
            if waiter.index > durable_index {
                break;
            }
            let waiter = self.waiting.pop_front().expect("checked");
            let store = self.node.store();
            let outcome = match raft::Storage::term(store, waiter.index) {
                Ok(term) if term == waiter.term => store
                    .offsets_of(waiter.index)
                    .ok_or(ProposeError::Superseded),
                _ => Err(ProposeError::Superseded),
            };
            self.completed.push((waiter.token, outcome));
        }
    }

    fn current_state(&self) -> PersistedState {
        let store = self.node.store();
        let hard_state = store.hard_state();
        let (anchor_index, anchor_term, anchor_offset) = store.anchor();
        // Encoded again only after a change applied, not every round.
        let conf_state = if self.conf_changed {
            store
                .conf_state()
                .write_to_bytes()
                .expect("a ConfState encodes")
        } else {
            self.written.conf_state.clone()
        };
        PersistedState {
            term: hard_state.term,
            vote: hard_state.vote,
            commit: hard_state.commit,
            applied: self.applied_index,
            conf_state,
            anchor_index,
            anchor_term,
            anchor_offset: anchor_offset.0,
        }
    }

    /// The leader this replica knows.
    pub fn leader(&self) -> Option<u64> {
        Some(self.node.raft.leader_id).filter(|&id| id != 0)
    }

    /// Whether this replica leads and may serve reads: it has applied an
    /// entry of its own term, so its high watermark covers every entry any
    /// earlier leader committed, and a consumer that moves to it never sees
    /// the high watermark go down.
    pub fn serves_reads(&self) -> bool {
        let raft = &self.node.raft;
        raft.state == StateRole::Leader
            && raft::Storage::term(self.node.store(), self.applied_index)
                .is_ok_and(|term| term == raft.term)
    }

    /// Status for `cluster status`, metrics and health.
    pub fn status(&self) -> ReplicaStatus {
        let progress = self.progress();
        let raft = &self.node.raft;
        let matched = if raft.state == StateRole::Leader {
            let mut matched: Vec<(u64, u64)> = raft
                .prs()
                .iter()
                .map(|(id, progress)| (*id, progress.matched))
                .collect();
            matched.sort_unstable();
            matched
        } else {
            Vec::new()
        };
        let mut voters: Vec<u64> = self.node.store().conf_state().voters.clone();
        voters.sort_unstable();
        ReplicaStatus {
            id: raft.id,
            leader: progress.leader,
            is_leader: progress.is_leader,
            term: progress.term,
            commit_index: progress.commit_index,
            applied_index: progress.applied_index,
            last_index: progress.last_index,
            voters,
            matched,
        }
    }

    /// The figures of [`ReplicaCore::status`] that cost nothing to read
    /// (no allocation): for the partition actor's every message.
    pub fn progress(&self) -> ReplicaProgress {
        let raft = &self.node.raft;
        ReplicaProgress {
            leader: raft.leader_id,
            is_leader: raft.state == StateRole::Leader,
            term: raft.term,
            commit_index: raft.raft_log.committed,
            applied_index: self.applied_index,
            last_index: raft.raft_log.last_index(),
        }
    }

    /// Whether `id` is a voter of the group as this replica knows it.
    pub fn is_voter(&self, id: u64) -> bool {
        self.node.store().conf_state().voters.contains(&id)
    }
}

pub use crate::storage::log::run_jobs_inline;
