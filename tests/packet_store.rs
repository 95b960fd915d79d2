//! The packet store of `examples/packet_store.rs`, run through its own code
//! (the example file is compiled into this test as a module, so the test
//! exercises exactly the store the example ships, with no dependency on a
//! built example binary or on parsing its output).
//!
//! The fixture spreads packets over 14 days with a 24 h hot window, so more
//! than nine tenths of them are older than the window: the final counts
//! check fails if the background fill does nothing, and the "answered while
//! the fill runs" check fails if the fill runs before the store is ready.

#[allow(dead_code)]
#[path = "../examples/packet_store.rs"]
mod packet_store;

mod common;

use common::wait_until;
use millrace::{Record, Runtime};
use packet_store::{
    config, generate, hour_of, now_ms, produce, FillState, HourCount, PacketStore, Phase,
    StoreConfig, StoredPacket, DAY_MS,
};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const TOPIC: &str = "packets";
const NODES: u32 = 50;
/// Packets per node compared with the reference.
const LATEST: usize = 10;

/// What the store must hold: counts per hour and, per node, every packet
/// in the store's order (newest first: by ts, then partition, then offset).
struct Reference {
    per_hour: BTreeMap<i64, u64>,
    per_node: HashMap<String, Vec<StoredPacket>>,
    packets: u64,
}

impl Reference {
    fn of(stored: &[StoredPacket]) -> Reference {
        let mut per_hour = BTreeMap::new();
        let mut per_node: HashMap<String, Vec<StoredPacket>> = HashMap::new();
        for packet in stored {
            *per_hour.entry(hour_of(packet.packet.ts)).or_insert(0) += 1;
            per_node
                .entry(packet.packet.node.clone())
                .or_default()
                .push(packet.clone());
        }
        for packets in per_node.values_mut() {
            packets.sort_by_key(|p| std::cmp::Reverse((p.packet.ts, p.partition.0, p.offset.0)));
        }
        Reference {
            per_hour,
            per_node,
            packets: stored.len() as u64,
        }
    }

    /// The store answers exactly as the reference says: every hour's count,
    /// and the latest packets of every node (and of one that never sent).
    fn assert_store_matches(&self, store: &PacketStore) {
        let counts = store.counts_per_hour(i64::MIN / 2, i64::MAX / 2).unwrap();
        assert_eq!(
            counts.iter().map(|count| count.packets).sum::<u64>(),
            self.packets,
            "packets in the store"
        );
        let expected: Vec<HourCount> = self
            .per_hour
            .iter()
            .map(|(hour_start_ms, packets)| HourCount {
                hour_start_ms: *hour_start_ms,
                packets: *packets,
            })
            .collect();
        assert_eq!(counts, expected, "packets per hour");
        assert_eq!(
            self.per_node.len(),
            NODES as usize,
            "every node sent packets"
        );
        for (node, packets) in &self.per_node {
            let latest = store.latest(node, LATEST).unwrap();
            assert_eq!(
                latest,
                packets.iter().take(LATEST).cloned().collect::<Vec<_>>(),
                "latest packets of {node}"
            );
        }
        assert!(store.latest("n-unknown", LATEST).unwrap().is_empty());
    }
}

/// Bytes of every sealed block of the topic.
fn sealed_bytes(data_dir: &Path, partitions: u32) -> u64 {
    (0..partitions)
        .flat_map(|partition| {
            let directory = common::partition_directory(data_dir, TOPIC, partition);
            common::files_ending(&directory, ".log")
                .into_iter()
                .map(move |name| std::fs::metadata(directory.join(name)).unwrap().len())
        })
        .sum()
}

/// 14 days of packets; the store loads the 24 h hot window, is ready, and
/// fills in the rest. After a restart (runtime and store) whose old blocks
/// load slowly in the background, queries are answered while the fill is
/// still running; packets produced meanwhile are seen (the tail); at the end
/// the counts per hour and the latest packets of every node equal the
/// reference computed from what was produced, and the malformed record is
/// counted, not stored.
#[test]
fn the_store_serves_its_hot_window_first_and_ends_with_every_packet() {
    let directory = tempfile::tempdir().unwrap();
    let config = config(directory.path()).unwrap();
    let partitions = config.topics[0].partitions;
    let hot_window = config.startup.hot_window;
    assert_eq!(hot_window, Duration::from_secs(24 * 60 * 60));

    // First run: produce, start the store, let it fill.
    let runtime = Arc::new(Runtime::start(config.clone()).unwrap());
    let now = now_ms();
    let packets = generate(11, NODES, 12_000, now - 14 * DAY_MS, now - 1_000);
    let mut produced = produce(&runtime, TOPIC, &packets).unwrap();
    runtime
        .producer(TOPIC)
        .unwrap()
        .send_blocking(
            Record::new("not a packet")
                .with_key("n-3")
                .with_timestamp_ms(now - 3 * DAY_MS),
        )
        .unwrap();
    let hot_count = packets.iter().filter(|p| p.ts >= now - DAY_MS).count();
    assert!(
        hot_count * 10 < packets.len(),
        "most packets are older than the hot window: {hot_count} of {}",
        packets.len()
    );

    let store =
        PacketStore::start(Arc::clone(&runtime), StoreConfig::new(TOPIC, hot_window)).unwrap();
    let ready = store.wait_ready(Duration::from_secs(10)).unwrap();
    assert!(ready.hot_packets >= hot_count as u64);
    let filled = store
        .wait_for(Duration::from_secs(20), |status| status.fill.is_terminal())
        .unwrap();
    assert!(
        matches!(filled.fill, FillState::Complete { .. }),
        "{filled:?}"
    );
    Reference::of(&produced).assert_store_matches(&store);
    store.stop();
    let runtime = Arc::try_unwrap(runtime)
        .ok()
        .expect("the store let go of the runtime");
    runtime.shutdown().unwrap();

    // Restart, with the old blocks loading in the background over about 2 s.
    let mut config = config;
    let sealed = sealed_bytes(&config.data_dir, partitions);
    assert!(sealed > 1 << 20, "megabytes of sealed blocks: {sealed}");
    config.startup.background_load_bytes_per_second = Some(sealed / 2);
    let runtime = Arc::new(Runtime::start(config).unwrap());
    let store =
        PacketStore::start(Arc::clone(&runtime), StoreConfig::new(TOPIC, hot_window)).unwrap();
    let ready = store.wait_ready(Duration::from_secs(10)).unwrap();
    assert_eq!(ready.phase, Phase::Ready);
    assert!(
        ready.hot_packets < produced.len() as u64 / 4,
        "the hot load reads the hot window only: {ready:?}"
    );
    // Queries are answered now, before the fill is complete.
    let node = &packets[packets.len() - 1].node;
    let latest = store.latest(node, 1).unwrap();
    assert_eq!(
        latest.first().map(|stored| stored.packet.ts),
        produced
            .iter()
            .filter(|stored| &stored.packet.node == node)
            .map(|stored| stored.packet.ts)
            .max(),
        "the newest packet of {node} is in the hot window"
    );
    store.counts_per_hour(now - 6 * 3_600_000, now).unwrap();
    let during = store.status().unwrap();
    match &during.fill {
        FillState::Running { loaded, total } => {
            assert!(loaded < total, "{during:?}");
            assert!(*total > 9 * produced.len() as u64 / 10, "{during:?}");
        }
        other => panic!("the queries must be answered while the fill runs, got {other:?}"),
    }
    assert!(during.packets < produced.len() as u64, "{during:?}");

    // Packets produced now reach the store through its tail.
    let live_now = now_ms();
    let live = generate(12, NODES, 20, live_now - 500, live_now);
    produced.extend(produce(&runtime, TOPIC, &live).unwrap());
    let newest_live = live.iter().max_by_key(|p| p.ts).unwrap().clone();
    wait_until(
        Duration::from_secs(10),
        "the store sees the live packets",
        || {
            store
                .latest(&newest_live.node, 1)
                .unwrap()
                .first()
                .is_some_and(|stored| stored.packet == newest_live)
        },
    );

    let filled = store
        .wait_for(Duration::from_secs(20), |status| status.fill.is_terminal())
        .unwrap();
    match &filled.fill {
        FillState::Complete { loaded, .. } => {
            assert_eq!(
                Some(*loaded),
                match during.fill {
                    FillState::Running { total, .. } => Some(total),
                    _ => None,
                }
            );
        }
        other => panic!("the fill must complete, got {other:?}"),
    }
    assert!(
        filled.ready_after.unwrap()
            < match filled.fill {
                FillState::Complete { after, .. } => after,
                _ => Duration::ZERO,
            }
    );
    assert_eq!(filled.packets, produced.len() as u64, "{filled:?}");
    assert_eq!(filled.malformed, 1, "{filled:?}");
    assert_eq!(filled.tail_error, None);
    Reference::of(&produced).assert_store_matches(&store);
    store.stop();
    let runtime = Arc::try_unwrap(runtime)
        .ok()
        .expect("the store let go of the runtime");
    runtime.shutdown().unwrap();
}
