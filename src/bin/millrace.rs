//! `millrace`: run a config, and kcat-like produce and consume on its data
//! directory. Every error is one line on stderr and a non-zero exit.

use clap::{Args, Parser, Subcommand};
use millrace::config::Config;
use millrace::runtime::PartitionCompaction;
use millrace::{FetchOptions, FetchedRecord, Offset, PartitionId, Record, RecordMetadata, Runtime};
use std::io::{BufRead, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Lines gathered into one produce batch.
const PRODUCE_BATCH_RECORDS_MAX: usize = 1000;
/// Produce batches awaiting acknowledgement at once.
const PRODUCE_BATCHES_IN_FLIGHT_MAX: usize = 16;
/// Lines queued between the stdin reader and the producer.
const STDIN_LINES_QUEUED_MAX: usize = 8192;

#[derive(Parser)]
#[command(
    name = "millrace",
    version,
    about = "Embeddable stream-processing runtime: run a config, produce and consume"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run CONFIG (its topics and pipelines) until SIGINT or SIGTERM, then
    /// shut down gracefully.
    Run {
        /// The TOML config.
        config: PathBuf,
        /// Stop once every pipeline has committed everything its source
        /// held at the time (a batch job); exit 0.
        #[arg(long = "until-caught-up")]
        until_caught_up: bool,
    },
    /// Run CONFIG as a member of a Raft cluster (its `[node]` section):
    /// like `run`, and it refuses a config without `[node]`.
    Node {
        /// The TOML config, with a `[node]` section.
        config: PathBuf,
    },
    /// The cluster as this node sees it: per partition, the leader, term,
    /// commit and applied indexes, and (on the leader) each replica's lag.
    /// Read from the running node's `/health` (its `[http] listen`).
    Cluster {
        /// `status`.
        action: ClusterAction,
        /// The node's TOML config.
        #[arg(short = 'c', long = "config")]
        config: PathBuf,
    },
    /// A pipeline's dead-letter queue: list its entries, or replay them
    /// into the pipeline's source topic (idempotent; see the README).
    Dlq {
        /// `list` or `replay`.
        action: DlqAction,
        /// The pipeline.
        pipeline: String,
        /// The TOML config.
        #[arg(short = 'c', long = "config")]
        config: PathBuf,
        /// With `replay`: every entry again, not only those after the last replay.
        #[arg(long = "all")]
        all: bool,
    },
    /// Print each topic's partitions with log start, log end and high watermark.
    Topics {
        /// The TOML config.
        #[arg(short = 'c', long = "config")]
        config: PathBuf,
    },
    /// Compact a topic now (its cleanup must include "compact"), wait, print a summary.
    Compact {
        /// The TOML config.
        #[arg(short = 'c', long = "config")]
        config: PathBuf,
        /// Topic to compact.
        #[arg(short = 't', long = "topic")]
        topic: String,
    },
    /// Produce one record per stdin line.
    Produce(ProduceArgs),
    /// Print records, one per line.
    Consume(ConsumeArgs),
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ClusterAction {
    /// Leaders, replicas, commit and applied indexes, lag per replica.
    Status,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum DlqAction {
    /// Print every entry as one JSON object per line.
    List,
    /// Re-inject entries into the pipeline's source topic.
    Replay,
}

#[derive(Args)]
struct ProduceArgs {
    /// The TOML config (opens its data directory in-process).
    #[arg(
        short = 'c',
        long = "config",
        required_unless_present = "brokers",
        conflicts_with = "brokers"
    )]
    config: Option<PathBuf>,
    /// Produce to running nodes over the Kafka protocol instead of opening a config.
    #[arg(long = "brokers", value_name = "HOST:PORT[,...]")]
    brokers: Option<String>,
    /// Topic to produce to.
    #[arg(short = 't', long = "topic")]
    topic: String,
    /// Partition (default: by key hash, or round-robin for unkeyed lines).
    #[arg(short = 'p', long = "partition")]
    partition: Option<u32>,
    /// Split each line into "key DELIM value" at the first DELIM.
    #[arg(short = 'K', long = "key-delimiter")]
    key_delimiter: Option<String>,
    /// Print "PARTITION OFFSET" per record, in input order, once durable.
    #[arg(long = "print-acks")]
    print_acks: bool,
}

#[derive(Args)]
struct ConsumeArgs {
    /// The TOML config (opens its data directory in-process).
    #[arg(
        short = 'c',
        long = "config",
        required_unless_present = "brokers",
        conflicts_with = "brokers"
    )]
    config: Option<PathBuf>,
    /// Consume from running nodes over the Kafka protocol instead of opening a config.
    #[arg(long = "brokers", value_name = "HOST:PORT[,...]")]
    brokers: Option<String>,
    /// Topic to consume.
    #[arg(short = 't', long = "topic")]
    topic: String,
    /// Only this partition (default: all).
    #[arg(short = 'p', long = "partition")]
    partition: Option<u32>,
    /// Start at the first readable offset (default: the end).
    #[arg(long = "from-beginning", conflicts_with = "offset")]
    from_beginning: bool,
    /// Start at this offset.
    #[arg(long = "offset")]
    offset: Option<u64>,
    /// Exit 0 once every partition is read up to its high watermark at start.
    #[arg(long = "until-end")]
    until_end: bool,
    /// Output format: %t topic, %p partition, %o offset, %k key, %v value, %T timestamp, %% a percent sign.
    #[arg(short = 'f', long = "format", default_value = "%v")]
    format: String,
    /// Consumer group: start at its committed offsets (where it has none, as
    /// without --group) and commit the next offset once records are printed.
    /// With --brokers only, for now.
    #[arg(long = "group", value_name = "G")]
    group: Option<String>,
}

fn main() -> ExitCode {
    // Failpoints from the `FAILPOINTS` environment variable (the crash tests
    // stop a child at a compaction step this way); a no-op build without the feature.
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let cli = Cli::parse();
    let default_level = if matches!(cli.command, Command::Run { .. } | Command::Node { .. }) {
        "info"
    } else {
        "warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("MILLRACE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    // Colours only on a terminal: logs piped to a file or a supervisor stay plain.
    let colours = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colours)
        .init();
    let result = match cli.command {
        Command::Run {
            config,
            until_caught_up,
        } => run(config, until_caught_up),
        Command::Node { config } => node(config),
        Command::Cluster { action, config } => match action {
            ClusterAction::Status => cluster_status(config),
        },
        Command::Dlq {
            action,
            pipeline,
            config,
            all,
        } => dlq(action, &pipeline, &config, all),
        Command::Topics { config } => topics(config),
        Command::Compact { config, topic } => compact(config, topic),
        Command::Produce(arguments) => produce(arguments),
        Command::Consume(arguments) => consume(arguments),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("millrace: error: {message}");
            ExitCode::FAILURE
        }
    }
}

type CliResult = Result<(), String>;

/// Starts the config's topics without running its pipelines (the tools
/// read and write topics; `run` is what runs pipelines). Dead-letter topics
/// are there, so `dlq` and `consume` can read them.
fn start(config: &std::path::Path) -> Result<Runtime, String> {
    let config = Config::from_file(config).map_err(|error| error.to_string())?;
    Runtime::start_paused(config).map_err(|error| error.to_string())
}

fn dlq(action: DlqAction, pipeline: &str, config: &std::path::Path, all: bool) -> CliResult {
    let runtime = start(config)?;
    let result = match action {
        DlqAction::List => {
            let (letters, undecodable) = runtime
                .dead_letters(pipeline)
                .map_err(|error| error.to_string())?;
            let mut out = std::io::stdout().lock();
            for letter in &letters {
                let mut json = letter.entry.to_json();
                if let Some(object) = json.as_object_mut() {
                    object.insert("dlq_partition".into(), letter.partition.0.into());
                    object.insert("dlq_offset".into(), letter.offset.0.into());
                }
                if writeln!(out, "{json}").is_err() {
                    break;
                }
            }
            for (partition, offset, error) in &undecodable {
                eprintln!("millrace: warning: dead letter at partition {partition} offset {offset} does not decode: {error}");
            }
            Ok(())
        }
        DlqAction::Replay => {
            let from = if all {
                millrace::dead_letter::ReplayFrom::Start
            } else {
                millrace::dead_letter::ReplayFrom::LastReplayed
            };
            runtime
                .replay_dead_letters(pipeline, from)
                .map(|summary| {
                    println!("replayed {} dead letters of {pipeline}", summary.replayed);
                    for (partition, offset, error) in &summary.undecodable {
                        eprintln!("millrace: warning: dead letter at partition {partition} offset {offset} does not decode: {error}");
                    }
                })
                .map_err(|error| error.to_string())
        }
    };
    runtime.shutdown().map_err(|error| error.to_string())?;
    result
}

fn tokio_runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| format!("cannot start the CLI's event loop: {error}"))
}

fn run(config: PathBuf, until_caught_up: bool) -> CliResult {
    // The signal streams are registered before the runtime starts, so a
    // SIGTERM or SIGINT that arrives at any point after "serving" (or even
    // during the start) leads to a graceful shutdown, never to the default
    // action of dying by the signal.
    let event_loop = tokio_runtime()?;
    let (mut terminate, mut interrupt) = event_loop.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let terminate = signal(SignalKind::terminate())
            .map_err(|error| format!("cannot listen for SIGTERM: {error}"))?;
        let interrupt = signal(SignalKind::interrupt())
            .map_err(|error| format!("cannot listen for SIGINT: {error}"))?;
        Ok::<_, String>((terminate, interrupt))
    })?;
    let config = Config::from_file(&config).map_err(|error| error.to_string())?;
    let runtime = Runtime::start(config).map_err(|error| error.to_string())?;
    for topic in runtime.topics() {
        let partitions = runtime.partition_count(&topic).unwrap_or(0);
        tracing::info!(%topic, partitions, "serving");
    }
    let pipelines: Vec<String> = runtime
        .config()
        .pipelines
        .iter()
        .map(|pipeline| pipeline.name.clone())
        .collect();
    event_loop.block_on(async {
        let caught_up = async {
            if !until_caught_up {
                return std::future::pending().await;
            }
            loop {
                if pipelines
                    .iter()
                    .all(|pipeline| runtime.caught_up(pipeline).unwrap_or(true))
                {
                    tracing::info!("every pipeline has caught up");
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM received"),
            _ = interrupt.recv() => tracing::info!("SIGINT received"),
            _ = caught_up => {}
        }
    });
    tracing::info!("shutting down");
    runtime.shutdown().map_err(|error| error.to_string())
}

fn node(path: PathBuf) -> CliResult {
    let config = Config::from_file(&path).map_err(|error| error.to_string())?;
    if config.node.is_none() {
        return Err(format!(
            "{}: millrace node needs a [node] section (id, listen, peers)",
            path.display()
        ));
    }
    run(path, false)
}

/// Prints the replicas of a running node, from its `/health`.
fn cluster_status(path: PathBuf) -> CliResult {
    let config = Config::from_file(&path).map_err(|error| error.to_string())?;
    let Some(node) = &config.node else {
        return Err(format!(
            "{}: no [node] section: this is a single node, not a cluster member",
            path.display()
        ));
    };
    let Some(http) = &config.http else {
        return Err(format!(
            "{}: cluster status reads the running node's /health; the config needs [http] listen",
            path.display()
        ));
    };
    let body = http_get(http.listen, "/health").map_err(|error| {
        format!(
            "node {} at {}: {error} (is it running?)",
            node.id, http.listen
        )
    })?;
    let health: serde_json::Value = serde_json::from_str(&body)
        .map_err(|error| format!("node {}: /health is not JSON: {error}", node.id))?;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{:<24} {:>9} {:>5} {:>8} {:>6} {:>8} {:>10} {:>10} {:>10}  REPLICAS (node:matched/lag)",
        "TOPIC", "PARTITION", "NODE", "ROLE", "LEADER", "TERM", "COMMIT", "APPLIED", "LAST"
    );
    let partitions = health["partitions"].as_array().cloned().unwrap_or_default();
    for partition in partitions {
        let replica = &partition["replica"];
        if replica.is_null() {
            continue;
        }
        let number = |value: &serde_json::Value| value.as_u64().unwrap_or(0);
        let node_id = number(&replica["node_id"]);
        let leader = number(&replica["leader"]);
        let role = if leader == node_id {
            "leader"
        } else if leader == 0 {
            "no-lead"
        } else {
            "follower"
        };
        let replicas: Vec<String> = replica["replicas"]
            .as_array()
            .map(|replicas| {
                replicas
                    .iter()
                    .map(|entry| {
                        format!(
                            "{}:{}/{}",
                            number(&entry["node_id"]),
                            number(&entry["matched_index"]),
                            number(&entry["lag"])
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<24} {:>9} {:>5} {:>8} {:>6} {:>8} {:>10} {:>10} {:>10}  {}",
            partition["topic"].as_str().unwrap_or("?"),
            number(&partition["partition"]),
            node_id,
            role,
            leader,
            number(&replica["term"]),
            number(&replica["commit_index"]),
            number(&replica["applied_index"]),
            number(&replica["last_index"]),
            if replicas.is_empty() {
                "-".to_owned()
            } else {
                replicas.join(" ")
            }
        );
    }
    Ok(())
}

/// A plain HTTP/1.0 GET on loopback, for `cluster status`.
fn http_get(address: std::net::SocketAddr, path: &str) -> Result<String, String> {
    use std::io::Read;
    let timeout = Duration::from_secs(5);
    let mut stream = std::net::TcpStream::connect_timeout(&address, timeout)
        .map_err(|error| error.to_string())?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|error| error.to_string())?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n")
        .map_err(|error| error.to_string())?;
    let mut response = String::new();
    stream
        .take(64 * 1024 * 1024)
        .read_to_string(&mut response)
        .map_err(|error| error.to_string())?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| "malformed HTTP response".to_owned())?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(format!(
            "GET {path}: {}",
            head.lines().next().unwrap_or("no status line")
        ));
    }
    Ok(body.to_owned())
}

fn topics(config: PathBuf) -> CliResult {
    let runtime = start(&config)?;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{:<32} {:>9} {:>16} {:>16} {:>16}",
        "TOPIC", "PARTITION", "LOG_START", "LOG_END_OFFSET", "HIGH_WATERMARK"
    );
    for topic in runtime.topics() {
        for partition in 0..runtime.partition_count(&topic).unwrap_or(0) {
            let offsets = runtime
                .offsets_blocking(&topic, PartitionId(partition))
                .map_err(|error| error.to_string())?;
            let _ = writeln!(
                out,
                "{topic:<32} {partition:>9} {:>16} {:>16} {:>16}",
                offsets.log_start_offset, offsets.log_end_offset, offsets.high_watermark
            );
        }
    }
    drop(out);
    runtime.shutdown().map_err(|error| error.to_string())
}

fn compact(config: PathBuf, topic: String) -> CliResult {
    let runtime = start(&config)?;
    let result = compact_with(&runtime, &topic);
    let shutdown = runtime.shutdown().map_err(|error| error.to_string());
    result.and(shutdown)
}

fn compact_with(runtime: &Runtime, topic: &str) -> CliResult {
    let cleanup = runtime
        .config()
        .topic(topic)
        .map(|topic| topic.cleanup)
        .ok_or_else(|| format!("unknown topic {topic:?}"))?;
    if !cleanup.compacts() {
        return Err(format!(
            "topic {topic} has cleanup = \"{cleanup}\"; set cleanup = \"compact\" or \"compact,delete\" to compact it"
        ));
    }
    // The startup load must reach every block before a partition can be compacted.
    while runtime
        .health()
        .partitions
        .iter()
        .any(|partition| partition.topic == topic && !partition.load.is_terminal())
    {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let summary = runtime
        .compact_blocking(topic)
        .ok_or_else(|| format!("topic {topic} could not be compacted (the runtime is stopping)"))?;
    let mut failed = 0;
    for (partition, outcome) in &summary.partitions {
        let line = match outcome {
            PartitionCompaction::Compacted {
                bytes_before,
                bytes_after,
                records_before,
                records_after,
                seconds,
            } => {
                format!(
                    "compacted: {records_before} -> {records_after} records, {bytes_before} -> {bytes_after} bytes in {seconds:.3}s"
                )
            }
            PartitionCompaction::NothingToDo => {
                "nothing to compact now (no sealed, durable block)".to_owned()
            }
            PartitionCompaction::NotCompactable { reason } => {
                format!("not compactable now: {reason}")
            }
            PartitionCompaction::Skipped { reason } => format!("skipped: {reason}"),
            PartitionCompaction::Failed { error } => {
                failed += 1;
                format!("failed: {error}")
            }
            other => format!("{other:?}"),
        };
        println!("{topic} {partition} {line}");
    }
    if failed > 0 {
        return Err(format!(
            "{failed} partition(s) failed to compact; the old data is still served"
        ));
    }
    Ok(())
}

/// One stdin line, or why reading stopped.
enum Line {
    /// A record and its 1-based line number (for errors).
    Record(u64, Record),
    Invalid(String),
}

/// Most bytes the batch encoding adds around its records: frame header and
/// record batch header.
const BATCH_OVERHEAD_BYTES: usize =
    millrace::storage::batch::FRAME_HEADER_BYTES + millrace::storage::batch::BATCH_HEADER_BYTES;
/// Most bytes a record without headers takes in a batch besides its key and
/// value: length varint (5), attributes (1), timestamp delta varlong (10),
/// offset delta varint (5), key and value length varints (5 each), header
/// count varint (5).
const RECORD_OVERHEAD_BYTES_MAX: usize = 36;

/// One batch of input lines: `first`, then what is already queued, up to
/// [`PRODUCE_BATCH_RECORDS_MAX`] records and `bytes_max` (conservatively
/// counted; only a record alone can be over it).
struct Gathered {
    records: Vec<Record>,
    /// The conservative size of `records`.
    bytes: usize,
    /// A record that did not fit: it starts the next batch.
    carried: Option<(u64, Record)>,
    /// A bad line met while gathering: everything before it is in `records`.
    failure: Option<String>,
}

fn gather_batch(
    first: Record,
    receiver: &mut tokio::sync::mpsc::Receiver<Line>,
    bytes_max: usize,
) -> Gathered {
    let mut gathered = Gathered {
        bytes: BATCH_OVERHEAD_BYTES + record_bytes_max(&first),
        records: vec![first],
        carried: None,
        failure: None,
    };
    while gathered.records.len() < PRODUCE_BATCH_RECORDS_MAX {
        match receiver.try_recv() {
            Ok(Line::Record(number, record)) => {
                let bytes = record_bytes_max(&record);
                if gathered.bytes + bytes > bytes_max {
                    gathered.carried = Some((number, record));
                    break;
                }
                gathered.bytes += bytes;
                gathered.records.push(record);
            }
            Ok(Line::Invalid(message)) => {
                gathered.failure = Some(message);
                break;
            }
            Err(_) => break,
        }
    }
    gathered
}

/// An upper bound of what `record` adds to an encoded batch, so the CLI never
/// gathers lines into a batch over the topic's `max_batch_bytes` (the limit
/// is per produce call; how many lines go in one call is the CLI's choice).
fn record_bytes_max(record: &Record) -> usize {
    RECORD_OVERHEAD_BYTES_MAX
        + record.key.as_ref().map_or(0, |key| key.len())
        + record.value.as_ref().map_or(0, |value| value.len())
}

fn produce(arguments: ProduceArgs) -> CliResult {
    let config = match (&arguments.config, &arguments.brokers) {
        (_, Some(brokers)) => return brokers::produce(&arguments, brokers),
        (Some(config), None) => config,
        (None, None) => return Err("produce needs -c CONFIG or --brokers HOST:PORT".into()),
    };
    let runtime = start(config)?;
    let result = produce_with(&runtime, &arguments);
    let shutdown = runtime.shutdown().map_err(|error| error.to_string());
    result.and(shutdown)
}

fn produce_with(runtime: &Runtime, arguments: &ProduceArgs) -> CliResult {
    let producer = runtime
        .producer(&arguments.topic)
        .map_err(|error| error.to_string())?;
    let partitions = runtime.partition_count(&arguments.topic).unwrap_or(0);
    if let Some(partition) = arguments.partition {
        if partition >= partitions {
            return Err(format!(
                "topic {} has no partition {partition} (it has {partitions})",
                arguments.topic
            ));
        }
    }
    let line_bytes_max = runtime
        .config()
        .topic(&arguments.topic)
        .map_or(1 << 20, |topic| topic.max_batch_bytes as usize);
    let delimiter = arguments.key_delimiter.clone().map(String::into_bytes);
    if delimiter
        .as_ref()
        .is_some_and(|delimiter| delimiter.is_empty())
    {
        return Err("-K: the key delimiter must not be empty".into());
    }
    let (lines, mut receiver) = tokio::sync::mpsc::channel(STDIN_LINES_QUEUED_MAX);
    std::thread::Builder::new()
        .name("millrace-stdin".into())
        .spawn(move || {
            read_stdin_lines(
                lines,
                delimiter,
                line_bytes_max,
                "the topic's max_batch_bytes",
            )
        })
        .map_err(|error| format!("cannot start the stdin reader: {error}"))?;
    let batch_bytes_max = line_bytes_max;
    let print = arguments.print_acks;
    let partition = arguments.partition;

    tokio_runtime()?.block_on(async move {
        // Sends run concurrently; a printer awaits them in input order, so
        // acknowledgements print in input order as soon as each is durable.
        let (sends, mut sends_in_order) =
            tokio::sync::mpsc::channel::<tokio::task::JoinHandle<_>>(PRODUCE_BATCHES_IN_FLIGHT_MAX);
        let printer = tokio::spawn(async move {
            while let Some(send) = sends_in_order.recv().await {
                print_acks(send.await, print, &mut std::io::stdout().lock())?;
            }
            Ok::<(), String>(())
        });
        let mut failure = None;
        // A record that did not fit in the previous batch starts the next one.
        let mut carried: Option<(u64, Record)> = None;
        let mut stopped = false;
        loop {
            let (first_line, first) = match carried.take() {
                Some(carried) => carried,
                None => match receiver.recv().await {
                    Some(Line::Record(number, record)) => (number, record),
                    Some(Line::Invalid(message)) => {
                        failure = Some(message);
                        break;
                    }
                    None => break,
                },
            };
            let gathered = gather_batch(first, &mut receiver, batch_bytes_max);
            let batch_bytes = gathered.bytes;
            carried = gathered.carried;
            if gathered.failure.is_some() {
                failure = gathered.failure;
            }
            let send = send_records(producer.clone(), partition, gathered.records, first_line);
            // Only a record alone in its batch can be over the limit (the
            // bound is conservative, so it may still fit). Its outcome is
            // awaited before anything after it is sent, so that if it is
            // refused, no later line is stored.
            let handle = if batch_bytes > batch_bytes_max {
                let outcome = send.await;
                if outcome.is_err() {
                    stopped = true;
                }
                tokio::spawn(async move { outcome })
            } else {
                tokio::spawn(send)
            };
            if sends.send(handle).await.is_err() {
                break; // the printer stopped on an error; it reports it below
            }
            if stopped {
                break;
            }
            if failure.is_some() {
                break;
            }
        }
        // Everything sent before a bad line is still acknowledged and printed.
        drop(sends);
        let printed = printer
            .await
            .map_err(|error| format!("printer task failed: {error}"))?;
        printed?;
        failure.map_or(Ok(()), Err)
    })
}

/// Sends one batch (to `partition`, or by key / round-robin) and returns each
/// record's place. An oversized record alone in its batch is named by its
/// stdin line.
async fn send_records(
    producer: millrace::Producer,
    partition: Option<u32>,
    batch: Vec<Record>,
    first_line: u64,
) -> Result<Vec<RecordMetadata>, String> {
    let alone = batch.len() == 1;
    let sent = match partition {
        Some(partition) => producer
            .send_batch_to(PartitionId(partition), batch)
            .await
            .map(|ack| {
                (0..=ack.last_offset.0 - ack.base_offset.0)
                    .map(|delta| RecordMetadata {
                        partition: ack.partition,
                        offset: Offset(ack.base_offset.0 + delta),
                    })
                    .collect()
            }),
        None => producer.send_batch(batch).await,
    };
    sent.map_err(|error| match error {
        millrace::ProduceError::TooLarge { .. } if alone => {
            format!("stdin line {first_line}: record too large: {error}")
        }
        error => error.to_string(),
    })
}

type SendOutcome = Result<Result<Vec<RecordMetadata>, String>, tokio::task::JoinError>;

fn print_acks(outcome: SendOutcome, print: bool, out: &mut impl Write) -> CliResult {
    let placed = outcome.map_err(|error| format!("produce task failed: {error}"))??;
    if print {
        for record in placed {
            writeln!(out, "{} {}", record.partition, record.offset)
                .map_err(|error| format!("stdout: {error}"))?;
        }
        out.flush().map_err(|error| format!("stdout: {error}"))?;
    }
    Ok(())
}

/// Reads stdin line by line with a bound on line length, so garbage without
/// newlines never grows memory. Stops at the first invalid line.
/// `line_limit` names where `line_bytes_max` comes from, for the error.
fn read_stdin_lines(
    lines: tokio::sync::mpsc::Sender<Line>,
    delimiter: Option<Vec<u8>>,
    line_bytes_max: usize,
    line_limit: &'static str,
) {
    let stdin = std::io::stdin();
    let mut reader = stdin.lock();
    let mut number = 0u64;
    loop {
        number += 1;
        let mut line = Vec::new();
        let mut limited = (&mut reader).take(line_bytes_max as u64 + 1);
        match limited.read_until(b'\n', &mut line) {
            Ok(0) => return,
            Ok(_) => {}
            Err(error) => {
                let _ = lines.blocking_send(Line::Invalid(format!("stdin line {number}: {error}")));
                return;
            }
        }
        let complete = line.last() == Some(&b'\n');
        if complete {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
        }
        if line.len() > line_bytes_max || (!complete && line.len() == line_bytes_max + 1) {
            let _ = lines.blocking_send(Line::Invalid(format!(
                "stdin line {number}: longer than {line_bytes_max} bytes ({line_limit})"
            )));
            return;
        }
        let parsed = match &delimiter {
            None => Line::Record(number, Record::new(line)),
            Some(delimiter) => match find(&line, delimiter) {
                Some(at) => {
                    let value = line[at + delimiter.len()..].to_vec();
                    line.truncate(at);
                    Line::Record(number, Record::new(value).with_key(line))
                }
                None => Line::Invalid(format!(
                    "stdin line {number}: no key delimiter {:?} (with -K each line is \"key DELIM value\")",
                    String::from_utf8_lossy(delimiter)
                )),
            },
        };
        let stop = matches!(parsed, Line::Invalid(_));
        if lines.blocking_send(parsed).is_err() || stop {
            return;
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// A write to stdout failed. A closed pipe (`consume | head`) is the reader
/// saying it has enough, not an error: `consume` then ends with exit 0.
fn stdout_error(error: std::io::Error) -> String {
    if error.kind() == std::io::ErrorKind::BrokenPipe {
        return STDOUT_CLOSED.to_owned();
    }
    format!("stdout: {error}")
}

/// The marker `stdout_error` returns for a closed pipe.
const STDOUT_CLOSED: &str = "stdout closed";

fn consume(arguments: ConsumeArgs) -> CliResult {
    let config = match (&arguments.config, &arguments.brokers) {
        (_, Some(brokers)) => return brokers::consume(&arguments, brokers),
        (Some(config), None) => config,
        (None, None) => return Err("consume needs -c CONFIG or --brokers HOST:PORT".into()),
    };
    // clap does not apply `requires` when the required argument conflicts with a present one.
    if arguments.group.is_some() {
        return Err("--group needs --brokers (with -c, consume reads without a group)".into());
    }
    let runtime = start(config)?;
    let result = tokio_runtime()
        .and_then(|event_loop| event_loop.block_on(consume_with(&runtime, &arguments)));
    let result = result.or_else(|error| {
        if error == STDOUT_CLOSED {
            Ok(())
        } else {
            Err(error)
        }
    });
    let shutdown = runtime.shutdown().map_err(|error| error.to_string());
    result.and(shutdown)
}

struct PartitionCursor {
    partition: PartitionId,
    position: Offset,
    /// With --until-end: the high watermark at start.
    end: Option<Offset>,
}

async fn consume_with(runtime: &Runtime, arguments: &ConsumeArgs) -> CliResult {
    let topic = &arguments.topic;
    let partitions = runtime
        .partition_count(topic)
        .ok_or_else(|| format!("unknown topic {topic:?}"))?;
    let selected: Vec<u32> = match arguments.partition {
        Some(partition) if partition >= partitions => {
            return Err(format!(
                "topic {topic} has no partition {partition} (it has {partitions})"
            ))
        }
        Some(partition) => vec![partition],
        None => (0..partitions).collect(),
    };
    let format = parse_format(&arguments.format)?;
    let mut cursors = Vec::new();
    for partition in selected {
        let partition = PartitionId(partition);
        let offsets = runtime
            .offsets(topic, partition)
            .await
            .map_err(|error| error.to_string())?;
        let position = match (arguments.from_beginning, arguments.offset) {
            (true, _) => offsets.log_start_offset,
            (false, Some(offset)) => Offset(offset),
            (false, None) => offsets.high_watermark,
        };
        let end = arguments.until_end.then_some(offsets.high_watermark);
        cursors.push(PartitionCursor {
            partition,
            position,
            end,
        });
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut line = Vec::new();
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        cursors.retain(|cursor| cursor.end.is_none_or(|end| cursor.position < end));
        if cursors.is_empty() {
            break;
        }
        // With one partition, long-poll; with several, poll each briefly in turn.
        let max_wait = if cursors.len() == 1 {
            Duration::from_millis(500)
        } else {
            Duration::from_millis(20)
        };
        let mut received = false;
        for cursor in &mut cursors {
            let options = FetchOptions {
                max_bytes: millrace::runtime::FETCH_MAX_BYTES_DEFAULT,
                max_wait,
            };
            let fetch = runtime.fetch(topic, cursor.partition, cursor.position, options);
            let result = tokio::select! {
                result = fetch => result,
                _ = &mut interrupted => return out.flush().map_err(stdout_error),
            };
            let result = match result {
                Ok(result) => result,
                Err(millrace::FetchError::ShuttingDown) => return Ok(()),
                Err(error) => return Err(format!("partition {}: {error}", cursor.partition)),
            };
            for record in &result.records {
                if cursor.end.is_some_and(|end| record.offset >= end) {
                    break;
                }
                line.clear();
                render(&format, topic, cursor.partition, record, &mut line);
                line.push(b'\n');
                out.write_all(&line).map_err(stdout_error)?;
            }
            received |= !result.records.is_empty();
            cursor.position = result.next_offset;
        }
        if !received {
            out.flush().map_err(stdout_error)?;
        }
    }
    out.flush().map_err(stdout_error)
}

enum Piece {
    Text(Vec<u8>),
    Topic,
    Partition,
    Offset,
    Key,
    Value,
    Timestamp,
}

fn parse_format(format: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut text = Vec::new();
    let mut characters = format.chars();
    while let Some(character) = characters.next() {
        let piece = match character {
            '%' => match characters.next() {
                Some('t') => Piece::Topic,
                Some('p') => Piece::Partition,
                Some('o') => Piece::Offset,
                Some('k') => Piece::Key,
                Some('v') => Piece::Value,
                Some('T') => Piece::Timestamp,
                Some('%') => {
                    text.push(b'%');
                    continue;
                }
                other => {
                    return Err(format!(
                        "-f {format:?}: unknown directive %{} (use %t %p %o %k %v %T or %%)",
                        other.map_or(String::new(), String::from)
                    ))
                }
            },
            '\\' => {
                match characters.next() {
                    Some('n') => text.push(b'\n'),
                    Some('t') => text.push(b'\t'),
                    Some(other) => text.extend(other.to_string().as_bytes()),
                    None => text.push(b'\\'),
                }
                continue;
            }
            other => {
                text.extend(other.to_string().as_bytes());
                continue;
            }
        };
        if !text.is_empty() {
            pieces.push(Piece::Text(std::mem::take(&mut text)));
        }
        pieces.push(piece);
    }
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(pieces)
}

fn render(
    format: &[Piece],
    topic: &str,
    partition: PartitionId,
    record: &FetchedRecord,
    out: &mut Vec<u8>,
) {
    for piece in format {
        match piece {
            Piece::Text(text) => out.extend_from_slice(text),
            Piece::Topic => out.extend_from_slice(topic.as_bytes()),
            Piece::Partition => out.extend_from_slice(partition.0.to_string().as_bytes()),
            Piece::Offset => out.extend_from_slice(record.offset.0.to_string().as_bytes()),
            Piece::Key => out.extend_from_slice(record.key.as_deref().unwrap_or_default()),
            Piece::Value => out.extend_from_slice(record.value.as_deref().unwrap_or_default()),
            Piece::Timestamp => out.extend_from_slice(record.timestamp_ms.to_string().as_bytes()),
        }
    }
}

/// `produce` and `consume` with `--brokers`: the same input, output and
/// partitioning as with `-c`, over the Kafka protocol
/// ([`millrace::kafka::client`]) to running nodes or Kafka brokers.
mod brokers {
    use super::{
        gather_batch, parse_format, read_stdin_lines, render, stdout_error, tokio_runtime,
        CliResult, ConsumeArgs, Line, ProduceArgs, STDIN_LINES_QUEUED_MAX, STDOUT_CLOSED,
    };
    use millrace::kafka::client::{
        ClientError, FetchPosition, KafkaClient, OffsetSpec, PartitionBatch,
    };
    use millrace::partitioner::partition_for_key;
    use millrace::{Offset, PartitionId, Record};
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    /// Longest stdin line, and most record bytes in one produce request:
    /// Kafka's default `max.message.bytes` is about 1 MiB (a broker's own
    /// limit is not known to the client; it refuses with MESSAGE_TOO_LARGE).
    const BATCH_BYTES_MAX: usize = 1024 * 1024;
    /// How long one fetch may wait at the end of the log for new records.
    const FETCH_MAX_WAIT: Duration = Duration::from_millis(500);
    /// Kafka's "the batch is over the broker's size limit" error codes.
    const MESSAGE_TOO_LARGE: i16 = 10;
    const RECORD_LIST_TOO_LARGE: i16 = 18;

    fn connect(brokers: &str, topic: &str) -> Result<(KafkaClient, u32), String> {
        let mut client = KafkaClient::connect(brokers).map_err(|error| error.to_string())?;
        let partitions = client
            .partition_count(topic)
            .map_err(|error| error.to_string())?;
        Ok((client, partitions))
    }

    fn check_partition(topic: &str, partition: Option<u32>, partitions: u32) -> CliResult {
        match partition {
            Some(partition) if partition >= partitions => Err(format!(
                "topic {topic} has no partition {partition} (it has {partitions})"
            )),
            _ => Ok(()),
        }
    }

    pub(super) fn produce(arguments: &ProduceArgs, brokers: &str) -> CliResult {
        let delimiter = arguments.key_delimiter.clone().map(String::into_bytes);
        if delimiter
            .as_ref()
            .is_some_and(|delimiter| delimiter.is_empty())
        {
            return Err("-K: the key delimiter must not be empty".into());
        }
        let topic = &arguments.topic;
        let (mut client, partitions) = connect(brokers, topic)?;
        check_partition(topic, arguments.partition, partitions)?;
        let (lines, mut receiver) = tokio::sync::mpsc::channel(STDIN_LINES_QUEUED_MAX);
        std::thread::Builder::new()
            .name("millrace-stdin".into())
            .spawn(move || {
                read_stdin_lines(
                    lines,
                    delimiter,
                    BATCH_BYTES_MAX,
                    "the most one --brokers produce request carries",
                )
            })
            .map_err(|error| format!("cannot start the stdin reader: {error}"))?;
        let mut placement = Placement {
            partitions,
            fixed: arguments.partition,
            round_robin: 0,
        };
        let mut out = std::io::stdout().lock();
        // A record that did not fit in the previous batch starts the next one.
        let mut carried: Option<(u64, Record)> = None;
        loop {
            let (first_line, first) = match carried.take() {
                Some(carried) => carried,
                None => match receiver.blocking_recv() {
                    Some(Line::Record(number, record)) => (number, record),
                    Some(Line::Invalid(message)) => return Err(message),
                    None => return Ok(()),
                },
            };
            let gathered = gather_batch(first, &mut receiver, BATCH_BYTES_MAX);
            carried = gathered.carried;
            let failure = gathered.failure;
            // Sent and acknowledged before the next batch is gathered, so a
            // refused batch stops everything after it and acks print in order.
            let placed = send(
                &mut client,
                topic,
                &mut placement,
                gathered.records,
                first_line,
            )?;
            if arguments.print_acks {
                for (partition, offset) in placed {
                    writeln!(out, "{partition} {offset}")
                        .map_err(|error| format!("stdout: {error}"))?;
                }
                out.flush().map_err(|error| format!("stdout: {error}"))?;
            }
            if let Some(failure) = failure {
                return Err(failure);
            }
        }
    }

    /// Chooses partitions as the local producer does: `-p`, else
    /// `murmur2(key) % partitions`, else one round-robin partition per batch
    /// (`Producer::send_batch`).
    struct Placement {
        partitions: u32,
        fixed: Option<u32>,
        round_robin: u32,
    }

    impl Placement {
        /// Splits `records` into one batch per partition; returns the
        /// batches and, per record in input order, its (batch, position).
        fn split(&mut self, records: Vec<Record>) -> (Vec<PartitionBatch>, Vec<(usize, usize)>) {
            let unkeyed = match self.fixed {
                Some(partition) => partition,
                None => {
                    let partition = self.round_robin % self.partitions;
                    self.round_robin = self.round_robin.wrapping_add(1);
                    partition
                }
            };
            let mut batches: Vec<PartitionBatch> = Vec::new();
            let mut places = Vec::with_capacity(records.len());
            for record in records {
                let partition = match (&self.fixed, &record.key) {
                    (None, Some(key)) => partition_for_key(key, self.partitions),
                    _ => unkeyed,
                };
                let index = match batches
                    .iter()
                    .position(|batch| batch.partition == partition)
                {
                    Some(index) => index,
                    None => {
                        batches.push(PartitionBatch {
                            partition,
                            records: Vec::new(),
                        });
                        batches.len() - 1
                    }
                };
                places.push((index, batches[index].records.len()));
                batches[index].records.push(record);
            }
            (batches, places)
        }
    }

    /// Produces one gathered batch; returns each record's (partition,
    /// offset) in input order once acknowledged.
    fn send(
        client: &mut KafkaClient,
        topic: &str,
        placement: &mut Placement,
        records: Vec<Record>,
        first_line: u64,
    ) -> Result<Vec<(u32, Offset)>, String> {
        let alone = records.len() == 1;
        let (batches, places) = placement.split(records);
        let base_offsets =
            client
                .produce(topic, &batches)
                .map_err(|error| match error.kafka_code() {
                    Some(MESSAGE_TOO_LARGE | RECORD_LIST_TOO_LARGE) if alone => {
                        format!("stdin line {first_line}: record too large: {error}")
                    }
                    _ => error.to_string(),
                })?;
        Ok(places
            .into_iter()
            .map(|(index, position)| {
                (
                    batches[index].partition,
                    Offset(base_offsets[index].0 + position as u64),
                )
            })
            .collect())
    }

    struct Cursor {
        partition: u32,
        position: Offset,
        /// With --until-end: the high watermark at start.
        end: Option<Offset>,
        /// With --group: the offset last committed.
        committed: Option<Offset>,
    }

    pub(super) fn consume(arguments: &ConsumeArgs, brokers: &str) -> CliResult {
        consume_with(arguments, brokers).or_else(|error| {
            if error == STDOUT_CLOSED {
                Ok(())
            } else {
                Err(error)
            }
        })
    }

    fn consume_with(arguments: &ConsumeArgs, brokers: &str) -> CliResult {
        let format = parse_format(&arguments.format)?;
        let topic = &arguments.topic;
        let (mut client, partitions) = connect(brokers, topic)?;
        check_partition(topic, arguments.partition, partitions)?;
        let selected: Vec<u32> = match arguments.partition {
            Some(partition) => vec![partition],
            None => (0..partitions).collect(),
        };
        let mut cursors = start_positions(&mut client, arguments, &selected)?;
        let interrupted = interrupt_flag()?;
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        let mut line = Vec::new();
        let client_error = |error: ClientError| error.to_string();
        loop {
            cursors.retain(|cursor| cursor.end.is_none_or(|end| cursor.position < end));
            if cursors.is_empty() || interrupted.load(Ordering::Relaxed) {
                break;
            }
            let positions: Vec<FetchPosition> = cursors
                .iter()
                .map(|cursor| FetchPosition {
                    partition: cursor.partition,
                    offset: cursor.position,
                })
                .collect();
            let fetched = client
                .fetch(topic, &positions, FETCH_MAX_WAIT)
                .map_err(client_error)?;
            let mut received = false;
            for partition in fetched {
                let Some(cursor) = cursors
                    .iter_mut()
                    .find(|cursor| cursor.partition == partition.partition)
                else {
                    continue;
                };
                for record in &partition.records {
                    if cursor.end.is_some_and(|end| record.offset >= end) {
                        break;
                    }
                    line.clear();
                    render(
                        &format,
                        topic,
                        PartitionId(cursor.partition),
                        record,
                        &mut line,
                    );
                    line.push(b'\n');
                    out.write_all(&line).map_err(stdout_error)?;
                }
                received |= !partition.records.is_empty();
                cursor.position = partition.next_offset;
            }
            match &arguments.group {
                // Committed only once what it covers is written out.
                Some(group) => {
                    out.flush().map_err(stdout_error)?;
                    commit(&mut client, group, topic, &mut cursors).map_err(client_error)?;
                }
                None if !received => out.flush().map_err(stdout_error)?,
                None => {}
            }
        }
        out.flush().map_err(stdout_error)
    }

    /// Each selected partition's start (the group's committed offset if it
    /// has one, else --from-beginning, --offset or the high watermark, as
    /// the local mode) and, with --until-end, its high watermark now.
    fn start_positions(
        client: &mut KafkaClient,
        arguments: &ConsumeArgs,
        selected: &[u32],
    ) -> Result<Vec<Cursor>, String> {
        let topic = &arguments.topic;
        let client_error = |error: ClientError| error.to_string();
        let committed = match &arguments.group {
            Some(group) => client
                .committed_offsets(group, topic, selected)
                .map_err(client_error)?,
            None => vec![None; selected.len()],
        };
        let uncommitted = committed.iter().any(Option::is_none);
        let earliest = if uncommitted && arguments.from_beginning {
            Some(
                client
                    .list_offsets(topic, selected, OffsetSpec::Earliest)
                    .map_err(client_error)?,
            )
        } else {
            None
        };
        let by_default = !arguments.from_beginning && arguments.offset.is_none();
        let latest = if arguments.until_end || (uncommitted && by_default) {
            Some(
                client
                    .list_offsets(topic, selected, OffsetSpec::Latest)
                    .map_err(client_error)?,
            )
        } else {
            None
        };
        let mut cursors = Vec::with_capacity(selected.len());
        for (index, &partition) in selected.iter().enumerate() {
            let position = match (committed[index], &earliest, arguments.offset, &latest) {
                (Some(committed), _, _, _) => committed,
                (None, Some(earliest), _, _) => earliest[index],
                (None, None, Some(offset), _) => Offset(offset),
                (None, None, None, Some(latest)) => latest[index],
                (None, None, None, None) => {
                    unreachable!("the latest offsets are listed by default")
                }
            };
            cursors.push(Cursor {
                partition,
                position,
                end: arguments
                    .until_end
                    .then(|| latest.as_ref().map(|latest| latest[index]))
                    .flatten(),
                committed: committed[index],
            });
        }
        Ok(cursors)
    }

    /// Commits each cursor's next offset to print (never past --until-end's
    /// end: records after it were fetched but not printed).
    fn commit(
        client: &mut KafkaClient,
        group: &str,
        topic: &str,
        cursors: &mut [Cursor],
    ) -> Result<(), ClientError> {
        let mut offsets = Vec::new();
        for cursor in cursors.iter() {
            let next = cursor
                .end
                .map_or(cursor.position, |end| end.min(cursor.position));
            if cursor.committed != Some(next) {
                offsets.push((cursor.partition, next));
            }
        }
        client.commit_offsets(group, topic, &offsets)?;
        for (partition, offset) in offsets {
            if let Some(cursor) = cursors
                .iter_mut()
                .find(|cursor| cursor.partition == partition)
            {
                cursor.committed = Some(offset);
            }
        }
        Ok(())
    }

    /// Set on the first SIGINT, so consume stops between fetches, flushes
    /// (and commits) and exits 0 as the local mode does; a second SIGINT
    /// exits at once.
    fn interrupt_flag() -> Result<Arc<AtomicBool>, String> {
        let event_loop = tokio_runtime()?;
        let mut interrupt = event_loop
            .block_on(async {
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            })
            .map_err(|error| format!("cannot listen for SIGINT: {error}"))?;
        let flag = Arc::new(AtomicBool::new(false));
        let set = flag.clone();
        std::thread::Builder::new()
            .name("millrace-sigint".into())
            .spawn(move || {
                event_loop.block_on(async {
                    interrupt.recv().await;
                    set.store(true, Ordering::Relaxed);
                    interrupt.recv().await;
                });
                std::process::exit(130);
            })
            .map_err(|error| format!("cannot start the signal listener: {error}"))?;
        Ok(flag)
    }
}
