//! Three `millrace node` processes on 127.0.0.1, Kafka listeners on, with
//! real clients: a confluent-kafka idempotent producer (`acks=all`) and a
//! consumer, each given all three brokers. While the producer runs, the
//! leader of a partition is killed with SIGKILL and restarted, several
//! times. The clients find the new leaders by themselves (Metadata names
//! leaders and replicas; a follower answers NOT_LEADER_OR_FOLLOWER). Then
//! the history checker: nothing acknowledged lost, no offset with two
//! values, no duplicate, no read of a failed send.
//!
//! Raft's own entries are control batches, which take offsets Kafka
//! clients skip; the test reads them from the stopped nodes' logs and
//! tells the checker, so they are not counted as gaps.

mod common;

use common::free_ports;
use common::history::{History, SendOutcome};
use millrace::storage::{LogOptions, PartitionLog};
use millrace::Offset;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const TOPIC: &str = "events";
const PARTITIONS: u32 = 3;
const RECORDS: usize = 40_000;
const RATE: usize = 8_000;
const KILLS: usize = 3;
const WAIT: Duration = Duration::from_secs(60);
const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/kafka/confluent_client.py"
);

struct Node {
    config: PathBuf,
    data_dir: PathBuf,
    http: SocketAddr,
    child: Option<Child>,
}

impl Node {
    fn start(&mut self) {
        let log = std::fs::File::create(self.data_dir.with_extension("log")).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_millrace"))
            .arg("node")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn millrace node");
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill(); // SIGKILL
            let _ = child.wait();
        }
    }

    fn health(&self) -> Option<Value> {
        let mut stream = TcpStream::connect_timeout(&self.http, Duration::from_secs(1)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(stream, "GET /health HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let (_, body) = response.split_once("\r\n\r\n")?;
        serde_json::from_str(body).ok()
    }

    /// (partition, leader) as this node sees them.
    fn leaders(&self) -> Option<Vec<(u32, u64)>> {
        let health = self.health()?;
        health["partitions"]
            .as_array()?
            .iter()
            .map(|partition| {
                Some((
                    partition["partition"].as_u64()? as u32,
                    partition["replica"]["leader"].as_u64()?,
                ))
            })
            .collect()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

fn cluster(root: &Path) -> (Vec<Node>, String) {
    let ports = free_ports(9);
    let (raft, rest) = ports.split_at(3);
    let (kafka, http) = rest.split_at(3);
    let mut nodes = Vec::new();
    for index in 0..3 {
        let peers: Vec<String> = (0..3)
            .filter(|&other| other != index)
            .map(|other| format!("\"{}@127.0.0.1:{}\"", other + 1, raft[other]))
            .collect();
        let data_dir = root.join(format!("node{}", index + 1));
        let config = root.join(format!("node{}.toml", index + 1));
        std::fs::write(
            &config,
            format!(
                r#"data_dir = "{data_dir}"
[node]
id = {id}
listen = "127.0.0.1:{raft}"
peers = [{peers}]
[kafka]
listen = "127.0.0.1:{kafka}"
[http]
listen = "127.0.0.1:{http}"
[[topic]]
name = "{TOPIC}"
partitions = {PARTITIONS}
replication_factor = 3
"#,
                data_dir = data_dir.display(),
                id = index + 1,
                raft = raft[index],
                peers = peers.join(", "),
                kafka = kafka[index],
                http = http[index],
            ),
        )
        .expect("write config");
        nodes.push(Node {
            config,
            data_dir,
            http: format!("127.0.0.1:{}", http[index]).parse().unwrap(),
            child: None,
        });
    }
    let bootstrap = kafka
        .iter()
        .map(|port| format!("127.0.0.1:{port}"))
        .collect::<Vec<_>>()
        .join(",");
    (nodes, bootstrap)
}

/// Waits until every running node reports a leader for every partition.
fn wait_for_leaders(nodes: &[Node]) -> Vec<(u32, u64)> {
    let started = Instant::now();
    loop {
        let views: Vec<Vec<(u32, u64)>> = nodes
            .iter()
            .filter(|node| node.child.is_some())
            .filter_map(Node::leaders)
            .collect();
        let running = nodes.iter().filter(|node| node.child.is_some()).count();
        if views.len() == running
            && views.iter().all(|view| {
                view.len() == PARTITIONS as usize
                    && view.iter().all(|(_, leader)| {
                        *leader != 0 && nodes[*leader as usize - 1].child.is_some()
                    })
            })
        {
            return views[0].clone();
        }
        assert!(started.elapsed() < WAIT, "no leaders after {WAIT:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The three nodes, started, each seeing a leader for every partition.
fn running_cluster(root: &Path) -> (Vec<Node>, String) {
    let (mut nodes, bootstrap) = cluster(root);
    for node in &mut nodes {
        node.start();
    }
    wait_for_leaders(&nodes);
    (nodes, bootstrap)
}

/// confluent-kafka, idempotent and `acks=all`, given every broker:
/// `count` records `PREFIX-NNNNNN` at [`RATE`] per second.
fn idempotent_producer(
    bootstrap: &str,
    count: usize,
    prefix: &str,
) -> (Child, mpsc::Receiver<Value>) {
    client(&[
        "produce",
        bootstrap,
        TOPIC,
        &count.to_string(),
        prefix,
        "--rate",
        &RATE.to_string(),
        "--set",
        "enable.idempotence=true",
        "--set",
        "message.timeout.ms=120000",
    ])
}

/// Runs the script; its stdout lines go to the returned channel.
fn client(arguments: &[&str]) -> (Child, mpsc::Receiver<Value>) {
    let mut child = Command::new("python3")
        .arg(SCRIPT)
        .args(arguments)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 (run .ci/run to install the clients)");
    let stdout = child.stdout.take().expect("stdout");
    let (sender, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(value) = serde_json::from_str::<Value>(&line) {
                if sender.send(value).is_err() {
                    return;
                }
            }
        }
    });
    (child, lines)
}

/// Lines until the one with type "done".
fn until_done(lines: &mpsc::Receiver<Value>, into: &mut Vec<Value>) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let line = lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the client finished");
        let done = line["type"] == "done";
        into.push(line);
        if done {
            return;
        }
    }
}

/// The producer's delivery reports as sends: acknowledged, or (a failed
/// delivery) unknown.
fn history_of(lines: &[Value]) -> History {
    let mut history = History::new();
    for line in lines {
        match line["type"].as_str() {
            Some("ack") => history.send(
                line["payload"].as_str().expect("payload"),
                SendOutcome::Ok {
                    partition: line["partition"].as_u64().expect("partition") as u32,
                    offset: line["offset"].as_u64().expect("offset"),
                },
            ),
            Some("fail") => history.send(
                line["payload"].as_str().expect("payload"),
                SendOutcome::Unknown,
            ),
            _ => {}
        }
    }
    history
}

/// Raft's control batches take offsets Kafka clients skip: read them from
/// a stopped node's log (they are the same on every replica).
fn skip_control_offsets(node: &Node, history: &mut History) {
    for partition in 0..PARTITIONS {
        let directory = node
            .data_dir
            .join("topics")
            .join(format!("{TOPIC}-{partition}"));
        let (log, _) = PartitionLog::open(&directory, LogOptions::default()).expect("open log");
        for (header, _) in log.frame_locations(Offset(0)).expect("frames") {
            if header.is_control() {
                history.skipped(partition, header.base_offset.0);
            }
        }
    }
}

/// Reads every partition to its end with a consumer given all brokers,
/// stops the nodes, and checks the history: no anomaly, and nearly all of
/// the `sent` records acknowledged.
fn consume_and_check(bootstrap: &str, nodes: &mut [Node], mut history: History, sent: usize) {
    let (mut consumer, consumed) = client(&["consume", bootstrap, TOPIC, &PARTITIONS.to_string()]);
    let mut records = Vec::new();
    until_done(&consumed, &mut records);
    let _ = consumer.wait();
    for record in records.iter().filter(|record| record.get("type").is_none()) {
        history.poll(
            record["partition"].as_u64().expect("partition") as u32,
            record["offset"].as_u64().expect("offset"),
            record["payload"].as_str().expect("payload"),
        );
    }
    for node in nodes.iter_mut() {
        node.kill();
    }
    skip_control_offsets(&nodes[0], &mut history);
    let report = history.check();
    assert_eq!(report.anomalies(), 0, "{report}");
    assert!(
        report.acknowledged >= sent * 9 / 10,
        "most records should be acknowledged: {report}"
    );
    eprintln!("{report}");
}

#[test]
fn real_clients_survive_repeated_leader_kills() {
    let root = tempfile::tempdir().expect("tempdir");
    let (mut nodes, bootstrap) = running_cluster(root.path());

    let (mut producer, produced) = idempotent_producer(&bootstrap, RECORDS, "v");
    let mut lines = Vec::new();
    let mut kills = 0;
    let mut failover_ms = Vec::new();
    while kills < KILLS {
        // Let some records through between faults: wait for acks.
        let target = lines.len() + RATE / 2;
        while lines.len() < target {
            lines.push(produced.recv_timeout(WAIT).expect("delivery reports"));
        }
        let leaders = wait_for_leaders(&nodes);
        let victim = leaders[kills % leaders.len()].1 as usize - 1;
        let killed_at = Instant::now();
        nodes[victim].kill();
        let new_leaders = wait_for_leaders(&nodes);
        failover_ms.push(killed_at.elapsed().as_millis());
        assert!(new_leaders
            .iter()
            .all(|(_, leader)| *leader as usize - 1 != victim));
        nodes[victim].start();
        kills += 1;
    }
    until_done(&produced, &mut lines);
    let _ = producer.wait();
    eprintln!("leader re-elected after SIGKILL in {failover_ms:?} ms");

    let history = history_of(&lines);

    wait_for_leaders(&nodes);
    consume_and_check(&bootstrap, &mut nodes, history, RECORDS);
}

/// `millrace node` and `millrace cluster status`, as an operator runs them.
#[test]
fn cluster_status_shows_each_replica_and_node_needs_a_node_section() {
    let root = tempfile::tempdir().expect("tempdir");
    let (mut nodes, _) = cluster(root.path());
    for node in &mut nodes {
        node.start();
    }
    let leaders = wait_for_leaders(&nodes);
    let status = |node: &Node| {
        let output = Command::new(env!("CARGO_BIN_EXE_millrace"))
            .args(["cluster", "status", "-c"])
            .arg(&node.config)
            .output()
            .expect("millrace cluster status");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("utf-8")
    };
    for (index, node) in nodes.iter().enumerate() {
        let shown = status(node);
        let rows: Vec<Vec<&str>> = shown
            .lines()
            .skip(1)
            .map(|line| line.split_whitespace().collect())
            .collect();
        assert_eq!(rows.len(), PARTITIONS as usize, "{shown}");
        for (partition, leader) in &leaders {
            let row = rows
                .iter()
                .find(|row| row[0] == TOPIC && row[1] == partition.to_string())
                .unwrap_or_else(|| panic!("no row for partition {partition}:\n{shown}"));
            // TOPIC PARTITION NODE ROLE LEADER TERM COMMIT APPLIED LAST REPLICAS
            assert_eq!(row[2], (index + 1).to_string(), "{shown}");
            assert_eq!(row[4], leader.to_string(), "{shown}");
            let role = if *leader == index as u64 + 1 {
                "leader"
            } else {
                "follower"
            };
            assert_eq!(row[3], role, "{shown}");
            let commit: u64 = row[6].parse().expect("commit index");
            assert!(commit >= 1, "{shown}");
            if role == "leader" {
                // node:matched/lag for each of the three replicas.
                assert_eq!(row[9..].len(), 3, "{shown}");
            }
        }
    }
    for node in &mut nodes {
        node.kill();
    }
    // A stopped node: a clear error, not a hang.
    let output = Command::new(env!("CARGO_BIN_EXE_millrace"))
        .args(["cluster", "status", "-c"])
        .arg(&nodes[0].config)
        .output()
        .expect("millrace cluster status");
    assert!(!output.status.success());
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(error.contains("is it running?"), "{error}");

    // `millrace node` refuses a config without [node].
    let single = root.path().join("single.toml");
    std::fs::write(
        &single,
        format!("data_dir = \"{}\"\n", root.path().join("single").display()),
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_millrace"))
        .arg("node")
        .arg(&single)
        .output()
        .expect("millrace node");
    assert!(!output.status.success());
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(
        error.contains("millrace node needs a [node] section"),
        "{error}"
    );
}

/// Every node SIGKILLed at once in the middle of production, then all
/// restarted: each recovers its log and Raft state from disk, they elect
/// a leader, and nothing any of them acknowledged is missing.
#[test]
fn the_whole_cluster_killed_at_once_loses_nothing_acknowledged() {
    let root = tempfile::tempdir().expect("tempdir");
    let (mut nodes, bootstrap) = running_cluster(root.path());
    let (mut producer, produced) = idempotent_producer(&bootstrap, 30_000, "w");
    let mut lines = Vec::new();
    // Some records through, then every node dies at the same moment.
    while lines.len() < RATE {
        lines.push(produced.recv_timeout(WAIT).expect("delivery reports"));
    }
    for node in &mut nodes {
        node.kill();
    }
    for node in &mut nodes {
        node.start();
    }
    wait_for_leaders(&nodes);
    until_done(&produced, &mut lines);
    let _ = producer.wait();

    let history = history_of(&lines);
    consume_and_check(&bootstrap, &mut nodes, history, 30_000);
}

/// The coordinator every node names for a group, asked over the Kafka
/// protocol (FindCoordinator v3).
fn coordinator_named_by(kafka: &str) -> i32 {
    use kafka_protocol::messages::{ApiKey, FindCoordinatorRequest, FindCoordinatorResponse};
    use kafka_protocol::protocol::{Decodable, StrBytes};
    let mut client = common::kafka::RawClient::connect(kafka.parse().expect("address"));
    let request =
        FindCoordinatorRequest::default().with_key(StrBytes::from_static_str("some-group"));
    let mut body = client.request(ApiKey::FindCoordinator, 3, &request);
    let response = FindCoordinatorResponse::decode(&mut body, 3).expect("response");
    assert_eq!(response.error_code, 0);
    response.node_id.0
}

/// In a cluster every node names the same consumer-group coordinator (the
/// lowest live node id), so a group's members meet on one node whichever
/// broker they bootstrap from; when it dies, the next one.
#[test]
fn every_node_names_the_same_group_coordinator() {
    let root = tempfile::tempdir().expect("tempdir");
    let (mut nodes, bootstrap) = running_cluster(root.path());
    let brokers: Vec<&str> = bootstrap.split(',').collect();
    let started = Instant::now();
    // Once every node has heard the others' announcements.
    while brokers
        .iter()
        .any(|broker| coordinator_named_by(broker) != 1)
    {
        assert!(started.elapsed() < WAIT, "the nodes never agreed on node 1");
        std::thread::sleep(Duration::from_millis(50));
    }
    nodes[0].kill();
    let started = Instant::now();
    while brokers[1..]
        .iter()
        .any(|broker| coordinator_named_by(broker) != 2)
    {
        assert!(
            started.elapsed() < WAIT,
            "the survivors never moved to node 2"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
