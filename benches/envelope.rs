//! Criterion benchmarks of the JSON-RPC envelope parser.
//!
//! `cargo bench --bench envelope`

// criterion_group! generates undocumented items.
#![allow(missing_docs)]

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use mcp_gateway_core::Envelope;

fn bench(c: &mut Criterion) {
    let small = Bytes::from_static(
        br#"{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"get_weather","arguments":{"city":"Paris","units":"metric"},"_meta":{"progressToken":"p-1"}}}"#,
    );
    let big_args = format!(
        r#"{{"jsonrpc":"2.0","id":"req-7","method":"tools/call","params":{{"name":"summarise","arguments":{{"text":"{}","tags":[1,2,3,4,5,6,7,8]}}}}}}"#,
        "lorem ipsum dolor sit amet ".repeat(600)
    );
    let big = Bytes::from(big_args);
    let response = Bytes::from_static(
        br#"{"jsonrpc":"2.0","id":42,"result":{"content":[{"type":"text","text":"18 degrees and sunny"}],"isError":false}}"#,
    );
    let mut g = c.benchmark_group("envelope");
    for (name, body) in [
        ("tools_call_small", &small),
        ("tools_call_16k", &big),
        ("response", &response),
    ] {
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| Envelope::parse(black_box(body.clone())).unwrap())
        });
    }
    g.bench_function("serde_json_value_small_baseline", |b| {
        b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(&small)).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
