//! `GroupCoordinator`: the one place consumer groups live.
//!
//! It owns the membership of every group, the assignment of partitions to
//! members, and the [`OffsetStore`]: a commit is a message to it, checked
//! against the current owner (a member that lost a partition can no longer
//! commit it) and written in one sled transaction with the state that goes
//! with it. Two kinds of member share group names and the same committed
//! offsets: in-process pipeline members (`Join`, `Leave`, `Revoked`,
//! `Commit`) and remote Kafka consumers, whose classic group protocol the
//! Kafka front end (src/kafka) turns into one message each (`KafkaJoin`,
//! `KafkaSync`, `KafkaHeartbeat`, `KafkaLeave`, `KafkaCommit`,
//! `KafkaOffsetFetch`, and for operators' tools `KafkaListGroups` and
//! `KafkaDescribeGroups`), answered on a oneshot channel because JoinGroup
//! and SyncGroup answers wait for other members.
//!
//! ListGroups lists every group with members of either kind and every group
//! with committed offsets (at most [`LIST_GROUPS_MAX`]). A group's state is
//! its Kafka state while it has Kafka members; otherwise `Stable` with
//! pipeline members (`PreparingRebalance` while a revocation is under way)
//! and `Empty` without. Pipeline members are described as consumers of the
//! protocol [`PIPELINE_PROTOCOL`]: a `ConsumerProtocolSubscription` v0 of
//! the group's topic and a `ConsumerProtocolAssignment` v0 of what they
//! own. A group nobody knows is `Dead`, as in Kafka. One DescribeGroups
//! describes at most 1,000 groups and 64 MiB of member metadata and
//! assignments; the groups after that are answered with an error.
//!
//! # Cooperative rebalancing (pipeline members)
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
//! In-process members leave explicitly; Kafka members that stop
//! heartbeating are removed after their session timeout (below).
//!
//! # The Kafka classic group protocol
//!
//! As in Kafka's (pre-KIP-848) `GroupCoordinator`, a group with Kafka
//! members is `Empty`, `PreparingRebalance` (the join phase),
//! `CompletingRebalance` (waiting for SyncGroup) or `Stable`.
//!
//! - A JoinGroup from a new member, or from a member whose protocols
//!   changed (or from the leader while stable), a LeaveGroup, or a session
//!   timeout starts a rebalance; heartbeats then answer
//!   `REBALANCE_IN_PROGRESS` so that the members rejoin. JoinGroup v4+ with
//!   an empty member id is first answered `MEMBER_ID_REQUIRED` with a fresh
//!   id (KIP-394); such an id must be used within the session timeout.
//! - The join phase ends when every member has rejoined and no handed-out
//!   id is outstanding, or when the longest rebalance timeout passes;
//!   members that did not rejoin are removed. Then the generation
//!   increments, a protocol every member supports is chosen (each member
//!   votes for the first of its list that all support; the most votes win,
//!   ties go to the earliest member's preference), the leader is kept if it
//!   is still a member (otherwise the earliest member leads), and every
//!   JoinGroup is answered; the leader's answer lists every member with its
//!   metadata for the chosen protocol.
//! - SyncGroup: every member waits for the leader's, which carries the
//!   assignments; then each gets its own (empty if the leader gave none).
//!   Members that have not sent SyncGroup within the rebalance timeout are
//!   removed (and the group rebalances); if that includes the leader, the
//!   members that did sync are answered `REBALANCE_IN_PROGRESS`.
//! - Sessions: a JoinGroup, SyncGroup, Heartbeat or OffsetCommit counts as
//!   liveness; a member with no request for its session timeout is removed.
//!   A member whose JoinGroup or SyncGroup is parked here is alive. Every
//!   deadline is checked by the coordinator's interval timer (500 ms), which
//!   only visits groups that have Kafka members.
//! - OffsetCommit: generation `-1` is a standalone commit, allowed while
//!   the group has no members; otherwise `REBALANCE_IN_PROGRESS` while
//!   completing a rebalance, `UNKNOWN_MEMBER_ID`, `ILLEGAL_GENERATION`, as
//!   Kafka answers. The whole request is one sled transaction, flushed
//!   before the answer. Unlike a pipeline's commit, a Kafka client's may
//!   move an offset backwards (a consumer that seeks back); metadata up to
//!   4,096 bytes is stored with it. OffsetFetch reads the same store, so a
//!   Kafka consumer sees a pipeline's commits and the other way round.
//! - Bounds: 1,000 members (pending ids included) per group and 100,000
//!   in all (`GROUP_MAX_SIZE_REACHED`), 10,000 groups with Kafka members
//!   (`COORDINATOR_NOT_AVAILABLE`), session timeouts of 1 s to 30 min
//!   (`INVALID_SESSION_TIMEOUT`; Kafka's default minimum is 6 s), rebalance
//!   timeouts capped at 30 min. One parked JoinGroup and one parked
//!   SyncGroup per member: a repeated one replaces the older, which is
//!   answered `REBALANCE_IN_PROGRESS`.
//!
//! # Pipeline members and Kafka consumers in one group
//!
//! While a group has pipeline members, the coordinator assigns for everyone
//! (*server-side* mode). Kafka members that subscribe to the group's topic
//! take part in the same balanced, sticky target as the pipeline members.
//! Every Kafka client is a follower: the JoinGroup leader is
//! [`SERVER_SIDE_LEADER`], nobody's member id, and the leader's member list
//! is empty. A Kafka member's SyncGroup is answered with its partitions,
//! encoded as a `ConsumerProtocolAssignment` v0, once the partitions coming
//! to it from pipeline members have been revoked (or at the rebalance
//! timeout). When the partitions of a Kafka member that has been answered
//! change (a pipeline member joined or left, a revocation finished late),
//! the group rebalances so that the member rejoins and is told. A group
//! with only Kafka members uses the normal client-side assignor flow; the
//! group switches mode with a rebalance when its first pipeline member
//! joins or its last one leaves.
//!
//! Ownership never overlaps. For each Kafka member the coordinator keeps
//! what its client *may* be consuming: every partition it was told (server
//! side) or its leader assigned it (client side; everything, if the
//! assignment cannot be decoded). That set shrinks only when the member
//! rejoins, to the `owned_partitions` its subscription declares (nothing
//! for an eager client, which gives every partition up before JoinGroup;
//! what it keeps for a cooperative one), or when it is removed. No
//! partition is assigned to any other member, pipeline or Kafka, while a
//! Kafka member may hold it; a pipeline member's partition goes to a Kafka
//! member only after the pipeline member answered [`Revoked`]. While
//! pipeline members are present, a Kafka member may commit only partitions
//! of the group's topic it owns or may still hold (others answer
//! `ILLEGAL_GENERATION`, so that it rejoins), and standalone commits are
//! refused (`UNKNOWN_MEMBER_ID`).
//!
//! Limits:
//!
//! - One topic per group when mixing: a Kafka member is given partitions of
//!   the pipeline's topic only; other topics of its subscription get none
//!   while pipeline members are present.
//! - While a group has pipeline members, only Kafka members of protocol
//!   type `consumer` with a readable subscription may join
//!   (`INCONSISTENT_GROUP_PROTOCOL`). If other Kafka members (e.g. Connect
//!   workers) were there first, what they hold is unknown, so the pipeline
//!   members get no partition of the topic until those leave.
//! - A Kafka member removed by its session timeout is taken to hold
//!   nothing, as in Kafka: if its client is in fact still consuming (a
//!   zombie), its partitions may be processed twice until it notices, but
//!   its commits are refused.
//! - Static membership (`group.instance.id`) is treated as dynamic: a
//!   restarted static member joins as a new member and the old one times
//!   out. There is no initial rebalance delay. Group membership lives in
//!   memory (committed offsets are durable): after a restart, Kafka clients
//!   get `UNKNOWN_MEMBER_ID` and join again.

use crate::offsets::{
    ClientOffset, CommitToken, OffsetError, OffsetStore, StateChanges, GROUP_NAME_BYTES_MAX,
    METADATA_BYTES_MAX,
};
use crate::types::{Offset, PartitionId};
use actix::prelude::*;
use bytes::Bytes;
use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How often session timeouts and rebalance deadlines are checked.
const SESSION_CHECK_INTERVAL: Duration = Duration::from_millis(500);
/// The JoinGroup leader Kafka clients are told while the coordinator
/// assigns (a member id no client has, so every client is a follower).
pub(crate) const SERVER_SIDE_LEADER: &str = "millrace-coordinator";
/// The protocol type of Kafka consumers (the only one whose assignments
/// the coordinator can read or write).
const CONSUMER_PROTOCOL: &str = "consumer";
/// Groups with Kafka members, at most.
const KAFKA_GROUPS_MAX: usize = 10_000;
/// Kafka members and handed-out member ids of all groups together, at most.
const KAFKA_MEMBERS_MAX: usize = 100_000;
/// Protocols (assignors) one JoinGroup may offer.
const PROTOCOLS_MAX: usize = 64;
/// Partitions an OffsetFetch of "every committed partition" returns, at most.
const OFFSET_FETCH_ALL_MAX: usize = 100_000;
/// Longest client id kept in a generated member id, in characters.
const CLIENT_ID_CHARS_MAX: usize = 100;
/// Groups one ListGroups answer names, at most.
pub(crate) const LIST_GROUPS_MAX: usize = 10_000;
/// Groups one DescribeGroups describes; the rest are answered `INVALID_REQUEST`.
const DESCRIBE_GROUPS_MAX: usize = 1_000;
/// Member metadata and assignment bytes one DescribeGroups answer carries
/// before the groups after it are answered `COORDINATOR_NOT_AVAILABLE`.
const DESCRIBE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// The protocol (assignor) name pipeline-only groups are described with.
pub(crate) const PIPELINE_PROTOCOL: &str = "millrace-cooperative";
/// The client id pipeline members are described with.
const PIPELINE_CLIENT_ID: &str = "millrace-pipeline";
/// Reconciliation rounds after one event (each round is idempotent; a few suffice).
const SETTLE_ROUNDS_MAX: usize = 8;

/// Kafka's error codes, as the group messages answer them.
#[allow(dead_code)] // the front end uses some the coordinator does not
pub(crate) mod kafka_error {
    pub const NONE: i16 = 0;
    pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    pub const NOT_COORDINATOR: i16 = 16;
    pub const ILLEGAL_GENERATION: i16 = 22;
    pub const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
    pub const INVALID_GROUP_ID: i16 = 24;
    pub const UNKNOWN_MEMBER_ID: i16 = 25;
    pub const INVALID_SESSION_TIMEOUT: i16 = 26;
    pub const REBALANCE_IN_PROGRESS: i16 = 27;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const OFFSET_METADATA_TOO_LARGE: i16 = 12;
    pub const MEMBER_ID_REQUIRED: i16 = 79;
    pub const GROUP_ID_NOT_FOUND: i16 = 69;
    pub const UNKNOWN_SERVER_ERROR: i16 = -1;
    pub const FENCED_INSTANCE_ID: i16 = 82;
    /// A negative committed offset (Kafka's code for an unstorable commit).
    pub const INVALID_COMMIT_OFFSET_SIZE: i16 = 28;
    pub const GROUP_MAX_SIZE_REACHED: i16 = 81;
    pub const INVALID_REQUEST: i16 = 42;
}
use kafka_error as code;

/// Limits of the Kafka group protocol (Kafka's broker settings of the same meaning).
#[derive(Clone, Debug)]
pub(crate) struct KafkaSettings {
    /// `group.min.session.timeout.ms`.
    pub(crate) min_session_timeout: Duration,
    /// `group.max.session.timeout.ms`.
    pub(crate) max_session_timeout: Duration,
    /// Longer rebalance timeouts are shortened to this.
    pub(crate) max_rebalance_timeout: Duration,
    /// `group.max.size` (members and handed-out ids).
    pub(crate) max_members: usize,
    /// How often deadlines are checked.
    pub(crate) check_interval: Duration,
}

impl Default for KafkaSettings {
    fn default() -> KafkaSettings {
        KafkaSettings {
            min_session_timeout: Duration::from_secs(1),
            max_session_timeout: Duration::from_secs(30 * 60),
            max_rebalance_timeout: Duration::from_secs(30 * 60),
            max_members: 1_000,
            check_interval: SESSION_CHECK_INTERVAL,
        }
    }
}

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

/// Commits an offset (and the keyed state consistent with it) for a
/// partition the member owns.
#[derive(Message)]
#[rtype(result = "Result<Offset, GroupError>")]
pub(crate) struct Commit {
    pub(crate) member: String,
    pub(crate) token: CommitToken,
    /// Sled tree and changes of the pipeline's keyed state, if any.
    pub(crate) state: Option<(sled::Tree, crate::offsets::StateWrites)>,
}

/// Kafka JoinGroup. Answered when the join phase ends (or at once with an error).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct KafkaJoin {
    pub(crate) group: String,
    /// `""`: a new member.
    pub(crate) member_id: String,
    /// Static membership; treated as dynamic (module docs).
    pub(crate) group_instance_id: Option<String>,
    pub(crate) client_id: String,
    pub(crate) session_timeout: Duration,
    pub(crate) rebalance_timeout: Duration,
    /// `"consumer"` for consumers.
    pub(crate) protocol_type: String,
    /// (assignor name, member metadata), in the client's preference order.
    pub(crate) protocols: Vec<(String, Bytes)>,
    /// JoinGroup v4+: a new member is first answered `MEMBER_ID_REQUIRED`.
    pub(crate) require_known_member_id: bool,
    pub(crate) reply: oneshot::Sender<KafkaJoinResult>,
}

/// The answer to [`KafkaJoin`].
#[derive(Debug)]
pub(crate) struct KafkaJoinResult {
    pub(crate) error: i16,
    pub(crate) generation_id: i32,
    pub(crate) protocol_type: Option<String>,
    pub(crate) protocol_name: Option<String>,
    pub(crate) leader: String,
    pub(crate) member_id: String,
    /// Filled only in the leader's answer: (member_id, group_instance_id,
    /// metadata for the chosen protocol).
    pub(crate) members: Vec<(String, Option<String>, Bytes)>,
}

impl KafkaJoinResult {
    fn refused(error: i16, member_id: String) -> KafkaJoinResult {
        KafkaJoinResult {
            error,
            generation_id: -1,
            protocol_type: None,
            protocol_name: None,
            leader: String::new(),
            member_id,
            members: Vec::new(),
        }
    }
}

/// Kafka SyncGroup. Answered when the member's assignment is known.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct KafkaSync {
    pub(crate) group: String,
    pub(crate) generation_id: i32,
    pub(crate) member_id: String,
    pub(crate) protocol_type: Option<String>,
    pub(crate) protocol_name: Option<String>,
    /// Only the leader sends these (member id, assignment).
    pub(crate) assignments: Vec<(String, Bytes)>,
    pub(crate) reply: oneshot::Sender<KafkaSyncResult>,
}

/// The answer to [`KafkaSync`].
#[derive(Debug)]
pub(crate) struct KafkaSyncResult {
    pub(crate) error: i16,
    pub(crate) protocol_type: Option<String>,
    pub(crate) protocol_name: Option<String>,
    pub(crate) assignment: Bytes,
}

impl KafkaSyncResult {
    fn refused(error: i16) -> KafkaSyncResult {
        KafkaSyncResult {
            error,
            protocol_type: None,
            protocol_name: None,
            assignment: Bytes::new(),
        }
    }
}

/// Kafka Heartbeat; answered with an error code.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct KafkaHeartbeat {
    pub(crate) group: String,
    pub(crate) generation_id: i32,
    pub(crate) member_id: String,
    pub(crate) reply: oneshot::Sender<i16>,
}

/// Kafka LeaveGroup; answered with (group error, one error per member id).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct KafkaLeave {
    pub(crate) group: String,
    pub(crate) member_ids: Vec<String>,
    pub(crate) reply: oneshot::Sender<(i16, Vec<i16>)>,
}

/// Kafka OffsetCommit; answered with one code per entry of `offsets`, in order.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct KafkaCommit {
    pub(crate) group: String,
    /// `-1`: a standalone commit (no group membership).
    pub(crate) generation_id: i32,
    pub(crate) member_id: String,
    /// (topic, partition, next offset, metadata).
    pub(crate) offsets: Vec<(String, u32, i64, Option<String>)>,
    pub(crate) reply: oneshot::Sender<Vec<i16>>,
}

/// Kafka OffsetFetch; answered with (group error, (topic, partition,
/// committed offset or -1, metadata, error) per partition).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct KafkaOffsetFetch {
    pub(crate) group: String,
    /// `None`: every committed partition of the group.
    pub(crate) partitions: Option<Vec<(String, u32)>>,
    #[allow(clippy::type_complexity)]
    pub(crate) reply: oneshot::Sender<(i16, Vec<(String, u32, i64, Option<String>, i16)>)>,
}

/// Kafka ListGroups: answered with (error, groups), names sorted.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct KafkaListGroups {
    pub(crate) reply: oneshot::Sender<(i16, Vec<ListedGroup>)>,
}

/// One group of a ListGroups answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ListedGroup {
    pub(crate) group: String,
    pub(crate) protocol_type: String,
    /// `Empty`, `PreparingRebalance`, `CompletingRebalance` or `Stable`.
    pub(crate) state: &'static str,
}

/// Kafka DescribeGroups: answered with one description per requested group, in order.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct KafkaDescribeGroups {
    pub(crate) groups: Vec<String>,
    pub(crate) reply: oneshot::Sender<Vec<DescribedGroup>>,
}

/// One group of a DescribeGroups answer.
#[derive(Debug, Clone, Default)]
pub(crate) struct DescribedGroup {
    pub(crate) error: i16,
    pub(crate) group: String,
    /// As in [`ListedGroup`], or `Dead` for a group nobody knows.
    pub(crate) state: String,
    pub(crate) protocol_type: String,
    /// The assignor chosen (or [`PIPELINE_PROTOCOL`]).
    pub(crate) protocol: String,
    pub(crate) members: Vec<DescribedMember>,
}

/// One member of a [`DescribedGroup`].
#[derive(Debug, Clone, Default)]
pub(crate) struct DescribedMember {
    pub(crate) member_id: String,
    pub(crate) group_instance_id: Option<String>,
    pub(crate) client_id: String,
    /// Its subscription for the chosen protocol.
    pub(crate) metadata: Bytes,
    /// Its current assignment (`ConsumerProtocolAssignment` for consumers).
    pub(crate) assignment: Bytes,
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
    /// The topic it consumes (for a group of Kafka members only: the one
    /// topic they were assigned, or `""` if none or several).
    pub topic: String,
    /// Member id → the partitions of `topic` it owns (revocations in
    /// progress included). Kafka members are listed too.
    pub members: BTreeMap<String, Vec<PartitionId>>,
    /// Rebalances of the pipeline members' assignment so far.
    pub rebalances: u64,
    /// Kafka member id → the topic-partitions it was last given (by the
    /// coordinator, or by its leader if the assignment is readable).
    pub kafka_members: BTreeMap<String, Vec<(String, PartitionId)>>,
    /// The Kafka side's state (`Empty`, `PreparingRebalance`,
    /// `CompletingRebalance`, `Stable`), if Kafka clients use the group.
    pub kafka_state: Option<String>,
    /// The Kafka generation, if Kafka clients use the group.
    pub kafka_generation: Option<i32>,
    /// The protocol (assignor) chosen for the Kafka members.
    pub kafka_protocol: Option<String>,
    /// Whether the coordinator computes the Kafka members' assignment
    /// (pipeline members present) rather than their leader.
    pub server_side_assignment: bool,
}

/// The coordinator's answer to `Stop`, once it has stopped taking requests.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct StopCoordinator {
    pub(crate) reply: tokio::sync::oneshot::Sender<()>,
}

// ---------------------------------------------------------------------------
// The assignment of one group's topic (pipeline members, and Kafka members
// while the coordinator assigns).

struct Member {
    /// Where assignment changes go; `None` for a Kafka member, which is told
    /// its partitions at SyncGroup.
    notify: Option<Recipient<AssignmentChange>>,
}

/// Owner of one partition.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Ownership {
    Free,
    Owned(String),
    /// `from` is finishing it; `to` gets it when `from` answers `Revoked`
    /// (`None`: nobody yet, decided again then). Only pipeline members
    /// revoke this way: a Kafka member gives partitions up by rejoining.
    Revoking {
        from: String,
        to: Option<String>,
    },
}

/// Partitions of a group's topic that Kafka clients may be consuming:
/// partition index → its one possible holder, or `None` for several (or
/// unknown). Nothing is assigned to anyone else while a partition is here.
#[derive(Default)]
struct Fence {
    holders: BTreeMap<usize, Option<String>>,
}

impl Fence {
    fn add(&mut self, index: usize, member: &str) {
        match self.holders.entry(index) {
            Entry::Vacant(entry) => {
                entry.insert(Some(member.to_owned()));
            }
            Entry::Occupied(mut entry) => {
                if entry.get().as_deref() != Some(member) {
                    *entry.get_mut() = None;
                }
            }
        }
    }

    /// Whether giving partition `index` to `to` could overlap with a Kafka client.
    fn blocks(&self, index: usize, to: &str) -> bool {
        match self.holders.get(&index) {
            None => false,
            Some(Some(holder)) => holder != to,
            Some(None) => true,
        }
    }

    fn sole_holder(&self, index: usize) -> Option<&str> {
        self.holders.get(&index)?.as_deref()
    }
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

    /// Whether `member` is a Kafka member (told at SyncGroup).
    fn is_remote(&self, member: &str) -> bool {
        self.members
            .get(member)
            .is_some_and(|state| state.notify.is_none())
    }

    fn has_local_members(&self) -> bool {
        self.members.values().any(|member| member.notify.is_some())
    }

    /// The partitions `member` owns.
    fn owned_by(&self, member: &str) -> BTreeSet<u32> {
        self.partitions
            .iter()
            .enumerate()
            .filter(
                |(_, ownership)| matches!(ownership, Ownership::Owned(owner) if owner == member),
            )
            .map(|(index, _)| index as u32)
            .collect()
    }

    /// The partitions `member` owns or is still finishing (being revoked).
    fn holding(&self, member: &str) -> BTreeSet<u32> {
        self.partitions
            .iter()
            .enumerate()
            .filter(|(_, ownership)| match ownership {
                Ownership::Owned(owner) => owner == member,
                Ownership::Revoking { from, .. } => from == member,
                Ownership::Free => false,
            })
            .map(|(index, _)| index as u32)
            .collect()
    }

    /// Whether a partition is on its way to `member` (being revoked from another).
    fn incoming_to(&self, member: &str) -> bool {
        self.partitions.iter().any(
            |ownership| matches!(ownership, Ownership::Revoking { to: Some(to), .. } if to == member),
        )
    }

    /// Removes a member and frees what it owned; false if it was not one.
    fn remove(&mut self, member: &str) -> bool {
        if self.members.remove(member).is_none() {
            return false;
        }
        for ownership in &mut self.partitions {
            match ownership {
                Ownership::Owned(owner) if owner == member => *ownership = Ownership::Free,
                Ownership::Revoking { from, .. } if from == member => *ownership = Ownership::Free,
                Ownership::Revoking { to, .. } if to.as_deref() == Some(member) => *to = None,
                _ => {}
            }
        }
        true
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

    /// Moves every partition toward the target, with no Kafka client
    /// holding anything; returns the messages to send.
    #[cfg(test)]
    fn rebalance(&mut self) -> BTreeMap<String, AssignmentChange> {
        self.rebalance_fenced(&Fence::default())
    }

    /// Moves every partition toward the target without giving anyone a
    /// partition a Kafka client other than the new owner may hold; returns
    /// the messages to send to pipeline members.
    fn rebalance_fenced(&mut self, fence: &Fence) -> BTreeMap<String, AssignmentChange> {
        // A free partition that one Kafka member of this group may hold
        // stays with it unless the target moves it (stickiness).
        for (index, ownership) in self.partitions.iter_mut().enumerate() {
            if *ownership == Ownership::Free {
                if let Some(holder) = fence.sole_holder(index) {
                    if self
                        .members
                        .get(holder)
                        .is_some_and(|member| member.notify.is_none())
                    {
                        *ownership = Ownership::Owned(holder.to_owned());
                    }
                }
            }
        }
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
            // A Kafka member's partition is taken back at once: what its
            // client may still consume is in the fence until it rejoins.
            if let Ownership::Owned(from) = &self.partitions[index] {
                if wanted.as_deref() != Some(from.as_str()) && self.is_remote(from) {
                    self.partitions[index] = Ownership::Free;
                    moved = true;
                }
            }
            match (self.partitions[index].clone(), wanted) {
                (Ownership::Free, Some(to)) => {
                    if fence.blocks(index, &to) {
                        continue;
                    }
                    if !self.is_remote(&to) {
                        change(&mut changes, &to).assigned.push(partition);
                    }
                    self.partitions[index] = Ownership::Owned(to);
                    moved = true;
                }
                (Ownership::Owned(from), wanted) if wanted.as_deref() != Some(from.as_str()) => {
                    change(&mut changes, &from).revoked.push(partition);
                    self.partitions[index] = Ownership::Revoking { from, to: wanted };
                    moved = true;
                }
                (Ownership::Revoking { from, .. }, wanted) => {
                    // Still finishing; only the destination changes.
                    self.partitions[index] = Ownership::Revoking { from, to: wanted };
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

// ---------------------------------------------------------------------------
// The Kafka classic group protocol: one group's state machine.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KafkaState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl KafkaState {
    fn name(self) -> &'static str {
        match self {
            KafkaState::Empty => "Empty",
            KafkaState::PreparingRebalance => "PreparingRebalance",
            KafkaState::CompletingRebalance => "CompletingRebalance",
            KafkaState::Stable => "Stable",
        }
    }
}

/// The topic-partitions a Kafka client may be consuming.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Holds {
    Known(BTreeSet<(String, u32)>),
    /// Its assignment could not be read: anything.
    Unknown,
}

impl Holds {
    fn nothing() -> Holds {
        Holds::Known(BTreeSet::new())
    }

    /// Adds an assignment it was given (`None`: unreadable).
    fn add(&mut self, partitions: Option<BTreeSet<(String, u32)>>) {
        match (&mut *self, partitions) {
            (Holds::Known(held), Some(more)) => held.extend(more),
            (_, None) => *self = Holds::Unknown,
            (Holds::Unknown, Some(_)) => {}
        }
    }
}

struct KafkaMember {
    instance_id: Option<String>,
    /// The client id of its last JoinGroup (shown by DescribeGroups).
    client_id: String,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    protocols: Vec<(String, Bytes)>,
    /// Topics of its subscription (empty if unreadable).
    topics: BTreeSet<String>,
    last_seen: Instant,
    /// Join order, for choosing a leader.
    order: u64,
    join_reply: Option<oneshot::Sender<KafkaJoinResult>>,
    sync_reply: Option<oneshot::Sender<KafkaSyncResult>>,
    /// Has sent SyncGroup in this generation.
    synced: bool,
    /// Its assignment in this generation, once known.
    assignment: Option<Bytes>,
    /// Server side: the partitions of the group's topic it was told in this generation.
    told: Option<BTreeSet<u32>>,
    holds: Holds,
}

impl KafkaMember {
    fn metadata(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(name, _)| name == protocol)
            .map(|(_, metadata)| metadata.clone())
            .unwrap_or_default()
    }

    fn supports(&self, protocol: &str) -> bool {
        self.protocols.iter().any(|(name, _)| name == protocol)
    }

    /// Parks a JoinGroup; an older one of the same member is answered.
    fn park_join(&mut self, reply: oneshot::Sender<KafkaJoinResult>, member_id: &str) {
        if let Some(older) = self.join_reply.replace(reply) {
            let _ = older.send(KafkaJoinResult::refused(
                code::REBALANCE_IN_PROGRESS,
                member_id.to_owned(),
            ));
        }
    }
}

struct KafkaGroup {
    state: KafkaState,
    generation: i32,
    protocol_type: Option<String>,
    protocol: Option<String>,
    leader: Option<String>,
    /// This generation's assignment is the coordinator's.
    server_side: bool,
    members: BTreeMap<String, KafkaMember>,
    /// Ids answered with `MEMBER_ID_REQUIRED`, usable until then.
    pending: BTreeMap<String, Instant>,
    join_deadline: Option<Instant>,
    /// Every member must have sent SyncGroup by then.
    sync_deadline: Option<Instant>,
    /// Changes whenever membership, holdings or the state change.
    revision: u64,
}

impl KafkaGroup {
    fn new() -> KafkaGroup {
        KafkaGroup {
            state: KafkaState::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            server_side: false,
            members: BTreeMap::new(),
            pending: BTreeMap::new(),
            join_deadline: None,
            sync_deadline: None,
            revision: 0,
        }
    }

    /// Whether the coordinator should assign (pipeline members present and
    /// Kafka assignments readable).
    fn wants_server_side(&self, pipeline_active: bool) -> bool {
        pipeline_active
            && self
                .protocol_type
                .as_deref()
                .is_none_or(|kind| kind == CONSUMER_PROTOCOL)
    }

    /// Whether a member with these protocols fits the others (`except`: itself).
    fn supports(
        &self,
        protocol_type: &str,
        protocols: &[(String, Bytes)],
        except: Option<&str>,
    ) -> bool {
        if protocol_type.is_empty() || protocols.is_empty() {
            return false;
        }
        let others = || {
            self.members
                .iter()
                .filter(move |(id, _)| Some(id.as_str()) != except)
        };
        if others().next().is_none() {
            return true;
        }
        if self.protocol_type.as_deref() != Some(protocol_type) {
            return false;
        }
        protocols
            .iter()
            .any(|(name, _)| others().all(|(_, member)| member.supports(name)))
    }

    fn max_rebalance_timeout(&self) -> Duration {
        self.members
            .values()
            .map(|member| member.rebalance_timeout)
            .max()
            .unwrap_or_default()
    }

    /// The protocol for the next generation: each member votes for the first
    /// of its list that every member supports; ties go to the earliest
    /// member's preference.
    fn select_protocol(&self) -> Option<String> {
        let first = self.members.values().min_by_key(|member| member.order)?;
        let mut candidates: Vec<&str> = Vec::new();
        for (name, _) in &first.protocols {
            if !candidates.contains(&name.as_str())
                && self.members.values().all(|member| member.supports(name))
            {
                candidates.push(name);
            }
        }
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for member in self.members.values() {
            if let Some((name, _)) = member
                .protocols
                .iter()
                .find(|(name, _)| candidates.contains(&name.as_str()))
            {
                *votes.entry(name.as_str()).or_insert(0) += 1;
            }
        }
        let mut best: Option<(&str, usize)> = None;
        for candidate in candidates {
            let count = votes.get(candidate).copied().unwrap_or(0);
            if best.is_none_or(|(_, most)| count > most) {
                best = Some((candidate, count));
            }
        }
        best.map(|(name, _)| name.to_owned())
    }

    fn add_member(&mut self, id: String, member: KafkaMember, protocol_type: String) {
        if self.members.is_empty() {
            self.protocol_type = Some(protocol_type);
        }
        self.members.insert(id, member);
        self.revision += 1;
    }

    /// Removes a member; its parked answers get `UNKNOWN_MEMBER_ID`.
    fn remove_member(&mut self, id: &str, group: &str, reason: &str) -> bool {
        let Some(member) = self.members.remove(id) else {
            return false;
        };
        if let Some(reply) = member.join_reply {
            let _ = reply.send(KafkaJoinResult::refused(
                code::UNKNOWN_MEMBER_ID,
                id.to_owned(),
            ));
        }
        if let Some(reply) = member.sync_reply {
            let _ = reply.send(KafkaSyncResult::refused(code::UNKNOWN_MEMBER_ID));
        }
        if self.leader.as_deref() == Some(id) {
            self.leader = None;
        }
        self.revision += 1;
        tracing::info!(group, member = id, reason, "kafka group: member removed");
        true
    }

    /// Starts a join phase (parked SyncGroups are answered `REBALANCE_IN_PROGRESS`).
    fn prepare_rebalance(&mut self, now: Instant, group: &str, reason: &str) {
        for member in self.members.values_mut() {
            if let Some(reply) = member.sync_reply.take() {
                let _ = reply.send(KafkaSyncResult::refused(code::REBALANCE_IN_PROGRESS));
            }
        }
        if self.state != KafkaState::PreparingRebalance {
            tracing::info!(
                group,
                generation = self.generation,
                reason,
                "kafka group: rebalancing"
            );
            self.state = KafkaState::PreparingRebalance;
            self.join_deadline = Some(deadline(now, self.max_rebalance_timeout()));
            self.sync_deadline = None;
            self.revision += 1;
        }
    }

    /// A member joined: start or continue the join phase.
    fn member_joined(&mut self, now: Instant, pipeline_active: bool, group: &str, reason: &str) {
        if self.state != KafkaState::PreparingRebalance {
            self.prepare_rebalance(now, group, reason);
        }
        self.try_complete_join(now, pipeline_active, group);
    }

    /// Members were removed: rebalance (or finish the join phase without them).
    fn members_removed(&mut self, now: Instant, pipeline_active: bool, group: &str) {
        match self.state {
            KafkaState::Stable | KafkaState::CompletingRebalance => {
                self.prepare_rebalance(now, group, "a member left");
                self.try_complete_join(now, pipeline_active, group);
            }
            KafkaState::PreparingRebalance => self.try_complete_join(now, pipeline_active, group),
            KafkaState::Empty => {}
        }
    }

    fn try_complete_join(&mut self, now: Instant, pipeline_active: bool, group: &str) {
        if self.state == KafkaState::PreparingRebalance
            && self.pending.is_empty()
            && self
                .members
                .values()
                .all(|member| member.join_reply.is_some())
        {
            self.complete_join(now, pipeline_active, group);
        }
    }

    /// Ends the join phase: removes who did not rejoin, starts the next
    /// generation and answers every parked JoinGroup.
    fn complete_join(&mut self, now: Instant, pipeline_active: bool, group: &str) {
        let stale: Vec<String> = self
            .members
            .iter()
            .filter(|(_, member)| member.join_reply.is_none())
            .map(|(id, _)| id.clone())
            .collect();
        for id in stale {
            self.remove_member(&id, group, "did not rejoin within the rebalance timeout");
        }
        self.join_deadline = None;
        self.generation = self.generation.checked_add(1).unwrap_or(1);
        self.revision += 1;
        let protocol = self.select_protocol();
        let Some(protocol) = protocol.filter(|_| !self.members.is_empty()) else {
            // No members (or, defensively, no common protocol: every joiner
            // was checked against the others, so this cannot happen).
            let ids: Vec<String> = self.members.keys().cloned().collect();
            for id in ids {
                if let Some(member) = self.members.remove(&id) {
                    if let Some(reply) = member.join_reply {
                        let _ = reply.send(KafkaJoinResult::refused(
                            code::INCONSISTENT_GROUP_PROTOCOL,
                            id.clone(),
                        ));
                    }
                }
            }
            self.state = KafkaState::Empty;
            self.protocol_type = None;
            self.protocol = None;
            self.leader = None;
            self.server_side = false;
            self.sync_deadline = None;
            tracing::info!(group, generation = self.generation, "kafka group: empty");
            return;
        };
        self.server_side = self.wants_server_side(pipeline_active);
        self.leader = if self.server_side {
            None
        } else {
            self.leader
                .clone()
                .filter(|leader| self.members.contains_key(leader))
                .or_else(|| {
                    self.members
                        .iter()
                        .min_by_key(|(_, member)| member.order)
                        .map(|(id, _)| id.clone())
                })
        };
        self.protocol = Some(protocol);
        self.state = KafkaState::CompletingRebalance;
        self.sync_deadline = Some(deadline(now, self.max_rebalance_timeout()));
        tracing::info!(
            group,
            generation = self.generation,
            protocol = ?self.protocol,
            leader = ?self.leader,
            server_side = self.server_side,
            members = self.members.len(),
            "kafka group: join phase complete"
        );
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let answer = self.join_answer(&id);
            if let Some(member) = self.members.get_mut(&id) {
                member.synced = false;
                member.told = None;
                member.assignment = None;
                member.last_seen = now;
                if let Some(reply) = member.join_reply.take() {
                    let _ = reply.send(answer);
                }
            }
        }
    }

    /// This generation's JoinGroup answer for a member.
    fn join_answer(&self, id: &str) -> KafkaJoinResult {
        let is_leader = !self.server_side && self.leader.as_deref() == Some(id);
        let protocol = self.protocol.clone().unwrap_or_default();
        KafkaJoinResult {
            error: code::NONE,
            generation_id: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol.clone(),
            leader: self
                .leader
                .clone()
                .unwrap_or_else(|| SERVER_SIDE_LEADER.to_owned()),
            member_id: id.to_owned(),
            members: if is_leader {
                self.members
                    .iter()
                    .map(|(id, member)| {
                        (
                            id.clone(),
                            member.instance_id.clone(),
                            member.metadata(&protocol),
                        )
                    })
                    .collect()
            } else {
                Vec::new()
            },
        }
    }

    /// Client side: answers every parked SyncGroup with the leader's assignment.
    fn answer_client_syncs(&mut self) {
        let readable = self.protocol_type.as_deref() == Some(CONSUMER_PROTOCOL);
        for member in self.members.values_mut() {
            let Some(reply) = member.sync_reply.take() else {
                continue;
            };
            let assignment = member.assignment.clone().unwrap_or_default();
            let given = if assignment.is_empty() {
                Some(BTreeSet::new())
            } else if readable {
                consumer_protocol::decode_assignment(&assignment)
            } else {
                None
            };
            member.holds.add(given);
            let _ = reply.send(KafkaSyncResult {
                error: code::NONE,
                protocol_type: self.protocol_type.clone(),
                protocol_name: self.protocol.clone(),
                assignment,
            });
        }
        if self.members.values().all(|member| member.synced) {
            self.sync_deadline = None;
        }
    }
}

fn deadline(now: Instant, after: Duration) -> Instant {
    now.checked_add(after).unwrap_or(now)
}

fn valid_group(group: &str) -> bool {
    !group.is_empty() && group.len() <= GROUP_NAME_BYTES_MAX
}

// ---------------------------------------------------------------------------
// The actor.

/// The actor.
pub(crate) struct GroupCoordinator {
    store: OffsetStore,
    /// Groups with pipeline members (or that had some), by name.
    groups: HashMap<String, Group>,
    /// Groups with Kafka members (or handed-out member ids), by name.
    kafka: HashMap<String, KafkaGroup>,
    settings: KafkaSettings,
    /// The start time (hex nanoseconds): member ids differ across restarts.
    id_epoch: String,
    next_id: u64,
    next_order: u64,
}

impl GroupCoordinator {
    pub(crate) fn new(store: OffsetStore) -> GroupCoordinator {
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|since| since.as_nanos())
            .unwrap_or_default();
        GroupCoordinator {
            store,
            groups: HashMap::new(),
            kafka: HashMap::new(),
            settings: KafkaSettings::default(),
            id_epoch: format!("{started:x}"),
            next_id: 0,
            next_order: 0,
        }
    }

    /// Other limits for the Kafka group protocol.
    #[allow(dead_code)]
    pub(crate) fn with_kafka_settings(mut self, settings: KafkaSettings) -> GroupCoordinator {
        self.settings = settings;
        self
    }

    fn send_changes(&self, group: &str, changes: BTreeMap<String, AssignmentChange>) {
        let Some(state) = self.groups.get(group) else {
            return;
        };
        for (member, change) in changes {
            let Some(notify) = state.members.get(&member).and_then(|m| m.notify.as_ref()) else {
                continue;
            };
            tracing::info!(group, %member, assigned = ?change.assigned, revoked = ?change.revoked, "assignment changed");
            // `do_send`: membership changes must not be lost to a full mailbox.
            notify.do_send(change);
        }
    }

    fn remove_member(&mut self, group: &str, member: &str) {
        let Some(state) = self.groups.get_mut(group) else {
            return;
        };
        if !state.remove(member) {
            return;
        }
        tracing::info!(group, member, "member left");
        self.settle(group);
    }

    /// Whether `group` has pipeline members.
    fn pipeline_active(&self, group: &str) -> bool {
        self.groups.get(group).is_some_and(Group::has_local_members)
    }

    /// A member id no member of `group` has: `{client_id}-{start}-{counter}`.
    fn new_member_id(&mut self, group: &str, client_id: &str) -> String {
        let client: String = client_id.chars().take(CLIENT_ID_CHARS_MAX).collect();
        let client = if client.is_empty() {
            "member".to_owned()
        } else {
            client
        };
        loop {
            self.next_id += 1;
            let id = format!("{client}-{}-{:x}", self.id_epoch, self.next_id);
            let kafka_taken = self
                .kafka
                .get(group)
                .is_some_and(|k| k.members.contains_key(&id) || k.pending.contains_key(&id));
            let pipeline_taken = self
                .groups
                .get(group)
                .is_some_and(|state| state.members.contains_key(&id));
            if !kafka_taken && !pipeline_taken {
                return id;
            }
        }
    }

    /// Brings everything about `group` in line after an event: which Kafka
    /// members take part in the server-side assignment, the assignment
    /// itself (never past a Kafka client's holdings), the pipeline members'
    /// messages, and the Kafka side's answers or rebalance.
    fn settle(&mut self, group: &str) {
        for _ in 0..SETTLE_ROUNDS_MAX {
            let before = self.kafka.get(group).map(|k| (k.revision, k.state));
            self.settle_membership(group);
            let fence = self.fence(group);
            let changes = match self.groups.get_mut(group) {
                Some(state) => state.rebalance_fenced(&fence),
                None => BTreeMap::new(),
            };
            self.send_changes(group, changes);
            self.settle_kafka(group);
            if self
                .kafka
                .get(group)
                .is_some_and(|k| k.members.is_empty() && k.pending.is_empty())
            {
                self.kafka.remove(group);
            }
            if self.kafka.get(group).map(|k| (k.revision, k.state)) == before {
                break;
            }
        }
    }

    /// Kafka members take part in the group's assignment while the
    /// coordinator assigns and they subscribe to its topic.
    fn settle_membership(&mut self, group: &str) {
        let pipeline_active = self.pipeline_active(group);
        let Some(state) = self.groups.get_mut(group) else {
            return;
        };
        let kafka = self.kafka.get(group);
        let wanted = kafka.map_or(pipeline_active, |k| k.wants_server_side(pipeline_active));
        let topic = state.topic.clone();
        let belongs = |id: &str| {
            wanted
                && kafka
                    .and_then(|k| k.members.get(id))
                    .is_some_and(|member| member.topics.contains(&topic))
        };
        let leaving: Vec<String> = state
            .members
            .iter()
            .filter(|(id, member)| member.notify.is_none() && !belongs(id))
            .map(|(id, _)| id.clone())
            .collect();
        for id in leaving {
            state.remove(&id);
        }
        let Some(kafka) = kafka.filter(|_| wanted) else {
            return;
        };
        for (id, member) in &kafka.members {
            if member.topics.contains(&topic) && !state.members.contains_key(id) {
                state.members.insert(id.clone(), Member { notify: None });
            }
        }
    }

    /// What Kafka clients of `group` may be consuming of its topic.
    fn fence(&self, group: &str) -> Fence {
        let mut fence = Fence::default();
        let (Some(state), Some(kafka)) = (self.groups.get(group), self.kafka.get(group)) else {
            return fence;
        };
        let count = state.partitions.len();
        for (id, member) in &kafka.members {
            match &member.holds {
                Holds::Unknown => (0..count).for_each(|index| fence.add(index, id)),
                Holds::Known(held) => {
                    for (topic, partition) in held {
                        if *topic == state.topic && (*partition as usize) < count {
                            fence.add(*partition as usize, id);
                        }
                    }
                }
            }
        }
        fence
    }

    /// The Kafka side after the assignment moved: switch mode, answer
    /// parked SyncGroups, or rebalance if an answered member's partitions changed.
    fn settle_kafka(&mut self, group: &str) {
        let pipeline_active = self.pipeline_active(group);
        let now = Instant::now();
        let Some(kafka) = self.kafka.get_mut(group) else {
            return;
        };
        if !matches!(
            kafka.state,
            KafkaState::CompletingRebalance | KafkaState::Stable
        ) {
            return;
        }
        let wanted = kafka.wants_server_side(pipeline_active);
        if kafka.server_side != wanted {
            let reason = if wanted {
                "pipeline members joined: the coordinator assigns"
            } else {
                "no pipeline members left: the leader assigns"
            };
            kafka.prepare_rebalance(now, group, reason);
            kafka.try_complete_join(now, pipeline_active, group);
            return;
        }
        if !wanted {
            return;
        }
        self.answer_server_syncs(group, false);
        if self.server_side_drifted(group) {
            if let Some(kafka) = self.kafka.get_mut(group) {
                kafka.prepare_rebalance(now, group, "a member's partitions changed");
                kafka.try_complete_join(now, pipeline_active, group);
            }
        }
    }

    /// Server side: answers parked SyncGroups with the members' partitions,
    /// once nothing is on its way to them from a pipeline member (or at
    /// once with `force`).
    fn answer_server_syncs(&mut self, group: &str, force: bool) {
        let Some(kafka) = self.kafka.get_mut(group) else {
            return;
        };
        if !kafka.server_side
            || !matches!(
                kafka.state,
                KafkaState::CompletingRebalance | KafkaState::Stable
            )
        {
            return;
        }
        let state = self.groups.get(group);
        for (id, member) in kafka.members.iter_mut() {
            if member.sync_reply.is_none() {
                continue;
            }
            let (topic, owned, incoming) = match state {
                Some(state) if state.is_remote(id) => (
                    Some(state.topic.as_str()),
                    state.owned_by(id),
                    state.incoming_to(id),
                ),
                _ => (None, BTreeSet::new(), false),
            };
            if incoming && !force {
                continue;
            }
            let assignment = consumer_protocol::encode_assignment(topic, &owned);
            if let Some(topic) = topic {
                member.holds.add(Some(
                    owned
                        .iter()
                        .map(|partition| (topic.to_owned(), *partition))
                        .collect(),
                ));
            }
            tracing::info!(group, member = %id, generation = kafka.generation, partitions = ?owned, "kafka group: assignment sent");
            member.told = Some(owned);
            member.assignment = Some(assignment.clone());
            if let Some(reply) = member.sync_reply.take() {
                let _ = reply.send(KafkaSyncResult {
                    error: code::NONE,
                    protocol_type: kafka.protocol_type.clone(),
                    protocol_name: kafka.protocol.clone(),
                    assignment,
                });
            }
        }
        if kafka.members.values().all(|member| member.told.is_some()) {
            kafka.sync_deadline = None;
            if kafka.state == KafkaState::CompletingRebalance {
                kafka.state = KafkaState::Stable;
                kafka.revision += 1;
            }
        }
    }

    /// Server side: an answered member's partitions are no longer what it was told.
    fn server_side_drifted(&self, group: &str) -> bool {
        let Some(kafka) = self.kafka.get(group) else {
            return false;
        };
        let state = self.groups.get(group);
        kafka.members.iter().any(|(id, member)| {
            member.told.as_ref().is_some_and(|told| {
                let owned = state
                    .filter(|state| state.is_remote(id))
                    .map(|state| state.owned_by(id))
                    .unwrap_or_default();
                *told != owned
            })
        })
    }

    /// Every Kafka group's deadlines (pipeline members are in-process and
    /// leave explicitly).
    fn check_deadlines(&mut self) {
        let now = Instant::now();
        let groups: Vec<String> = self.kafka.keys().cloned().collect();
        for group in groups {
            self.kafka_deadlines(&group, now);
        }
    }

    fn kafka_deadlines(&mut self, group: &str, now: Instant) {
        let pipeline_active = self.pipeline_active(group);
        let Some(kafka) = self.kafka.get_mut(group) else {
            return;
        };
        let revision = kafka.revision;
        // Member ids handed out with MEMBER_ID_REQUIRED and not used.
        let pending = kafka.pending.len();
        kafka.pending.retain(|_, until| *until > now);
        if kafka.pending.len() != pending {
            kafka.revision += 1;
            kafka.try_complete_join(now, pipeline_active, group);
        }
        // Sessions (a member whose JoinGroup or SyncGroup is parked is alive).
        let expired: Vec<String> = kafka
            .members
            .iter()
            .filter(|(_, member)| {
                member.join_reply.is_none()
                    && member.sync_reply.is_none()
                    && now.saturating_duration_since(member.last_seen) > member.session_timeout
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            kafka.remove_member(id, group, "session timed out");
        }
        if !expired.is_empty() {
            kafka.members_removed(now, pipeline_active, group);
        }
        // The join phase's end.
        if kafka.state == KafkaState::PreparingRebalance
            && kafka.join_deadline.is_some_and(|at| at <= now)
        {
            kafka.complete_join(now, pipeline_active, group);
        }
        // The sync phase's end.
        let sync_expired = matches!(
            kafka.state,
            KafkaState::CompletingRebalance | KafkaState::Stable
        ) && kafka.sync_deadline.is_some_and(|at| at <= now);
        if sync_expired {
            if kafka.server_side {
                // Members waiting for revocations get what they own now.
                self.answer_server_syncs(group, true);
            }
            if let Some(kafka) = self.kafka.get_mut(group) {
                kafka.sync_deadline = None;
                let unsynced: Vec<String> = kafka
                    .members
                    .iter()
                    .filter(|(_, member)| !member.synced)
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in &unsynced {
                    kafka.remove_member(id, group, "did not sync within the rebalance timeout");
                }
                if kafka.state == KafkaState::CompletingRebalance && !kafka.server_side {
                    // The leader never sent the assignments.
                    kafka.prepare_rebalance(now, group, "the leader did not sync in time");
                    kafka.try_complete_join(now, pipeline_active, group);
                } else if !unsynced.is_empty() {
                    kafka.members_removed(now, pipeline_active, group);
                }
            }
        }
        if self.kafka.get(group).map(|k| k.revision) != Some(revision) {
            self.settle(group);
        }
    }
}

impl Actor for GroupCoordinator {
    type Context = Context<Self>;

    fn started(&mut self, context: &mut Self::Context) {
        // Unbounded: each member and sink stage has at most one request
        // outstanding and waits for its answer, so they bound it; actix's
        // own bound can strand a waiting sender (see actors/mailbox.rs).
        // Kafka requests are bounded by the front end's connections.
        context.set_mailbox_capacity(0);
        context.run_interval(self.settings.check_interval, |coordinator, _| {
            coordinator.check_deadlines();
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
        if state.is_remote(&join.member) {
            // A Kafka member's id (cannot happen with generated ids): it loses its place.
            state.remove(&join.member);
        }
        state.members.insert(
            join.member.clone(),
            Member {
                notify: Some(join.notify),
            },
        );
        tracing::info!(group = %join.group, member = %join.member, "member joined");
        self.settle(&join.group);
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
        self.settle(&revoked.group);
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
        let changes = commit.state.as_ref().map(|(tree, changes)| StateChanges {
            tree,
            changes: changes.as_slice(),
        });
        Ok(self.store.commit_with_state(token, changes)?)
    }
}

// ---------------------------------------------------------------------------
// Kafka requests.

impl GroupCoordinator {
    fn kafka_join(&mut self, join: KafkaJoin) {
        let now = Instant::now();
        let KafkaJoin {
            group,
            member_id,
            group_instance_id,
            client_id,
            session_timeout,
            rebalance_timeout,
            protocol_type,
            protocols,
            require_known_member_id,
            reply,
        } = join;
        let refuse = |reply: oneshot::Sender<KafkaJoinResult>, error: i16, member_id: String| {
            let _ = reply.send(KafkaJoinResult::refused(error, member_id));
        };
        if !valid_group(&group) {
            return refuse(reply, code::INVALID_GROUP_ID, member_id);
        }
        if session_timeout < self.settings.min_session_timeout
            || session_timeout > self.settings.max_session_timeout
        {
            return refuse(reply, code::INVALID_SESSION_TIMEOUT, member_id);
        }
        let rebalance_timeout = rebalance_timeout.min(self.settings.max_rebalance_timeout);
        if protocol_type.is_empty() || protocols.is_empty() || protocols.len() > PROTOCOLS_MAX {
            return refuse(reply, code::INCONSISTENT_GROUP_PROTOCOL, member_id);
        }
        let subscription = if protocol_type == CONSUMER_PROTOCOL {
            protocols
                .iter()
                .find_map(|(_, metadata)| consumer_protocol::decode_subscription(metadata))
        } else {
            None
        };
        let pipeline_active = self.pipeline_active(&group);
        if pipeline_active && subscription.is_none() {
            tracing::warn!(%group, %protocol_type, "kafka join refused: the group has pipeline members, which need a readable consumer subscription");
            return refuse(reply, code::INCONSISTENT_GROUP_PROTOCOL, member_id);
        }
        if !self.kafka.contains_key(&group) && self.kafka.len() >= KAFKA_GROUPS_MAX {
            return refuse(reply, code::COORDINATOR_NOT_AVAILABLE, member_id);
        }
        // What the client says it still consumes (cooperative clients keep
        // partitions across a rejoin; eager ones declare none).
        let (topics, claims) = match subscription {
            Some(subscription) => (subscription.topics, Some(subscription.owned)),
            None => (BTreeSet::new(), None),
        };
        if member_id.is_empty() {
            let everyone: usize = self
                .kafka
                .values()
                .map(|kafka| kafka.members.len() + kafka.pending.len())
                .sum();
            if everyone >= KAFKA_MEMBERS_MAX {
                return refuse(reply, code::GROUP_MAX_SIZE_REACHED, member_id);
            }
        }
        let fresh_id = member_id
            .is_empty()
            .then(|| self.new_member_id(&group, &client_id));
        let order = self.next_order;
        self.next_order += 1;
        let max_members = self.settings.max_members;
        let kafka = self
            .kafka
            .entry(group.clone())
            .or_insert_with(KafkaGroup::new);
        let new_member = |reply| KafkaMember {
            instance_id: group_instance_id.clone(),
            client_id: client_id.clone(),
            session_timeout,
            rebalance_timeout,
            protocols: protocols.clone(),
            topics: topics.clone(),
            last_seen: now,
            order,
            join_reply: Some(reply),
            sync_reply: None,
            synced: false,
            assignment: None,
            told: None,
            holds: claims.clone().map_or_else(Holds::nothing, Holds::Known),
        };
        if let Some(id) = fresh_id {
            if kafka.members.len() + kafka.pending.len() >= max_members {
                return refuse(reply, code::GROUP_MAX_SIZE_REACHED, member_id);
            }
            if !kafka.supports(&protocol_type, &protocols, None) {
                return refuse(reply, code::INCONSISTENT_GROUP_PROTOCOL, member_id);
            }
            if require_known_member_id {
                kafka
                    .pending
                    .insert(id.clone(), deadline(now, session_timeout));
                return refuse(reply, code::MEMBER_ID_REQUIRED, id);
            }
            tracing::info!(%group, member = %id, "kafka group: member joined");
            kafka.add_member(id, new_member(reply), protocol_type);
            kafka.member_joined(now, pipeline_active, &group, "a member joined");
            return;
        }
        if kafka.pending.contains_key(&member_id) {
            if !kafka.supports(&protocol_type, &protocols, None) {
                return refuse(reply, code::INCONSISTENT_GROUP_PROTOCOL, member_id);
            }
            kafka.pending.remove(&member_id);
            tracing::info!(%group, member = %member_id, "kafka group: member joined");
            kafka.add_member(member_id, new_member(reply), protocol_type);
            kafka.member_joined(now, pipeline_active, &group, "a member joined");
            return;
        }
        if !kafka.members.contains_key(&member_id) {
            return refuse(reply, code::UNKNOWN_MEMBER_ID, member_id);
        }
        if !kafka.supports(&protocol_type, &protocols, Some(&member_id)) {
            return refuse(reply, code::INCONSISTENT_GROUP_PROTOCOL, member_id);
        }
        if kafka.members.len() == 1 {
            kafka.protocol_type = Some(protocol_type);
        }
        let is_leader = !kafka.server_side && kafka.leader.as_deref() == Some(member_id.as_str());
        let state = kafka.state;
        let mut revision = kafka.revision;
        let Some(member) = kafka.members.get_mut(&member_id) else {
            return refuse(reply, code::UNKNOWN_MEMBER_ID, member_id);
        };
        let unchanged = member.protocols == protocols;
        member.last_seen = now;
        member.session_timeout = session_timeout;
        member.rebalance_timeout = rebalance_timeout;
        member.instance_id = group_instance_id;
        member.client_id.clone_from(&client_id);
        if member.topics != topics {
            member.topics = topics;
            revision += 1;
        }
        if let Some(claims) = claims {
            let claims = Holds::Known(claims);
            if member.holds != claims {
                member.holds = claims;
                revision += 1;
            }
        }
        match state {
            KafkaState::CompletingRebalance | KafkaState::Stable
                if unchanged && !(state == KafkaState::Stable && is_leader) =>
            {
                // Nothing changed: this generation's answer again.
                kafka.revision = revision;
                let _ = reply.send(kafka.join_answer(&member_id));
            }
            KafkaState::Empty => refuse(reply, code::UNKNOWN_MEMBER_ID, member_id),
            _ => {
                member.protocols = protocols;
                member.park_join(reply, &member_id);
                kafka.revision = revision;
                kafka.member_joined(
                    now,
                    pipeline_active,
                    &group,
                    "a member rejoined with new metadata",
                );
            }
        }
    }

    fn kafka_sync(&mut self, sync: KafkaSync) {
        let now = Instant::now();
        let KafkaSync {
            group,
            generation_id,
            member_id,
            protocol_type,
            protocol_name,
            assignments,
            reply,
        } = sync;
        let refuse = |reply: oneshot::Sender<KafkaSyncResult>, error: i16| {
            let _ = reply.send(KafkaSyncResult::refused(error));
        };
        if !valid_group(&group) {
            return refuse(reply, code::INVALID_GROUP_ID);
        }
        let Some(kafka) = self.kafka.get_mut(&group) else {
            return refuse(reply, code::UNKNOWN_MEMBER_ID);
        };
        if !kafka.members.contains_key(&member_id) {
            return refuse(reply, code::UNKNOWN_MEMBER_ID);
        }
        if generation_id != kafka.generation {
            return refuse(reply, code::ILLEGAL_GENERATION);
        }
        if protocol_type.is_some() && protocol_type != kafka.protocol_type
            || protocol_name.is_some() && protocol_name != kafka.protocol
        {
            return refuse(reply, code::INCONSISTENT_GROUP_PROTOCOL);
        }
        match kafka.state {
            KafkaState::Empty => return refuse(reply, code::UNKNOWN_MEMBER_ID),
            KafkaState::PreparingRebalance => return refuse(reply, code::REBALANCE_IN_PROGRESS),
            KafkaState::CompletingRebalance | KafkaState::Stable => {}
        }
        let is_leader = kafka.leader.as_deref() == Some(member_id.as_str());
        let Some(member) = kafka.members.get_mut(&member_id) else {
            return refuse(reply, code::UNKNOWN_MEMBER_ID);
        };
        member.last_seen = now;
        member.synced = true;
        if let Some(older) = member.sync_reply.replace(reply) {
            let _ = older.send(KafkaSyncResult::refused(code::REBALANCE_IN_PROGRESS));
        }
        if kafka.server_side {
            // `settle` answers it once its partitions are free, at the latest then.
            let wait = member.rebalance_timeout;
            kafka
                .sync_deadline
                .get_or_insert_with(|| deadline(now, wait));
            return;
        }
        if kafka.state == KafkaState::CompletingRebalance {
            if !is_leader {
                // Waits for the leader's assignments.
                return;
            }
            let mut given: BTreeMap<String, Bytes> = assignments
                .into_iter()
                .filter(|(id, _)| kafka.members.contains_key(id))
                .collect();
            for (id, member) in kafka.members.iter_mut() {
                member.assignment = Some(given.remove(id).unwrap_or_default());
            }
            kafka.state = KafkaState::Stable;
            kafka.revision += 1;
            tracing::info!(%group, generation = kafka.generation, "kafka group: stable (the leader's assignment)");
        }
        kafka.answer_client_syncs();
    }

    fn kafka_heartbeat(&mut self, heartbeat: &KafkaHeartbeat) -> i16 {
        if !valid_group(&heartbeat.group) {
            return code::INVALID_GROUP_ID;
        }
        let Some(kafka) = self.kafka.get_mut(&heartbeat.group) else {
            return code::UNKNOWN_MEMBER_ID;
        };
        let state = kafka.state;
        let generation = kafka.generation;
        let Some(member) = kafka.members.get_mut(&heartbeat.member_id) else {
            return code::UNKNOWN_MEMBER_ID;
        };
        if heartbeat.generation_id != generation {
            return code::ILLEGAL_GENERATION;
        }
        member.last_seen = Instant::now();
        match state {
            KafkaState::Empty => code::UNKNOWN_MEMBER_ID,
            KafkaState::PreparingRebalance => code::REBALANCE_IN_PROGRESS,
            KafkaState::CompletingRebalance | KafkaState::Stable => code::NONE,
        }
    }

    fn kafka_leave(&mut self, leave: &KafkaLeave) -> (i16, Vec<i16>) {
        if !valid_group(&leave.group) {
            return (code::INVALID_GROUP_ID, Vec::new());
        }
        let pipeline_active = self.pipeline_active(&leave.group);
        let Some(kafka) = self.kafka.get_mut(&leave.group) else {
            return (
                code::NONE,
                vec![code::UNKNOWN_MEMBER_ID; leave.member_ids.len()],
            );
        };
        let now = Instant::now();
        let mut codes = Vec::with_capacity(leave.member_ids.len());
        let (mut removed, mut unused) = (false, false);
        for id in &leave.member_ids {
            if kafka.pending.remove(id).is_some() {
                unused = true;
                codes.push(code::NONE);
            } else if kafka.remove_member(id, &leave.group, "left the group") {
                removed = true;
                codes.push(code::NONE);
            } else {
                codes.push(code::UNKNOWN_MEMBER_ID);
            }
        }
        if removed {
            kafka.members_removed(now, pipeline_active, &leave.group);
        } else if unused {
            kafka.revision += 1;
            kafka.try_complete_join(now, pipeline_active, &leave.group);
        }
        (code::NONE, codes)
    }

    fn kafka_commit(&mut self, commit: &KafkaCommit) -> Vec<i16> {
        let count = commit.offsets.len();
        if !valid_group(&commit.group) {
            return vec![code::INVALID_GROUP_ID; count];
        }
        let pipeline = self
            .groups
            .get(&commit.group)
            .filter(|state| state.has_local_members());
        let kafka = self.kafka.get_mut(&commit.group);
        let kafka_members = kafka.as_ref().is_some_and(|k| !k.members.is_empty());
        // Who may commit (Kafka's checks, in Kafka's order).
        let mut holds = None;
        if commit.generation_id < 0 && !kafka_members && pipeline.is_none() {
            // Standalone: the group is not managed through the protocol.
        } else {
            let refusal = match kafka {
                None if pipeline.is_none() => Some(code::ILLEGAL_GENERATION),
                None => Some(code::UNKNOWN_MEMBER_ID),
                Some(kafka) => {
                    let generation = kafka.generation;
                    let completing = kafka.state == KafkaState::CompletingRebalance;
                    match kafka.members.get_mut(&commit.member_id) {
                        _ if completing => Some(code::REBALANCE_IN_PROGRESS),
                        None => Some(code::UNKNOWN_MEMBER_ID),
                        Some(_) if commit.generation_id != generation => {
                            Some(code::ILLEGAL_GENERATION)
                        }
                        Some(member) => {
                            member.last_seen = Instant::now();
                            holds = Some(member.holds.clone());
                            None
                        }
                    }
                }
            };
            if let Some(refusal) = refusal {
                return vec![refusal; count];
            }
        }
        let mut codes = vec![code::NONE; count];
        let mut accepted = Vec::with_capacity(count);
        for (index, (topic, partition, offset, metadata)) in commit.offsets.iter().enumerate() {
            let metadata_bytes = metadata.as_ref().map_or(0, String::len);
            codes[index] = if metadata_bytes > METADATA_BYTES_MAX {
                code::OFFSET_METADATA_TOO_LARGE
            } else if *offset < 0 {
                code::INVALID_COMMIT_OFFSET_SIZE
            } else if topic.is_empty() || topic.len() > usize::from(u16::MAX) {
                code::UNKNOWN_TOPIC_OR_PARTITION
            } else if let Some(state) = pipeline.filter(|state| state.topic == *topic) {
                // Pipeline members present: only what the member owns or may still hold.
                let owner = state.owner_for_commit(PartitionId(*partition));
                let may_hold = match &holds {
                    Some(Holds::Unknown) => true,
                    Some(Holds::Known(held)) => held.contains(&(topic.clone(), *partition)),
                    None => false,
                };
                if owner == Some(commit.member_id.as_str()) || (owner.is_none() && may_hold) {
                    code::NONE
                } else {
                    code::ILLEGAL_GENERATION
                }
            } else {
                code::NONE
            };
            if codes[index] == code::NONE {
                accepted.push(index);
            }
        }
        let entries: Vec<ClientOffset<'_>> = accepted
            .iter()
            .map(|&index| {
                let (topic, partition, offset, metadata) = &commit.offsets[index];
                ClientOffset {
                    topic,
                    partition: PartitionId(*partition),
                    next_offset: Offset(*offset as u64),
                    metadata: metadata.as_deref(),
                }
            })
            .collect();
        if let Err(error) = self.store.commit_client_offsets(&commit.group, &entries) {
            tracing::warn!(group = %commit.group, %error, "kafka offset commit failed");
            let failed = match error {
                OffsetError::InvalidGroup(_) => code::INVALID_GROUP_ID,
                OffsetError::InvalidTopic(_) => code::UNKNOWN_TOPIC_OR_PARTITION,
                OffsetError::MetadataTooLarge(_) => code::OFFSET_METADATA_TOO_LARGE,
                OffsetError::Storage(_) => code::COORDINATOR_NOT_AVAILABLE,
                _ => code::UNKNOWN_SERVER_ERROR,
            };
            for &index in &accepted {
                codes[index] = failed;
            }
        } else if !entries.is_empty() {
            tracing::debug!(group = %commit.group, member = %commit.member_id, partitions = entries.len(), "kafka offsets committed");
        }
        codes
    }

    #[allow(clippy::type_complexity)]
    fn kafka_offset_fetch(
        &self,
        fetch: &KafkaOffsetFetch,
    ) -> (i16, Vec<(String, u32, i64, Option<String>, i16)>) {
        if !valid_group(&fetch.group) {
            return (code::INVALID_GROUP_ID, Vec::new());
        }
        fn entry(
            topic: String,
            partition: u32,
            committed: Result<Option<crate::offsets::CommittedOffset>, OffsetError>,
        ) -> Result<(String, u32, i64, Option<String>, i16), OffsetError> {
            Ok(match committed {
                Ok(Some(committed)) => (
                    topic,
                    partition,
                    i64::try_from(committed.next_offset.0).unwrap_or(i64::MAX),
                    committed.metadata,
                    code::NONE,
                ),
                Ok(None) => (topic, partition, -1, None, code::NONE),
                Err(OffsetError::Storage(error)) => return Err(OffsetError::Storage(error)),
                Err(OffsetError::InvalidTopic(_)) => {
                    (topic, partition, -1, None, code::UNKNOWN_TOPIC_OR_PARTITION)
                }
                Err(error) => {
                    tracing::warn!(%error, "kafka offset fetch: a committed offset is unreadable");
                    (topic, partition, -1, None, code::UNKNOWN_SERVER_ERROR)
                }
            })
        }
        let result: Result<Vec<_>, OffsetError> = match &fetch.partitions {
            Some(partitions) => partitions
                .iter()
                .map(|(topic, partition)| {
                    let committed = self.store.committed_with_metadata(
                        &fetch.group,
                        topic,
                        PartitionId(*partition),
                    );
                    entry(topic.clone(), *partition, committed)
                })
                .collect(),
            None => self
                .store
                .committed_in_group(&fetch.group, OFFSET_FETCH_ALL_MAX)
                .and_then(|all| {
                    all.into_iter()
                        .map(|(topic, partition, committed)| {
                            entry(topic, partition.0, committed.map(Some))
                        })
                        .collect()
                }),
        };
        match result {
            Ok(entries) => (code::NONE, entries),
            Err(error) => {
                tracing::warn!(group = %fetch.group, %error, "kafka offset fetch failed");
                (code::COORDINATOR_NOT_AVAILABLE, Vec::new())
            }
        }
    }
}

impl GroupCoordinator {
    /// A group's (protocol type, state), if anyone knows it in memory.
    fn group_summary(&self, group: &str) -> Option<(String, &'static str)> {
        let state = self.groups.get(group);
        let kafka = self
            .kafka
            .get(group)
            .filter(|kafka| !kafka.members.is_empty());
        let pipeline = state.filter(|state| state.has_local_members());
        match (kafka, pipeline) {
            (Some(kafka), _) => Some((
                kafka
                    .protocol_type
                    .clone()
                    .unwrap_or_else(|| CONSUMER_PROTOCOL.to_owned()),
                kafka.state.name(),
            )),
            (None, Some(state)) => {
                let revoking = state
                    .partitions
                    .iter()
                    .any(|ownership| matches!(ownership, Ownership::Revoking { .. }));
                let name = if revoking {
                    KafkaState::PreparingRebalance.name()
                } else {
                    KafkaState::Stable.name()
                };
                Some((CONSUMER_PROTOCOL.to_owned(), name))
            }
            (None, None) if state.is_some() || self.kafka.contains_key(group) => {
                Some((CONSUMER_PROTOCOL.to_owned(), KafkaState::Empty.name()))
            }
            (None, None) => None,
        }
    }

    fn kafka_list_groups(&self) -> (i16, Vec<ListedGroup>) {
        let mut names: BTreeSet<&str> = self
            .groups
            .keys()
            .chain(self.kafka.keys())
            .map(String::as_str)
            .collect();
        let stored = match self.store.group_names(LIST_GROUPS_MAX) {
            Ok(stored) => stored,
            Err(error) => {
                tracing::warn!(%error, "kafka list groups: the offset store is unreadable");
                return (code::COORDINATOR_NOT_AVAILABLE, Vec::new());
            }
        };
        names.extend(stored.iter().map(String::as_str));
        let listed = names
            .into_iter()
            .filter(|name| valid_group(name))
            .take(LIST_GROUPS_MAX)
            .map(|name| {
                let (protocol_type, state) = self
                    .group_summary(name)
                    .unwrap_or_else(|| (CONSUMER_PROTOCOL.to_owned(), KafkaState::Empty.name()));
                ListedGroup {
                    group: name.to_owned(),
                    protocol_type,
                    state,
                }
            })
            .collect();
        (code::NONE, listed)
    }

    fn kafka_describe_group(&self, group: &str) -> DescribedGroup {
        let mut described = DescribedGroup {
            group: group.to_owned(),
            ..DescribedGroup::default()
        };
        if !valid_group(group) {
            described.error = code::INVALID_GROUP_ID;
            return described;
        }
        let Some((protocol_type, state_name)) = self.group_summary(group).or_else(|| {
            match self.store.has_group(group) {
                Ok(true) => Some((CONSUMER_PROTOCOL.to_owned(), KafkaState::Empty.name())),
                Ok(false) => None,
                Err(error) => {
                    tracing::warn!(group, %error, "kafka describe groups: the offset store is unreadable");
                    Some((String::new(), ""))
                }
            }
        }) else {
            described.state = "Dead".to_owned();
            return described;
        };
        if state_name.is_empty() {
            described.error = code::COORDINATOR_NOT_AVAILABLE;
            return described;
        }
        described.state = state_name.to_owned();
        described.protocol_type = protocol_type;
        let state = self.groups.get(group);
        let kafka = self
            .kafka
            .get(group)
            .filter(|kafka| !kafka.members.is_empty());
        if let Some(state) = state.filter(|state| state.has_local_members()) {
            described.protocol = PIPELINE_PROTOCOL.to_owned();
            let subscription = consumer_protocol::encode_subscription(&state.topic);
            for (id, member) in &state.members {
                if member.notify.is_none() {
                    continue;
                }
                described.members.push(DescribedMember {
                    member_id: id.clone(),
                    group_instance_id: None,
                    client_id: PIPELINE_CLIENT_ID.to_owned(),
                    metadata: subscription.clone(),
                    assignment: consumer_protocol::encode_assignment(
                        Some(&state.topic),
                        &state.holding(id),
                    ),
                });
            }
        }
        if let Some(kafka) = kafka {
            let protocol = kafka.protocol.clone().unwrap_or_default();
            if !protocol.is_empty() {
                described.protocol.clone_from(&protocol);
            }
            for (id, member) in &kafka.members {
                let assignment = match state {
                    Some(state) if kafka.server_side && state.is_remote(id) => {
                        consumer_protocol::encode_assignment(Some(&state.topic), &state.holding(id))
                    }
                    _ => member.assignment.clone().unwrap_or_default(),
                };
                described.members.push(DescribedMember {
                    member_id: id.clone(),
                    group_instance_id: member.instance_id.clone(),
                    client_id: member.client_id.clone(),
                    metadata: member.metadata(&protocol),
                    assignment,
                });
            }
        }
        described
    }
}

impl Handler<KafkaListGroups> for GroupCoordinator {
    type Result = ();

    fn handle(&mut self, list: KafkaListGroups, _: &mut Self::Context) {
        let answer = self.kafka_list_groups();
        let _ = list.reply.send(answer);
    }
}

impl Handler<KafkaDescribeGroups> for GroupCoordinator {
    type Result = ();

    fn handle(&mut self, describe: KafkaDescribeGroups, _: &mut Self::Context) {
        let mut bytes = 0usize;
        let answer = describe
            .groups
            .iter()
            .enumerate()
            .map(|(index, group)| {
                let error = if index >= DESCRIBE_GROUPS_MAX {
                    code::INVALID_REQUEST
                } else if bytes > DESCRIBE_BYTES_MAX {
                    // Members' metadata and assignments are as large as
                    // their clients made them: ask again for the rest.
                    code::COORDINATOR_NOT_AVAILABLE
                } else {
                    let described = self.kafka_describe_group(group);
                    bytes = bytes.saturating_add(
                        described
                            .members
                            .iter()
                            .map(|member| member.metadata.len() + member.assignment.len())
                            .sum(),
                    );
                    return described;
                };
                DescribedGroup {
                    error,
                    group: group.clone(),
                    ..DescribedGroup::default()
                }
            })
            .collect();
        let _ = describe.reply.send(answer);
    }
}

impl Handler<KafkaJoin> for GroupCoordinator {
    type Result = ();

    fn handle(&mut self, join: KafkaJoin, _: &mut Self::Context) {
        let group = join.group.clone();
        self.kafka_join(join);
        if valid_group(&group) {
            self.settle(&group);
        }
    }
}

impl Handler<KafkaSync> for GroupCoordinator {
    type Result = ();

    fn handle(&mut self, sync: KafkaSync, _: &mut Self::Context) {
        let group = sync.group.clone();
        self.kafka_sync(sync);
        if valid_group(&group) {
            self.settle(&group);
        }
    }
}

impl Handler<KafkaHeartbeat> for GroupCoordinator {
    type Result = ();

    fn handle(&mut self, heartbeat: KafkaHeartbeat, _: &mut Self::Context) {
        let error = self.kafka_heartbeat(&heartbeat);
        let _ = heartbeat.reply.send(error);
    }
}

impl Handler<KafkaLeave> for GroupCoordinator {
    type Result = ();

    fn handle(&mut self, leave: KafkaLeave, _: &mut Self::Context) {
        let answer = self.kafka_leave(&leave);
        if valid_group(&leave.group) {
            self.settle(&leave.group);
        }
        let _ = leave.reply.send(answer);
    }
}

impl Handler<KafkaCommit> for GroupCoordinator {
    type Result = ();

    fn handle(&mut self, commit: KafkaCommit, _: &mut Self::Context) {
        let codes = self.kafka_commit(&commit);
        let _ = commit.reply.send(codes);
    }
}

impl Handler<KafkaOffsetFetch> for GroupCoordinator {
    type Result = ();

    fn handle(&mut self, fetch: KafkaOffsetFetch, _: &mut Self::Context) {
        let answer = self.kafka_offset_fetch(&fetch);
        let _ = fetch.reply.send(answer);
    }
}

impl Handler<DescribeGroup> for GroupCoordinator {
    type Result = Option<GroupDescription>;

    fn handle(&mut self, describe: DescribeGroup, _: &mut Self::Context) -> Self::Result {
        let state = self.groups.get(&describe.group);
        let kafka = self.kafka.get(&describe.group);
        if state.is_none() && kafka.is_none() {
            return None;
        }
        let mut members: BTreeMap<String, Vec<PartitionId>> = BTreeMap::new();
        if let Some(state) = state {
            members.extend(
                state
                    .members
                    .keys()
                    .map(|member| (member.clone(), Vec::new())),
            );
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
        }
        let mut kafka_members: BTreeMap<String, Vec<(String, PartitionId)>> = BTreeMap::new();
        if let Some(kafka) = kafka {
            let readable = kafka.protocol_type.as_deref() == Some(CONSUMER_PROTOCOL);
            for (id, member) in &kafka.members {
                let partitions: Vec<(String, PartitionId)> = match state {
                    Some(state) if kafka.server_side && state.is_remote(id) => state
                        .owned_by(id)
                        .into_iter()
                        .map(|partition| (state.topic.clone(), PartitionId(partition)))
                        .collect(),
                    _ => member
                        .assignment
                        .as_ref()
                        .filter(|_| readable)
                        .and_then(|bytes| consumer_protocol::decode_assignment(bytes))
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(topic, partition)| (topic, PartitionId(partition)))
                        .collect(),
                };
                kafka_members.insert(id.clone(), partitions);
            }
        }
        let topic = match state {
            Some(state) => state.topic.clone(),
            None => {
                let topics: BTreeSet<&str> = kafka_members
                    .values()
                    .flatten()
                    .map(|(topic, _)| topic.as_str())
                    .collect();
                match topics.len() {
                    1 => topics.into_iter().next().unwrap_or_default().to_owned(),
                    _ => String::new(),
                }
            }
        };
        for (id, partitions) in &kafka_members {
            members.entry(id.clone()).or_insert_with(|| {
                partitions
                    .iter()
                    .filter(|(of, _)| *of == topic)
                    .map(|(_, partition)| *partition)
                    .collect()
            });
        }
        Some(GroupDescription {
            topic,
            members,
            rebalances: state.map_or(0, |state| state.rebalances),
            kafka_members,
            kafka_state: kafka.map(|kafka| kafka.state.name().to_owned()),
            kafka_generation: kafka.map(|kafka| kafka.generation),
            kafka_protocol: kafka.and_then(|kafka| kafka.protocol.clone()),
            server_side_assignment: kafka.is_some_and(|kafka| kafka.server_side),
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

/// Kafka's consumer protocol: `ConsumerProtocolSubscription` (JoinGroup
/// metadata) and `ConsumerProtocolAssignment` (SyncGroup assignment).
/// Big-endian; arrays and byte strings have i32 lengths, strings i16. Every
/// length is checked against the bytes left; nothing here panics.
pub(crate) mod consumer_protocol {
    use bytes::Bytes;
    use std::collections::BTreeSet;

    /// The parts of a subscription the coordinator uses.
    #[derive(Debug, PartialEq, Eq)]
    pub(crate) struct Subscription {
        pub(crate) topics: BTreeSet<String>,
        /// Partitions the client says it still owns (version 1 and later).
        pub(crate) owned: BTreeSet<(String, u32)>,
    }

    struct Reader<'a> {
        bytes: &'a [u8],
    }

    impl<'a> Reader<'a> {
        fn take(&mut self, count: usize) -> Option<&'a [u8]> {
            if count > self.bytes.len() {
                return None;
            }
            let (taken, rest) = self.bytes.split_at(count);
            self.bytes = rest;
            Some(taken)
        }

        fn i16(&mut self) -> Option<i16> {
            Some(i16::from_be_bytes(self.take(2)?.try_into().ok()?))
        }

        fn i32(&mut self) -> Option<i32> {
            Some(i32::from_be_bytes(self.take(4)?.try_into().ok()?))
        }

        /// A non-null string.
        fn string(&mut self) -> Option<String> {
            let length = usize::try_from(self.i16()?).ok()?;
            String::from_utf8(self.take(length)?.to_vec()).ok()
        }

        /// An array's element count (null is empty), at most one per byte left.
        fn count(&mut self) -> Option<usize> {
            match self.i32()? {
                -1 => Some(0),
                length => usize::try_from(length)
                    .ok()
                    .filter(|&length| length <= self.bytes.len()),
            }
        }

        /// Nullable bytes, skipped.
        fn skip_bytes(&mut self) -> Option<()> {
            match self.i32()? {
                -1 => Some(()),
                length => self.take(usize::try_from(length).ok()?).map(|_| ()),
            }
        }

        /// `[(topic, [partition])]`; negative partitions are left out.
        fn topic_partitions(&mut self, into: &mut BTreeSet<(String, u32)>) -> Option<()> {
            for _ in 0..self.count()? {
                let topic = self.string()?;
                for _ in 0..self.count()? {
                    if let Ok(partition) = u32::try_from(self.i32()?) {
                        into.insert((topic.clone(), partition));
                    }
                }
            }
            Some(())
        }
    }

    /// A `ConsumerProtocolSubscription` (any version: later versions only add fields).
    pub(crate) fn decode_subscription(bytes: &[u8]) -> Option<Subscription> {
        let mut reader = Reader { bytes };
        let version = reader.i16()?;
        if version < 0 {
            return None;
        }
        let mut topics = BTreeSet::new();
        for _ in 0..reader.count()? {
            topics.insert(reader.string()?);
        }
        reader.skip_bytes()?;
        let mut owned = BTreeSet::new();
        if version >= 1 {
            reader.topic_partitions(&mut owned)?;
        }
        Some(Subscription { topics, owned })
    }

    /// A `ConsumerProtocolAssignment`'s partitions (user data ignored).
    pub(crate) fn decode_assignment(bytes: &[u8]) -> Option<BTreeSet<(String, u32)>> {
        let mut reader = Reader { bytes };
        if reader.i16()? < 0 {
            return None;
        }
        let mut partitions = BTreeSet::new();
        reader.topic_partitions(&mut partitions)?;
        Some(partitions)
    }

    /// A `ConsumerProtocolSubscription` v0 of `topic`, user data null (an
    /// empty topic list if the name is longer than a string can be).
    pub(crate) fn encode_subscription(topic: &str) -> Bytes {
        let mut out = Vec::with_capacity(12 + topic.len());
        out.extend_from_slice(&0i16.to_be_bytes());
        match i16::try_from(topic.len()) {
            Ok(length) => {
                out.extend_from_slice(&1i32.to_be_bytes());
                out.extend_from_slice(&length.to_be_bytes());
                out.extend_from_slice(topic.as_bytes());
            }
            Err(_) => out.extend_from_slice(&0i32.to_be_bytes()),
        }
        out.extend_from_slice(&(-1i32).to_be_bytes());
        Bytes::from(out)
    }

    /// A `ConsumerProtocolAssignment` v0 of `partitions` of `topic`, user data null.
    pub(crate) fn encode_assignment(topic: Option<&str>, partitions: &BTreeSet<u32>) -> Bytes {
        let mut out = Vec::with_capacity(16 + topic.map_or(0, str::len) + 4 * partitions.len());
        out.extend_from_slice(&0i16.to_be_bytes());
        let partitions: Vec<i32> = partitions
            .iter()
            .filter_map(|&partition| i32::try_from(partition).ok())
            .collect();
        let topic = topic.and_then(|topic| Some((topic, i16::try_from(topic.len()).ok()?)));
        match topic {
            Some((topic, length)) if !partitions.is_empty() => {
                out.extend_from_slice(&1i32.to_be_bytes());
                out.extend_from_slice(&length.to_be_bytes());
                out.extend_from_slice(topic.as_bytes());
                out.extend_from_slice(&(partitions.len() as i32).to_be_bytes());
                for partition in partitions {
                    out.extend_from_slice(&partition.to_be_bytes());
                }
            }
            _ => out.extend_from_slice(&0i32.to_be_bytes()),
        }
        out.extend_from_slice(&(-1i32).to_be_bytes());
        Bytes::from(out)
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
            notify: Some(address.recipient()),
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

    // -----------------------------------------------------------------------
    // The Kafka classic group protocol, driven through the actor.

    mod kafka {
        use super::super::consumer_protocol::{
            decode_assignment, decode_subscription, encode_assignment,
        };
        use super::super::*;
        use proptest::prelude::*;

        const WAIT: Duration = Duration::from_secs(10);

        fn store() -> (tempfile::TempDir, OffsetStore) {
            let directory = tempfile::tempdir().unwrap();
            let database = sled::Config::new()
                .path(directory.path().join("meta"))
                .open()
                .unwrap();
            let store = OffsetStore::open(&database).unwrap();
            (directory, store)
        }

        fn fast() -> KafkaSettings {
            KafkaSettings {
                min_session_timeout: Duration::from_millis(10),
                check_interval: Duration::from_millis(20),
                ..KafkaSettings::default()
            }
        }

        fn start(store: &OffsetStore, settings: KafkaSettings) -> Addr<GroupCoordinator> {
            GroupCoordinator::new(store.clone())
                .with_kafka_settings(settings)
                .start()
        }

        fn string(out: &mut Vec<u8>, text: &str) {
            out.extend_from_slice(&(text.len() as i16).to_be_bytes());
            out.extend_from_slice(text.as_bytes());
        }

        /// A `ConsumerProtocolSubscription` v1.
        fn subscription(topics: &[&str], owned: &[(&str, &[i32])]) -> Bytes {
            let mut out = Vec::new();
            out.extend_from_slice(&1i16.to_be_bytes());
            out.extend_from_slice(&(topics.len() as i32).to_be_bytes());
            for topic in topics {
                string(&mut out, topic);
            }
            out.extend_from_slice(&(-1i32).to_be_bytes());
            out.extend_from_slice(&(owned.len() as i32).to_be_bytes());
            for (topic, partitions) in owned {
                string(&mut out, topic);
                out.extend_from_slice(&(partitions.len() as i32).to_be_bytes());
                for partition in *partitions {
                    out.extend_from_slice(&partition.to_be_bytes());
                }
            }
            Bytes::from(out)
        }

        fn assignment(topic: &str, partitions: &[u32]) -> Bytes {
            encode_assignment(Some(topic), &partitions.iter().copied().collect())
        }

        fn partitions_of(bytes: &[u8]) -> BTreeSet<(String, u32)> {
            decode_assignment(bytes).expect("a readable assignment")
        }

        fn range(topics: &[&str]) -> Vec<(String, Bytes)> {
            vec![("range".to_owned(), subscription(topics, &[]))]
        }

        fn join_request(
            group: &str,
            member_id: &str,
            protocols: Vec<(String, Bytes)>,
            session_timeout: Duration,
        ) -> (KafkaJoin, oneshot::Receiver<KafkaJoinResult>) {
            let (reply, answer) = oneshot::channel();
            (
                KafkaJoin {
                    group: group.to_owned(),
                    member_id: member_id.to_owned(),
                    group_instance_id: None,
                    client_id: "test-client".to_owned(),
                    session_timeout,
                    rebalance_timeout: Duration::from_secs(30),
                    protocol_type: "consumer".to_owned(),
                    protocols,
                    require_known_member_id: false,
                    reply,
                },
                answer,
            )
        }

        fn join(
            coordinator: &Addr<GroupCoordinator>,
            group: &str,
            member_id: &str,
            protocols: Vec<(String, Bytes)>,
        ) -> oneshot::Receiver<KafkaJoinResult> {
            let (request, answer) =
                join_request(group, member_id, protocols, Duration::from_secs(10));
            coordinator.do_send(request);
            answer
        }

        fn sync(
            coordinator: &Addr<GroupCoordinator>,
            group: &str,
            generation_id: i32,
            member_id: &str,
            assignments: Vec<(String, Bytes)>,
        ) -> oneshot::Receiver<KafkaSyncResult> {
            let (reply, answer) = oneshot::channel();
            coordinator.do_send(KafkaSync {
                group: group.to_owned(),
                generation_id,
                member_id: member_id.to_owned(),
                protocol_type: Some("consumer".to_owned()),
                protocol_name: None,
                assignments,
                reply,
            });
            answer
        }

        async fn heartbeat(
            coordinator: &Addr<GroupCoordinator>,
            group: &str,
            generation_id: i32,
            member_id: &str,
        ) -> i16 {
            let (reply, answer) = oneshot::channel();
            coordinator.do_send(KafkaHeartbeat {
                group: group.to_owned(),
                generation_id,
                member_id: member_id.to_owned(),
                reply,
            });
            answered(answer).await
        }

        async fn leave(
            coordinator: &Addr<GroupCoordinator>,
            group: &str,
            member_ids: &[&str],
        ) -> (i16, Vec<i16>) {
            let (reply, answer) = oneshot::channel();
            coordinator.do_send(KafkaLeave {
                group: group.to_owned(),
                member_ids: member_ids.iter().map(|id| (*id).to_owned()).collect(),
                reply,
            });
            answered(answer).await
        }

        async fn commit(
            coordinator: &Addr<GroupCoordinator>,
            group: &str,
            generation_id: i32,
            member_id: &str,
            offsets: &[(&str, u32, i64, Option<&str>)],
        ) -> Vec<i16> {
            let (reply, answer) = oneshot::channel();
            coordinator.do_send(KafkaCommit {
                group: group.to_owned(),
                generation_id,
                member_id: member_id.to_owned(),
                offsets: offsets
                    .iter()
                    .map(|(topic, partition, offset, metadata)| {
                        (
                            (*topic).to_owned(),
                            *partition,
                            *offset,
                            metadata.map(str::to_owned),
                        )
                    })
                    .collect(),
                reply,
            });
            answered(answer).await
        }

        #[allow(clippy::type_complexity)]
        async fn fetch(
            coordinator: &Addr<GroupCoordinator>,
            group: &str,
            partitions: Option<&[(&str, u32)]>,
        ) -> (i16, Vec<(String, u32, i64, Option<String>, i16)>) {
            let (reply, answer) = oneshot::channel();
            coordinator.do_send(KafkaOffsetFetch {
                group: group.to_owned(),
                partitions: partitions.map(|list| {
                    list.iter()
                        .map(|(topic, partition)| ((*topic).to_owned(), *partition))
                        .collect()
                }),
                reply,
            });
            answered(answer).await
        }

        async fn answered<T>(answer: oneshot::Receiver<T>) -> T {
            tokio::time::timeout(WAIT, answer)
                .await
                .expect("answered in time")
                .expect("answered, not dropped")
        }

        /// Everything sent before has been handled (one mailbox, in order).
        async fn handled(
            coordinator: &Addr<GroupCoordinator>,
            group: &str,
        ) -> Option<GroupDescription> {
            coordinator
                .send(DescribeGroup {
                    group: group.to_owned(),
                })
                .await
                .unwrap()
        }

        fn parked<T>(answer: &mut oneshot::Receiver<T>) -> bool {
            matches!(answer.try_recv(), Err(oneshot::error::TryRecvError::Empty))
        }

        /// Members `a` and `b` (in that order) in a stable generation, `a`
        /// leading; returns their ids and the generation.
        async fn two_members(
            coordinator: &Addr<GroupCoordinator>,
            group: &str,
        ) -> (String, String, i32) {
            let first = answered(join(coordinator, group, "", range(&["t"]))).await;
            assert_eq!(first.error, code::NONE);
            let a = first.member_id.clone();
            assert_eq!(first.leader, a);
            let synced = answered(sync(
                coordinator,
                group,
                first.generation_id,
                &a,
                vec![(a.clone(), assignment("t", &[0, 1, 2, 3]))],
            ))
            .await;
            assert_eq!(synced.error, code::NONE);
            let mut b_join = join(coordinator, group, "", range(&["t"]));
            handled(coordinator, group).await;
            assert!(parked(&mut b_join), "b waits for a to rejoin");
            assert_eq!(
                heartbeat(coordinator, group, first.generation_id, &a).await,
                code::REBALANCE_IN_PROGRESS
            );
            let a_join = answered(join(coordinator, group, &a, range(&["t"]))).await;
            let b_join = answered(b_join).await;
            assert_eq!(a_join.generation_id, first.generation_id + 1);
            assert_eq!(b_join.generation_id, a_join.generation_id);
            let b = b_join.member_id.clone();
            let generation = a_join.generation_id;
            let mut b_sync = sync(coordinator, group, generation, &b, vec![]);
            handled(coordinator, group).await;
            assert!(
                parked(&mut b_sync),
                "a follower waits for the leader's assignment"
            );
            let a_sync = answered(sync(
                coordinator,
                group,
                generation,
                &a,
                vec![
                    (a.clone(), assignment("t", &[0, 1])),
                    (b.clone(), assignment("t", &[2, 3])),
                ],
            ))
            .await;
            let b_sync = answered(b_sync).await;
            assert_eq!(partitions_of(&a_sync.assignment).len(), 2);
            assert_eq!(
                partitions_of(&b_sync.assignment),
                [("t".to_owned(), 2), ("t".to_owned(), 3)]
                    .into_iter()
                    .collect()
            );
            (a, b, generation)
        }

        #[test]
        fn two_members_form_one_generation_and_the_leader_gets_both_metadata() {
            let (_directory, store) = store();
            actix::System::new().block_on(async {
                let coordinator = start(&store, KafkaSettings::default());
                // JoinGroup v4+: a new member first gets an id.
                let (mut request, answer) =
                    join_request("g", "", range(&["t"]), Duration::from_secs(10));
                request.require_known_member_id = true;
                coordinator.do_send(request);
                let required = answered(answer).await;
                assert_eq!(required.error, code::MEMBER_ID_REQUIRED);
                assert!(required.member_id.starts_with("test-client-"));
                let a = required.member_id;
                let a_metadata = subscription(&["t"], &[]);
                let first = answered(join(
                    &coordinator,
                    "g",
                    &a,
                    vec![("range".to_owned(), a_metadata.clone())],
                ))
                .await;
                assert_eq!((first.error, first.generation_id), (code::NONE, 1));
                assert_eq!(first.leader, a);
                assert_eq!(first.protocol_name.as_deref(), Some("range"));
                assert_eq!(first.protocol_type.as_deref(), Some("consumer"));
                // A second member: the first learns from its heartbeat and rejoins.
                let b_metadata = subscription(&["t", "u"], &[]);
                let mut b_join = join(
                    &coordinator,
                    "g",
                    "",
                    vec![
                        ("roundrobin".to_owned(), b_metadata.clone()),
                        ("range".to_owned(), b_metadata.clone()),
                    ],
                );
                handled(&coordinator, "g").await;
                assert!(parked(&mut b_join));
                assert_eq!(
                    heartbeat(&coordinator, "g", 1, &a).await,
                    code::REBALANCE_IN_PROGRESS
                );
                let a_join = answered(join(
                    &coordinator,
                    "g",
                    &a,
                    vec![("range".to_owned(), a_metadata.clone())],
                ))
                .await;
                let b_join = answered(b_join).await;
                assert_eq!((a_join.generation_id, b_join.generation_id), (2, 2));
                assert_eq!(a_join.protocol_name.as_deref(), Some("range"));
                assert_eq!(b_join.leader, a);
                assert!(b_join.members.is_empty());
                let b = b_join.member_id.clone();
                let mut listed = a_join.members.clone();
                listed.sort();
                let mut expected =
                    vec![(a.clone(), None, a_metadata), (b.clone(), None, b_metadata)];
                expected.sort();
                assert_eq!(listed, expected);
                // SyncGroup hands out the leader's assignment.
                let mut b_sync = sync(&coordinator, "g", 2, &b, vec![]);
                handled(&coordinator, "g").await;
                assert!(parked(&mut b_sync));
                let a_sync = answered(sync(
                    &coordinator,
                    "g",
                    2,
                    &a,
                    vec![
                        (a.clone(), assignment("t", &[0])),
                        (b.clone(), assignment("t", &[1])),
                        ("not-a-member".to_owned(), assignment("t", &[2])),
                    ],
                ))
                .await;
                let b_sync = answered(b_sync).await;
                assert_eq!(a_sync.error, code::NONE);
                assert_eq!(b_sync.protocol_name.as_deref(), Some("range"));
                assert_eq!(
                    partitions_of(&a_sync.assignment),
                    [("t".to_owned(), 0)].into()
                );
                assert_eq!(
                    partitions_of(&b_sync.assignment),
                    [("t".to_owned(), 1)].into()
                );
                assert_eq!(heartbeat(&coordinator, "g", 2, &a).await, code::NONE);
                assert_eq!(heartbeat(&coordinator, "g", 2, &b).await, code::NONE);
                assert_eq!(
                    heartbeat(&coordinator, "g", 1, &b).await,
                    code::ILLEGAL_GENERATION
                );
                // A re-sync in a stable generation answers the same assignment.
                let again = answered(sync(&coordinator, "g", 2, &b, vec![])).await;
                assert_eq!(again.assignment, b_sync.assignment);
                let described = handled(&coordinator, "g").await.unwrap();
                assert_eq!(described.kafka_state.as_deref(), Some("Stable"));
                assert_eq!(described.kafka_generation, Some(2));
                assert!(!described.server_side_assignment);
                assert_eq!(described.topic, "t");
                assert_eq!(described.members[&b], vec![PartitionId(1)]);
                assert_eq!(
                    described.kafka_members[&a],
                    vec![("t".to_owned(), PartitionId(0))]
                );
            });
        }

        #[test]
        fn a_third_member_makes_the_others_rejoin_into_the_next_generation() {
            let (_directory, store) = store();
            actix::System::new().block_on(async {
                let coordinator = start(&store, KafkaSettings::default());
                let (a, b, generation) = two_members(&coordinator, "g").await;
                let mut c_join = join(&coordinator, "g", "", range(&["t"]));
                handled(&coordinator, "g").await;
                assert!(parked(&mut c_join));
                for member in [&a, &b] {
                    assert_eq!(
                        heartbeat(&coordinator, "g", generation, member).await,
                        code::REBALANCE_IN_PROGRESS
                    );
                }
                // Commits of the current generation are still allowed while preparing.
                assert_eq!(
                    commit(&coordinator, "g", generation, &b, &[("t", 2, 5, None)]).await,
                    vec![code::NONE]
                );
                let mut a_join = join(&coordinator, "g", &a, range(&["t"]));
                handled(&coordinator, "g").await;
                assert!(parked(&mut a_join), "b has not rejoined yet");
                let b_join = answered(join(&coordinator, "g", &b, range(&["t"]))).await;
                let (a_join, c_join) = (answered(a_join).await, answered(c_join).await);
                assert_eq!(b_join.generation_id, generation + 1);
                assert_eq!(c_join.generation_id, generation + 1);
                assert_eq!(a_join.leader, a, "the leader stays the leader");
                assert_eq!(a_join.members.len(), 3);
                // A SyncGroup parked when another rebalance starts is told to rejoin.
                let mut c_sync = sync(&coordinator, "g", generation + 1, &c_join.member_id, vec![]);
                handled(&coordinator, "g").await;
                assert!(parked(&mut c_sync));
                let late = answered(sync(&coordinator, "g", generation, &b, vec![])).await;
                assert_eq!(late.error, code::ILLEGAL_GENERATION);
                assert_eq!(
                    leave(&coordinator, "g", &[&b]).await,
                    (code::NONE, vec![code::NONE])
                );
                assert_eq!(answered(c_sync).await.error, code::REBALANCE_IN_PROGRESS);
                let during = answered(sync(&coordinator, "g", generation + 1, &a, vec![])).await;
                assert_eq!(during.error, code::REBALANCE_IN_PROGRESS);
            });
        }

        #[test]
        fn commits_check_member_and_generation_and_are_visible_to_fetch_and_pipelines() {
            let (_directory, store) = store();
            actix::System::new().block_on(async {
                let coordinator = start(&store, KafkaSettings::default());
                let (a, _b, generation) = two_members(&coordinator, "g").await;
                assert_eq!(
                    commit(&coordinator, "g", generation - 1, &a, &[("t", 0, 10, None)]).await,
                    vec![code::ILLEGAL_GENERATION]
                );
                assert_eq!(
                    commit(
                        &coordinator,
                        "g",
                        generation,
                        "stranger",
                        &[("t", 0, 10, None)]
                    )
                    .await,
                    vec![code::UNKNOWN_MEMBER_ID]
                );
                // A standalone commit while the group has members.
                assert_eq!(
                    commit(&coordinator, "g", -1, "", &[("t", 0, 10, None)]).await,
                    vec![code::UNKNOWN_MEMBER_ID]
                );
                let long = "m".repeat(METADATA_BYTES_MAX + 1);
                assert_eq!(
                    commit(
                        &coordinator,
                        "g",
                        generation,
                        &a,
                        &[
                            ("t", 0, 10, Some("checkpoint")),
                            ("t", 1, 11, Some(&long)),
                            ("t", 3, -5, None),
                            ("u", 0, 7, None),
                        ]
                    )
                    .await,
                    vec![
                        code::NONE,
                        code::OFFSET_METADATA_TOO_LARGE,
                        code::INVALID_COMMIT_OFFSET_SIZE,
                        code::NONE
                    ]
                );
                // The pipelines' read API sees it (one store).
                assert_eq!(
                    store.committed("g", "t", PartitionId(0)),
                    Ok(Some(Offset(10)))
                );
                // And a pipeline's commit is visible to Kafka clients.
                store
                    .commit(&CommitToken::after_sink_write(
                        "g",
                        "t",
                        PartitionId(2),
                        Offset(30),
                    ))
                    .unwrap();
                let (error, entries) =
                    fetch(&coordinator, "g", Some(&[("t", 0), ("t", 1), ("t", 2)])).await;
                assert_eq!(error, code::NONE);
                assert_eq!(
                    entries,
                    vec![
                        (
                            "t".to_owned(),
                            0,
                            10,
                            Some("checkpoint".to_owned()),
                            code::NONE
                        ),
                        ("t".to_owned(), 1, -1, None, code::NONE),
                        ("t".to_owned(), 2, 30, None, code::NONE),
                    ]
                );
                // A consumer that seeks back may commit a lower offset.
                assert_eq!(
                    commit(&coordinator, "g", generation, &a, &[("t", 0, 4, None)]).await,
                    vec![code::NONE]
                );
                let (error, all) = fetch(&coordinator, "g", None).await;
                assert_eq!(error, code::NONE);
                let all: Vec<(String, u32, i64)> = all
                    .into_iter()
                    .map(|(topic, partition, offset, _, _)| (topic, partition, offset))
                    .collect();
                assert_eq!(
                    all,
                    vec![
                        ("t".to_owned(), 0, 4),
                        ("t".to_owned(), 2, 30),
                        ("u".to_owned(), 0, 7)
                    ]
                );
                // Standalone commits to a group nobody is a member of.
                assert_eq!(
                    commit(&coordinator, "solo", -1, "", &[("t", 0, 3, None)]).await,
                    vec![code::NONE]
                );
                assert_eq!(
                    commit(&coordinator, "solo", 4, "ghost", &[("t", 0, 3, None)]).await,
                    vec![code::ILLEGAL_GENERATION]
                );
                assert_eq!(
                    fetch(&coordinator, "solo", Some(&[("t", 0)])).await.1[0].2,
                    3
                );
                assert_eq!(
                    fetch(&coordinator, "nobody", None).await,
                    (code::NONE, vec![])
                );
                assert_eq!(
                    commit(&coordinator, "", -1, "", &[("t", 0, 3, None)]).await,
                    vec![code::INVALID_GROUP_ID]
                );
                assert_eq!(
                    fetch(&coordinator, "", None).await.0,
                    code::INVALID_GROUP_ID
                );
            });
        }

        #[test]
        fn a_member_that_stops_heartbeating_is_removed_after_its_session_timeout() {
            let (_directory, store) = store();
            actix::System::new().block_on(async {
                let coordinator = start(&store, fast());
                let (a, b, generation) = two_members(&coordinator, "g").await;
                // b's session is short; a keeps heartbeating (as its client would).
                let (request, answer) =
                    join_request("g", &b, range(&["t"]), Duration::from_millis(200));
                coordinator.do_send(request);
                assert_eq!(answered(answer).await.error, code::NONE);
                let started = Instant::now();
                loop {
                    let error = heartbeat(&coordinator, "g", generation, &a).await;
                    if error == code::REBALANCE_IN_PROGRESS {
                        break;
                    }
                    assert_eq!(error, code::NONE);
                    assert!(started.elapsed() < WAIT, "b was never removed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                assert!(started.elapsed() >= Duration::from_millis(200));
                let rejoined = answered(join(&coordinator, "g", &a, range(&["t"]))).await;
                assert_eq!(rejoined.generation_id, generation + 1);
                assert_eq!(rejoined.members.len(), 1);
                assert_eq!(
                    heartbeat(&coordinator, "g", generation, &b).await,
                    code::UNKNOWN_MEMBER_ID
                );
            });
        }

        #[test]
        fn a_leader_that_never_syncs_is_removed_at_the_rebalance_timeout() {
            let (_directory, store) = store();
            actix::System::new().block_on(async {
                let coordinator = start(&store, fast());
                let (a, b, generation) = two_members(&coordinator, "g").await;
                // Short rebalance timeouts from now on: the sync phase will time
                // out (the join phase that follows is as short, so b and c
                // rejoin at once).
                let (mut c, c_answer) =
                    join_request("g", "", range(&["t"]), Duration::from_secs(10));
                c.rebalance_timeout = Duration::from_millis(500);
                coordinator.do_send(c);
                let mut answers = Vec::new();
                for member in [&a, &b] {
                    let (mut request, answer) =
                        join_request("g", member, range(&["t"]), Duration::from_secs(10));
                    request.rebalance_timeout = Duration::from_millis(500);
                    coordinator.do_send(request);
                    answers.push(answer);
                }
                for answer in answers {
                    assert_eq!(answered(answer).await.generation_id, generation + 1);
                }
                let c = answered(c_answer).await.member_id;
                // The followers sync; the leader (a) never does.
                let b_sync = sync(&coordinator, "g", generation + 1, &b, vec![]);
                let c_sync = sync(&coordinator, "g", generation + 1, &c, vec![]);
                assert_eq!(answered(b_sync).await.error, code::REBALANCE_IN_PROGRESS);
                assert_eq!(answered(c_sync).await.error, code::REBALANCE_IN_PROGRESS);
                assert_eq!(
                    heartbeat(&coordinator, "g", generation + 1, &a).await,
                    code::UNKNOWN_MEMBER_ID
                );
                let b_join = join(&coordinator, "g", &b, range(&["t"]));
                let c_join = answered(join(&coordinator, "g", &c, range(&["t"]))).await;
                let b_join = answered(b_join).await;
                assert_eq!(c_join.generation_id, generation + 2);
                assert_eq!(b_join.leader, b, "a new leader");
                assert_eq!(b_join.members.len(), 2);
            });
        }

        #[test]
        fn leaving_members_rebalance_the_group_and_their_parked_answers_fail() {
            let (_directory, store) = store();
            actix::System::new().block_on(async {
                let coordinator = start(&store, KafkaSettings::default());
                let (a, b, generation) = two_members(&coordinator, "g").await;
                let c_join = join(&coordinator, "g", "", range(&["t"]));
                let a_join = join(&coordinator, "g", &a, range(&["t"]));
                assert_eq!(
                    leave(&coordinator, "g", &[&a, "ghost"]).await,
                    (code::NONE, vec![code::NONE, code::UNKNOWN_MEMBER_ID])
                );
                assert_eq!(answered(a_join).await.error, code::UNKNOWN_MEMBER_ID);
                let b_join = answered(join(&coordinator, "g", &b, range(&["t"]))).await;
                let c_join = answered(c_join).await;
                assert_eq!(b_join.generation_id, generation + 1);
                assert_eq!(c_join.generation_id, generation + 1);
                assert_eq!(b_join.leader, b);
                assert_eq!(b_join.members.len(), 2);
                // Everybody leaves: the group is gone, and a standalone commit is fine.
                assert_eq!(
                    leave(&coordinator, "g", &[&b, &c_join.member_id]).await,
                    (code::NONE, vec![code::NONE, code::NONE])
                );
                assert_eq!(handled(&coordinator, "g").await, None);
                assert_eq!(
                    commit(&coordinator, "g", -1, "", &[("t", 0, 1, None)]).await,
                    vec![code::NONE]
                );
                assert_eq!(
                    leave(&coordinator, "other", &["x"]).await,
                    (code::NONE, vec![code::UNKNOWN_MEMBER_ID])
                );
            });
        }

        #[test]
        fn bad_requests_get_kafka_error_codes() {
            let (_directory, store) = store();
            actix::System::new().block_on(async {
                let settings = KafkaSettings {
                    max_members: 2,
                    ..KafkaSettings::default()
                };
                let coordinator = start(&store, settings);
                assert_eq!(
                    answered(join(&coordinator, "", "", range(&["t"])))
                        .await
                        .error,
                    code::INVALID_GROUP_ID
                );
                let long = "g".repeat(GROUP_NAME_BYTES_MAX + 1);
                assert_eq!(
                    answered(join(&coordinator, &long, "", range(&["t"])))
                        .await
                        .error,
                    code::INVALID_GROUP_ID
                );
                assert_eq!(
                    answered(sync(&coordinator, "", 1, "x", vec![])).await.error,
                    code::INVALID_GROUP_ID
                );
                assert_eq!(
                    heartbeat(&coordinator, "", 1, "x").await,
                    code::INVALID_GROUP_ID
                );
                assert_eq!(
                    leave(&coordinator, "", &["x"]).await.0,
                    code::INVALID_GROUP_ID
                );
                let (request, answer) =
                    join_request("g", "", range(&["t"]), Duration::from_millis(5));
                coordinator.do_send(request);
                assert_eq!(answered(answer).await.error, code::INVALID_SESSION_TIMEOUT);
                let (request, answer) =
                    join_request("g", "", range(&["t"]), Duration::from_secs(3600));
                coordinator.do_send(request);
                assert_eq!(answered(answer).await.error, code::INVALID_SESSION_TIMEOUT);
                assert_eq!(
                    answered(join(&coordinator, "g", "", vec![])).await.error,
                    code::INCONSISTENT_GROUP_PROTOCOL
                );
                assert_eq!(
                    answered(join(&coordinator, "g", "nobody", range(&["t"])))
                        .await
                        .error,
                    code::UNKNOWN_MEMBER_ID
                );
                assert_eq!(
                    answered(sync(&coordinator, "g", 1, "nobody", vec![]))
                        .await
                        .error,
                    code::UNKNOWN_MEMBER_ID
                );
                assert_eq!(
                    heartbeat(&coordinator, "g", 1, "nobody").await,
                    code::UNKNOWN_MEMBER_ID
                );
                let a = answered(join(&coordinator, "g", "", range(&["t"]))).await;
                assert_eq!(a.error, code::NONE);
                // No protocol in common, or another protocol type.
                let other = vec![("sticky".to_owned(), subscription(&["t"], &[]))];
                assert_eq!(
                    answered(join(&coordinator, "g", "", other)).await.error,
                    code::INCONSISTENT_GROUP_PROTOCOL
                );
                let (mut request, answer) =
                    join_request("g", "", range(&["t"]), Duration::from_secs(10));
                request.protocol_type = "connect".to_owned();
                coordinator.do_send(request);
                assert_eq!(
                    answered(answer).await.error,
                    code::INCONSISTENT_GROUP_PROTOCOL
                );
                let mut wrong = sync(&coordinator, "g", a.generation_id, &a.member_id, vec![]);
                assert_eq!(
                    answered(sync(
                        &coordinator,
                        "g",
                        a.generation_id + 1,
                        &a.member_id,
                        vec![]
                    ))
                    .await
                    .error,
                    code::ILLEGAL_GENERATION
                );
                handled(&coordinator, "g").await;
                assert!(!parked(&mut wrong), "the leader's own sync completes");
                // The group is full at two (pending ids count).
                let (mut request, answer) =
                    join_request("g", "", range(&["t"]), Duration::from_secs(10));
                request.require_known_member_id = true;
                coordinator.do_send(request);
                assert_eq!(answered(answer).await.error, code::MEMBER_ID_REQUIRED);
                assert_eq!(
                    answered(join(&coordinator, "g", "", range(&["t"])))
                        .await
                        .error,
                    code::GROUP_MAX_SIZE_REACHED
                );
                // While preparing a rebalance, SyncGroup is refused.
                let mut rejoin = join(
                    &coordinator,
                    "g",
                    &a.member_id,
                    vec![("range".to_owned(), subscription(&["t", "v"], &[]))],
                );
                handled(&coordinator, "g").await;
                assert!(parked(&mut rejoin), "waits for the pending member id");
                assert_eq!(
                    answered(sync(
                        &coordinator,
                        "g",
                        a.generation_id,
                        &a.member_id,
                        vec![]
                    ))
                    .await
                    .error,
                    code::REBALANCE_IN_PROGRESS
                );
            });
        }

        /// An in-process member that gives revoked partitions back at once.
        struct PipelineMember {
            coordinator: Addr<GroupCoordinator>,
            group: String,
            id: String,
            owned: BTreeSet<u32>,
        }

        impl Actor for PipelineMember {
            type Context = Context<Self>;
        }

        impl Handler<AssignmentChange> for PipelineMember {
            type Result = ();

            fn handle(&mut self, change: AssignmentChange, _: &mut Self::Context) {
                self.owned
                    .extend(change.assigned.iter().map(|partition| partition.0));
                for partition in &change.revoked {
                    assert!(
                        self.owned.remove(&partition.0),
                        "revoked what it did not own"
                    );
                }
                if !change.revoked.is_empty() {
                    self.coordinator.do_send(Revoked {
                        group: self.group.clone(),
                        member: self.id.clone(),
                        partitions: change.revoked,
                    });
                }
            }
        }

        #[derive(Message)]
        #[rtype(result = "BTreeSet<u32>")]
        struct Owned;

        impl Handler<Owned> for PipelineMember {
            type Result = MessageResult<Owned>;

            fn handle(&mut self, _: Owned, _: &mut Self::Context) -> Self::Result {
                MessageResult(self.owned.clone())
            }
        }

        async fn pipeline_member(
            coordinator: &Addr<GroupCoordinator>,
            group: &str,
            id: &str,
        ) -> Addr<PipelineMember> {
            let member = PipelineMember {
                coordinator: coordinator.clone(),
                group: group.to_owned(),
                id: id.to_owned(),
                owned: BTreeSet::new(),
            }
            .start();
            coordinator
                .send(Join {
                    group: group.to_owned(),
                    topic: "t".to_owned(),
                    partitions: 4,
                    member: id.to_owned(),
                    notify: member.clone().recipient(),
                })
                .await
                .unwrap()
                .unwrap();
            member
        }

        async fn owned(member: &Addr<PipelineMember>) -> BTreeSet<u32> {
            member.send(Owned).await.unwrap()
        }

        fn numbers(partitions: &BTreeSet<(String, u32)>) -> BTreeSet<u32> {
            partitions.iter().map(|(_, partition)| *partition).collect()
        }

        #[test]
        fn a_pipeline_member_and_a_kafka_member_get_disjoint_partitions_covering_all() {
            let (_directory, store) = store();
            actix::System::new().block_on(async {
                let coordinator = start(&store, KafkaSettings::default());
                let pipeline = pipeline_member(&coordinator, "mix", "pipeline-0").await;
                handled(&coordinator, "mix").await;
                assert_eq!(owned(&pipeline).await, (0..4).collect());
                // A Kafka consumer joins: it follows, the coordinator assigns.
                let joined = answered(join(&coordinator, "mix", "", range(&["t"]))).await;
                assert_eq!(joined.error, code::NONE);
                assert_eq!(joined.leader, SERVER_SIDE_LEADER);
                assert!(joined.members.is_empty());
                let k = joined.member_id.clone();
                let synced =
                    answered(sync(&coordinator, "mix", joined.generation_id, &k, vec![])).await;
                assert_eq!(synced.error, code::NONE);
                let kafka_partitions = numbers(&partitions_of(&synced.assignment));
                let pipeline_partitions = owned(&pipeline).await;
                assert_eq!(kafka_partitions.len(), 2);
                assert!(kafka_partitions.is_disjoint(&pipeline_partitions));
                assert_eq!(
                    kafka_partitions
                        .union(&pipeline_partitions)
                        .copied()
                        .collect::<BTreeSet<_>>(),
                    (0..4).collect()
                );
                let described = handled(&coordinator, "mix").await.unwrap();
                assert!(described.server_side_assignment);
                assert_eq!(described.members.len(), 2);
                assert_eq!(
                    described.members[&k]
                        .iter()
                        .map(|p| p.0)
                        .collect::<BTreeSet<_>>(),
                    kafka_partitions
                );
                assert_eq!(
                    heartbeat(&coordinator, "mix", joined.generation_id, &k).await,
                    code::NONE
                );
                // The Kafka member commits only what it owns.
                let mine = *kafka_partitions.first().unwrap();
                let theirs = *pipeline_partitions.first().unwrap();
                assert_eq!(
                    commit(
                        &coordinator,
                        "mix",
                        joined.generation_id,
                        &k,
                        &[("t", mine, 5, None), ("t", theirs, 5, None),]
                    )
                    .await,
                    vec![code::NONE, code::ILLEGAL_GENERATION]
                );
                assert_eq!(
                    commit(&coordinator, "mix", -1, "", &[("t", theirs, 5, None)]).await,
                    vec![code::UNKNOWN_MEMBER_ID]
                );
                // Only consumer-protocol members may join a group with pipeline members.
                let (mut request, answer) =
                    join_request("mix", "", range(&["t"]), Duration::from_secs(10));
                request.protocol_type = "connect".to_owned();
                coordinator.do_send(request);
                assert_eq!(
                    answered(answer).await.error,
                    code::INCONSISTENT_GROUP_PROTOCOL
                );
                // A second pipeline member: the Kafka member must rejoin to give up a partition.
                let second = pipeline_member(&coordinator, "mix", "pipeline-1").await;
                handled(&coordinator, "mix").await;
                assert_eq!(
                    heartbeat(&coordinator, "mix", joined.generation_id, &k).await,
                    code::REBALANCE_IN_PROGRESS
                );
                let second_owned = owned(&second).await;
                assert!(
                    second_owned.is_disjoint(&kafka_partitions),
                    "nothing the Kafka client holds goes to a pipeline member before it rejoins"
                );
                // An eager client rejoins holding nothing.
                let rejoined = answered(join(&coordinator, "mix", &k, range(&["t"]))).await;
                assert_eq!(rejoined.generation_id, joined.generation_id + 1);
                let synced = answered(sync(
                    &coordinator,
                    "mix",
                    rejoined.generation_id,
                    &k,
                    vec![],
                ))
                .await;
                let kafka_partitions = numbers(&partitions_of(&synced.assignment));
                let (first_owned, second_owned) = (owned(&pipeline).await, owned(&second).await);
                let mut all: Vec<u32> = kafka_partitions.iter().copied().collect();
                all.extend(&first_owned);
                all.extend(&second_owned);
                all.sort_unstable();
                assert_eq!(all, vec![0, 1, 2, 3], "disjoint and covering");
                assert!([
                    first_owned.len(),
                    second_owned.len(),
                    kafka_partitions.len()
                ]
                .iter()
                .all(|count| (1..=2).contains(count)));
                // The Kafka member leaves: the pipeline members take everything.
                assert_eq!(
                    leave(&coordinator, "mix", &[&k]).await,
                    (code::NONE, vec![code::NONE])
                );
                handled(&coordinator, "mix").await;
                let (first_owned, second_owned) = (owned(&pipeline).await, owned(&second).await);
                assert!(first_owned.is_disjoint(&second_owned));
                assert_eq!(first_owned.len() + second_owned.len(), 4);
                let described = handled(&coordinator, "mix").await.unwrap();
                assert!(described.kafka_members.is_empty());
                assert_eq!(described.members.len(), 2);
            });
        }

        #[test]
        fn list_and_describe_show_pipeline_and_kafka_members_of_one_group() {
            let (_directory, store) = store();
            store
                .commit(&CommitToken::after_sink_write(
                    "stored",
                    "t",
                    PartitionId(0),
                    Offset(1),
                ))
                .unwrap();
            actix::System::new().block_on(async {
                let coordinator = start(&store, KafkaSettings::default());
                let pipeline = pipeline_member(&coordinator, "mix", "pipeline-0").await;
                handled(&coordinator, "mix").await;
                let joined = answered(join(&coordinator, "mix", "", range(&["t"]))).await;
                let k = joined.member_id.clone();
                let synced =
                    answered(sync(&coordinator, "mix", joined.generation_id, &k, vec![])).await;
                let kafka_partitions = partitions_of(&synced.assignment);

                let (reply, answer) = oneshot::channel();
                coordinator.do_send(KafkaListGroups { reply });
                let (error, listed) = answer.await.unwrap();
                assert_eq!(error, code::NONE);
                let listed: BTreeMap<String, (String, &str)> = listed
                    .into_iter()
                    .map(|group| (group.group, (group.protocol_type, group.state)))
                    .collect();
                assert_eq!(listed["mix"], ("consumer".to_owned(), "Stable"));
                assert_eq!(listed["stored"], ("consumer".to_owned(), "Empty"));

                let (reply, answer) = oneshot::channel();
                let groups = ["mix", "stored", "nobody", ""].map(str::to_owned).to_vec();
                coordinator.do_send(KafkaDescribeGroups { groups, reply });
                let described = answer.await.unwrap();
                assert_eq!(described.len(), 4);
                let mix = &described[0];
                assert_eq!((mix.error, mix.state.as_str()), (code::NONE, "Stable"));
                assert_eq!(mix.protocol, "range");
                assert_eq!(mix.members.len(), 2);
                let by_id: BTreeMap<&str, &DescribedMember> = mix
                    .members
                    .iter()
                    .map(|member| (member.member_id.as_str(), member))
                    .collect();
                assert_eq!(
                    partitions_of(&by_id[k.as_str()].assignment),
                    kafka_partitions
                );
                assert_eq!(by_id[k.as_str()].client_id, "test-client");
                let pipeline_partitions: BTreeSet<(String, u32)> = owned(&pipeline)
                    .await
                    .into_iter()
                    .map(|partition| ("t".to_owned(), partition))
                    .collect();
                assert_eq!(
                    partitions_of(&by_id["pipeline-0"].assignment),
                    pipeline_partitions
                );
                let subscription = decode_subscription(&by_id["pipeline-0"].metadata).unwrap();
                assert_eq!(subscription.topics, BTreeSet::from(["t".to_owned()]));
                assert_eq!(
                    (described[1].error, described[1].state.as_str()),
                    (code::NONE, "Empty")
                );
                assert_eq!(
                    (described[2].error, described[2].state.as_str()),
                    (code::NONE, "Dead")
                );
                assert_eq!(described[3].error, code::INVALID_GROUP_ID);
            });
        }

        #[test]
        fn a_kafka_group_switches_to_server_side_assignment_when_a_pipeline_member_joins() {
            let (_directory, store) = store();
            actix::System::new().block_on(async {
                let coordinator = start(&store, KafkaSettings::default());
                // A Kafka-only group whose leader took all four partitions.
                let first = answered(join(&coordinator, "mix", "", range(&["t"]))).await;
                let k = first.member_id.clone();
                let synced = answered(sync(
                    &coordinator,
                    "mix",
                    first.generation_id,
                    &k,
                    vec![(k.clone(), assignment("t", &[0, 1, 2, 3]))],
                ))
                .await;
                assert_eq!(
                    numbers(&partitions_of(&synced.assignment)),
                    (0..4).collect()
                );
                // A pipeline member joins: it gets nothing while the client holds everything.
                let pipeline = pipeline_member(&coordinator, "mix", "pipeline-0").await;
                handled(&coordinator, "mix").await;
                assert!(owned(&pipeline).await.is_empty());
                assert_eq!(
                    heartbeat(&coordinator, "mix", first.generation_id, &k).await,
                    code::REBALANCE_IN_PROGRESS
                );
                // A cooperative client rejoins still owning 0 and 1.
                let rejoined = answered(join(
                    &coordinator,
                    "mix",
                    &k,
                    vec![
                        (
                            "cooperative-sticky".to_owned(),
                            subscription(&["t"], &[("t", &[0, 1])]),
                        ),
                        ("range".to_owned(), subscription(&["t"], &[("t", &[0, 1])])),
                    ],
                ))
                .await;
                assert_eq!(rejoined.error, code::NONE);
                assert_eq!(rejoined.leader, SERVER_SIDE_LEADER);
                assert_eq!(
                    rejoined.protocol_name.as_deref(),
                    Some("cooperative-sticky")
                );
                handled(&coordinator, "mix").await;
                let pipeline_partitions = owned(&pipeline).await;
                assert!(!pipeline_partitions.contains(&0) && !pipeline_partitions.contains(&1));
                let synced = answered(sync(
                    &coordinator,
                    "mix",
                    rejoined.generation_id,
                    &k,
                    vec![],
                ))
                .await;
                let kafka_partitions = numbers(&partitions_of(&synced.assignment));
                assert!(kafka_partitions.is_disjoint(&pipeline_partitions));
                assert_eq!(kafka_partitions.len() + pipeline_partitions.len(), 4);
                let described = handled(&coordinator, "mix").await.unwrap();
                assert!(described.server_side_assignment);
                assert_eq!(described.kafka_state.as_deref(), Some("Stable"));
                // The last pipeline member leaves: back to the client-side flow.
                coordinator.do_send(Leave {
                    group: "mix".to_owned(),
                    member: "pipeline-0".to_owned(),
                });
                handled(&coordinator, "mix").await;
                assert_eq!(
                    heartbeat(&coordinator, "mix", rejoined.generation_id, &k).await,
                    code::REBALANCE_IN_PROGRESS
                );
                let again = answered(join(&coordinator, "mix", &k, range(&["t"]))).await;
                assert_eq!(again.leader, k);
                assert_eq!(again.members.len(), 1);
            });
        }

        fn member(order: u64, protocols: &[&str]) -> KafkaMember {
            KafkaMember {
                instance_id: None,
                client_id: String::new(),
                session_timeout: Duration::from_secs(10),
                rebalance_timeout: Duration::from_secs(10),
                protocols: protocols
                    .iter()
                    .map(|name| ((*name).to_owned(), Bytes::new()))
                    .collect(),
                topics: BTreeSet::new(),
                last_seen: Instant::now(),
                order,
                join_reply: None,
                sync_reply: None,
                synced: false,
                assignment: None,
                told: None,
                holds: Holds::nothing(),
            }
        }

        #[test]
        fn the_protocol_is_one_every_member_supports_chosen_by_vote() {
            let mut group = KafkaGroup::new();
            group.protocol_type = Some("consumer".into());
            group
                .members
                .insert("a".into(), member(0, &["range", "roundrobin", "sticky"]));
            group
                .members
                .insert("b".into(), member(1, &["roundrobin", "range"]));
            group
                .members
                .insert("c".into(), member(2, &["roundrobin", "range"]));
            assert_eq!(group.select_protocol().as_deref(), Some("roundrobin"));
            group.members.insert("d".into(), member(3, &["range"]));
            assert_eq!(group.select_protocol().as_deref(), Some("range"));
            let offered = |names: &[&str]| -> Vec<(String, Bytes)> {
                names
                    .iter()
                    .map(|name| ((*name).to_owned(), Bytes::new()))
                    .collect()
            };
            assert!(group.supports("consumer", &offered(&["sticky", "range"]), None));
            assert!(!group.supports("consumer", &offered(&["sticky"]), None));
            assert!(!group.supports("connect", &offered(&["range"]), None));
            // A member changing its own protocols is checked against the others only.
            group.members.remove("d");
            assert!(group.supports("consumer", &offered(&["roundrobin"]), Some("a")));
        }

        #[test]
        fn the_consumer_protocol_codec_reads_what_clients_write() {
            let decoded =
                decode_subscription(&subscription(&["t", "u"], &[("t", &[3, -1, 1])])).unwrap();
            assert_eq!(decoded.topics, ["t".to_owned(), "u".to_owned()].into());
            assert_eq!(
                decoded.owned,
                [("t".to_owned(), 1), ("t".to_owned(), 3)].into()
            );
            // Version 0: no owned partitions; later versions add fields after them.
            let mut v0 = vec![0, 0, 0, 0, 0, 1];
            string(&mut v0, "t");
            v0.extend_from_slice(&(-1i32).to_be_bytes());
            assert_eq!(decode_subscription(&v0).unwrap().owned, BTreeSet::new());
            let mut v3 = subscription(&["t"], &[]).to_vec();
            v3[1] = 3;
            v3.extend_from_slice(&7i32.to_be_bytes());
            v3.extend_from_slice(&(-1i16).to_be_bytes());
            assert!(decode_subscription(&v3).is_some());
            let encoded = assignment("t", &[2, 0]);
            assert_eq!(
                encoded.as_ref(),
                &[
                    0, 0, 0, 0, 0, 1, 0, 1, b't', 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 2, 0xff, 0xff,
                    0xff, 0xff
                ][..]
            );
            assert_eq!(
                decode_assignment(&encoded).unwrap(),
                [("t".to_owned(), 0), ("t".to_owned(), 2)].into()
            );
            assert_eq!(
                decode_assignment(&encode_assignment(None, &[1].into())).unwrap(),
                BTreeSet::new()
            );
            assert_eq!(decode_assignment(&[0, 0, 0x7f, 0xff, 0xff, 0xff]), None);
            assert_eq!(decode_subscription(&[0xff, 0xff]), None);
        }

        proptest! {
            #[test]
            fn the_codec_never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
                let _ = decode_subscription(&bytes);
                let _ = decode_assignment(&bytes);
            }

            #[test]
            fn assignments_round_trip(partitions in proptest::collection::btree_set(0u32..10_000, 0..50)) {
                let decoded = decode_assignment(&encode_assignment(Some("topic"), &partitions)).unwrap();
                prop_assert_eq!(decoded.into_iter().map(|(_, partition)| partition).collect::<BTreeSet<_>>(), partitions);
            }
        }
    }
}
