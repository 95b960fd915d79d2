//! `GroupCoordinator`: the one place consumer groups live.
//!
//! It owns the membership of every group, the assignment of partitions to
//! members, and the [`OffsetStore`]: a commit is a message to it, checked
//! against the current owner (a member that lost a partition can no longer
//! commit it) and written in one sled transaction with the state that goes
//! with it. Members are in-process pipeline members today; a Kafka-protocol
//! front end (JoinGroup, SyncGroup, Heartbeat, OffsetCommit) will speak to
//! the same messages for remote clients.
//!
//! # Cooperative rebalancing
//!
//! When a member joins or leaves, the coordinator computes a balanced,
//! sticky target (every member gets `⌊P/M⌋` or `⌈P/M⌉` partitions and keeps
//! what it has when it can). Only partitions that change owner pause:
//!
//! 1. a partition whose owner must give it up is *revoked*: the owner
//!    finishes its in-flight batches, commits, and answers [`Revoked`];
//! 2. only then is it *assigned* to its new owner, which starts from the
//!    committed offset (and state). Free partitions are assigned at once.
//!
//! A member that leaves has committed first, so its partitions are free.
//! Remote members that stop heartbeating are removed after their session
//! timeout; in-process members leave explicitly.

use crate::offsets::{CommitToken, OffsetError, OffsetStore, StateChanges};
use crate::types::{Offset, PartitionId};
use actix::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// How often session timeouts are checked.
const SESSION_CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// What a member is told when its assignment changes.
#[derive(Message, Clone, Debug, PartialEq, Eq)]
#[rtype(result = "()")]
pub(crate) struct AssignmentChange {
    /// Partitions it now owns: start them from the committed offset.
    pub(crate) assigned: Vec<PartitionId>,
    /// Partitions to give up: finish, commit, then send [`Revoked`].
    pub(crate) revoked: Vec<PartitionId>,
}

/// Why a group request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum GroupError {
    #[error("group {group:?}: member {member} is not a member")]
    UnknownMember { group: String, member: String },
    #[error("group {group:?}: member {member} does not own {topic}-{partition}")]
    NotOwner {
        group: String,
        member: String,
        topic: String,
        partition: PartitionId,
    },
    #[error("group {group:?} consumes {existing}, not {requested}")]
    WrongTopic {
        group: String,
        existing: String,
        requested: String,
    },
    #[error(transparent)]
    Offsets(#[from] OffsetError),
}

/// A member joins `group` to consume `topic` (which has `partitions`).
#[derive(Message)]
#[rtype(result = "Result<(), GroupError>")]
pub(crate) struct Join {
    pub(crate) group: String,
    pub(crate) topic: String,
    pub(crate) partitions: u32,
    pub(crate) member: String,
    pub(crate) notify: Recipient<AssignmentChange>,
    /// Removed if it sends nothing for this long; `None` for in-process members.
    pub(crate) session_timeout: Option<Duration>,
}

/// A member leaves, having committed what it finished.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Leave {
    pub(crate) group: String,
    pub(crate) member: String,
}

/// A member has finished with revoked partitions (committed, stopped).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Revoked {
    pub(crate) group: String,
    pub(crate) member: String,
    pub(crate) partitions: Vec<PartitionId>,
}

/// A remote member is alive.
#[derive(Message)]
#[rtype(result = "Result<(), GroupError>")]
pub(crate) struct Heartbeat {
    pub(crate) group: String,
    pub(crate) member: String,
}

/// Commits an offset (and the keyed state consistent with it) for a
/// partition the member owns.
#[derive(Message)]
#[rtype(result = "Result<Offset, GroupError>")]
pub(crate) struct Commit {
    pub(crate) member: String,
    pub(crate) token: CommitToken,
    /// Sled tree and changes of the pipeline's keyed state, if any.
    pub(crate) state: Option<(sled::Tree, Vec<(Vec<u8>, Option<Vec<u8>>)>)>,
}

/// Who owns what, for tests and `/metrics`.
#[derive(Message)]
#[rtype(result = "Option<GroupDescription>")]
pub(crate) struct DescribeGroup {
    pub(crate) group: String,
}

/// A group's members and their partitions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupDescription {
    /// The topic it consumes.
    pub topic: String,
    /// Member id → the partitions it owns (revocations in progress included).
    pub members: BTreeMap<String, Vec<PartitionId>>,
    /// Rebalances so far.
    pub rebalances: u64,
}

/// The coordinator's answer to `Stop`, once it has stopped taking requests.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct StopCoordinator {
    pub(crate) reply: tokio::sync::oneshot::Sender<()>,
}

struct Member {
    notify: Recipient<AssignmentChange>,
    session_timeout: Option<Duration>,
    last_seen: Instant,
}

/// Owner of one partition.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Ownership {
    Free,
    Owned(String),
    /// `from` is finishing it; `to` gets it when `from` answers `Revoked`
    /// (`None`: nobody yet, decided again then).
    Revoking {
        from: String,
        to: Option<String>,
    },
}

struct Group {
    topic: String,
    members: BTreeMap<String, Member>,
    partitions: Vec<Ownership>,
    rebalances: u64,
}

impl Group {
    fn owner_for_commit(&self, partition: PartitionId) -> Option<&str> {
        match self.partitions.get(partition.0 as usize)? {
            Ownership::Free => None,
            Ownership::Owned(member) => Some(member),
            Ownership::Revoking { from, .. } => Some(from),
        }
    }

    /// The balanced, sticky target owner of every partition.
    fn target(&self) -> Vec<Option<String>> {
        let count = self.partitions.len();
        let members: Vec<&String> = self.members.keys().collect();
        if members.is_empty() {
            return vec![None; count];
        }
        // Current holdings (a partition being revoked counts for its
        // destination if it has one, otherwise for nobody).
        let mut held: BTreeMap<&str, Vec<usize>> = members
            .iter()
            .map(|member| (member.as_str(), Vec::new()))
            .collect();
        for (index, ownership) in self.partitions.iter().enumerate() {
            let holder = match ownership {
                Ownership::Owned(member) => Some(member),
                Ownership::Revoking { to: Some(to), .. } => Some(to),
                _ => None,
            };
            if let Some(list) = holder.and_then(|member| held.get_mut(member.as_str())) {
                list.push(index);
            }
        }
        // Members holding more get the larger quotas (fewer moves).
        let base = count / members.len();
        let extra = count % members.len();
        let mut by_holding: Vec<&str> = members.iter().map(|member| member.as_str()).collect();
        by_holding.sort_by(|a, b| held[b].len().cmp(&held[a].len()).then(a.cmp(b)));
        let quota: BTreeMap<&str, usize> = by_holding
            .iter()
            .enumerate()
            .map(|(rank, member)| (*member, base + usize::from(rank < extra)))
            .collect();
        let mut target: Vec<Option<String>> = vec![None; count];
        let mut filled: BTreeMap<&str, usize> = BTreeMap::new();
        for (member, indexes) in &held {
            for &index in indexes.iter().take(quota[member]) {
                target[index] = Some((*member).to_owned());
            }
            filled.insert(member, indexes.len().min(quota[member]));
        }
        let mut open = by_holding.iter().copied().cycle();
        for slot in target.iter_mut().filter(|slot| slot.is_none()) {
            // Some member is below quota as long as a partition is unplaced.
            for _ in 0..members.len() {
                let Some(member) = open.next() else { break };
                let have = filled.entry(member).or_insert(0);
                if *have < quota[member] {
                    *have += 1;
                    *slot = Some(member.to_owned());
                    break;
                }
            }
        }
        target
    }

    /// Moves every partition toward the target; returns the messages to send.
    fn rebalance(&mut self) -> BTreeMap<String, AssignmentChange> {
        let target = self.target();
        let mut changes: BTreeMap<String, AssignmentChange> = BTreeMap::new();
        fn change<'c>(
            changes: &'c mut BTreeMap<String, AssignmentChange>,
            member: &str,
        ) -> &'c mut AssignmentChange {
            changes
                .entry(member.to_owned())
                .or_insert_with(|| AssignmentChange {
                    assigned: Vec::new(),
                    revoked: Vec::new(),
                })
        }
        let mut moved = false;
        for (index, wanted) in target.into_iter().enumerate() {
            let partition = PartitionId(index as u32);
            let ownership = &mut self.partitions[index];
            match (ownership.clone(), wanted) {
                (Ownership::Free, Some(to)) => {
                    change(&mut changes, &to).assigned.push(partition);
                    *ownership = Ownership::Owned(to);
                    moved = true;
                }
                (Ownership::Owned(from), wanted) if wanted.as_deref() != Some(from.as_str()) => {
                    change(&mut changes, &from).revoked.push(partition);
                    *ownership = Ownership::Revoking { from, to: wanted };
                    moved = true;
                }
                (Ownership::Revoking { from, .. }, wanted) => {
                    // Still finishing; only the destination changes.
                    *ownership = Ownership::Revoking { from, to: wanted };
                }
                _ => {}
            }
        }
        if moved {
            self.rebalances += 1;
        }
        changes
    }
}

/// The actor.
pub(crate) struct GroupCoordinator {
    store: OffsetStore,
    groups: HashMap<String, Group>,
}

impl GroupCoordinator {
    pub(crate) fn new(store: OffsetStore) -> GroupCoordinator {
        GroupCoordinator {
            store,
            groups: HashMap::new(),
        }
    }

    fn send_changes(&self, group: &str, changes: BTreeMap<String, AssignmentChange>) {
        let Some(state) = self.groups.get(group) else {
            return;
        };
        for (member, change) in changes {
            if let Some(member_state) = state.members.get(&member) {
                tracing::info!(group, %member, assigned = ?change.assigned, revoked = ?change.revoked, "assignment changed");
                // `do_send`: membership changes must not be lost to a full mailbox.
                member_state.notify.do_send(change);
            }
        }
    }

    fn rebalance(&mut self, group: &str) {
        let changes = match self.groups.get_mut(group) {
            Some(state) => state.rebalance(),
            None => return,
        };
        self.send_changes(group, changes);
    }

    fn remove_member(&mut self, group: &str, member: &str) {
        let Some(state) = self.groups.get_mut(group) else {
            return;
        };
        if state.members.remove(member).is_none() {
            return;
        }
        for ownership in &mut state.partitions {
            match ownership {
                Ownership::Owned(owner) if owner == member => *ownership = Ownership::Free,
                Ownership::Revoking { from, .. } if from == member => *ownership = Ownership::Free,
                Ownership::Revoking { to, .. } if to.as_deref() == Some(member) => *to = None,
                _ => {}
            }
        }
        tracing::info!(group, member, "member left");
        self.rebalance(group);
    }
}

impl Actor for GroupCoordinator {
    type Context = Context<Self>;

    fn started(&mut self, context: &mut Self::Context) {
        // Unbounded: each member and sink stage has at most one request
        // outstanding and waits for its answer, so they bound it; actix's
        // own bound can strand a waiting sender (see actors/mailbox.rs).
        context.set_mailbox_capacity(0);
        context.run_interval(SESSION_CHECK_INTERVAL, |coordinator, _| {
            let now = Instant::now();
            let expired: Vec<(String, String)> = coordinator
                .groups
                .iter()
                .flat_map(|(group, state)| {
                    state.members.iter().filter_map(move |(member, info)| {
                        let timeout = info.session_timeout?;
                        (now.duration_since(info.last_seen) > timeout)
                            .then(|| (group.clone(), member.clone()))
                    })
                })
                .collect();
            for (group, member) in expired {
                tracing::warn!(%group, %member, "session timed out; removing the member");
                coordinator.remove_member(&group, &member);
            }
        });
    }
}

impl Handler<Join> for GroupCoordinator {
    type Result = Result<(), GroupError>;

    fn handle(&mut self, join: Join, _: &mut Self::Context) -> Self::Result {
        let state = self
            .groups
            .entry(join.group.clone())
            .or_insert_with(|| Group {
                topic: join.topic.clone(),
                members: BTreeMap::new(),
                partitions: vec![Ownership::Free; join.partitions as usize],
                rebalances: 0,
            });
        if state.topic != join.topic {
            return Err(GroupError::WrongTopic {
                group: join.group,
                existing: state.topic.clone(),
                requested: join.topic,
            });
        }
        // Partitions can be added to a topic (never removed).
        while state.partitions.len() < join.partitions as usize {
            state.partitions.push(Ownership::Free);
        }
        state.members.insert(
            join.member.clone(),
            Member {
                notify: join.notify,
                session_timeout: join.session_timeout,
                last_seen: Instant::now(),
            },
        );
        tracing::info!(group = %join.group, member = %join.member, "member joined");
        self.rebalance(&join.group);
        Ok(())
    }
}

impl Handler<Leave> for GroupCoordinator {
    type Result = ();

    fn handle(&mut self, leave: Leave, _: &mut Self::Context) {
        self.remove_member(&leave.group, &leave.member);
    }
}

impl Handler<Revoked> for GroupCoordinator {
    type Result = ();

    fn handle(&mut self, revoked: Revoked, _: &mut Self::Context) {
        let Some(state) = self.groups.get_mut(&revoked.group) else {
            return;
        };
        for partition in revoked.partitions {
            if let Some(ownership) = state.partitions.get_mut(partition.0 as usize) {
                if matches!(ownership, Ownership::Revoking { from, .. } if *from == revoked.member)
                {
                    *ownership = Ownership::Free;
                }
            }
        }
        self.rebalance(&revoked.group);
    }
}

impl Handler<Heartbeat> for GroupCoordinator {
    type Result = Result<(), GroupError>;

    fn handle(&mut self, heartbeat: Heartbeat, _: &mut Self::Context) -> Self::Result {
        let member = self
            .groups
            .get_mut(&heartbeat.group)
            .and_then(|state| state.members.get_mut(&heartbeat.member))
            .ok_or_else(|| GroupError::UnknownMember {
                group: heartbeat.group.clone(),
                member: heartbeat.member.clone(),
            })?;
        member.last_seen = Instant::now();
        Ok(())
    }
}

impl Handler<Commit> for GroupCoordinator {
    type Result = Result<Offset, GroupError>;

    fn handle(&mut self, commit: Commit, _: &mut Self::Context) -> Self::Result {
        let token = &commit.token;
        tracing::debug!(group = token.group(), partition = %token.partition(), offset = %token.next_offset(), "coordinator: commit");
        let state =
            self.groups
                .get_mut(token.group())
                .ok_or_else(|| GroupError::UnknownMember {
                    group: token.group().to_owned(),
                    member: commit.member.clone(),
                })?;
        if state.owner_for_commit(token.partition()) != Some(commit.member.as_str()) {
            return Err(GroupError::NotOwner {
                group: token.group().to_owned(),
                member: commit.member,
                topic: token.topic().to_owned(),
                partition: token.partition(),
            });
        }
        if let Some(member) = state.members.get_mut(&commit.member) {
            member.last_seen = Instant::now();
        }
        let changes = commit.state.as_ref().map(|(tree, changes)| StateChanges {
            tree,
            changes: changes.as_slice(),
        });
        Ok(self.store.commit_with_state(token, changes)?)
    }
}

impl Handler<DescribeGroup> for GroupCoordinator {
    type Result = Option<GroupDescription>;

    fn handle(&mut self, describe: DescribeGroup, _: &mut Self::Context) -> Self::Result {
        let state = self.groups.get(&describe.group)?;
        let mut members: BTreeMap<String, Vec<PartitionId>> = state
            .members
            .keys()
            .map(|member| (member.clone(), Vec::new()))
            .collect();
        for (index, ownership) in state.partitions.iter().enumerate() {
            let owner = match ownership {
                Ownership::Owned(member) => member,
                Ownership::Revoking { from, .. } => from,
                Ownership::Free => continue,
            };
            if let Some(list) = members.get_mut(owner) {
                list.push(PartitionId(index as u32));
            }
        }
        Some(GroupDescription {
            topic: state.topic.clone(),
            members,
            rebalances: state.rebalances,
        })
    }
}

impl Handler<StopCoordinator> for GroupCoordinator {
    type Result = ();

    fn handle(&mut self, stop: StopCoordinator, context: &mut Self::Context) {
        let _ = stop.reply.send(());
        context.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(partitions: usize, members: &[&str]) -> Group {
        Group {
            topic: "t".into(),
            members: BTreeMap::new(),
            partitions: vec![Ownership::Free; partitions],
            rebalances: 0,
        }
        .with_members(members)
    }

    impl Group {
        fn with_members(mut self, members: &[&str]) -> Group {
            for member in members {
                self.members.insert((*member).to_owned(), test_member());
            }
            self
        }

        fn owners(&self) -> Vec<Option<&str>> {
            self.partitions
                .iter()
                .map(|ownership| match ownership {
                    Ownership::Owned(member) => Some(member.as_str()),
                    _ => None,
                })
                .collect()
        }

        /// Completes every revocation, as the members would.
        fn finish_revocations(&mut self) -> BTreeMap<String, AssignmentChange> {
            for ownership in &mut self.partitions {
                if matches!(ownership, Ownership::Revoking { .. }) {
                    *ownership = Ownership::Free;
                }
            }
            self.rebalance()
        }
    }

    fn test_member() -> Member {
        struct Sink;
        impl Actor for Sink {
            type Context = Context<Self>;
        }
        impl Handler<AssignmentChange> for Sink {
            type Result = ();
            fn handle(&mut self, _: AssignmentChange, _: &mut Self::Context) {}
        }
        // An address whose actor never runs: messages are never read.
        let (_, receiver) = actix::dev::channel::channel::<Sink>(16);
        let address: Addr<Sink> = Addr::new(receiver.sender());
        Member {
            notify: address.recipient(),
            session_timeout: None,
            last_seen: Instant::now(),
        }
    }

    fn counts(group: &Group) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for owner in group.owners().into_iter().flatten() {
            *counts.entry(owner.to_owned()).or_insert(0) += 1;
        }
        counts
    }

    #[test]
    fn free_partitions_are_spread_evenly() {
        let mut state = group(10, &["a", "b", "c"]);
        let changes = state.rebalance();
        assert!(changes.values().all(|change| change.revoked.is_empty()));
        let counts = counts(&state);
        assert_eq!(counts.values().sum::<usize>(), 10);
        assert!(counts.values().all(|&count| count == 3 || count == 4));
    }

    #[test]
    fn a_join_moves_only_what_the_newcomer_needs_and_revokes_before_assigning() {
        let mut state = group(6, &["a", "b"]);
        state.rebalance();
        let before = state
            .owners()
            .iter()
            .map(|o| o.map(str::to_owned))
            .collect::<Vec<_>>();
        state.members.insert("c".into(), test_member());
        let changes = state.rebalance();
        // Two partitions move, one from each old member; c gets nothing yet.
        let revoked: usize = changes.values().map(|change| change.revoked.len()).sum();
        assert_eq!(revoked, 2);
        assert!(changes
            .get("c")
            .is_none_or(|change| change.assigned.is_empty()));
        // The partitions that did not move kept their owner, and were never paused.
        let kept = state
            .owners()
            .iter()
            .zip(&before)
            .filter(|(now, was)| now.map(str::to_owned) == **was)
            .count();
        assert_eq!(kept, 4);
        let changes = state.finish_revocations();
        assert_eq!(changes["c"].assigned.len(), 2);
        assert!(counts(&state).values().all(|&count| count == 2));
    }

    #[test]
    fn a_leaving_member_frees_its_partitions_for_the_others() {
        let mut state = group(5, &["a", "b", "c"]);
        state.rebalance();
        state.members.remove("b");
        for ownership in &mut state.partitions {
            if *ownership == Ownership::Owned("b".into()) {
                *ownership = Ownership::Free;
            }
        }
        let changes = state.rebalance();
        assert!(changes.values().all(|change| change.revoked.is_empty()));
        let counts = counts(&state);
        assert_eq!(counts.values().sum::<usize>(), 5);
        assert!(!counts.contains_key("b"));
    }

    #[test]
    fn with_more_members_than_partitions_some_members_idle() {
        let mut state = group(2, &["a", "b", "c", "d"]);
        state.rebalance();
        assert_eq!(counts(&state).values().sum::<usize>(), 2);
        assert!(counts(&state).values().all(|&count| count == 1));
    }
}
