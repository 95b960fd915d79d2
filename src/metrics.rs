//! Metrics the host can read: a [`MetricsSnapshot`] and Prometheus text.
//!
//! Counters are atomics written by the actors and threads that own the work
//! they count. They are not actor state: nothing reads them to decide
//! anything, so they need no ordering beyond `Relaxed`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// Upper bounds (seconds) of the latency histogram buckets (fsync, handler, compaction).
const LATENCY_BUCKET_BOUNDS_SECONDS: [f64; 19] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0, 60.0,
];

/// A cumulative latency histogram with fixed buckets.
#[derive(Debug, Default)]
pub(crate) struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKET_BOUNDS_SECONDS.len()],
    count: AtomicU64,
    sum_nanoseconds: AtomicU64,
}

impl Histogram {
    pub(crate) fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        if let Some(index) = LATENCY_BUCKET_BOUNDS_SECONDS
            .iter()
            .position(|bound| seconds <= *bound)
        {
            self.buckets[index].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_nanoseconds
            .fetch_add(elapsed.as_nanos() as u64, Relaxed);
    }

    fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = 0;
        let buckets = LATENCY_BUCKET_BOUNDS_SECONDS
            .iter()
            .zip(&self.buckets)
            .map(|(bound, bucket)| {
                cumulative += bucket.load(Relaxed);
                (*bound, cumulative)
            })
            .collect();
        HistogramSnapshot {
            buckets,
            count: self.count.load(Relaxed),
            sum_seconds: self.sum_nanoseconds.load(Relaxed) as f64 / 1e9,
        }
    }
}

/// Runtime-wide counters.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    pub(crate) records_produced_total: AtomicU64,
    pub(crate) bytes_produced_total: AtomicU64,
    pub(crate) fsyncs_total: AtomicU64,
    pub(crate) fsync_seconds: Histogram,
    pub(crate) orphaned_blocks_cleaned_total: AtomicU64,
    pub(crate) cleanup_failures_total: AtomicU64,
    pub(crate) torn_tail_bytes_total: AtomicU64,
    pub(crate) corruptions_total: AtomicU64,
    pub(crate) segments_sealed_total: AtomicU64,
    pub(crate) seal_failures_total: AtomicU64,
    pub(crate) blocks_deleted_total: AtomicU64,
    pub(crate) blocks_loaded_total: AtomicU64,
    pub(crate) blocks_quarantined_total: AtomicU64,
    pub(crate) background_load_bytes_total: AtomicU64,
    pub(crate) partition_restarts_total: AtomicU64,
    /// Raft messages from peers dropped (undecodable, unknown group, wrong sender).
    pub(crate) raft_messages_dropped_total: AtomicU64,
    pub(crate) compaction_runs_total: AtomicU64,
    pub(crate) compaction_bytes_before_total: AtomicU64,
    pub(crate) compaction_bytes_after_total: AtomicU64,
    pub(crate) compaction_seconds: Histogram,
    pub(crate) compaction_skipped_total: AtomicU64,
    pub(crate) compaction_failures_total: AtomicU64,
    pub(crate) partitions_not_compactable: AtomicU64,
    /// How long partition-actor handlers take.
    pub(crate) partition_handler_seconds: Histogram,
    /// The longest partition-actor handler so far, in nanoseconds.
    pub(crate) partition_handler_max_nanoseconds: AtomicU64,
    /// CPU time of partition-actor handlers (the thread's own time: what a
    /// handler does, without the time the OS ran other threads meanwhile).
    pub(crate) partition_handler_cpu_seconds: Histogram,
    /// The most CPU time one partition-actor handler took, in nanoseconds.
    pub(crate) partition_handler_cpu_max_nanoseconds: AtomicU64,
    /// The Kafka listener's counters.
    pub(crate) kafka: Arc<crate::kafka::KafkaCounters>,
}

impl Metrics {
    /// Records one partition-actor handler's duration.
    pub(crate) fn observe_handler(&self, elapsed: Duration) {
        self.partition_handler_seconds.observe(elapsed);
        self.partition_handler_max_nanoseconds
            .fetch_max(elapsed.as_nanos() as u64, Relaxed);
    }

    /// Records one partition-actor handler's CPU time.
    pub(crate) fn observe_handler_cpu(&self, cpu: Duration) {
        self.partition_handler_cpu_seconds.observe(cpu);
        self.partition_handler_cpu_max_nanoseconds
            .fetch_max(cpu.as_nanos() as u64, Relaxed);
    }
}

/// Gauges of one partition, written only by its actor.
#[derive(Debug)]
pub(crate) struct PartitionGauges {
    pub(crate) topic: String,
    pub(crate) partition: u32,
    pub(crate) log_start_offset: AtomicU64,
    pub(crate) log_end_offset: AtomicU64,
    pub(crate) high_watermark: AtomicU64,
    pub(crate) size_bytes: AtomicU64,
    pub(crate) fail_stopped: AtomicU64,
    /// 1 once the partition serves (its first hot chunk is loaded).
    pub(crate) serving: AtomicU64,
    /// Replicated partitions: Raft figures of this node's replica (all 0
    /// for a partition of one).
    pub(crate) raft: RaftGauges,
}

/// One replica's Raft figures, published by its partition actor.
#[derive(Debug, Default)]
pub(crate) struct RaftGauges {
    /// 1 for a replicated partition.
    pub(crate) replicated: AtomicU64,
    /// The leader this replica knows (node id; 0: none).
    pub(crate) leader: AtomicU64,
    pub(crate) term: AtomicU64,
    pub(crate) commit_index: AtomicU64,
    pub(crate) applied_index: AtomicU64,
    pub(crate) last_index: AtomicU64,
    /// 1 while the group is idle and this replica does not tick.
    pub(crate) quiet: AtomicU64,
}

impl PartitionGauges {
    pub(crate) fn new(topic: &str, partition: u32) -> Arc<PartitionGauges> {
        Arc::new(PartitionGauges {
            topic: topic.to_owned(),
            partition,
            log_start_offset: AtomicU64::new(0),
            log_end_offset: AtomicU64::new(0),
            high_watermark: AtomicU64::new(0),
            size_bytes: AtomicU64::new(0),
            fail_stopped: AtomicU64::new(0),
            serving: AtomicU64::new(0),
            raft: RaftGauges::default(),
        })
    }
}

/// Counters of one pipeline, written by its members and its sink stage.
#[derive(Debug)]
pub(crate) struct PipelineMetrics {
    pub(crate) pipeline: String,
    pub(crate) group: String,
    pub(crate) topic: String,
    pub(crate) records_in_total: AtomicU64,
    pub(crate) records_out_total: AtomicU64,
    pub(crate) dead_letters_total: AtomicU64,
    pub(crate) late_total: AtomicU64,
    pub(crate) retries_total: AtomicU64,
    /// 1 once the pipeline stopped writing after an error retries could not fix.
    pub(crate) failed: AtomicU64,
    pub(crate) sink_write_seconds: Histogram,
    /// One per source partition.
    pub(crate) partitions: Vec<ConsumerGauges>,
}

impl PipelineMetrics {
    pub(crate) fn new(pipeline: &str, group: &str, topic: &str, partitions: u32) -> Arc<Self> {
        Arc::new(PipelineMetrics {
            pipeline: pipeline.to_owned(),
            group: group.to_owned(),
            topic: topic.to_owned(),
            records_in_total: AtomicU64::new(0),
            records_out_total: AtomicU64::new(0),
            dead_letters_total: AtomicU64::new(0),
            late_total: AtomicU64::new(0),
            retries_total: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            sink_write_seconds: Histogram::default(),
            partitions: (0..partitions).map(|_| ConsumerGauges::default()).collect(),
        })
    }

    fn snapshot(&self) -> PipelineSnapshot {
        PipelineSnapshot {
            pipeline: self.pipeline.clone(),
            group: self.group.clone(),
            topic: self.topic.clone(),
            records_in_total: self.records_in_total.load(Relaxed),
            records_out_total: self.records_out_total.load(Relaxed),
            dead_letters_total: self.dead_letters_total.load(Relaxed),
            late_total: self.late_total.load(Relaxed),
            retries_total: self.retries_total.load(Relaxed),
            failed: self.failed.load(Relaxed) != 0,
            sink_write_seconds: self.sink_write_seconds.snapshot(),
            partitions: self
                .partitions
                .iter()
                .map(|gauges| {
                    let high_watermark = gauges.high_watermark.load(Relaxed);
                    let committed = gauges.committed.load(Relaxed);
                    ConsumerLag {
                        high_watermark,
                        committed,
                        lag: high_watermark.saturating_sub(committed),
                    }
                })
                .collect(),
        }
    }
}

/// A group's position on one source partition.
#[derive(Debug, Default)]
pub(crate) struct ConsumerGauges {
    /// The high watermark the last fetch saw.
    pub(crate) high_watermark: AtomicU64,
    /// The committed next offset.
    pub(crate) committed: AtomicU64,
}

/// A pipeline's counters and its group's lag.
#[derive(Clone, Debug, PartialEq)]
pub struct PipelineSnapshot {
    /// Pipeline name.
    pub pipeline: String,
    /// Its consumer group.
    pub group: String,
    /// Its source topic.
    pub topic: String,
    /// Source records read.
    pub records_in_total: u64,
    /// Events written to the sink.
    pub records_out_total: u64,
    /// Records sent to the dead-letter queue.
    pub dead_letters_total: u64,
    /// Records too late for their window (dead-lettered or side output).
    pub late_total: u64,
    /// Retries of operators, sink writes and produces.
    pub retries_total: u64,
    /// The pipeline stopped writing after an error retries could not fix.
    pub failed: bool,
    /// Sink write latency.
    pub sink_write_seconds: HistogramSnapshot,
    /// Per source partition, by partition number.
    pub partitions: Vec<ConsumerLag>,
}

/// A consumer group's position on one partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConsumerLag {
    /// The partition's high watermark, as last seen by the group.
    pub high_watermark: u64,
    /// The committed next offset.
    pub committed: u64,
    /// `high_watermark - committed`.
    pub lag: u64,
}

/// Reads one per-partition gauge's value.
type PartitionValue = fn(&PartitionMetrics) -> u64;

/// Cumulative histogram values.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramSnapshot {
    /// (upper bound in seconds, observations at or below it), increasing.
    pub buckets: Vec<(f64, u64)>,
    /// Observations.
    pub count: u64,
    /// Sum of observations in seconds.
    pub sum_seconds: f64,
}

/// One partition's offsets and size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionMetrics {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: u32,
    /// First readable offset.
    pub log_start_offset: u64,
    /// Offset the next appended record gets.
    pub log_end_offset: u64,
    /// Offsets below this are durable and readable.
    pub high_watermark: u64,
    /// Bytes on disk.
    pub size_bytes: u64,
    /// The partition refuses writes after an I/O failure, until reopened.
    pub fail_stopped: bool,
    /// Replicated partitions: the leader this node's replica knows (node
    /// id, 0 when none or not replicated).
    pub raft_leader: u64,
    /// Replicated partitions: the replica's term.
    pub raft_term: u64,
    /// Replicated partitions: the highest Raft index known committed.
    pub raft_commit_index: u64,
    /// Replicated partitions: the highest Raft index applied.
    pub raft_applied_index: u64,
    /// Replicated partitions: the last Raft index in this replica's log.
    pub raft_last_index: u64,
    /// Replicated partitions: the group is idle and this replica does not
    /// tick (no heartbeats; its node's announcements stand in).
    pub raft_quiet: bool,
}

/// A point-in-time copy of every metric.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricsSnapshot {
    /// Records acknowledged.
    pub records_produced_total: u64,
    /// Encoded bytes acknowledged.
    pub bytes_produced_total: u64,
    /// fsync calls on segment files.
    pub fsyncs_total: u64,
    /// fsync latency.
    pub fsync_seconds: HistogramSnapshot,
    /// Temp and unreferenced files removed at open or before a seal retry.
    pub orphaned_blocks_cleaned_total: u64,
    /// Files retention failed to delete (retried next cycle).
    pub cleanup_failures_total: u64,
    /// Bytes cut from torn tails at recovery.
    pub torn_tail_bytes_total: u64,
    /// Damaged places found (quarantined, reported, never returned).
    pub corruptions_total: u64,
    /// Segments sealed into blocks.
    pub segments_sealed_total: u64,
    /// Seal attempts that failed (retried).
    pub seal_failures_total: u64,
    /// Blocks deleted by retention.
    pub blocks_deleted_total: u64,
    /// Sealed blocks loaded at startup (hot and background).
    pub blocks_loaded_total: u64,
    /// Blocks found damaged while loading, quarantined.
    pub blocks_quarantined_total: u64,
    /// Bytes verified by the background loader.
    pub background_load_bytes_total: u64,
    /// Partition actors restarted after a failure.
    pub partition_restarts_total: u64,
    /// Raft messages from peers dropped (undecodable, unknown group, wrong sender).
    pub raft_messages_dropped_total: u64,
    /// Compaction runs that swapped new blocks in.
    pub compaction_runs_total: u64,
    /// Bytes of blocks replaced by compaction.
    pub compaction_bytes_before_total: u64,
    /// Bytes of the blocks compaction wrote.
    pub compaction_bytes_after_total: u64,
    /// Duration of compaction runs.
    pub compaction_seconds: HistogramSnapshot,
    /// Compaction runs skipped by the resource check.
    pub compaction_skipped_total: u64,
    /// Compaction runs that failed (old blocks kept, retried).
    pub compaction_failures_total: u64,
    /// Partitions of compacted topics that cannot be compacted now.
    pub partitions_not_compactable: u64,
    /// Duration of partition-actor handlers.
    pub partition_handler_seconds: HistogramSnapshot,
    /// The longest partition-actor handler so far, in seconds.
    pub partition_handler_max_seconds: f64,
    /// CPU time of partition-actor handlers (excludes time preempted).
    /// Empty unless `MILLRACE_HANDLER_CPU_TIME=1` was set at start: reading
    /// a thread's CPU clock is a system call per handler.
    pub partition_handler_cpu_seconds: HistogramSnapshot,
    /// The most CPU time one partition-actor handler took so far, in seconds.
    pub partition_handler_cpu_max_seconds: f64,
    /// Per partition, in topic then partition order.
    pub partitions: Vec<PartitionMetrics>,
    /// Per pipeline, in config order.
    pub pipelines: Vec<PipelineSnapshot>,
    /// Kafka requests handled.
    pub kafka_requests_total: u64,
    /// Kafka connections closed at once because `max_connections` were open.
    pub kafka_connections_refused_total: u64,
    /// Kafka connections closed because of a malformed, oversized or unsupported request.
    pub kafka_requests_refused_total: u64,
}

impl Metrics {
    pub(crate) fn snapshot(
        &self,
        partitions: &[Arc<PartitionGauges>],
        pipelines: &[Arc<PipelineMetrics>],
    ) -> MetricsSnapshot {
        MetricsSnapshot {
            records_produced_total: self.records_produced_total.load(Relaxed),
            bytes_produced_total: self.bytes_produced_total.load(Relaxed),
            fsyncs_total: self.fsyncs_total.load(Relaxed),
            fsync_seconds: self.fsync_seconds.snapshot(),
            orphaned_blocks_cleaned_total: self.orphaned_blocks_cleaned_total.load(Relaxed),
            cleanup_failures_total: self.cleanup_failures_total.load(Relaxed),
            torn_tail_bytes_total: self.torn_tail_bytes_total.load(Relaxed),
            corruptions_total: self.corruptions_total.load(Relaxed),
            segments_sealed_total: self.segments_sealed_total.load(Relaxed),
            seal_failures_total: self.seal_failures_total.load(Relaxed),
            blocks_deleted_total: self.blocks_deleted_total.load(Relaxed),
            blocks_loaded_total: self.blocks_loaded_total.load(Relaxed),
            blocks_quarantined_total: self.blocks_quarantined_total.load(Relaxed),
            background_load_bytes_total: self.background_load_bytes_total.load(Relaxed),
            partition_restarts_total: self.partition_restarts_total.load(Relaxed),
            raft_messages_dropped_total: self.raft_messages_dropped_total.load(Relaxed),
            compaction_runs_total: self.compaction_runs_total.load(Relaxed),
            compaction_bytes_before_total: self.compaction_bytes_before_total.load(Relaxed),
            compaction_bytes_after_total: self.compaction_bytes_after_total.load(Relaxed),
            compaction_seconds: self.compaction_seconds.snapshot(),
            compaction_skipped_total: self.compaction_skipped_total.load(Relaxed),
            compaction_failures_total: self.compaction_failures_total.load(Relaxed),
            partitions_not_compactable: self.partitions_not_compactable.load(Relaxed),
            partition_handler_seconds: self.partition_handler_seconds.snapshot(),
            partition_handler_cpu_seconds: self.partition_handler_cpu_seconds.snapshot(),
            partition_handler_cpu_max_seconds: self
                .partition_handler_cpu_max_nanoseconds
                .load(Relaxed) as f64
                / 1e9,
            partition_handler_max_seconds: self.partition_handler_max_nanoseconds.load(Relaxed)
                as f64
                / 1e9,
            partitions: partitions
                .iter()
                .map(|gauges| PartitionMetrics {
                    topic: gauges.topic.clone(),
                    partition: gauges.partition,
                    log_start_offset: gauges.log_start_offset.load(Relaxed),
                    log_end_offset: gauges.log_end_offset.load(Relaxed),
                    high_watermark: gauges.high_watermark.load(Relaxed),
                    size_bytes: gauges.size_bytes.load(Relaxed),
                    fail_stopped: gauges.fail_stopped.load(Relaxed) != 0,
                    raft_leader: gauges.raft.leader.load(Relaxed),
                    raft_term: gauges.raft.term.load(Relaxed),
                    raft_commit_index: gauges.raft.commit_index.load(Relaxed),
                    raft_applied_index: gauges.raft.applied_index.load(Relaxed),
                    raft_last_index: gauges.raft.last_index.load(Relaxed),
                    raft_quiet: gauges.raft.quiet.load(Relaxed) != 0,
                })
                .collect(),
            pipelines: pipelines
                .iter()
                .map(|pipeline| pipeline.snapshot())
                .collect(),
            kafka_requests_total: self.kafka.requests.load(Relaxed),
            kafka_connections_refused_total: self.kafka.connections_refused.load(Relaxed),
            kafka_requests_refused_total: self.kafka.requests_refused.load(Relaxed),
        }
    }
}

impl MetricsSnapshot {
    /// Renders the Prometheus text exposition format (version 0.0.4).
    pub fn to_prometheus(&self) -> String {
        let mut out = String::new();
        let counters = [
            (
                "millrace_records_produced_total",
                "Records acknowledged.",
                self.records_produced_total,
            ),
            (
                "millrace_bytes_produced_total",
                "Encoded bytes acknowledged.",
                self.bytes_produced_total,
            ),
            (
                "millrace_fsyncs_total",
                "fsync calls on segment files.",
                self.fsyncs_total,
            ),
            (
                "orphaned_blocks_cleaned_total",
                "Temp and unreferenced files removed at open or before a seal retry.",
                self.orphaned_blocks_cleaned_total,
            ),
            (
                "cleanup_failures_total",
                "Files retention failed to delete.",
                self.cleanup_failures_total,
            ),
            (
                "millrace_torn_tail_bytes_total",
                "Bytes cut from torn tails at recovery.",
                self.torn_tail_bytes_total,
            ),
            (
                "millrace_corruptions_total",
                "Damaged places found and quarantined.",
                self.corruptions_total,
            ),
            (
                "millrace_segments_sealed_total",
                "Segments sealed into blocks.",
                self.segments_sealed_total,
            ),
            (
                "millrace_seal_failures_total",
                "Seal attempts that failed.",
                self.seal_failures_total,
            ),
            (
                "millrace_blocks_deleted_total",
                "Blocks deleted by retention.",
                self.blocks_deleted_total,
            ),
            (
                "millrace_blocks_loaded_total",
                "Sealed blocks loaded at startup.",
                self.blocks_loaded_total,
            ),
            (
                "millrace_blocks_quarantined_total",
                "Blocks found damaged while loading, quarantined.",
                self.blocks_quarantined_total,
            ),
            (
                "millrace_background_load_bytes_total",
                "Bytes verified by the background loader.",
                self.background_load_bytes_total,
            ),
            (
                "millrace_partition_restarts_total",
                "Partition actors restarted after a failure.",
                self.partition_restarts_total,
            ),
            (
                "millrace_raft_messages_dropped_total",
                "Raft messages from peers dropped (undecodable, unknown group, wrong sender).",
                self.raft_messages_dropped_total,
            ),
            (
                "millrace_kafka_requests_total",
                "Kafka-protocol requests handled.",
                self.kafka_requests_total,
            ),
            (
                "millrace_kafka_connections_refused_total",
                "Kafka connections closed at once: max_connections were open.",
                self.kafka_connections_refused_total,
            ),
            (
                "millrace_kafka_requests_refused_total",
                "Kafka connections closed for a malformed, oversized or unsupported request.",
                self.kafka_requests_refused_total,
            ),
            (
                "millrace_compaction_runs_total",
                "Compaction runs that swapped new blocks in.",
                self.compaction_runs_total,
            ),
            (
                "millrace_compaction_bytes_before_total",
                "Bytes of blocks replaced by compaction.",
                self.compaction_bytes_before_total,
            ),
            (
                "millrace_compaction_bytes_after_total",
                "Bytes of the blocks compaction wrote.",
                self.compaction_bytes_after_total,
            ),
            (
                "millrace_compaction_skipped_total",
                "Compaction runs skipped by the resource check.",
                self.compaction_skipped_total,
            ),
            (
                "millrace_compaction_failures_total",
                "Compaction runs that failed (old blocks kept, retried).",
                self.compaction_failures_total,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
        let histograms = [
            (
                "millrace_fsync_seconds",
                "fsync latency.",
                &self.fsync_seconds,
            ),
            (
                "millrace_compaction_seconds",
                "Duration of compaction runs.",
                &self.compaction_seconds,
            ),
            (
                "millrace_partition_handler_seconds",
                "Duration of partition-actor handlers.",
                &self.partition_handler_seconds,
            ),
            (
                "millrace_partition_handler_cpu_seconds",
                "CPU time of partition-actor handlers (their thread's time, without preemption).",
                &self.partition_handler_cpu_seconds,
            ),
        ];
        for (name, help, histogram) in histograms {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            for (bound, cumulative) in &histogram.buckets {
                let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
            }
            let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", histogram.count);
            let _ = writeln!(
                out,
                "{name}_sum {}\n{name}_count {}",
                histogram.sum_seconds, histogram.count
            );
        }
        let single_gauges = [
            (
                "millrace_partitions_not_compactable",
                "Partitions of compacted topics that cannot be compacted now.",
                self.partitions_not_compactable as f64,
            ),
            (
                "millrace_partition_handler_max_seconds",
                "The longest partition-actor handler so far.",
                self.partition_handler_max_seconds,
            ),
            (
                "millrace_partition_handler_cpu_max_seconds",
                "The most CPU time one partition-actor handler took so far.",
                self.partition_handler_cpu_max_seconds,
            ),
        ];
        for (name, help, value) in single_gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        let gauges: [(&str, &str, PartitionValue); 11] = [
            ("millrace_log_start_offset", "First readable offset.", |p| {
                p.log_start_offset
            }),
            (
                "millrace_log_end_offset",
                "Offset the next appended record gets.",
                |p| p.log_end_offset,
            ),
            (
                "millrace_high_watermark",
                "Offsets below this are durable and readable.",
                |p| p.high_watermark,
            ),
            ("millrace_partition_size_bytes", "Bytes on disk.", |p| {
                p.size_bytes
            }),
            (
                "millrace_partition_fail_stopped",
                "1 when the partition refuses writes after an I/O failure.",
                |p| u64::from(p.fail_stopped),
            ),
            (
                "millrace_raft_leader",
                "Replicated partitions: the leader this node's replica knows (node id, 0: none).",
                |p| p.raft_leader,
            ),
            (
                "millrace_raft_term",
                "Replicated partitions: the replica's Raft term.",
                |p| p.raft_term,
            ),
            (
                "millrace_raft_commit_index",
                "Replicated partitions: the highest Raft index known committed.",
                |p| p.raft_commit_index,
            ),
            (
                "millrace_raft_applied_index",
                "Replicated partitions: the highest Raft index applied.",
                |p| p.raft_applied_index,
            ),
            (
                "millrace_raft_last_index",
                "Replicated partitions: the last Raft index in this replica's log.",
                |p| p.raft_last_index,
            ),
            (
                "millrace_raft_quiet",
                "Replicated partitions: 1 while the group is idle and this replica does not tick.",
                |p| u64::from(p.raft_quiet),
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for partition in &self.partitions {
                let _ = writeln!(
                    out,
                    "{name}{{topic=\"{}\",partition=\"{}\"}} {}",
                    partition.topic,
                    partition.partition,
                    value(partition)
                );
            }
        }
        self.pipelines_to_prometheus(&mut out);
        out
    }

    fn pipelines_to_prometheus(&self, out: &mut String) {
        type PipelineValue = fn(&PipelineSnapshot) -> u64;
        let counters: [(&str, &str, PipelineValue); 5] = [
            (
                "millrace_pipeline_records_in_total",
                "Source records read.",
                |p| p.records_in_total,
            ),
            (
                "millrace_pipeline_records_out_total",
                "Events written to the sink.",
                |p| p.records_out_total,
            ),
            (
                "millrace_pipeline_dead_letters_total",
                "Records sent to the dead-letter queue.",
                |p| p.dead_letters_total,
            ),
            (
                "millrace_pipeline_late_total",
                "Records too late for their window.",
                |p| p.late_total,
            ),
            (
                "millrace_pipeline_retries_total",
                "Retries of operators, sink writes and produces.",
                |p| p.retries_total,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for pipeline in &self.pipelines {
                let _ = writeln!(
                    out,
                    "{name}{{pipeline=\"{}\"}} {}",
                    pipeline.pipeline,
                    value(pipeline)
                );
            }
        }
        let _ = writeln!(out, "# HELP millrace_pipeline_failed 1 when the pipeline stopped writing after an error.\n# TYPE millrace_pipeline_failed gauge");
        for pipeline in &self.pipelines {
            let _ = writeln!(
                out,
                "millrace_pipeline_failed{{pipeline=\"{}\"}} {}",
                pipeline.pipeline,
                u8::from(pipeline.failed)
            );
        }
        type LagValue = fn(&ConsumerLag) -> u64;
        let lags: [(&str, &str, LagValue); 2] = [
            (
                "millrace_consumer_lag",
                "High watermark minus the committed offset.",
                |l| l.lag,
            ),
            (
                "millrace_consumer_committed_offset",
                "The committed next offset.",
                |l| l.committed,
            ),
        ];
        for (name, help, value) in lags {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for pipeline in &self.pipelines {
                for (partition, lag) in pipeline.partitions.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "{name}{{group=\"{}\",topic=\"{}\",partition=\"{partition}\"}} {}",
                        pipeline.group,
                        pipeline.topic,
                        value(lag)
                    );
                }
            }
        }
    }
}
