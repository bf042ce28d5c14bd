//! The few fields of a JSON-RPC message the bridge routes by, with their
//! places in the text, so that ids and progress tokens are swapped in
//! place (the rest of the message is copied, never re-serialised).

use std::borrow::Cow;
use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;

/// Request, notification, response (result or error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Request,
    Notification,
    Response,
}

/// What the bridge reads of one message: its kind, method, and where in
/// the text its id and progress token are (`params._meta.progressToken`
/// of a request, `params.progressToken` of `notifications/progress`,
/// `params.requestId` of `notifications/cancelled`).
#[derive(Debug, Clone)]
pub(crate) struct Head {
    pub(crate) kind: Kind,
    pub(crate) method: Option<Box<str>>,
    pub(crate) id: Option<Range<usize>>,
    /// The progress token (requests and progress notifications) or the
    /// cancelled request's id (`notifications/cancelled`).
    pub(crate) token: Option<Range<usize>>,
}

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    method: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    params: Option<&'a RawValue>,
    #[serde(default)]
    result: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    error: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct Params<'a> {
    #[serde(borrow, default, rename = "_meta")]
    meta: Option<Meta<'a>>,
    #[serde(borrow, default, rename = "progressToken")]
    progress_token: Option<&'a RawValue>,
    #[serde(borrow, default, rename = "requestId")]
    request_id: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Meta<'a> {
    #[serde(borrow, default, rename = "progressToken")]
    progress_token: Option<&'a RawValue>,
}

fn span(base: &str, part: &RawValue) -> Range<usize> {
    let start = part.get().as_ptr() as usize - base.as_ptr() as usize;
    start..start + part.get().len()
}

impl Head {
    /// Reads `text`: `None` when it is not one JSON-RPC message object.
    pub(crate) fn parse(text: &[u8]) -> Option<Head> {
        let text = std::str::from_utf8(text).ok()?;
        let w: Wire<'_> = serde_json::from_str(text).ok()?;
        let id = w.id.filter(|r| r.get() != "null").map(|r| span(text, r));
        let kind = match (&w.method, &id) {
            (Some(_), Some(_)) => Kind::Request,
            (Some(_), None) => Kind::Notification,
            (None, _) if w.result.is_some() || w.error.is_some() => Kind::Response,
            _ => return None,
        };
        let token = match (kind, w.method.as_deref(), w.params) {
            (Kind::Request, _, Some(p)) if p.get().contains("progressToken") => {
                serde_json::from_str::<Params<'_>>(p.get())
                    .ok()
                    .and_then(|p| p.meta.and_then(|m| m.progress_token))
                    .map(|t| span(text, t))
            }
            (Kind::Notification, Some("notifications/progress"), Some(p)) => {
                serde_json::from_str::<Params<'_>>(p.get())
                    .ok()
                    .and_then(|p| p.progress_token)
                    .map(|t| span(text, t))
            }
            (Kind::Notification, Some("notifications/cancelled"), Some(p)) => {
                serde_json::from_str::<Params<'_>>(p.get())
                    .ok()
                    .and_then(|p| p.request_id)
                    .map(|t| span(text, t))
            }
            _ => None,
        };
        Some(Head {
            kind,
            method: w.method.map(|m| m.into()),
            id,
            token,
        })
    }

    /// The method, or `""`.
    pub(crate) fn method(&self) -> &str {
        self.method.as_deref().unwrap_or("")
    }
}

/// `text` with the bytes at each range replaced (ranges in any order,
/// never overlapping).
pub(crate) fn splice(text: &[u8], edits: &mut [(Range<usize>, &[u8])]) -> Bytes {
    edits.sort_by_key(|(r, _)| r.start);
    let extra: usize = edits.iter().map(|(_, b)| b.len()).sum();
    let mut out = BytesMut::with_capacity(text.len() + extra);
    let mut at = 0;
    for (r, with) in edits.iter() {
        out.put_slice(&text[at..r.start]);
        out.put_slice(with);
        at = r.end;
    }
    out.put_slice(&text[at..]);
    out.freeze()
}

/// The gateway's own id for a message it forwards: a JSON number.
pub(crate) fn number(n: u64) -> Vec<u8> {
    itoa::Buffer::new().format(n).as_bytes().to_vec()
}

/// Parses one of the gateway's numeric ids back.
pub(crate) fn parse_number(raw: &[u8]) -> Option<u64> {
    std::str::from_utf8(raw).ok()?.parse().ok()
}

/// Puts a message on one line: line breaks outside JSON strings are
/// whitespace (inside strings they are always escaped), so each becomes a
/// space. The body is shared when it has none.
pub(crate) fn one_line(body: Bytes) -> Bytes {
    if memchr::memchr2(b'\n', b'\r', &body).is_none() {
        return body;
    }
    let mut v = body.to_vec();
    for b in v.iter_mut() {
        if *b == b'\n' || *b == b'\r' {
            *b = b' ';
        }
    }
    Bytes::from(v)
}

/// A JSON-RPC error answering `id` (raw JSON).
pub(crate) fn error_message(id: &[u8], code: i32, message: &str) -> Bytes {
    let msg = serde_json::to_string(message).unwrap_or_else(|_| "\"error\"".into());
    let mut out = Vec::with_capacity(64 + id.len() + msg.len());
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    out.extend_from_slice(id);
    out.extend_from_slice(b",\"error\":{\"code\":");
    out.extend_from_slice(itoa::Buffer::new().format(code).as_bytes());
    out.extend_from_slice(b",\"message\":");
    out.extend_from_slice(msg.as_bytes());
    out.extend_from_slice(b"}}");
    Bytes::from(out)
}

/// A JSON-RPC result answering `id` (both raw JSON).
pub(crate) fn result_message(id: &[u8], result: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(40 + id.len() + result.len());
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    out.extend_from_slice(id);
    out.extend_from_slice(b",\"result\":");
    out.extend_from_slice(result);
    out.push(b'}');
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_ids_and_tokens_in_place() {
        let t = br#"{"jsonrpc":"2.0","id":"a\"b","method":"tools/call","params":{"name":"x","_meta":{"progressToken":7}}}"#;
        let h = Head::parse(t).unwrap();
        assert_eq!(h.kind, Kind::Request);
        assert_eq!(&t[h.id.clone().unwrap()], br#""a\"b""#);
        assert_eq!(&t[h.token.clone().unwrap()], b"7");
        let out = splice(t, &mut [(h.token.unwrap(), b"99"), (h.id.unwrap(), b"1")]);
        assert_eq!(
            &out[..],
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","_meta":{"progressToken":99}}}"#
        );
        let p = br#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"t","progress":1}}"#;
        let h = Head::parse(p).unwrap();
        assert_eq!(h.kind, Kind::Notification);
        assert_eq!(&p[h.token.unwrap()], br#""t""#);
        let c = br#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":3}}"#;
        assert_eq!(&c[Head::parse(c).unwrap().token.unwrap()], b"3");
        let r = br#"{"jsonrpc":"2.0","id":5,"result":{}}"#;
        assert_eq!(Head::parse(r).unwrap().kind, Kind::Response);
        assert!(Head::parse(b"{\"jsonrpc\":\"2.0\"}").is_none());
        assert!(Head::parse(b"[1]").is_none());
        assert!(Head::parse(b"nope").is_none());
    }

    #[test]
    fn one_line_turns_breaks_into_spaces() {
        let b = one_line(Bytes::from_static(b"{\n\"a\":\r\n\"x\\ny\"}"));
        assert_eq!(&b[..], b"{ \"a\":  \"x\\ny\"}");
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["a"], "x\ny");
    }

    #[test]
    fn builds_answers() {
        let e = error_message(b"\"q\"", -32050, "backend \"x\" exited");
        let v: serde_json::Value = serde_json::from_slice(&e).unwrap();
        assert_eq!(v["error"]["code"], -32050);
        assert_eq!(v["id"], "q");
        let r = result_message(b"3", b"{}");
        assert_eq!(&r[..], br#"{"jsonrpc":"2.0","id":3,"result":{}}"#);
    }
}
