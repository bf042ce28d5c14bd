//! Entries of a request's `params._meta`, read and written in the JSON
//! text: where MCP carries W3C trace context (`traceparent`, `tracestate`,
//! `baggage`, unprefixed keys).
//!
//! The envelope parser reads only what routing needs; these functions are
//! for the requests that are traced, and touch nothing else: reading
//! decodes only the named `_meta` members, and writing splices the new
//! `_meta` object into the body, leaving every other byte as it came.

use std::borrow::Cow;
use std::ops::Range;

use crate::json_scan::{Kind, ScanError, Scanner};

/// The W3C trace context keys MCP puts in `params._meta`.
pub const TRACE_KEYS: [&str; 3] = ["traceparent", "tracestate", "baggage"];

/// The string values of `keys` in the `params._meta` of one JSON-RPC
/// message (`None` for a key that is absent or not a string). A batch, a
/// body that is not JSON, or a message without `params._meta` gives all
/// `None`.
///
/// ```
/// use mcp_gateway_core::meta::read_meta;
/// let body = br#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{"_meta":{"traceparent":"00-ab-cd-01"}}}"#;
/// let [tp, ts] = read_meta(body, ["traceparent", "tracestate"]);
/// assert_eq!(tp.as_deref(), Some("00-ab-cd-01"));
/// assert_eq!(ts, None);
/// ```
pub fn read_meta<const N: usize>(body: &[u8], keys: [&str; N]) -> [Option<String>; N] {
    let mut out = [const { None }; N];
    let Some(spots) = locate(body) else {
        return out;
    };
    let Some(meta) = spots.meta else {
        return out;
    };
    for (k, v) in meta.members {
        if let Some(i) = keys.iter().position(|x| *x == k) {
            let raw = &body[v];
            if let Ok(s) = serde_json::from_slice::<String>(raw) {
                out[i] = Some(s);
            }
        }
    }
    out
}

/// `body` with `entries` set in `params._meta` (each replacing a member of
/// the same name), or `None` when the body is not one JSON-RPC request or
/// notification with object (or absent) `params`: a batch, a response,
/// by-position `params`, or not JSON. A missing `_meta` (or `params`) is
/// added. Every byte outside `_meta` is kept as it was.
///
/// ```
/// use mcp_gateway_core::meta::write_meta;
/// let body = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}"#;
/// let out = write_meta(body, &[("traceparent", "00-ab-cd-01")]).unwrap();
/// assert_eq!(
///     std::str::from_utf8(&out).unwrap(),
///     r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"_meta":{"traceparent":"00-ab-cd-01"},"name":"echo"}}"#
/// );
/// ```
pub fn write_meta(body: &[u8], entries: &[(&str, &str)]) -> Option<Vec<u8>> {
    let spots = locate(body)?;
    if !spots.has_method {
        return None;
    }
    let mut fresh = Vec::with_capacity(64 + entries.len() * 64);
    fresh.push(b'{');
    for (i, (k, v)) in entries.iter().enumerate() {
        if i > 0 {
            fresh.push(b',');
        }
        serde_json::to_writer(&mut fresh, k).ok()?;
        fresh.push(b':');
        serde_json::to_writer(&mut fresh, v).ok()?;
    }
    let mut out = Vec::with_capacity(body.len() + fresh.len() + 32);
    match (spots.params, spots.meta) {
        (Some(_), Some(meta)) => {
            // The members kept, after the new ones.
            for (k, v) in &meta.members {
                if entries.iter().any(|(e, _)| e == k) {
                    continue;
                }
                if fresh.len() > 1 {
                    fresh.push(b',');
                }
                serde_json::to_writer(&mut fresh, k.as_ref()).ok()?;
                fresh.push(b':');
                fresh.extend_from_slice(&body[v.clone()]);
            }
            fresh.push(b'}');
            out.extend_from_slice(&body[..meta.value.start]);
            out.extend_from_slice(&fresh);
            out.extend_from_slice(&body[meta.value.end..]);
        }
        (Some(params), None) => {
            fresh.push(b'}');
            let at = params.open + 1;
            out.extend_from_slice(&body[..at]);
            out.extend_from_slice(b"\"_meta\":");
            out.extend_from_slice(&fresh);
            if !params.empty {
                out.push(b',');
            }
            out.extend_from_slice(&body[at..]);
        }
        (None, _) if spots.params_other => return None,
        (None, _) => {
            fresh.push(b'}');
            let at = spots.open + 1;
            out.extend_from_slice(&body[..at]);
            out.extend_from_slice(b"\"params\":{\"_meta\":");
            out.extend_from_slice(&fresh);
            out.extend_from_slice(b"},");
            out.extend_from_slice(&body[at..]);
        }
    }
    Some(out)
}

/// Where the parts of one message are.
struct Spots<'a> {
    /// The message's `{`.
    open: usize,
    has_method: bool,
    /// `params`, when it is an object.
    params: Option<ParamsSpot>,
    /// `params` present but not an object (or null).
    params_other: bool,
    meta: Option<MetaSpot<'a>>,
}

struct ParamsSpot {
    /// Its `{`.
    open: usize,
    empty: bool,
}

struct MetaSpot<'a> {
    /// The `_meta` object's text.
    value: Range<usize>,
    /// Its members: decoded key, value text.
    members: Vec<(Cow<'a, str>, Range<usize>)>,
}

fn locate(body: &[u8]) -> Option<Spots<'_>> {
    let src = std::str::from_utf8(body).ok()?;
    let mut sc = Scanner::new(src);
    if sc.peek_kind().ok()? != Kind::Object {
        return None;
    }
    let mut spots = Spots {
        open: sc.pos(),
        has_method: false,
        params: None,
        params_other: false,
        meta: None,
    };
    sc.object(|sc, key| match key.as_ref() {
        "method" => {
            spots.has_method = true;
            sc.skip()
        }
        "params" if sc.peek_kind()? == Kind::Object => {
            let open = sc.pos();
            let mut empty = true;
            let mut meta = None;
            sc.object(|sc, key| {
                empty = false;
                if key == "_meta" && sc.peek_kind()? == Kind::Object {
                    meta = Some(meta_members(sc)?);
                    Ok(())
                } else {
                    sc.skip()
                }
            })?;
            spots.params = Some(ParamsSpot { open, empty });
            spots.meta = meta;
            Ok(())
        }
        "params" => {
            spots.params_other = true;
            sc.skip()
        }
        _ => sc.skip(),
    })
    .ok()?;
    sc.finish().ok()?;
    Some(spots)
}

fn meta_members<'a>(sc: &mut Scanner<'a>) -> Result<MetaSpot<'a>, ScanError> {
    let start = sc.pos();
    let mut members = Vec::new();
    sc.object(|sc, key| {
        sc.ws();
        let from = sc.pos();
        sc.skip()?;
        members.push((key, from..sc.pos()));
        Ok(())
    })?;
    Ok(MetaSpot {
        value: start..sc.pos(),
        members,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn w(body: &str, e: &[(&str, &str)]) -> Option<Value> {
        write_meta(body.as_bytes(), e).map(|b| serde_json::from_slice(&b).unwrap())
    }

    #[test]
    fn adds_meta_and_params_where_missing() {
        let tp = [("traceparent", "00-1-2-01")];
        assert_eq!(
            w(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#, &tp).unwrap(),
            json!({"jsonrpc":"2.0","id":1,"method":"ping","params":{"_meta":{"traceparent":"00-1-2-01"}}})
        );
        assert_eq!(
            w(
                r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{}}"#,
                &tp
            )
            .unwrap(),
            json!({"jsonrpc":"2.0","id":1,"method":"ping","params":{"_meta":{"traceparent":"00-1-2-01"}}})
        );
        assert_eq!(
            w(
                r#" { "jsonrpc":"2.0","method":"x","params": { "a" : [1] } } "#,
                &tp
            )
            .unwrap(),
            json!({"jsonrpc":"2.0","method":"x","params":{"a":[1],"_meta":{"traceparent":"00-1-2-01"}}})
        );
    }

    #[test]
    fn replaces_same_keys_and_keeps_the_rest() {
        let body = r#"{"jsonrpc":"2.0","id":"a","method":"tools/call","params":{"name":"n","_meta":{"progressToken":7,"traceparent":"old","x\"y":{"z":1}}}}"#;
        let out = write_meta(
            body.as_bytes(),
            &[("traceparent", "new"), ("tracestate", "k=v")],
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v["params"]["_meta"],
            json!({"traceparent":"new","tracestate":"k=v","progressToken":7,"x\"y":{"z":1}})
        );
        // Only `_meta` changed.
        let s = std::str::from_utf8(&out).unwrap();
        assert!(s.starts_with(
            r#"{"jsonrpc":"2.0","id":"a","method":"tools/call","params":{"name":"n","_meta":{"#
        ));
        assert!(s.ends_with("}}}"));
        // No key twice.
        assert_eq!(s.matches("traceparent").count(), 1);
    }

    #[test]
    fn leaves_what_it_cannot_carry() {
        let tp = [("traceparent", "t")];
        assert!(w(r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#, &tp).is_none());
        assert!(w(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#, &tp).is_none());
        assert!(w(r#"{"jsonrpc":"2.0","id":1,"method":"x","params":[1]}"#, &tp).is_none());
        assert!(w(r#"{"jsonrpc":"2.0","id":1,"method":"x""#, &tp).is_none());
    }

    #[test]
    fn reads_trace_keys() {
        let body = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"_meta":{"traceparent":"00-a-b-01","baggage":"k=v","tracestate":5}}}"#;
        let [tp, ts, bg] = read_meta(body, TRACE_KEYS);
        assert_eq!(tp.as_deref(), Some("00-a-b-01"));
        assert_eq!(ts, None);
        assert_eq!(bg.as_deref(), Some("k=v"));
        let [tp] = read_meta(br#"{"jsonrpc":"2.0","method":"x"}"#, ["traceparent"]);
        assert_eq!(tp, None);
    }

    #[test]
    fn round_trip_reads_what_was_written() {
        let body = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"e","arguments":{}}}"#;
        let out = write_meta(body, &[("traceparent", "00-x-y-01"), ("baggage", "a=b")]).unwrap();
        let [tp, ts, bg] = read_meta(&out, TRACE_KEYS);
        assert_eq!(
            (tp.as_deref(), ts, bg.as_deref()),
            (Some("00-x-y-01"), None, Some("a=b"))
        );
    }
}
