//! [`Runtime`]: the embedding entry point, and the handles it gives out.
//!
//! `Runtime::start` runs the actix system on its own threads (one arbiter
//! per core), so it works the same from a host's tokio runtime and from
//! plain synchronous code. Every async method has a `_blocking` twin.
//! Handles are capabilities: a [`Producer`] can only produce, a
//! [`PartitionConsumer`] can only read.

use crate::actors::compactor::{
    AddCompactionTargets, CompactNow, CompactionTarget, Compactor, RemoveCompactionTargets,
    StopCompactor,
};
use crate::actors::deleter::DeleterHandle;
use crate::actors::group::{DescribeGroup, GroupCoordinator, StopCoordinator};
use crate::actors::loader::{BlockLoader, StopLoader};
use crate::actors::mailbox::Gated;
use crate::actors::partition::{
    ChangeMembership, Describe, Drain, Fetch, FetchReply, GetHealth, PartitionActor,
    PartitionSettings, Produce, ReplicaHandle, ReplicaWaiter, Retire, FETCH_WAIT_MAX,
    MAILBOX_CAPACITY,
};
use crate::actors::pipeline::{PipelineSpec, PipelineSupervisor, Scale, StopPipeline};
use crate::actors::raft_node::{
    AnnounceKafka, AttachTransport, LeaderDirectory, PeerBrokers, PeerFrames, RaftNode, Register,
    Vouches,
};
use crate::config::{Config, TopicConfig};
use crate::error::{FetchError, ProduceError, ShutdownError, StartError};
use crate::health::{Health, LoadState, PartitionHealth, Phase};
use crate::http::{HttpServer, Probe};
use crate::kafka::handlers::KafkaContext;
use crate::kafka::server::KafkaServer;
use crate::metrics::{Metrics, MetricsSnapshot, PartitionGauges, PipelineMetrics};
use crate::offsets::{OffsetError, OffsetStore};
use crate::partitioner::partition_for_key;
use crate::pipeline::config::PipelineConfig;
use crate::pipeline::registry::Registry;
use crate::replication::replica::{ReplicaConfig, ReplicaCore};
use crate::replication::transport::{GroupId, Transport, TransportConfig, DEFAULT_MAX_FRAME_BYTES};
use crate::replication::MembershipChange;
use crate::storage::{LogOptions, PartitionLog, RecoveryReport};
use crate::types::{FetchedRecord, Offset, PartitionId, Record};
use actix::{Actor, Addr, Arbiter, ArbiterHandle};
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::oneshot;

pub use crate::actors::compactor::{CompactionSummary, PartitionCompaction};
pub use crate::actors::group::GroupDescription;
pub use crate::actors::partition::{AppendAck, PartitionOffsets};

/// Runs `future` to completion on the calling thread.
///
/// Every blocking call of the crate goes through here, because some run on
/// actor threads (a sink stage writing to a topic, committing through the
/// coordinator), that is inside a tokio task. There, tokio's cooperative
/// budget would eventually make a tokio channel answer `Pending` and *defer*
/// its wake-up to the tokio scheduler, which cannot run while this thread
/// blocks: a deadlock. `unconstrained` opts the future out of the budget.
pub(crate) fn block_on<F: std::future::Future>(future: F) -> F::Output {
    futures_executor::block_on(tokio::task::coop::unconstrained(future))
}

/// Name of the lock file in the data directory.
pub const LOCK_FILE_NAME: &str = "LOCK";

/// Where a produced record went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordMetadata {
    /// Partition.
    pub partition: PartitionId,
    /// Offset in that partition.
    pub offset: Offset,
}

/// Options of one fetch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FetchOptions {
    /// Stop adding batches past this many bytes (at least one whole batch is returned).
    pub max_bytes: usize,
    /// Wait this long for data when there is none past the offset (at most 60 s).
    pub max_wait: Duration,
}

/// Default `FetchOptions::max_bytes`. Measured: one consumer reads about
/// 12M records/s with 256 KiB fetches and under 5M/s with 1 MiB or more,
/// because a result vector of that size is mmapped, faulted in and unmapped
/// by the allocator on every fetch. Per-fetch overhead is negligible at
/// 256 KiB (about 2,000 records of 100 bytes).
pub const FETCH_MAX_BYTES_DEFAULT: usize = 256 * 1024;

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            max_bytes: FETCH_MAX_BYTES_DEFAULT,
            max_wait: Duration::from_millis(500),
        }
    }
}

/// Records from one fetch.
#[derive(Clone, Debug, Default)]
pub struct FetchResult {
    /// Records in offset order, all below `high_watermark`.
    pub records: Vec<FetchedRecord>,
    /// Where the next fetch should start.
    pub next_offset: Offset,
    /// The partition's high watermark when the fetch was planned.
    pub high_watermark: Offset,
    /// The first readable offset when the fetch was planned.
    pub log_start_offset: Offset,
}

/// One topic's partition actors.
pub(crate) struct TopicHandle {
    config: TopicConfig,
    partitions: Vec<Gated<PartitionActor>>,
    /// Its partitions' gauges, by partition id.
    gauges: Vec<Arc<PartitionGauges>>,
    /// Created over the Kafka protocol (and kept in the `runtime_topics`
    /// tree), not declared in the config file: only these can be deleted.
    runtime_created: bool,
    round_robin: AtomicU32,
}

/// The topics, published as one immutable snapshot: readers `load` it
/// without a lock (`ArcSwap`); CreateTopics and DeleteTopics build a new
/// table and `store` it (one writer at a time, under `TopicAdmin`'s lock).
/// A reader that loaded the old table keeps it whole until it lets go.
#[derive(Clone, Default)]
pub(crate) struct TopicTable {
    topics: HashMap<String, Arc<TopicHandle>>,
    /// Topic names: the config's in file order, then those created at run time.
    order: Vec<String>,
}

impl TopicTable {
    /// A topic's handle.
    pub(crate) fn get(&self, name: &str) -> Option<&Arc<TopicHandle>> {
        self.topics.get(name)
    }

    /// Topic names in order.
    pub(crate) fn names(&self) -> &[String] {
        &self.order
    }

    fn handles(&self) -> impl Iterator<Item = &Arc<TopicHandle>> + '_ {
        self.order.iter().map(move |name| &self.topics[name])
    }

    fn gauges(&self) -> Vec<Arc<PartitionGauges>> {
        self.handles()
            .flat_map(|handle| handle.gauges.iter().cloned())
            .collect()
    }

    fn with(&self, handle: Arc<TopicHandle>) -> TopicTable {
        let mut table = self.clone();
        table.order.push(handle.config.name.clone());
        table.topics.insert(handle.config.name.clone(), handle);
        table
    }

    fn without(&self, name: &str) -> TopicTable {
        let mut table = self.clone();
        table.order.retain(|candidate| candidate != name);
        table.topics.remove(name);
        table
    }
}

impl TopicHandle {
    /// The topic's settings.
    pub(crate) fn config(&self) -> &TopicConfig {
        &self.config
    }

    /// Whether it was created over the Kafka protocol (not declared in the config file).
    pub(crate) fn runtime_created(&self) -> bool {
        self.runtime_created
    }

    /// Its partitions' actors, by partition id.
    pub(crate) fn partitions(&self) -> &[Gated<PartitionActor>] {
        &self.partitions
    }

    /// Replicated partitions: the leader this node knows (node id) and the
    /// term, `None` for a partition of one or while there is no leader.
    pub(crate) fn raft_leader(&self, partition: usize) -> Option<(u64, u64)> {
        let gauges = &self.gauges.get(partition)?.raft;
        let leader = gauges.leader.load(Relaxed);
        (leader != 0).then(|| (leader, gauges.term.load(Relaxed)))
    }

    fn partition(&self, partition: PartitionId) -> Option<&Gated<PartitionActor>> {
        self.partitions.get(partition.0 as usize)
    }

    fn partition_count(&self) -> u32 {
        self.partitions.len() as u32
    }

    fn next_round_robin(&self) -> PartitionId {
        PartitionId(self.round_robin.fetch_add(1, Relaxed) % self.partition_count())
    }
}

/// A running millrace: its actors, threads and data directory.
///
/// Dropping it without [`Runtime::shutdown`] stops everything too; nothing
/// acknowledged is lost either way, because acknowledgement waits for fsync.
pub struct Runtime {
    inner: Option<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    system: actix::System,
    system_thread: Option<JoinHandle<()>>,
    arbiters: Vec<Arbiter>,
    loader: Addr<BlockLoader>,
    loader_arbiter: Option<Arbiter>,
    compactor: Addr<Compactor>,
    compactor_arbiter: Option<Arbiter>,
    coordinator: Addr<GroupCoordinator>,
    coordinator_arbiter: Option<Arbiter>,
    /// Cluster nodes: the Raft router (it owns the peer transport).
    raft_node_arbiter: Option<Arbiter>,
    raft_node: Option<Addr<RaftNode>>,
    pipelines: Vec<PipelineHandle>,
    admin: Arc<TopicAdmin>,
    deleter: DeleterHandle,
    http: Option<HttpServer>,
    kafka: Option<KafkaServer>,
    offsets: OffsetStore,
    _metadata: sled::Db,
    _lock: File,
}

/// A running pipeline: its supervisor, alone on its arbiter.
struct PipelineHandle {
    name: String,
    supervisor: Addr<PipelineSupervisor>,
    arbiter: Option<Arbiter>,
}

/// What handles, health and the HTTP listener read: immutable after start
/// except the topic table (swapped whole, see [`TopicTable`]), the
/// `draining` flag and the atomics inside metrics.
pub(crate) struct Shared {
    config: Config,
    topics: ArcSwap<TopicTable>,
    /// Cluster nodes: the other nodes' Kafka addresses, as they announce
    /// them (written by the RaftNode only).
    peer_brokers: PeerBrokers,
    /// Cluster nodes: when each peer was last heard (the RaftNode's).
    vouches: Vouches,
    metrics: Arc<Metrics>,
    pipeline_metrics: Vec<Arc<PipelineMetrics>>,
    draining: AtomicBool,
}

/// What the actor system thread hands back once everything is started.
struct Started {
    system: actix::System,
    arbiters: Vec<Arbiter>,
    loader: Addr<BlockLoader>,
    loader_arbiter: Arbiter,
    compactor: Addr<Compactor>,
    compactor_arbiter: Arbiter,
    coordinator: Addr<GroupCoordinator>,
    coordinator_arbiter: Arbiter,
    addresses: Vec<(String, Addr<PartitionActor>)>,
    raft_node: Option<(Addr<RaftNode>, Arbiter)>,
}

/// How long `health()` waits for each partition to answer.
const HEALTH_ANSWER_WAIT: Duration = Duration::from_secs(1);

impl Probe for Shared {
    fn health(&self) -> Health {
        Shared::health(self)
    }

    fn metrics_text(&self) -> String {
        self.metrics().to_prometheus()
    }
}

impl Shared {
    /// A topic's handle.
    pub(crate) fn topic(&self, name: &str) -> Option<Arc<TopicHandle>> {
        self.topics.load().get(name).cloned()
    }

    /// Topic names: the config's in file order, then those created at run time.
    pub(crate) fn topic_names(&self) -> Vec<String> {
        self.topics.load().order.clone()
    }

    /// The current topic table, whole (a consistent snapshot).
    /// The config the runtime started with.
    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    /// The Kafka consumer-group coordinator of a cluster: the lowest node
    /// id among this node and the peers heard from within `fresh` that
    /// announced a Kafka listener, so that every node names the same one
    /// while they see the same nodes alive. `None` outside a cluster.
    pub(crate) fn group_coordinator(
        &self,
        fresh: Duration,
    ) -> Option<(u64, Option<(String, u16)>)> {
        let node = self.config.node.as_ref()?;
        let brokers = self.peer_brokers.load();
        let vouches = self.vouches.load();
        let peer = brokers
            .iter()
            .filter(|(id, _)| vouches.get(id).is_some_and(|(at, _)| at.elapsed() < fresh))
            .map(|(id, address)| (*id, address.clone()))
            .min_by_key(|(id, _)| *id);
        match peer {
            Some((id, address)) if id < node.id => Some((id, Some(address))),
            _ => Some((node.id, None)),
        }
    }

    /// Cluster nodes: the other nodes' Kafka addresses, by node id.
    pub(crate) fn peer_brokers(&self) -> Arc<std::collections::BTreeMap<u64, (String, u16)>> {
        self.peer_brokers.load_full()
    }

    pub(crate) fn topic_table(&self) -> Arc<TopicTable> {
        self.topics.load_full()
    }

    fn partitions(&self) -> Vec<(String, PartitionId, Addr<PartitionActor>)> {
        let table = self.topics.load();
        table
            .handles()
            .flat_map(|handle| {
                handle
                    .partitions
                    .iter()
                    .enumerate()
                    .map(move |(index, gated)| {
                        (
                            handle.config.name.clone(),
                            PartitionId(index as u32),
                            gated.address().clone(),
                        )
                    })
            })
            .collect()
    }

    pub(crate) fn health(&self) -> Health {
        let mut asked = Vec::new();
        for (topic, partition, address) in self.partitions() {
            let (reply, answer) = crossbeam_channel::bounded(1);
            let sent = address.try_send(GetHealth { reply }).is_ok();
            asked.push((topic, partition, sent.then_some(answer)));
        }
        let deadline = std::time::Instant::now() + HEALTH_ANSWER_WAIT;
        let partitions: Vec<PartitionHealth> = asked
            .into_iter()
            .map(|(topic, partition, answer)| {
                answer
                    .and_then(|answer| answer.recv_deadline(deadline).ok())
                    .unwrap_or_else(|| PartitionHealth {
                        topic: topic.clone(),
                        partition: partition.0,
                        phase: Phase::Unresponsive,
                        load: LoadState::WaitingForHotLoad,
                        degraded: vec!["did not answer in time".to_owned()],
                        restarts: 0,
                        log_start_offset: 0,
                        log_end_offset: 0,
                        high_watermark: 0,
                        replica: None,
                    })
            })
            .collect();
        let draining = self.draining.load(Relaxed);
        let ready = !draining
            && partitions
                .iter()
                .all(|partition| partition.phase == Phase::Serving);
        let pipelines = self
            .metrics()
            .pipelines
            .into_iter()
            .map(|pipeline| crate::health::PipelineHealth {
                lag: pipeline
                    .partitions
                    .iter()
                    .map(|partition| partition.lag)
                    .sum(),
                name: pipeline.pipeline,
                failed: pipeline.failed,
                dead_letters: pipeline.dead_letters_total,
            })
            .collect();
        Health {
            ready,
            draining,
            partitions,
            pipelines,
        }
    }

    fn ready(&self) -> bool {
        !self.draining.load(Relaxed)
            && self
                .topics
                .load()
                .handles()
                .flat_map(|handle| handle.gauges.iter())
                .all(|gauges| gauges.serving.load(Relaxed) == 1)
    }

    fn metrics(&self) -> MetricsSnapshot {
        let gauges = self.topics.load().gauges();
        self.metrics.snapshot(&gauges, &self.pipeline_metrics)
    }
}

impl Runtime {
    /// Reads `path` and starts a runtime for it.
    pub fn start_from_file(path: &Path) -> Result<Runtime, StartError> {
        Runtime::start(Config::from_file(path)?)
    }

    /// Validates `config`, locks its data directory, recovers every
    /// partition and starts the actors and the pipelines. Blocks until they
    /// serve.
    pub fn start(config: Config) -> Result<Runtime, StartError> {
        Runtime::start_with(config, Registry::new())
    }

    /// [`Runtime::start`] with custom operators and sinks that the config's
    /// pipelines use by name.
    pub fn start_with(config: Config, registry: Registry) -> Result<Runtime, StartError> {
        Runtime::start_inner(config, Some(registry))
    }

    /// Starts the topics (dead-letter topics included) but none of the
    /// pipelines: for tools that read or write topics while the pipelines
    /// are not to run, such as `millrace consume` and `millrace dlq`.
    pub fn start_paused(config: Config) -> Result<Runtime, StartError> {
        Runtime::start_inner(config, None)
    }

    fn start_inner(config: Config, registry: Option<Registry>) -> Result<Runtime, StartError> {
        config.validate()?;
        let config = with_dead_letter_topics(config);
        create_directory(&config.data_dir)?;
        let lock = lock_data_directory(&config.data_dir)?;
        let metadata = open_metadata(&config)?;
        let offsets = OffsetStore::open(&metadata).map_err(|error| StartError::Metadata {
            path: config.data_dir.join("meta"),
            message: error.to_string(),
        })?;
        let metrics = Arc::new(Metrics::default());
        // The config's topics, then those created at run time (kept in the
        // metadata store); a name the config declares wins.
        let stored_topics = load_runtime_topics(&metadata, &config)?;
        let mut all_topics: Vec<TopicConfig> = config.topics.clone();
        all_topics.extend(stored_topics.iter().cloned());
        let logs = open_partition_logs(&config, &all_topics, &metrics)?;
        let deleter = DeleterHandle::spawn(metrics.clone()).map_err(|source| StartError::Io {
            operation: "spawn deletion thread",
            path: config.data_dir.clone(),
            source,
        })?;

        let mut gauges = Vec::new();
        let mut actor_specs = Vec::new();
        for (settings, mut log) in logs {
            let partition_gauges = PartitionGauges::new(&settings.topic.name, settings.partition.0);
            gauges.push(partition_gauges.clone());
            let replica = open_replica(&config, &settings, &mut log)?;
            actor_specs.push((settings, log, partition_gauges, replica));
        }
        let cluster = config.node.clone();
        let peer_brokers = PeerBrokers::default();
        let raft_node_brokers = peer_brokers.clone();
        let vouches = Vouches::default();
        let shared_vouches = vouches.clone();
        let directory = LeaderDirectory::default();
        let raft_node_directory = directory.clone();
        let arbiter_count = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, actor_specs.len().max(1));
        let started_partitions = actor_specs.len();
        let deleter_sender = deleter.sender();
        let admin_deleter = deleter.sender();
        let actor_metrics = metrics.clone();
        let load_rate = config.startup.background_load_bytes_per_second;
        let compactor_config = config.compactor.clone();
        let compactor_metrics = metrics.clone();
        let coordinator_store = offsets.clone();
        let (started_sender, started_receiver) = std::sync::mpsc::channel();
        let system_thread = std::thread::Builder::new()
            .name("millrace-system".into())
            .spawn(move || {
                let system = actix::System::new();
                system.block_on(async move {
                    // The loader gets its own arbiter so verifying old blocks
                    // never stalls a partition's thread.
                    let loader_arbiter = Arbiter::new();
                    let loader_metrics = actor_metrics.clone();
                    let loader =
                        BlockLoader::start_in_arbiter(&loader_arbiter.handle(), move |_| {
                            BlockLoader::new(load_rate, loader_metrics)
                        });
                    let arbiters: Vec<Arbiter> =
                        (0..arbiter_count).map(|_| Arbiter::new()).collect();
                    // The node's Raft router, alone on its thread (cluster only).
                    let raft_node_arbiter = cluster.as_ref().map(|_| Arbiter::new());
                    let raft_node = raft_node_arbiter.as_ref().map(|arbiter| {
                        let metrics = actor_metrics.clone();
                        let brokers = raft_node_brokers.clone();
                        let vouches = vouches.clone();
                        // Often enough that a follower's view of its
                        // leader's node is fresh well within an election
                        // timeout: every heartbeat interval.
                        let announce =
                            cluster.as_ref().map_or(Duration::from_millis(100), |node| {
                                node.tick * node.heartbeat_ticks as u32
                            });
                        let directory = raft_node_directory.clone();
                        RaftNode::start_in_arbiter(&arbiter.handle(), move |_| {
                            RaftNode::new(metrics, brokers, vouches, announce, directory)
                        })
                    });
                    let tick = cluster
                        .as_ref()
                        .map_or(Duration::from_millis(50), |node| node.tick);
                    let mut addresses: Vec<(String, PartitionSettings, Addr<PartitionActor>)> =
                        Vec::new();
                    for (index, (settings, log, partition_gauges, replica)) in
                        actor_specs.into_iter().enumerate()
                    {
                        let replica = replica.and_then(|(core, config, group)| {
                            let raft_node = raft_node.as_ref()?;
                            Some(ReplicaHandle {
                                core,
                                config,
                                group,
                                router: raft_node.clone().recipient(),
                                forwarder: raft_node.clone().recipient(),
                                quiescer: raft_node.clone().recipient(),
                                peers: raft_node.clone().recipient(),
                                leadership: raft_node.clone().recipient(),
                                directory: raft_node_directory.clone(),
                                reported_leading: None,
                                vouches: vouches.clone(),
                                quiet: false,
                                last_message: std::time::Instant::now(),
                                tick,
                            })
                        });
                        let group = replica.as_ref().map(|replica| replica.group.clone());
                        let deleter = deleter_sender.clone();
                        let metrics = actor_metrics.clone();
                        let loader = loader.clone();
                        let name = settings.topic.name.clone();
                        let kept_settings = settings.clone();
                        // Supervised: a partition that stops after a caught
                        // panic is restarted in place and reopens from disk.
                        let address = actix::Supervisor::start_in_arbiter(
                            &arbiters[index % arbiter_count].handle(),
                            move |_| {
                                PartitionActor::new(
                                    settings,
                                    log,
                                    deleter,
                                    loader,
                                    metrics,
                                    partition_gauges,
                                    replica,
                                )
                            },
                        );
                        if let (Some(group), Some(raft_node)) = (group, &raft_node) {
                            raft_node.do_send(Register {
                                group,
                                recipient: address.clone().recipient(),
                            });
                        }
                        addresses.push((name, kept_settings, address));
                    }
                    // The compactor gets its own arbiter too: building new
                    // blocks never runs on a partition's thread.
                    let targets: Vec<CompactionTarget> = addresses
                        .iter()
                        .filter(|(_, settings, _)| settings.topic.cleanup.compacts())
                        .map(|(_, settings, address)| CompactionTarget {
                            topic: settings.topic.clone(),
                            partition: settings.partition,
                            address: address.clone(),
                        })
                        .collect();
                    let compactor_arbiter = Arbiter::new();
                    let compactor =
                        Compactor::start_in_arbiter(&compactor_arbiter.handle(), move |_| {
                            Compactor::new(targets, compactor_config, compactor_metrics)
                        });
                    let addresses: Vec<(String, Addr<PartitionActor>)> = addresses
                        .into_iter()
                        .map(|(name, _, address)| (name, address))
                        .collect();
                    // Consumer groups and their offsets: one actor, alone on its thread.
                    let coordinator_arbiter = Arbiter::new();
                    let coordinator = GroupCoordinator::start_in_arbiter(
                        &coordinator_arbiter.handle(),
                        move |_| GroupCoordinator::new(coordinator_store),
                    );
                    let _ = started_sender.send(Started {
                        system: actix::System::current(),
                        arbiters,
                        loader,
                        loader_arbiter,
                        compactor,
                        compactor_arbiter,
                        coordinator,
                        coordinator_arbiter,
                        addresses,
                        raft_node: raft_node.zip(raft_node_arbiter),
                    });
                });
                system.run().ok();
            })
            .map_err(|source| StartError::Io {
                operation: "spawn actor system thread",
                path: config.data_dir.clone(),
                source,
            })?;
        let Started {
            system,
            arbiters,
            loader,
            loader_arbiter,
            compactor,
            compactor_arbiter,
            coordinator,
            coordinator_arbiter,
            addresses,
            raft_node,
        } = started_receiver.recv().map_err(|_| StartError::Io {
            operation: "start actor system",
            path: config.data_dir.clone(),
            source: std::io::Error::other("actor system thread exited during start"),
        })?;

        let mut table = TopicTable::default();
        for (index, topic) in all_topics.iter().enumerate() {
            let partitions = addresses
                .iter()
                .filter(|(name, _)| *name == topic.name)
                .map(|(_, address)| Gated::new(address.clone(), MAILBOX_CAPACITY))
                .collect();
            let topic_gauges = gauges
                .iter()
                .filter(|partition_gauges| partition_gauges.topic == topic.name)
                .cloned()
                .collect();
            table = table.with(Arc::new(TopicHandle {
                config: topic.clone(),
                partitions,
                gauges: topic_gauges,
                runtime_created: index >= config.topics.len(),
                round_robin: AtomicU32::new(0),
            }));
        }
        tracing::info!(data_dir = %config.data_dir.display(), topics = all_topics.len(), runtime_created = stored_topics.len(), partitions = gauges.len(), "millrace started");
        let topics = table;
        let http_address = config.http.as_ref().map(|http| http.listen);
        let pipeline_metrics: Vec<Arc<PipelineMetrics>> = config
            .pipelines
            .iter()
            .map(|pipeline| {
                let partitions = topics
                    .get(&pipeline.source.topic)
                    .map_or(0, |handle| handle.partition_count());
                PipelineMetrics::new(
                    &pipeline.name,
                    &pipeline.source.group,
                    &pipeline.source.topic,
                    partitions,
                )
            })
            .collect();
        let shared = Arc::new(Shared {
            config,
            topics: ArcSwap::from_pointee(topics),
            peer_brokers,
            vouches: shared_vouches,
            metrics,
            pipeline_metrics,
            draining: AtomicBool::new(false),
        });
        let admin = Arc::new(TopicAdmin {
            shared: Arc::clone(&shared),
            arbiters: arbiters.iter().map(Arbiter::handle).collect(),
            next_arbiter: AtomicUsize::new(started_partitions),
            loader: loader.clone(),
            compactor: compactor.clone(),
            deleter: admin_deleter,
            metadata: metadata.clone(),
            closed: Mutex::new(false),
        });
        let mut runtime = Runtime {
            inner: Some(Inner {
                shared: Arc::clone(&shared),
                system,
                system_thread: Some(system_thread),
                arbiters,
                loader,
                loader_arbiter: Some(loader_arbiter),
                compactor,
                compactor_arbiter: Some(compactor_arbiter),
                coordinator,
                coordinator_arbiter: Some(coordinator_arbiter),
                raft_node_arbiter: None,
                raft_node: None,
                pipelines: Vec::new(),
                admin,
                deleter,
                http: None,
                kafka: None,
                offsets,
                _metadata: metadata,
                _lock: lock,
            }),
        };
        if let Some((raft_node, arbiter)) = raft_node {
            if let Some(inner) = runtime.inner.as_mut() {
                inner.raft_node_arbiter = Some(arbiter);
                inner.raft_node = Some(raft_node.clone());
            }
            // On failure, dropping `runtime` stops what was started.
            start_transport(&shared.config, raft_node)?;
        }
        if let Some(registry) = registry {
            // On failure, dropping `runtime` stops what was started.
            runtime.start_pipelines(&registry)?;
        }
        if let Some(address) = http_address {
            // On failure, dropping `runtime` stops what was started.
            let server = HttpServer::start(address, shared)
                .map_err(|source| StartError::Listen { address, source })?;
            tracing::info!(address = %server.local_address(), "http listener serving /health, /ready, /metrics");
            if let Some(inner) = runtime.inner.as_mut() {
                inner.http = Some(server);
            }
        }
        runtime.start_kafka()?;
        Ok(runtime)
    }

    fn inner(&self) -> &Inner {
        self.inner.as_ref().expect("runtime used after shutdown")
    }

    /// Starts the `[kafka]` listener, if the config has one.
    fn start_kafka(&mut self) -> Result<(), StartError> {
        let inner = self.inner.as_mut().expect("runtime used after shutdown");
        let Some(kafka) = inner.shared.config.kafka.clone() else {
            return Ok(());
        };
        // A cluster's nodes answer with one cluster id and their own node ids.
        let cluster_id = match &inner.shared.config.node {
            Some(node) => node.cluster_id.clone(),
            None => cluster_id(&inner._metadata).map_err(|message| StartError::Metadata {
                path: inner.shared.config.data_dir.join("meta"),
                message,
            })?,
        };
        let node_id = inner
            .shared
            .config
            .node
            .as_ref()
            .map_or(0, |node| node.id as i32);
        let context = KafkaContext {
            shared: Arc::clone(&inner.shared),
            coordinator: inner.coordinator.clone(),
            listen: kafka.listen,
            advertised: kafka.advertised.clone(),
            max_connections: kafka.max_connections,
            request_max_bytes: kafka.request_max_bytes,
            node_id,
            cluster_id,
            metadata: inner._metadata.clone(),
            counters: Arc::clone(&inner.shared.metrics.kafka),
            admin: Arc::clone(&inner.admin),
            allow_topic_management: kafka.allow_topic_management,
        };
        let server = KafkaServer::start(context).map_err(|source| StartError::Listen {
            address: kafka.listen,
            source,
        })?;
        tracing::info!(address = %server.local_address(), "kafka listener serving the Kafka protocol");
        if let Some(raft_node) = &inner.raft_node {
            let bound = server.local_address();
            raft_node.do_send(AnnounceKafka {
                address: kafka
                    .advertised
                    .clone()
                    .unwrap_or_else(|| (bound.ip().to_string(), bound.port())),
            });
        }
        inner.kafka = Some(server);
        Ok(())
    }

    /// The address of the `[kafka]` listener, if it is on (useful with port 0).
    pub fn kafka_address(&self) -> Option<std::net::SocketAddr> {
        self.inner().kafka.as_ref().map(KafkaServer::local_address)
    }

    /// Builds every pipeline (all of them, so a bad one starts none), then
    /// starts each supervisor on an arbiter of its own.
    fn start_pipelines(&mut self, registry: &Registry) -> Result<(), StartError> {
        let inner = self.inner.as_ref().expect("runtime used after shutdown");
        let shared = &inner.shared;
        let table = shared.topic_table();
        let mut built = Vec::new();
        for (index, pipeline) in shared.config.pipelines.iter().enumerate() {
            let spec_error = |message: String| StartError::Pipeline {
                pipeline: pipeline.name.clone(),
                stage: "source".to_owned(),
                message,
            };
            let source = table
                .get(&pipeline.source.topic)
                .ok_or_else(|| spec_error(format!("no topic {}", pipeline.source.topic)))?;
            let producer = |topic: &str| {
                table.get(topic).map(|handle| Producer {
                    topic: Arc::clone(handle),
                })
            };
            let (operators, stateful) = registry.operator_builders(pipeline)?;
            let sink = registry.build_sink(pipeline, |topic| {
                producer(topic).map(|producer| {
                    Box::new(crate::pipeline::sink::TopicSink::new(producer))
                        as Box<dyn crate::pipeline::Sink>
                })
            })?;
            let dlq = producer(&pipeline.dlq_topic())
                .ok_or_else(|| spec_error(format!("no topic {}", pipeline.dlq_topic())))?;
            let side_outputs = side_output_topics(pipeline)
                .filter_map(|topic| producer(topic).map(|producer| (topic.to_owned(), producer)))
                .collect();
            let state = if stateful {
                let tree = inner
                    ._metadata
                    .open_tree(format!("pipeline_state/{}", pipeline.name))
                    .map_err(|error| spec_error(format!("opening its state: {error}")))?;
                Some(tree)
            } else {
                None
            };
            let spec = PipelineSpec {
                config: pipeline.clone(),
                source_topic: Arc::from(pipeline.source.topic.as_str()),
                source_partitions: source.partitions.clone(),
                operators,
                dlq,
                side_outputs,
                state,
                coordinator: inner.coordinator.clone(),
                offsets: inner.offsets.clone(),
                metrics: Arc::clone(&shared.pipeline_metrics[index]),
            };
            built.push((Arc::new(spec), sink));
        }
        let system_arbiter = inner.system.arbiter().clone();
        let mut handles = Vec::new();
        for (spec, sink) in built {
            let name = spec.config.name.clone();
            let (sender, receiver) = std::sync::mpsc::channel();
            system_arbiter.spawn_fn(move || {
                let arbiter = Arbiter::new();
                let supervisor =
                    PipelineSupervisor::start_in_arbiter(&arbiter.handle(), move |_| {
                        PipelineSupervisor::new(spec, sink)
                    });
                let _ = sender.send((arbiter, supervisor));
            });
            let (arbiter, supervisor) = receiver.recv().map_err(|_| StartError::Pipeline {
                pipeline: name.clone(),
                stage: "start".to_owned(),
                message: "the actor system stopped".to_owned(),
            })?;
            tracing::info!(pipeline = %name, "pipeline started");
            handles.push(PipelineHandle {
                name,
                supervisor,
                arbiter: Some(arbiter),
            });
        }
        if let Some(inner) = self.inner.as_mut() {
            inner.pipelines = handles;
        }
        Ok(())
    }

    /// Sets how many members run `pipeline` (1 to 256); the group rebalances
    /// cooperatively. Returns once added members are started or removed
    /// ones have committed and left; `false` if there is no such pipeline.
    pub async fn scale_pipeline(&self, pipeline: &str, members: u32) -> bool {
        let Some(handle) = self.inner().pipelines.iter().find(|p| p.name == pipeline) else {
            return false;
        };
        let (reply, done) = oneshot::channel();
        if handle
            .supervisor
            .send(Scale { members, reply })
            .await
            .is_err()
        {
            return false;
        }
        done.await.is_ok()
    }

    /// [`Runtime::scale_pipeline`], blocking the calling thread.
    pub fn scale_pipeline_blocking(&self, pipeline: &str, members: u32) -> bool {
        block_on(self.scale_pipeline(pipeline, members))
    }

    /// The members of consumer group `group` and the partitions each owns.
    pub async fn describe_group(&self, group: &str) -> Option<GroupDescription> {
        let message = DescribeGroup {
            group: group.to_owned(),
        };
        self.inner().coordinator.send(message).await.ok().flatten()
    }

    /// [`Runtime::describe_group`], blocking the calling thread.
    pub fn describe_group_blocking(&self, group: &str) -> Option<GroupDescription> {
        block_on(self.describe_group(group))
    }

    fn topic(&self, topic: &str) -> Option<Arc<TopicHandle>> {
        self.inner().shared.topic(topic)
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &Config {
        &self.inner().shared.config
    }

    /// A producer for `topic`.
    pub fn producer(&self, topic: &str) -> Result<Producer, ProduceError> {
        let handle = self
            .topic(topic)
            .ok_or_else(|| ProduceError::UnknownTopic(topic.to_owned()))?;
        Ok(Producer { topic: handle })
    }

    /// A consumer of one partition, starting at `offset`.
    pub fn consumer(
        &self,
        topic: &str,
        partition: PartitionId,
        offset: Offset,
    ) -> Result<PartitionConsumer, FetchError> {
        let address = self.partition_address(topic, partition)?;
        Ok(PartitionConsumer {
            address,
            position: offset,
            options: FetchOptions::default(),
        })
    }

    /// Fetches from `offset` of one partition (long-polls up to `options.max_wait`).
    pub async fn fetch(
        &self,
        topic: &str,
        partition: PartitionId,
        offset: Offset,
        options: FetchOptions,
    ) -> Result<FetchResult, FetchError> {
        fetch_from(&self.partition_address(topic, partition)?, offset, options).await
    }

    /// The actor of one partition, for reads.
    pub(crate) fn partition_address(
        &self,
        topic: &str,
        partition: PartitionId,
    ) -> Result<Gated<PartitionActor>, FetchError> {
        let handle = self
            .topic(topic)
            .ok_or_else(|| FetchError::UnknownTopic(topic.to_owned()))?;
        fetch_address(&handle, partition).cloned()
    }

    /// [`Runtime::fetch`], blocking the calling thread.
    pub fn fetch_blocking(
        &self,
        topic: &str,
        partition: PartitionId,
        offset: Offset,
        options: FetchOptions,
    ) -> Result<FetchResult, FetchError> {
        block_on(self.fetch(topic, partition, offset, options))
    }

    /// Topic names: the config's in file order, then those created at run
    /// time over the Kafka protocol (`[kafka] allow_topic_management`).
    pub fn topics(&self) -> Vec<String> {
        self.inner().shared.topic_names()
    }

    /// Partition count of `topic`.
    pub fn partition_count(&self, topic: &str) -> Option<u32> {
        self.topic(topic).map(|handle| handle.partition_count())
    }

    /// Log start, log end and high watermark of one partition.
    pub async fn offsets(
        &self,
        topic: &str,
        partition: PartitionId,
    ) -> Result<PartitionOffsets, FetchError> {
        self.partition_address(topic, partition)?
            .send(Describe)
            .await
            .map_err(|_| FetchError::Unavailable)
    }

    /// [`Runtime::offsets`], blocking the calling thread.
    pub fn offsets_blocking(
        &self,
        topic: &str,
        partition: PartitionId,
    ) -> Result<PartitionOffsets, FetchError> {
        block_on(self.offsets(topic, partition))
    }

    /// Adds a node to, or removes one from, every replicated partition's
    /// Raft group (raft-rs configuration changes, one partition at a time;
    /// the partitions keep serving throughout). Call it on any node: a
    /// follower forwards each change to the partition's leader. Returns
    /// once every group has applied the change, or the first error; while
    /// a group elects a leader, or the outcome is unknown, the change is
    /// retried (it is idempotent) for up to 60 s.
    ///
    /// To add a node: start it with `[node] join = true`, its `peers` the
    /// current members, then call this with its id and `[node] listen`.
    /// Every replica learns its address from the change. To remove one:
    /// call this, then stop it.
    pub fn change_membership(&self, change: MembershipChange) -> Result<(), ProduceError> {
        const RETRY_FOR: Duration = Duration::from_secs(60);
        let table = self.inner().shared.topic_table();
        for name in table.names() {
            let Some(handle) = table.get(name) else {
                continue;
            };
            if handle.config.replication_factor <= 1 {
                continue;
            }
            for (index, address) in handle.partitions.iter().enumerate() {
                let started = std::time::Instant::now();
                loop {
                    let (reply, answer) = oneshot::channel();
                    let message = ChangeMembership {
                        change: change.clone(),
                        reply,
                    };
                    let outcome = block_on(request(address, message, answer))
                        .map_err(|_| ProduceError::Unavailable)
                        .and_then(|outcome| outcome);
                    match outcome {
                        Ok(_) => break,
                        // Adding a voter twice or removing a node that is not
                        // one changes nothing, so an unknown outcome is
                        // retried too.
                        Err(
                            ProduceError::NotLeader { .. }
                            | ProduceError::Unavailable
                            | ProduceError::NotCommitted(_),
                        ) if started.elapsed() < RETRY_FOR => {
                            // An election, or another change still pending.
                            std::thread::sleep(Duration::from_millis(50));
                        }
                        Err(error) => {
                            tracing::warn!(topic = %name, partition = index, %error, "membership change failed");
                            return Err(error);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// A copy of every metric.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.inner().shared.metrics()
    }

    /// Every partition's phase, startup load and degraded reasons.
    pub fn health(&self) -> Health {
        self.inner().shared.health()
    }

    /// Compacts every partition of `topic` now (whatever its dirty ratio),
    /// one at a time, and returns what happened to each. `None` if the topic
    /// does not exist or its `cleanup` does not include "compact".
    pub async fn compact(&self, topic: &str) -> Option<CompactionSummary> {
        let (reply, summary) = oneshot::channel();
        let message = CompactNow {
            topic: topic.to_owned(),
            reply,
        };
        self.inner().compactor.send(message).await.ok()?;
        summary.await.ok().flatten()
    }

    /// [`Runtime::compact`], blocking the calling thread.
    pub fn compact_blocking(&self, topic: &str) -> Option<CompactionSummary> {
        block_on(self.compact(topic))
    }

    /// The committed next offset of a consumer group on one partition, if
    /// it has committed any. Commits are made by the pipeline once a batch's
    /// sink write completes ([`crate::offsets`]).
    pub fn committed_offset(
        &self,
        group: &str,
        topic: &str,
        partition: PartitionId,
    ) -> Result<Option<Offset>, OffsetError> {
        self.inner().offsets.committed(group, topic, partition)
    }

    /// Whether `pipeline` has committed everything its source holds now:
    /// on every source partition, its group's committed offset has reached
    /// the high watermark. `None` if there is no such pipeline.
    pub fn caught_up(&self, pipeline: &str) -> Option<bool> {
        let config = self
            .config()
            .pipelines
            .iter()
            .find(|p| p.name == pipeline)?;
        let topic = &config.source.topic;
        for partition in 0..self.partition_count(topic)? {
            let partition = PartitionId(partition);
            let offsets = self.offsets_blocking(topic, partition).ok()?;
            let committed = self
                .committed_offset(&config.source.group, topic, partition)
                .ok()?
                .unwrap_or(Offset(0));
            if committed < offsets.high_watermark
                && offsets.high_watermark > offsets.log_start_offset
            {
                return Some(false);
            }
        }
        Some(true)
    }

    /// Records how far a dead-letter replay got (not a consumer group with
    /// members: no coordinator ownership applies). A replay from the start
    /// that is behind the recorded progress leaves it where it is.
    pub(crate) fn commit_replay_progress(
        &self,
        token: &crate::offsets::CommitToken,
    ) -> Result<(), OffsetError> {
        match self.inner().offsets.commit_with_state(token, None) {
            Ok(_) | Err(OffsetError::Backwards { .. }) => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// The address of the `[http]` listener, if it is on (useful with port 0).
    pub fn http_address(&self) -> Option<std::net::SocketAddr> {
        self.inner().http.as_ref().map(HttpServer::local_address)
    }

    /// True when every partition serves (its first hot chunk is loaded) and
    /// the runtime is not shutting down.
    pub fn ready(&self) -> bool {
        self.inner().shared.ready()
    }

    /// Metrics in the Prometheus text format.
    pub fn metrics_text(&self) -> String {
        self.metrics().to_prometheus()
    }

    /// Stops gracefully, in this order: (1) refuse new produce
    /// (`ShuttingDown`) and answer waiting fetches "no more records"; (2)
    /// wait until every accepted batch is durable and acknowledged, and stop
    /// the writer threads; (3) commit consumer offsets of completed batches
    /// (nothing to do until consumer groups exist); (4) stop the background
    /// loader and the deletion thread; (5) stop the partitions, then the
    /// actor system. Steps 1-2 are bounded by `shutdown_timeout`. When it
    /// returns, no thread of the runtime is running.
    pub fn shutdown(mut self) -> Result<(), ShutdownError> {
        let inner = self.inner.take().expect("shutdown twice");
        inner.stop()
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            let _ = inner.stop();
        }
    }
}

impl Inner {
    fn stop(mut self) -> Result<(), ShutdownError> {
        let shared = Arc::clone(&self.shared);
        let started = std::time::Instant::now();
        tracing::info!(data_dir = %shared.config.data_dir.display(), "shutting down");
        let deadline = started + shared.config.shutdown_timeout;
        let mut first_error = None;
        // Kafka clients first: no new requests (ones in flight end with the
        // connection; their clients retry, idempotently if they are).
        if let Some(mut kafka) = self.kafka.take() {
            kafka.stop();
        }
        // No topic is created or deleted from here on (one in progress
        // finishes first), so the drain below sees every partition.
        self.admin.close();
        // 0: the pipelines finish their in-flight batches and commit (3 in
        // the list above: it must come first, while produce still works for
        // their topic sinks and dead-letter queues).
        self.stop_pipelines(deadline, &mut first_error);
        stop_background_actor(self.coordinator_arbiter.take(), |reply| {
            self.coordinator.try_send(StopCoordinator { reply }).is_ok()
        });
        // 1 and 2: refuse produce, drain in-flight appends, stop the writers.
        shared.draining.store(true, Relaxed);
        let mut drains = Vec::new();
        for (topic, partition, address) in shared.partitions() {
            let (reply, receiver) = crossbeam_channel::bounded(1);
            // `do_send`: shutdown must reach a partition even when its mailbox is full.
            address.do_send(Drain { reply });
            drains.push((topic, partition, receiver));
        }
        for (topic, partition, receiver) in drains {
            let reason = match receiver.recv_deadline(deadline) {
                Ok(Ok(())) => continue,
                Ok(Err(reason)) => reason,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    format!(
                        "did not drain within shutdown_timeout ({:?})",
                        shared.config.shutdown_timeout
                    )
                }
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    "partition actor stopped before draining".to_owned()
                }
            };
            first_error.get_or_insert(ShutdownError::Partition {
                topic,
                partition,
                reason,
            });
        }
        // The peers lose this node now: its Raft router and transport stop.
        if let Some(arbiter) = self.raft_node_arbiter.take() {
            arbiter.stop();
            let _ = arbiter.join();
        }
        // 4: the background loader (between blocks), the compactor and the deletion thread.
        stop_background_actor(self.loader_arbiter.take(), |reply| {
            self.loader.try_send(StopLoader { reply }).is_ok()
        });
        // The compactor finishes the partition it is on (a run is all or
        // nothing), then stops.
        stop_background_actor(self.compactor_arbiter.take(), |reply| {
            self.compactor.try_send(StopCompactor { reply }).is_ok()
        });
        self.deleter.stop();
        // 5: the partitions, then the actor system.
        for arbiter in self.arbiters.drain(..) {
            arbiter.stop();
            let _ = arbiter.join();
        }
        self.system.stop();
        if let Some(thread) = self.system_thread.take() {
            if thread.join().is_err() {
                first_error.get_or_insert(ShutdownError::ThreadPanicked);
            }
        }
        // Metadata writes are done; flush so nothing is pending when the
        // store's handles drop with `self`.
        let _ = self._metadata.flush();
        // /ready answered 503 while draining; the listener goes last.
        if let Some(mut http) = self.http.take() {
            http.stop();
        }
        let seconds = started.elapsed().as_secs_f64();
        tracing::info!(data_dir = %shared.config.data_dir.display(), seconds, "millrace stopped");
        first_error.map_or(Ok(()), Err)
    }
}

impl Inner {
    /// Stops every pipeline: members finish their in-flight batches and
    /// commit, then the sink stages stop; their threads are joined.
    fn stop_pipelines(
        &mut self,
        deadline: std::time::Instant,
        first_error: &mut Option<ShutdownError>,
    ) {
        let mut waiting = Vec::new();
        for handle in &self.pipelines {
            let (reply, stopped) = crossbeam_channel::bounded(1);
            // `do_send`: the stop must arrive even with a full mailbox.
            handle.supervisor.do_send(StopPipeline { reply });
            waiting.push((handle.name.clone(), stopped));
        }
        for ((name, stopped), handle) in waiting.into_iter().zip(self.pipelines.iter_mut()) {
            match stopped.recv_deadline(deadline).ok() {
                Some(stopped) => {
                    for arbiter in stopped.arbiters {
                        arbiter.stop();
                        let _ = arbiter.join();
                    }
                }
                None => {
                    first_error.get_or_insert(ShutdownError::Pipeline {
                        pipeline: name,
                        reason: "did not stop within shutdown_timeout".to_owned(),
                    });
                }
            }
            if let Some(arbiter) = handle.arbiter.take() {
                arbiter.stop();
                let _ = arbiter.join();
            }
        }
    }
}

/// Stops an actor that runs alone on its arbiter: `send_stop` delivers its
/// stop message (false if the actor is already gone); the reply comes when
/// it has stopped between two steps of its work. Then the arbiter's thread
/// is joined.
fn stop_background_actor(
    arbiter: Option<Arbiter>,
    send_stop: impl FnOnce(oneshot::Sender<()>) -> bool,
) {
    let (reply, stopped) = oneshot::channel();
    if send_stop(reply) {
        let _ = block_on(stopped);
    }
    if let Some(arbiter) = arbiter {
        arbiter.stop();
        let _ = arbiter.join();
    }
}

/// Adds a `<pipeline>.dlq` topic (defaults: 1 partition, fsync always) for
/// every pipeline whose file does not declare one. [`Runtime::start`] does
/// this itself; tools that start a runtime without its pipelines (to read a
/// dead-letter queue, say) call it first.
pub fn with_dead_letter_topics(mut config: Config) -> Config {
    let missing: Vec<String> = config
        .pipelines
        .iter()
        .map(PipelineConfig::dlq_topic)
        .filter(|topic| config.topic(topic).is_none())
        .collect();
    for topic in missing {
        config.topics.push(TopicConfig::with_defaults(topic));
    }
    config
}

fn side_output_topics(pipeline: &PipelineConfig) -> impl Iterator<Item = &str> + '_ {
    pipeline
        .operators
        .iter()
        .filter_map(|operator| match operator {
            crate::pipeline::config::OperatorConfig::Window(window) => match &window.late {
                crate::pipeline::config::LatePolicy::SideOutput(topic) => Some(topic.as_str()),
                crate::pipeline::config::LatePolicy::DeadLetter => None,
            },
            _ => None,
        })
}

fn fetch_address(
    handle: &TopicHandle,
    partition: PartitionId,
) -> Result<&Gated<PartitionActor>, FetchError> {
    handle
        .partition(partition)
        .ok_or_else(|| FetchError::UnknownPartition {
            topic: handle.config.name.clone(),
            partition,
            partitions: handle.partition_count(),
        })
}

/// Asks the partition to plan a read from `offset`, waiting up to
/// `options.max_wait` for data; the caller executes the plan.
pub(crate) async fn plan_fetch(
    address: &Gated<PartitionActor>,
    offset: Offset,
    options: FetchOptions,
) -> Result<FetchReply, FetchError> {
    let (reply, receiver) = oneshot::channel();
    let max_wait = options.max_wait.min(FETCH_WAIT_MAX);
    address
        .send(Fetch {
            offset,
            max_bytes: options.max_bytes,
            max_wait,
            reply,
        })
        .await
        .map_err(|_| FetchError::Unavailable)?;
    receiver.await.map_err(|_| FetchError::Unavailable)?
}

pub(crate) async fn fetch_from(
    address: &Gated<PartitionActor>,
    offset: Offset,
    options: FetchOptions,
) -> Result<FetchResult, FetchError> {
    let reply = plan_fetch(address, offset, options).await?;
    let Some(plan) = reply.plan else {
        return Ok(FetchResult {
            records: Vec::new(),
            next_offset: offset,
            high_watermark: reply.high_watermark,
            log_start_offset: reply.log_start_offset,
        });
    };
    let read = plan.execute(options.max_bytes)?;
    Ok(FetchResult {
        records: read.records,
        next_offset: read.next_offset,
        high_watermark: reply.high_watermark,
        log_start_offset: reply.log_start_offset,
    })
}

/// Puts a message whose answer comes on its own oneshot into the
/// partition's mailbox, once the partition has room for another request
/// (see actors/mailbox.rs), and waits for the answer; the slot is held
/// until then. `send().await` would also wait for the handler to *return*,
/// which costs a second cross-thread wake-up per message for a `()` thrown
/// away (measured: about 4% of single-record produce).
async fn request<M, T>(
    address: &Gated<PartitionActor>,
    message: M,
    answer: oneshot::Receiver<T>,
) -> Result<T, actix::MailboxError>
where
    M: actix::Message<Result = ()> + Send + 'static,
    PartitionActor: actix::Handler<M>,
{
    let _slot = address.permit().await;
    address.address().do_send(message);
    answer.await.map_err(|_| actix::MailboxError::Closed)
}

/// Produces to one topic. Cheap to clone; share it between tasks.
#[derive(Clone)]
pub struct Producer {
    topic: Arc<TopicHandle>,
}

impl Producer {
    /// The topic it produces to.
    pub fn topic(&self) -> &str {
        &self.topic.config.name
    }

    /// Sends one record; returns where it went once it is durable. A keyed
    /// record goes to `murmur2(key) % partitions`; others round-robin.
    pub async fn send(&self, record: Record) -> Result<RecordMetadata, ProduceError> {
        let partition = self.choose_partition(&record);
        let ack = self.send_batch_to(partition, vec![record]).await?;
        Ok(RecordMetadata {
            partition,
            offset: ack.base_offset,
        })
    }

    /// [`Producer::send`], blocking the calling thread.
    pub fn send_blocking(&self, record: Record) -> Result<RecordMetadata, ProduceError> {
        block_on(self.send(record))
    }

    /// Sends records as one atomic batch to one partition (all stored or
    /// none); returns its offsets once durable.
    pub async fn send_batch_to(
        &self,
        partition: PartitionId,
        records: Vec<Record>,
    ) -> Result<AppendAck, ProduceError> {
        let address =
            self.topic
                .partition(partition)
                .ok_or_else(|| ProduceError::UnknownPartition {
                    topic: self.topic.config.name.clone(),
                    partition,
                    partitions: self.topic.partition_count(),
                })?;
        let (reply, receiver) = oneshot::channel();
        request(address, Produce { records, reply }, receiver)
            .await
            .map_err(|_| ProduceError::Unavailable)?
    }

    /// [`Producer::send_batch_to`], blocking the calling thread.
    pub fn send_batch_to_blocking(
        &self,
        partition: PartitionId,
        records: Vec<Record>,
    ) -> Result<AppendAck, ProduceError> {
        block_on(self.send_batch_to(partition, records))
    }

    /// Sends records, each to its partition (keyed by hash; unkeyed records
    /// of one call all go to the next round-robin partition, so they stay
    /// one batch). Each partition's share is one atomic batch; shares on
    /// different partitions are independent. Returns each record's place,
    /// in input order.
    pub async fn send_batch(
        &self,
        records: Vec<Record>,
    ) -> Result<Vec<RecordMetadata>, ProduceError> {
        if records.is_empty() {
            return Err(ProduceError::Empty);
        }
        let unkeyed_partition = self.topic.next_round_robin();
        let partition_count = self.topic.partition_count();
        let mut shares: Vec<(PartitionId, Vec<usize>, Vec<Record>)> = Vec::new();
        for (index, record) in records.into_iter().enumerate() {
            let partition = match &record.key {
                Some(key) => PartitionId(partition_for_key(key, partition_count)),
                None => unkeyed_partition,
            };
            match shares
                .iter_mut()
                .find(|(candidate, _, _)| *candidate == partition)
            {
                Some((_, indexes, share)) => {
                    indexes.push(index);
                    share.push(record);
                }
                None => shares.push((partition, vec![index], vec![record])),
            }
        }
        let total = shares.iter().map(|(_, indexes, _)| indexes.len()).sum();
        let sends = shares
            .into_iter()
            .map(|(partition, indexes, share)| async move {
                self.send_batch_to(partition, share)
                    .await
                    .map(|ack| (indexes, ack))
            });
        let mut placed = vec![
            RecordMetadata {
                partition: PartitionId(0),
                offset: Offset(0)
            };
            total
        ];
        for result in futures_util::future::join_all(sends).await {
            let (indexes, ack) = result?;
            for (position, index) in indexes.into_iter().enumerate() {
                placed[index] = RecordMetadata {
                    partition: ack.partition,
                    offset: Offset(ack.base_offset.0 + position as u64),
                };
            }
        }
        Ok(placed)
    }

    /// [`Producer::send_batch`], blocking the calling thread.
    pub fn send_batch_blocking(
        &self,
        records: Vec<Record>,
    ) -> Result<Vec<RecordMetadata>, ProduceError> {
        block_on(self.send_batch(records))
    }

    fn choose_partition(&self, record: &Record) -> PartitionId {
        match &record.key {
            Some(key) => PartitionId(partition_for_key(key, self.topic.partition_count())),
            None => self.topic.next_round_robin(),
        }
    }
}

/// Reads one partition in order from a position it keeps.
pub struct PartitionConsumer {
    address: Gated<PartitionActor>,
    position: Offset,
    options: FetchOptions,
}

impl PartitionConsumer {
    /// The next offset it will read.
    pub fn position(&self) -> Offset {
        self.position
    }

    /// Sets fetch size and wait.
    pub fn set_options(&mut self, options: FetchOptions) {
        self.options = options;
    }

    /// The next records (empty if none arrived within `max_wait`). At
    /// shutdown it returns `Ok(None)`: no more records, not an error.
    pub async fn poll(&mut self) -> Result<Option<FetchResult>, FetchError> {
        match fetch_from(&self.address, self.position, self.options).await {
            Ok(result) => {
                self.position = result.next_offset;
                Ok(Some(result))
            }
            Err(FetchError::ShuttingDown) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// [`PartitionConsumer::poll`], blocking the calling thread.
    pub fn poll_blocking(&mut self) -> Result<Option<FetchResult>, FetchError> {
        block_on(self.poll())
    }
}

fn create_directory(path: &Path) -> Result<(), StartError> {
    std::fs::create_dir_all(path).map_err(|source| StartError::Io {
        operation: "create directory",
        path: path.to_owned(),
        source,
    })
}

/// Takes an exclusive advisory lock on `DATA_DIR/LOCK` and writes our pid
/// in it, so a second process gets an error naming the holder.
fn lock_data_directory(directory: &Path) -> Result<File, StartError> {
    let lock_file = directory.join(LOCK_FILE_NAME);
    let io_error = |operation, source| StartError::Io {
        operation,
        path: lock_file.clone(),
        source,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_file)
        .map_err(|source| io_error("open lock file", source))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim() {
                "" => "another process".to_owned(),
                pid => format!("process {pid}"),
            };
            return Err(StartError::Locked {
                directory: directory.to_owned(),
                lock_file,
                holder,
            });
        }
        Err(std::fs::TryLockError::Error(source)) => return Err(io_error("lock", source)),
    }
    file.set_len(0)
        .map_err(|source| io_error("truncate lock file", source))?;
    file.rewind()
        .map_err(|source| io_error("rewind lock file", source))?;
    write!(file, "{}", std::process::id()).map_err(|source| io_error("write lock file", source))?;
    Ok(file)
}

/// Opens the metadata store and checks the config against the topics it
/// knows: a topic's partition count can grow, never shrink (keyed records
/// would silently move and data of removed partitions would be orphaned).
fn open_metadata(config: &Config) -> Result<sled::Db, StartError> {
    let path = config.data_dir.join("meta");
    let metadata_error = |message: String| StartError::Metadata {
        path: path.clone(),
        message,
    };
    let database =
        open_sled_waiting_for_release(&path).map_err(|error| metadata_error(error.to_string()))?;
    let topics = database
        .open_tree("topics")
        .map_err(|error| metadata_error(error.to_string()))?;
    for topic in &config.topics {
        let stored = topics
            .get(topic.name.as_bytes())
            .map_err(|error| metadata_error(error.to_string()))?;
        if let Some(stored) = stored {
            let stored: [u8; 4] = stored.as_ref().try_into().map_err(|_| {
                metadata_error(format!(
                    "topic {}: stored partition count has {} bytes, expected 4",
                    topic.name,
                    stored.len()
                ))
            })?;
            let stored = u32::from_le_bytes(stored);
            if topic.partitions < stored {
                return Err(metadata_error(format!(
                    "topic {} has {stored} partitions on disk but the config says {}; partitions can be added, never removed",
                    topic.name, topic.partitions
                )));
            }
        }
        topics
            .insert(topic.name.as_bytes(), &topic.partitions.to_le_bytes())
            .map_err(|error| metadata_error(error.to_string()))?;
    }
    database
        .flush()
        .map_err(|error| metadata_error(error.to_string()))?;
    Ok(database)
}

/// How long opening the metadata store waits for sled's own lock.
const SLED_LOCK_WAIT: Duration = Duration::from_secs(10);

/// Opens sled. Our `LOCK` file already makes this process the only user of
/// the data directory, so sled's own lock can only be held by a runtime of
/// this process that has just stopped: sled releases it when its background
/// threads let go of the store, shortly after the last handle drops. Wait
/// for that (bounded), rather than fail a restart in the same process.
pub(crate) fn open_sled_waiting_for_release(path: &Path) -> Result<sled::Db, sled::Error> {
    let deadline = std::time::Instant::now() + SLED_LOCK_WAIT;
    loop {
        match sled::Config::new().path(path).open() {
            Err(sled::Error::Io(error))
                if sled_lock_busy(&error) && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            result => return result,
        }
    }
}

/// Whether opening sled failed because its file lock is held. sled 0.34
/// wraps the `WouldBlock` of the lock in an error of kind `Other` ("could not
/// acquire lock on …"), so the kind alone does not tell.
fn sled_lock_busy(error: &std::io::Error) -> bool {
    error.kind() == std::io::ErrorKind::WouldBlock
        || error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<std::io::Error>())
            .is_some_and(|inner| inner.kind() == std::io::ErrorKind::WouldBlock)
        || error.to_string().contains("could not acquire lock")
}

/// The directory of one partition.
pub(crate) fn partition_directory(data_dir: &Path, topic: &str, partition: PartitionId) -> PathBuf {
    data_dir
        .join("topics")
        .join(format!("{topic}-{}", partition.0))
}

pub(crate) fn log_options(topic: &TopicConfig) -> LogOptions {
    LogOptions {
        segment_bytes: topic.segment_bytes,
        segment_age: topic.segment_age,
        index_interval_bytes: topic.index_interval_bytes,
        batch_bytes_max: topic.max_batch_bytes as usize,
        // Retention applies only when `cleanup` includes "delete".
        retention: topic.retention.filter(|_| topic.cleanup.deletes()),
        retention_bytes: topic.retention_bytes.filter(|_| topic.cleanup.deletes()),
    }
}

type OpenedLogs = Vec<(PartitionSettings, PartitionLog)>;

/// Recovers every partition's active segment (and, with the startup load
/// off, registers its blocks), several partitions at a time.
/// A replicated partition's Raft core, its settings and its group id.
type OpenedReplica = (ReplicaCore<ReplicaWaiter>, ReplicaConfig, GroupId);

/// Opens the replica of a partition whose topic has `replication_factor`
/// above 1 (the config's validation made sure there is a `[node]`).
fn open_replica(
    config: &Config,
    settings: &PartitionSettings,
    log: &mut PartitionLog,
) -> Result<Option<OpenedReplica>, StartError> {
    let topic = &settings.topic;
    if topic.replication_factor <= 1 {
        return Ok(None);
    }
    let cluster_error = |message: String| StartError::Cluster { message };
    let Some(node) = &config.node else {
        return Err(cluster_error(format!(
            "topic {}: replication_factor = {} needs a [node] section",
            topic.name, topic.replication_factor
        )));
    };
    // The partition's voters: `replication_factor` of the members (every
    // node computes the same ones). A joining node places over the members
    // it joins, without itself: it becomes a voter when the cluster adds it.
    // A node that is not among the voters still keeps an (empty) replica:
    // it never campaigns, and through it the node forwards produce to the
    // leader and names the leader to clients.
    let members: Vec<u64> = if node.join {
        node.peers.iter().map(|peer| peer.id).collect()
    } else {
        node.members()
    };
    let voters = crate::replication::placement(
        &topic.name,
        settings.partition.0,
        &members,
        topic.replication_factor,
    );
    let placed_here = voters.contains(&node.id);
    let replica_config = ReplicaConfig {
        id: node.id,
        voters,
        election_ticks: node.election_ticks,
        heartbeat_ticks: node.heartbeat_ticks,
        election_ticks_max: None,
        acks: topic.acks,
    };
    let core: ReplicaCore<ReplicaWaiter> =
        ReplicaCore::open(log, &settings.directory, &replica_config).map_err(|error| {
            cluster_error(format!(
                "topic {} partition {}: {error}",
                topic.name, settings.partition
            ))
        })?;
    let voters = core.status().voters;
    if placed_here && !node.join && !voters.contains(&node.id) {
        return Err(cluster_error(format!(
            "node {} is not a member of topic {} partition {}'s Raft group (its voters are {voters:?}): \
             check [node] id, or add the node to the cluster",
            node.id, topic.name, settings.partition
        )));
    }
    let group = GroupId {
        topic: topic.name.clone(),
        partition: settings.partition.0,
    };
    Ok(Some((core, replica_config, group)))
}

/// Binds `[node] listen` and starts the peer transport, delivering to the
/// RaftNode (a full mailbox drops the frame; Raft retransmits).
fn start_transport(config: &Config, raft_node: Addr<RaftNode>) -> Result<(), StartError> {
    let Some(node) = &config.node else {
        return Ok(());
    };
    let listener =
        std::net::TcpListener::bind(node.listen).map_err(|source| StartError::Listen {
            address: node.listen,
            source,
        })?;
    let transport_config = TransportConfig {
        node_id: node.id,
        cluster_id: node.cluster_id.clone(),
        peers: node
            .peers
            .iter()
            .map(|peer| (peer.id, peer.address))
            .collect(),
        max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
    };
    let deliver = {
        let raft_node = raft_node.clone();
        move |from: u64, envelopes| {
            let _ = raft_node.try_send(PeerFrames { from, envelopes });
        }
    };
    let transport =
        Transport::start(transport_config, listener, Box::new(deliver)).map_err(|source| {
            StartError::Listen {
                address: node.listen,
                source,
            }
        })?;
    tracing::info!(node = node.id, address = %transport.local_addr(), peers = node.peers.len(), "raft transport listening");
    raft_node.do_send(AttachTransport {
        transport,
        peers: node
            .peers
            .iter()
            .map(|peer| (peer.id, peer.address))
            .collect(),
    });
    Ok(())
}

fn open_partition_logs(
    config: &Config,
    topics: &[TopicConfig],
    metrics: &Metrics,
) -> Result<OpenedLogs, StartError> {
    let work: Vec<PartitionSettings> = topics
        .iter()
        .flat_map(|topic| {
            (0..topic.partitions).map(move |index| PartitionSettings {
                topic: topic.clone(),
                partition: PartitionId(index),
                directory: partition_directory(&config.data_dir, &topic.name, PartitionId(index)),
                startup: config.startup.clone(),
            })
        })
        .collect();
    let results: Vec<Result<(PartitionSettings, PartitionLog, RecoveryReport), StartError>> =
        std::thread::scope(|scope| {
            let chunk_size = work.len().div_ceil(4).max(1);
            let handles: Vec<_> = work
                .chunks(chunk_size)
                .map(|chunk| {
                    scope.spawn(move || {
                        chunk
                            .iter()
                            .map(|settings| {
                                settings
                                    .open_log()
                                    .map(|(log, report)| (settings.clone(), log, report))
                                    .map_err(|source| StartError::Open {
                                        topic: settings.topic.name.clone(),
                                        partition: settings.partition,
                                        source,
                                    })
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|handle| handle.join().expect("recovery thread panicked"))
                .collect()
        });
    let mut logs = Vec::with_capacity(results.len());
    for result in results {
        let (settings, log, report) = result?;
        record_recovery(metrics, &settings.topic.name, settings.partition, &report);
        logs.push((settings, log));
    }
    Ok(logs)
}

pub(crate) fn record_recovery(
    metrics: &Metrics,
    topic: &str,
    partition: PartitionId,
    report: &RecoveryReport,
) {
    metrics
        .orphaned_blocks_cleaned_total
        .fetch_add(report.orphans_removed, Relaxed);
    metrics
        .torn_tail_bytes_total
        .fetch_add(report.torn_tail_bytes, Relaxed);
    metrics
        .corruptions_total
        .fetch_add(report.corruptions.len() as u64, Relaxed);
    if report.torn_tail_bytes > 0 {
        tracing::warn!(%topic, %partition, bytes = report.torn_tail_bytes, "truncated a torn tail (bytes kept in a .broken file)");
    }
    for corruption in &report.corruptions {
        tracing::error!(%topic, %partition, %corruption, "corrupt data quarantined; it will not be returned to readers");
    }
}

/// This data directory's cluster id (Kafka's Metadata `cluster_id`):
/// made once, kept in the metadata store.
fn cluster_id(metadata: &sled::Db) -> Result<String, String> {
    const KEY: &[u8] = b"cluster_id";
    if let Some(id) = metadata.get(KEY).map_err(|error| error.to_string())? {
        return String::from_utf8(id.to_vec()).map_err(|_| "cluster_id is not UTF-8".to_owned());
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos());
    let id = format!("millrace-{nanos:x}-{:x}", std::process::id());
    metadata
        .insert(KEY, id.as_bytes())
        .and_then(|_| metadata.flush())
        .map_err(|error| error.to_string())?;
    Ok(id)
}

// ---------------------------------------------------------------------------
// Topics created and deleted at run time (Kafka CreateTopics / DeleteTopics).

/// Sled tree of the topics created at run time: name → version byte, then
/// the topic's settings as JSON ([`StoredTopic`]).
const RUNTIME_TOPICS_TREE: &str = "runtime_topics";
/// Version byte of a `runtime_topics` entry.
const RUNTIME_TOPIC_VERSION: u8 = 1;

/// What a `runtime_topics` entry keeps: the settings CreateTopics can set;
/// every other key is at its default.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredTopic {
    partitions: u32,
    cleanup: String,
    retention_ms: Option<u64>,
    retention_bytes: Option<u64>,
    segment_bytes: u64,
    max_batch_bytes: u64,
    delete_retention_ms: u64,
    min_dirty_ratio: f64,
}

/// Kafka's name of a cleanup policy.
pub(crate) fn cleanup_policy_name(policy: crate::config::CleanupPolicy) -> &'static str {
    match policy {
        crate::config::CleanupPolicy::Delete => "delete",
        crate::config::CleanupPolicy::Compact => "compact",
        crate::config::CleanupPolicy::CompactAndDelete => "compact,delete",
    }
}

/// A cleanup policy from Kafka's `cleanup.policy` value.
pub(crate) fn cleanup_policy_from_name(name: &str) -> Option<crate::config::CleanupPolicy> {
    let mut parts: Vec<&str> = name.split(',').map(str::trim).collect();
    parts.sort_unstable();
    parts.dedup();
    match parts.as_slice() {
        ["delete"] => Some(crate::config::CleanupPolicy::Delete),
        ["compact"] => Some(crate::config::CleanupPolicy::Compact),
        ["compact", "delete"] => Some(crate::config::CleanupPolicy::CompactAndDelete),
        _ => None,
    }
}

fn encode_stored_topic(topic: &TopicConfig) -> Vec<u8> {
    let stored = StoredTopic {
        partitions: topic.partitions,
        cleanup: cleanup_policy_name(topic.cleanup).to_owned(),
        retention_ms: topic.retention.map(|age| age.as_millis() as u64),
        retention_bytes: topic.retention_bytes,
        segment_bytes: topic.segment_bytes,
        max_batch_bytes: topic.max_batch_bytes,
        delete_retention_ms: topic.delete_retention.as_millis() as u64,
        min_dirty_ratio: topic.min_dirty_ratio,
    };
    let mut bytes = vec![RUNTIME_TOPIC_VERSION];
    bytes.extend(serde_json::to_vec(&stored).expect("a StoredTopic encodes"));
    bytes
}

fn decode_stored_topic(name: &str, bytes: &[u8]) -> Result<TopicConfig, String> {
    let (version, body) = bytes
        .split_first()
        .ok_or_else(|| format!("runtime topic {name:?}: empty entry"))?;
    if *version != RUNTIME_TOPIC_VERSION {
        return Err(format!(
            "runtime topic {name:?}: entry version {version}, this build reads {RUNTIME_TOPIC_VERSION}"
        ));
    }
    let stored: StoredTopic =
        serde_json::from_slice(body).map_err(|error| format!("runtime topic {name:?}: {error}"))?;
    let topic = TopicConfig {
        partitions: stored.partitions,
        cleanup: cleanup_policy_from_name(&stored.cleanup)
            .ok_or_else(|| format!("runtime topic {name:?}: cleanup {:?}", stored.cleanup))?,
        retention: stored.retention_ms.map(Duration::from_millis),
        retention_bytes: stored.retention_bytes,
        segment_bytes: stored.segment_bytes,
        max_batch_bytes: stored.max_batch_bytes,
        delete_retention: Duration::from_millis(stored.delete_retention_ms),
        min_dirty_ratio: stored.min_dirty_ratio,
        ..TopicConfig::with_defaults(name)
    };
    crate::config::check_topic_config(&topic)
        .map_err(|message| format!("runtime topic {name:?}: {message}"))?;
    Ok(topic)
}

/// The topics created at run time, in name order, except those whose name
/// the config declares (the config wins; the stored entry is ignored).
fn load_runtime_topics(
    metadata: &sled::Db,
    config: &Config,
) -> Result<Vec<TopicConfig>, StartError> {
    let metadata_error = |message: String| StartError::Metadata {
        path: config.data_dir.join("meta"),
        message,
    };
    let tree = metadata
        .open_tree(RUNTIME_TOPICS_TREE)
        .map_err(|error| metadata_error(error.to_string()))?;
    let mut topics = Vec::new();
    for entry in tree.iter() {
        let (key, value) = entry.map_err(|error| metadata_error(error.to_string()))?;
        let name = String::from_utf8(key.to_vec())
            .map_err(|_| metadata_error("a runtime topic's name is not UTF-8".to_owned()))?;
        if let Some(declared) = config
            .topics
            .iter()
            .find(|topic| topic.name.eq_ignore_ascii_case(&name))
        {
            tracing::warn!(topic = %name, declared = %declared.name, "a topic created at run time is also declared in the config file; the config's settings are used and the stored entry is ignored");
            continue;
        }
        topics.push(decode_stored_topic(&name, &value).map_err(metadata_error)?);
    }
    Ok(topics)
}

/// Why a topic could not be created.
#[derive(Debug)]
pub(crate) enum CreateTopicError {
    /// A topic of that name (or the same name ignoring letter case) exists.
    AlreadyExists(String),
    /// The runtime is shutting down.
    ShuttingDown,
    /// Opening its files or storing it failed.
    Failed(String),
}

/// Why a topic could not be deleted.
#[derive(Debug)]
pub(crate) enum DeleteTopicError {
    /// No such topic.
    Unknown,
    /// Declared in the config file, or in use by a pipeline.
    Refused(String),
    /// The runtime is shutting down.
    ShuttingDown,
    /// Draining its partitions or removing it from the store failed.
    Failed(String),
}

/// Creates and deletes topics at run time: what the Kafka handlers call.
/// One change at a time (`closed` is the lock; `true` once shutdown began).
/// The table itself is published through `Shared::topics` without locks.
pub(crate) struct TopicAdmin {
    shared: Arc<Shared>,
    /// The partition arbiters, which new partitions join round-robin.
    arbiters: Vec<ArbiterHandle>,
    next_arbiter: AtomicUsize,
    loader: Addr<BlockLoader>,
    compactor: Addr<Compactor>,
    deleter: crossbeam_channel::Sender<crate::actors::deleter::DeleterCommand>,
    metadata: sled::Db,
    closed: Mutex<bool>,
}

impl TopicAdmin {
    /// Refuses every later change; waits for one in progress.
    fn close(&self) {
        *self
            .closed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = true;
    }

    /// Creates `topic` (already validated): opens its partitions' logs,
    /// starts their actors, stores it (flushed), and only then publishes it
    /// in the table. With `validate_only`, checks that it could be created
    /// and changes nothing. Blocks: call it off the async threads.
    pub(crate) fn create(
        &self,
        topic: TopicConfig,
        validate_only: bool,
    ) -> Result<(), CreateTopicError> {
        let closed = self
            .closed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if *closed {
            return Err(CreateTopicError::ShuttingDown);
        }
        let table = self.shared.topic_table();
        if let Some(existing) = table
            .names()
            .iter()
            .find(|name| name.eq_ignore_ascii_case(&topic.name))
        {
            return Err(CreateTopicError::AlreadyExists(
                if *existing == topic.name {
                    format!("topic {:?} already exists", topic.name)
                } else {
                    format!(
                        "topic {:?} would share its directories with topic {existing:?} \
                     (names must differ ignoring letter case)",
                        topic.name
                    )
                },
            ));
        }
        if validate_only {
            return Ok(());
        }
        let config = &self.shared.config;
        let logs = open_partition_logs(config, std::slice::from_ref(&topic), &self.shared.metrics)
            .map_err(|error| CreateTopicError::Failed(error.to_string()))?;
        let mut partitions = Vec::with_capacity(logs.len());
        let mut gauges = Vec::with_capacity(logs.len());
        let mut targets = Vec::new();
        for (settings, log) in logs {
            let partition_gauges = PartitionGauges::new(&topic.name, settings.partition.0);
            gauges.push(Arc::clone(&partition_gauges));
            let index = self.next_arbiter.fetch_add(1, Relaxed) % self.arbiters.len();
            let deleter = self.deleter.clone();
            let loader = self.loader.clone();
            let metrics = Arc::clone(&self.shared.metrics);
            let kept_settings = settings.clone();
            let address = actix::Supervisor::start_in_arbiter(&self.arbiters[index], move |_| {
                // Topics created at run time are not replicated (refused
                // before this: that needs the cluster's metadata group).
                PartitionActor::new(
                    settings,
                    log,
                    deleter,
                    loader,
                    metrics,
                    partition_gauges,
                    None,
                )
            });
            if topic.cleanup.compacts() {
                targets.push(CompactionTarget {
                    topic: topic.clone(),
                    partition: kept_settings.partition,
                    address: address.clone(),
                });
            }
            partitions.push(Gated::new(address, MAILBOX_CAPACITY));
        }
        let handle = Arc::new(TopicHandle {
            config: topic.clone(),
            partitions,
            gauges,
            runtime_created: true,
            round_robin: AtomicU32::new(0),
        });
        if let Err(message) = self.store_topic(&topic) {
            // Not published: nobody else has its addresses. Stop its actors.
            self.retire(&handle);
            return Err(CreateTopicError::Failed(message));
        }
        if !targets.is_empty() {
            let _ = self.compactor.try_send(AddCompactionTargets(targets));
        }
        self.shared.topics.store(Arc::new(table.with(handle)));
        tracing::info!(topic = %topic.name, partitions = topic.partitions, "topic created over the Kafka protocol");
        drop(closed);
        Ok(())
    }

    fn store_topic(&self, topic: &TopicConfig) -> Result<(), String> {
        let runtime_topics = self
            .metadata
            .open_tree(RUNTIME_TOPICS_TREE)
            .map_err(|error| error.to_string())?;
        let partition_counts = self
            .metadata
            .open_tree("topics")
            .map_err(|error| error.to_string())?;
        runtime_topics
            .insert(topic.name.as_bytes(), encode_stored_topic(topic))
            .map_err(|error| error.to_string())?;
        partition_counts
            .insert(topic.name.as_bytes(), &topic.partitions.to_le_bytes())
            .map_err(|error| error.to_string())?;
        self.metadata.flush().map_err(|error| error.to_string())?;
        Ok(())
    }

    fn unstore_topic(&self, name: &str) -> Result<(), String> {
        for tree in [RUNTIME_TOPICS_TREE, "topics"] {
            self.metadata
                .open_tree(tree)
                .and_then(|tree| tree.remove(name.as_bytes()))
                .map_err(|error| error.to_string())?;
        }
        self.metadata.flush().map_err(|error| error.to_string())?;
        Ok(())
    }

    /// Drains a topic's partitions (bounded by `shutdown_timeout`), then
    /// retires their actors: they stop once the last address drops.
    fn retire(&self, handle: &TopicHandle) -> Option<String> {
        let deadline = std::time::Instant::now() + self.shared.config.shutdown_timeout;
        let mut drains = Vec::new();
        for address in &handle.partitions {
            let (reply, receiver) = crossbeam_channel::bounded(1);
            address.address().do_send(Drain { reply });
            drains.push(receiver);
        }
        let mut problem = None;
        for (index, receiver) in drains.into_iter().enumerate() {
            let reason = match receiver.recv_deadline(deadline) {
                Ok(Ok(())) => continue,
                Ok(Err(reason)) => reason,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    "did not drain in time".to_owned()
                }
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    "stopped before draining".to_owned()
                }
            };
            tracing::warn!(topic = %handle.config.name, partition = index, %reason, "deleting a topic: a partition did not drain cleanly");
            problem.get_or_insert(format!("partition {index}: {reason}"));
        }
        for address in &handle.partitions {
            address.address().do_send(Retire);
        }
        problem
    }

    /// Deletes a topic created at run time: out of the table first (new
    /// requests find no such topic), then its partitions drained and
    /// stopped, its entry removed from the store (flushed), and last its
    /// directories. Blocks: call it off the async threads.
    pub(crate) fn delete(&self, name: &str) -> Result<(), DeleteTopicError> {
        let closed = self
            .closed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if *closed {
            return Err(DeleteTopicError::ShuttingDown);
        }
        let table = self.shared.topic_table();
        let handle = table.get(name).cloned().ok_or(DeleteTopicError::Unknown)?;
        if !handle.runtime_created {
            return Err(DeleteTopicError::Refused(format!(
                "topic {name:?} is declared in the config file ([[topic]]); \
                 remove it there and restart to delete it"
            )));
        }
        if let Some(pipeline) = self
            .shared
            .config
            .pipelines
            .iter()
            .find(|pipeline| pipeline_topics(pipeline).any(|topic| topic == name))
        {
            return Err(DeleteTopicError::Refused(format!(
                "topic {name:?} is used by pipeline {:?}",
                pipeline.name
            )));
        }
        self.shared.topics.store(Arc::new(table.without(name)));
        drop(table);
        if handle.config.cleanup.compacts() {
            let (reply, removed) = oneshot::channel();
            let message = RemoveCompactionTargets {
                topic: name.to_owned(),
                reply,
            };
            if self.compactor.try_send(message).is_ok() {
                let _ = block_on(removed);
            }
        }
        let drain_problem = self.retire(&handle);
        let partitions = handle.partitions.len() as u32;
        drop(handle);
        self.unstore_topic(name).map_err(|message| {
            tracing::error!(topic = %name, %message, "deleting a topic: removing it from the metadata store failed; it comes back at the next start");
            DeleteTopicError::Failed(message)
        })?;
        for partition in 0..partitions {
            let directory =
                partition_directory(&self.shared.config.data_dir, name, PartitionId(partition));
            if let Err(error) = std::fs::remove_dir_all(&directory) {
                if error.kind() != std::io::ErrorKind::NotFound {
                    tracing::error!(topic = %name, directory = %directory.display(), %error, "deleting a topic: could not remove its directory");
                }
            }
        }
        if let Some(problem) = drain_problem {
            tracing::warn!(topic = %name, %problem, "topic deleted; a partition did not drain cleanly");
        }
        tracing::info!(topic = %name, "topic deleted over the Kafka protocol");
        drop(closed);
        Ok(())
    }
}

/// Every topic a pipeline reads or writes: source, sink (if a topic),
/// dead-letter topic and side outputs.
fn pipeline_topics(pipeline: &PipelineConfig) -> impl Iterator<Item = String> + '_ {
    let sink = match &pipeline.sink {
        crate::pipeline::config::SinkConfig::Topic { topic } => Some(topic.clone()),
        _ => None,
    };
    std::iter::once(pipeline.source.topic.clone())
        .chain(sink)
        .chain(std::iter::once(pipeline.dlq_topic()))
        .chain(side_output_topics(pipeline).map(str::to_owned))
}

#[cfg(test)]
mod sled_lock_tests {
    use super::sled_lock_busy;

    #[test]
    fn a_held_sled_lock_is_recognised_as_busy() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("meta");
        let _held = sled::Config::new().path(&path).open().unwrap();
        match sled::Config::new().path(&path).open() {
            Err(sled::Error::Io(error)) => assert!(sled_lock_busy(&error), "{error:?}"),
            other => panic!("a second open of a held store: {other:?}"),
        }
        let unrelated = std::io::Error::other("disk on fire");
        assert!(!sled_lock_busy(&unrelated));
    }
}
