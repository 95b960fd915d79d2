//! packet_store: radio packets in a millrace topic, and an in-memory store
//! the host queries (latest packets per node, packet counts per hour) that
//! is ready in milliseconds after a restart and fills in old data behind.
//!
//! ```text
//! cargo run --release --example packet_store [-- WORK_DIR]
//! ```
//!
//! Records are JSON packets, `{"node":"n-17","ts":EPOCH_MS,"rssi":-87,
//! "snr":7.5,"payload":"..."}`, keyed by node and timestamped with `ts`.
//!
//! The store ([`PacketStore`]) is one thread that owns its maps; the host
//! talks to it through a bounded crossbeam channel of requests, each with
//! its own reply channel (no locks: the maps are never shared). It starts
//! like this, for every partition:
//!
//! 1. **Hot window**: `offset_for_timestamp(now - hot_window)` up to the
//!    high watermark. Then it is *ready* and answers queries.
//! 2. **Background fill**: the older offsets (log start up to the hot
//!    window's first offset), newest first, in chunks of offsets; after each
//!    fetch the store answers whatever queries are waiting. The runtime's
//!    own startup load makes old blocks readable in the background; a fetch
//!    of a block not loaded yet answers `FetchError::Loading`, and the
//!    store retries it a little later. Progress (records loaded / total)
//!    and a terminal state, `Complete` or `Failed { error }`, are in
//!    [`Status`].
//! 3. **Tail**: from the high watermark seen at step 1 on, so packets
//!    produced while it runs are seen too (polling fetch without waiting,
//!    between the other steps).
//!
//! The program generates 14 days of seeded packets for 50 nodes, produces
//! them, starts the store, queries it, waits for the fill, then restarts
//! the runtime and the store and shows queries answered while the fill
//! still runs.

use millrace::config::Config;
use millrace::health::LoadState;
use millrace::{FetchError, FetchOptions, FetchedRecord, Offset, PartitionId, Record, Runtime};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Milliseconds in an hour.
pub const HOUR_MS: i64 = 60 * 60 * 1000;
/// Milliseconds in a day.
pub const DAY_MS: i64 = 24 * HOUR_MS;

/// One radio packet, as stored in a record's value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Packet {
    /// The node that sent it, e.g. "n-17".
    pub node: String,
    /// When it was received, milliseconds since the Unix epoch.
    pub ts: i64,
    /// Received signal strength, dBm.
    pub rssi: i32,
    /// Signal-to-noise ratio, dB.
    pub snr: f64,
    /// The payload, hex.
    pub payload: String,
}

impl Packet {
    /// The record to produce: JSON value, keyed by node, timestamped `ts`.
    pub fn to_record(&self) -> Record {
        // Serializing a struct of strings and numbers cannot fail.
        let value = serde_json::to_vec(self).unwrap_or_default();
        Record::new(value)
            .with_key(self.node.clone())
            .with_timestamp_ms(self.ts)
    }
}

/// A packet with where it is stored.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredPacket {
    /// Its partition.
    pub partition: PartitionId,
    /// Its offset there.
    pub offset: Offset,
    /// The packet.
    pub packet: Packet,
}

/// The order of "latest": by packet time, ties by partition and offset.
type LatestKey = (i64, u32, u64);

fn latest_key(stored: &StoredPacket) -> LatestKey {
    (stored.packet.ts, stored.partition.0, stored.offset.0)
}

/// The start of the hour holding `ts`.
pub fn hour_of(ts: i64) -> i64 {
    // Saturating: no overflow for any timestamp a record may carry.
    ts.saturating_sub(ts.rem_euclid(HOUR_MS))
}

// ---- generator ------------------------------------------------------------

/// xorshift64*: small, seeded, and the same on every run.
pub struct XorShift(u64);

impl XorShift {
    /// A generator with this seed (0 is replaced by 1).
    pub fn new(seed: u64) -> XorShift {
        XorShift(seed.max(1))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Roughly uniform in `0..bound` (`bound > 0`).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound.max(1)
    }
}

/// `count` packets from `nodes` nodes with times spread evenly from
/// `from_ms` to `to_ms` in arrival order, each jittered by up to ±30 s (so
/// times go backwards now and then, as with real receivers), seeded.
pub fn generate(seed: u64, nodes: u32, count: usize, from_ms: i64, to_ms: i64) -> Vec<Packet> {
    let mut random = XorShift::new(seed);
    let span = (to_ms - from_ms).max(1);
    (0..count)
        .map(|index| {
            let even = from_ms + (span as i128 * index as i128 / count.max(1) as i128) as i64;
            let jitter = random.below(60_001) as i64 - 30_000;
            let payload_bytes = 8 + random.below(17) as usize;
            let payload: String = (0..payload_bytes)
                .map(|_| format!("{:02x}", random.below(256)))
                .collect();
            Packet {
                node: format!("n-{}", random.below(u64::from(nodes.max(1)))),
                ts: (even + jitter).clamp(from_ms, to_ms),
                rssi: -120 + random.below(81) as i32,
                snr: -20.0 + random.below(129) as f64 * 0.25,
                payload,
            }
        })
        .collect()
}

/// Produces `packets` (in batches of 1,000; each partition's share of a
/// batch is one atomic append) and returns where each went, in input order.
pub fn produce(
    runtime: &Runtime,
    topic: &str,
    packets: &[Packet],
) -> Result<Vec<StoredPacket>, Box<dyn std::error::Error>> {
    let producer = runtime.producer(topic)?;
    let mut stored = Vec::with_capacity(packets.len());
    for batch in packets.chunks(1_000) {
        let placed = producer.send_batch_blocking(batch.iter().map(Packet::to_record).collect())?;
        for (packet, place) in batch.iter().zip(placed) {
            stored.push(StoredPacket {
                partition: place.partition,
                offset: place.offset,
                packet: packet.clone(),
            });
        }
    }
    Ok(stored)
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}

/// The example's TOML with its data directory moved under `work`.
pub fn config(work: &Path) -> Result<Config, Box<dyn std::error::Error>> {
    let mut config = Config::from_toml_str(
        include_str!("packet_store.toml"),
        "examples/packet_store.toml",
    )?;
    config.data_dir = work.join("data");
    Ok(config)
}

// ---- the store ------------------------------------------------------------

/// How a [`PacketStore`] runs.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// The topic of packets.
    pub topic: String,
    /// Packets newer than now minus this load before the store is ready.
    pub hot_window: Duration,
    /// Packets kept per node for "latest" queries (a query asks for at most this many).
    pub latest_per_node: usize,
    /// Offsets per chunk of the background fill.
    pub fill_chunk_offsets: u64,
    /// Bytes per fetch.
    pub fetch_bytes: usize,
    /// Requests waiting before `request` calls wait (the channel's bound).
    pub request_queue: usize,
    /// How long the store waits for a request when it has nothing else to
    /// do (the tail's poll interval), and before retrying a block that is
    /// still loading.
    pub idle_poll: Duration,
}

impl StoreConfig {
    /// Defaults for `topic` with this hot window.
    pub fn new(topic: &str, hot_window: Duration) -> StoreConfig {
        StoreConfig {
            topic: topic.to_owned(),
            hot_window,
            latest_per_node: 100,
            fill_chunk_offsets: 2_000,
            fetch_bytes: 256 * 1024,
            request_queue: 64,
            idle_poll: Duration::from_millis(20),
        }
    }
}

/// Whether the store answers queries.
#[derive(Clone, Debug, PartialEq)]
pub enum Phase {
    /// Loading the hot window; queries answer [`StoreError::NotReady`].
    HotLoading,
    /// Serving queries (the background fill may still run).
    Ready,
    /// The hot load failed; queries answer [`StoreError::Failed`].
    Failed {
        /// Why.
        error: String,
    },
}

/// The background fill of the packets older than the hot window.
#[derive(Clone, Debug, PartialEq)]
pub enum FillState {
    /// It begins once the store is ready.
    NotStarted,
    /// Loading; `loaded` of `total` older offsets read so far.
    Running {
        /// Offsets read.
        loaded: u64,
        /// Offsets older than the hot window, over every partition.
        total: u64,
    },
    /// Terminal: every older offset was read.
    Complete {
        /// Offsets read.
        loaded: u64,
        /// From the store's start.
        after: Duration,
    },
    /// Terminal: the fill stopped; packets it had not read are missing.
    Failed {
        /// Why.
        error: String,
    },
}

impl FillState {
    /// Whether this is `Complete` or `Failed`.
    pub fn is_terminal(&self) -> bool {
        matches!(self, FillState::Complete { .. } | FillState::Failed { .. })
    }
}

/// What the store is doing, and how much it holds.
#[derive(Clone, Debug, PartialEq)]
pub struct Status {
    /// Whether it answers queries.
    pub phase: Phase,
    /// How long from `start` to ready.
    pub ready_after: Option<Duration>,
    /// Packets loaded by the hot load.
    pub hot_packets: u64,
    /// Packets in the store now (hot, filled and tailed).
    pub packets: u64,
    /// Records whose value is not a packet (skipped).
    pub malformed: u64,
    /// The background fill.
    pub fill: FillState,
    /// The last error of the tail, if any (it retries).
    pub tail_error: Option<String>,
}

/// Why a query was not answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// The hot window is still loading. Retryable.
    NotReady,
    /// The hot load failed; the store does not serve.
    Failed(String),
    /// The store's thread is gone.
    Stopped,
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::NotReady => write!(f, "the store is loading its hot window"),
            StoreError::Failed(error) => write!(f, "the store failed: {error}"),
            StoreError::Stopped => write!(f, "the store is stopped"),
        }
    }
}

impl std::error::Error for StoreError {}

/// Packets in one hour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HourCount {
    /// Start of the hour, milliseconds since the Unix epoch.
    pub hour_start_ms: i64,
    /// Packets with `ts` in it.
    pub packets: u64,
}

type Reply<T> = crossbeam_channel::Sender<Result<T, StoreError>>;

/// The store's requests: each carries its reply channel.
enum Request {
    Status(crossbeam_channel::Sender<Status>),
    Latest {
        node: String,
        limit: usize,
        reply: Reply<Vec<StoredPacket>>,
    },
    CountsPerHour {
        from_ms: i64,
        to_ms: i64,
        reply: Reply<Vec<HourCount>>,
    },
    Stop,
}

/// The host's handle of a running store. Dropping it stops the store.
pub struct PacketStore {
    requests: crossbeam_channel::Sender<Request>,
    thread: Option<JoinHandle<()>>,
}

impl PacketStore {
    /// Starts the store's thread: hot load, then serving, background fill
    /// and tail. Returns at once; see [`PacketStore::wait_ready`].
    pub fn start(runtime: Arc<Runtime>, config: StoreConfig) -> std::io::Result<PacketStore> {
        let (requests, inbox) = crossbeam_channel::bounded(config.request_queue.max(1));
        let started = Instant::now();
        let thread = std::thread::Builder::new()
            .name("packet-store".into())
            .spawn(move || StoreThread::new(runtime, config, inbox, started).run())?;
        Ok(PacketStore {
            requests,
            thread: Some(thread),
        })
    }

    fn ask<T>(
        &self,
        build: impl FnOnce(crossbeam_channel::Sender<T>) -> Request,
    ) -> Result<T, StoreError> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        self.requests
            .send(build(reply))
            .map_err(|_| StoreError::Stopped)?;
        answer.recv().map_err(|_| StoreError::Stopped)
    }

    /// The store's status (answered in every phase).
    pub fn status(&self) -> Result<Status, StoreError> {
        self.ask(Request::Status)
    }

    /// Up to `limit` latest packets of `node` (by `ts`), newest first.
    pub fn latest(&self, node: &str, limit: usize) -> Result<Vec<StoredPacket>, StoreError> {
        self.ask(|reply| Request::Latest {
            node: node.to_owned(),
            limit,
            reply,
        })?
    }

    /// Packets per hour for the hours overlapping `[from_ms, to_ms)`,
    /// oldest first; hours without packets are left out.
    pub fn counts_per_hour(&self, from_ms: i64, to_ms: i64) -> Result<Vec<HourCount>, StoreError> {
        self.ask(|reply| Request::CountsPerHour {
            from_ms,
            to_ms,
            reply,
        })?
    }

    /// Polls the status until `done` holds for it; the last status seen
    /// either way, `Err` with it after `deadline`.
    pub fn wait_for(
        &self,
        deadline: Duration,
        done: impl Fn(&Status) -> bool,
    ) -> Result<Status, Box<dyn std::error::Error>> {
        let started = Instant::now();
        loop {
            let status = self.status()?;
            if done(&status) {
                return Ok(status);
            }
            if let Phase::Failed { error } = &status.phase {
                return Err(format!("the store failed: {error}").into());
            }
            if started.elapsed() > deadline {
                return Err(format!("no progress within {deadline:?}: {status:?}").into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until the store serves queries.
    pub fn wait_ready(&self, deadline: Duration) -> Result<Status, Box<dyn std::error::Error>> {
        self.wait_for(deadline, |status| status.phase == Phase::Ready)
    }

    /// Stops the thread and waits for it.
    pub fn stop(mut self) {
        self.stop_thread();
    }

    fn stop_thread(&mut self) {
        // A full queue makes this wait until the store takes the request.
        let _ = self.requests.send(Request::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for PacketStore {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

/// The background fill of one partition: newest chunk first.
struct Fill {
    /// Where the log starts (offsets below are gone).
    log_start: Offset,
    /// Everything from here up to the hot window is loaded.
    loaded_from: Offset,
    /// The chunk being read: `[chunk_start, loaded_from)`, at `cursor`.
    chunk_start: Offset,
    cursor: Offset,
}

impl Fill {
    fn done(&self) -> bool {
        self.loaded_from <= self.log_start
    }
}

/// One partition's positions.
struct PartitionState {
    id: PartitionId,
    fill: Fill,
    /// The next offset to tail from.
    tail: Offset,
}

/// How the background fill stands overall.
enum FillProgress {
    Running,
    Complete(Duration),
    Failed(String),
}

/// The maps and positions, owned by the store's thread alone.
struct StoreThread {
    runtime: Arc<Runtime>,
    config: StoreConfig,
    inbox: crossbeam_channel::Receiver<Request>,
    started: Instant,
    phase: Phase,
    ready_after: Option<Duration>,
    latest: HashMap<String, BTreeMap<LatestKey, StoredPacket>>,
    per_hour: BTreeMap<i64, u64>,
    packets: u64,
    hot_packets: u64,
    malformed: u64,
    partitions: Vec<PartitionState>,
    fill_total: u64,
    fill_loaded: u64,
    fill: FillProgress,
    /// The partition the fill reads next (round robin).
    fill_next: usize,
    /// Not before this: a fetch answered `Loading`.
    fill_retry_at: Option<Instant>,
    /// Consecutive retryable failures of the fill.
    fill_retries: u32,
    /// When the runtime was last asked whether its startup load failed.
    load_checked: Option<Instant>,
    /// The tail polls again at this time (at once while records come).
    next_tail_at: Instant,
    tail_error: Option<String>,
    stop: bool,
}

/// Retryable fill errors (other than `Loading`) in a row before it fails.
const FILL_RETRIES_MAX: u32 = 100;
/// How often a fill waiting on `Loading` checks the runtime's load state.
const FILL_HEALTH_INTERVAL: Duration = Duration::from_millis(500);

impl StoreThread {
    fn new(
        runtime: Arc<Runtime>,
        config: StoreConfig,
        inbox: crossbeam_channel::Receiver<Request>,
        started: Instant,
    ) -> StoreThread {
        StoreThread {
            runtime,
            config,
            inbox,
            started,
            phase: Phase::HotLoading,
            ready_after: None,
            latest: HashMap::new(),
            per_hour: BTreeMap::new(),
            packets: 0,
            hot_packets: 0,
            malformed: 0,
            partitions: Vec::new(),
            fill_total: 0,
            fill_loaded: 0,
            fill: FillProgress::Running,
            fill_next: 0,
            fill_retry_at: None,
            fill_retries: 0,
            load_checked: None,
            next_tail_at: started,
            tail_error: None,
            stop: false,
        }
    }

    fn run(mut self) {
        if let Err(error) = self.hot_load() {
            self.fill = FillProgress::Failed(format!("the hot load failed: {error}"));
            self.phase = Phase::Failed { error };
        }
        if self.phase == Phase::Ready {
            tracing::info!(packets = self.hot_packets, "packet store ready");
        }
        while !self.stop {
            self.serve_pending();
            if self.stop || !matches!(self.phase, Phase::Ready) {
                if !self.stop {
                    self.pause(self.config.idle_poll);
                }
                continue;
            }
            let tailed = self.tail_step();
            let filled = self.fill_step();
            if !tailed && !filled {
                self.pause(self.config.idle_poll);
            }
        }
    }

    // ---- requests ----

    /// Answers every request already waiting.
    fn serve_pending(&mut self) {
        while !self.stop {
            match self.inbox.try_recv() {
                Ok(request) => self.answer(request),
                Err(crossbeam_channel::TryRecvError::Empty) => return,
                Err(crossbeam_channel::TryRecvError::Disconnected) => self.stop = true,
            }
        }
    }

    /// Waits up to `duration` for a request (answering what comes).
    fn pause(&mut self, duration: Duration) {
        match self.inbox.recv_timeout(duration) {
            Ok(request) => {
                self.answer(request);
                self.serve_pending();
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => self.stop = true,
        }
    }

    fn answer(&mut self, request: Request) {
        match request {
            Request::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Request::Latest { node, limit, reply } => {
                let _ = reply.send(self.serving().map(|()| self.latest_of(&node, limit)));
            }
            Request::CountsPerHour {
                from_ms,
                to_ms,
                reply,
            } => {
                let _ = reply.send(self.serving().map(|()| self.counts(from_ms, to_ms)));
            }
            Request::Stop => self.stop = true,
        }
    }

    fn serving(&self) -> Result<(), StoreError> {
        match &self.phase {
            Phase::Ready => Ok(()),
            Phase::HotLoading => Err(StoreError::NotReady),
            Phase::Failed { error } => Err(StoreError::Failed(error.clone())),
        }
    }

    fn status(&self) -> Status {
        let fill = match (&self.phase, &self.fill) {
            (Phase::Ready, FillProgress::Running) => FillState::Running {
                loaded: self.fill_loaded,
                total: self.fill_total,
            },
            (Phase::Ready, FillProgress::Complete(after)) => FillState::Complete {
                loaded: self.fill_loaded,
                after: *after,
            },
            (_, FillProgress::Failed(error)) => FillState::Failed {
                error: error.clone(),
            },
            _ => FillState::NotStarted,
        };
        Status {
            phase: self.phase.clone(),
            ready_after: self.ready_after,
            hot_packets: self.hot_packets,
            packets: self.packets,
            malformed: self.malformed,
            fill,
            tail_error: self.tail_error.clone(),
        }
    }

    fn latest_of(&self, node: &str, limit: usize) -> Vec<StoredPacket> {
        self.latest
            .get(node)
            .map(|kept| kept.values().rev().take(limit).cloned().collect())
            .unwrap_or_default()
    }

    fn counts(&self, from_ms: i64, to_ms: i64) -> Vec<HourCount> {
        if to_ms <= from_ms {
            return Vec::new();
        }
        self.per_hour
            .range(hour_of(from_ms)..to_ms)
            .map(|(hour_start_ms, packets)| HourCount {
                hour_start_ms: *hour_start_ms,
                packets: *packets,
            })
            .collect()
    }

    // ---- records ----

    /// Adds fetched records below `end` (those at or past it are someone
    /// else's range); returns how many packets were added.
    fn ingest(&mut self, partition: PartitionId, records: &[FetchedRecord], end: Offset) -> u64 {
        let mut added = 0;
        for record in records.iter().filter(|record| record.offset < end) {
            let Some(packet) = record
                .value
                .as_deref()
                .and_then(|value| serde_json::from_slice::<Packet>(value).ok())
            else {
                self.malformed += 1;
                continue;
            };
            let stored = StoredPacket {
                partition,
                offset: record.offset,
                packet,
            };
            *self.per_hour.entry(hour_of(stored.packet.ts)).or_insert(0) += 1;
            let kept = self.latest.entry(stored.packet.node.clone()).or_default();
            kept.insert(latest_key(&stored), stored);
            while kept.len() > self.config.latest_per_node {
                kept.pop_first();
            }
            added += 1;
        }
        self.packets += added;
        added
    }

    fn fetch_options(&self) -> FetchOptions {
        FetchOptions {
            max_bytes: self.config.fetch_bytes,
            max_wait: Duration::ZERO,
        }
    }

    // ---- hot load ----

    /// Finds where the hot window starts in every partition, reads from
    /// there to the high watermark, and sets up the fill and the tail.
    /// Requests are answered between fetches (queries get `NotReady`).
    fn hot_load(&mut self) -> Result<(), String> {
        let topic = self.config.topic.clone();
        let partitions = self
            .runtime
            .partition_count(&topic)
            .ok_or_else(|| format!("no topic {topic:?}"))?;
        let window_ms = i64::try_from(self.config.hot_window.as_millis()).unwrap_or(i64::MAX);
        let window_start_ms = now_ms().saturating_sub(window_ms);
        for index in 0..partitions {
            let id = PartitionId(index);
            let hot_from = self.retrying(id, |runtime| {
                runtime.offset_for_timestamp_blocking(&topic, id, window_start_ms)
            })?;
            let offsets = self.retrying(id, |runtime| runtime.offsets_blocking(&topic, id))?;
            let mut position = hot_from.max(offsets.log_start_offset);
            let mut stalled = 0;
            while position < offsets.high_watermark && !self.stop {
                let options = self.fetch_options();
                let fetched = self
                    .retrying(id, |runtime| {
                        runtime.fetch_blocking(&topic, id, position, options)
                    })
                    .map_err(|error| format!("hot load of partition {index}: {error}"))?;
                self.hot_packets += self.ingest(id, &fetched.records, offsets.high_watermark);
                if fetched.next_offset > position {
                    position = fetched.next_offset;
                    stalled = 0;
                } else if stalled < FILL_RETRIES_MAX {
                    stalled += 1;
                    self.pause(self.config.idle_poll);
                } else {
                    return Err(format!(
                        "hot load of partition {index}: no progress at offset {position}"
                    ));
                }
                self.serve_pending();
            }
            let log_start = offsets.log_start_offset;
            let loaded_from = hot_from.max(log_start);
            self.fill_total += loaded_from.0 - log_start.0;
            self.partitions.push(PartitionState {
                id,
                fill: Fill {
                    log_start,
                    loaded_from,
                    chunk_start: loaded_from,
                    cursor: loaded_from,
                },
                tail: offsets.high_watermark.max(hot_from),
            });
        }
        if self.stop {
            return Ok(());
        }
        self.phase = Phase::Ready;
        self.ready_after = Some(self.started.elapsed());
        self.maybe_complete_fill();
        Ok(())
    }

    /// Runs `call`, retrying (while answering requests) as long as it
    /// answers `Loading` (unless the runtime's own load of the partition
    /// failed: then it never will be loaded) or, a bounded number of times,
    /// `Unavailable`; other errors are returned.
    fn retrying<T>(
        &mut self,
        partition: PartitionId,
        mut call: impl FnMut(&Runtime) -> Result<T, FetchError>,
    ) -> Result<T, String> {
        let mut unavailable = 0;
        loop {
            match call(&self.runtime) {
                Ok(value) => return Ok(value),
                Err(FetchError::Loading { .. }) => {
                    if let Some(error) = self.runtime_load_failure(partition) {
                        return Err(error);
                    }
                }
                Err(FetchError::Unavailable) if unavailable < FILL_RETRIES_MAX => unavailable += 1,
                Err(error) => return Err(error.to_string()),
            }
            self.pause(self.config.idle_poll);
            if self.stop {
                return Err("stopped".to_owned());
            }
        }
    }

    // ---- tail ----

    /// One fetch per partition from its tail position, if the tail is due;
    /// whether any records came (then it is due again at once, else after
    /// `idle_poll`).
    fn tail_step(&mut self) -> bool {
        if Instant::now() < self.next_tail_at {
            return false;
        }
        let topic = self.config.topic.clone();
        let options = self.fetch_options();
        let mut any = false;
        for index in 0..self.partitions.len() {
            let (id, position) = (self.partitions[index].id, self.partitions[index].tail);
            match self.runtime.fetch_blocking(&topic, id, position, options) {
                Ok(fetched) => {
                    if !fetched.records.is_empty() {
                        any = true;
                        self.ingest(id, &fetched.records, Offset(u64::MAX));
                    }
                    self.partitions[index].tail = fetched.next_offset.max(position);
                }
                Err(error) => self.tail_error = Some(format!("partition {}: {error}", id.0)),
            }
        }
        if !any {
            self.next_tail_at = Instant::now() + self.config.idle_poll;
        }
        any
    }

    // ---- background fill ----

    /// One fetch of the fill (of the next partition with work); whether
    /// it read anything.
    fn fill_step(&mut self) -> bool {
        if !matches!(self.fill, FillProgress::Running) {
            return false;
        }
        if self
            .fill_retry_at
            .is_some_and(|retry_at| Instant::now() < retry_at)
        {
            return false;
        }
        self.fill_retry_at = None;
        let Some(index) = (0..self.partitions.len())
            .map(|step| (self.fill_next + step) % self.partitions.len())
            .find(|index| !self.partitions[*index].fill.done())
        else {
            self.maybe_complete_fill();
            return false;
        };
        self.fill_next = (index + 1) % self.partitions.len();
        let id = self.partitions[index].id;
        let chunk_offsets = self.config.fill_chunk_offsets.max(1);
        {
            let fill = &mut self.partitions[index].fill;
            if fill.cursor >= fill.loaded_from {
                // The next chunk, newest first.
                fill.chunk_start = Offset(
                    fill.loaded_from
                        .0
                        .saturating_sub(chunk_offsets)
                        .max(fill.log_start.0),
                );
                fill.cursor = fill.chunk_start;
            }
        }
        let (position, end) = {
            let fill = &self.partitions[index].fill;
            (fill.cursor, fill.loaded_from)
        };
        let topic = self.config.topic.clone();
        match self
            .runtime
            .fetch_blocking(&topic, id, position, self.fetch_options())
        {
            Ok(fetched) if fetched.next_offset > position => {
                self.fill_retries = 0;
                self.ingest(id, &fetched.records, end);
                let next = fetched.next_offset.min(end);
                self.fill_loaded += next.0 - position.0;
                let fill = &mut self.partitions[index].fill;
                fill.cursor = next;
                if next >= end {
                    fill.loaded_from = fill.chunk_start;
                }
                self.maybe_complete_fill();
                true
            }
            Ok(_) if self.fill_retries < FILL_RETRIES_MAX => {
                // No progress (nothing readable there yet): try again later.
                self.fill_retries += 1;
                self.fill_retry_at = Some(Instant::now() + self.config.idle_poll);
                false
            }
            Ok(_) => {
                self.fill = FillProgress::Failed(format!(
                    "partition {}: no progress at offset {position}",
                    id.0
                ));
                false
            }
            Err(FetchError::OffsetOutOfRange {
                log_start_offset, ..
            }) if log_start_offset > position => {
                // Retention removed the oldest data: what is gone is no
                // longer part of the fill (the rest of this chunk up to the
                // new log start, and every older chunk).
                let fill = &mut self.partitions[index].fill;
                let new_start = log_start_offset.min(end);
                let gone = (new_start.0 - position.0)
                    + fill.chunk_start.0.saturating_sub(fill.log_start.0);
                fill.log_start = log_start_offset;
                fill.cursor = new_start;
                if new_start >= end {
                    fill.loaded_from = fill.chunk_start;
                }
                self.fill_total = self.fill_total.saturating_sub(gone);
                self.maybe_complete_fill();
                true
            }
            Err(FetchError::Loading { .. }) => {
                // The runtime has not loaded that block yet.
                self.fill_retry_at = Some(Instant::now() + self.config.idle_poll);
                self.check_runtime_load(id);
                false
            }
            Err(error @ (FetchError::Unavailable | FetchError::Io(_)))
                if self.fill_retries < FILL_RETRIES_MAX =>
            {
                self.fill_retries += 1;
                self.fill_retry_at = Some(Instant::now() + self.config.idle_poll);
                tracing::warn!(partition = id.0, %error, "background fill retrying");
                false
            }
            Err(error) => {
                self.fill = FillProgress::Failed(format!("partition {}: {error}", id.0));
                false
            }
        }
    }

    /// A fill waiting on `Loading` fails if the runtime's own load failed
    /// (then the block never becomes readable).
    fn check_runtime_load(&mut self, id: PartitionId) {
        if let Some(error) = self.runtime_load_failure(id) {
            self.fill = FillProgress::Failed(error);
        }
    }

    /// The error of the runtime's startup load of partition `id`, if that
    /// load failed. Asks the runtime at most every [`FILL_HEALTH_INTERVAL`].
    fn runtime_load_failure(&mut self, id: PartitionId) -> Option<String> {
        if self
            .load_checked
            .is_some_and(|checked| checked.elapsed() < FILL_HEALTH_INTERVAL)
        {
            return None;
        }
        self.load_checked = Some(Instant::now());
        let health = self.runtime.health();
        health.partitions.iter().find_map(|partition| {
            let ours = partition.topic == self.config.topic && partition.partition == id.0;
            match &partition.load {
                LoadState::Failed { error } if ours => Some(format!(
                    "partition {}: the runtime's startup load failed: {error}",
                    id.0
                )),
                _ => None,
            }
        })
    }

    fn maybe_complete_fill(&mut self) {
        if matches!(self.fill, FillProgress::Running)
            && self
                .partitions
                .iter()
                .all(|partition| partition.fill.done())
        {
            self.fill = FillProgress::Complete(self.started.elapsed());
            tracing::info!(
                loaded = self.fill_loaded,
                "packet store background fill complete"
            );
        }
    }
}

// ---- the program ------------------------------------------------------------

/// Nodes of the generated data.
const NODES: u32 = 50;
/// Packets of the generated data.
const PACKETS: usize = 40_000;

fn print_queries(
    store: &PacketStore,
    node: &str,
    now: i64,
) -> Result<(), Box<dyn std::error::Error>> {
    let latest = store.latest(node, 3)?;
    println!("latest packets of {node}:");
    for stored in &latest {
        let packet = &stored.packet;
        println!(
            "  ts={} rssi={} snr={} payload={} (partition {} offset {})",
            packet.ts, packet.rssi, packet.snr, packet.payload, stored.partition, stored.offset
        );
    }
    let from = hour_of(now) - 5 * HOUR_MS;
    let counts = store.counts_per_hour(from, now)?;
    let line: Vec<String> = (0..6)
        .map(|hour| {
            let start = from + hour * HOUR_MS;
            let packets = counts
                .iter()
                .find(|count| count.hour_start_ms == start)
                .map_or(0, |count| count.packets);
            format!("{}h ago: {packets}", 5 - hour)
        })
        .collect();
    println!("packets per hour, last 6 hours: {}", line.join(", "));
    Ok(())
}

fn describe_fill(fill: &FillState) -> String {
    match fill {
        FillState::NotStarted => "not started".to_owned(),
        FillState::Running { loaded, total } => {
            format!("running, {loaded} of {total} older records")
        }
        FillState::Complete { loaded, after } => {
            format!(
                "complete, {loaded} older records after {} ms",
                after.as_millis()
            )
        }
        FillState::Failed { error } => format!("FAILED: {error}"),
    }
}

/// Starts the store and runs the queries; returns it running.
fn start_and_query(
    runtime: &Arc<Runtime>,
    hot_window: Duration,
) -> Result<PacketStore, Box<dyn std::error::Error>> {
    let store = PacketStore::start(Arc::clone(runtime), StoreConfig::new("packets", hot_window))?;
    let status = store.wait_ready(Duration::from_secs(30))?;
    println!(
        "ready after {} ms with {} hot packets (background fill: {})",
        status.ready_after.unwrap_or_default().as_millis(),
        status.hot_packets,
        describe_fill(&status.fill)
    );
    print_queries(&store, "n-17", now_ms())?;
    let status = store.status()?;
    println!(
        "queries answered; background fill: {}",
        describe_fill(&status.fill)
    );
    Ok(store)
}

fn wait_filled(store: &PacketStore, produced: usize) -> Result<(), Box<dyn std::error::Error>> {
    let status = store.wait_for(Duration::from_secs(120), |status| status.fill.is_terminal())?;
    println!(
        "background fill {}; the store holds {} packets ({} produced, {} malformed)",
        describe_fill(&status.fill),
        status.packets,
        produced,
        status.malformed
    );
    if let FillState::Failed { error } = status.fill {
        return Err(error.into());
    }
    if status.packets != produced as u64 {
        return Err(format!(
            "the store holds {} packets, {produced} were produced",
            status.packets
        )
        .into());
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter("warn")
        .init();
    let work = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/example-data/packet_store"));
    // A fresh run each time.
    let _ = std::fs::remove_dir_all(&work);
    let config = config(&work)?;
    let hot_window = config.startup.hot_window;

    let runtime = Arc::new(Runtime::start(config.clone())?);
    let now = now_ms();
    let packets = generate(7, NODES, PACKETS, now - 14 * DAY_MS, now - 1_000);
    let started = Instant::now();
    produce(&runtime, "packets", &packets)?;
    let hot = packets.iter().filter(|p| p.ts >= now - DAY_MS).count();
    println!(
        "produced {} packets of {NODES} nodes over 14 days in {} ms ({hot} in the last 24 h)",
        packets.len(),
        started.elapsed().as_millis()
    );

    let store = start_and_query(&runtime, hot_window)?;
    // Packets produced now are seen by the running store (its tail).
    let live: Vec<Packet> = generate(8, 1, 5, now_ms() - 1_000, now_ms())
        .into_iter()
        .map(|packet| Packet {
            node: "n-17".to_owned(),
            ..packet
        })
        .collect();
    let newest_live = live.iter().map(|packet| packet.ts).max().unwrap_or(0);
    produce(&runtime, "packets", &live)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let newest = store.latest("n-17", 1)?;
        if let Some(stored) = newest
            .first()
            .filter(|stored| stored.packet.ts == newest_live)
        {
            println!(
                "live packets seen: the newest of n-17 is at ts {} (partition {} offset {})",
                stored.packet.ts, stored.partition, stored.offset
            );
            break;
        }
        if Instant::now() > deadline {
            return Err("the store did not see the live packets within 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let produced = packets.len() + live.len();
    wait_filled(&store, produced)?;
    store.stop();

    // Restart: the runtime loads its hot window, then old blocks in the
    // background (paced); the store is ready long before its fill completes.
    let runtime = Arc::try_unwrap(runtime).map_err(|_| "the runtime is still shared")?;
    runtime.shutdown()?;
    println!("-- restart --");
    let started = Instant::now();
    let runtime = Arc::new(Runtime::start(config)?);
    println!("runtime started in {} ms", started.elapsed().as_millis());
    let store = start_and_query(&runtime, hot_window)?;
    wait_filled(&store, produced)?;
    store.stop();
    let runtime = Arc::try_unwrap(runtime).map_err(|_| "the runtime is still shared")?;
    runtime.shutdown()?;
    Ok(())
}
