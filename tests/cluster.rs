//! Three embedded runtimes form a Raft cluster over real TCP on 127.0.0.1:
//! produce is acknowledged once a majority has it, a produce on a
//! follower's node is forwarded to the leader, reads are served by the
//! leader only (a follower answers `NotLeader`), a
//! stopped leader is replaced and, when it comes back, catches up. The
//! history checker sees every acknowledged record, once, in place.

mod common;

use common::history::{History, SendOutcome};
use common::{free_ports, wait_until};
use millrace::config::Config;
use millrace::{FetchError, Offset, PartitionId, ProduceError, Record, Runtime};
use std::path::{Path, PathBuf};
use std::time::Duration;

const TOPIC: &str = "events";
/// A topic with fewer replicas than nodes: each partition on two of three.
const PLACED: &str = "placed";
const WAIT: Duration = Duration::from_secs(20);

struct Cluster {
    root: tempfile::TempDir,
    ports: Vec<u16>,
    nodes: Vec<Option<Runtime>>,
}

impl Cluster {
    fn start(members: usize) -> Cluster {
        let mut cluster = Cluster {
            root: tempfile::tempdir().expect("tempdir"),
            ports: free_ports(members),
            nodes: (0..members).map(|_| None).collect(),
        };
        for index in 0..members {
            cluster.start_node(index);
        }
        cluster
    }

    fn data_dir(&self, index: usize) -> PathBuf {
        self.root.path().join(format!("node{}", index + 1))
    }

    fn config(&self, index: usize) -> Config {
        let peers: Vec<String> = (0..self.ports.len())
            .filter(|&other| other != index)
            .map(|other| format!("\"{}@127.0.0.1:{}\"", other + 1, self.ports[other]))
            .collect();
        let text = format!(
            r#"
            data_dir = "{data_dir}"
            [node]
            id = {id}
            listen = "127.0.0.1:{port}"
            peers = [{peers}]
            [[topic]]
            name = "{TOPIC}"
            partitions = 1
            replication_factor = {members}
            [[topic]]
            name = "{PLACED}"
            partitions = 3
            replication_factor = 2
            "#,
            data_dir = self.data_dir(index).display(),
            id = index + 1,
            port = self.ports[index],
            peers = peers.join(", "),
            members = self.ports.len(),
        );
        Config::from_toml_str(&text, "<cluster test>").expect("cluster config")
    }

    fn start_node(&mut self, index: usize) {
        let runtime = Runtime::start(self.config(index))
            .unwrap_or_else(|error| panic!("start node {}: {error}", index + 1));
        self.nodes[index] = Some(runtime);
    }

    fn stop_node(&mut self, index: usize) {
        if let Some(runtime) = self.nodes[index].take() {
            runtime.shutdown().expect("shutdown");
        }
    }

    fn node(&self, index: usize) -> &Runtime {
        self.nodes[index].as_ref().expect("node is running")
    }

    /// The node (index) whose replica leads and serves reads.
    fn leader(&self) -> Option<usize> {
        self.nodes.iter().enumerate().find_map(|(index, node)| {
            let health = node.as_ref()?.health();
            let replica = health.partitions.first()?.replica.clone()?;
            (replica.leader == replica.node_id
                && node
                    .as_ref()?
                    .fetch_blocking(TOPIC, PartitionId(0), Offset(0), common::no_wait(1))
                    .is_ok())
            .then_some(index)
        })
    }

    fn wait_for_leader(&self) -> usize {
        let mut leader = None;
        wait_until(WAIT, "a leader serving reads", || {
            leader = self.leader();
            leader.is_some()
        });
        leader.expect("found")
    }
}

/// Sends `values` as one batch through `runtime` (forwarded to the leader
/// if it follows) and records the outcome. A leader change may refuse it
/// with `NotLeader` (nothing stored: sent again once a leader is known) or
/// leave its outcome unknown (`NotCommitted`: recorded as such).
fn produce(runtime: &Runtime, history: &mut History, values: std::ops::Range<u32>) {
    let producer = runtime.producer(TOPIC).expect("producer");
    let records = || {
        values
            .clone()
            .map(|value| Record::new(format!("value-{value}")))
            .collect::<Vec<Record>>()
    };
    let started = std::time::Instant::now();
    let outcome = loop {
        match producer.send_batch_blocking(records()) {
            Err(ProduceError::NotLeader { .. }) if started.elapsed() < WAIT => {
                // An election is under way: wait for its result.
                std::thread::sleep(Duration::from_millis(20));
            }
            other => break other,
        }
    };
    match outcome {
        Ok(placed) => {
            for (value, metadata) in values.zip(placed) {
                history.send(
                    format!("value-{value}"),
                    SendOutcome::Ok {
                        partition: metadata.partition.0,
                        offset: metadata.offset.0,
                    },
                );
            }
        }
        Err(ProduceError::NotCommitted(_)) => {
            for value in values {
                history.send(format!("value-{value}"), SendOutcome::Unknown);
            }
        }
        Err(error) => panic!("produce failed: {error}"),
    }
}

/// Every send has an answer, nearly all of them acknowledged.
fn assert_sent(report: &common::history::Report, total: usize) {
    assert_eq!(report.acknowledged + report.unknown, total, "{report}");
    assert!(report.acknowledged >= total * 9 / 10, "{report}");
}

/// Reads the whole partition from `runtime` (the leader), recording polls;
/// control offsets (Raft's own entries) are recorded as skipped.
fn read_all(runtime: &Runtime, history: &mut History, consumer: u64) {
    let mut position = Offset(0);
    loop {
        let fetched = runtime
            .fetch_blocking(TOPIC, PartitionId(0), position, common::no_wait(1 << 20))
            .expect("fetch from the leader");
        history.watermark(consumer, 0, fetched.high_watermark.0);
        let mut expected = position.0;
        for record in &fetched.records {
            for skipped in expected..record.offset.0 {
                history.skipped(0, skipped);
            }
            history.poll(0, record.offset.0, common::value_of(record).to_vec());
            expected = record.offset.0 + 1;
        }
        for skipped in expected..fetched.next_offset.0 {
            history.skipped(0, skipped);
        }
        if fetched.next_offset >= fetched.high_watermark {
            return;
        }
        position = fetched.next_offset;
    }
}

fn assert_data_dir_has_raft_state(path: &Path) {
    let state = path
        .join("topics")
        .join(format!("{TOPIC}-0"))
        .join("raft.state");
    assert!(state.exists(), "{} missing", state.display());
}

#[test]
fn a_three_node_cluster_replicates_fails_over_and_catches_up() {
    let mut cluster = Cluster::start(3);
    let mut history = History::new();
    let leader = cluster.wait_for_leader();
    let follower = (leader + 1) % 3;

    // An embedded producer on a follower's node is forwarded to the leader
    // and answered with the offsets the record got there.
    produce(cluster.node(follower), &mut history, 5_000..5_100);
    // Reads are the leader's: a follower refuses them.
    let read = cluster.node(follower).fetch_blocking(
        TOPIC,
        PartitionId(0),
        Offset(0),
        common::no_wait(1024),
    );
    assert!(
        matches!(read, Err(FetchError::NotLeader { .. })),
        "a follower does not serve reads: {read:?}"
    );

    for batch in 0..20 {
        produce(
            cluster.node(leader),
            &mut history,
            batch * 100..(batch + 1) * 100,
        );
    }
    read_all(cluster.node(leader), &mut history, 1);

    // Every replica has the acknowledged records in its log.
    wait_until(WAIT, "followers to apply everything", || {
        let target = cluster.node(leader).health().partitions[0]
            .replica
            .clone()
            .expect("replica")
            .commit_index;
        (0..3).all(|index| {
            cluster.node(index).health().partitions[0]
                .replica
                .as_ref()
                .is_some_and(|replica| replica.applied_index >= target)
        })
    });

    // The leader goes away; the two others elect one and keep serving.
    cluster.stop_node(leader);
    let new_leader = cluster.wait_for_leader();
    assert_ne!(new_leader, leader);
    read_all(cluster.node(new_leader), &mut history, 1);
    for batch in 20..30 {
        produce(
            cluster.node(new_leader),
            &mut history,
            batch * 100..(batch + 1) * 100,
        );
    }

    // The old leader comes back and catches up from the new one.
    cluster.start_node(leader);
    wait_until(WAIT, "the old leader to catch up", || {
        let target = cluster.node(new_leader).health().partitions[0]
            .replica
            .clone()
            .expect("replica")
            .commit_index;
        cluster.node(leader).health().partitions[0]
            .replica
            .as_ref()
            .is_some_and(|replica| replica.applied_index >= target)
    });
    read_all(cluster.node(new_leader), &mut history, 1);
    let report = history.check();
    assert_eq!(report.anomalies(), 0, "{report}");
    assert_sent(&report, 3_100);
    for index in 0..3 {
        assert_data_dir_has_raft_state(&cluster.data_dir(index));
    }
    for index in 0..3 {
        cluster.stop_node(index);
    }
}

#[test]
fn a_node_id_the_cluster_does_not_know_is_refused() {
    let mut cluster = Cluster::start(3);
    cluster.wait_for_leader();
    for index in 0..3 {
        cluster.stop_node(index);
    }
    // Node 3's data, started as node 4 of a cluster {1, 2, 4}.
    let mut config = cluster.config(2);
    let node = config.node.as_mut().expect("[node]");
    node.id = 4;
    let Err(error) = Runtime::start(config) else {
        panic!("an unknown node id must be refused");
    };
    let message = error.to_string();
    assert!(
        message.contains("node 4 is not a member") && message.contains("[1, 2, 3]"),
        "{message}"
    );
}

#[test]
fn garbage_on_the_raft_port_is_refused_and_the_cluster_keeps_serving() {
    use std::io::{Read, Write};
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader();
    let mut history = History::new();
    let garbage: [&[u8]; 3] = [
        b"GET / HTTP/1.1\r\n\r\n",
        // A header declaring a 4 GiB frame.
        &[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0],
        // A frame whose checksum does not match.
        &[4, 0, 0, 0, 1, 2, 3, 4, 9, 9, 9, 9],
    ];
    for port in cluster.ports.clone() {
        for bytes in garbage {
            let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))
                .expect("connect to the raft port");
            stream.set_read_timeout(Some(WAIT)).unwrap();
            stream.write_all(bytes).unwrap();
            let mut buffer = [0u8; 8];
            assert!(
                matches!(stream.read(&mut buffer), Ok(0) | Err(_)),
                "port {port}: the connection must be closed"
            );
        }
    }
    // Still one cluster, still serving: produce through the leader commits.
    produce(cluster.node(leader), &mut history, 0..100);
    read_all(cluster.node(leader), &mut history, 1);
    let report = history.check();
    assert_eq!(report.anomalies(), 0, "{report}");
    assert_sent(&report, 100);
    for index in 0..3 {
        cluster.stop_node(index);
    }
}

/// Every replica of every partition on every running node is quiet.
fn all_quiet(cluster: &Cluster) -> bool {
    cluster.nodes.iter().flatten().all(|runtime| {
        let metrics = runtime.metrics();
        !metrics.partitions.is_empty()
            && metrics
                .partitions
                .iter()
                .all(|partition| partition.raft_quiet)
    })
}

#[test]
fn idle_groups_stop_ticking_and_wake_for_work_and_failures() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader();
    let mut history = History::new();
    // Nothing to do: every replica stops ticking (leaders send no
    // heartbeats; their nodes' announcements vouch for the groups).
    wait_until(WAIT, "every replica to go quiet", || all_quiet(&cluster));
    // Work wakes the group; when it is done, it goes quiet again.
    produce(cluster.node(leader), &mut history, 0..1_000);
    wait_until(WAIT, "quiet again after the produce", || {
        all_quiet(&cluster)
    });
    let leader = cluster.wait_for_leader();

    // The quiet leader's node stops: its vouches stop, the followers wake
    // and elect a new leader, which serves.
    cluster.stop_node(leader);
    let new_leader = cluster.wait_for_leader();
    assert_ne!(new_leader, leader);
    produce(cluster.node(new_leader), &mut history, 1_000..1_100);
    read_all(cluster.node(new_leader), &mut history, 1);
    let report = history.check();
    assert_eq!(report.anomalies(), 0, "{report}");
    assert_sent(&report, 1_100);
    for index in 0..3 {
        cluster.stop_node(index);
    }
}

#[test]
fn a_node_joins_and_another_leaves_while_producers_keep_going() {
    use millrace::replication::MembershipChange;
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut cluster = Cluster::start(3);
    cluster.wait_for_leader();
    // Node 4 starts with `join = true`, its peers the three members.
    let port = free_ports(1)[0];
    let address: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut config = cluster.config(0);
    config.data_dir = cluster.root.path().join("node4");
    let node = config.node.as_mut().expect("[node]");
    node.id = 4;
    node.listen = address;
    node.join = true;
    node.peers = (0..3)
        .map(|index| millrace::config::PeerConfig {
            id: index as u64 + 1,
            address: format!("127.0.0.1:{}", cluster.ports[index])
                .parse()
                .unwrap(),
        })
        .collect();
    let joiner = Runtime::start(config).expect("start the joining node");

    let (outcomes, received) = std::sync::mpsc::channel::<History>();
    let stop = AtomicBool::new(false);
    let removed = std::thread::scope(|scope| {
        let producer = scope.spawn(|| {
            let mut history = History::new();
            let mut next = 0u32;
            while !stop.load(Ordering::Relaxed) {
                // Through node 1, which forwards to whichever node leads.
                produce(cluster.node(0), &mut history, next..next + 10);
                next += 10;
            }
            outcomes.send(history).expect("send the history");
        });
        cluster
            .node(0)
            .change_membership(MembershipChange::Add { id: 4, address })
            .expect("add node 4");
        wait_until(WAIT, "node 4 to be a caught-up voter", || {
            let Some(leader) = cluster.leader() else {
                return false;
            };
            let commit = cluster.node(leader).health().partitions[0]
                .replica
                .clone()
                .expect("replica")
                .commit_index;
            joiner.health().partitions[0]
                .replica
                .as_ref()
                .is_some_and(|replica| {
                    replica.voters == vec![1, 2, 3, 4] && replica.applied_index >= commit
                })
        });
        // A follower other than node 1 leaves.
        let leader = cluster.wait_for_leader();
        let leaving = (1..3).find(|&index| index != leader).expect("a follower");
        cluster
            .node(0)
            .change_membership(MembershipChange::Remove {
                id: leaving as u64 + 1,
            })
            .expect("remove a node");
        stop.store(true, Ordering::Relaxed);
        producer.join().expect("producer thread");
        leaving
    });
    let mut history = received.recv().expect("history");
    cluster.stop_node(removed);
    // The group is 1, 4 and the third: still a majority of three, serving.
    produce(cluster.node(0), &mut history, 1_000_000..1_000_100);
    let leader = cluster.wait_for_leader();
    let voters = cluster.node(leader).health().partitions[0]
        .replica
        .clone()
        .expect("replica")
        .voters;
    assert!(
        !voters.contains(&(removed as u64 + 1)) && voters.contains(&4),
        "{voters:?}"
    );
    read_all(cluster.node(leader), &mut history, 1);
    let report = history.check();
    assert_eq!(report.anomalies(), 0, "{report}");
    assert!(report.acknowledged >= 100, "{report}");
    let _ = joiner.shutdown();
    for index in 0..3 {
        cluster.stop_node(index);
    }
}

#[test]
fn partitions_with_fewer_replicas_than_nodes_are_placed_and_reachable_from_every_node() {
    let mut cluster = Cluster::start(3);
    cluster.wait_for_leader();
    // Each node holds a voting replica of two of the three partitions.
    for index in 0..3 {
        let health = cluster.node(index).health();
        let voting = health
            .partitions
            .iter()
            .filter(|partition| partition.topic == PLACED)
            .filter(|partition| {
                partition
                    .replica
                    .as_ref()
                    .is_some_and(|replica| replica.voters.contains(&(index as u64 + 1)))
            })
            .count();
        assert_eq!(
            voting,
            2,
            "node {} holds {voting} of the 3 partitions",
            index + 1
        );
    }
    // Every node reaches every partition: one that holds no replica of it
    // forwards to the leader its peers announce.
    let mut history = History::new();
    let mut next = 0u32;
    for index in 0..3 {
        let producer = cluster.node(index).producer(PLACED).expect("producer");
        for partition in 0..3 {
            let values: Vec<String> = (next..next + 20).map(|n| format!("placed-{n}")).collect();
            next += 20;
            let started = std::time::Instant::now();
            let placed = loop {
                let records = values
                    .iter()
                    .map(|value| Record::new(value.clone()))
                    .collect();
                match producer.send_batch_to_blocking(PartitionId(partition), records) {
                    Err(ProduceError::NotLeader { .. }) if started.elapsed() < WAIT => {
                        // The leader is not announced yet.
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    other => break other.expect("acknowledged"),
                }
            };
            for (position, value) in values.into_iter().enumerate() {
                history.send(
                    value,
                    SendOutcome::Ok {
                        partition,
                        offset: placed.base_offset.0 + position as u64,
                    },
                );
            }
        }
    }
    // Read each partition from its leader.
    for partition in 0..3u32 {
        let leader = (0..3)
            .find(|&index| {
                cluster
                    .node(index)
                    .fetch_blocking(
                        PLACED,
                        PartitionId(partition),
                        Offset(0),
                        common::no_wait(1),
                    )
                    .is_ok()
            })
            .expect("a leader serves the partition");
        let fetched = cluster
            .node(leader)
            .fetch_blocking(
                PLACED,
                PartitionId(partition),
                Offset(0),
                common::no_wait(1 << 20),
            )
            .expect("fetch");
        let mut expected = 0;
        for record in &fetched.records {
            for skipped in expected..record.offset.0 {
                history.skipped(partition, skipped);
            }
            history.poll(
                partition,
                record.offset.0,
                common::value_of(record).to_vec(),
            );
            expected = record.offset.0 + 1;
        }
    }
    let report = history.check();
    assert_eq!(report.anomalies(), 0, "{report}");
    assert_eq!(report.acknowledged, 180, "{report}");
    for index in 0..3 {
        cluster.stop_node(index);
    }
}
