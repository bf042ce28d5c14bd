//! Serving legacy HTTP+SSE clients (2024-11-05) with the same stack as the
//! others.
//!
//! [`LegacySse`] wraps the *whole* gateway service: `GET {path}/sse` opens
//! the client's stream, whose first event (`endpoint`) names
//! `{path}/message?sessionId=…`; each message `POST`ed there is answered
//! `202 Accepted` and goes through the stack as a Streamable HTTP request
//! (same origin guard, authentication, policy, limits and audit, with the
//! client's own headers); what the stack answers (JSON or SSE) travels on
//! the client's stream. The gateway session behind it belongs to the
//! principal that started it, like any other. Opening the stream passes
//! the origin guard and authentication first (401 / 403 as usual). When
//! the client's stream closes, the session is ended (`DELETE`).
//!
//! Notifications and answers are passed on before the `202`, so they keep
//! the order the client sent them in; requests run concurrently (at most
//! [`LegacySseConfig::max_in_flight`] per client).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::Either;
use http::header::{HeaderValue, ACCEPT, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Extensions, HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use mcp_gateway_core::jsonrpc::Envelope;
use mcp_gateway_core::protocol::header_names;
use mcp_gateway_core::session::SessionId;
use mcp_gateway_core::sse::SseScanner;
use mcp_gateway_core::{ErrorKind, GatewayError};
use tokio::sync::{mpsc, Semaphore};
use tower::ServiceExt;
use tower_layer::Layer;
use tower_service::Service;

use crate::body::{lock, Body, BoxFuture};
use crate::error::error_response;

/// Marks the request [`LegacySse`] sends through the stack when a stream
/// opens: the JSON-RPC layer answers it `204` once the layers before it
/// (origin guard, authentication) let it through.
#[derive(Debug, Clone, Copy)]
pub struct LegacyProbe;

/// Settings of [`LegacySseLayer`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LegacySseConfig {
    /// The MCP endpoint path (`/mcp`): the stream is `{path}/sse`, the
    /// endpoint `{path}/message`.
    pub path: String,
    /// Legacy streams open at once. Default 10 000.
    pub max_sessions: usize,
    /// Requests of one client in flight at once. Default 64.
    pub max_in_flight: usize,
    /// A comment on an idle stream this often. Default 15 s.
    pub keep_alive: Duration,
    /// The largest message body. Default 4 MiB.
    pub max_body: usize,
}

impl LegacySseConfig {
    /// The settings for the endpoint at `path`.
    pub fn new(path: impl Into<String>) -> Self {
        LegacySseConfig {
            path: path.into(),
            max_sessions: 10_000,
            max_in_flight: 64,
            keep_alive: Duration::from_secs(15),
            max_body: 4 * 1024 * 1024,
        }
    }
}

/// Wraps a gateway service with the legacy endpoints. See the module docs.
///
/// `B` is the request body type of the wrapped service (the requests the
/// layer makes are built with `make`): [`Body`] by default.
#[derive(Clone, Debug)]
pub struct LegacySseLayer<B = Body> {
    cfg: Arc<LegacySseConfig>,
    make: fn(Body) -> B,
}

impl LegacySseLayer<Body> {
    /// The layer, for a service taking [`Body`].
    pub fn new(cfg: LegacySseConfig) -> Self {
        LegacySseLayer {
            cfg: Arc::new(cfg),
            make: std::convert::identity,
        }
    }
}

impl<B> LegacySseLayer<B> {
    /// The layer, for a service taking another body type (axum's), made
    /// from [`Body`] by `make`.
    pub fn with_body(cfg: LegacySseConfig, make: fn(Body) -> B) -> Self {
        LegacySseLayer {
            cfg: Arc::new(cfg),
            make,
        }
    }

    /// `{path}/sse`: where legacy clients open their stream.
    pub fn sse_path(&self) -> String {
        format!("{}/sse", self.cfg.path.trim_end_matches('/'))
    }

    /// `{path}/message`: where they post.
    pub fn message_path(&self) -> String {
        format!("{}/message", self.cfg.path.trim_end_matches('/'))
    }
}

impl<S, B> Layer<S> for LegacySseLayer<B> {
    type Service = LegacySse<S, B>;
    fn layer(&self, inner: S) -> LegacySse<S, B> {
        LegacySse {
            inner,
            shared: Arc::new(Shared {
                sse_path: self.sse_path(),
                message_path: self.message_path(),
                cfg: self.cfg.clone(),
                sessions: Mutex::new(HashMap::new()),
                make: self.make,
            }),
        }
    }
}

/// The service of [`LegacySseLayer`].
pub struct LegacySse<S, B = Body> {
    inner: S,
    shared: Arc<Shared<B>>,
}

impl<S: Clone, B> Clone for LegacySse<S, B> {
    fn clone(&self) -> Self {
        LegacySse {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S, B> std::fmt::Debug for LegacySse<S, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LegacySse")
            .field("streams", &lock(&self.shared.sessions).len())
            .finish_non_exhaustive()
    }
}

struct Shared<B> {
    cfg: Arc<LegacySseConfig>,
    sse_path: String,
    message_path: String,
    sessions: Mutex<HashMap<Arc<str>, Arc<Client>>>,
    make: fn(Body) -> B,
}

/// One legacy client.
struct Client {
    tx: mpsc::Sender<Bytes>,
    /// The gateway session behind it, once `initialize` succeeded.
    session: Mutex<Option<HeaderValue>>,
    /// The revision it negotiated.
    version: Mutex<Option<HeaderValue>>,
    /// The last message's headers and extensions: what the `DELETE` at
    /// the end carries (the client's credentials, its address).
    last: Mutex<Option<(HeaderMap, Extensions)>>,
    slots: Arc<Semaphore>,
}

fn refuse(kind: ErrorKind, msg: &'static str) -> Response<Body> {
    error_response(&GatewayError::new(kind, msg), None)
}

impl<S, B> Service<Request<B>> for LegacySse<S, B>
where
    S: Service<Request<B>, Response = Response<Body>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<crate::body::BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    /// Every other request goes on as it came, without a box of its own.
    type Future = Either<S::Future, BoxFuture>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let path = req.uri().path();
        let (allowed, stream) = if path == self.shared.sse_path {
            (Method::GET, true)
        } else if path == self.shared.message_path {
            (Method::POST, false)
        } else {
            return Either::Left(self.inner.call(req));
        };
        if req.method() != allowed {
            let refused = refuse(ErrorKind::MethodNotAllowed, "Method Not Allowed");
            return Either::Right(Box::pin(std::future::ready(Ok(refused))));
        }
        let (inner, shared) = (self.inner.clone(), self.shared.clone());
        Either::Right(if stream {
            Box::pin(async move { Ok(open(shared, inner, req).await) })
        } else {
            Box::pin(async move { Ok(message(shared, inner, req).await) })
        })
    }
}

/// `GET {path}/sse`.
async fn open<S, B>(shared: Arc<Shared<B>>, inner: S, req: Request<B>) -> Response<Body>
where
    S: Service<Request<B>, Response = Response<Body>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<crate::body::BoxError>,
{
    if lock(&shared.sessions).len() >= shared.cfg.max_sessions {
        return refuse(
            ErrorKind::SessionCapacity,
            "Service Unavailable: too many legacy SSE streams are open",
        );
    }
    let (parts, _) = req.into_parts();
    let mut probe = Request::new((shared.make)(Body::empty()));
    *probe.uri_mut() = shared.cfg.path.parse().unwrap_or_default();
    *probe.headers_mut() = parts.headers.clone();
    *probe.extensions_mut() = parts.extensions.clone();
    probe.extensions_mut().insert(LegacyProbe);
    let Ok(res) = inner.clone().oneshot(probe).await;
    if res.status() != StatusCode::NO_CONTENT {
        // Refused: 401 with `WWW-Authenticate`, 403, …
        return res;
    }
    let id: Arc<str> = SessionId::random().as_str().into();
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let client = Arc::new(Client {
        tx,
        session: Mutex::new(None),
        version: Mutex::new(None),
        last: Mutex::new(Some((parts.headers, parts.extensions))),
        slots: Arc::new(Semaphore::new(shared.cfg.max_in_flight.max(1))),
    });
    lock(&shared.sessions).insert(id.clone(), client);
    tracing::debug!(stream = %id, "legacy SSE client connected");
    let endpoint = format!("{}?sessionId={id}", shared.message_path);
    let mut first = Vec::with_capacity(endpoint.len() + 24);
    first.extend_from_slice(b"event: endpoint\ndata: ");
    first.extend_from_slice(endpoint.as_bytes());
    first.extend_from_slice(b"\n\n");
    let keep_alive = shared.cfg.keep_alive;
    let state = Stream {
        rx,
        end: Some(End {
            shared,
            inner: Some(Box::new(move |r| Box::pin(inner.oneshot(r)))),
            id,
        }),
    };
    let rest = futures_util::stream::unfold(state, move |mut st| async move {
        let frame = tokio::select! {
            m = st.rx.recv() => {
                let m = m?;
                let mut ev = Vec::with_capacity(m.len() + 24);
                ev.extend_from_slice(b"event: message\ndata: ");
                ev.extend_from_slice(&m);
                ev.extend_from_slice(b"\n\n");
                Bytes::from(ev)
            }
            _ = tokio::time::sleep(keep_alive) => Bytes::from_static(mcp_gateway_core::sse::KEEP_ALIVE),
        };
        Some((frame, st))
    });
    let frames = futures_util::StreamExt::map(
        futures_util::StreamExt::chain(futures_util::stream::iter([Bytes::from(first)]), rest),
        |b| Ok::<_, Infallible>(http_body::Frame::data(b)),
    );
    let mut res = Response::new(Body::new(http_body_util::StreamBody::new(frames)));
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    res.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    res
}

type Send1<B> = Box<dyn FnOnce(Request<B>) -> BoxFuture + Send>;

struct Stream<B> {
    rx: mpsc::Receiver<Bytes>,
    end: Option<End<B>>,
}

/// Ends the client's gateway session when its stream goes.
struct End<B> {
    shared: Arc<Shared<B>>,
    inner: Option<Send1<B>>,
    id: Arc<str>,
}

impl<B> Drop for End<B> {
    fn drop(&mut self) {
        let Some(client) = lock(&self.shared.sessions).remove(&self.id) else {
            return;
        };
        tracing::debug!(stream = %self.id, "legacy SSE client gone");
        let session = lock(&client.session).take();
        let (Some(session), Some((headers, ext))) = (session, lock(&client.last).take()) else {
            return;
        };
        let mut req = Request::new((self.shared.make)(Body::empty()));
        *req.method_mut() = Method::DELETE;
        *req.uri_mut() = self.shared.cfg.path.parse().unwrap_or_default();
        *req.headers_mut() = headers;
        *req.extensions_mut() = ext;
        req.headers_mut().remove(CONTENT_TYPE);
        req.headers_mut().remove(CONTENT_LENGTH);
        req.headers_mut()
            .insert(header_names::MCP_SESSION_ID, session);
        if let Some(v) = lock(&client.version).clone() {
            req.headers_mut()
                .insert(header_names::MCP_PROTOCOL_VERSION, v);
        }
        let Some(send) = self.inner.take() else {
            return;
        };
        let fut = send(req);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(fut);
        }
    }
}

impl<B> Drop for Stream<B> {
    fn drop(&mut self) {
        self.end.take();
    }
}

/// `POST {path}/message?sessionId=…`.
async fn message<S, B>(shared: Arc<Shared<B>>, inner: S, req: Request<B>) -> Response<Body>
where
    S: Service<Request<B>, Response = Response<Body>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<crate::body::BoxError>,
{
    let id = req.uri().query().and_then(|q| {
        q.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == "sessionId" || k == "session_id").then_some(v)
        })
    });
    let Some(client) = id.and_then(|id| lock(&shared.sessions).get(id).cloned()) else {
        return refuse(ErrorKind::SessionNotFound, "Session not found");
    };
    let (parts, body) = req.into_parts();
    let body = match http_body_util::Limited::new(body, shared.cfg.max_body)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return refuse(
                ErrorKind::PayloadTooLarge,
                "Payload Too Large: the message is over the limit",
            )
        }
    };
    let envelope = match Envelope::parse(body.clone()) {
        Ok(e) => e,
        Err(e) => return error_response(&e, None),
    };
    let Some(msg) = envelope.single() else {
        return refuse(
            ErrorKind::InvalidRequest,
            "invalid request: one JSON-RPC message per POST",
        );
    };
    let is_request = msg.is_request();
    let is_initialize = msg.is_initialize();
    let is_initialized =
        !is_request && msg.method().map(|m| m.as_str()) == Some("notifications/initialized");
    let id = msg.id().cloned();
    let mut modern = Request::new((shared.make)(Body::full(body)));
    *modern.method_mut() = Method::POST;
    *modern.uri_mut() = shared.cfg.path.parse().unwrap_or_default();
    *modern.headers_mut() = parts.headers.clone();
    *modern.extensions_mut() = parts.extensions.clone();
    let h = modern.headers_mut();
    h.insert(
        ACCEPT,
        HeaderValue::from_static("application/json, text/event-stream"),
    );
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if !is_initialize {
        if let Some(s) = lock(&client.session).clone() {
            h.insert(header_names::MCP_SESSION_ID, s);
        }
        if let Some(v) = lock(&client.version).clone() {
            h.insert(header_names::MCP_PROTOCOL_VERSION, v);
        }
    }
    // What the session's owner sent: kept (once the stack accepted it) for
    // the session's GET stream and its DELETE at the end.
    let sent = (parts.headers, parts.extensions);
    if !is_request {
        // In order: passed on before the client may send the next one.
        let Ok(res) = inner.clone().oneshot(modern).await;
        let ok = res.status().is_success();
        if ok {
            *lock(&client.last) = Some(sent);
        }
        pump(&client, res, false, None).await;
        if ok && is_initialized {
            stream_of_session(client.clone(), inner, &shared);
        }
        return accepted();
    }
    let Ok(permit) = client.slots.clone().try_acquire_owned() else {
        let e = GatewayError::new(
            ErrorKind::TooManyRequests,
            "Too Many Requests: too many requests of this client are in flight",
        );
        let _ = client.tx.try_send(Bytes::from(e.to_json_body(id.as_ref())));
        return error_response(&e, id.as_ref());
    };
    tokio::spawn(async move {
        let Ok(res) = inner.oneshot(modern).await;
        if res.status().is_success() {
            *lock(&client.last) = Some(sent);
            if is_initialize {
                if let Some(s) = res.headers().get(&header_names::MCP_SESSION_ID) {
                    *lock(&client.session) = Some(s.clone());
                }
            }
        }
        pump(&client, res, is_initialize, id.as_ref()).await;
        drop(permit);
    });
    accepted()
}

fn accepted() -> Response<Body> {
    let mut res = Response::new(Body::empty());
    *res.status_mut() = StatusCode::ACCEPTED;
    res
}

/// Opens the gateway session's `GET` stream and passes what it carries to
/// the client's stream, until either ends.
fn stream_of_session<S, B>(client: Arc<Client>, inner: S, shared: &Shared<B>)
where
    S: Service<Request<B>, Response = Response<Body>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<crate::body::BoxError>,
{
    let Some((mut headers, ext)) = lock(&client.last).clone() else {
        return;
    };
    let Some(session) = lock(&client.session).clone() else {
        return;
    };
    headers.remove(CONTENT_TYPE);
    headers.remove(CONTENT_LENGTH);
    headers.insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
    headers.insert(header_names::MCP_SESSION_ID, session);
    if let Some(v) = lock(&client.version).clone() {
        headers.insert(header_names::MCP_PROTOCOL_VERSION, v);
    }
    let mut req = Request::new((shared.make)(Body::empty()));
    *req.uri_mut() = shared.cfg.path.parse().unwrap_or_default();
    *req.headers_mut() = headers;
    *req.extensions_mut() = ext;
    tokio::spawn(async move {
        let Ok(res) = inner.oneshot(req).await;
        if res.status() == StatusCode::OK {
            pump(&client, res, false, None).await;
        }
    });
}

/// Passes the messages of a response (JSON or SSE) to the client's stream.
/// A refusal that could not name the request (401 before the body was
/// read) is given `id`, so the client's call does not wait forever.
async fn pump(
    client: &Client,
    res: Response<Body>,
    initialize: bool,
    id: Option<&mcp_gateway_core::RequestId>,
) {
    let refused = !res.status().is_success();
    let sse = res
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let mut body = res.into_body();
    if !sse {
        let Ok(b) = body.collect().await.map(|c| c.to_bytes()) else {
            return;
        };
        if !b.is_empty() {
            if initialize {
                note_version(client, &b);
            }
            let b = match id {
                Some(id) if refused => with_id(b, id),
                _ => b,
            };
            let _ = client.tx.send(b).await;
        }
        return;
    }
    let mut scanner = SseScanner::collecting(16 * 1024 * 1024);
    while let Some(Ok(frame)) = body.frame().await {
        let Ok(chunk) = frame.into_data() else {
            continue;
        };
        let mut msgs = Vec::new();
        scanner.feed(&chunk, |ev| {
            if !ev.data.is_empty() && ev.event.is_none_or(|e| e == b"message") {
                msgs.push(Bytes::copy_from_slice(ev.data));
            }
        });
        for m in msgs {
            if initialize {
                note_version(client, &m);
            }
            if client.tx.send(m).await.is_err() {
                // The client is gone: stop reading (the call goes on, as
                // a disconnect is no cancellation in these revisions).
                return;
            }
        }
    }
}

/// `msg` answering `id` when it answers no one (`"id": null`).
fn with_id(msg: Bytes, id: &mcp_gateway_core::RequestId) -> Bytes {
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&msg) else {
        return msg;
    };
    if !v.get("id").is_some_and(serde_json::Value::is_null) {
        return msg;
    }
    match serde_json::from_slice(id.as_bytes()) {
        Ok(id) => v["id"] = id,
        Err(_) => return msg,
    }
    serde_json::to_vec(&v).map(Bytes::from).unwrap_or(msg)
}

fn note_version(client: &Client, msg: &[u8]) {
    let v: serde_json::Value = serde_json::from_slice(msg).unwrap_or_default();
    if let Some(Ok(h)) = v
        .pointer("/result/protocolVersion")
        .and_then(|v| v.as_str())
        .map(HeaderValue::from_str)
    {
        *lock(&client.version) = Some(h);
    }
}
