//! A session record as stored in Redis: compact JSON, bodies in base64.

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use mcp_gateway_core::session::{SessionId, SessionRecord, SessionSetup};
use mcp_gateway_core::ProtocolVersion;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Stored {
    /// Backend instance.
    i: usize,
    /// Backend session id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    u: Option<String>,
    /// Protocol version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    v: Option<String>,
    /// Owner (principal key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    o: Option<String>,
    /// Started, ms since the Unix epoch.
    c: u64,
    /// Detached (its instance was drained).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    d: bool,
    /// The recorded setup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    s: Option<Setup>,
}

#[derive(Serialize, Deserialize)]
struct Setup {
    init: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    level: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    subs: Vec<(String, String)>,
}

/// The record as stored, with its end of life (ms since the Unix epoch)
/// in front: `{eol}|{json}`, so a script reads the end of life without
/// decoding the record.
pub(super) fn encode(rec: &SessionRecord, now_ms: u64, eol_ms: u64) -> String {
    let setup = rec.setup().map(|s| {
        let (init, level, subs) = s.parts();
        Setup {
            init: B64.encode(init),
            level: level.map(|l| B64.encode(l)),
            subs: subs
                .into_iter()
                .map(|(u, b)| (u.into(), B64.encode(b)))
                .collect(),
        }
    });
    let stored = Stored {
        i: rec.instance(),
        u: rec.upstream_id().map(str::to_owned),
        v: rec.protocol_version().map(|v| v.as_str().to_owned()),
        o: rec.owner().map(str::to_owned),
        c: now_ms.saturating_sub(rec.age().as_millis() as u64),
        d: rec.detached(),
        s: setup,
    };
    let json = serde_json::to_string(&stored).unwrap_or_default();
    format!("{eol_ms}|{json}")
}

/// The record of session `id` from what [`encode`] wrote.
pub(super) fn decode(id: &str, text: &[u8], now_ms: u64) -> Option<SessionRecord> {
    let sep = text.iter().position(|b| *b == b'|')?;
    let stored: Stored = serde_json::from_slice(&text[sep + 1..]).ok()?;
    let upstream = stored.u.and_then(|u| http::HeaderValue::from_str(&u).ok());
    let setup = match stored.s {
        Some(s) => {
            let init = Bytes::from(B64.decode(s.init).ok()?);
            let level = s.level.and_then(|l| B64.decode(l).ok()).map(Bytes::from);
            let subs = s
                .subs
                .into_iter()
                .filter_map(|(u, b)| Some((u.into_boxed_str(), Bytes::from(B64.decode(b).ok()?))))
                .collect();
            Some(Arc::new(SessionSetup::from_parts(init, level, subs)))
        }
        None => None,
    };
    Some(
        SessionRecord::new(SessionId::from_string(id), stored.i, upstream)
            .with_protocol_version(stored.v.as_deref().and_then(ProtocolVersion::parse))
            .with_owner(stored.o)
            .with_setup(setup)
            .with_detached(stored.d)
            .with_age(Duration::from_millis(now_ms.saturating_sub(stored.c))),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_survives_the_round_trip() {
        let setup = Arc::new(SessionSetup::new(Bytes::from_static(b"{\"init\":1}")));
        setup.set_log_level(Bytes::from_static(b"lvl"));
        setup.subscribe("file:///a", Bytes::from_static(b"sub"));
        let rec = SessionRecord::new(
            SessionId::random(),
            2,
            Some(http::HeaderValue::from_static("up-1")),
        )
        .with_protocol_version(Some(ProtocolVersion::V2025_11_25))
        .with_owner(Some("key:ann".into()))
        .with_setup(Some(setup));
        let now = 1_000_000;
        let text = encode(&rec, now, now + 5000);
        assert!(text.starts_with("1005000|"));
        let back = decode(rec.id().as_str(), text.as_bytes(), now).unwrap();
        assert_eq!(back.id(), rec.id());
        assert_eq!(back.instance(), 2);
        assert_eq!(back.upstream_id(), Some("up-1"));
        assert_eq!(back.owner(), Some("key:ann"));
        assert_eq!(back.protocol_version(), Some(ProtocolVersion::V2025_11_25));
        assert!(!back.detached());
        let s = back.setup().unwrap();
        assert_eq!(s.initialize().as_ref(), b"{\"init\":1}");
        assert_eq!(
            s.replay(),
            vec![Bytes::from_static(b"lvl"), Bytes::from_static(b"sub")]
        );
        assert!(decode("x", b"garbage", now).is_none());
    }
}
