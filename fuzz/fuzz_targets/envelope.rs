//! The envelope parser never panics, and whatever it accepts echoes an id
//! that is itself valid JSON.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mcp_gateway_core::Envelope;

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = Envelope::parse(bytes::Bytes::copy_from_slice(data)) {
        for m in env.messages() {
            if let Some(id) = m.id() {
                assert!(mcp_gateway_core::RequestId::from_raw_json(id.as_bytes()).is_some());
            }
        }
    }
});
