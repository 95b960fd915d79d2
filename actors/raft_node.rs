//! RaftNode: this node's end of the cluster. It owns the peer
//! [`Transport`] and the routing table from Raft group to partition actor.
//!
//! - Out: a partition actor's round sends [`RaftOutbound`] here; the
//!   messages are encoded (protobuf, raft-rs's own codec) and queued on the
//!   transport's per-peer queues, whose sender threads write everything
//!   queued as one frame: peer messages are batched per peer across groups.
//! - In: the transport's reader threads hand each received frame here as
//!   [`PeerFrames`] (`try_send`: a full mailbox drops it, as a lossy
//!   network would, and Raft retransmits); messages are decoded and
//!   forwarded to their group's actor, one [`RaftInbound`] per group per
//!   frame. A message for an unknown group, or one that fails to decode,
//!   is dropped with a counter.
//!
//! Each partition actor owns its group's `RawNode` outright; this actor
//! never touches Raft state, so no Raft node sits behind a lock.

use crate::metrics::Metrics;
use crate::replication::transport::{Envelope, GroupId, Transport};
use actix::prelude::*;
use arc_swap::ArcSwap;
use protobuf::Message as _;
use raft::prelude::Message;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

/// Frames from peers waiting in this actor's mailbox before more are dropped.
pub(crate) const INBOUND_FRAMES_MAX: usize = 4096;

/// The other nodes' Kafka addresses by node id, as they announce them:
/// what Metadata lists as brokers. Readers load a snapshot; only the
/// RaftNode stores.
pub(crate) type PeerBrokers = Arc<ArcSwap<BTreeMap<u64, (String, u16)>>>;

/// The node-level channel's group: not a partition.
fn node_channel() -> GroupId {
    GroupId {
        topic: String::new(),
        partition: 0,
    }
}

/// What a node tells its peers about itself, on the node channel.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct NodeInfo {
    /// Its Kafka listener's advertised host and port, if it has one.
    kafka: Option<(String, u16)>,
    /// The groups it leads that are quiet (not ticking).
    quiet: Vec<GroupId>,
    /// Every group it leads, with the term.
    leading: Vec<(GroupId, u64)>,
}

/// Which nodes vouch for which of the groups they lead: a leader with
/// nothing to do stops ticking (no heartbeats), and its node says so in
/// every announcement instead; a caught-up follower stops ticking while
/// its leader's node keeps vouching. Node id -> (when its last
/// announcement arrived, the quiet groups it leads). Only the RaftNode
/// stores; partition actors load.
pub(crate) type Vouches = Arc<ArcSwap<HashMap<u64, (std::time::Instant, Arc<HashSet<GroupId>>)>>>;

/// Who leads each group, as the leaders announce it (group -> node, term;
/// the higher term wins). How a node that does not host a partition (its
/// replication factor is below the cluster's size) finds the leader to
/// forward to and to name in Metadata. Only the RaftNode stores.
pub(crate) type LeaderDirectory = Arc<ArcSwap<HashMap<GroupId, (u64, u64)>>>;

/// This node's replica of `group` leads (in `term`), or stopped leading.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Leading {
    pub(crate) group: GroupId,
    pub(crate) term: u64,
    pub(crate) leading: bool,
}

/// A group this node leads went quiet (`quiet`), or woke up.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Quiesced {
    pub(crate) group: GroupId,
    pub(crate) quiet: bool,
}

/// A membership change applied: add or remove a peer of the transport.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct PeerChange {
    pub(crate) change: crate::replication::MembershipChange,
}

/// This node's Kafka listener is up: announce it to the peers.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct AnnounceKafka {
    pub(crate) address: (String, u16),
}

/// Raft messages of one group, for peers.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct RaftOutbound {
    pub(crate) group: GroupId,
    pub(crate) messages: Vec<Message>,
}

/// Raft messages from peers, and forwarded produce traffic, for one
/// group's partition actor.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct RaftInbound {
    pub(crate) messages: Vec<Message>,
    pub(crate) forwarded: Vec<Forwarded>,
}

/// A produce forwarded between the replicas of one partition: an embedded
/// producer on a follower's node sends its batch to the leader's, which
/// proposes it and answers.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Forwarded {
    /// From a follower's node: propose this Kafka RecordBatch.
    Request { from: u64, id: u64, batch: Vec<u8> },
    /// From a follower's node: propose this membership change.
    Change {
        from: u64,
        id: u64,
        change: crate::replication::MembershipChange,
    },
    /// From the leader's node: the offsets it got, or why not.
    Reply {
        id: u64,
        result: Result<(u64, u64), ForwardError>,
    },
}

/// Why a forwarded produce failed, as the origin reports it to its producer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum ForwardError {
    /// Nothing was stored; the producer may retry.
    NotLeader(Option<u64>),
    /// It may or may not be stored.
    NotCommitted(String),
    /// Refused for good (too large, malformed).
    Refused(String),
}

/// A forwarded produce (request or reply) for one group, to one peer.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct ForwardOutbound {
    pub(crate) to: u64,
    pub(crate) group: GroupId,
    pub(crate) forwarded: Forwarded,
}

/// First byte of a partition group's envelope body.
const BODY_RAFT: u8 = 0;
const BODY_FORWARD: u8 = 1;
/// Largest forwarded body decoded (a batch is at most 64 MiB).
const FORWARD_BYTES_MAX: usize = 65 * 1024 * 1024;

/// One frame a peer sent.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct PeerFrames {
    pub(crate) from: u64,
    pub(crate) envelopes: Vec<Envelope>,
}

/// Route a group's messages to its actor.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Register {
    pub(crate) group: GroupId,
    pub(crate) recipient: Recipient<RaftInbound>,
}

/// Stop routing a group (its topic was deleted).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Unregister {
    pub(crate) group: GroupId,
}

/// The transport, once it is listening.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct AttachTransport {
    pub(crate) transport: Transport,
    pub(crate) peers: Vec<(u64, std::net::SocketAddr)>,
}

pub(crate) struct RaftNode {
    routes: HashMap<GroupId, Recipient<RaftInbound>>,
    transport: Option<Transport>,
    /// The peers' ids (from the transport's config).
    peers: Vec<u64>,
    metrics: Arc<Metrics>,
    brokers: PeerBrokers,
    kafka: Option<(String, u16)>,
    /// Groups this node leads that are quiet.
    quiet: HashSet<GroupId>,
    vouches: Vouches,
    announce_interval: Duration,
    /// The peers' addresses, as configured or added since.
    peer_addresses: HashMap<u64, std::net::SocketAddr>,
    /// The groups this node leads, with their terms.
    leading: HashMap<GroupId, u64>,
    directory: LeaderDirectory,
}

impl RaftNode {
    pub(crate) fn new(
        metrics: Arc<Metrics>,
        brokers: PeerBrokers,
        vouches: Vouches,
        announce_interval: Duration,
        directory: LeaderDirectory,
    ) -> RaftNode {
        RaftNode {
            routes: HashMap::new(),
            transport: None,
            peers: Vec::new(),
            metrics,
            brokers,
            kafka: None,
            quiet: HashSet::new(),
            vouches,
            announce_interval,
            peer_addresses: HashMap::new(),
            leading: HashMap::new(),
            directory,
        }
    }

    /// Tells every peer this node is alive, its Kafka address and the quiet
    /// groups it leads: the liveness signal that lets idle groups stop ticking.
    fn announce(&self) {
        let Some(transport) = &self.transport else {
            return;
        };
        let info = NodeInfo {
            kafka: self.kafka.clone(),
            quiet: self.quiet.iter().cloned().collect(),
            leading: self
                .leading
                .iter()
                .map(|(group, term)| (group.clone(), *term))
                .collect(),
        };
        let body = bincode::serde::encode_to_vec(&info, bincode::config::standard())
            .expect("node info encodes");
        for peer in &self.peers {
            transport.send(
                *peer,
                vec![Envelope {
                    group: node_channel(),
                    body: body.clone(),
                }],
            );
        }
    }

    /// Records what `node` says it leads: its entries replace those it
    /// held before, except where another node announced a higher term.
    fn update_directory(&self, node: u64, leading: &[(GroupId, u64)]) {
        let current = self.directory.load();
        let mut directory = HashMap::clone(&current);
        directory.retain(|group, (leader, _)| {
            *leader != node || leading.iter().any(|(led, _)| led == group)
        });
        for (group, term) in leading {
            let newer = directory
                .get(group)
                .is_none_or(|(_, known)| *term >= *known);
            if newer {
                directory.insert(group.clone(), (node, *term));
            }
        }
        if directory != **current {
            self.directory.store(Arc::new(directory));
        }
    }

    fn node_info(&self, from: u64, body: &[u8]) {
        let config = bincode::config::standard().with_limit::<4096>();
        let decoded: Result<(NodeInfo, usize), _> = bincode::serde::decode_from_slice(body, config);
        let Ok((info, _)) = decoded else {
            self.metrics
                .raft_messages_dropped_total
                .fetch_add(1, Relaxed);
            tracing::warn!(peer = from, "node info does not decode; dropped");
            return;
        };
        self.update_directory(from, &info.leading);
        let mut vouches = HashMap::clone(&self.vouches.load());
        vouches.insert(
            from,
            (
                std::time::Instant::now(),
                Arc::new(info.quiet.into_iter().collect()),
            ),
        );
        self.vouches.store(Arc::new(vouches));
        let current = self.brokers.load();
        if current.get(&from) == info.kafka.as_ref() {
            return;
        }
        let mut brokers = BTreeMap::clone(&current);
        match info.kafka {
            Some(address) => brokers.insert(from, address),
            None => brokers.remove(&from),
        };
        self.brokers.store(Arc::new(brokers));
    }
}

impl Actor for RaftNode {
    type Context = Context<Self>;

    fn started(&mut self, context: &mut Context<Self>) {
        context.set_mailbox_capacity(INBOUND_FRAMES_MAX);
        context.run_interval(self.announce_interval, |node, _| node.announce());
    }

    fn stopped(&mut self, _context: &mut Context<Self>) {
        if let Some(mut transport) = self.transport.take() {
            transport.shutdown();
        }
    }
}

impl Handler<Register> for RaftNode {
    type Result = ();
    fn handle(&mut self, message: Register, _context: &mut Context<Self>) {
        self.routes.insert(message.group, message.recipient);
    }
}

impl Handler<Unregister> for RaftNode {
    type Result = ();
    fn handle(&mut self, message: Unregister, _context: &mut Context<Self>) {
        self.routes.remove(&message.group);
    }
}

impl Handler<AttachTransport> for RaftNode {
    type Result = ();
    fn handle(&mut self, message: AttachTransport, _context: &mut Context<Self>) {
        self.peers = message.peers.iter().map(|(id, _)| *id).collect();
        self.peer_addresses = message.peers.into_iter().collect();
        self.transport = Some(message.transport);
        self.announce();
    }
}

impl Handler<PeerChange> for RaftNode {
    type Result = ();
    fn handle(&mut self, message: PeerChange, _context: &mut Context<Self>) {
        use crate::replication::MembershipChange;
        let Some(transport) = self.transport.as_mut() else {
            return;
        };
        match message.change {
            MembershipChange::Add { id, address } => {
                // Every replicated partition applies the same change: once is enough.
                if self.peer_addresses.get(&id) == Some(&address) {
                    return;
                }
                match transport.add_peer(id, address) {
                    Ok(()) => {
                        tracing::info!(node = id, %address, "peer added to the cluster");
                        self.peer_addresses.insert(id, address);
                        if !self.peers.contains(&id) {
                            self.peers.push(id);
                        }
                    }
                    Err(error) => {
                        tracing::error!(node = id, %error, "cannot start the sender for a new peer")
                    }
                }
            }
            MembershipChange::Remove { id } => {
                if self.peer_addresses.remove(&id).is_some() {
                    tracing::info!(node = id, "peer removed from the cluster");
                    transport.remove_peer(id);
                    self.peers.retain(|peer| *peer != id);
                }
            }
        }
    }
}

impl Handler<Leading> for RaftNode {
    type Result = ();
    fn handle(&mut self, message: Leading, _context: &mut Context<Self>) {
        if message.leading {
            self.leading.insert(message.group, message.term);
        } else {
            self.leading.remove(&message.group);
        }
    }
}

impl Handler<Quiesced> for RaftNode {
    type Result = ();
    fn handle(&mut self, message: Quiesced, _context: &mut Context<Self>) {
        let changed = if message.quiet {
            self.quiet.insert(message.group)
        } else {
            self.quiet.remove(&message.group)
        };
        // A group waking up must stop being vouched for at once.
        if changed && !message.quiet {
            self.announce();
        }
    }
}

impl Handler<AnnounceKafka> for RaftNode {
    type Result = ();
    fn handle(&mut self, message: AnnounceKafka, _context: &mut Context<Self>) {
        self.kafka = Some(message.address);
        self.announce();
    }
}

impl Handler<RaftOutbound> for RaftNode {
    type Result = ();

    fn handle(&mut self, message: RaftOutbound, _context: &mut Context<Self>) {
        let Some(transport) = &self.transport else {
            // Not listening yet (or stopping): lost, as on a network.
            return;
        };
        let mut by_peer: BTreeMap<u64, Vec<Envelope>> = BTreeMap::new();
        for raft_message in message.messages {
            let to = raft_message.to;
            let mut body = Vec::with_capacity(1 + raft_message.compute_size() as usize);
            body.push(BODY_RAFT);
            match raft_message.write_to_vec(&mut body) {
                Ok(()) => by_peer.entry(to).or_default().push(Envelope {
                    group: message.group.clone(),
                    body,
                }),
                Err(error) => {
                    tracing::warn!(group = ?message.group, %error, "raft message not encodable; dropped")
                }
            }
        }
        for (peer, envelopes) in by_peer {
            transport.send(peer, envelopes);
        }
    }
}

impl Handler<ForwardOutbound> for RaftNode {
    type Result = ();

    fn handle(&mut self, message: ForwardOutbound, _context: &mut Context<Self>) {
        let Some(transport) = &self.transport else {
            return;
        };
        let mut body = vec![BODY_FORWARD];
        match bincode::serde::encode_into_std_write(
            &message.forwarded,
            &mut body,
            bincode::config::standard(),
        ) {
            Ok(_) => transport.send(
                message.to,
                vec![Envelope {
                    group: message.group,
                    body,
                }],
            ),
            Err(error) => tracing::warn!(%error, "forwarded produce not encodable; dropped"),
        }
    }
}

/// The inbound message being gathered for `group`.
fn inbound(by_group: &mut HashMap<GroupId, RaftInbound>, group: GroupId) -> &mut RaftInbound {
    by_group.entry(group).or_insert_with(|| RaftInbound {
        messages: Vec::new(),
        forwarded: Vec::new(),
    })
}

impl Handler<PeerFrames> for RaftNode {
    type Result = ();

    fn handle(&mut self, frames: PeerFrames, _context: &mut Context<Self>) {
        let mut by_group: HashMap<GroupId, RaftInbound> = HashMap::new();
        for envelope in frames.envelopes {
            if envelope.group.topic.is_empty() {
                self.node_info(frames.from, &envelope.body);
                continue;
            }
            let (kind, body) = envelope.body.split_first().unwrap_or((&u8::MAX, &[]));
            if *kind == BODY_FORWARD {
                let config = bincode::config::standard().with_limit::<FORWARD_BYTES_MAX>();
                match bincode::serde::decode_from_slice::<Forwarded, _>(body, config) {
                    // The sender is the connection's peer, whatever it claims.
                    Ok((Forwarded::Request { id, batch, .. }, _)) => {
                        inbound(&mut by_group, envelope.group)
                            .forwarded
                            .push(Forwarded::Request {
                                from: frames.from,
                                id,
                                batch,
                            })
                    }
                    Ok((Forwarded::Change { id, change, .. }, _)) => {
                        inbound(&mut by_group, envelope.group)
                            .forwarded
                            .push(Forwarded::Change {
                                from: frames.from,
                                id,
                                change,
                            })
                    }
                    Ok((reply, _)) => inbound(&mut by_group, envelope.group).forwarded.push(reply),
                    Err(error) => {
                        self.metrics
                            .raft_messages_dropped_total
                            .fetch_add(1, Relaxed);
                        tracing::warn!(peer = frames.from, %error, "forwarded produce does not decode; dropped");
                    }
                }
                continue;
            }
            if *kind != BODY_RAFT {
                self.metrics
                    .raft_messages_dropped_total
                    .fetch_add(1, Relaxed);
                tracing::warn!(peer = frames.from, kind, "unknown envelope kind; dropped");
                continue;
            }
            match Message::parse_from_bytes(body) {
                Ok(message) if message.from == frames.from => {
                    inbound(&mut by_group, envelope.group)
                        .messages
                        .push(message)
                }
                Ok(message) => {
                    self.metrics
                        .raft_messages_dropped_total
                        .fetch_add(1, Relaxed);
                    tracing::warn!(
                        peer = frames.from,
                        claimed = message.from,
                        "raft message claims another sender; dropped"
                    );
                }
                Err(error) => {
                    self.metrics
                        .raft_messages_dropped_total
                        .fetch_add(1, Relaxed);
                    tracing::warn!(peer = frames.from, %error, "raft message does not decode; dropped");
                }
            }
        }
        for (group, inbound) in by_group {
            match self.routes.get(&group) {
                Some(recipient) => {
                    // Partition mailboxes are unbounded; the frames that
                    // feed this are bounded by this actor's mailbox.
                    recipient.do_send(inbound);
                }
                None => {
                    self.metrics.raft_messages_dropped_total.fetch_add(
                        (inbound.messages.len() + inbound.forwarded.len()) as u64,
                        Relaxed,
                    );
                    tracing::debug!(
                        peer = frames.from,
                        ?group,
                        "raft messages for a group this node does not host; dropped"
                    );
                }
            }
        }
    }
}
