//! Graceful shutdown under load (LESSONS.md section 1): a normal stop is not
//! an error, every accepted batch is acknowledged durable or refused with a
//! clear error, a waiting consumer hears "no more records", and no thread of
//! the runtime outlives `shutdown()`.
//!
//! Its own test binary: it lists the process's threads and asserts no
//! ERROR event anywhere in the process, so no other test may run beside it.

mod common;

use common::capture;
use common::history::{History, SendOutcome};
use common::{config, topic, wait_until};
use millrace::{FetchOptions, Offset, PartitionId, ProduceError, Record, Runtime};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::Duration;
use tracing::Level;

const PRODUCERS: u32 = 8;
const BUSY_PARTITIONS: u32 = 4;
const RECORDS_PER_BATCH: usize = 20;

/// Names of the threads of this process (`/proc/self/task/*/comm`, which
/// the kernel cuts to 15 bytes).
fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| task.ok())
        .filter_map(|task| std::fs::read_to_string(task.path().join("comm")).ok())
        .map(|name| name.trim_end().to_owned())
        .collect()
}

/// One producer thread's sends: each batch's values and outcome.
type Sends = Vec<(Vec<String>, Result<u64, ProduceError>)>;

/// Eight producers are sending batches when `shutdown()` is called from
/// another thread. Proves: `shutdown()` returns `Ok`; every produce either
/// was acknowledged (and is there, at its offset, after a restart) or got
/// `ShuttingDown`/`Unavailable`; a consumer long-polling at the end of a
/// partition gets `Ok(None)`; no ERROR event; no `millrace-*` or `actix-*`
/// thread is left.
///
/// Catches: shutdown reporting the normal stop as an error (LESSONS.md
/// section 1) or logging it at ERROR; `Drain` not answering parked fetches
/// (verified: the consumer then gets `Err(Unavailable)` when the actor
/// stops under it); drain not
/// waiting for in-flight batches (acknowledged records missing after
/// restart, or producers seeing other errors); a writer, deleter, loader or
/// arbiter thread not joined.
#[test]
fn shutdown_mid_batch_acknowledges_or_refuses_every_produce_and_leaves_no_thread() {
    capture::install();
    let directory = tempfile::tempdir().unwrap();
    let topics = || vec![topic("busy", BUSY_PARTITIONS), topic("idle", 1)];
    let runtime = Runtime::start(config(directory.path(), topics())).unwrap();

    // A consumer waiting at the end of a partition nobody writes to. It is
    // polled once here, which puts its fetch in the partition's mailbox; the
    // `offsets` request behind it in the same mailbox returns only after the
    // fetch was handled, i.e. parked at the high watermark. So the fetch is
    // certainly waiting when the shutdown begins.
    let mut consumer = runtime.consumer("idle", PartitionId(0), Offset(0)).unwrap();
    consumer.set_options(FetchOptions {
        max_bytes: 1 << 20,
        max_wait: Duration::from_secs(30),
    });
    let mut waiting = Box::pin(async move { consumer.poll().await });
    let first_poll = waiting
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()));
    assert!(first_poll.is_pending(), "nothing to read yet: it waits");
    runtime.offsets_blocking("idle", PartitionId(0)).unwrap();
    let consumer = std::thread::Builder::new()
        .name("idle-consumer".into())
        .spawn(move || futures_executor::block_on(waiting))
        .unwrap();

    let acknowledged = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|index| {
            let producer = runtime.producer("busy").unwrap();
            let (acknowledged, stop) = (acknowledged.clone(), stop.clone());
            std::thread::Builder::new()
                .name(format!("producer-{index}"))
                .spawn(move || {
                    let partition = PartitionId(index % BUSY_PARTITIONS);
                    let mut sends: Sends = Vec::new();
                    for batch in 0.. {
                        let values: Vec<String> = (0..RECORDS_PER_BATCH)
                            .map(|record| format!("p{index}-b{batch}-r{record}"))
                            .collect();
                        let outcome = producer
                            .send_batch_to_blocking(
                                partition,
                                values.iter().cloned().map(Record::new).collect(),
                            )
                            .map(|ack| ack.base_offset.0);
                        let refused = outcome.is_err();
                        if !refused {
                            acknowledged.fetch_add(1, Ordering::Relaxed);
                        }
                        sends.push((values, outcome));
                        // Stop at the first refusal (the runtime is going
                        // away), or when the test gives up.
                        if refused || stop.load(Ordering::Relaxed) {
                            break;
                        }
                    }
                    sends
                })
                .unwrap()
        })
        .collect();

    wait_until(Duration::from_secs(20), "producers in full swing", || {
        acknowledged.load(Ordering::Relaxed) >= 200
    });
    let runtime_threads = |names: Vec<String>| -> Vec<String> {
        names
            .into_iter()
            // sled runs its IO on a process-global pool (`sled-io-*`) that
            // outlives any one database: sled's threads, not the runtime's.
            .filter(|name| !name.starts_with("sled"))
            .filter(|name| name.starts_with("millrace") || name.starts_with("actix"))
            .collect()
    };
    let running = runtime_threads(thread_names());
    assert!(
        running.iter().any(|name| name.starts_with("millrace-wal"))
            && running.iter().any(|name| name.starts_with("actix")),
        "the thread check below sees the runtime's threads: {running:?}"
    );
    let shutdown = std::thread::Builder::new()
        .name("shutdown-caller".into())
        .spawn(move || runtime.shutdown())
        .unwrap();
    let result = shutdown.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    assert!(result.is_ok(), "shutdown returns Ok: {result:?}");

    let mut history = History::new();
    let mut refused = 0;
    for (index, producer) in producers.into_iter().enumerate() {
        let partition = index as u32 % BUSY_PARTITIONS;
        for (values, outcome) in producer.join().unwrap() {
            match outcome {
                Ok(base_offset) => {
                    for (position, value) in values.into_iter().enumerate() {
                        let offset = base_offset + position as u64;
                        history.send(value, SendOutcome::Ok { partition, offset });
                    }
                }
                Err(ProduceError::ShuttingDown | ProduceError::Unavailable) => {
                    refused += 1;
                    for value in values {
                        history.send(value, SendOutcome::Unknown);
                    }
                }
                Err(other) => panic!("producer {index}: unexpected error {other:?}"),
            }
        }
    }
    assert_eq!(refused, PRODUCERS, "each producer stopped on a refusal");

    let polled = consumer.join().unwrap();
    assert!(
        matches!(polled, Ok(None)),
        "a consumer waiting at shutdown hears \"no more records\": {polled:?}"
    );

    let errors = capture::events_where(|event| event.level == Level::ERROR);
    assert!(errors.is_empty(), "no ERROR event: {errors:#?}");
    assert!(
        !capture::events_where(|event| event.message == "millrace stopped").is_empty(),
        "the stop is logged (at INFO)"
    );

    let left = runtime_threads(thread_names());
    assert!(left.is_empty(), "threads left after shutdown: {left:?}");

    let runtime = Runtime::start(config(directory.path(), topics())).unwrap();
    for partition in 0..BUSY_PARTITIONS {
        for record in common::read_partition(&runtime, "busy", PartitionId(partition)) {
            history.poll(
                partition,
                record.offset.0,
                common::value_of(&record).to_vec(),
            );
        }
    }
    let report = history.check();
    report.assert_valid("after a shutdown under load");
    runtime.shutdown().unwrap();
}
