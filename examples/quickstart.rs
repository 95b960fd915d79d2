//! The quickstart: embed millrace with `examples/quickstart.toml`, produce a
//! stream durably, consume it back, and print what happened.
//!
//! ```text
//! cargo run --release --example quickstart            # uses ./data
//! cargo run --release --example quickstart -- OTHER.toml
//! ```

use millrace::config::Config;
use millrace::{FetchOptions, Offset, PartitionId, Record, Runtime};
use std::time::{Duration, Instant};

const RECORDS: usize = 200_000;
const BATCH_RECORDS: usize = 1_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter("warn")
        .init();
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "examples/quickstart.toml".into());
    let config = Config::from_file(path.as_ref())?;
    println!("config {path}: data_dir {}", config.data_dir.display());
    let runtime = Runtime::start(config)?;
    let topic = "events";
    let partitions = runtime
        .partition_count(topic)
        .ok_or("the quickstart config needs a topic named events")?;
    let before: Vec<Offset> = (0..partitions)
        .map(|partition| {
            runtime
                .offsets_blocking(topic, PartitionId(partition))
                .map(|o| o.high_watermark)
        })
        .collect::<Result<_, _>>()?;

    // Produce: keyed records in batches; each call returns once durable (fsync).
    let producer = runtime.producer(topic)?;
    let started = Instant::now();
    for batch_start in (0..RECORDS).step_by(BATCH_RECORDS) {
        let batch = (batch_start..batch_start + BATCH_RECORDS)
            .map(|i| {
                Record::new(format!(
                    "{{\"user\":{},\"action\":\"click\",\"n\":{i}}}",
                    i % 1000
                ))
                .with_key(format!("user-{}", i % 1000))
            })
            .collect();
        producer.send_batch_blocking(batch)?;
    }
    let produce_time = started.elapsed();
    println!(
        "produced {RECORDS} records to {topic} ({partitions} partitions) in {:.2?}: {:.0} records/s, all durable",
        produce_time,
        RECORDS as f64 / produce_time.as_secs_f64()
    );

    // Consume what this run produced, partition by partition.
    let started = Instant::now();
    let mut consumed = 0;
    for partition in 0..partitions {
        let mut consumer =
            runtime.consumer(topic, PartitionId(partition), before[partition as usize])?;
        consumer.set_options(FetchOptions {
            max_wait: Duration::ZERO,
            ..FetchOptions::default()
        });
        loop {
            let Some(fetched) = consumer.poll_blocking()? else {
                break;
            };
            if fetched.records.is_empty() {
                break;
            }
            consumed += fetched.records.len();
        }
    }
    let consume_time = started.elapsed();
    println!(
        "consumed {consumed} records in {:.2?}: {:.0} records/s",
        consume_time,
        consumed as f64 / consume_time.as_secs_f64()
    );
    for partition in 0..partitions {
        let offsets = runtime.offsets_blocking(topic, PartitionId(partition))?;
        println!(
            "  {topic}-{partition}: log start {} log end {} high watermark {}",
            offsets.log_start_offset, offsets.log_end_offset, offsets.high_watermark
        );
    }
    let metrics = runtime.metrics();
    println!(
        "fsyncs: {} for {} records (group commit)",
        metrics.fsyncs_total, metrics.records_produced_total
    );
    runtime.shutdown()?;
    if consumed != RECORDS {
        return Err(format!("consumed {consumed} records, expected {RECORDS}").into());
    }
    println!("shut down cleanly; run again to append more (data is kept in the data_dir)");
    Ok(())
}
