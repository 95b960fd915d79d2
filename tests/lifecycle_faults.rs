//! Lifecycle faults injected with `fail` failpoints: an I/O error while
//! loading blocks at startup (`storage::load_block`) and a panic in a
//! partition's produce handler (`partition::produce`). Built only with
//! `--features failpoints` (a `[[test]]` entry in Cargo.toml requires it):
//!
//! ```text
//! cargo test --features failpoints --test lifecycle_faults
//! ```
//!
//! Failpoints are process-global, so the tests of this binary run one at a
//! time (the `SERIAL` guard, plus `FailScenario`, which clears every
//! failpoint when it ends, even after a panic).

mod common;

use common::history::{History, SendOutcome};
use common::timed::{self, TimedSpec, TimedStore};
use common::{config, topic, wait_until};
use millrace::health::{LoadState, PartitionHealth, Phase};
use millrace::{PartitionId, ProduceError, Record, Runtime};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

static SERIAL: Mutex<()> = Mutex::new(());

/// Test harness only: one failpoint scenario at a time in this process.
fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How long a load or a restart may take to reach the state waited for.
const DEADLINE: Duration = Duration::from_secs(20);

fn partition_health(runtime: &Runtime, partition: u32) -> PartitionHealth {
    runtime
        .health()
        .partitions
        .into_iter()
        .find(|health| health.partition == partition)
        .unwrap_or_else(|| panic!("no partition {partition}"))
}

fn wait_for_terminal_load(runtime: &Runtime) -> PartitionHealth {
    let mut last = None;
    wait_until(DEADLINE, "a terminal load state", || {
        let health = partition_health(runtime, 0);
        let terminal = health.load.is_terminal();
        last = Some(health);
        terminal
    });
    last.unwrap()
}

fn spec() -> TimedSpec {
    TimedSpec {
        cold_records: 1_200,
        hot_records: 400,
        value_bytes: 200,
        records_per_batch: 8,
    }
}

/// An I/O error while loading a block ends the load in `Failed` naming the
/// error, and the partition still serves produce (and the blocks it loaded).
/// `skip(store)` loads succeed first: the hot-block count puts the error
/// in the background load, 0 puts it in the first hot chunk.
///
/// Catches: an error branch that never reaches a terminal state (health
/// wedged at `Loading`: the wait times out), an error swallowed as
/// `Complete`, or a failed load that takes the partition down.
fn an_io_error_while_loading_ends_in_failed(tag: &str, skip: fn(&TimedStore) -> usize) {
    let _serial = serial();
    let scenario = fail::FailScenario::setup();
    let directory = tempfile::tempdir().unwrap();
    let store = TimedStore::build(directory.path(), tag, spec());
    let hot = store.hot_blocks();
    assert!(
        store.cold_blocks().len() > hot.len(),
        "most blocks are cold"
    );
    let skip = skip(&store);

    fail::cfg("storage::load_block", &format!("{skip}*off->return")).unwrap();
    let runtime = Runtime::start(timed::timed_config(
        directory.path(),
        &store.topic,
        timed::startup(None),
    ))
    .unwrap();
    let health = wait_for_terminal_load(&runtime);
    match &health.load {
        LoadState::Failed { error } => assert!(
            error.contains("injected load failure"),
            "the error names the cause: {error}"
        ),
        other => panic!("{tag}: expected Failed, got {other:?}"),
    }
    assert!(
        health
            .degraded
            .iter()
            .any(|reason| reason.contains("startup load failed")),
        "{health:?}"
    );
    assert_eq!(health.phase, Phase::Serving, "{health:?}");
    // The error came at the read it was armed for: every block before it loaded.
    assert_eq!(runtime.metrics().blocks_loaded_total, skip as u64);

    // Still serves produce, and the record reads back.
    fail::remove("storage::load_block");
    let producer = runtime.producer(&store.topic).unwrap();
    let ack = producer
        .send_batch_to_blocking(PartitionId(0), vec![Record::new("after the failure")])
        .unwrap_or_else(|error| panic!("{tag}: produce after a failed load: {error}"));
    assert_eq!(ack.base_offset.0, store.records.len() as u64);
    let fetched = runtime
        .fetch_blocking(
            &store.topic,
            PartitionId(0),
            ack.base_offset,
            common::no_wait(4096),
        )
        .unwrap();
    assert_eq!(
        fetched.records[0].value.as_deref(),
        Some(&b"after the failure"[..])
    );
    // What loaded before the error is served too.
    let loaded_hot = &hot[hot.len().saturating_sub(skip)..];
    if let Some(oldest) = loaded_hot.first() {
        let total = store.records.len() as u64;
        let recent = store.read_range(&runtime, oldest.base_offset, total);
        store.assert_matches(oldest.base_offset, &recent);
    }
    runtime.shutdown().unwrap();
    scenario.teardown();
}

#[test]
fn an_io_error_in_the_background_load_ends_in_failed_and_produce_still_works() {
    // The hot load reads every hot block once; the next read is the loader's.
    an_io_error_while_loading_ends_in_failed("background-io", |store| store.hot_blocks().len());
}

#[test]
fn an_io_error_in_the_hot_load_ends_in_failed_and_produce_still_works() {
    an_io_error_while_loading_ends_in_failed("hot-io", |_| 0);
}

/// A panic in partition 0's produce handler (`1*panic`): that produce gets
/// `Unavailable`; the partition is restarted from disk (`restarts == 1`,
/// `partition_restarts_total == 1`) and serves produce again; nothing
/// acknowledged before is lost; partition 1's producer succeeds on every
/// send before, during and after, and partition 1 is never restarted.
///
/// Catches: a panic that is not caught at the handler boundary (the actor
/// and its waiting callers would hang or the whole arbiter die, stopping
/// partition 1 on the same thread), a restart that is not counted, a
/// restarted partition that never serves again, a restart that loses data.
#[test]
fn a_panic_in_a_produce_handler_restarts_only_that_partition() {
    let _serial = serial();
    let scenario = fail::FailScenario::setup();
    let directory = tempfile::tempdir().unwrap();
    let runtime = Runtime::start(config(directory.path(), vec![topic("restarts", 2)])).unwrap();
    let producer = runtime.producer("restarts").unwrap();
    let mut history = History::new();
    for index in 0..20 {
        let value = format!("p0-before-{index}");
        let ack = producer
            .send_batch_to_blocking(PartitionId(0), vec![Record::new(value.clone())])
            .unwrap();
        history.send(
            value,
            SendOutcome::Ok {
                partition: 0,
                offset: ack.base_offset.0,
            },
        );
    }

    // Partition 1's producer sends without pause. It holds `gate` for the
    // length of each send, so the test can arm the failpoint while no
    // partition-1 produce is in flight (the failpoint is process-wide: its
    // one panic must hit partition 0).
    let gate = Arc::new(Mutex::new(()));
    let stop = Arc::new(AtomicBool::new(false));
    let steady_acks = Arc::new(AtomicU64::new(0));
    let steady = {
        let (gate, stop, steady_acks) = (gate.clone(), stop.clone(), steady_acks.clone());
        let producer = producer.clone();
        std::thread::Builder::new()
            .name("steady-producer".into())
            .spawn(move || {
                let mut sent = Vec::new();
                let mut index = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let _held = gate.lock().unwrap();
                    let value = format!("p1-{index}");
                    let outcome = producer
                        .send_batch_to_blocking(PartitionId(1), vec![Record::new(value.clone())]);
                    sent.push((value, outcome));
                    steady_acks.fetch_add(1, Ordering::Relaxed);
                    index += 1;
                }
                sent
            })
            .unwrap()
    };
    wait_until(DEADLINE, "partition 1 is being produced to", || {
        steady_acks.load(Ordering::Relaxed) >= 5
    });

    let before_panic;
    {
        let _held = gate.lock().unwrap();
        fail::cfg("partition::produce", "1*panic").unwrap();
        let outcome =
            producer.send_batch_to_blocking(PartitionId(0), vec![Record::new("p0-panicked")]);
        assert!(
            matches!(outcome, Err(ProduceError::Unavailable)),
            "the produce that hit the panic: {outcome:?}"
        );
        history.send("p0-panicked", SendOutcome::Unknown);
        before_panic = steady_acks.load(Ordering::Relaxed);
    }
    wait_until(DEADLINE, "partition 1 goes on after the panic", || {
        steady_acks.load(Ordering::Relaxed) >= before_panic + 5
    });

    // Partition 0 comes back: retry until a produce is acknowledged.
    let started = Instant::now();
    let mut retries = 0;
    let ack = loop {
        let value = format!("p0-after-{retries}");
        match producer.send_batch_to_blocking(PartitionId(0), vec![Record::new(value.clone())]) {
            Ok(ack) => {
                history.send(
                    value,
                    SendOutcome::Ok {
                        partition: 0,
                        offset: ack.base_offset.0,
                    },
                );
                break ack;
            }
            Err(ProduceError::Unavailable) => history.send(value, SendOutcome::Unknown),
            Err(other) => panic!("while partition 0 restarts: {other:?}"),
        }
        retries += 1;
        assert!(started.elapsed() < DEADLINE, "partition 0 serves again");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(
        ack.base_offset.0, 20,
        "the panicked produce appended nothing"
    );

    let restarted = partition_health(&runtime, 0);
    assert_eq!(restarted.restarts, 1, "{restarted:?}");
    assert_eq!(restarted.phase, Phase::Serving, "{restarted:?}");
    assert_eq!(runtime.metrics().partition_restarts_total, 1);

    stop.store(true, Ordering::Relaxed);
    let sent = steady.join().unwrap();
    assert!(
        sent.len() as u64 > before_panic,
        "partition 1 produced after the panic"
    );
    for (value, outcome) in sent {
        let ack = outcome.unwrap_or_else(|error| panic!("partition 1 send {value}: {error}"));
        history.send(
            value,
            SendOutcome::Ok {
                partition: 1,
                offset: ack.base_offset.0,
            },
        );
    }
    let steady_health = partition_health(&runtime, 1);
    assert_eq!(steady_health.restarts, 0, "{steady_health:?}");

    for partition in [0, 1] {
        for record in common::read_partition(&runtime, "restarts", PartitionId(partition)) {
            history.poll(
                partition,
                record.offset.0,
                common::value_of(&record).to_vec(),
            );
        }
    }
    history
        .check()
        .assert_valid("after a produce handler panic");
    runtime.shutdown().unwrap();
    scenario.teardown();
}
