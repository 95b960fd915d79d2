//! Replication benchmarks: three millrace nodes on this one machine.
//!
//! ```text
//! cargo bench --bench replication -- throughput [--runs 5] [--records 1000000] [--in-flight 8] [--partitions 3]
//! cargo bench --bench replication -- latency    [--runs 3] [--seconds 5] [--rate RECORDS_PER_S]
//! cargo bench --bench replication -- failover   [--runs 5]
//! ```
//!
//! - `throughput`: three in-process runtimes (each its own data directory,
//!   peer traffic over TCP on 127.0.0.1), one topic of `--partitions`
//!   partitions with `replication_factor = 3` and `acks = "all"`, `fsync =
//!   "always"`; 100-byte values in batches of 1,000, sent to each
//!   partition's leader, `--in-flight` batches outstanding per partition.
//!   In the same run, the same load on one node (`replication_factor = 1`)
//!   for the ratio. Prints records/s per run and the medians.
//! - `latency`: the same cluster, batches of 1,000 paced to `--rate`
//!   records/s (default: half the median of a short throughput pass);
//!   prints the acknowledgement latency's p50, p99 and max per run.
//! - `failover`: three `millrace node` processes, one single-partition
//!   topic; `millrace produce --brokers` (all three) is fed one record per
//!   millisecond; the partition's leader is killed with SIGKILL, and the
//!   time to the first acknowledgement of a record sent after the kill is
//!   measured (default election timeout: `tick = "50ms"`, 10 ticks).
//!
//! Data directories go under cargo's `target/tmp` (the repository's
//! filesystem, never a tmpfs) and are removed after each run.

use millrace::config::Config;
use millrace::{PartitionId, Record, Runtime};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const TOPIC: &str = "bench";
const VALUE_BYTES: usize = 100;
const BATCH_RECORDS: usize = 1_000;

fn argument(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|arg| arg == name)
        .and_then(|index| args.get(index + 1))
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    listeners
        .iter()
        .map(|listener| listener.local_addr().unwrap().port())
        .collect()
}

fn bench_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tmp/replication-bench");
    std::fs::create_dir_all(&root).expect("bench directory");
    root
}

/// `members` runtimes of one cluster (or one plain node when 1).
fn start_cluster(root: &Path, members: usize, partitions: u32) -> Vec<Runtime> {
    let ports = free_ports(members);
    let configs: Vec<Config> = (0..members)
        .map(|index| {
            let node = if members > 1 {
                let peers: Vec<String> = (0..members)
                    .filter(|&other| other != index)
                    .map(|other| format!("\"{}@127.0.0.1:{}\"", other + 1, ports[other]))
                    .collect();
                format!(
                    "[node]\nid = {}\nlisten = \"127.0.0.1:{}\"\npeers = [{}]\n",
                    index + 1,
                    ports[index],
                    peers.join(", ")
                )
            } else {
                String::new()
            };
            let text = format!(
                "data_dir = \"{}\"\n{node}[[topic]]\nname = \"{TOPIC}\"\npartitions = {partitions}\nreplication_factor = {members}\n",
                root.join(format!("node{}", index + 1)).display()
            );
            Config::from_toml_str(&text, "<bench>").expect("config")
        })
        .collect();
    configs
        .into_iter()
        .map(|config| Runtime::start(config).expect("start"))
        .collect()
}

/// For each partition, the index of the runtime that leads it (and serves).
fn leaders(runtimes: &[Runtime], partitions: u32) -> Vec<usize> {
    let started = Instant::now();
    loop {
        let found: Vec<Option<usize>> = (0..partitions)
            .map(|partition| {
                runtimes.iter().position(|runtime| {
                    runtime
                        .fetch_blocking(
                            TOPIC,
                            PartitionId(partition),
                            millrace::Offset(0),
                            millrace::FetchOptions {
                                max_bytes: 1,
                                max_wait: Duration::ZERO,
                            },
                        )
                        .is_ok()
                })
            })
            .collect();
        if found.iter().all(Option::is_some) {
            return found.into_iter().map(Option::unwrap).collect();
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no leaders");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn batch() -> Vec<Record> {
    (0..BATCH_RECORDS)
        .map(|_| Record::new(vec![b'x'; VALUE_BYTES]))
        .collect()
}

/// Produces `records` in batches to every partition's leader, `in_flight`
/// batches outstanding per partition (a thread each). Returns records/s.
fn produce_all(runtimes: &[Runtime], partitions: u32, records: u64, in_flight: u64) -> f64 {
    let leaders = leaders(runtimes, partitions);
    let batches_total = records / BATCH_RECORDS as u64;
    let workers = partitions as u64 * in_flight;
    let started = Instant::now();
    std::thread::scope(|scope| {
        for worker in 0..workers {
            let partition = (worker % partitions as u64) as u32;
            let runtime = &runtimes[leaders[partition as usize]];
            let batches = batches_total / workers + u64::from(worker < batches_total % workers);
            scope.spawn(move || {
                let producer = runtime.producer(TOPIC).expect("producer");
                for _ in 0..batches {
                    producer
                        .send_batch_to_blocking(PartitionId(partition), batch())
                        .expect("acknowledged");
                }
            });
        }
    });
    (batches_total * BATCH_RECORDS as u64) as f64 / started.elapsed().as_secs_f64()
}

fn shutdown(runtimes: Vec<Runtime>, root: &Path) {
    for runtime in runtimes {
        let _ = runtime.shutdown();
    }
    let _ = std::fs::remove_dir_all(root);
}

fn throughput() {
    let runs = argument("--runs", 5);
    let records = argument("--records", 1_000_000);
    let in_flight = argument("--in-flight", 8);
    let partitions = argument("--partitions", 3) as u32;
    let mut replicated = Vec::new();
    let mut single = Vec::new();
    for run in 0..runs {
        for (members, results) in [(3usize, &mut replicated), (1, &mut single)] {
            let root = bench_root().join(format!("throughput-{run}-{members}"));
            let _ = std::fs::remove_dir_all(&root);
            let runtimes = start_cluster(&root, members, partitions);
            let rate = produce_all(&runtimes, partitions, records, in_flight);
            shutdown(runtimes, &root);
            println!("run={run} nodes={members} records={records} partitions={partitions} in_flight={in_flight} records_per_s={rate:.0}");
            results.push(rate);
        }
    }
    let replicated = median(&mut replicated);
    let single = median(&mut single);
    println!(
        "median replicated_3_nodes_acks_all={replicated:.0} single_node={single:.0} ratio={:.2}",
        replicated / single
    );
}

fn latency() {
    let runs = argument("--runs", 3);
    let seconds = argument("--seconds", 5);
    let partitions = 3u32;
    let root = bench_root().join("latency-probe");
    let _ = std::fs::remove_dir_all(&root);
    let runtimes = start_cluster(&root, 3, partitions);
    let probe = produce_all(&runtimes, partitions, 300_000, 8);
    shutdown(runtimes, &root);
    let rate = argument("--rate", (probe / 2.0) as u64) as f64;
    println!("throughput probe {probe:.0} records/s; latency at {rate:.0} records/s");
    let mut p99s = Vec::new();
    for run in 0..runs {
        let root = bench_root().join(format!("latency-{run}"));
        let _ = std::fs::remove_dir_all(&root);
        let runtimes = start_cluster(&root, 3, partitions);
        let leaders = leaders(&runtimes, partitions);
        let interval = Duration::from_secs_f64(BATCH_RECORDS as f64 / rate);
        let batches = (seconds as f64 * rate / BATCH_RECORDS as f64) as u64;
        let (sender, receiver) = mpsc::channel::<Duration>();
        std::thread::scope(|scope| {
            // Paced sends: each batch is due at start + i * interval and is
            // sent by one of several threads so a slow ack never delays the
            // next send (open loop).
            let started = Instant::now();
            let threads = 32u64;
            for thread in 0..threads {
                let sender = sender.clone();
                let runtimes = &runtimes;
                let leaders = &leaders;
                scope.spawn(move || {
                    let producer: Vec<_> = runtimes
                        .iter()
                        .map(|runtime| runtime.producer(TOPIC).expect("producer"))
                        .collect();
                    let mut index = thread;
                    while index < batches {
                        let due = started + interval * index as u32;
                        if let Some(wait) = due.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                        let partition = (index % partitions as u64) as u32;
                        let sent = Instant::now();
                        producer[leaders[partition as usize]]
                            .send_batch_to_blocking(PartitionId(partition), batch())
                            .expect("acknowledged");
                        let _ = sender.send(sent.elapsed());
                        index += threads;
                    }
                });
            }
        });
        drop(sender);
        let mut latencies: Vec<f64> = receiver.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        latencies.sort_by(|a, b| a.total_cmp(b));
        let at =
            |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
        println!(
            "run={run} rate={rate:.0} batches={} p50_ms={:.2} p99_ms={:.2} max_ms={:.2}",
            latencies.len(),
            at(0.5),
            at(0.99),
            latencies.last().copied().unwrap_or(0.0)
        );
        p99s.push(at(0.99));
        shutdown(runtimes, &root);
    }
    println!("median p99_ms={:.2}", median(&mut p99s));
}

struct NodeProcess {
    child: Option<Child>,
    http: SocketAddr,
}

impl NodeProcess {
    fn leader(&self) -> Option<u64> {
        let mut stream = TcpStream::connect_timeout(&self.http, Duration::from_millis(500)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
        write!(stream, "GET /health HTTP/1.0\r\n\r\n").ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let body = response.split_once("\r\n\r\n")?.1;
        let health: serde_json::Value = serde_json::from_str(body).ok()?;
        health["partitions"][0]["replica"]["leader"]
            .as_u64()
            .filter(|&leader| leader != 0)
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn failover() {
    let runs = argument("--runs", 5);
    let binary = env!("CARGO_BIN_EXE_millrace");
    let mut times = Vec::new();
    for run in 0..runs {
        let root = bench_root().join(format!("failover-{run}"));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let ports = free_ports(9);
        let mut nodes = Vec::new();
        for index in 0..3 {
            let peers: Vec<String> = (0..3)
                .filter(|&other| other != index)
                .map(|other| format!("\"{}@127.0.0.1:{}\"", other + 1, ports[other]))
                .collect();
            let config = root.join(format!("node{}.toml", index + 1));
            std::fs::write(
                &config,
                format!(
                    "data_dir = \"{}\"\n[node]\nid = {}\nlisten = \"127.0.0.1:{}\"\npeers = [{}]\n[kafka]\nlisten = \"127.0.0.1:{}\"\n[http]\nlisten = \"127.0.0.1:{}\"\n[[topic]]\nname = \"{TOPIC}\"\npartitions = 1\nreplication_factor = 3\n",
                    root.join(format!("node{}", index + 1)).display(),
                    index + 1,
                    ports[index],
                    peers.join(", "),
                    ports[3 + index],
                    ports[6 + index]
                ),
            )
            .unwrap();
            let child = Command::new(binary)
                .arg("node")
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("millrace node");
            nodes.push(NodeProcess {
                child: Some(child),
                http: format!("127.0.0.1:{}", ports[6 + index]).parse().unwrap(),
            });
        }
        let leader = loop {
            if let Some(leader) = nodes.iter().find_map(NodeProcess::leader) {
                break leader;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let brokers: Vec<String> = (0..3)
            .map(|i| format!("127.0.0.1:{}", ports[3 + i]))
            .collect();
        let mut producer = Command::new(binary)
            .args([
                "produce",
                "-t",
                TOPIC,
                "--print-acks",
                "--brokers",
                &brokers.join(","),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("millrace produce");
        let mut input = producer.stdin.take().unwrap();
        let output = producer.stdout.take().unwrap();
        let (acks, acked) = mpsc::channel::<(Instant, String)>();
        std::thread::spawn(move || {
            for line in BufReader::new(output).lines().map_while(Result::ok) {
                let _ = acks.send((Instant::now(), line));
            }
        });
        // Feed one record per millisecond; kill the leader after a second.
        let started = Instant::now();
        let mut sent = 0u64;
        let mut killed_at: Option<(Instant, u64)> = None;
        let mut received = 0u64;
        let mut first_after_kill = None;
        while first_after_kill.is_none() && started.elapsed() < Duration::from_secs(30) {
            let _ = writeln!(input, "r{sent}");
            let _ = input.flush();
            sent += 1;
            if killed_at.is_none() && started.elapsed() > Duration::from_secs(1) {
                if let Some(mut child) = nodes[leader as usize - 1].child.take() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                killed_at = Some((Instant::now(), sent));
            }
            while let Ok((at, _line)) = acked.try_recv() {
                received += 1;
                // Acks come in input order: ack number `received` is for
                // record `received - 1`.
                if let Some((kill, boundary)) = killed_at {
                    if received > boundary && first_after_kill.is_none() {
                        first_after_kill = Some(at.duration_since(kill));
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(input);
        let _ = producer.kill();
        let _ = producer.wait();
        drop(nodes);
        let _ = std::fs::remove_dir_all(&root);
        let ms = first_after_kill.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3);
        println!("run={run} killed_leader={leader} first_ack_after_kill_ms={ms:.0}");
        times.push(ms);
    }
    println!("median first_ack_after_kill_ms={:.0}", median(&mut times));
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args
        .iter()
        .skip(1)
        .find(|arg| !arg.starts_with('-'))
        .map(String::as_str)
    {
        Some("throughput") => throughput(),
        Some("latency") => latency(),
        Some("failover") => failover(),
        // `cargo bench` with no scenario (or cargo's own flags): all three, briefly.
        _ => {
            println!(
                "usage: cargo bench --bench replication -- throughput|latency|failover [options]"
            );
        }
    }
}
