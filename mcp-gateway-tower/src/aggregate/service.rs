//! [`Aggregate`]: the service, and how each message is dispatched.

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method as HttpMethod, Request, Response, StatusCode};
use mcp_gateway_core::jsonrpc::{Message, MessageKind, Method};
use mcp_gateway_core::protocol::{encode_header_value, header_names};
use mcp_gateway_core::{Era, ErrorKind, GatewayError, McpRequest, RequestId};
use serde_json::Value;
use tower_service::Service;

use super::forward::{rpc_error, Outgoing};
use super::names::{Kind, Naming, Unresolved};
use super::route::{RouteLayer, Routed};
use super::session::{AggSession, CallGuard, Sessions, Setup};
use super::stream::{collect, is_sse, merge, rewrite_body, splice, Rewriter};
use super::{AggregateConfig, Member, PrefixMode};
use crate::acl::BackendName;
use crate::body::{lock, Body, BoxError, BoxFuture};
use crate::error::error_response;

/// Several named backends as one MCP server: see the [module
/// docs](super). Put it under the session router as the single instance
/// of an [`Upstreams`](crate::upstream::Upstreams) set (the `mcp-gateway-axum`
/// builder does); its own session ids are what the router maps the
/// gateway's to.
#[derive(Clone)]
pub struct Aggregate {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Aggregate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Aggregate")
            .field("members", &self.inner.naming.members)
            .field("prefix", &self.inner.cfg.prefix)
            .finish()
    }
}

pub(crate) struct Inner {
    pub(crate) members: Vec<Member>,
    pub(crate) naming: Naming,
    pub(crate) cfg: AggregateConfig,
    pub(crate) sessions: Sessions,
    generation: AtomicU64,
    me: Weak<Inner>,
    /// When every backend's catalog was last listed for an unknown name.
    pub(crate) last_refresh: Mutex<Option<Instant>>,
    /// Backends with a background refresh under way.
    pub(crate) refreshing: Mutex<HashSet<usize>>,
}

impl Aggregate {
    /// The backends `members` (at least one; names unique, made of
    /// letters, digits, `-` and `_`, without the separator) joined by
    /// `cfg`.
    pub fn new(members: Vec<Member>, cfg: AggregateConfig) -> Result<Self, BoxError> {
        if members.is_empty() {
            return Err("an aggregate needs at least one backend".into());
        }
        if cfg.separator.is_empty() {
            return Err("aggregate.separator must not be empty".into());
        }
        let mut seen = HashSet::new();
        for m in &members {
            let n = &*m.name;
            if n.is_empty()
                || !n
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(format!(
                    "backend name {n:?}: use letters, digits, '-' and '_' (it is the namespace of its tools)"
                )
                .into());
            }
            if n.contains(&*cfg.separator) {
                return Err(format!(
                    "backend name {n:?} contains the separator {:?}",
                    cfg.separator
                )
                .into());
            }
            if !seen.insert(n.to_owned()) {
                return Err(format!("backend name {n:?} is used twice").into());
            }
        }
        let naming = Naming::new(
            members.iter().map(|m| m.name.clone()).collect(),
            cfg.prefix,
            &cfg.separator,
        );
        let inner = Arc::new_cyclic(|me| Inner {
            members,
            naming,
            cfg,
            sessions: Sessions::default(),
            generation: AtomicU64::new(1),
            me: me.clone(),
            last_refresh: Mutex::new(None),
            refreshing: Mutex::new(HashSet::new()),
        });
        Ok(Aggregate { inner })
    }

    /// Lists every backend's tools, prompts, resources and templates (the
    /// catalog that routes unprefixed names and finds conflicts). A backend
    /// out of reach is logged and listed later (on first use). With
    /// [`PrefixMode::Never`], a name two backends share is an error naming
    /// both and the name.
    pub async fn discover(&self) -> Result<(), BoxError> {
        let inner = &self.inner;
        let all = (0..inner.members.len()).map(|m| inner.catalog_of(m));
        for (m, r) in futures_util::future::join_all(all)
            .await
            .into_iter()
            .enumerate()
        {
            if let Err(e) = r {
                tracing::warn!(backend = %inner.members[m].name, error = %e, "could not list the backend's tools, prompts and resources; will try again on use");
            }
        }
        match inner.conflict_report() {
            Some(report) if inner.cfg.prefix == PrefixMode::Never => Err(report.into()),
            _ => Ok(()),
        }
    }

    /// The layer that routes each named request before the layers that
    /// need its backend (limits): see [`RouteLayer`].
    pub fn route_layer(&self) -> RouteLayer {
        RouteLayer::new(self.clone())
    }

    /// The backends' names, in order.
    pub fn backend_names(&self) -> &[Arc<str>] {
        &self.inner.naming.members
    }

    /// The backends.
    pub fn members(&self) -> &[Member] {
        &self.inner.members
    }

    /// Live aggregate sessions.
    pub fn sessions(&self) -> usize {
        self.inner.sessions.len()
    }

    /// The backend and its own name for the client's `name` of `kind`,
    /// as the catalog stands (no refresh).
    pub fn resolve(&self, kind: Kind, name: &str) -> Option<(Arc<str>, String)> {
        self.inner
            .naming
            .resolve(kind, name)
            .ok()
            .map(|(m, own)| (self.inner.members[m].name.clone(), own.to_owned()))
    }

    /// The name the client sees for backend `backend`'s `own` name.
    pub fn client_name(&self, kind: Kind, backend: &str, own: &str) -> Option<String> {
        let m = self.inner.naming.member(backend)?;
        Some(self.inner.naming.client_name(kind, m, own).into_owned())
    }
}

impl Service<Request<Body>> for Aggregate {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> BoxFuture {
        // A routed call in a session (or stateless) whose backend part is
        // up: prepared here, its future only waits for the backend.
        let req = match self.inner.fast(req) {
            Fast::Sent(fut) => return fut,
            Fast::Slow(req) => req,
        };
        let inner = self.inner.clone();
        Box::pin(async move { Ok(inner.handle(req).await) })
    }
}

/// Whether [`Inner::fast`] sent the call, or it goes the slow way.
// Returned once and matched at once: the request moves back as it is
// rather than through a box.
#[allow(clippy::large_enum_variant)]
enum Fast {
    Sent(BoxFuture),
    Slow(Request<Body>),
}

/// What a routed call needs once the backend answered.
struct Sent {
    session: Option<Arc<AggSession>>,
    m: usize,
    guard: Option<CallGuard>,
    id: Option<RequestId>,
    /// For sending it again after a re-initialization.
    body: Bytes,
    mcp: McpRequest,
    routed: Routed,
    sid: bool,
}

/// The answer `result` to request `id`: JSON, or an event stream (the
/// `extra` events first) when there are events or `sse` (the backends
/// answered in SSE: so does the gateway).
pub(crate) fn ok_result(
    id: Option<&RequestId>,
    result: Value,
    extra: Vec<Bytes>,
    sse: bool,
) -> Response<Body> {
    let id = id.map_or("null", |i| {
        std::str::from_utf8(i.as_bytes()).unwrap_or("null")
    });
    let msg = format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{result}}}"#);
    if extra.is_empty() && !sse {
        let mut res = Response::new(Body::full(msg));
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        return res;
    }
    let mut out = Vec::new();
    for e in extra {
        mcp_gateway_core::sse::encode_event(
            &mut out,
            Some("message"),
            None,
            &String::from_utf8_lossy(&e),
        );
    }
    mcp_gateway_core::sse::encode_event(&mut out, Some("message"), None, &msg);
    let mut res = Response::new(Body::full(out));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    res
}

pub(crate) fn accepted() -> Response<Body> {
    let mut res = Response::new(Body::empty());
    *res.status_mut() = StatusCode::ACCEPTED;
    res
}

/// -32602 for a name no backend (or several) has.
pub(crate) fn unresolved(
    inner: &Inner,
    id: Option<&RequestId>,
    kind: Kind,
    name: &str,
    why: Unresolved,
) -> Response<Body> {
    let what = match kind {
        Kind::Tool => "tool",
        Kind::Prompt => "prompt",
        Kind::Resource => "resource",
        Kind::Template => "resource template",
    };
    match why {
        Unresolved::Unknown => {
            let data = match kind {
                Kind::Resource | Kind::Template => serde_json::json!({"type": what, "uri": name}),
                _ => serde_json::json!({"type": what, "name": name}),
            };
            rpc_error(
                id,
                ErrorKind::InvalidParams,
                format!("Unknown {what}: {name}"),
                Some(data),
            )
        }
        Unresolved::Ambiguous(ms) => {
            let names: Vec<&str> = ms.iter().map(|m| &*inner.members[*m].name).collect();
            rpc_error(
                id,
                ErrorKind::InvalidParams,
                format!(
                    "{what} {name} is offered by several backends ({}); use a prefixed name",
                    names.join(", ")
                ),
                Some(serde_json::json!({"type": what, "name": name, "backends": names})),
            )
        }
    }
}

fn json_string_body(s: &str) -> Vec<u8> {
    // The text between the quotes of `s` as a JSON string.
    let q = serde_json::to_string(s).unwrap_or_default();
    q.as_bytes()[1..q.len() - 1].to_vec()
}

impl Inner {
    pub(crate) fn me(&self) -> Arc<Inner> {
        self.me
            .upgrade()
            .expect("the aggregate is alive while it serves")
    }

    pub(crate) fn next_generation(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::Relaxed)
    }

    /// The common case without a suspended state of its own: a routed
    /// `tools/call`, `prompts/get` or `resources/read` whose route the
    /// [`RouteLayer`] decided, in a session whose backend part is up (or
    /// stateless). Anything else comes back for [`handle`](Self::handle).
    fn fast(self: &Arc<Self>, req: Request<Body>) -> Fast {
        if req.method() != HttpMethod::POST {
            return Fast::Slow(req);
        }
        let ext = req.extensions();
        let (Some(mcp), Some(routed)) = (ext.get::<McpRequest>(), ext.get::<Routed>()) else {
            return Fast::Slow(req);
        };
        let (mcp, routed) = (mcp.clone(), routed.clone());
        let Some(msg) = mcp.message() else {
            return Fast::Slow(req);
        };
        let kind = match msg.method() {
            Some(Method::ToolsCall) => Kind::Tool,
            Some(Method::PromptsGet) => Kind::Prompt,
            Some(Method::ResourcesRead) => Kind::Resource,
            _ => return Fast::Slow(req),
        };
        let stateless = mcp.era() == Era::Stateless;
        let (m, own) = (routed.member(), routed.name_bytes());
        let Some(target) = msg.target_text() else {
            return Fast::Slow(req);
        };
        let same = own == &target.as_bytes()[..];
        if kind == Kind::Resource && !same {
            // A rewritten URI: its answer is rewritten back (the slow way).
            return Fast::Slow(req);
        }
        let member = &self.members[m];
        let session = match req.headers().get(&header_names::MCP_SESSION_ID) {
            None if stateless => None,
            None => return Fast::Slow(req),
            Some(v) => match v.to_str().ok().and_then(|id| self.sessions.get(id)) {
                Some(s) => Some(s),
                None => return Fast::Slow(req),
            },
        };
        let joined = match &session {
            Some(s) => match s.slots[m].current() {
                Some(j) if !member.instances.is_lost(j.instance) => Some(j),
                _ => return Fast::Slow(req),
            },
            None => None,
        };
        let instance = match &joined {
            Some(j) => j.instance,
            None => match member.instances.pick() {
                Some(i) if member.instances.len() == 1 => i,
                // Several instances: the slow way retries another.
                _ => return Fast::Slow(req),
            },
        };
        let (mut parts, _) = req.into_parts();
        let body = if same {
            mcp.body().clone()
        } else {
            // The name is the end of the body's own (unescaped) text: its
            // bytes go in as they are.
            match splice(mcp.body(), target.as_bytes(), own) {
                Some(b) => b,
                None => return Fast::Slow(Request::from_parts(parts, Body::empty())),
            }
        };
        if !same {
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
            if parts.headers.contains_key(&header_names::MCP_NAME) {
                if let Ok(v) = HeaderValue::from_str(&encode_header_value(routed.name())) {
                    parts.headers.insert(header_names::MCP_NAME, v);
                }
            }
        }
        let id = msg.id().cloned();
        let guard = match (&session, &id) {
            (Some(s), Some(id)) => Some(s.call_started(id, m)),
            _ => None,
        };
        let sent = Sent {
            sid: joined.as_ref().is_some_and(|j| j.sid.is_some()),
            session,
            m,
            guard,
            id,
            body: body.clone(),
            mcp,
            routed,
        };
        let fut = member
            .stack
            .call(in_part(parts, body, joined.as_ref(), instance));
        let inner = self.clone();
        Fast::Sent(Box::pin(async move {
            let Ok(res) = fut.await;
            let forgot = res.status() == StatusCode::NOT_FOUND && sent.sid;
            if forgot
                || res.status().is_server_error()
                || res.extensions().get::<crate::upstream::NotSent>().is_some()
            {
                return Ok(Box::pin(inner.answered(res, sent)).await);
            }
            Ok(inner.relay_now(res, sent.session, sent.m, sent.guard))
        }))
    }

    /// After the backend answered a call of [`fast`](Self::fast): sent
    /// again if the backend forgot the session, relayed.
    async fn answered(&self, res: Response<Body>, sent: Sent) -> Response<Body> {
        let Sent {
            session,
            m,
            guard,
            id,
            body,
            mcp,
            routed,
            sid,
        } = sent;
        let forgot = res.status() == StatusCode::NOT_FOUND && sid;
        let unreachable = res.extensions().get::<crate::upstream::NotSent>().is_some();
        let res = match &session {
            Some(s) if forgot || unreachable => {
                tracing::info!(backend = %self.members[m].name, session = %s.id, forgot, "the backend's part of the session is initialized again");
                let out = Outgoing::of_session(s);
                Box::pin(self.send_in(s, m, |j| {
                    let mut r = out.post_routed(body.clone(), Some(j), j.instance, &mcp, &routed);
                    r.headers_mut()
                        .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
                    r
                }))
                .await
            }
            _ => res,
        };
        if !res.status().is_server_error() {
            return self.relay_now(res, session, m, guard);
        }
        Box::pin(self.relay(res, session, m, guard, None, id.as_ref())).await
    }

    /// [`relay`](Self::relay) for an answer that needs no reading: a
    /// success or a client error, no URI to rewrite.
    fn relay_now(
        &self,
        res: Response<Body>,
        session: Option<Arc<AggSession>>,
        m: usize,
        guard: Option<CallGuard>,
    ) -> Response<Body> {
        let (mut parts, body) = res.into_parts();
        if session.is_none() {
            // In a session, the session router puts the client's id in its
            // place, as for any backend.
            parts.headers.remove(&header_names::MCP_SESSION_ID);
        }
        parts
            .extensions
            .insert(BackendName(self.members[m].name.clone()));
        if is_sse(&parts.headers) {
            let mut rw = Rewriter::new(self.me(), session, m);
            rw.prefix_ids = true;
            parts.headers.remove(header::CONTENT_LENGTH);
            return Response::from_parts(parts, rewrite_body(rw, body, guard));
        }
        Response::from_parts(parts, body)
    }

    async fn handle(self: Arc<Self>, req: Request<Body>) -> Response<Body> {
        // The rare requests are boxed: the common one's future stays small.
        match *req.method() {
            HttpMethod::POST => self.post(req).await,
            HttpMethod::GET => Box::pin(self.get(req)).await,
            HttpMethod::DELETE => Box::pin(self.delete(req)).await,
            _ => {
                let e = GatewayError::new(ErrorKind::MethodNotAllowed, "Method Not Allowed");
                error_response(&e, None)
            }
        }
    }

    /// The session the request names: `Ok(None)` if it names none,
    /// `Err` (answered 404) if it is unknown.
    fn session_of(&self, headers: &http::HeaderMap) -> Result<Option<Arc<AggSession>>, Unknown> {
        match headers.get(&header_names::MCP_SESSION_ID) {
            None => Ok(None),
            Some(v) => match v.to_str().ok().and_then(|id| self.sessions.get(id)) {
                Some(s) => Ok(Some(s)),
                None => Err(Unknown),
            },
        }
    }

    async fn post(self: Arc<Self>, req: Request<Body>) -> Response<Body> {
        let (parts, _body) = req.into_parts();
        let Some(mcp) = parts.extensions.get::<McpRequest>().cloned() else {
            let e = GatewayError::new(
                ErrorKind::Internal,
                "gateway misconfigured: JsonRpcLayer must run before the aggregate",
            );
            return error_response(&e, None);
        };
        let Some(msg) = mcp.message() else {
            let e = GatewayError::new(
                ErrorKind::InvalidRequest,
                "a batch cannot be routed through an aggregate of several backends: send its messages one by one",
            );
            return error_response(&e, None);
        };
        let id = msg.id();
        let stateless = mcp.era() == Era::Stateless;
        let named = match (msg.kind(), msg.method()) {
            (MessageKind::Request, Some(Method::ToolsCall)) => Some(Kind::Tool),
            (MessageKind::Request, Some(Method::PromptsGet)) => Some(Kind::Prompt),
            (MessageKind::Request, Some(Method::ResourcesRead)) => Some(Kind::Resource),
            // Removed in 2026-07-28: there, the first backend answers.
            (
                MessageKind::Request,
                Some(Method::ResourcesSubscribe | Method::ResourcesUnsubscribe),
            ) if !stateless => Some(Kind::Resource),
            _ => None,
        };
        if let Some(kind) = named {
            // The common case: a call routed by name.
            let session = match self.session_of(&parts.headers) {
                Ok(s) => s,
                Err(Unknown) => return session_not_found(),
            };
            if session.is_none() && !stateless {
                return missing_session(id);
            }
            return self.routed(kind, session, parts, &mcp).await;
        }
        Box::pin(self.post_other(parts, mcp)).await
    }

    /// Every `POST` but a routed call.
    async fn post_other(
        self: Arc<Self>,
        mut parts: http::request::Parts,
        mcp: McpRequest,
    ) -> Response<Body> {
        let msg = mcp.message().expect("checked by post");
        let id = msg.id();
        let stateless = mcp.era() == Era::Stateless;
        if stateless && !routes_stateless(msg) {
            // Nothing to merge or route (`initialize`, `ping` and the other
            // methods the revision removed, unknown methods): the first
            // backend answers as its revision says.
            let out = Outgoing::of(&parts);
            let res = self
                .send(None, 0, &out, mcp.body().clone(), Some(mcp.clone()))
                .await;
            return self.relay(res, None, 0, None, None, id).await;
        }
        if msg.is_initialize() {
            return self.initialize(&parts, &mcp).await;
        }
        let session = match self.session_of(&parts.headers) {
            Ok(s) => s,
            Err(Unknown) => return session_not_found(),
        };
        if session.is_none() && !stateless {
            return missing_session(id);
        }
        let out = Outgoing::take(&mut parts);
        match msg.kind() {
            MessageKind::Response | MessageKind::Error => {
                return self.client_answer(session, &out, &mcp, msg).await
            }
            MessageKind::Notification => return self.notification(session, &out, &mcp, msg).await,
            MessageKind::Request => {}
        }
        match msg.method() {
            Some(Method::Ping) => ok_result(id, serde_json::json!({}), Vec::new(), false),
            Some(Method::ToolsList) => self.list(Kind::Tool, session, &out, &mcp).await,
            Some(Method::PromptsList) => self.list(Kind::Prompt, session, &out, &mcp).await,
            Some(Method::ResourcesList) => self.list(Kind::Resource, session, &out, &mcp).await,
            Some(Method::ResourcesTemplatesList) => {
                self.list(Kind::Template, session, &out, &mcp).await
            }
            Some(Method::CompletionComplete) => self.completion(session, out, &mcp, msg).await,
            Some(Method::LoggingSetLevel) => self.set_level(session, &out, &mcp).await,
            Some(Method::ServerDiscover) => self.discover_merged(&out, &mcp).await,
            Some(Method::SubscriptionsListen) => self.listen(session, &out, &mcp).await,
            other => {
                let name = other.map_or("", |m| m.as_str());
                let mut res = rpc_error(
                    id,
                    ErrorKind::MethodNotFound,
                    format!("Method not found: {name}"),
                    None,
                );
                if stateless {
                    *res.status_mut() = StatusCode::NOT_FOUND;
                }
                res
            }
        }
    }

    /// Resolves `name`; an unknown one, where the catalog decides, after
    /// listing every backend again (at most once a second).
    pub(crate) async fn resolve_or_refresh(
        &self,
        kind: Kind,
        name: &str,
    ) -> Result<(usize, String), Unresolved> {
        match self.naming.resolve(kind, name) {
            Ok((m, own)) => return Ok((m, own.to_owned())),
            Err(Unresolved::Unknown) if self.naming.needs_catalog(kind) => {}
            Err(e) => return Err(e),
        }
        let due = {
            let mut last = lock(&self.last_refresh);
            let due = last.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(1));
            if due {
                *last = Some(Instant::now());
            }
            due
        };
        if due {
            let all = (0..self.members.len()).map(|m| self.catalog_of(m));
            futures_util::future::join_all(all).await;
        }
        self.naming
            .resolve(kind, name)
            .map(|(m, own)| (m, own.to_owned()))
    }

    /// A call routed by name, the client's request reused for the
    /// backend: its extensions as they are (the parse, the route, the
    /// principal), its headers with the backend session's.
    async fn routed(
        &self,
        kind: Kind,
        session: Option<Arc<AggSession>>,
        mut parts: http::request::Parts,
        mcp: &McpRequest,
    ) -> Response<Body> {
        let msg = mcp.message().expect("checked by post");
        let id = msg.id();
        let Some(target) = msg.target_text() else {
            let e = GatewayError::new(
                ErrorKind::InvalidParams,
                format!(
                    "{} needs params.name (or params.uri)",
                    msg.method().map_or("", Method::as_str)
                ),
            );
            return rpc_error(id, e.kind(), e.message().to_owned(), None);
        };
        let name = target.as_str();
        let routed = match parts.extensions.get::<Routed>() {
            Some(r) => r.clone(),
            None => match Box::pin(self.resolve_or_refresh(kind, name)).await {
                Ok((m, own)) => {
                    let r = Routed::new(m, self.members[m].name.clone(), Bytes::from(own));
                    parts.extensions.insert(r.clone());
                    r
                }
                Err(why) => return unresolved(self, id, kind, name, why),
            },
        };
        let (m, own) = (routed.member(), routed.name());
        let body = if own == name {
            mcp.body().clone()
        } else {
            let field = if kind == Kind::Resource {
                "uri"
            } else {
                "name"
            };
            let body = match splice(mcp.body(), target.as_bytes(), &json_string_body(own)) {
                Some(b) => b,
                None => match rewrite_param(mcp.body(), field, own) {
                    Some(b) => b,
                    None => {
                        return rpc_error(
                            id,
                            ErrorKind::InvalidParams,
                            "the request's params could not be read".into(),
                            None,
                        )
                    }
                },
            };
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
            if parts.headers.contains_key(&header_names::MCP_NAME) {
                if let Ok(v) = HeaderValue::from_str(&encode_header_value(own)) {
                    parts.headers.insert(header_names::MCP_NAME, v);
                }
            }
            body
        };
        let rename = (kind == Kind::Resource && own != name)
            .then(|| Arc::new((own.to_owned(), name.to_owned())));
        if let Some(s) = &session {
            // Replayed if the backend's part is initialized again.
            let subs = &s.slots[m].subscriptions;
            match msg.method() {
                Some(Method::ResourcesSubscribe) => {
                    lock(subs).insert(own.to_owned());
                }
                Some(Method::ResourcesUnsubscribe) => {
                    lock(subs).remove(own);
                }
                _ => {}
            }
        }
        let guard = match (&session, id) {
            (Some(s), Some(id)) => Some(s.call_started(id, m)),
            _ => None,
        };
        let member = &self.members[m];
        let res = match &session {
            Some(s) => {
                let joined = match s.slots[m].current() {
                    Some(j) if !member.instances.is_lost(j.instance) => Ok(j),
                    cur => Box::pin(self.join(s, m, cur.map(|j| j.generation), true))
                        .await
                        .map(|(j, _, _)| j),
                };
                match joined {
                    Err(res) => res,
                    Ok(joined) => {
                        let req = in_part(parts, body.clone(), Some(&joined), joined.instance);
                        let Ok(res) = member.stack.call(req).await;
                        let forgot = res.status() == StatusCode::NOT_FOUND && joined.sid.is_some();
                        if forgot || res.extensions().get::<crate::upstream::NotSent>().is_some() {
                            // The backend forgot the session, or could not be
                            // reached: its part again, the call again (the
                            // headers of the client's initialize).
                            tracing::info!(backend = %member.name, session = %s.id, forgot, "the backend's part of the session is initialized again");
                            let out = Outgoing::of_session(s);
                            Box::pin(self.send_in(s, m, |j| {
                                let mut r = out.post_routed(
                                    body.clone(),
                                    Some(j),
                                    j.instance,
                                    mcp,
                                    &routed,
                                );
                                r.headers_mut()
                                    .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
                                r
                            }))
                            .await
                        } else {
                            res
                        }
                    }
                }
            }
            None => {
                // Stateless: another instance if this one cannot be reached.
                let again = (member.instances.len() > 1).then(|| Outgoing::of(&parts));
                match member.instances.pick() {
                    None => {
                        let e = GatewayError::new(
                            ErrorKind::NoHealthyInstance,
                            format!("backend {} has no healthy instance", member.name),
                        );
                        error_response(&e, id)
                    }
                    Some(i) => {
                        let req = in_part(parts, body.clone(), None, i);
                        let Ok(res) = member.stack.call(req).await;
                        match again {
                            Some(out)
                                if res.extensions().get::<crate::upstream::NotSent>().is_some() =>
                            {
                                Box::pin(self.send_fresh(m, false, |i| {
                                    out.post_routed(body.clone(), None, i, mcp, &routed)
                                }))
                                .await
                            }
                            _ => res,
                        }
                    }
                }
            }
        };
        self.relay(res, session, m, guard, rename, id).await
    }

    /// Sends a `POST` of `body` to backend `m`: in the session's part, or
    /// outside any session.
    pub(crate) async fn send(
        &self,
        session: Option<&Arc<AggSession>>,
        m: usize,
        out: &Outgoing,
        body: Bytes,
        parsed: Option<McpRequest>,
    ) -> Response<Body> {
        match session {
            Some(s) => {
                self.send_in(s, m, |j| {
                    out.post(body.clone(), Some(j), j.instance, parsed.clone())
                })
                .await
            }
            None => {
                self.send_fresh(m, false, |i| {
                    out.post(body.clone(), None, i, parsed.clone())
                })
                .await
            }
        }
    }

    /// A backend's answer on its way to the client.
    pub(crate) async fn relay(
        &self,
        res: Response<Body>,
        session: Option<Arc<AggSession>>,
        m: usize,
        guard: Option<CallGuard>,
        rename: Option<Arc<(String, String)>>,
        id: Option<&RequestId>,
    ) -> Response<Body> {
        let (mut parts, body) = res.into_parts();
        parts.headers.remove(&header_names::MCP_SESSION_ID);
        parts
            .extensions
            .insert(BackendName(self.members[m].name.clone()));
        if parts.status.is_server_error() && !is_sse(&parts.headers) {
            // One backend out of reach is not the whole server failing: its
            // JSON-RPC error goes to the client as an answer (clients give
            // up on a session whose endpoint answers 5xx).
            return match Box::pin(collect(Response::from_parts(parts.clone(), body), None)).await {
                Ok((mut v, _)) if v.get("error").is_some() => {
                    // The error may be another request's (a failed
                    // initialize of the backend's part): it answers this one.
                    if let Some(id) = id {
                        v["id"] = serde_json::from_slice(id.as_bytes()).unwrap_or(Value::Null);
                    }
                    parts.status = StatusCode::OK;
                    parts.headers.remove(header::CONTENT_LENGTH);
                    Response::from_parts(parts, Body::full(v.to_string()))
                }
                _ => rpc_error(
                    id,
                    ErrorKind::UpstreamUnavailable,
                    format!("Bad Gateway: backend {} failed", self.members[m].name),
                    None,
                ),
            };
        }
        if is_sse(&parts.headers) {
            let mut rw = Rewriter::new(self.me(), session, m);
            rw.prefix_ids = true;
            rw.rename = rename;
            parts.headers.remove(header::CONTENT_LENGTH);
            return Response::from_parts(parts, rewrite_body(rw, body, guard));
        }
        drop(guard);
        let Some(r) = rename else {
            return Response::from_parts(parts, body);
        };
        match Box::pin(collect(Response::from_parts(parts.clone(), body), None)).await {
            Ok((mut v, _)) => {
                if let Some(contents) = v
                    .pointer_mut("/result/contents")
                    .and_then(Value::as_array_mut)
                {
                    for c in contents {
                        if c.get("uri").and_then(Value::as_str) == Some(&r.0) {
                            c["uri"] = Value::String(r.1.clone());
                        }
                    }
                }
                let b = Bytes::from(v.to_string());
                parts.headers.remove(header::CONTENT_LENGTH);
                Response::from_parts(parts, Body::full(b))
            }
            Err(res) => res,
        }
    }

    async fn completion(
        &self,
        session: Option<Arc<AggSession>>,
        mut out: Outgoing,
        mcp: &McpRequest,
        msg: &Message,
    ) -> Response<Body> {
        let id = msg.id();
        let Ok(mut v) = serde_json::from_slice::<Value>(mcp.body()) else {
            return rpc_error(id, ErrorKind::Parse, "Parse error".into(), None);
        };
        let (kind, field) = match v.pointer("/params/ref/type").and_then(Value::as_str) {
            Some("ref/prompt") => (Kind::Prompt, "name"),
            Some("ref/resource") => (Kind::Template, "uri"),
            _ => {
                return rpc_error(
                    id,
                    ErrorKind::InvalidParams,
                    "completion/complete needs params.ref of type ref/prompt or ref/resource"
                        .into(),
                    None,
                )
            }
        };
        let Some(name) = v
            .pointer(&format!("/params/ref/{field}"))
            .and_then(Value::as_str)
            .map(str::to_owned)
        else {
            return rpc_error(
                id,
                ErrorKind::InvalidParams,
                format!("completion/complete needs params.ref.{field}"),
                None,
            );
        };
        let mut found = self.resolve_or_refresh(kind, &name).await;
        if kind == Kind::Template && found.is_err() {
            // A plain resource URI names its backend too.
            found = self.resolve_or_refresh(Kind::Resource, &name).await;
        }
        let (m, own) = match found {
            Ok(x) => x,
            Err(why) => return unresolved(self, id, kind, &name, why),
        };
        v["params"]["ref"][field] = Value::String(own.clone());
        if out.headers.contains_key(&header_names::MCP_NAME) {
            if let Ok(h) = HeaderValue::from_str(&encode_header_value(&own)) {
                out.headers.insert(header_names::MCP_NAME, h);
            }
        }
        let guard = match (&session, id) {
            (Some(s), Some(id)) => Some(s.call_started(id, m)),
            _ => None,
        };
        let body = Bytes::from(v.to_string());
        let res = self.send(session.as_ref(), m, &out, body, None).await;
        self.relay(res, session, m, guard, None, id).await
    }

    /// The client's answer to a backend's request: back to that backend,
    /// with the backend's id.
    async fn client_answer(
        &self,
        session: Option<Arc<AggSession>>,
        out: &Outgoing,
        mcp: &McpRequest,
        msg: &Message,
    ) -> Response<Body> {
        let (Some(s), Some(id)) = (session, msg.id()) else {
            return accepted();
        };
        let Some(p) = s.take_request(id.as_bytes()) else {
            tracing::debug!(session = %s.id, id = ?id, "an answer to no pending server-to-client request");
            return accepted();
        };
        let body = match splice(mcp.body(), id.as_bytes(), p.id.as_bytes()) {
            Some(b) => b,
            None => return accepted(),
        };
        let res = self.send(Some(&s), p.member, out, body, None).await;
        self.relay(res, Some(s), p.member, None, None, None).await
    }

    async fn notification(
        &self,
        session: Option<Arc<AggSession>>,
        out: &Outgoing,
        mcp: &McpRequest,
        msg: &Message,
    ) -> Response<Body> {
        let Some(s) = session else {
            // 2026-07-28 has no client notifications to route.
            return accepted();
        };
        let owner = match msg.method() {
            Some(Method::Cancelled) => {
                Some(param_text(mcp.body(), "/params/requestId").and_then(|id| s.call_owner(&id)))
            }
            Some(Method::Progress) => Some(
                param_text(mcp.body(), "/params/progressToken").and_then(|t| s.token_owner(&t)),
            ),
            _ => None,
        };
        match owner {
            Some(Some(m)) => {
                let res = self
                    .send(Some(&s), m, out, mcp.body().clone(), Some(mcp.clone()))
                    .await;
                let _ = http_body_util::BodyExt::collect(res.into_body()).await;
            }
            Some(None) => {
                tracing::debug!(session = %s.id, method = ?msg.method(), "a notification for no request in flight: dropped");
            }
            None => {
                let all = s.joined().into_iter().map(|(m, _)| {
                    let (s, body) = (s.clone(), mcp.body().clone());
                    async move {
                        let res = self.send(Some(&s), m, out, body, Some(mcp.clone())).await;
                        let _ = http_body_util::BodyExt::collect(res.into_body()).await;
                    }
                });
                futures_util::future::join_all(all).await;
            }
        }
        accepted()
    }

    async fn initialize(&self, parts: &http::request::Parts, mcp: &McpRequest) -> Response<Body> {
        let id = mcp.first_id();
        let out = Outgoing::of(parts);
        // Copies: the parse and the header values share the buffers the
        // request was read into, which a session must not keep alive.
        let setup = Setup {
            init: Bytes::copy_from_slice(mcp.body()),
            headers: owned_headers(&out.headers),
            principal: out.principal.clone(),
        };
        let s = Arc::new(AggSession::new(
            setup,
            self.members.len(),
            self.cfg.max_pending,
        ));
        let timeout = self.cfg.init_timeout;
        let joins = (0..self.members.len()).map(|m| {
            let s = s.clone();
            async move {
                match tokio::time::timeout(timeout, self.join(&s, m, None, false)).await {
                    Ok(Ok(x)) => Ok(x),
                    Ok(Err(res)) => Err(describe_failure(res).await),
                    Err(_) => Err(format!("no answer within {timeout:?}")),
                }
            }
        });
        let results = futures_util::future::join_all(joins).await;
        let mut answers = Vec::new();
        let mut failed = Vec::new();
        let mut extra = Vec::new();
        for (m, r) in results.into_iter().enumerate() {
            match r {
                Ok((_, answer, ev)) => {
                    answers.push((m, answer));
                    extra.extend(ev);
                }
                Err(why) => {
                    tracing::warn!(backend = %self.members[m].name, session = %s.id, reason = %why, "a backend could not be initialized: the session starts without it");
                    failed.push((m, why));
                }
            }
        }
        if answers.is_empty() || (self.cfg.require_all && !failed.is_empty()) {
            self.end(&s).await;
            let names: Vec<String> = failed
                .iter()
                .map(|(m, why)| format!("{} ({why})", self.members[*m].name))
                .collect();
            let e = GatewayError::new(
                ErrorKind::UpstreamUnavailable,
                format!(
                    "Bad Gateway: backends could not be initialized: {}",
                    names.join(", ")
                ),
            );
            return error_response(&e, id);
        }
        let result = self.merge_initialize(&answers, &failed);
        if let Some(v) = result.get("protocolVersion").and_then(Value::as_str) {
            *lock(&s.version) = HeaderValue::from_str(v).ok();
        }
        self.sessions.insert(s.clone());
        let mut res = ok_result(id, result, extra, false);
        if let Ok(v) = HeaderValue::from_str(&s.id) {
            res.headers_mut().insert(header_names::MCP_SESSION_ID, v);
        }
        if !failed.is_empty() {
            // In the session's audit record: who was left out, and why.
            let detail: Vec<String> = failed
                .iter()
                .map(|(m, why)| format!("backend {} left out: {why}", self.members[*m].name))
                .collect();
            res.extensions_mut()
                .insert(crate::upstream::UpstreamFailure(detail.join("; ").into()));
        }
        res
    }

    /// Ends every backend's part of `s`.
    async fn end(&self, s: &Arc<AggSession>) {
        let all = s.joined().into_iter().map(|(m, j)| {
            let out = Outgoing {
                uri: http::Uri::from_static("/"),
                headers: s.setup.headers.clone(),
                principal: s.setup.principal.clone(),
                version: mcp_gateway_core::ProtocolVersion::DEFAULT_WITHOUT_HEADER,
                from_header: false,
            };
            let stack = self.members[m].stack.clone();
            async move {
                let req = out.request(HttpMethod::DELETE, Body::empty(), Some(&j), j.instance);
                let _ = stack.call(req).await;
            }
        });
        futures_util::future::join_all(all).await;
    }

    async fn delete(&self, req: Request<Body>) -> Response<Body> {
        let Some(id) = req
            .headers()
            .get(&header_names::MCP_SESSION_ID)
            .and_then(|v| v.to_str().ok())
        else {
            let e = GatewayError::new(
                ErrorKind::MissingSession,
                "Bad Request: Mcp-Session-Id header is required",
            );
            return error_response(&e, None);
        };
        let Some(s) = self.sessions.remove(id) else {
            let e = GatewayError::new(ErrorKind::SessionNotFound, "Session not found");
            return error_response(&e, None);
        };
        self.end(&s).await;
        let mut res = Response::new(Body::empty());
        *res.status_mut() = StatusCode::NO_CONTENT;
        res
    }

    /// The session's `GET` stream: every backend's merged; with a
    /// `Last-Event-ID` of ours (`{backend}.{id}`), that backend's stream
    /// resumed.
    async fn get(&self, req: Request<Body>) -> Response<Body> {
        let (parts, _) = req.into_parts();
        let s = match self.session_of(&parts.headers) {
            Ok(Some(s)) => s,
            Ok(None) => {
                let e = GatewayError::new(
                    ErrorKind::MethodNotAllowed,
                    "Method Not Allowed: GET needs a session",
                );
                return error_response(&e, None);
            }
            Err(Unknown) => return session_not_found(),
        };
        let out = Outgoing::of(&parts);
        let last = parts
            .headers
            .get(&header_names::LAST_EVENT_ID)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once('.'))
            .and_then(|(m, rest)| Some((m.parse::<usize>().ok()?, rest.to_owned())))
            .filter(|(m, _)| *m < self.members.len());
        if let Some((m, rest)) = last {
            let res = self
                .send_in(&s, m, |j| {
                    let mut r = out.request(HttpMethod::GET, Body::empty(), Some(j), j.instance);
                    if let Ok(v) = HeaderValue::from_str(&rest) {
                        r.headers_mut().insert(header_names::LAST_EVENT_ID, v);
                    }
                    r
                })
                .await;
            return self.relay(res, Some(s), m, None, None, None).await;
        }
        let joined = s.joined();
        let opens = joined.iter().map(|(m, _)| {
            let (s, out) = (s.clone(), &out);
            async move {
                let res = self
                    .send_in(&s, *m, |j| {
                        out.request(HttpMethod::GET, Body::empty(), Some(j), j.instance)
                    })
                    .await;
                (*m, res)
            }
        });
        let mut streams = Vec::new();
        let mut first_failure = None;
        let mut head = None;
        for (m, res) in futures_util::future::join_all(opens).await {
            if res.status().is_success() && is_sse(res.headers()) {
                let (p, body) = res.into_parts();
                head.get_or_insert(p);
                let mut rw = Rewriter::new(self.me(), Some(s.clone()), m);
                rw.prefix_ids = true;
                streams.push((rw, body));
            } else if first_failure.is_none() {
                first_failure = Some(res);
            }
        }
        let Some(mut head) = head else {
            return first_failure.unwrap_or_else(|| {
                let e = GatewayError::new(ErrorKind::MethodNotAllowed, "Method Not Allowed");
                error_response(&e, None)
            });
        };
        head.headers.remove(&header_names::MCP_SESSION_ID);
        head.headers.remove(header::CONTENT_LENGTH);
        Response::from_parts(head, merge(streams, None))
    }
}

/// `headers` with values of their own (not slices of a read buffer).
fn owned_headers(headers: &http::HeaderMap) -> http::HeaderMap {
    let mut out = http::HeaderMap::with_capacity(headers.len());
    for (k, v) in headers {
        if let Ok(v) = HeaderValue::from_bytes(v.as_bytes()) {
            out.append(k.clone(), v);
        }
    }
    out
}

/// A session id the aggregate does not know.
struct Unknown;

fn missing_session(id: Option<&RequestId>) -> Response<Body> {
    let e = GatewayError::new(
        ErrorKind::MissingSession,
        "Bad Request: Mcp-Session-Id header is required",
    );
    error_response(&e, id)
}

/// The client's request, reused for backend `m`'s part of the session (or
/// outside any): its session id and protocol version, its instance.
fn in_part(
    mut parts: http::request::Parts,
    body: Bytes,
    joined: Option<&super::session::Joined>,
    instance: usize,
) -> Request<Body> {
    if let Some(j) = joined {
        match &j.sid {
            Some(sid) => parts
                .headers
                .insert(header_names::MCP_SESSION_ID, sid.clone()),
            None => parts.headers.remove(&header_names::MCP_SESSION_ID),
        };
        if let Some(v) = &j.version {
            // Usually the client's own: left as it is.
            if parts.headers.get(&header_names::MCP_PROTOCOL_VERSION) != Some(v) {
                parts
                    .headers
                    .insert(header_names::MCP_PROTOCOL_VERSION, v.clone());
            }
        }
    }
    parts.extensions.insert(crate::upstream::Instance(instance));
    Request::from_parts(parts, Body::full(body))
}

fn session_not_found() -> Response<Body> {
    let e = GatewayError::new(ErrorKind::SessionNotFound, "Session not found");
    error_response(&e, None)
}

/// Whether the aggregate merges or routes `msg` in the stateless revision
/// (the rest goes to the first backend as it is).
fn routes_stateless(msg: &Message) -> bool {
    match msg.kind() {
        MessageKind::Request => matches!(
            msg.method(),
            Some(
                Method::ToolsList
                    | Method::PromptsList
                    | Method::ResourcesList
                    | Method::ResourcesTemplatesList
                    | Method::ToolsCall
                    | Method::PromptsGet
                    | Method::ResourcesRead
                    | Method::CompletionComplete
                    | Method::ServerDiscover
                    | Method::SubscriptionsListen
            )
        ),
        // Notifications and answers: accepted and dropped below.
        _ => true,
    }
}

/// The text of a failure, for the log and the error a client gets.
async fn describe_failure(res: Response<Body>) -> String {
    let status = res.status();
    let body =
        http_body_util::BodyExt::collect(http_body_util::Limited::new(res.into_body(), 4096))
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
    let msg = serde_json::from_slice::<Value>(&body).ok().and_then(|v| {
        v.pointer("/error/message")
            .and_then(Value::as_str)
            .map(str::to_owned)
    });
    match msg {
        Some(m) => format!("{status}: {m}"),
        None => format!("{status}"),
    }
}

/// The JSON text of the value at `pointer` in `body`.
fn param_text(body: &Bytes, pointer: &str) -> Option<Vec<u8>> {
    let v: Value = serde_json::from_slice(body).ok()?;
    Some(v.pointer(pointer)?.to_string().into_bytes())
}

/// `body` with `params.{field}` set to `value`.
fn rewrite_param(body: &Bytes, field: &str, value: &str) -> Option<Bytes> {
    let mut v: Value = serde_json::from_slice(body).ok()?;
    *v.pointer_mut(&format!("/params/{field}"))? = Value::String(value.to_owned());
    Some(Bytes::from(v.to_string()))
}
