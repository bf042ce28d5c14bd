//! The recording body: each event of a backend's stream gets the gateway's
//! id and is stored before the client sees it; a call's stream is read on
//! into the store after its client went away.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Response;
use http_body::{Body as _, Frame, SizeHint};
use mcp_gateway_core::sse::{SseEvent, SseScanner};
use mcp_gateway_core::{ErrorKind, GatewayError, MessageKind, RequestId};

use super::{EventStore, ResumeConfig, StoredEvent, StreamEnd, StreamKey};
use crate::body::{Body, BoxError};

/// Wraps `res`'s body so that its events are numbered from `seq + 1` on
/// stream `key` and stored; `prefix` (replayed events) goes first.
pub(super) fn record(
    res: Response<Body>,
    prefix: Bytes,
    key: StreamKey,
    seq: u64,
    shared: (Arc<dyn EventStore>, Arc<ResumeConfig>),
    call_id: Option<RequestId>,
) -> Response<Body> {
    let (mut parts, inner) = res.into_parts();
    // The body changes (the ids): its length with it.
    parts.headers.remove(http::header::CONTENT_LENGTH);
    let body = Recording {
        live: Some((inner, Recorder::new(key, seq, shared.0, shared.1, call_id))),
        prefix: (!prefix.is_empty()).then_some(prefix),
    };
    Response::from_parts(parts, Body::new(body))
}

/// What turns a backend's events into stored, re-numbered ones.
pub(super) struct Recorder {
    scanner: SseScanner,
    key: StreamKey,
    seq: u64,
    store: Arc<dyn EventStore>,
    cfg: Arc<ResumeConfig>,
    call_id: Option<RequestId>,
    /// The call's answer went by (a call stream that ends without it was
    /// closed by the backend for the client to come back: SSE polling).
    answered: bool,
    /// The stream's end is stored.
    ended: bool,
}

impl Recorder {
    fn new(
        key: StreamKey,
        seq: u64,
        store: Arc<dyn EventStore>,
        cfg: Arc<ResumeConfig>,
        call_id: Option<RequestId>,
    ) -> Self {
        Recorder {
            scanner: SseScanner::collecting(cfg.max_event),
            key,
            seq,
            store,
            cfg,
            call_id,
            answered: false,
            ended: false,
        }
    }

    /// Scans `chunk`; returns the events it completed in wire form, with
    /// the gateway's ids, stored. An event too large to keep cuts the
    /// stream: `Err` is the error event to send instead.
    fn feed(&mut self, chunk: &[u8]) -> Result<Vec<u8>, Vec<u8>> {
        let mut out = Vec::new();
        let mut too_large = false;
        let (key, store, call_id) = (&self.key, &self.store, &self.call_id);
        let (seq, answered) = (&mut self.seq, &mut self.answered);
        self.scanner.feed(chunk, |ev| {
            if too_large {
                return;
            }
            if ev.oversized {
                too_large = true;
                return;
            }
            if !*answered {
                *answered = call_id.as_ref().is_some_and(|id| answers(ev.data, id));
            }
            *seq += 1;
            let start = out.len();
            encode(&mut out, ev, &key.event_id(*seq));
            store.append(
                key,
                StoredEvent {
                    seq: *seq,
                    upstream_id: ev.id.map(Bytes::copy_from_slice),
                    wire: Bytes::copy_from_slice(&out[start..]),
                    end: None,
                },
            );
        });
        if too_large {
            let e = self.cut("an event was larger than the gateway keeps for resumption");
            out.extend_from_slice(&e);
            return Err(out);
        }
        Ok(out)
    }

    /// Stores the end of the backend's stream: done, or, for a call
    /// stream the backend closed before the answer, paused (with the
    /// backend's last event id, to ask it for the rest). Returns an error
    /// event for the client when the stream cannot go on.
    fn done(&mut self) -> Vec<u8> {
        if self.ended {
            return Vec::new();
        }
        let upstream = self.scanner.last_event_id();
        let end = match (&self.call_id, self.answered) {
            (Some(_), false) if upstream.is_empty() => {
                return self.cut("the backend ended the call's stream before its answer");
            }
            (Some(_), false) => StreamEnd::Paused,
            _ => StreamEnd::Done,
        };
        let upstream_id = (end == StreamEnd::Paused).then(|| Bytes::copy_from_slice(upstream));
        self.end(end, upstream_id, Bytes::new());
        Vec::new()
    }

    /// Stores the stream's last entry.
    fn end(&mut self, end: StreamEnd, upstream_id: Option<Bytes>, wire: Bytes) {
        self.ended = true;
        self.seq += 1;
        self.store.append(
            &self.key,
            StoredEvent {
                seq: self.seq,
                upstream_id,
                wire,
                end: Some(end),
            },
        );
    }

    /// Stores the end of a stream cut short: the error a resuming client
    /// gets for its call (nothing for a `GET` stream, which the backend
    /// continues). Returns that error event.
    fn cut(&mut self, why: &str) -> Vec<u8> {
        let wire = match (&self.call_id, self.ended) {
            (Some(id), false) => cut_event(id, why),
            _ => Vec::new(),
        };
        if !self.ended {
            self.end(StreamEnd::Cut, None, Bytes::copy_from_slice(&wire));
        }
        wire
    }
}

/// The error event for call `id` whose stream was cut.
pub(super) fn cut_event(id: &RequestId, why: &str) -> Vec<u8> {
    let e = GatewayError::new(
        ErrorKind::CannotResume,
        format!("the call's stream cannot be resumed: {why}"),
    );
    let json = e.to_json_body(Some(id));
    let mut out = Vec::new();
    mcp_gateway_core::sse::encode_event(
        &mut out,
        Some("message"),
        None,
        &String::from_utf8_lossy(&json),
    );
    out
}

/// Whether SSE data `data` is the answer (result or error) to call `id`.
fn answers(data: &[u8], id: &RequestId) -> bool {
    let maybe = memchr::memmem::find(data, b"\"result\"").is_some()
        || memchr::memmem::find(data, b"\"error\"").is_some();
    maybe
        && mcp_gateway_core::Envelope::parse(Bytes::copy_from_slice(data)).is_ok_and(|e| {
            e.messages().iter().any(|m| {
                matches!(m.kind(), MessageKind::Response | MessageKind::Error) && m.id() == Some(id)
            })
        })
}

/// Writes `ev` with `id` instead of its own.
fn encode(out: &mut Vec<u8>, ev: &SseEvent<'_>, id: &str) {
    if let Some(e) = ev.event {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(e);
        out.push(b'\n');
    }
    out.extend_from_slice(b"id: ");
    out.extend_from_slice(id.as_bytes());
    out.push(b'\n');
    if let Some(r) = ev.retry {
        out.extend_from_slice(b"retry: ");
        out.extend_from_slice(itoa::Buffer::new().format(r).as_bytes());
        out.push(b'\n');
    }
    for line in ev.data.split(|b| *b == b'\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out.push(b'\n');
}

/// The body the client reads. See [`record`].
struct Recording {
    /// The backend's body and its recorder, until the stream ends.
    live: Option<(Body, Recorder)>,
    prefix: Option<Bytes>,
}

impl http_body::Body for Recording {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(p) = this.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(p))));
        }
        loop {
            let Some((inner, rec)) = this.live.as_mut() else {
                return Poll::Ready(None);
            };
            let (out, last) = match std::task::ready!(Pin::new(inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(chunk) => match rec.feed(&chunk) {
                        Ok(out) if out.is_empty() => continue,
                        Ok(out) => (out, false),
                        Err(out) => (out, true),
                    },
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
                Some(Err(e)) => {
                    rec.cut("the backend's stream failed");
                    this.live = None;
                    return Poll::Ready(Some(Err(e)));
                }
                None => (rec.done(), true),
            };
            if last {
                this.live = None;
            }
            if out.is_empty() {
                return Poll::Ready(None);
            }
            return Poll::Ready(Some(Ok(Frame::data(out.into()))));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.live.as_ref().is_none_or(|(b, _)| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        let Some((inner, mut rec)) = self.live.take() else {
            return;
        };
        // A GET stream is the backend's to continue: a resuming client
        // asks it again. A call's stream is read on into the store.
        if rec.ended || rec.key.is_get() || rec.call_id.is_none() {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn(drain(inner, rec))),
            Err(_) => drop(rec.cut("the gateway was shutting down")),
        }
    }
}

/// Reads a call's stream on into the store after its client went away,
/// within the configured time and bytes.
async fn drain(mut inner: Body, mut rec: Recorder) {
    let deadline = tokio::time::Instant::now() + rec.cfg.drain_for;
    let mut read = 0usize;
    loop {
        let frame = tokio::time::timeout_at(
            deadline,
            std::future::poll_fn(|cx| Pin::new(&mut inner).poll_frame(cx)),
        )
        .await;
        match frame {
            Err(_) => {
                tracing::info!(stream = %rec.key.stream, "call stream cut: its client stayed away too long");
                rec.cut("the client stayed away longer than the gateway keeps reading");
                return;
            }
            Ok(None) => {
                rec.done();
                return;
            }
            Ok(Some(Err(_))) => {
                rec.cut("the backend's stream failed");
                return;
            }
            Ok(Some(Ok(frame))) => {
                let Ok(chunk) = frame.into_data() else {
                    continue;
                };
                read += chunk.len();
                if read > rec.cfg.drain_bytes {
                    tracing::info!(stream = %rec.key.stream, "call stream cut: more than the gateway keeps while its client is away");
                    rec.cut("the call sent more than the gateway keeps while the client is away");
                    return;
                }
                if rec.feed(&chunk).is_err() {
                    return;
                }
            }
        }
    }
}
