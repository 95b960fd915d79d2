//! Real Kafka clients against the `[kafka]` listener: kcat (librdkafka's
//! command-line client), confluent-kafka (librdkafka from Python) and
//! kafka-python (a pure-Python implementation of the protocol) run as child
//! processes against a `Runtime` started in-process on a temporary
//! directory, listening on port 0. The client programs are
//! `tests/kafka/*.py` (and `kcat` itself); they print JSON lines that the
//! tests parse, and every result is also checked against the log read back
//! through the Runtime API.
//!
//! - **Rotation**: each client produces 100,000 keyed records with unique
//!   values to a 3-partition topic and another client consumes them all
//!   (kcat → confluent-kafka, confluent-kafka → kafka-python,
//!   kafka-python → kcat). The log holds every value once, at the place the
//!   producer was told, in the producer's order within each partition; the
//!   consumer saw exactly the log, partition by partition, in offset order.
//! - **Consumer group**: three confluent-kafka members of one group share a
//!   6-partition topic, commit synchronously after each processed batch,
//!   and one of them leaves (close()) midway. Every record is processed
//!   once; every commit is 1 + the last offset its member processed; the
//!   members that took over the leaver's partitions resumed exactly at its
//!   commits; the committed offsets read back with OffsetFetch (a fresh
//!   consumer's `committed()`) and with `Runtime::committed_offset` are the
//!   high watermarks.
//! - **Idempotent producer through a cutting proxy**: confluent-kafka with
//!   `enable.idempotence` and `acks=all` produces through a TCP proxy that
//!   cuts every connection at seeded random points (in the middle of a
//!   request, or by dropping a response after the server handled the
//!   request); Metadata advertises the proxy (`[kafka] advertised`). The
//!   log holds no value twice and every delivered value at its reported
//!   offset, in order.
//!
//! Phases are sequenced by what the clients print (their stdout lines),
//! never by sleeps; every wait has a deadline, and a child still running
//! when its test ends (or fails) is killed. A missing `python3`, Python
//! package or `kcat` is a failure that names what to install (`.ci/run`
//! installs them), not a skip.

mod common;

use common::history::{History, SendOutcome};
use common::XorShift;
use millrace::config::{KafkaConfig, TopicConfig};
use millrace::{Offset, PartitionId, Record, Runtime};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Records each client produces in the rotation tests (the number).
const MESSAGES: usize = 100_000;
/// Partitions of the rotation and proxy topics.
const PARTITIONS: u32 = 3;
/// Keys cycle through this many values, spreading records over partitions.
const KEYS: usize = 16;
/// The longest one client run may take (normally a few seconds).
const CLIENT_DEADLINE: Duration = Duration::from_secs(120);
/// The longest a group phase may take (normally well under a second).
const PHASE_DEADLINE: Duration = Duration::from_secs(60);

const PYTHON: &str = "python3";
/// (module, pip requirement): the versions `.ci/run` installs and these tests were run with.
const CONFLUENT_KAFKA: (&str, &str) = ("confluent_kafka", "confluent-kafka==2.16.1");
const KAFKA_PYTHON: (&str, &str) = ("kafka", "kafka-python==3.0.12");
const SCRIPTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/kafka");

// ---------------------------------------------------------------------------
// What the tests need on the machine: a clear failure when it is missing.

fn require_kcat() {
    match Command::new("kcat").arg("-V").output() {
        Ok(output) if output.status.success() => {}
        Ok(output) => panic!(
            "tests/kafka_clients.rs needs kcat: `kcat -V` exited with {} ({}); install it with \
             `apt-get install kcat` (.ci/run does)",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ),
        Err(error) => panic!(
            "tests/kafka_clients.rs needs kcat on PATH ({error}); install it with \
             `apt-get install kcat` (.ci/run does)"
        ),
    }
}

fn require_python_package((module, requirement): (&str, &str)) {
    match Command::new(PYTHON)
        .args(["-c", &format!("import {module}")])
        .output()
    {
        Ok(output) if output.status.success() => {}
        Ok(output) => panic!(
            "tests/kafka_clients.rs needs the Python package {requirement}: `{PYTHON} -c 'import \
             {module}'` failed: {}; install it with `{PYTHON} -m pip install '{requirement}'` \
             (.ci/run does)",
            String::from_utf8_lossy(&output.stderr)
                .lines()
                .rfind(|line| !line.trim().is_empty())
                .unwrap_or_default()
                .trim()
        ),
        Err(error) => panic!(
            "tests/kafka_clients.rs needs {PYTHON} on PATH ({error}); install Python 3 with pip, \
             then `{PYTHON} -m pip install '{requirement}'` (.ci/run installs the packages)"
        ),
    }
}

// ---------------------------------------------------------------------------
// The broker: a Runtime with the Kafka listener on port 0.

struct Broker {
    // Declared before the directory: the runtime stops before it is removed.
    runtime: Runtime,
    bootstrap: String,
    _directory: tempfile::TempDir,
}

fn start_broker(topics: Vec<TopicConfig>, advertised: Option<(String, u16)>) -> Broker {
    let directory = tempfile::tempdir().expect("tempdir");
    let mut config = common::config(directory.path(), topics);
    config.kafka = Some(KafkaConfig {
        advertised,
        ..common::kafka::loopback()
    });
    let runtime = Runtime::start(config).expect("start the runtime");
    let address = runtime.kafka_address().expect("the kafka listener is on");
    Broker {
        runtime,
        bootstrap: address.to_string(),
        _directory: directory,
    }
}

// ---------------------------------------------------------------------------
// Client processes.

/// A line of a child's stdout, or the end of it.
enum Output {
    Line(String),
    End,
}

/// A running client. Dropping it kills the child if it is still running,
/// so a failing test leaves no process behind.
struct ClientProcess {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stderr: Arc<Mutex<String>>,
    feeder: Option<JoinHandle<()>>,
}

impl ClientProcess {
    /// Starts `command`; each stdout line goes to `events` tagged with `name`.
    fn spawn(
        name: &str,
        mut command: Command,
        events: Sender<(String, Output)>,
        stdin: bool,
    ) -> ClientProcess {
        command
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|error| panic!("{name}: cannot start {command:?}: {error}"));
        let stdout = child.stdout.take().expect("stdout");
        let stderr_pipe = child.stderr.take().expect("stderr");
        let tag = name.to_owned();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if events.send((tag.clone(), Output::Line(line))).is_err() {
                    return;
                }
            }
            let _ = events.send((tag, Output::End));
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let collected = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stderr_pipe);
            let mut chunk = [0u8; 8192];
            while let Ok(n) = reader.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                collected
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
        });
        ClientProcess {
            name: name.to_owned(),
            stdin: child.stdin.take(),
            child,
            stderr,
            feeder: None,
        }
    }

    /// The end of what the child wrote on stderr (for failure messages).
    fn stderr_tail(&self) -> String {
        let stderr = self.stderr.lock().unwrap();
        let start = stderr
            .char_indices()
            .rev()
            .nth(4000)
            .map_or(0, |(index, _)| index);
        stderr[start..].to_owned()
    }

    /// Writes `input` to stdin on a thread, then closes stdin.
    fn feed(&mut self, input: Vec<u8>) {
        let mut stdin = self.stdin.take().expect("stdin is piped");
        self.feeder = Some(std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        }));
    }

    /// Sends one command line to the child's stdin.
    fn command(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is piped");
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|error| panic!("{}: cannot send {line:?}: {error}", self.name));
    }

    /// Waits for the child to exit, up to `deadline`.
    fn wait_exit(&mut self, deadline: Instant) -> ExitStatus {
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) => {}
                Err(error) => panic!("{}: wait: {error}", self.name),
            }
            assert!(
                Instant::now() < deadline,
                "{}: still running after its output ended; stderr:\n{}",
                self.name,
                self.stderr_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ClientProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        if let Some(feeder) = self.feeder.take() {
            let _ = feeder.join();
        }
    }
}

/// The next event before `deadline`, or `None` when it passed.
fn receive<T>(events: &Receiver<T>, deadline: Instant) -> Option<T> {
    let left = deadline.saturating_duration_since(Instant::now());
    match events.recv_timeout(left) {
        Ok(event) => Some(event),
        Err(RecvTimeoutError::Timeout) => None,
        Err(RecvTimeoutError::Disconnected) => panic!("client output channel closed"),
    }
}

fn parse_line(name: &str, line: &str) -> Value {
    serde_json::from_str(line)
        .unwrap_or_else(|error| panic!("{name}: stdout line is not JSON ({error}): {line:?}"))
}

/// What a client printed and how it ended.
struct Finished {
    lines: Vec<Value>,
    status: ExitStatus,
    stderr: String,
}

/// Runs a client to its end (with `input` on stdin, if any).
fn run_client(name: &str, command: Command, input: Option<Vec<u8>>) -> Finished {
    let started = Instant::now();
    let deadline = started + CLIENT_DEADLINE;
    let (sender, events) = mpsc::channel();
    let mut process = ClientProcess::spawn(name, command, sender, input.is_some());
    if let Some(input) = input {
        process.feed(input);
    }
    let mut lines = Vec::new();
    loop {
        match receive(&events, deadline) {
            Some((_, Output::Line(line))) => lines.push(parse_line(name, &line)),
            Some((_, Output::End)) => break,
            None => panic!(
                "{name}: not finished after {CLIENT_DEADLINE:?} ({} lines so far); stderr:\n{}",
                lines.len(),
                process.stderr_tail()
            ),
        }
    }
    let status = process.wait_exit(deadline);
    let stderr = process.stderr_tail();
    eprintln!(
        "{name}: {} lines, {status}, {:.1} s",
        lines.len(),
        started.elapsed().as_secs_f64()
    );
    Finished {
        lines,
        status,
        stderr,
    }
}

fn python(script: &str) -> Command {
    let mut command = Command::new(PYTHON);
    command.arg(Path::new(SCRIPTS).join(script));
    command
}

// ---------------------------------------------------------------------------
// Records as clients print them and as the log holds them.

#[derive(Clone, Debug, PartialEq, Eq)]
struct Rec {
    partition: u32,
    offset: u64,
    key: Option<String>,
    value: String,
}

/// A consumed record (kcat -J's shape, which the scripts share), or `None`
/// for the other lines (those have a "type").
fn record_of(line: &Value) -> Option<Rec> {
    if line.get("type").is_some() {
        return None;
    }
    let number = |field: &str| {
        line.get(field)
            .and_then(Value::as_u64)
            .unwrap_or_else(|| panic!("record line without {field}: {line}"))
    };
    Some(Rec {
        partition: number("partition") as u32,
        offset: number("offset"),
        key: line.get("key").and_then(Value::as_str).map(str::to_owned),
        value: line
            .get("payload")
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("record line without payload: {line}"))
            .to_owned(),
    })
}

fn of_type<'a>(lines: &'a [Value], kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    lines
        .iter()
        .filter(move |line| line.get("type").and_then(Value::as_str) == Some(kind))
}

/// Delivery reports: (value, partition, offset).
fn acks_of(lines: &[Value]) -> Vec<(String, u32, u64)> {
    of_type(lines, "ack")
        .map(|line| {
            (
                line["payload"].as_str().expect("ack payload").to_owned(),
                line["partition"].as_u64().expect("ack partition") as u32,
                line["offset"].as_u64().expect("ack offset"),
            )
        })
        .collect()
}

/// Every record of `topic`, read through the Runtime API.
fn read_log(runtime: &Runtime, topic: &str, partitions: u32) -> Vec<Rec> {
    let mut records = Vec::new();
    for partition in 0..partitions {
        for record in common::read_partition(runtime, topic, PartitionId(partition)) {
            records.push(Rec {
                partition,
                offset: record.offset.0,
                key: record
                    .key
                    .as_deref()
                    .map(|key| String::from_utf8_lossy(key).into_owned()),
                value: String::from_utf8_lossy(common::value_of(&record)).into_owned(),
            });
        }
    }
    records
}

fn value_for(prefix: &str, n: usize) -> String {
    format!("{prefix}-{n:06}")
}

fn key_for(n: usize) -> String {
    format!("k{}", n % KEYS)
}

/// The sequence number in a value `PREFIX-NNNNNN`.
fn sequence_of(value: &str) -> usize {
    value
        .rsplit('-')
        .next()
        .and_then(|digits| digits.parse().ok())
        .unwrap_or_else(|| panic!("value {value:?} has no sequence number"))
}

/// Within each partition, the producer's order: sequence numbers increase
/// with the offset. Returns how many records each partition holds.
fn assert_producer_order(context: &str, records: &[Rec], partitions: u32) -> Vec<usize> {
    let mut counts = vec![0; partitions as usize];
    let mut last: HashMap<u32, (u64, usize)> = HashMap::new();
    for record in records {
        counts[record.partition as usize] += 1;
        let sequence = sequence_of(&record.value);
        if let Some((offset, previous)) = last.get(&record.partition) {
            assert!(
                *offset < record.offset && *previous < sequence,
                "{context}: partition {} holds {:?} at offset {} after sequence {previous} at \
                 offset {offset}: the producer's order is not kept",
                record.partition,
                record.value,
                record.offset
            );
        }
        last.insert(record.partition, (record.offset, sequence));
    }
    counts
}

/// The rotation tests' check: `log` (read through the Runtime API) holds
/// exactly the `MESSAGES` values of `prefix`, each once, with its key, in
/// the producer's order per partition, at the places the producer was told
/// (`acks`, if the client reports them); and `consumed` is exactly the log.
fn check_transfer(
    context: &str,
    prefix: &str,
    acks: Option<&[(String, u32, u64)]>,
    log: &[Rec],
    consumed: &[Rec],
) {
    let mut history = History::new();
    match acks {
        Some(acks) => {
            assert_eq!(
                acks.len(),
                MESSAGES,
                "{context}: the producer reported {} deliveries",
                acks.len()
            );
            for (value, partition, offset) in acks {
                history.send(
                    value.as_bytes(),
                    SendOutcome::Ok {
                        partition: *partition,
                        offset: *offset,
                    },
                );
            }
        }
        // kcat reports no offsets; its exit status said every record was
        // delivered, and the exact set is checked below.
        None => {
            for n in 0..MESSAGES {
                history.send(value_for(prefix, n), SendOutcome::Unknown);
            }
        }
    }
    for record in log {
        history.poll(record.partition, record.offset, record.value.as_bytes());
    }
    history
        .check()
        .assert_valid(&format!("{context}: the log read through the Runtime API"));

    assert_eq!(log.len(), MESSAGES, "{context}: records in the log");
    let mut seen = HashSet::with_capacity(MESSAGES);
    for record in log {
        let n = sequence_of(&record.value);
        assert!(
            n < MESSAGES && record.value == value_for(prefix, n),
            "{context}: unexpected value {:?} in the log",
            record.value
        );
        assert!(
            seen.insert(n),
            "{context}: {:?} twice in the log",
            record.value
        );
        assert_eq!(
            record.key.as_deref(),
            Some(key_for(n).as_str()),
            "{context}: key of {:?} at {}/{}",
            record.value,
            record.partition,
            record.offset
        );
    }
    let counts = assert_producer_order(&format!("{context}: the log"), log, PARTITIONS);
    assert!(
        counts.iter().all(|&count| count > 0),
        "{context}: every partition should hold records (keys spread them): {counts:?}"
    );

    history.clear_polls();
    for record in consumed {
        history.poll(record.partition, record.offset, record.value.as_bytes());
    }
    history
        .check()
        .assert_valid(&format!("{context}: what the consumer printed"));
    // Nothing missing, nothing twice, in offset order per partition: the
    // consumer's records of each partition are exactly the log's.
    for partition in 0..PARTITIONS {
        let expected: Vec<&Rec> = log.iter().filter(|r| r.partition == partition).collect();
        let got: Vec<&Rec> = consumed
            .iter()
            .filter(|r| r.partition == partition)
            .collect();
        if got != expected {
            let first_difference = got
                .iter()
                .zip(&expected)
                .position(|(a, b)| a != b)
                .unwrap_or(got.len().min(expected.len()));
            panic!(
                "{context}: partition {partition}: the consumer printed {} records, the log holds \
                 {}; first difference at index {first_difference}: consumed {:?}, log {:?}",
                got.len(),
                expected.len(),
                got.get(first_difference),
                expected.get(first_difference)
            );
        }
    }
    eprintln!("{context}: {MESSAGES} records, per partition {counts:?}: ok");
}

// ---------------------------------------------------------------------------
// The rotation: each client produces, another consumes.

#[derive(Clone, Copy, Debug)]
enum Client {
    Kcat,
    ConfluentKafka,
    KafkaPython,
}

impl Client {
    fn require(self) {
        match self {
            Client::Kcat => require_kcat(),
            Client::ConfluentKafka => require_python_package(CONFLUENT_KAFKA),
            Client::KafkaPython => require_python_package(KAFKA_PYTHON),
        }
    }
}

/// librdkafka producers send batches of 500 records: about 200 produce
/// requests per run, pipelined on one connection (librdkafka keeps up to
/// 1,000,000 in flight without idempotence), so the test sees whether the
/// listener appends them in the order they were sent, as Kafka guarantees
/// per connection. With 10,000-record batches a reordering rarely shows;
/// with 500 it shows in every run. Still under a second per 100,000.
const LIBRDKAFKA_BATCHES: &[&str] = &["batch.num.messages=500"];

/// Produces `MESSAGES` records; returns the delivery reports if the client
/// gives them.
fn produce_with(
    client: Client,
    bootstrap: &str,
    topic: &str,
    prefix: &str,
) -> Option<Vec<(String, u32, u64)>> {
    let name = format!("{client:?} producer");
    let count = MESSAGES.to_string();
    let finished = match client {
        Client::Kcat => {
            let mut command = Command::new("kcat");
            command.args(["-P", "-b", bootstrap, "-t", topic, "-K", ":"]);
            for setting in [
                "acks=all",
                "linger.ms=5",
                "queue.buffering.max.messages=200000",
                "message.timeout.ms=60000",
            ]
            .iter()
            .chain(LIBRDKAFKA_BATCHES)
            {
                command.args(["-X", setting]);
            }
            let mut input = Vec::with_capacity(MESSAGES * 16);
            for n in 0..MESSAGES {
                writeln!(input, "{}:{}", key_for(n), value_for(prefix, n)).unwrap();
            }
            run_client(&name, command, Some(input))
        }
        Client::ConfluentKafka => {
            let mut command = python("confluent_client.py");
            command.args(["produce", bootstrap, topic, &count, prefix]);
            for setting in LIBRDKAFKA_BATCHES {
                command.args(["--set", setting]);
            }
            run_client(&name, command, None)
        }
        Client::KafkaPython => {
            let mut command = python("kafka_python_client.py");
            command.args(["produce", bootstrap, topic, &count, prefix]);
            run_client(&name, command, None)
        }
    };
    assert!(
        finished.status.success(),
        "{name} failed ({}); stderr:\n{}\nlast lines: {:?}",
        finished.status,
        finished.stderr,
        finished.lines.iter().rev().take(5).collect::<Vec<_>>()
    );
    match client {
        Client::Kcat => {
            // kcat exits non-zero when a delivery fails; make sure anyway.
            assert!(
                !finished.stderr.contains("Delivery failed"),
                "{name}: {}",
                finished.stderr
            );
            None
        }
        _ => {
            let fails: Vec<&Value> = of_type(&finished.lines, "fail").collect();
            assert!(fails.is_empty(), "{name}: failed deliveries: {fails:?}");
            Some(acks_of(&finished.lines))
        }
    }
}

/// Consumes the whole topic from the beginning (no group).
fn consume_with(client: Client, bootstrap: &str, topic: &str) -> Vec<Rec> {
    let name = format!("{client:?} consumer");
    let partitions = PARTITIONS.to_string();
    let command = match client {
        Client::Kcat => {
            let mut command = Command::new("kcat");
            command.args([
                "-C",
                "-b",
                bootstrap,
                "-t",
                topic,
                "-o",
                "beginning",
                "-e",
                "-J",
                "-q",
            ]);
            command
        }
        Client::ConfluentKafka => {
            let mut command = python("confluent_client.py");
            command.args(["consume", bootstrap, topic, &partitions]);
            command
        }
        Client::KafkaPython => {
            let mut command = python("kafka_python_client.py");
            command.args(["consume", bootstrap, topic, &partitions]);
            command
        }
    };
    let finished = run_client(&name, command, None);
    assert!(
        finished.status.success(),
        "{name} failed ({}); stderr:\n{}",
        finished.status,
        finished.stderr
    );
    let errors: Vec<&Value> = of_type(&finished.lines, "client_error").collect();
    assert!(errors.is_empty(), "{name}: client errors: {errors:?}");
    finished.lines.iter().filter_map(record_of).collect()
}

fn rotation(producer: Client, consumer: Client, prefix: &str) {
    producer.require();
    consumer.require();
    let topic = "rotation";
    let broker = start_broker(vec![common::topic(topic, PARTITIONS)], None);
    let context = format!("{producer:?} → {consumer:?}");
    let acks = produce_with(producer, &broker.bootstrap, topic, prefix);
    let log = read_log(&broker.runtime, topic, PARTITIONS);
    let consumed = consume_with(consumer, &broker.bootstrap, topic);
    check_transfer(&context, prefix, acks.as_deref(), &log, &consumed);
}

#[test]
fn kcat_produces_confluent_kafka_consumes() {
    rotation(Client::Kcat, Client::ConfluentKafka, "kcat");
}

#[test]
fn confluent_kafka_produces_kafka_python_consumes() {
    rotation(Client::ConfluentKafka, Client::KafkaPython, "confluent");
}

#[test]
fn kafka_python_produces_kcat_consumes() {
    rotation(Client::KafkaPython, Client::Kcat, "kafkapython");
}

// ---------------------------------------------------------------------------
// A consumer group of three confluent-kafka members, one leaving midway.

const GROUP_TOPIC: &str = "grouped";
const GROUP_PARTITIONS: u32 = 6;
const GROUP_PER_PARTITION: u64 = 10_000;
const GROUP: &str = "millrace-test-group";
/// The leaving member stops polling after processing this many records.
const LEAVER_PAUSES_AFTER: u64 = 2_000;

/// What the members printed so far, and what is wrong with it.
#[derive(Default)]
struct GroupView {
    /// Current partitions of each member (assigned minus revoked; eager protocol).
    assignment: BTreeMap<String, BTreeSet<u32>>,
    /// Every processed record: (member, partition, offset, value), per member in order.
    processed: Vec<(String, u32, u64, String)>,
    /// Last offset each member processed in each partition.
    last_processed: HashMap<(String, u32), u64>,
    /// Latest successful commit per partition.
    committed: BTreeMap<u32, u64>,
    commits: usize,
    paused: HashSet<String>,
    closed: HashSet<String>,
    ended: HashSet<String>,
    /// Broken expectations, reported together at the end (or on a timeout).
    problems: Vec<String>,
    /// Non-fatal client errors, shown on failure.
    notes: Vec<String>,
}

impl GroupView {
    fn apply(&mut self, member: &str, output: Output) {
        let line = match output {
            Output::End => {
                self.ended.insert(member.to_owned());
                return;
            }
            Output::Line(line) => parse_line(member, &line),
        };
        if let Some(record) = record_of(&line) {
            let place = (member.to_owned(), record.partition);
            if let Some(&last) = self.last_processed.get(&place) {
                if record.offset <= last {
                    self.problems.push(format!(
                        "{member} processed {}/{} after {}/{last}: backwards",
                        record.partition, record.offset, record.partition
                    ));
                }
            }
            self.last_processed.insert(place, record.offset);
            self.processed.push((
                member.to_owned(),
                record.partition,
                record.offset,
                record.value,
            ));
            return;
        }
        let partitions = |line: &Value| -> BTreeSet<u32> {
            line["partitions"]
                .as_array()
                .map(|list| {
                    list.iter()
                        .filter_map(Value::as_u64)
                        .map(|p| p as u32)
                        .collect()
                })
                .unwrap_or_default()
        };
        match line["type"].as_str().unwrap_or_default() {
            "assigned" => {
                self.assignment.insert(member.to_owned(), partitions(&line));
            }
            "revoked" => {
                let revoked = partitions(&line);
                if let Some(current) = self.assignment.get_mut(member) {
                    current.retain(|partition| !revoked.contains(partition));
                }
            }
            "commit" => {
                self.commits += 1;
                if line["ok"] != Value::Bool(true) {
                    self.problems
                        .push(format!("{member}: a synchronous commit failed: {line}"));
                    return;
                }
                let offsets = line["offsets"].as_object().cloned().unwrap_or_default();
                for (partition, offset) in offsets {
                    let partition: u32 = partition.parse().expect("partition");
                    let offset = offset.as_u64().expect("commit offset");
                    let last = self.last_processed.get(&(member.to_owned(), partition));
                    if last.map(|last| last + 1) != Some(offset) {
                        self.problems.push(format!(
                            "{member} committed {partition}/{offset} but its last processed \
                             offset there is {last:?}"
                        ));
                    }
                    if let Some(&previous) = self.committed.get(&partition) {
                        if offset < previous {
                            self.problems.push(format!(
                                "{member} committed {partition}/{offset} after a commit of \
                                 {previous}: backwards"
                            ));
                        }
                    }
                    self.committed.insert(partition, offset);
                }
            }
            "paused" => {
                self.paused.insert(member.to_owned());
            }
            "closed" => {
                self.closed.insert(member.to_owned());
            }
            "client_error" => {
                if line["fatal"] == Value::Bool(true) {
                    self.problems
                        .push(format!("{member}: fatal client error: {line}"));
                } else {
                    self.notes.push(format!("{member}: {line}"));
                }
            }
            other => self
                .problems
                .push(format!("{member}: unexpected line type {other:?}: {line}")),
        }
    }

    /// Whether the three members share the partitions, each with some.
    fn shared_by(&self, members: &[&str]) -> bool {
        let mut union: BTreeSet<u32> = BTreeSet::new();
        for member in members {
            match self.assignment.get(*member) {
                Some(partitions) if !partitions.is_empty() => union.extend(partitions),
                _ => return false,
            }
        }
        union.len() == GROUP_PARTITIONS as usize
    }

    fn all_committed(&self) -> bool {
        (0..GROUP_PARTITIONS)
            .all(|partition| self.committed.get(&partition) == Some(&GROUP_PER_PARTITION))
    }

    fn summary(&self) -> String {
        format!(
            "assignment {:?}; processed {}; commits {}; committed {:?}; paused {:?}; closed \
             {:?}; ended {:?}; problems {:?}; client notes {:?}",
            self.assignment,
            self.processed.len(),
            self.commits,
            self.committed,
            self.paused,
            self.closed,
            self.ended,
            self.problems,
            self.notes.iter().take(10).collect::<Vec<_>>()
        )
    }
}

/// Applies member output until `done` holds; panics naming `what` at the deadline.
fn await_group(
    events: &Receiver<(String, Output)>,
    view: &mut GroupView,
    members: &[&ClientProcess],
    what: &str,
    done: impl Fn(&GroupView) -> bool,
) {
    let deadline = Instant::now() + PHASE_DEADLINE;
    while !done(view) {
        match receive(events, deadline) {
            Some((member, output)) => view.apply(&member, output),
            None => {
                let stderr: Vec<String> = members
                    .iter()
                    .map(|member| format!("--- {} stderr:\n{}", member.name, member.stderr_tail()))
                    .collect();
                panic!(
                    "timed out after {PHASE_DEADLINE:?} waiting until {what}; {}\n{}",
                    view.summary(),
                    stderr.join("\n")
                );
            }
        }
    }
}

#[test]
fn confluent_kafka_group_of_three_with_one_leaving() {
    require_python_package(CONFLUENT_KAFKA);
    let broker = start_broker(vec![common::topic(GROUP_TOPIC, GROUP_PARTITIONS)], None);
    let (sender, events) = mpsc::channel();
    let member = |name: &str, pause: Option<u64>| {
        let mut command = python("confluent_client.py");
        command.args(["member", &broker.bootstrap, GROUP_TOPIC, GROUP, name]);
        if let Some(pause) = pause {
            command.args(["--pause-after", &pause.to_string()]);
        }
        ClientProcess::spawn(name, command, sender.clone(), true)
    };
    let mut a = member("a", None);
    let mut b = member("b", None);
    let mut c = member("c", Some(LEAVER_PAUSES_AFTER));
    let mut view = GroupView::default();

    // 1. The three members share the six partitions (before any data, so
    //    each has records to process and no rebalance happens while `c`
    //    is paused).
    await_group(
        &events,
        &mut view,
        &[&a, &b, &c],
        "the three members share the partitions (JoinGroup/SyncGroup)",
        |view| view.shared_by(&["a", "b", "c"]),
    );
    let leaver_partitions = view.assignment["c"].clone();

    // 2. Records to consume.
    let producer = broker.runtime.producer(GROUP_TOPIC).expect("producer");
    for partition in 0..GROUP_PARTITIONS {
        for chunk in 0..GROUP_PER_PARTITION / 1_000 {
            let records = (chunk * 1_000..(chunk + 1) * 1_000)
                .map(|n| Record::new(format!("g{partition}-{n:06}")))
                .collect();
            producer
                .send_batch_to_blocking(PartitionId(partition), records)
                .expect("produce");
        }
    }

    // 3. `c` processes (and commits) some records, then leaves midway.
    await_group(
        &events,
        &mut view,
        &[&a, &b, &c],
        "member c has processed its first records and paused",
        |view| view.paused.contains("c"),
    );
    c.command("leave");
    await_group(
        &events,
        &mut view,
        &[&a, &b, &c],
        "member c has closed (LeaveGroup) and exited",
        |view| view.closed.contains("c") && view.ended.contains("c"),
    );
    let status = c.wait_exit(Instant::now() + PHASE_DEADLINE);
    assert!(status.success(), "member c: {status}; {}", c.stderr_tail());
    let leaver_processed: BTreeMap<u32, u64> = view
        .last_processed
        .iter()
        .filter(|((member, _), _)| member == "c")
        .map(|((_, partition), offset)| (*partition, *offset))
        .collect();

    // 4. The other two take over and process everything.
    await_group(
        &events,
        &mut view,
        &[&a, &b, &c],
        "every partition is committed up to its end by the remaining members",
        |view| view.all_committed(),
    );
    a.command("stop");
    b.command("stop");
    await_group(
        &events,
        &mut view,
        &[&a, &b, &c],
        "members a and b have closed and exited",
        |view| ["a", "b"].iter().all(|m| view.ended.contains(*m)),
    );
    for process in [&mut a, &mut b] {
        let status = process.wait_exit(Instant::now() + PHASE_DEADLINE);
        assert!(
            status.success(),
            "member {}: {status}; {}",
            process.name,
            process.stderr_tail()
        );
    }
    assert!(view.problems.is_empty(), "{}", view.summary());

    // Every record processed exactly once.
    let mut times: BTreeMap<(u32, u64), Vec<&str>> = BTreeMap::new();
    for (member, partition, offset, value) in &view.processed {
        assert_eq!(
            value,
            &format!("g{partition}-{offset:06}"),
            "{member} processed a wrong value at {partition}/{offset}"
        );
        times.entry((*partition, *offset)).or_default().push(member);
    }
    let twice: Vec<_> = times
        .iter()
        .filter(|(_, members)| members.len() > 1)
        .take(10)
        .collect();
    assert!(
        twice.is_empty(),
        "records processed more than once: {twice:?}"
    );
    for partition in 0..GROUP_PARTITIONS {
        let count = times.range((partition, 0)..(partition + 1, 0)).count() as u64;
        assert_eq!(
            count, GROUP_PER_PARTITION,
            "partition {partition}: records processed (of {GROUP_PER_PARTITION})"
        );
    }

    // `c` left midway, and whoever took each of its partitions resumed
    // exactly after its last commit (OffsetFetch gave the new owner that).
    let leaver_total: usize = view.processed.iter().filter(|(m, ..)| m == "c").count();
    assert!(
        (LEAVER_PAUSES_AFTER as usize
            ..(leaver_partitions.len() as u64 * GROUP_PER_PARTITION) as usize)
            .contains(&leaver_total),
        "member c should have left midway: it processed {leaver_total} records of partitions \
         {leaver_partitions:?}"
    );
    for partition in &leaver_partitions {
        let resumed = view
            .processed
            .iter()
            .filter(|(member, p, ..)| member != "c" && p == partition)
            .map(|(_, _, offset, _)| *offset)
            .min();
        let expected = leaver_processed.get(partition).map_or(0, |last| last + 1);
        assert_eq!(
            resumed,
            Some(expected),
            "partition {partition} of the leaving member: the next owner should resume at its \
             commit ({:?} processed by c)",
            leaver_processed.get(partition)
        );
    }

    // The committed offsets, read back by a fresh consumer of the group
    // (OffsetFetch) and through the Runtime API: 1 + the last offset processed.
    let mut command = python("confluent_client.py");
    command.args([
        "committed",
        &broker.bootstrap,
        GROUP_TOPIC,
        GROUP,
        &GROUP_PARTITIONS.to_string(),
    ]);
    let finished = run_client("committed reader", command, None);
    assert!(
        finished.status.success(),
        "committed reader: {}; {}",
        finished.status,
        finished.stderr
    );
    let answer = of_type(&finished.lines, "committed")
        .next()
        .unwrap_or_else(|| panic!("committed reader printed no offsets: {:?}", finished.lines));
    assert_eq!(
        answer["errors"].as_object().map(|errors| errors.len()),
        Some(0),
        "OffsetFetch errors: {answer}"
    );
    for partition in 0..GROUP_PARTITIONS {
        let last_processed = times
            .range((partition, 0)..(partition + 1, 0))
            .map(|((_, offset), _)| *offset)
            .max()
            .expect("processed");
        let expected = last_processed + 1;
        assert_eq!(expected, GROUP_PER_PARTITION);
        assert_eq!(
            answer["offsets"][partition.to_string()].as_u64(),
            Some(expected),
            "partition {partition}: committed offset from OffsetFetch ({answer})"
        );
        assert_eq!(
            broker
                .runtime
                .committed_offset(GROUP, GROUP_TOPIC, PartitionId(partition))
                .expect("committed offset"),
            Some(Offset(expected)),
            "partition {partition}: committed offset from Runtime::committed_offset"
        );
    }
    eprintln!(
        "group: {} records processed, {} commits; c processed {leaver_total} of partitions \
         {leaver_partitions:?} before leaving",
        view.processed.len(),
        view.commits
    );
}

// ---------------------------------------------------------------------------
// An idempotent producer whose connections are cut by a proxy.

/// Records the idempotent producer sends through the proxy.
const PROXY_MESSAGES: usize = 50_000;
/// Client → server bytes between cuts: drawn in this range (the run sends
/// about 1.4 MB, so about a dozen cuts land in it).
const CUT_EVERY: (u64, u64) = (40_000, 160_000);
/// No more cuts after this many, so the run always ends.
const CUTS_MAX: usize = 25;
/// Kafka's API key of Produce.
const PRODUCE_API_KEY: i16 = 0;

/// When the next cut comes, and what was cut.
struct CutPlan {
    rng: XorShift,
    upstream_bytes: u64,
    next_cut: u64,
    /// Armed: the next Produce response is dropped and every connection
    /// cut. The server has handled that request (its records are stored);
    /// the client never hears so and must send it again.
    drop_next_produce_response: bool,
    cuts: Vec<String>,
    total_upstream: u64,
}

impl CutPlan {
    fn draw(&mut self) -> u64 {
        CUT_EVERY.0 + self.rng.below(CUT_EVERY.1 - CUT_EVERY.0)
    }
}

/// Finds Kafka frames in a byte stream that arrives in chunks of any size:
/// for each frame, the `header` bytes after its length (request: API key,
/// version, correlation id; response: correlation id), and where in the
/// current chunk the frame started (`None`: in an earlier chunk).
struct FrameScanner {
    header: usize,
    partial: Vec<u8>,
    started_at: Option<usize>,
    skip: usize,
}

impl FrameScanner {
    fn new(header: usize) -> FrameScanner {
        FrameScanner {
            header,
            partial: Vec::new(),
            started_at: None,
            skip: 0,
        }
    }

    fn scan(&mut self, chunk: &[u8]) -> Vec<(Option<usize>, Vec<u8>)> {
        let mut found = Vec::new();
        if !self.partial.is_empty() {
            self.started_at = None;
        }
        let mut at = 0;
        while at < chunk.len() {
            if self.skip > 0 {
                let n = self.skip.min(chunk.len() - at);
                self.skip -= n;
                at += n;
                continue;
            }
            if self.partial.is_empty() {
                self.started_at = Some(at);
            }
            let n = (4 + self.header - self.partial.len()).min(chunk.len() - at);
            self.partial.extend_from_slice(&chunk[at..at + n]);
            at += n;
            if self.partial.len() == 4 + self.header {
                let length = i32::from_be_bytes(self.partial[..4].try_into().unwrap());
                self.skip = (length.max(0) as usize).saturating_sub(self.header);
                found.push((self.started_at.take(), self.partial[4..].to_vec()));
                self.partial.clear();
            }
        }
        found
    }
}

struct ProxyShared {
    upstream: Mutex<Option<SocketAddr>>,
    plan: Mutex<CutPlan>,
    /// Open connection pairs (client side, server side).
    connections: Mutex<Vec<(TcpStream, TcpStream)>>,
    stopping: AtomicBool,
    accepted: AtomicU64,
}

impl ProxyShared {
    fn cut_all(&self) {
        for (client, server) in self.connections.lock().unwrap().drain(..) {
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
        }
    }
}

/// A TCP proxy on 127.0.0.1 that cuts every connection at seeded random
/// points of the client → server byte stream, alternately in the middle of
/// a request (a torn frame: nothing of it may be stored) and by dropping
/// the next Produce response (stored, but the client must retry it: an
/// idempotent producer's retry must not be stored twice).
struct CuttingProxy {
    address: SocketAddr,
    shared: Arc<ProxyShared>,
    accept: Option<JoinHandle<()>>,
}

impl CuttingProxy {
    /// Binds a port now (so the runtime can advertise it); forwards once
    /// [`CuttingProxy::forward_to`] names the listener.
    fn bind(seed: u64) -> CuttingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let address = listener.local_addr().expect("proxy address");
        let mut plan = CutPlan {
            rng: XorShift::new(seed),
            upstream_bytes: 0,
            next_cut: 0,
            drop_next_produce_response: false,
            cuts: Vec::new(),
            total_upstream: 0,
        };
        plan.next_cut = plan.draw();
        let shared = Arc::new(ProxyShared {
            upstream: Mutex::new(None),
            plan: Mutex::new(plan),
            connections: Mutex::new(Vec::new()),
            stopping: AtomicBool::new(false),
            accepted: AtomicU64::new(0),
        });
        let accept_shared = Arc::clone(&shared);
        let accept = std::thread::spawn(move || {
            for client in listener.incoming() {
                if accept_shared.stopping.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Some(upstream) = *accept_shared.upstream.lock().unwrap() else {
                    continue;
                };
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                accept_shared.accepted.fetch_add(1, Ordering::SeqCst);
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let clone = |stream: &TcpStream| stream.try_clone().expect("clone a socket");
                accept_shared
                    .connections
                    .lock()
                    .unwrap()
                    .push((clone(&client), clone(&server)));
                // Correlation ids of this connection's Produce requests.
                let produce_ids = Arc::new(Mutex::new(HashSet::new()));
                let (shared, ids, from, to) = (
                    Arc::clone(&accept_shared),
                    Arc::clone(&produce_ids),
                    clone(&client),
                    clone(&server),
                );
                std::thread::spawn(move || pump_upstream(&shared, &ids, from, to));
                let shared = Arc::clone(&accept_shared);
                std::thread::spawn(move || pump_downstream(&shared, &produce_ids, server, client));
            }
        });
        CuttingProxy {
            address,
            shared,
            accept: Some(accept),
        }
    }

    fn forward_to(&self, upstream: SocketAddr) {
        *self.shared.upstream.lock().unwrap() = Some(upstream);
    }

    /// Stops accepting and closes every connection; returns the cuts made,
    /// the client bytes seen and the connections accepted.
    fn stop(&mut self) -> (Vec<String>, u64, u64) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        if let Some(accept) = self.accept.take() {
            let _ = TcpStream::connect(self.address);
            let _ = accept.join();
        }
        self.shared.cut_all();
        let plan = self.shared.plan.lock().unwrap();
        (
            plan.cuts.clone(),
            plan.total_upstream,
            self.shared.accepted.load(Ordering::SeqCst),
        )
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.stop();
    }
}

fn pump_upstream(
    shared: &ProxyShared,
    produce_ids: &Mutex<HashSet<i32>>,
    mut from: TcpStream,
    mut to: TcpStream,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    let mut frames = FrameScanner::new(8);
    loop {
        let n = match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for (_, header) in frames.scan(&buffer[..n]) {
            let api_key = i16::from_be_bytes([header[0], header[1]]);
            if api_key == PRODUCE_API_KEY {
                let correlation = i32::from_be_bytes(header[4..8].try_into().unwrap());
                produce_ids.lock().unwrap().insert(correlation);
            }
        }
        let mut plan = shared.plan.lock().unwrap();
        plan.total_upstream += n as u64;
        let cutting = plan.cuts.len() < CUTS_MAX && plan.upstream_bytes + n as u64 >= plan.next_cut;
        if !cutting {
            plan.upstream_bytes += n as u64;
            drop(plan);
            if to.write_all(&buffer[..n]).is_err() {
                break;
            }
            continue;
        }
        let keep = (plan.next_cut - plan.upstream_bytes) as usize;
        plan.upstream_bytes = 0;
        plan.next_cut = plan.draw();
        if plan.cuts.len().is_multiple_of(2) && !plan.drop_next_produce_response {
            // A torn request: part of this chunk goes through, then the cut.
            let _ = to.write_all(&buffer[..keep]);
            let total = plan.total_upstream;
            plan.cuts.push(format!(
                "torn request: cut after {keep} of a {n}-byte chunk (client byte {total})"
            ));
            shared.cut_all();
            break;
        }
        // A lost response: this goes through; the next Produce response does not.
        plan.drop_next_produce_response = true;
        drop(plan);
        if to.write_all(&buffer[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

fn pump_downstream(
    shared: &ProxyShared,
    produce_ids: &Mutex<HashSet<i32>>,
    mut from: TcpStream,
    mut to: TcpStream,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    let mut frames = FrameScanner::new(4);
    loop {
        let n = match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut dropped = None;
        for (started_at, header) in frames.scan(&buffer[..n]) {
            let correlation = i32::from_be_bytes(header[..4].try_into().unwrap());
            let produce = produce_ids.lock().unwrap().remove(&correlation);
            if produce && dropped.is_none() {
                dropped = Some((started_at.unwrap_or(0), correlation));
            }
        }
        let mut plan = shared.plan.lock().unwrap();
        if let (true, Some((start, correlation))) = (plan.drop_next_produce_response, dropped) {
            plan.drop_next_produce_response = false;
            // The responses before it go through; it and the rest do not.
            let _ = to.write_all(&buffer[..start]);
            let total = plan.total_upstream;
            plan.cuts.push(format!(
                "lost response: Produce response (correlation id {correlation}) dropped \
                 (client byte {total})"
            ));
            shared.cut_all();
            break;
        }
        drop(plan);
        if to.write_all(&buffer[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

/// The proxy's seed: `MILLRACE_PROXY_SEED` to replay a run, else new each run.
fn proxy_seed() -> u64 {
    std::env::var("MILLRACE_PROXY_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|elapsed| elapsed.as_nanos() as u64)
                .unwrap_or(1)
        })
}

#[test]
fn idempotent_producer_through_a_cutting_proxy() {
    require_python_package(CONFLUENT_KAFKA);
    let seed = proxy_seed();
    let context = format!("proxy seed {seed} (replay with MILLRACE_PROXY_SEED={seed})");
    eprintln!("{context}");
    let topic = "idempotent";
    let prefix = "idem";
    // The proxy's port first: Metadata must advertise it, not the listener.
    let mut proxy = CuttingProxy::bind(seed);
    let broker = start_broker(
        vec![common::topic(topic, PARTITIONS)],
        Some(("127.0.0.1".to_owned(), proxy.address.port())),
    );
    proxy.forward_to(broker.runtime.kafka_address().expect("kafka address"));

    let mut command = python("confluent_client.py");
    command.args([
        "produce",
        &proxy.address.to_string(),
        topic,
        &PROXY_MESSAGES.to_string(),
        prefix,
    ]);
    for setting in [
        "enable.idempotence=true",
        "acks=all",
        "reconnect.backoff.ms=10",
        "reconnect.backoff.max.ms=100",
        "retry.backoff.ms=10",
        "retry.backoff.max.ms=100",
        // Smaller batches: more requests in flight when a cut lands.
        "batch.num.messages=500",
    ] {
        command.args(["--set", setting]);
    }
    let finished = run_client("idempotent confluent-kafka producer", command, None);
    let (cuts, upstream_bytes, connections) = proxy.stop();
    eprintln!(
        "{context}: {} cuts over {upstream_bytes} client bytes, {connections} connections: {cuts:?}",
        cuts.len()
    );
    let fatal: Vec<&Value> = of_type(&finished.lines, "client_error")
        .filter(|line| line["fatal"] == Value::Bool(true))
        .collect();
    assert!(
        fatal.is_empty(),
        "{context}: fatal producer errors: {fatal:?}\nstderr:\n{}",
        finished.stderr
    );

    let acks = acks_of(&finished.lines);
    let fails: Vec<&Value> = of_type(&finished.lines, "fail").collect();
    let mut history = History::new();
    for (value, partition, offset) in &acks {
        history.send(
            value.as_bytes(),
            SendOutcome::Ok {
                partition: *partition,
                offset: *offset,
            },
        );
    }
    for fail in &fails {
        history.send(
            fail["payload"].as_str().expect("payload").as_bytes(),
            SendOutcome::Unknown,
        );
    }
    let log = read_log(&broker.runtime, topic, PARTITIONS);
    for record in &log {
        history.poll(record.partition, record.offset, record.value.as_bytes());
    }
    // No value twice, every delivered value at its reported offset, nothing
    // that was never sent, no gap.
    let report = history.check();
    report.assert_valid(&format!("{context}: the log after the cuts"));
    assert_producer_order(&context, &log, PARTITIONS);
    assert!(
        fails.is_empty() && acks.len() == PROXY_MESSAGES && finished.status.success(),
        "{context}: {} delivered, {} failed (first: {:?}), exit {}; stderr:\n{}",
        acks.len(),
        fails.len(),
        fails.first(),
        finished.status,
        finished.stderr
    );
    let torn = cuts.iter().filter(|cut| cut.starts_with("torn")).count();
    let lost = cuts.iter().filter(|cut| cut.starts_with("lost")).count();
    assert!(
        cuts.len() >= 4 && torn >= 1 && lost >= 1,
        "{context}: only {} cuts landed ({torn} torn requests, {lost} lost Produce responses; \
         {upstream_bytes} client bytes): the run did not test what it claims (does Metadata \
         advertise the proxy?)",
        cuts.len()
    );
    eprintln!("{context}: {report}");
}
