//! Criterion benchmarks of the SSE scanner, in boundary mode (what the relay
//! runs with no hook) and collect mode (with an inspection hook).
//!
//! `cargo bench --bench sse_scanner`

// criterion_group! generates undocumented items.
#![allow(missing_docs)]

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use mcp_gateway_core::sse::{encode_event, SseScanner};

fn bench(c: &mut Criterion) {
    let mut stream = Vec::new();
    for i in 0..200 {
        let data = format!(
            r#"{{"jsonrpc":"2.0","method":"notifications/progress","params":{{"progressToken":"t","progress":{i},"total":200}}}}"#
        );
        encode_event(&mut stream, Some("message"), Some(&format!("{i}/0")), &data);
    }
    let mut g = c.benchmark_group("sse_scanner");
    g.throughput(Throughput::Bytes(stream.len() as u64));
    for chunk in [64usize, 1024, 16 * 1024] {
        g.bench_function(format!("boundaries_chunk_{chunk}"), |b| {
            b.iter(|| {
                let mut s = SseScanner::boundaries_only();
                for c in stream.chunks(chunk) {
                    s.feed(black_box(c), |_| {});
                }
                s.events_seen()
            })
        });
        g.bench_function(format!("collect_chunk_{chunk}"), |b| {
            b.iter(|| {
                let mut s = SseScanner::collecting(1 << 20);
                let mut n = 0usize;
                for c in stream.chunks(chunk) {
                    s.feed(black_box(c), |e| n += e.data.len());
                }
                n
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
