//! A backend's answers on their way to the client: server-to-client
//! requests get gateway ids, `list_changed` refreshes the catalog first,
//! conflicting URIs are shown as the client knows them, event ids name
//! the backend; and several backends' streams merged into one.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{BoxStream, StreamExt};
use http::header;
use http::Response;
use http_body::Frame;
use http_body_util::BodyExt;
use mcp_gateway_core::jsonrpc::{Envelope, MessageKind};
use mcp_gateway_core::sse::{encode_event, SseScanner};
use mcp_gateway_core::ErrorKind;
use serde_json::Value;

use super::forward::rpc_error;
use super::names::Kind;
use super::service::Inner;
use super::session::{AggSession, CallGuard};
use crate::body::{lock, Body, BoxError};

/// The largest message (JSON answer or SSE event) the gateway reads whole.
pub(crate) const MAX_MESSAGE: usize = 16 << 20;

pub(crate) fn is_sse(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("text/event-stream"))
}

/// Whether `data` names a `"method"` (requests and notifications do; a
/// response may, in its content).
fn has_method(data: &[u8]) -> bool {
    static FINDER: std::sync::OnceLock<memchr::memmem::Finder<'static>> =
        std::sync::OnceLock::new();
    FINDER
        .get_or_init(|| memchr::memmem::Finder::new(b"\"method\""))
        .find(data)
        .is_some()
}

/// A frame of whole events with nothing to rewrite but their ids (no
/// message in it names a method): the frame as it is, each `id:` line
/// prefixed with `{member}.`. `None` when the frame needs reading event
/// by event (a method named, or it does not end at an event boundary).
pub(crate) fn ids_only(chunk: &[u8], prefix: Option<usize>) -> Option<Bytes> {
    let ends = chunk.ends_with(b"\n\n") || chunk.ends_with(b"\r\r") || chunk.ends_with(b"\r\n\r\n");
    if !ends || has_method(chunk) {
        return None;
    }
    let Some(m) = prefix else {
        return Some(Bytes::copy_from_slice(chunk));
    };
    let mut tag = itoa::Buffer::new();
    let tag = tag.format(m).as_bytes();
    let mut out = Vec::with_capacity(chunk.len() + 16);
    let mut rest = chunk;
    loop {
        if let Some(v) = rest.strip_prefix(b"id:") {
            out.extend_from_slice(b"id:");
            let v = match v.strip_prefix(b" ") {
                Some(v) => {
                    out.push(b' ');
                    v
                }
                None => v,
            };
            out.extend_from_slice(tag);
            out.push(b'.');
            rest = v;
        }
        match memchr::memchr2(b'\n', b'\r', rest) {
            Some(i) => {
                let mut end = i + 1;
                if rest[i] == b'\r' && rest.get(end) == Some(&b'\n') {
                    end += 1;
                }
                out.extend_from_slice(&rest[..end]);
                rest = &rest[end..];
                if rest.is_empty() {
                    return Some(Bytes::from(out));
                }
            }
            None => {
                out.extend_from_slice(rest);
                return Some(Bytes::from(out));
            }
        }
    }
}

/// What one event of a backend becomes.
pub(crate) enum Seen {
    /// Unchanged.
    Pass,
    /// Rewritten.
    Data(Bytes),
    /// A `list_changed` of these kinds: refresh, then pass.
    Changed(&'static [Kind]),
    /// The final answer of a merged stream: kept for the end.
    Hold,
}

/// Rewrites one backend's events for the client.
#[derive(Clone)]
pub(crate) struct Rewriter {
    pub(crate) inner: Arc<Inner>,
    pub(crate) session: Option<Arc<AggSession>>,
    pub(crate) member: usize,
    /// Event ids become `{member}.{id}`.
    pub(crate) prefix_ids: bool,
    /// A read's `contents[].uri`: (the backend's URI, the client's).
    pub(crate) rename: Option<Arc<(String, String)>>,
    /// Where a merged stream keeps the answer it sends last.
    pub(crate) hold: Option<Arc<Mutex<Option<Bytes>>>>,
}

impl Rewriter {
    pub(crate) fn new(inner: Arc<Inner>, session: Option<Arc<AggSession>>, member: usize) -> Self {
        Rewriter {
            inner,
            session,
            member,
            prefix_ids: false,
            rename: None,
            hold: None,
        }
    }

    /// Looks at one event's data.
    pub(crate) fn data(&self, data: &[u8]) -> Seen {
        if data.is_empty() {
            return Seen::Pass;
        }
        let has_method = has_method(data);
        if !has_method && self.rename.is_none() && self.hold.is_none() {
            return Seen::Pass;
        }
        let bytes = Bytes::copy_from_slice(data);
        let Ok(env) = Envelope::parse(bytes.clone()) else {
            return Seen::Pass;
        };
        let Some(msg) = env.single() else {
            return Seen::Pass;
        };
        match msg.kind() {
            MessageKind::Request => {
                let (Some(s), Some(id)) = (&self.session, msg.id()) else {
                    return Seen::Pass;
                };
                let gid = s.remember_request(self.member, id.clone());
                if memchr::memmem::find(data, b"\"progressToken\"").is_some() {
                    if let Ok(v) = serde_json::from_slice::<Value>(data) {
                        if let Some(t) = v.pointer("/params/_meta/progressToken") {
                            s.remember_token(Bytes::from(t.to_string()), self.member);
                        }
                    }
                }
                match splice(&bytes, id.as_bytes(), &gid) {
                    Some(b) => Seen::Data(b),
                    None => Seen::Pass,
                }
            }
            MessageKind::Notification => {
                let method = msg.method().map_or("", |m| m.as_str());
                let kinds = Kind::of_list_changed(method);
                if !kinds.is_empty() {
                    return Seen::Changed(kinds);
                }
                if method == "notifications/resources/updated" {
                    return self.updated(data);
                }
                Seen::Pass
            }
            MessageKind::Response | MessageKind::Error => {
                let out = match &self.rename {
                    Some(r) => rename_contents(data, &r.0, &r.1).map_or(Seen::Pass, Seen::Data),
                    None => Seen::Pass,
                };
                if let Some(hold) = &self.hold {
                    let keep = match out {
                        Seen::Data(b) => b,
                        _ => bytes,
                    };
                    *lock(hold) = Some(keep);
                    return Seen::Hold;
                }
                out
            }
        }
    }

    /// `resources/updated` of a URI the client knows rewritten.
    fn updated(&self, data: &[u8]) -> Seen {
        let Ok(mut v) = serde_json::from_slice::<Value>(data) else {
            return Seen::Pass;
        };
        let Some(uri) = v.pointer("/params/uri").and_then(Value::as_str) else {
            return Seen::Pass;
        };
        let client = self
            .inner
            .naming
            .client_name(Kind::Resource, self.member, uri)
            .into_owned();
        if client == uri {
            return Seen::Pass;
        }
        v["params"]["uri"] = Value::String(client);
        Seen::Data(Bytes::from(v.to_string()))
    }
}

/// `data` with the bytes of `part` (a slice of it) replaced by `with`.
pub(crate) fn splice(data: &Bytes, part: &[u8], with: &[u8]) -> Option<Bytes> {
    let start = (part.as_ptr() as usize).checked_sub(data.as_ptr() as usize)?;
    let end = start + part.len();
    if end > data.len() {
        return None;
    }
    let mut out = Vec::with_capacity(data.len() - part.len() + with.len());
    out.extend_from_slice(&data[..start]);
    out.extend_from_slice(with);
    out.extend_from_slice(&data[end..]);
    Some(Bytes::from(out))
}

/// A read result's `contents[].uri` equal to `own` becomes `client`.
fn rename_contents(data: &[u8], own: &str, client: &str) -> Option<Bytes> {
    let mut v: Value = serde_json::from_slice(data).ok()?;
    let contents = v.pointer_mut("/result/contents")?.as_array_mut()?;
    let mut changed = false;
    for c in contents {
        if c.get("uri").and_then(Value::as_str) == Some(own) {
            c["uri"] = Value::String(client.to_owned());
            changed = true;
        }
    }
    changed.then(|| Bytes::from(v.to_string()))
}

/// Reads a backend's whole answer to a request of the gateway's own
/// (JSON, or SSE up to its response): the response message and, rewritten
/// by `rw`, the events before it.
pub(crate) async fn collect(
    res: Response<Body>,
    rw: Option<&Rewriter>,
) -> Result<(Value, Vec<Bytes>), Response<Body>> {
    let (parts, body) = res.into_parts();
    let unreadable = |what: &str| {
        rpc_error(
            None,
            ErrorKind::UpstreamUnavailable,
            format!("Bad Gateway: the backend's answer {what}"),
            None,
        )
    };
    let bytes = match http_body_util::Limited::new(body, MAX_MESSAGE)
        .collect()
        .await
    {
        Ok(c) => c.to_bytes(),
        Err(e) => {
            tracing::warn!(error = %e, "a backend's answer could not be read");
            return Err(unreadable("could not be read"));
        }
    };
    if !is_sse(&parts.headers) {
        return serde_json::from_slice(&bytes)
            .map(|v| (v, Vec::new()))
            .map_err(|_| unreadable("is not JSON"));
    }
    let mut scanner = SseScanner::collecting(MAX_MESSAGE);
    let mut answer = None;
    let mut extra = Vec::new();
    scanner.feed(&bytes, |ev| {
        if ev.data.is_empty() || answer.is_some() {
            return;
        }
        let is_answer = Envelope::parse(Bytes::copy_from_slice(ev.data))
            .ok()
            .and_then(|e| e.single().map(|m| m.kind()))
            .is_some_and(|k| matches!(k, MessageKind::Response | MessageKind::Error));
        if is_answer {
            answer = serde_json::from_slice::<Value>(ev.data).ok();
            return;
        }
        match rw.map(|rw| rw.data(ev.data)) {
            Some(Seen::Data(b)) => extra.push(b),
            Some(Seen::Changed(_)) => {
                if let Some(rw) = rw {
                    rw.inner.refresh_later(rw.member);
                }
                extra.push(Bytes::copy_from_slice(ev.data));
            }
            _ => extra.push(Bytes::copy_from_slice(ev.data)),
        }
    });
    match answer {
        Some(a) => Ok((a, extra)),
        None => Err(unreadable("ended without a response")),
    }
}

/// Appends one event: `event`, the id (prefixed with the backend's index
/// when `prefix` is set), `retry`, and `data` line by line.
fn write_event(
    out: &mut Vec<u8>,
    event: Option<&[u8]>,
    id: Option<&[u8]>,
    prefix: Option<usize>,
    retry: Option<u64>,
    data: &[u8],
) {
    if let Some(r) = retry {
        out.extend_from_slice(b"retry: ");
        out.extend_from_slice(itoa::Buffer::new().format(r).as_bytes());
        out.push(b'\n');
    }
    if let Some(e) = event {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(e);
        out.push(b'\n');
    }
    if let Some(i) = id {
        out.extend_from_slice(b"id: ");
        if let Some(m) = prefix {
            out.extend_from_slice(itoa::Buffer::new().format(m).as_bytes());
            out.push(b'.');
        }
        out.extend_from_slice(i);
        out.push(b'\n');
    }
    for line in data.split(|b| *b == b'\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.strip_suffix(b"\r").unwrap_or(line));
        out.push(b'\n');
    }
    out.push(b'\n');
}

/// An event whose list change must refresh the catalog before it is sent.
struct Held {
    kinds: &'static [Kind],
    event: Option<Vec<u8>>,
    id: Option<Vec<u8>>,
    retry: Option<u64>,
    data: Bytes,
}

/// A backend's SSE body rewritten for the client (see [`Rewriter`]): a
/// frame of whole events with only ids to rewrite is copied once; any
/// other is read event by event; a list change waits for the catalog.
struct Rewritten {
    body: Body,
    scanner: SseScanner,
    rw: Rewriter,
    _guard: Option<CallGuard>,
    /// A list change being refreshed, then the bytes to send.
    waiting: Option<std::pin::Pin<Box<dyn std::future::Future<Output = Vec<u8>> + Send>>>,
    done: bool,
}

impl Rewritten {
    fn new(rw: Rewriter, body: Body, guard: Option<CallGuard>) -> Self {
        Rewritten {
            body,
            scanner: SseScanner::collecting(MAX_MESSAGE),
            rw,
            _guard: guard,
            waiting: None,
            done: false,
        }
    }

    /// Reads one frame event by event: the bytes to send now, and the
    /// events held behind a list change.
    fn read(&mut self, chunk: &[u8]) -> Result<(Vec<u8>, Vec<Held>), BoxError> {
        let mut out = Vec::with_capacity(chunk.len() + 16);
        let mut held: Vec<Held> = Vec::new();
        let mut oversized = false;
        let prefix = self.rw.prefix_ids.then_some(self.rw.member);
        let rw = &self.rw;
        self.scanner.feed(chunk, |ev| {
            if ev.oversized {
                oversized = true;
                return;
            }
            let seen = rw.data(ev.data);
            if let (Seen::Changed(kinds), true) = (&seen, held.is_empty()) {
                held.push(Held {
                    kinds,
                    event: ev.event.map(<[u8]>::to_vec),
                    id: ev.id.map(<[u8]>::to_vec),
                    retry: ev.retry,
                    data: Bytes::copy_from_slice(ev.data),
                });
                return;
            }
            if !held.is_empty() {
                // After a held event: in order, behind it.
                let data = match seen {
                    Seen::Data(b) => b,
                    Seen::Hold => return,
                    _ => Bytes::copy_from_slice(ev.data),
                };
                held.push(Held {
                    kinds: &[],
                    event: ev.event.map(<[u8]>::to_vec),
                    id: ev.id.map(<[u8]>::to_vec),
                    retry: ev.retry,
                    data,
                });
                return;
            }
            match seen {
                Seen::Hold => {}
                Seen::Data(b) => write_event(&mut out, ev.event, ev.id, prefix, ev.retry, &b),
                _ => write_event(&mut out, ev.event, ev.id, prefix, ev.retry, ev.data),
            }
        });
        if oversized {
            return Err("a backend's SSE event exceeds 16 MiB".into());
        }
        Ok((out, held))
    }
}

impl http_body::Body for Rewritten {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        use std::task::Poll;
        let this = self.get_mut();
        loop {
            if let Some(w) = &mut this.waiting {
                let out = std::task::ready!(w.as_mut().poll(cx));
                this.waiting = None;
                if !out.is_empty() {
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                }
            }
            if this.done {
                return Poll::Ready(None);
            }
            let frame = match std::task::ready!(std::pin::Pin::new(&mut this.body).poll_frame(cx)) {
                None => return Poll::Ready(None),
                Some(Err(e)) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Some(Ok(f)) => f,
            };
            let Ok(chunk) = frame.into_data() else {
                continue;
            };
            let rw = &this.rw;
            if this.scanner.at_event_boundary() && rw.rename.is_none() && rw.hold.is_none() {
                if let Some(out) = ids_only(&chunk, rw.prefix_ids.then_some(rw.member)) {
                    return Poll::Ready(Some(Ok(Frame::data(out))));
                }
            }
            let (out, held) = match this.read(&chunk) {
                Ok(x) => x,
                Err(e) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
            };
            if held.is_empty() {
                if out.is_empty() {
                    continue;
                }
                return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
            }
            let rw = this.rw.clone();
            this.waiting = Some(Box::pin(async move {
                let mut out = out;
                let prefix = rw.prefix_ids.then_some(rw.member);
                for h in held {
                    if !h.kinds.is_empty() {
                        let refresh = rw.inner.refresh(rw.session.as_ref(), rw.member, h.kinds);
                        if tokio::time::timeout(Duration::from_secs(5), refresh)
                            .await
                            .is_err()
                        {
                            tracing::warn!(backend = %rw.inner.members[rw.member].name, "the catalog refresh after list_changed timed out");
                        }
                    }
                    write_event(
                        &mut out,
                        h.event.as_deref(),
                        h.id.as_deref(),
                        prefix,
                        h.retry,
                        &h.data,
                    );
                }
                out
            }));
        }
    }
}

fn stream_of(
    rw: Rewriter,
    body: Body,
    guard: Option<CallGuard>,
) -> BoxStream<'static, Result<Frame<Bytes>, BoxError>> {
    futures_util::StreamExt::boxed(http_body_util::BodyStream::new(Rewritten::new(
        rw, body, guard,
    )))
}

/// `body` (SSE) rewritten by `rw`; `guard` lives as long as the stream.
pub(crate) fn rewrite_body(rw: Rewriter, body: Body, guard: Option<CallGuard>) -> Body {
    Body::boxed(Rewritten::new(rw, body, guard))
}

/// Several backends' SSE streams as one; the answers the rewriters hold
/// (`hold`) end it, the last one seen.
pub(crate) fn merge(parts: Vec<(Rewriter, Body)>, hold: Option<Arc<Mutex<Option<Bytes>>>>) -> Body {
    let streams = parts
        .into_iter()
        .map(|(rw, body)| stream_of(rw, body, None));
    let merged = futures_util::stream::select_all(streams);
    let tail = futures_util::stream::once(async move {
        let held = hold.and_then(|h| lock(&h).take());
        held.map(|data| {
            let mut out = Vec::new();
            encode_event(&mut out, None, None, &String::from_utf8_lossy(&data));
            Ok(Frame::data(Bytes::from(out)))
        })
    })
    .filter_map(|x| async move { x });
    Body::new(http_body_util::StreamBody::new(merged.chain(tail).boxed()))
}
