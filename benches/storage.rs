//! Codec microbenchmarks: one frame of 1,000 records with 100-byte values.
//!
//! ```text
//! cargo bench --bench storage
//! ```

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use millrace::storage::batch::{decode_frame, encode_frame, ProducerFields};
use millrace::{Offset, Record, Term};

const RECORDS: usize = 1_000;
const VALUE_BYTES: usize = 100;
const NOW_MS: i64 = 1_700_000_000_000;

fn records() -> Vec<Record> {
    (0..RECORDS)
        .map(|index| {
            let mut value = vec![b'x'; VALUE_BYTES];
            value[..8].copy_from_slice(&(index as u64).to_le_bytes());
            Record::new(value)
        })
        .collect()
}

fn encode(records: &[Record], out: &mut Vec<u8>) {
    encode_frame(
        out,
        Offset(0),
        Term(0),
        ProducerFields::NONE,
        records,
        NOW_MS,
    );
}

fn codec(criterion: &mut Criterion) {
    let records = records();
    let mut group = criterion.benchmark_group("frame_1000x100B");
    group.throughput(Throughput::Elements(RECORDS as u64));

    let mut out = Vec::new();
    group.bench_function("encode_frame", |bencher| {
        bencher.iter(|| {
            out.clear();
            encode(black_box(&records), &mut out);
            black_box(out.len())
        })
    });

    let mut encoded = Vec::new();
    encode(&records, &mut encoded);
    let frame = Bytes::from(encoded);
    group.bench_function("decode_frame", |bencher| {
        bencher.iter(|| black_box(decode_frame(black_box(&frame)).expect("valid frame")))
    });
    group.bench_function("decode_frame+records", |bencher| {
        bencher.iter(|| {
            let view = decode_frame(black_box(&frame)).expect("valid frame");
            black_box(view.records().expect("valid records"))
        })
    });
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
