//! The peer transport: opaque payloads between millrace nodes over TCP.
//!
//! # Wire format
//!
//! A connection carries frames: `len` (u32 LE, payload bytes), `crc`
//! (u32 LE, CRC-32C of the payload), then the payload, a [`WireFrame`]
//! encoded with bincode 2 (standard config, decoding limited to the
//! maximum frame). The length is checked against the maximum before a
//! byte of the body is read or allocated.
//!
//! The connecting node sends `Hello { protocol, cluster_id, from, to }`
//! first; the accepting node checks the protocol version, the cluster id,
//! that `to` is itself and `from` a configured peer. Then only `Batch`
//! frames follow. Anything else (garbage, a bad checksum, an oversized or
//! undecodable frame, a second Hello, a wrong cluster id, an unknown node)
//! closes that connection with one log line and a counter; nothing else is
//! affected, and nothing panics.
//!
//! Connections are one-way: a node sends only on connections it opened,
//! and receives only on those it accepted, so two nodes dialling each
//! other at once never race over which connection to keep.
//!
//! # Threads and bounds
//!
//! One accept thread, one reader thread per accepted connection (at most
//! [`CONNECTIONS_MAX`]), one sender thread per peer. [`Transport::send`]
//! never blocks: each peer has a bounded queue ([`QUEUE_ENVELOPES_MAX`]);
//! a full queue drops the envelope and counts it, as a lossy network
//! would (Raft retransmits). The sender thread waits for the first
//! envelope, drains everything queued (up to the frame limit) and writes it
//! as one frame: batched per peer, across Raft groups. A failed connect or
//! write is retried with doubling backoff ([`BACKOFF_MIN`] to
//! [`BACKOFF_MAX`]); the envelopes of a failed write are dropped.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Default largest frame: a 64 MiB batch and room around it.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 * 1024 * 1024 + 64 * 1024;
/// Envelopes queued per peer before `send` drops.
pub const QUEUE_ENVELOPES_MAX: usize = 8192;
/// Accepted connections at once; more are closed on arrival.
pub const CONNECTIONS_MAX: usize = 64;
/// First reconnect backoff.
pub const BACKOFF_MIN: Duration = Duration::from_millis(20);
/// Longest reconnect backoff.
pub const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// The wire protocol's version, in every Hello.
pub const PROTOCOL_VERSION: u32 = 1;

const FRAME_HEADER_BYTES: usize = 8;
/// How long an accepted connection has to say Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// An accepted connection silent this long is closed (the peer reconnects).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often blocked threads look at the stop flag.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Identifies a Raft group: a partition, or the node-level channel (topic "").
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GroupId {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: u32,
}

/// One message for one group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The group it is for.
    pub group: GroupId,
    /// The message, encoded by the caller.
    pub body: Vec<u8>,
}

/// What a frame's payload holds.
#[derive(Debug, Serialize, Deserialize)]
pub enum WireFrame {
    /// The first frame of a connection.
    Hello {
        /// [`PROTOCOL_VERSION`] of the sender.
        protocol: u32,
        /// The sender's `[node] cluster_id`.
        cluster_id: String,
        /// The sender's node id.
        from: u64,
        /// The node id it meant to reach.
        to: u64,
    },
    /// Envelopes from the sender.
    Batch(Vec<Envelope>),
}

/// How a transport runs.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// This node's id.
    pub node_id: u64,
    /// Peers of another cluster id are refused.
    pub cluster_id: String,
    /// Every other node: id and address.
    pub peers: Vec<(u64, SocketAddr)>,
    /// Largest frame sent or accepted.
    pub max_frame_bytes: usize,
}

/// A snapshot of a transport's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Frames written.
    pub frames_sent: u64,
    /// Frames read and accepted.
    pub frames_received: u64,
    /// Payload bytes written.
    pub bytes_sent: u64,
    /// Payload bytes read.
    pub bytes_received: u64,
    /// Frames or connections refused (each closed its connection).
    pub frames_rejected: u64,
    /// Envelopes dropped: a full queue, or a failed write.
    pub envelopes_dropped: u64,
    /// Outgoing connections made.
    pub connects: u64,
    /// Per peer: whether this node has a connection to it, and how long
    /// since a frame from it arrived (`None`: never).
    pub peers: Vec<PeerStats>,
}

/// One peer's part of [`TransportStats`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStats {
    /// The peer's node id.
    pub id: u64,
    /// This node holds an open connection to it.
    pub connected: bool,
    /// Milliseconds since its last frame arrived, if one ever did.
    pub since_last_frame_ms: Option<u64>,
}

type Deliver = Box<dyn Fn(u64, Vec<Envelope>) + Send + Sync>;

#[derive(Default)]
struct Counters {
    frames_sent: AtomicU64,
    frames_received: AtomicU64,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    frames_rejected: AtomicU64,
    envelopes_dropped: AtomicU64,
    connects: AtomicU64,
}

/// Per-peer state the threads share (atomics only).
struct PeerState {
    connected: AtomicBool,
    /// Milliseconds since `started` at the last frame received, plus one (0: never).
    last_frame: AtomicU64,
}

impl PeerState {
    fn new() -> PeerState {
        PeerState {
            connected: AtomicBool::new(false),
            last_frame: AtomicU64::new(0),
        }
    }
}

struct Shared {
    config: TransportConfig,
    deliver: Deliver,
    stopping: AtomicBool,
    counters: Counters,
    /// The peers now (membership changes add and remove them); readers
    /// load a snapshot, only `Transport` stores.
    peers: arc_swap::ArcSwap<HashMap<u64, Arc<PeerState>>>,
    started: Instant,
    connections: AtomicUsize,
}

impl Shared {
    fn stopping(&self) -> bool {
        self.stopping.load(Relaxed)
    }

    fn reject(&self, remote: SocketAddr, reason: &str) {
        self.counters.frames_rejected.fetch_add(1, Relaxed);
        tracing::warn!(%remote, reason, "peer connection refused and closed");
    }
}

/// The running transport. See the module docs.
pub struct Transport {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    queues: HashMap<u64, crossbeam_channel::Sender<Envelope>>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Transport")
            .field("node_id", &self.shared.config.node_id)
            .field("local_addr", &self.local_addr)
            .finish()
    }
}

impl Transport {
    /// Starts accepting on `listener` (already bound, so a test can bind
    /// port 0 first) and sending to the peers, connecting lazily.
    /// `deliver` gets every accepted batch with its sender's id.
    pub fn start(
        config: TransportConfig,
        listener: TcpListener,
        deliver: Box<dyn Fn(u64, Vec<Envelope>) + Send + Sync>,
    ) -> std::io::Result<Transport> {
        let local_addr = listener.local_addr()?;
        let peers: HashMap<u64, Arc<PeerState>> = config
            .peers
            .iter()
            .map(|(id, _)| (*id, Arc::new(PeerState::new())))
            .collect();
        let shared = Arc::new(Shared {
            config,
            deliver,
            stopping: AtomicBool::new(false),
            counters: Counters::default(),
            peers: arc_swap::ArcSwap::from_pointee(peers),
            started: Instant::now(),
            connections: AtomicUsize::new(0),
        });
        let mut transport = Transport {
            shared: Arc::clone(&shared),
            local_addr,
            queues: HashMap::new(),
            threads: Vec::new(),
        };
        let accept_shared = Arc::clone(&shared);
        transport.threads.push(
            std::thread::Builder::new()
                .name(format!("millrace-peer-accept-{}", shared.config.node_id))
                .spawn(move || accept_loop(listener, accept_shared))?,
        );
        for (id, address) in shared.config.peers.clone() {
            transport.start_sender(id, address)?;
        }
        Ok(transport)
    }

    fn start_sender(&mut self, id: u64, address: SocketAddr) -> std::io::Result<()> {
        let Some(peer) = self.shared.peers.load().get(&id).cloned() else {
            return Ok(());
        };
        let (sender, receiver) = crossbeam_channel::bounded(QUEUE_ENVELOPES_MAX);
        let peer_shared = Arc::clone(&self.shared);
        self.threads.push(
            std::thread::Builder::new()
                .name(format!("millrace-peer-{id}"))
                .spawn(move || send_loop(id, address, receiver, peer, peer_shared))?,
        );
        self.queues.insert(id, sender);
        Ok(())
    }

    /// A node joined the cluster (a membership change): accept it and send
    /// to it from now on. Its address replaces any earlier one.
    pub fn add_peer(&mut self, id: u64, address: SocketAddr) -> std::io::Result<()> {
        if id == self.shared.config.node_id {
            return Ok(());
        }
        // The old sender (if any) stops once its queue is dropped.
        self.queues.remove(&id);
        let mut peers = HashMap::clone(&self.shared.peers.load());
        peers.insert(id, Arc::new(PeerState::new()));
        self.shared.peers.store(Arc::new(peers));
        self.start_sender(id, address)
    }

    /// A node left the cluster: stop sending to it and refuse its new
    /// connections.
    pub fn remove_peer(&mut self, id: u64) {
        self.queues.remove(&id);
        let mut peers = HashMap::clone(&self.shared.peers.load());
        peers.remove(&id);
        self.shared.peers.store(Arc::new(peers));
    }

    /// Queues envelopes for peer `to`; never blocks. A full queue (or an
    /// unknown peer) drops them and counts the drop.
    pub fn send(&self, to: u64, envelopes: Vec<Envelope>) {
        let Some(queue) = self.queues.get(&to) else {
            self.shared
                .counters
                .envelopes_dropped
                .fetch_add(envelopes.len() as u64, Relaxed);
            return;
        };
        for envelope in envelopes {
            if queue.try_send(envelope).is_err() {
                self.shared.counters.envelopes_dropped.fetch_add(1, Relaxed);
            }
        }
    }

    /// The address it accepts on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> TransportStats {
        let counters = &self.shared.counters;
        let now_ms = self.shared.started.elapsed().as_millis() as u64;
        let mut peers: Vec<PeerStats> = self
            .shared
            .peers
            .load()
            .iter()
            .map(|(id, state)| PeerStats {
                id: *id,
                connected: state.connected.load(Relaxed),
                since_last_frame_ms: match state.last_frame.load(Relaxed) {
                    0 => None,
                    at => Some(now_ms.saturating_sub(at - 1)),
                },
            })
            .collect();
        peers.sort_by_key(|peer| peer.id);
        TransportStats {
            frames_sent: counters.frames_sent.load(Relaxed),
            frames_received: counters.frames_received.load(Relaxed),
            bytes_sent: counters.bytes_sent.load(Relaxed),
            bytes_received: counters.bytes_received.load(Relaxed),
            frames_rejected: counters.frames_rejected.load(Relaxed),
            envelopes_dropped: counters.envelopes_dropped.load(Relaxed),
            connects: counters.connects.load(Relaxed),
            peers,
        }
    }

    /// Stops every thread and closes every socket; returns when the accept
    /// and sender threads are gone and the readers have noticed (they
    /// look at the stop flag every [`POLL_INTERVAL`]).
    pub fn shutdown(&mut self) {
        if self.shared.stopping.swap(true, Relaxed) {
            return;
        }
        // Wake the accept loop with a connection of our own.
        let mut wake = self.local_addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let _ = TcpStream::connect_timeout(&wake, CONNECT_TIMEOUT);
        self.queues.clear();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        let deadline = Instant::now() + POLL_INTERVAL * 20;
        while self.shared.connections.load(Relaxed) > 0 && Instant::now() < deadline {
            std::thread::sleep(POLL_INTERVAL / 4);
        }
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Encodes one frame: header and payload.
pub fn encode_frame(frame: &WireFrame) -> Vec<u8> {
    let payload = bincode::serde::encode_to_vec(frame, bincode::config::standard())
        .expect("a wire frame always encodes");
    let mut bytes = Vec::with_capacity(FRAME_HEADER_BYTES + payload.len());
    bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    bytes.extend_from_slice(&payload);
    bytes
}

/// Why bytes are not a valid frame.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The declared length is over the limit.
    #[error("frame of {length} bytes is over the limit of {max}")]
    TooLong {
        /// Declared payload length.
        length: usize,
        /// The limit.
        max: usize,
    },
    /// The payload does not match its checksum.
    #[error("frame checksum mismatch")]
    Checksum,
    /// The payload is not a wire frame.
    #[error("frame does not decode: {0}")]
    Undecodable(String),
}

/// The payload length a frame header declares, checked against `max`.
pub fn frame_length(header: &[u8; FRAME_HEADER_BYTES], max: usize) -> Result<usize, FrameError> {
    let length = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
    if length > max {
        return Err(FrameError::TooLong { length, max });
    }
    Ok(length)
}

/// Checks and decodes a payload whose header was `header`.
pub fn decode_payload(
    header: &[u8; FRAME_HEADER_BYTES],
    payload: &[u8],
    max: usize,
) -> Result<WireFrame, FrameError> {
    let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    if crc32c::crc32c(payload) != crc {
        return Err(FrameError::Checksum);
    }
    let config = bincode::config::standard().with_limit::<{ DEFAULT_MAX_FRAME_BYTES * 2 }>();
    let (frame, used): (WireFrame, usize) = bincode::serde::decode_from_slice(payload, config)
        .map_err(|error| FrameError::Undecodable(error.to_string()))?;
    if used != payload.len() || payload.len() > max {
        return Err(FrameError::Undecodable(format!(
            "{} bytes after the frame",
            payload.len() - used
        )));
    }
    Ok(frame)
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stopping() {
            return;
        }
        let stream = match stream {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(%error, "accepting a peer connection failed");
                std::thread::sleep(BACKOFF_MIN);
                continue;
            }
        };
        let remote = match stream.peer_addr() {
            Ok(remote) => remote,
            Err(_) => continue,
        };
        if shared.connections.load(Relaxed) >= CONNECTIONS_MAX {
            shared.reject(remote, "too many peer connections");
            continue;
        }
        shared.connections.fetch_add(1, Relaxed);
        let reader_shared = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .name(format!("millrace-peer-in-{}", shared.config.node_id))
            .spawn(move || {
                read_connection(stream, remote, &reader_shared);
                reader_shared.connections.fetch_sub(1, Relaxed);
            });
        if spawned.is_err() {
            shared.connections.fetch_sub(1, Relaxed);
        }
    }
}

/// Reads exactly `buffer.len()` bytes, looking at the stop flag between
/// timed-out reads. `Ok(false)`: stopping, or `deadline` passed, or EOF
/// before the first byte (a clean close).
fn read_full(
    stream: &mut TcpStream,
    buffer: &mut [u8],
    shared: &Shared,
    deadline: Instant,
) -> std::io::Result<bool> {
    let mut filled = 0;
    while filled < buffer.len() {
        if shared.stopping() {
            return Ok(false);
        }
        match stream.read(&mut buffer[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
            Ok(read) => filled += read,
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if Instant::now() >= deadline {
                    return Ok(false);
                }
            }
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(true)
}

/// One frame, or `None` when the connection is over (stop, timeout, EOF,
/// an I/O error). A bad frame is rejected here.
fn read_frame(
    stream: &mut TcpStream,
    remote: SocketAddr,
    shared: &Shared,
    timeout: Duration,
) -> Option<WireFrame> {
    let max = shared.config.max_frame_bytes;
    let mut header = [0u8; FRAME_HEADER_BYTES];
    if !read_full(stream, &mut header, shared, Instant::now() + timeout).ok()? {
        return None;
    }
    let length = match frame_length(&header, max) {
        Ok(length) => length,
        Err(error) => {
            shared.reject(remote, &error.to_string());
            return None;
        }
    };
    let mut payload = vec![0u8; length];
    match read_full(stream, &mut payload, shared, Instant::now() + timeout) {
        Ok(true) => {}
        Ok(false) if length == 0 => {}
        _ => return None,
    }
    match decode_payload(&header, &payload, max) {
        Ok(frame) => {
            shared
                .counters
                .bytes_received
                .fetch_add(length as u64, Relaxed);
            Some(frame)
        }
        Err(error) => {
            shared.reject(remote, &error.to_string());
            None
        }
    }
}

fn read_connection(mut stream: TcpStream, remote: SocketAddr, shared: &Shared) {
    if stream.set_read_timeout(Some(POLL_INTERVAL)).is_err() {
        return;
    }
    let from = match read_frame(&mut stream, remote, shared, HELLO_TIMEOUT) {
        Some(WireFrame::Hello {
            protocol,
            cluster_id,
            from,
            to,
        }) => {
            let config = &shared.config;
            let refusal = if protocol != PROTOCOL_VERSION {
                Some(format!(
                    "protocol version {protocol}, this node speaks {PROTOCOL_VERSION}"
                ))
            } else if cluster_id != config.cluster_id {
                Some(format!(
                    "cluster id {cluster_id:?}, this node's is {:?}",
                    config.cluster_id
                ))
            } else if to != config.node_id {
                Some(format!(
                    "hello meant for node {to}, this is node {}",
                    config.node_id
                ))
            } else if !shared.peers.load().contains_key(&from) {
                Some(format!("node {from} is not among this node's peers"))
            } else {
                None
            };
            if let Some(reason) = refusal {
                shared.reject(remote, &reason);
                return;
            }
            from
        }
        Some(WireFrame::Batch(_)) => {
            shared.reject(remote, "a batch before the hello");
            return;
        }
        None => return,
    };
    let Some(peer) = shared.peers.load().get(&from).cloned() else {
        return;
    };
    while let Some(frame) = read_frame(&mut stream, remote, shared, IDLE_TIMEOUT) {
        match frame {
            WireFrame::Batch(envelopes) => {
                shared.counters.frames_received.fetch_add(1, Relaxed);
                peer.last_frame
                    .store(shared.started.elapsed().as_millis() as u64 + 1, Relaxed);
                (shared.deliver)(from, envelopes);
            }
            WireFrame::Hello { .. } => {
                shared.reject(remote, "a second hello");
                break;
            }
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
}

fn connect(address: SocketAddr, to: u64, shared: &Shared) -> std::io::Result<TcpStream> {
    let mut stream = TcpStream::connect_timeout(&address, CONNECT_TIMEOUT)?;
    stream.set_nodelay(true)?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let hello = encode_frame(&WireFrame::Hello {
        protocol: PROTOCOL_VERSION,
        cluster_id: shared.config.cluster_id.clone(),
        from: shared.config.node_id,
        to,
    });
    stream.write_all(&hello)?;
    shared.counters.connects.fetch_add(1, Relaxed);
    Ok(stream)
}

fn send_loop(
    id: u64,
    address: SocketAddr,
    queue: crossbeam_channel::Receiver<Envelope>,
    peer: Arc<PeerState>,
    shared: Arc<Shared>,
) {
    let mut stream: Option<TcpStream> = None;
    let mut backoff = BACKOFF_MIN;
    let mut retry_at = Instant::now();
    let budget = shared.config.max_frame_bytes / 2;
    loop {
        if shared.stopping() {
            break;
        }
        let first = match queue.recv_timeout(POLL_INTERVAL) {
            Ok(envelope) => envelope,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => continue,
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
        };
        let mut envelopes = vec![first];
        let mut bytes = envelopes[0].body.len();
        while bytes < budget {
            match queue.try_recv() {
                Ok(envelope) => {
                    bytes += envelope.body.len() + envelope.group.topic.len() + 16;
                    envelopes.push(envelope);
                }
                Err(_) => break,
            }
        }
        if stream.is_none() {
            if Instant::now() < retry_at {
                // Still backing off: these are lost, as on a down link.
                shared
                    .counters
                    .envelopes_dropped
                    .fetch_add(envelopes.len() as u64, Relaxed);
                continue;
            }
            match connect(address, id, &shared) {
                Ok(connected) => {
                    stream = Some(connected);
                    peer.connected.store(true, Relaxed);
                    backoff = BACKOFF_MIN;
                }
                Err(error) => {
                    tracing::debug!(peer = id, %address, %error, "peer connect failed; backing off");
                    retry_at = Instant::now() + backoff;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    shared
                        .counters
                        .envelopes_dropped
                        .fetch_add(envelopes.len() as u64, Relaxed);
                    continue;
                }
            }
        }
        let count = envelopes.len() as u64;
        let frame = encode_frame(&WireFrame::Batch(envelopes));
        let written = stream
            .as_mut()
            .map(|connection| connection.write_all(&frame));
        match written {
            Some(Ok(())) => {
                shared.counters.frames_sent.fetch_add(1, Relaxed);
                shared
                    .counters
                    .bytes_sent
                    .fetch_add((frame.len() - FRAME_HEADER_BYTES) as u64, Relaxed);
            }
            _ => {
                tracing::debug!(peer = id, %address, "peer write failed; reconnecting");
                if let Some(connection) = stream.take() {
                    let _ = connection.shutdown(Shutdown::Both);
                }
                peer.connected.store(false, Relaxed);
                retry_at = Instant::now() + backoff;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                shared.counters.envelopes_dropped.fetch_add(count, Relaxed);
            }
        }
    }
    if let Some(connection) = stream.take() {
        let _ = connection.shutdown(Shutdown::Both);
    }
    peer.connected.store(false, Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const WAIT: Duration = Duration::from_secs(10);

    struct Node {
        transport: Transport,
        received: crossbeam_channel::Receiver<(u64, Vec<Envelope>)>,
    }

    fn listener() -> TcpListener {
        TcpListener::bind("127.0.0.1:0").expect("bind")
    }

    fn start(id: u64, listener: TcpListener, peers: Vec<(u64, SocketAddr)>, cluster: &str) -> Node {
        let (sender, received) = crossbeam_channel::unbounded();
        let config = TransportConfig {
            node_id: id,
            cluster_id: cluster.to_owned(),
            peers,
            max_frame_bytes: 1024 * 1024,
        };
        let deliver = Box::new(move |from, envelopes| {
            let _ = sender.send((from, envelopes));
        });
        Node {
            transport: Transport::start(config, listener, deliver).expect("start"),
            received,
        }
    }

    fn envelope(partition: u32, body: &[u8]) -> Envelope {
        Envelope {
            group: GroupId {
                topic: "events".to_owned(),
                partition,
            },
            body: body.to_vec(),
        }
    }

    /// Receives until `count` envelopes from `from` have arrived.
    fn receive(node: &Node, from: u64, count: usize) -> Vec<Envelope> {
        let deadline = Instant::now() + WAIT;
        let mut got = Vec::new();
        while got.len() < count {
            let (sender, envelopes) = node
                .received
                .recv_deadline(deadline)
                .unwrap_or_else(|_| panic!("only {} of {count} envelopes arrived", got.len()));
            assert_eq!(sender, from);
            got.extend(envelopes);
        }
        got
    }

    #[test]
    fn three_nodes_exchange_batches_in_order() {
        let listeners: Vec<TcpListener> = (0..3).map(|_| listener()).collect();
        let addresses: Vec<SocketAddr> = listeners
            .iter()
            .map(|listener| listener.local_addr().unwrap())
            .collect();
        let nodes: Vec<Node> = listeners
            .into_iter()
            .enumerate()
            .map(|(index, listener)| {
                let peers = (0..3)
                    .filter(|&other| other != index)
                    .map(|other| (other as u64 + 1, addresses[other]))
                    .collect();
                start(index as u64 + 1, listener, peers, "test")
            })
            .collect();
        for (index, node) in nodes.iter().enumerate() {
            for round in 0..50u32 {
                for other in 0..3u64 {
                    if other != index as u64 {
                        node.transport
                            .send(other + 1, vec![envelope(round, &round.to_le_bytes())]);
                    }
                }
            }
        }
        for (index, node) in nodes.iter().enumerate() {
            let mut by_sender: HashMap<u64, Vec<u32>> = HashMap::new();
            let deadline = Instant::now() + WAIT;
            while by_sender.values().map(Vec::len).sum::<usize>() < 100 {
                let (sender, envelopes) = node.received.recv_deadline(deadline).expect("delivery");
                by_sender
                    .entry(sender)
                    .or_default()
                    .extend(envelopes.iter().map(|envelope| envelope.group.partition));
            }
            for from in (0..3u64).filter(|&other| other != index as u64) {
                assert_eq!(
                    by_sender.get(&(from + 1)),
                    Some(&(0..50).collect::<Vec<u32>>()),
                    "node {} got node {}'s envelopes in order",
                    index + 1,
                    from + 1
                );
            }
        }
    }

    #[test]
    fn a_restarted_peer_is_reached_again() {
        let listener_two = listener();
        let address_two = listener_two.local_addr().unwrap();
        let one = start(1, listener(), vec![(2, address_two)], "test");
        let mut two = start(
            2,
            listener_two,
            vec![(1, one.transport.local_addr())],
            "test",
        );
        one.transport.send(2, vec![envelope(0, b"before")]);
        assert_eq!(receive(&two, 1, 1)[0].body, b"before");
        two.transport.shutdown();
        drop(two);
        // The same port again: the peer's address does not change.
        let two = start(
            2,
            TcpListener::bind(address_two).expect("rebind"),
            vec![(1, one.transport.local_addr())],
            "test",
        );
        let deadline = Instant::now() + WAIT;
        loop {
            one.transport.send(2, vec![envelope(1, b"after")]);
            if let Ok((_, envelopes)) = two.received.recv_timeout(Duration::from_millis(50)) {
                assert_eq!(envelopes[0].body, b"after");
                break;
            }
            assert!(Instant::now() < deadline, "never reconnected");
        }
        assert!(one.transport.stats().connects >= 2);
    }

    /// Sends raw bytes on a fresh connection and expects it closed by the
    /// node, with `frames_rejected` one higher.
    fn assert_rejected(node: &Node, bytes: &[u8], what: &str) {
        let before = node.transport.stats().frames_rejected;
        let mut stream = TcpStream::connect(node.transport.local_addr()).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.write_all(bytes).unwrap();
        let mut buffer = [0u8; 16];
        let closed = matches!(stream.read(&mut buffer), Ok(0) | Err(_));
        assert!(closed, "{what}: the connection must be closed");
        let deadline = Instant::now() + WAIT;
        while node.transport.stats().frames_rejected == before {
            assert!(Instant::now() < deadline, "{what}: not counted as rejected");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn hello(cluster: &str, from: u64, to: u64) -> Vec<u8> {
        encode_frame(&WireFrame::Hello {
            protocol: PROTOCOL_VERSION,
            cluster_id: cluster.to_owned(),
            from,
            to,
        })
    }

    #[test]
    fn bad_frames_and_strangers_are_refused_and_the_node_keeps_serving() {
        let listener_one = listener();
        let address_one = listener_one.local_addr().unwrap();
        let listener_two = listener();
        let node = start(
            1,
            listener_one,
            vec![(2, listener_two.local_addr().unwrap())],
            "test",
        );

        assert_rejected(&node, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "garbage");
        // Only a header declaring 1 GiB: refused before any body is read.
        let mut oversized = Vec::new();
        oversized.extend_from_slice(&(1u32 << 30).to_le_bytes());
        oversized.extend_from_slice(&0u32.to_le_bytes());
        assert_rejected(&node, &oversized, "oversized");
        let mut bad_crc = hello("test", 2, 1);
        bad_crc[4] ^= 0xff;
        assert_rejected(&node, &bad_crc, "bad checksum");
        let junk = [7u8; 12];
        let mut undecodable = Vec::new();
        undecodable.extend_from_slice(&(junk.len() as u32).to_le_bytes());
        undecodable.extend_from_slice(&crc32c::crc32c(&junk).to_le_bytes());
        undecodable.extend_from_slice(&junk);
        assert_rejected(&node, &undecodable, "undecodable payload");
        assert_rejected(
            &node,
            &encode_frame(&WireFrame::Batch(vec![envelope(0, b"x")])),
            "batch before hello",
        );
        assert_rejected(&node, &hello("other-cluster", 2, 1), "wrong cluster id");
        assert_rejected(&node, &hello("test", 9, 1), "unknown node");
        assert_rejected(&node, &hello("test", 2, 3), "hello for another node");

        // The legitimate peer still gets through.
        let two = start(2, listener_two, vec![(1, address_one)], "test");
        two.transport.send(1, vec![envelope(0, b"hello")]);
        assert_eq!(receive(&node, 2, 1)[0].body, b"hello");
        assert_eq!(node.transport.stats().frames_rejected, 8);
    }

    #[test]
    fn a_full_queue_drops_without_blocking() {
        // A peer that never accepts: the queue fills and drops.
        let silent = listener();
        let node = start(
            1,
            listener(),
            vec![(2, silent.local_addr().unwrap())],
            "test",
        );
        drop(silent);
        let started = Instant::now();
        for _ in 0..(QUEUE_ENVELOPES_MAX * 2) {
            node.transport.send(2, vec![envelope(0, b"x")]);
        }
        assert!(started.elapsed() < Duration::from_secs(5), "send blocked");
        assert!(node.transport.stats().envelopes_dropped > 0);
        // A peer that is not configured: dropped and counted too.
        let before = node.transport.stats().envelopes_dropped;
        node.transport.send(7, vec![envelope(0, b"x")]);
        assert_eq!(node.transport.stats().envelopes_dropped, before + 1);
    }
}
