//! The README's embedding example, compiled by `cargo test` so it cannot
//! drift from the API.
//!
//! ```text
//! cargo run --example embedding        # uses examples/quickstart.toml and ./data
//! ```

use millrace::{config::Config, FetchOptions, Offset, PartitionId, Record, Runtime};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runtime = Runtime::start(Config::from_file("examples/quickstart.toml".as_ref())?)?;
    let producer = runtime.producer("events")?;
    // Returns once the record is durable; keyed records go to murmur2(key) % partitions.
    let placed = producer.send_blocking(Record::new("clicked").with_key("user-7"))?;
    println!(
        "stored at partition {} offset {}",
        placed.partition, placed.offset
    );
    // Atomic batch to one partition: all records stored, or none.
    let batch = (0..1000)
        .map(|i| Record::new(format!("event {i}")))
        .collect();
    let ack = producer.send_batch_to_blocking(PartitionId(0), batch)?;
    println!("batch at offsets {}..={}", ack.base_offset, ack.last_offset);
    // Read a partition from an offset; long-polls up to max_wait at the end.
    let mut consumer = runtime.consumer("events", PartitionId(0), Offset(0))?;
    consumer.set_options(FetchOptions {
        max_wait: std::time::Duration::ZERO,
        ..Default::default()
    });
    while let Some(fetched) = consumer.poll_blocking()? {
        if fetched.records.is_empty() {
            break;
        }
        for record in &fetched.records {
            let _ = (record.offset, &record.value);
        }
    }
    print!("{}", runtime.metrics_text()); // Prometheus text
    runtime.shutdown()?; // drains in-flight appends, stops every thread
    Ok(())
}
