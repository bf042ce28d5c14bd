//! [`Bridge`]: a server reached by messages (a stdio child, a legacy SSE
//! stream) served as a Streamable HTTP backend.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use http::header::{HeaderValue, ACCEPT, CACHE_CONTROL, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use mcp_gateway_core::protocol::header_names;
use mcp_gateway_core::session::SessionId;
use mcp_gateway_core::{Era, ErrorKind, GatewayError, McpRequest, RequestId};
use tokio::sync::{mpsc, Semaphore};
use tower_service::Service;

use super::peer::{CallStream, Conn, Item, Peer, PeerLimits};
use super::stdio::{StdioCommand, StdioLimits};
use super::wire::{self, Head, Kind};
use super::{BridgeConfig, BridgeMode, Target};
use crate::body::{lock, Body, BoxFuture};
use crate::error::error_response;

/// A server reached by messages, served as a Streamable HTTP backend: a
/// stdio child per session or one shared child, or a legacy HTTP+SSE
/// server. See the [module docs](super).
#[derive(Clone)]
pub struct Bridge {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridge")
            .field("backend", &self.inner.name)
            .field("mode", &self.inner.cfg.mode)
            .finish_non_exhaustive()
    }
}

pub(super) struct Inner {
    pub(super) name: Arc<str>,
    pub(super) cfg: BridgeConfig,
    target: Target,
    sessions: Mutex<HashMap<Arc<str>, Arc<Session>>>,
    /// 2026-07-28 callers: one upstream session per principal.
    pub(super) principals: tokio::sync::Mutex<HashMap<Arc<str>, Arc<Session>>>,
    shared: tokio::sync::Mutex<Shared>,
    processes: Arc<Semaphore>,
    next_conn: AtomicU64,
    closing: AtomicBool,
    pub(super) parked: Mutex<HashMap<String, super::stateless::Parked>>,
    sweeping: AtomicBool,
    spawner: super::Spawner,
}

#[derive(Default)]
struct Shared {
    peer: Option<Arc<Peer>>,
    /// The first client's `initialize` params: what a restart replays.
    init_params: Option<Bytes>,
    /// The server's `InitializeResult`.
    init_result: Option<Bytes>,
    /// When it was (re)started, for `restart.max_per_minute`.
    starts: Vec<Instant>,
    conns: Vec<Conn>,
}

/// One client session (or one principal's, for 2026-07-28 callers).
pub(super) struct Session {
    pub(super) conn: Conn,
    peer: SessionPeer,
    /// The server's `InitializeResult` (when the gateway initialized).
    pub(super) init_result: Option<Bytes>,
    pub(super) last_used: Mutex<Instant>,
    pub(super) busy: AtomicU64,
}

enum SessionPeer {
    Own(Arc<Peer>),
    Shared,
}

/// An SSE response of `first` then the rest of the stream.
pub(super) fn sse_response<S>(first: Option<Bytes>, rest: S) -> Response<Body>
where
    S: futures_util::Stream<Item = Bytes> + Send + 'static,
{
    let mut res = Response::new(sse_body(first, rest));
    sse_headers(&mut res);
    res
}

fn sse_headers(res: &mut Response<Body>) {
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    res.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
}

pub(super) fn json_response(msg: Bytes) -> Response<Body> {
    let mut res = Response::new(Body::full(msg));
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

pub(super) fn accepted_response() -> Response<Body> {
    let mut res = Response::new(Body::empty());
    *res.status_mut() = StatusCode::ACCEPTED;
    res
}

pub(super) fn gateway_error(
    kind: ErrorKind,
    msg: impl Into<std::borrow::Cow<'static, str>>,
    id: Option<&[u8]>,
) -> Response<Body> {
    let id = id.and_then(RequestId::from_raw_json);
    error_response(&GatewayError::new(kind, msg), id.as_ref())
}

/// An SSE body of `first` then the rest of the stream.
fn sse_body<S>(first: Option<Bytes>, rest: S) -> Body
where
    S: futures_util::Stream<Item = Bytes> + Send + 'static,
{
    let events = futures_util::stream::iter(first).chain(rest).map(|m| {
        let mut ev = Vec::with_capacity(m.len() + 16);
        ev.extend_from_slice(b"event: message\ndata: ");
        ev.extend_from_slice(&m);
        ev.extend_from_slice(b"\n\n");
        Ok::<_, Infallible>(http_body::Frame::data(Bytes::from(ev)))
    });
    Body::new(http_body_util::StreamBody::new(events))
}

/// The rest of a call's messages, ending with its answer.
pub(super) fn call_rest(stream: CallStream) -> impl futures_util::Stream<Item = Bytes> + Send {
    futures_util::stream::unfold(stream, |mut s| async move {
        s.next().await.map(|item| (item.msg, s))
    })
}

fn channel_stream(rx: mpsc::Receiver<Item>) -> impl futures_util::Stream<Item = Bytes> + Send {
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item.msg, rx))
    })
}

pub(super) fn accepts_sse(headers: &http::HeaderMap) -> bool {
    headers.get_all(ACCEPT).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.contains("text/event-stream") || s.contains("*/*"))
    })
}

/// Answers a call: JSON when its answer is the first thing the server
/// says, else SSE carrying what came before it.
pub(super) async fn respond(mut stream: CallStream, sse: bool) -> Response<Body> {
    let Some(first) = stream.next().await else {
        return gateway_error(ErrorKind::Internal, "a call with no answer", None);
    };
    if first.last {
        let mut res = json_response(first.msg);
        if let Some(why) = stream.failure() {
            // The server ended before answering: the audit record says why.
            *res.status_mut() = StatusCode::BAD_GATEWAY;
            res.extensions_mut()
                .insert(crate::upstream::UpstreamFailure(why.clone()));
        }
        return res;
    }
    if !sse {
        // The client takes JSON only: the answer alone.
        loop {
            match stream.next().await {
                Some(i) if i.last => return json_response(i.msg),
                Some(_) => continue,
                None => return gateway_error(ErrorKind::Internal, "a call with no answer", None),
            }
        }
    }
    sse_response(Some(first.msg), call_rest(stream))
}

impl Bridge {
    /// A backend named `name` reached through `target`.
    pub fn new(name: impl Into<Arc<str>>, target: Target, cfg: BridgeConfig) -> Self {
        let processes = Arc::new(Semaphore::new(cfg.max_processes.max(1)));
        Bridge {
            inner: Arc::new(Inner {
                name: name.into(),
                cfg,
                target,
                sessions: Mutex::new(HashMap::new()),
                principals: tokio::sync::Mutex::new(HashMap::new()),
                shared: tokio::sync::Mutex::new(Shared::default()),
                processes,
                next_conn: AtomicU64::new(1),
                closing: AtomicBool::new(false),
                parked: Mutex::new(HashMap::new()),
                sweeping: AtomicBool::new(false),
                spawner: super::Spawner::current(),
            }),
        }
    }

    /// A stdio backend.
    pub fn stdio(name: impl Into<Arc<str>>, cmd: StdioCommand, cfg: BridgeConfig) -> Self {
        Bridge::new(name, Target::Stdio(cmd), cfg)
    }

    /// The backend's name.
    pub fn name(&self) -> &Arc<str> {
        &self.inner.name
    }

    /// Server connections open now (child processes, for stdio).
    pub fn live(&self) -> usize {
        let own = lock(&self.inner.sessions)
            .values()
            .filter(|s| matches!(&s.peer, SessionPeer::Own(p) if p.alive()))
            .count();
        let principals = self
            .inner
            .principals
            .try_lock()
            .map(|p| {
                p.values()
                    .filter(|s| matches!(&s.peer, SessionPeer::Own(p) if p.alive()))
                    .count()
            })
            .unwrap_or(0);
        let shared = self
            .inner
            .shared
            .try_lock()
            .map(|s| s.peer.as_ref().is_some_and(|p| p.alive()) as usize)
            .unwrap_or(0);
        own + principals + shared
    }

    /// Client sessions open now.
    pub fn sessions(&self) -> usize {
        lock(&self.inner.sessions).len()
    }

    /// Stops every server this backend started (stdin closed, `SIGTERM`,
    /// then `SIGKILL` after the grace period) and waits for them; new
    /// sessions are refused from now on. For the gateway's shutdown.
    pub async fn shutdown(&self) {
        self.inner.closing.store(true, Ordering::SeqCst);
        let mut peers: Vec<Arc<Peer>> = Vec::new();
        for s in lock(&self.inner.sessions).drain().map(|(_, s)| s) {
            if let SessionPeer::Own(p) = &s.peer {
                peers.push(p.clone());
            }
        }
        for s in self.inner.principals.lock().await.drain().map(|(_, s)| s) {
            if let SessionPeer::Own(p) = &s.peer {
                peers.push(p.clone());
            }
        }
        if let Some(p) = self.inner.shared.lock().await.peer.take() {
            peers.push(p);
        }
        lock(&self.inner.parked).clear();
        tracing::debug!(backend = %self.inner.name, servers = peers.len(), "stopping the backend's servers");
        for p in &peers {
            p.stop();
        }
        let all = futures_util::future::join_all(peers.iter().map(|p| p.ended_wait()));
        let bound = self.inner.cfg.grace * 2 + Duration::from_secs(1);
        let _ = tokio::time::timeout(bound, all).await;
    }
}

impl Inner {
    fn peer_limits(&self) -> PeerLimits {
        PeerLimits {
            in_flight: self.cfg.max_in_flight.max(1),
            queue_wait: self.cfg.queue_wait,
            deliver_wait: self.cfg.deliver_wait,
            backlog: self.cfg.backlog.max(1),
        }
    }

    /// Starts a connection to the server.
    async fn start(&self) -> Result<Arc<Peer>, GatewayError> {
        if self.closing.load(Ordering::SeqCst) {
            return Err(GatewayError::new(
                ErrorKind::UpstreamUnavailable,
                "Bad Gateway: the gateway is shutting down",
            ));
        }
        let (name, limits) = (self.name.clone(), self.peer_limits());
        let lost = || {
            GatewayError::new(
                ErrorKind::UpstreamUnavailable,
                format!("Bad Gateway: backend {} could not be started", self.name),
            )
        };
        // Started on the bridge's runtime: see `Spawner`.
        match &self.target {
            Target::Stdio(cmd) => {
                let stdio = StdioLimits {
                    max_line: self.cfg.max_line_bytes,
                    grace: self.cfg.grace,
                };
                let cmd = cmd.clone();
                let started = self
                    .spawner
                    .spawn(async move {
                        super::stdio::spawn(name.clone(), &cmd, limits, stdio).map_err(|e| {
                            tracing::error!(backend = %name, command = ?cmd.command, error = %e, "cannot start the backend's command");
                        })
                    })
                    .await;
                match started {
                    Ok(Ok((p, _))) => Ok(p),
                    _ => Err(lost()),
                }
            }
            Target::Sse(t) => {
                let (t, wait) = (t.clone(), self.cfg.init_timeout);
                self.spawner
                    .spawn(async move { super::sse_client::connect(name, &t, limits, wait).await })
                    .await
                    .unwrap_or_else(|_| Err(lost()))
            }
        }
    }

    /// A new per-session connection, within `max_processes`.
    async fn start_own(self: &Arc<Self>) -> Result<Arc<Peer>, GatewayError> {
        let Ok(permit) = self.processes.clone().try_acquire_owned() else {
            return Err(GatewayError::new(
                ErrorKind::SessionCapacity,
                format!(
                    "Service Unavailable: backend {} already runs {} sessions (max_processes)",
                    self.name, self.cfg.max_processes
                ),
            ));
        };
        let peer = self.start().await?;
        let p = peer.clone();
        self.spawner.spawn(async move {
            p.ended_wait().await;
            drop(permit);
        });
        Ok(peer)
    }

    fn session(&self, sid: &str) -> Option<Arc<Session>> {
        lock(&self.sessions).get(sid).cloned()
    }

    /// The peer serving `s` now: its own, or the shared one (restarted
    /// when it ended, within `restart.max_per_minute`).
    pub(super) async fn peer_of(self: &Arc<Self>, s: &Session) -> Result<Arc<Peer>, GatewayError> {
        match &s.peer {
            SessionPeer::Own(p) if p.alive() => Ok(p.clone()),
            SessionPeer::Own(p) => Err(p.gone_error()),
            SessionPeer::Shared => self.shared_peer(None).await.map(|(p, _)| p),
        }
    }

    /// The shared child, started (and initialized with `init_params`, or
    /// the recorded ones) when there is none.
    async fn shared_peer(
        self: &Arc<Self>,
        init_params: Option<&Bytes>,
    ) -> Result<(Arc<Peer>, Bytes), GatewayError> {
        let mut sh = self.shared.lock().await;
        if let (Some(p), Some(r)) = (&sh.peer, &sh.init_result) {
            if p.alive() {
                return Ok((p.clone(), r.clone()));
            }
        }
        if sh.init_params.is_none() {
            sh.init_params = init_params.cloned();
        }
        let Some(params) = sh.init_params.clone() else {
            return Err(GatewayError::new(
                ErrorKind::UpstreamUnavailable,
                format!("Bad Gateway: backend {} is not running", self.name),
            ));
        };
        let now = Instant::now();
        sh.starts
            .retain(|t| now.duration_since(*t) < Duration::from_secs(60));
        if sh.peer.is_some() && sh.starts.len() as u32 >= self.cfg.restart_per_minute {
            return Err(GatewayError::new(
                ErrorKind::UpstreamUnavailable,
                format!(
                    "Bad Gateway: backend {} ended and was restarted {} times in the last minute (restart.max_per_minute): not restarted yet",
                    self.name,
                    sh.starts.len()
                ),
            ));
        }
        if let Some(last) = sh.starts.last() {
            // Back off: 100 ms after the first restart, doubling.
            let wait = Duration::from_millis(100 << sh.starts.len().min(6));
            let since = now.duration_since(*last);
            if since < wait {
                tokio::time::sleep(wait - since).await;
            }
        }
        if sh.peer.is_some() {
            tracing::warn!(backend = %self.name, "restarting the shared backend process");
        }
        sh.starts.push(Instant::now());
        let peer = self.start().await?;
        let result = initialize(&peer, &params, self.cfg.init_timeout).await?;
        for c in &sh.conns {
            peer.attach(*c);
        }
        sh.peer = Some(peer.clone());
        sh.init_result = Some(result.clone());
        Ok((peer, result))
    }

    pub(super) fn touch(&self, s: &Session) {
        *lock(&s.last_used) = Instant::now();
    }

    /// A session of the gateway's own with the server, for 2026-07-28
    /// callers (initialized with `init_params`).
    pub(super) async fn own_session(
        self: &Arc<Self>,
        init_params: &Bytes,
    ) -> Result<Arc<Session>, GatewayError> {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (peer, result) = match self.cfg.mode {
            BridgeMode::PerSession => {
                let peer = self.start_own().await?;
                match initialize(&peer, init_params, self.cfg.init_timeout).await {
                    Ok(r) => (SessionPeer::Own(peer), r),
                    Err(e) => {
                        peer.stop();
                        return Err(e);
                    }
                }
            }
            BridgeMode::Shared => {
                let (p, r) = self.shared_peer(Some(init_params)).await?;
                self.shared.lock().await.conns.push(conn);
                p.attach(conn);
                (SessionPeer::Shared, r)
            }
        };
        if let SessionPeer::Own(p) = &peer {
            p.attach(conn);
        }
        self.sweep_later();
        Ok(Arc::new(Session {
            conn,
            peer,
            init_result: Some(result),
            last_used: Mutex::new(Instant::now()),
            busy: AtomicU64::new(0),
        }))
    }

    /// Ends 2026-07-28 callers' sessions idle past `stateless_idle`.
    fn sweep_later(self: &Arc<Self>) {
        if self.sweeping.swap(true, Ordering::SeqCst) {
            return;
        }
        let weak = Arc::downgrade(self);
        let every =
            (self.cfg.stateless_idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(30));
        self.spawner.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(inner) = weak.upgrade() else { return };
                let idle = inner.cfg.stateless_idle;
                let mut ended = Vec::new();
                inner.principals.lock().await.retain(|_, s| {
                    let keep =
                        s.busy.load(Ordering::Relaxed) > 0 || lock(&s.last_used).elapsed() < idle;
                    if !keep {
                        ended.push(s.clone());
                    }
                    keep
                });
                for s in ended {
                    inner.end(&s).await;
                }
                lock(&inner.parked).retain(|_, p| p.expires > Instant::now());
            }
        });
    }

    /// Ends a session: its own server is stopped, or it leaves the shared one.
    pub(super) async fn end(&self, s: &Session) {
        match &s.peer {
            SessionPeer::Own(p) => p.stop(),
            SessionPeer::Shared => {
                let mut sh = self.shared.lock().await;
                sh.conns.retain(|c| *c != s.conn);
                if let Some(p) = &sh.peer {
                    p.detach(s.conn);
                }
            }
        }
    }

    async fn post(self: Arc<Self>, req: Request<Body>) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let bytes = match body.collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                return gateway_error(
                    ErrorKind::InvalidRequest,
                    "the request body could not be read",
                    None,
                )
            }
        };
        let line = wire::one_line(bytes);
        let Some(head) = Head::parse(&line) else {
            return gateway_error(
                ErrorKind::InvalidRequest,
                format!(
                    "invalid request: backend {} takes one JSON-RPC message per request (no batches)",
                    self.name
                ),
                None,
            );
        };
        let id = head.id.clone().map(|r| &line[r]);
        let stateless = parts
            .extensions
            .get::<McpRequest>()
            .map(|m| m.era() == Era::Stateless)
            .unwrap_or_else(|| {
                parts
                    .headers
                    .get(&header_names::MCP_PROTOCOL_VERSION)
                    .is_some_and(|v| v.as_bytes() >= b"2026-07-28".as_slice())
                    && !parts.headers.contains_key(&header_names::MCP_SESSION_ID)
            });
        let sse = accepts_sse(&parts.headers);
        if stateless {
            // Callers without a principal are told apart by address, as
            // the limits tell them apart: they never share a server's state.
            let req = Request::from_parts(parts, ());
            let owner: Arc<str> = match crate::session::session_owner(&req) {
                Some(o) => Arc::from(o),
                None => match req.extensions().get::<crate::limit::ClientAddr>() {
                    Some(a) => format!("anon:{}", a.0.ip()).into(),
                    None => Arc::from("anon"),
                },
            };
            return super::stateless::post(self, owner, line, head, sse).await;
        }
        let Some(sid) = session_id(&parts.headers) else {
            if head.kind == Kind::Request && head.method() == "initialize" {
                return self.initialize(line, head).await;
            }
            return gateway_error(
                ErrorKind::MissingSession,
                "Bad Request: Mcp-Session-Id header is required",
                id,
            );
        };
        let Some(session) = self.session(sid) else {
            return gateway_error(ErrorKind::SessionNotFound, "Session not found", id);
        };
        self.touch(&session);
        let peer = match self.peer_of(&session).await {
            Ok(p) => p,
            Err(e) => {
                if let SessionPeer::Own(_) = session.peer {
                    // Its server is gone: so is the session.
                    lock(&self.sessions).remove(sid);
                    return gateway_error(ErrorKind::SessionNotFound, "Session not found", id);
                }
                return error_response(&e, id.and_then(RequestId::from_raw_json).as_ref());
            }
        };
        match head.kind {
            Kind::Request if head.method() == "initialize" => {
                // A shared server is initialized once; a session's own once.
                match &session.init_result {
                    Some(r) => json_response(wire::result_message(id.unwrap_or(b"null"), r)),
                    None => gateway_error(
                        ErrorKind::InvalidRequest,
                        "invalid request: the session is already initialized",
                        id,
                    ),
                }
            }
            Kind::Request => match peer.call(session.conn, line.clone(), &head).await {
                Ok(stream) => respond(stream, sse).await,
                Err(e) => error_response(&e, id.and_then(RequestId::from_raw_json).as_ref()),
            },
            Kind::Notification => {
                if matches!(session.peer, SessionPeer::Shared)
                    && head.method() == "notifications/initialized"
                {
                    return accepted_response();
                }
                match peer.notify(session.conn, line, &head).await {
                    Ok(()) => accepted_response(),
                    Err(e) => error_response(&e, None),
                }
            }
            Kind::Response => match peer.answer(session.conn, line, &head).await {
                Ok(()) => accepted_response(),
                Err(e) => error_response(&e, None),
            },
        }
    }

    /// A client's `initialize`: a new session (and, per session, a new
    /// server).
    async fn initialize(self: Arc<Self>, line: Bytes, head: Head) -> Response<Body> {
        let id = head.id.clone().map(|r| Bytes::copy_from_slice(&line[r]));
        let id = id.as_deref();
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (peer, init_result, answer) = match self.cfg.mode {
            BridgeMode::PerSession => {
                let peer = match self.start_own().await {
                    Ok(p) => p,
                    Err(e) => {
                        return error_response(&e, id.and_then(RequestId::from_raw_json).as_ref())
                    }
                };
                peer.attach(conn);
                let (answer, failed) = match peer.call(conn, line, &head).await {
                    Ok(mut s) => {
                        let msg = loop {
                            match s.next().await {
                                Some(i) if i.last => break i.msg,
                                Some(_) => continue,
                                None => break Bytes::new(),
                            }
                        };
                        (msg, s.failure().cloned())
                    }
                    Err(e) => {
                        peer.stop();
                        return error_response(&e, id.and_then(RequestId::from_raw_json).as_ref());
                    }
                };
                if result_of(&answer).is_none() {
                    peer.stop();
                    if let Some(why) = failed {
                        // It died on the way: a gateway error, not the server's answer.
                        let mut res = error_response(
                            &peer.gone_error(),
                            id.and_then(RequestId::from_raw_json).as_ref(),
                        );
                        res.extensions_mut()
                            .insert(crate::upstream::UpstreamFailure(why));
                        return res;
                    }
                    return json_response(answer);
                }
                (SessionPeer::Own(peer), None, answer)
            }
            BridgeMode::Shared => {
                let params = params_of(&line).unwrap_or_else(|| Bytes::from_static(b"{}"));
                let result = match self.shared_peer(Some(&params)).await {
                    Ok((p, r)) => {
                        self.shared.lock().await.conns.push(conn);
                        p.attach(conn);
                        r
                    }
                    Err(e) => {
                        return error_response(&e, id.and_then(RequestId::from_raw_json).as_ref())
                    }
                };
                let result =
                    super::stateless::with_version(&result, version_asked(&line).as_deref());
                let answer = wire::result_message(id.unwrap_or(b"null"), &result);
                (SessionPeer::Shared, Some(result), answer)
            }
        };
        let sid: Arc<str> = SessionId::random().as_str().into();
        let session = Arc::new(Session {
            conn,
            peer,
            init_result,
            last_used: Mutex::new(Instant::now()),
            busy: AtomicU64::new(0),
        });
        if let SessionPeer::Own(p) = &session.peer {
            // The session ends with its server.
            let weak = Arc::downgrade(&self);
            let (p, sid) = (p.clone(), sid.clone());
            self.spawner.spawn(async move {
                p.ended_wait().await;
                if let Some(inner) = weak.upgrade() {
                    lock(&inner.sessions).remove(&sid);
                }
            });
        }
        lock(&self.sessions).insert(sid.clone(), session);
        let mut res = json_response(answer);
        if let Ok(v) = HeaderValue::from_str(&sid) {
            res.headers_mut().insert(header_names::MCP_SESSION_ID, v);
        }
        res
    }

    async fn get(self: Arc<Self>, headers: http::HeaderMap) -> Response<Body> {
        let Some(sid) = session_id(&headers) else {
            return gateway_error(
                ErrorKind::MethodNotAllowed,
                "Method Not Allowed: a GET stream needs a session",
                None,
            );
        };
        let Some(session) = self.session(sid) else {
            return gateway_error(ErrorKind::SessionNotFound, "Session not found", None);
        };
        let peer = self.peer_of(&session).await.ok();
        let Some(rx) = peer.and_then(|p| p.open_stream(session.conn)) else {
            return gateway_error(ErrorKind::SessionNotFound, "Session not found", None);
        };
        sse_response(None, channel_stream(rx))
    }

    async fn delete(&self, headers: http::HeaderMap) -> Response<Body> {
        let Some(session) = session_id(&headers).and_then(|sid| lock(&self.sessions).remove(sid))
        else {
            return gateway_error(ErrorKind::SessionNotFound, "Session not found", None);
        };
        self.end(&session).await;
        Response::new(Body::empty())
    }
}

/// The request's `Mcp-Session-Id`.
fn session_id(headers: &http::HeaderMap) -> Option<&str> {
    headers
        .get(&header_names::MCP_SESSION_ID)
        .and_then(|v| v.to_str().ok())
}

/// The raw member `key` (`params`, `result`) of a message.
fn member(line: &[u8], key: &str) -> Option<Bytes> {
    let m: std::collections::HashMap<&str, &serde_json::value::RawValue> =
        serde_json::from_slice(line).ok()?;
    Some(Bytes::copy_from_slice(m.get(key)?.get().as_bytes()))
}

/// The raw `params` of a request.
pub(super) fn params_of(line: &[u8]) -> Option<Bytes> {
    member(line, "params")
}

/// The raw `result` of an answer.
pub(super) fn result_of(line: &[u8]) -> Option<Bytes> {
    member(line, "result")
}

fn version_asked(line: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(line).ok()?;
    v.pointer("/params/protocolVersion")?
        .as_str()
        .map(str::to_owned)
}

/// Initializes `peer` for the gateway (`initialize` with `params`, then
/// `notifications/initialized`): the server's `InitializeResult`.
async fn initialize(peer: &Peer, params: &[u8], wait: Duration) -> Result<Bytes, GatewayError> {
    let answer = peer.request_own("initialize", params, wait).await?;
    let Some(result) = result_of(&answer) else {
        tracing::warn!(backend = %peer.backend(), answer = %String::from_utf8_lossy(&answer), "the backend refused initialize");
        peer.stop();
        return Err(GatewayError::new(
            ErrorKind::UpstreamUnavailable,
            format!(
                "Bad Gateway: backend {} refused to initialize",
                peer.backend()
            ),
        ));
    };
    peer.send_own(Bytes::from_static(
        br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
    ))
    .await?;
    Ok(result)
}

impl Service<Request<Body>> for Bridge {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> BoxFuture {
        let inner = self.inner.clone();
        match *req.method() {
            Method::POST => Box::pin(async move { Ok(inner.post(req).await) }),
            Method::GET => {
                let headers = req.into_parts().0.headers;
                Box::pin(async move { Ok(inner.get(headers).await) })
            }
            Method::DELETE => {
                let headers = req.into_parts().0.headers;
                Box::pin(async move { Ok(inner.delete(headers).await) })
            }
            _ => Box::pin(std::future::ready(Ok(gateway_error(
                ErrorKind::MethodNotAllowed,
                "Method Not Allowed",
                None,
            )))),
        }
    }
}
