//! Raft replication under a seeded, fault-injecting simulated network.
//!
//! Each node is a real [`ReplicaCore`] over a real [`PartitionLog`] in its
//! own directory; what is simulated is the network (drop, delay, reorder,
//! partitions, an isolated leader), time (ticks) and crashes (a node is
//! dropped with the I/O of its last round not run, then reopened from its
//! files). Clients propose unique values at whichever node they believe
//! leads, and a consumer reads from whichever node serves reads. The
//! history goes to the checker in tests/common/history.rs: nothing
//! acknowledged lost, no offset with two values, no duplicate, no read of
//! a failed send, no high watermark going down. After healing, every
//! replica's log is byte-identical up to the high watermark.
//!
//! A failure prints its seed; `MILLRACE_SIM_SEED=N` replays that seed
//! alone, and `MILLRACE_SIM_SEEDS=N` runs more seeds.

mod common;

use bytes::Bytes;
use common::history::{History, SendOutcome};
use millrace::replication::replica::{
    run_jobs_inline, Acks, ProposeError, ReplicaConfig, ReplicaCore,
};
use millrace::replication::MembershipChange;
use millrace::storage::batch::{encode_frame, ProducerFields, FRAME_HEADER_BYTES};
use millrace::storage::{IoJob, LogOptions, PartitionLog};
use millrace::{Offset, Record, Term};
use raft::prelude::Message;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// A small deterministic generator (xorshift64*), so a seed replays exactly.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// How hostile a run is.
#[derive(Clone, Copy, Debug)]
struct Faults {
    drop_percent: u64,
    max_delay: u64,
    partition_percent: u64,
    crash_percent: u64,
}

const HOSTILE: Faults = Faults {
    drop_percent: 10,
    max_delay: 6,
    partition_percent: 2,
    crash_percent: 1,
};

struct Node {
    log: PartitionLog,
    core: ReplicaCore<u64>,
    /// The I/O of the round in flight, not run yet (lost on a crash).
    io: Option<Vec<IoJob>>,
}

struct Envelope {
    deliver_at: u64,
    from: u64,
    to: u64,
    message: Message,
}

struct Sim {
    seed: u64,
    rng: Rng,
    root: PathBuf,
    ids: Vec<u64>,
    nodes: Vec<Option<Node>>,
    restart_at: Vec<Option<u64>>,
    network: Vec<Envelope>,
    /// Node groups that can talk to each other; `None`: no partition.
    partition: Option<Vec<BTreeSet<u64>>>,
    partition_until: u64,
    now: u64,
    faults: Faults,
    history: History,
    /// Proposal token -> value, for answers.
    values: Vec<Vec<u8>>,
    answered: Vec<bool>,
    consumer_offset: u64,
    crashes: u64,
    partitions: u64,
    /// (node, index): messages from the node that would tell a peer the
    /// commit reached the index are lost (the double-failover script).
    hide_commit: Option<(u64, u64)>,
    /// The voters every replica starts with (spares are not among them).
    initial_voters: Vec<u64>,
    /// Membership changes applied.
    changes: u64,
}

/// Tokens of membership changes, apart from produce tokens (indexes).
const CHANGE_TOKEN: u64 = 1 << 40;

fn batch(value: &[u8]) -> Bytes {
    let mut frame = Vec::new();
    encode_frame(
        &mut frame,
        Offset(0),
        Term(0),
        ProducerFields::NONE,
        &[Record::new(value.to_vec())],
        1_700_000_000_000,
    );
    Bytes::from(frame).slice(FRAME_HEADER_BYTES..)
}

fn options() -> LogOptions {
    LogOptions {
        // Small segments, so runs cross rolls and seals.
        segment_bytes: 16 * 1024,
        ..LogOptions::default()
    }
}

impl Sim {
    /// `members` voters, plus `spares` nodes that start outside the group
    /// (as a joining node does) for membership changes to add.
    fn new(seed: u64, members: u64, spares: u64, faults: Faults, root: &Path) -> Sim {
        let ids: Vec<u64> = (1..=members + spares).collect();
        let mut sim = Sim {
            initial_voters: (1..=members).collect(),
            changes: 0,
            seed,
            rng: Rng::new(seed),
            root: root.to_path_buf(),
            nodes: Vec::new(),
            restart_at: vec![None; ids.len()],
            ids,
            network: Vec::new(),
            partition: None,
            partition_until: 0,
            now: 0,
            faults,
            history: History::new(),
            values: Vec::new(),
            answered: Vec::new(),
            consumer_offset: 0,
            crashes: 0,
            partitions: 0,
            hide_commit: None,
        };
        sim.nodes = sim.ids.iter().map(|&id| Some(sim.open(id))).collect();
        sim
    }

    fn open(&self, id: u64) -> Node {
        let directory = self.root.join(format!("node-{id}"));
        let (mut log, _) = PartitionLog::open(&directory, options())
            .unwrap_or_else(|error| panic!("seed {}: reopen node {id}: {error}", self.seed));
        let config = ReplicaConfig {
            id,
            voters: self.initial_voters.clone(),
            election_ticks: 10,
            heartbeat_ticks: 2,
            // Replayable: raft-rs's own jitter is unseeded, so the timeout
            // is fixed and the simulation jitters the ticks instead.
            election_ticks_max: Some(11),
            acks: Acks::All,
        };
        let core = ReplicaCore::open(&mut log, &directory, &config)
            .unwrap_or_else(|error| panic!("seed {}: open replica {id}: {error}", self.seed));
        Node {
            log,
            core,
            io: None,
        }
    }

    fn index(&self, id: u64) -> usize {
        (id - 1) as usize
    }

    fn connected(&self, from: u64, to: u64) -> bool {
        match &self.partition {
            None => true,
            Some(groups) => groups
                .iter()
                .any(|group| group.contains(&from) && group.contains(&to)),
        }
    }

    fn send(&mut self, from: u64, messages: Vec<Message>, hostile: bool) {
        for message in messages {
            if hostile && self.rng.chance(self.faults.drop_percent) {
                continue;
            }
            if self
                .hide_commit
                .is_some_and(|(node, index)| node == from && message.commit >= index)
            {
                continue;
            }
            let delay = if hostile {
                1 + self.rng.below(self.faults.max_delay)
            } else {
                1
            };
            self.network.push(Envelope {
                deliver_at: self.now + delay,
                from,
                to: message.to,
                message,
            });
        }
    }

    fn leader(&self) -> Option<u64> {
        self.nodes
            .iter()
            .flatten()
            .filter(|node| node.core.status().is_leader)
            .max_by_key(|node| node.core.status().term)
            .map(|node| node.core.status().id)
    }

    /// One step of simulated time.
    fn step(&mut self, hostile: bool) {
        self.now += 1;
        if hostile {
            self.inject_faults();
        }
        self.restart_due();
        self.deliver();
        // Each node's clock ticks about every other step, with seeded
        // jitter: that is what separates election timeouts.
        for node in self.nodes.iter_mut().flatten() {
            if self.rng.chance(50) {
                node.core.tick();
            }
        }
        for position in 0..self.nodes.len() {
            self.drive(position, hostile);
        }
        self.collect_answers();
    }

    fn inject_faults(&mut self) {
        if self.partition.is_some() && self.now >= self.partition_until {
            self.partition = None;
        }
        if self.partition.is_none() && self.rng.chance(self.faults.partition_percent) {
            let mut minority = BTreeSet::new();
            // Half the time isolate the leader, else a random minority.
            if let Some(leader) = self.leader().filter(|_| self.rng.chance(50)) {
                minority.insert(leader);
            }
            let size = 1 + self.rng.below(((self.ids.len() - 1) / 2) as u64) as usize;
            while minority.len() < size {
                minority.insert(self.ids[self.rng.below(self.ids.len() as u64) as usize]);
            }
            let rest: BTreeSet<u64> = self
                .ids
                .iter()
                .copied()
                .filter(|id| !minority.contains(id))
                .collect();
            self.partition = Some(vec![minority, rest]);
            self.partitions += 1;
            self.partition_until = self.now + 20 + self.rng.below(60);
        }
        if self.rng.chance(self.faults.crash_percent) {
            let id = self.ids[self.rng.below(self.ids.len() as u64) as usize];
            let position = self.index(id);
            if self.nodes[position].is_some() {
                // Dropped with its unrun I/O: what was not written is lost.
                self.nodes[position] = None;
                self.crashes += 1;
                self.restart_at[position] = Some(self.now + 5 + self.rng.below(40));
            }
        }
    }

    fn restart_due(&mut self) {
        for position in 0..self.nodes.len() {
            if self.restart_at[position].is_some_and(|at| at <= self.now) {
                self.restart_at[position] = None;
                self.nodes[position] = Some(self.open(self.ids[position]));
            }
        }
    }

    fn restart_all(&mut self) {
        for position in 0..self.nodes.len() {
            if self.nodes[position].is_none() {
                self.restart_at[position] = None;
                self.nodes[position] = Some(self.open(self.ids[position]));
            }
        }
    }

    fn deliver(&mut self) {
        let now = self.now;
        let mut due: Vec<Envelope> = Vec::new();
        let mut index = 0;
        while index < self.network.len() {
            if self.network[index].deliver_at <= now {
                due.push(self.network.swap_remove(index));
            } else {
                index += 1;
            }
        }
        // Due messages arrive in a random order: reordering.
        while !due.is_empty() {
            let envelope = due.swap_remove(self.rng.below(due.len() as u64) as usize);
            if !self.connected(envelope.from, envelope.to) {
                continue;
            }
            let position = self.index(envelope.to);
            if let Some(node) = self.nodes[position].as_mut() {
                node.core.step(envelope.message);
            }
        }
    }

    /// Polls a node's rounds; runs its in-flight I/O at a random moment.
    fn drive(&mut self, position: usize, hostile: bool) {
        loop {
            let id = self.ids[position];
            let Some(node) = self.nodes[position].as_mut() else {
                return;
            };
            if let Some(jobs) = node.io.take() {
                if hostile && self.rng.chance(40) {
                    node.io = Some(jobs);
                    return;
                }
                let number = run_jobs_inline(&mut node.log, jobs, false)
                    .unwrap_or_else(|error| panic!("seed {}: node {id} I/O: {error}", self.seed))
                    .expect("a round ends in its Raft ready");
                let messages = node.core.persisted(number);
                self.send(id, messages, hostile);
                continue;
            }
            let round = node
                .core
                .poll(&mut node.log, 1_700_000_000_000 + self.now as i64)
                .unwrap_or_else(|error| panic!("seed {}: node {id}: {error}", self.seed));
            let Some(round) = round else {
                return;
            };
            if !round.jobs.is_empty() {
                node.io = Some(round.jobs);
            }
            self.send(id, round.messages, hostile);
        }
    }

    /// A client sends a new value to the node it believes leads.
    fn produce(&mut self) {
        let token = self.values.len() as u64;
        let value = format!("s{}-v{token}", self.seed).into_bytes();
        let target = match self.leader() {
            Some(leader) if self.rng.chance(90) => leader,
            _ => self.ids[self.rng.below(self.ids.len() as u64) as usize],
        };
        let position = self.index(target);
        let Some(node) = self.nodes[position].as_mut() else {
            return;
        };
        self.values.push(value.clone());
        self.answered.push(false);
        if let Err((token, error)) = node.core.propose(batch(&value), token) {
            assert!(
                matches!(
                    error,
                    ProposeError::NotLeader { .. } | ProposeError::Dropped(_)
                ),
                "seed {}: {error}",
                self.seed
            );
            self.answered[token as usize] = true;
            self.history.send(value, SendOutcome::Failed);
        }
    }

    /// The leader's voters (the group as it stands), or every node.
    fn voters(&self) -> Vec<u64> {
        self.leader()
            .and_then(|leader| self.nodes[self.index(leader)].as_ref())
            .map(|node| node.core.status().voters)
            .unwrap_or_else(|| self.ids.clone())
    }

    /// Proposes a membership change at the leader: adds the node outside
    /// the group if there is one, else removes a random follower (never
    /// below three voters, never the leader).
    fn change_membership(&mut self) {
        let Some(leader) = self.leader() else {
            return;
        };
        let voters = self.voters();
        let outside: Vec<u64> = self
            .ids
            .iter()
            .copied()
            .filter(|id| !voters.contains(id))
            .collect();
        let change = if let Some(&id) = outside.first() {
            MembershipChange::Add {
                id,
                address: "127.0.0.1:1".parse().unwrap(),
            }
        } else if voters.len() > 3 {
            let followers: Vec<u64> = voters.iter().copied().filter(|&id| id != leader).collect();
            let id = followers[self.rng.below(followers.len() as u64) as usize];
            MembershipChange::Remove { id }
        } else {
            return;
        };
        let position = self.index(leader);
        let node = self.nodes[position].as_mut().expect("the leader is up");
        if node
            .core
            .propose_conf_change(change.to_conf_change(), CHANGE_TOKEN)
            .is_ok()
        {
            self.changes += 1;
        }
    }

    fn collect_answers(&mut self) {
        for node in self.nodes.iter_mut().flatten() {
            for (token, outcome) in node.core.take_completed() {
                if token >= CHANGE_TOKEN {
                    continue;
                }
                let value = self.values[token as usize].clone();
                self.answered[token as usize] = true;
                match outcome {
                    Ok((base, last)) => {
                        assert_eq!(base, last, "one record per batch");
                        self.history.send(
                            value,
                            SendOutcome::Ok {
                                partition: 0,
                                offset: base.0,
                            },
                        );
                    }
                    Err(_) => self.history.send(value, SendOutcome::Failed),
                }
            }
        }
    }

    /// Proposals still waiting on a crashed node are lost with it: their
    /// outcome is unknown to the client.
    fn forget_crashed_waiters(&mut self) {
        for (token, answered) in self.answered.iter_mut().enumerate() {
            if !*answered {
                *answered = true;
                self.history
                    .send(self.values[token].clone(), SendOutcome::Unknown);
            }
        }
    }

    /// The consumer reads from the node serving reads, from where it is to
    /// that node's high watermark.
    fn consume(&mut self) {
        let Some(node) = self
            .nodes
            .iter()
            .flatten()
            .find(|node| node.core.serves_reads())
        else {
            return;
        };
        let high_watermark = node.log.high_watermark();
        self.history.watermark(1, 0, high_watermark.0);
        while self.consumer_offset < high_watermark.0 {
            let plan = node
                .log
                .read_plan(Offset(self.consumer_offset), 64 * 1024)
                .unwrap_or_else(|error| panic!("seed {}: read: {error}", self.seed));
            let Some(plan) = plan else { break };
            let result = plan
                .execute(64 * 1024)
                .unwrap_or_else(|error| panic!("seed {}: read: {error}", self.seed));
            let mut expected = self.consumer_offset;
            for record in &result.records {
                for skipped in expected..record.offset.0 {
                    self.history.skipped(0, skipped);
                }
                let value = record.value.clone().unwrap_or_default();
                self.history.poll(0, record.offset.0, value.to_vec());
                expected = record.offset.0 + 1;
            }
            for skipped in expected..result.next_offset.0 {
                self.history.skipped(0, skipped);
            }
            assert!(
                result.next_offset.0 > self.consumer_offset,
                "seed {}: no progress",
                self.seed
            );
            self.consumer_offset = result.next_offset.0;
        }
    }

    /// Heals everything and runs until the group is quiet: a leader
    /// serving reads, every replica at its commit.
    fn heal(&mut self) {
        self.partition = None;
        self.restart_all();
        for _ in 0..2_000 {
            self.step(false);
            self.consume();
            let quiet = self.leader().is_some_and(|leader| {
                let leader_node = self.nodes[self.index(leader)].as_ref().expect("up");
                let status = leader_node.core.status();
                let voters = status.voters.clone();
                leader_node.core.serves_reads()
                    && self.network.is_empty()
                    && self.nodes.iter().flatten().all(|node| {
                        let other = node.core.status();
                        if !voters.contains(&other.id) {
                            return true;
                        }
                        other.last_index == status.last_index
                            && other.commit_index == status.commit_index
                            && node.io.is_none()
                    })
            });
            if quiet {
                return;
            }
        }
        panic!("seed {}: the group did not settle after healing", self.seed);
    }

    /// Every replica's log holds the same bytes below the high watermark.
    fn assert_replicas_identical(&self) {
        let voters = self.voters();
        let logs: Vec<(u64, Vec<u8>)> = self
            .nodes
            .iter()
            .flatten()
            .filter(|node| voters.contains(&node.core.status().id))
            .map(|node| {
                let high_watermark = node.log.high_watermark();
                let frames = node.log.frame_locations(Offset(0)).expect("frames");
                let mut bytes = Vec::new();
                for (header, location) in frames {
                    if header.base_offset >= high_watermark {
                        break;
                    }
                    bytes.extend_from_slice(&location.read().expect("frame").frame);
                }
                (node.core.status().id, bytes)
            })
            .collect();
        let (first_id, first) = &logs[0];
        for (id, bytes) in &logs[1..] {
            assert!(
                bytes == first,
                "seed {}: node {id}'s log ({} bytes) differs from node {first_id}'s ({} bytes) below the high watermark",
                self.seed,
                bytes.len(),
                first.len()
            );
        }
    }
}

/// What one seed did, for the summary line.
#[derive(Default)]
struct Totals {
    seeds: u64,
    acknowledged: usize,
    failed: usize,
    unknown: usize,
    polled: usize,
    crashes: u64,
    partitions: u64,
    changes: u64,
}

fn run_seed(seed: u64, members: u64, spares: u64, steps: u64, totals: &mut Totals) {
    let root = common_tempdir();
    let mut sim = Sim::new(seed, members, spares, HOSTILE, root.path());
    for _ in 0..steps {
        sim.step(true);
        if sim.rng.chance(30) {
            sim.produce();
        }
        if spares > 0 && sim.rng.chance(3) {
            sim.change_membership();
        }
        if sim.rng.chance(20) {
            sim.consume();
        }
    }
    sim.heal();
    // Whatever is still unanswered now was lost with a crash or a
    // superseded leader that never learnt it: the client does not know.
    sim.forget_crashed_waiters();
    sim.consume();
    let report = sim.history.check();
    assert!(
        report.anomalies() == 0,
        "seed {seed} ({members} nodes; replay with MILLRACE_SIM_SEED={seed}): {report}"
    );
    sim.assert_replicas_identical();
    totals.seeds += 1;
    totals.acknowledged += report.acknowledged;
    totals.failed += report.failed;
    totals.unknown += report.unknown;
    totals.polled += report.polled;
    totals.crashes += sim.crashes;
    totals.partitions += sim.partitions;
    totals.changes += sim.changes;
}

/// Runs the seeds and checks the runs did what they claim: work got
/// acknowledged, and crashes and partitions happened.
fn run_seeds(seeds: Vec<u64>, members: u64, spares: u64) {
    let mut totals = Totals::default();
    for seed in seeds {
        run_seed(seed, members, spares, 400, &mut totals);
    }
    println!(
        "{members} nodes + {spares}: {} seeds, {} acknowledged, {} failed, {} unknown, {} polled, {} crashes, {} partitions, {} membership changes",
        totals.seeds,
        totals.acknowledged,
        totals.failed,
        totals.unknown,
        totals.polled,
        totals.crashes,
        totals.partitions,
        totals.changes
    );
    if spares > 0 && totals.seeds >= 20 {
        assert!(totals.changes > 0, "no membership change happened");
    }
    assert!(totals.acknowledged > 0, "nothing was acknowledged");
    if totals.seeds >= 20 {
        assert!(
            totals.crashes > 0 && totals.partitions > 0,
            "the faults did not happen"
        );
    }
}

/// Seeds to run: `MILLRACE_SIM_SEED` alone, else `count` (or
/// `MILLRACE_SIM_SEEDS`) from `first`.
fn seeds(first: u64, count: u64) -> Vec<u64> {
    if let Some(seed) = std::env::var("MILLRACE_SIM_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
    {
        return vec![seed];
    }
    let count = std::env::var("MILLRACE_SIM_SEEDS")
        .ok()
        .and_then(|count| count.parse().ok())
        .unwrap_or(count);
    (first..first + count).collect()
}

/// Temporary directories in memory when the machine has /dev/shm: the
/// simulation does not fsync, and thousands of files go faster there.
fn common_tempdir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::tempdir_in(shm) {
            return dir;
        }
    }
    tempfile::tempdir().expect("tempdir")
}

#[test]
fn three_nodes_under_a_hostile_network_lose_nothing_acknowledged() {
    run_seeds(seeds(1, 200), 3, 0);
}

#[test]
fn five_nodes_under_a_hostile_network_lose_nothing_acknowledged() {
    run_seeds(seeds(10_001, 200), 5, 0);
}

/// The double failover: the leader commits a batch and is killed before
/// the followers learn of the commit, with an uncommitted batch of its own
/// after it; a follower is elected, commits the batch and takes a new one;
/// the old leader comes back. Its divergent suffix is cut, nothing
/// acknowledged is lost, and the three logs are byte-identical up to the
/// high watermark.
#[test]
fn double_failover_keeps_the_replicas_identical() {
    let root = common_tempdir();
    let mut sim = Sim::new(7, 3, 0, HOSTILE, root.path());
    let settle = |sim: &mut Sim| {
        for _ in 0..500 {
            sim.step(false);
            if sim.leader().is_some_and(|leader| {
                sim.nodes[sim.index(leader)]
                    .as_ref()
                    .is_some_and(|node| node.core.serves_reads())
            }) && sim.network.is_empty()
            {
                return;
            }
        }
        panic!("no leader settled");
    };
    settle(&mut sim);
    let old_leader = sim.leader().expect("a leader");
    let position = sim.index(old_leader);
    let acknowledged_before = sim.history.check().acknowledged;

    // Batch A: committed by the leader; the followers never hear so.
    let next_index = sim.nodes[position]
        .as_ref()
        .unwrap()
        .core
        .status()
        .last_index
        + 1;
    sim.hide_commit = Some((old_leader, next_index));
    sim.produce();
    for _ in 0..100 {
        sim.step(false);
        if sim.history.check().acknowledged > acknowledged_before {
            break;
        }
    }
    assert_eq!(
        sim.history.check().acknowledged,
        acknowledged_before + 1,
        "A was acknowledged"
    );
    let followers_commit: Vec<u64> = sim
        .nodes
        .iter()
        .flatten()
        .map(|node| node.core.status())
        .filter(|status| status.id != old_leader)
        .map(|status| status.commit_index)
        .collect();
    assert!(
        followers_commit.iter().all(|&commit| commit < next_index),
        "the followers must not know A is committed: {followers_commit:?}"
    );

    // Batch B: only in the old leader's log, then the old leader dies.
    sim.produce();
    for _ in 0..3 {
        sim.step(false);
    }
    let old_last = sim.nodes[position]
        .as_ref()
        .unwrap()
        .core
        .status()
        .last_index;
    assert!(old_last > next_index, "B is in the old leader's log");
    sim.nodes[position] = None;
    sim.forget_crashed_waiters();
    sim.hide_commit = None;
    sim.network.clear();

    // A follower takes over, commits A with its own entry, takes batch C.
    settle(&mut sim);
    let new_leader = sim.leader().expect("a new leader");
    assert_ne!(new_leader, old_leader);
    sim.produce();
    for _ in 0..100 {
        sim.step(false);
    }
    // The old leader comes back; its B is cut and it catches up.
    sim.heal();
    sim.forget_crashed_waiters();
    sim.consume();
    let report = sim.history.check();
    assert_eq!(report.anomalies(), 0, "{report}");
    assert_eq!(
        report.acknowledged,
        acknowledged_before + 2,
        "A and C: {report}"
    );
    let b_value = format!("s7-v{}", sim.values.len() - 2).into_bytes();
    assert!(
        sim.history
            .sends()
            .iter()
            .any(|send| send.value == b_value && send.outcome != SendOutcome::Failed),
        "B's outcome was unknown to its client"
    );
    sim.assert_replicas_identical();
    let high_watermarks: Vec<Offset> = sim
        .nodes
        .iter()
        .flatten()
        .map(|node| node.log.high_watermark())
        .collect();
    assert!(
        high_watermarks.windows(2).all(|pair| pair[0] == pair[1]),
        "{high_watermarks:?}"
    );
}

/// Membership changes under the same faults: a fourth node starts outside
/// the group (as `join = true` does) and is added; voters are removed and
/// added back, one change at a time, while producers and the consumer go
/// on. Configuration changes are entries like any other (control batches
/// in the log, applied again after a restart).
#[test]
fn membership_changes_under_a_hostile_network_lose_nothing_acknowledged() {
    run_seeds(seeds(20_001, 200), 3, 1);
}
