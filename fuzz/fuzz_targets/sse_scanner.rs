//! The SSE scanner never panics, and splitting the input anywhere yields the
//! same events as feeding it whole.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mcp_gateway_core::sse::SseScanner;

fn events(chunks: &[&[u8]]) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    let mut s = SseScanner::collecting(1 << 16);
    let mut out = Vec::new();
    for c in chunks {
        s.feed(c, |e| out.push((e.data.to_vec(), e.id.map(<[u8]>::to_vec))));
    }
    out
}

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let cut = data[0] as usize % data.len();
    let body = &data[1..];
    let cut = cut.min(body.len());
    assert_eq!(events(&[body]), events(&[&body[..cut], &body[cut..]]));
});
