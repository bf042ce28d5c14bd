//! Stream resumption by the gateway: `Last-Event-ID` served from an
//! [`EventStore`], on any replica.
//!
//! On the session-based revisions a client that loses an SSE stream (a
//! call's `POST` stream or the session's `GET` stream) may reconnect with
//! `GET` and `Last-Event-ID` to get what it missed; a disconnect is not a
//! cancellation. A backend's own resumption only works on the connection
//! that knows the stream, so behind several replicas it breaks. With this
//! layer the gateway resumes streams itself:
//!
//! - **Its own event ids.** Every event of a session's SSE response gets
//!   the id `{stream}.{seq}` (the stream is `p` or `g` and 16 hex digits;
//!   `seq` counts from 1) and is appended to the [`EventStore`] before the
//!   client can see it. The backend's id is kept beside it.
//! - **A call outlives its client.** When the client of a `POST` stream
//!   goes away, the gateway keeps reading the backend's stream into the
//!   store, for at most [`ResumeConfig::drain_for`] and
//!   [`ResumeConfig::drain_bytes`]; past either, the stream is cut and a
//!   resuming client gets a JSON-RPC error for its call (-32058) instead
//!   of waiting forever.
//! - **Resuming on any replica.** A `GET` with one of the gateway's ids is
//!   answered from the store: every event after it, once, then the live
//!   rest as it is appended (wherever the call runs), then the end. A
//!   `GET` stream continues from the backend (asked with the backend's
//!   own id of the last stored event) under the same gateway stream.
//! - An id the gateway did not issue is passed to the backend as before.
//!
//! The layer runs under the session router (which tells it the session,
//! [`GatewaySession`], once asked with
//! [`SessionLayer::tell_session`](crate::session::SessionLayer::tell_session))
//! and above the upstreams; stateless 2026-07-28
//! requests (no session, nothing to resume) pass through untouched.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method as HttpMethod, Request, Response};
use mcp_gateway_core::session::SessionId;
use mcp_gateway_core::{Answer, McpRequest};
use tower_layer::Layer;
use tower_service::Service;

use crate::body::{take_ready, Body, BoxFuture};

mod body;
mod memory;
mod replay;

pub use self::memory::InMemoryEventStore;

/// The gateway session a routed request belongs to: put in the request
/// extensions by the session router when told to
/// ([`SessionLayer::tell_session`](crate::session::SessionLayer::tell_session)).
#[derive(Debug, Clone)]
pub struct GatewaySession(pub SessionId);

/// One stream of one session.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StreamKey {
    /// The gateway session id.
    pub session: Arc<str>,
    /// The stream: `p` (a call's `POST` stream) or `g` (the `GET` stream)
    /// and 16 hex digits.
    pub stream: Arc<str>,
}

impl StreamKey {
    /// A new stream of `session`; `get` for the session's `GET` stream.
    pub fn fresh(session: &SessionId, get: bool) -> Self {
        StreamKey {
            session: session.as_str().into(),
            stream: Self::fresh_stream(get),
        }
    }

    /// A new stream name: `g` (a `GET` stream) or `p`, and 16 random hex
    /// digits.
    pub fn fresh_stream(get: bool) -> Arc<str> {
        let mut n = [0u8; 8];
        getrandom_fill(&mut n);
        format!(
            "{}{:016x}",
            if get { 'g' } else { 'p' },
            u64::from_le_bytes(n)
        )
        .into()
    }

    /// Whether this is a session's `GET` stream (else a call's).
    pub fn is_get(&self) -> bool {
        self.stream.starts_with('g')
    }

    /// The client-visible id of event `seq` of this stream.
    pub fn event_id(&self, seq: u64) -> String {
        format!("{}.{seq}", self.stream)
    }

    /// Reads a `Last-Event-ID` the gateway issued: the stream and the
    /// position. `None` for any other id (the backend's own).
    pub fn parse(session: &SessionId, id: &[u8]) -> Option<(Self, u64)> {
        let id = std::str::from_utf8(id).ok()?.trim();
        let (stream, seq) = id.split_once('.')?;
        let ok = stream.len() == 17
            && matches!(stream.as_bytes()[0], b'p' | b'g')
            && stream[1..].bytes().all(|b| b.is_ascii_hexdigit());
        if !ok {
            return None;
        }
        let seq = seq.parse().ok()?;
        Some((
            StreamKey {
                session: session.as_str().into(),
                stream: stream.into(),
            },
            seq,
        ))
    }
}

fn getrandom_fill(buf: &mut [u8]) {
    // Stream ids need only be unique per session; a random session id
    // already keeps them unguessable. Fall back to the clock if the OS
    // generator fails (it does not in practice).
    if getrandom::fill(buf).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        for (b, t) in buf.iter_mut().zip(t.to_le_bytes()) {
            *b = t;
        }
    }
}

/// How a stream ended, in its last stored entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// The backend ended it: everything was stored.
    Done,
    /// The backend closed a call's stream before the answer, for the
    /// client to come back (SSE polling): a resuming client gets what was
    /// stored, then the backend is asked for the rest with its own last
    /// event id (the entry's `upstream_id`).
    Paused,
    /// The gateway stopped storing it (a bound was hit while the client was
    /// away, the backend failed, or an event was too large): the entry's
    /// bytes are the error the resuming client gets.
    Cut,
}

/// One stored entry of a stream: an event as the client gets it, or the
/// stream's end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// Position in the stream: 0 is the stream's header (the JSON of the
    /// request id of a call's stream), events count from 1.
    pub seq: u64,
    /// The backend's own id of the event, if it had one (a `GET` stream
    /// continues from it).
    pub upstream_id: Option<Bytes>,
    /// The event in wire form, with the gateway's id (empty for the end of
    /// a stream that ended cleanly).
    pub wire: Bytes,
    /// Set on the stream's last entry.
    pub end: Option<StreamEnd>,
}

/// Why events could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventStoreError {
    /// No such stream: never stored, expired, or dropped for room.
    Unknown,
    /// Events after the position asked for were dropped (the stream's
    /// bound was hit): what the client missed cannot be given exactly.
    Gap,
    /// The backing store failed.
    Backend(String),
}

impl std::fmt::Display for EventStoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EventStoreError::Unknown => f.write_str("the stream is unknown or expired"),
            EventStoreError::Gap => f.write_str("events of the stream were dropped"),
            EventStoreError::Backend(e) => write!(f, "event store failed: {e}"),
        }
    }
}

impl std::error::Error for EventStoreError {}

/// Where the events of resumable streams are kept: in process
/// ([`InMemoryEventStore`]) or shared by replicas (Redis Streams, feature
/// `cluster`). Bounded per stream and in time.
pub trait EventStore: Send + Sync + 'static {
    /// Appends an entry to a stream. Never waits: a shared store writes in
    /// the background, in order per stream.
    fn append(&self, key: &StreamKey, event: StoredEvent);

    /// The entries of `key` after position `after`, in order; when there
    /// is none yet, waits up to `wait` for the first. An empty answer
    /// means nothing new within `wait`.
    fn read(
        &self,
        key: &StreamKey,
        after: u64,
        wait: Duration,
    ) -> Answer<'_, Result<Vec<StoredEvent>, EventStoreError>>;

    /// The stream's header (entry 0: the JSON id of the call whose stream
    /// it is, empty for a `GET` stream); [`EventStoreError::Unknown`] when
    /// the stream is not kept.
    fn header(&self, key: &StreamKey) -> Answer<'_, Result<Bytes, EventStoreError>>;

    /// Whether whoever records stream `key` still runs. A shared store
    /// answers from the recording replica's heartbeat, so a client resuming
    /// on another replica learns within about a second that the call's
    /// replica died. Default (one process): true.
    fn writer_alive(&self, _key: &StreamKey) -> Answer<'_, bool> {
        Answer::ready(true)
    }
}

/// Settings of [`ResumeLayer`].
#[derive(Debug, Clone)]
pub struct ResumeConfig {
    /// How long a call's stream is still read into the store after its
    /// client went away. Default: 5 minutes.
    pub drain_for: Duration,
    /// How many bytes of it at most. Default: 4 MiB.
    pub drain_bytes: usize,
    /// Largest event kept (an event over it cuts the stream). Default:
    /// 16 MiB.
    pub max_event: usize,
    /// A resumed stream's keep-alive interval while it waits for events.
    /// Default: 15 s.
    pub keep_alive: Duration,
}

impl Default for ResumeConfig {
    fn default() -> Self {
        ResumeConfig {
            drain_for: Duration::from_secs(300),
            drain_bytes: 4 << 20,
            max_event: 16 << 20,
            keep_alive: Duration::from_secs(15),
        }
    }
}

/// Builds [`Resume`] services. See the module docs.
#[derive(Clone)]
pub struct ResumeLayer {
    store: Arc<dyn EventStore>,
    cfg: Arc<ResumeConfig>,
}

impl std::fmt::Debug for ResumeLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResumeLayer")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl ResumeLayer {
    /// Resumption through `store`.
    pub fn new(store: Arc<dyn EventStore>, cfg: ResumeConfig) -> Self {
        ResumeLayer {
            store,
            cfg: Arc::new(cfg),
        }
    }
}

impl<S> Layer<S> for ResumeLayer {
    type Service = Resume<S>;
    fn layer(&self, inner: S) -> Resume<S> {
        Resume {
            inner,
            store: self.store.clone(),
            cfg: self.cfg.clone(),
        }
    }
}

/// The resumption service. See the module docs.
#[derive(Clone)]
pub struct Resume<S> {
    inner: S,
    store: Arc<dyn EventStore>,
    cfg: Arc<ResumeConfig>,
}

impl<S> Resume<S> {
    inner_accessors!();
}

impl<S> std::fmt::Debug for Resume<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resume").finish_non_exhaustive()
    }
}

impl<S> Service<Request<Body>> for Resume<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> BoxFuture {
        let mut inner = take_ready(&mut self.inner);
        let Some(GatewaySession(sid)) = req.extensions().get::<GatewaySession>().cloned() else {
            // Not in a session: nothing to resume.
            let fut = inner.call(req);
            return Box::pin(fut);
        };
        let store = self.store.clone();
        let cfg = self.cfg.clone();
        if req.method() == HttpMethod::GET {
            let ours = req
                .headers()
                .get(http::header::HeaderName::from_static("last-event-id"))
                .and_then(|v| StreamKey::parse(&sid, v.as_bytes()));
            if let Some((key, after)) = ours {
                return Box::pin(replay::resume(inner, req, store, cfg, key, after));
            }
        }
        let call_id = (req.method() == HttpMethod::POST)
            .then(|| {
                req.extensions()
                    .get::<McpRequest>()
                    .and_then(|m| m.first_id().cloned())
            })
            .flatten();
        let get = req.method() == HttpMethod::GET;
        Box::pin(async move {
            let res = inner.call(req).await?;
            if !is_sse(&res) {
                return Ok(res);
            }
            let key = StreamKey::fresh(&sid, get);
            let header = match &call_id {
                Some(id) => Bytes::copy_from_slice(id.as_bytes()),
                None => Bytes::new(),
            };
            store.append(
                &key,
                StoredEvent {
                    seq: 0,
                    upstream_id: None,
                    wire: header,
                    end: None,
                },
            );
            Ok(body::record(
                res,
                Bytes::new(),
                key,
                0,
                (store, cfg),
                call_id,
            ))
        })
    }
}

/// Whether a response is an SSE stream.
pub(crate) fn is_sse(res: &Response<Body>) -> bool {
    res.status().is_success()
        && res
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().starts_with("text/event-stream"))
}

/// `text/event-stream`.
pub(crate) fn sse_content_type() -> HeaderValue {
    HeaderValue::from_static("text/event-stream")
}

#[cfg(test)]
mod tests;
