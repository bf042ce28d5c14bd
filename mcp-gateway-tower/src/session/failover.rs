//! Failover: a session whose instance is lost, drained or forgot it is set
//! up again on a healthy instance by replaying its recorded setup, and
//! the request goes on there; the client keeps its session id.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method as HttpMethod, Request, Response};
use http_body_util::BodyExt;
use mcp_gateway_core::protocol::header_names;
use mcp_gateway_core::session::{SessionRecord, SessionSetup};
use mcp_gateway_core::{
    ErrorKind, GatewayError, McpRequest, Method, Principal, ProtocolVersion, RequestId,
};
use tower::ServiceExt;

use super::select::choose;
use super::{end_upstream, not_found, RoutedService, Shared};
use crate::body::Body;
use crate::error::error_response;
use crate::upstream::health::expect_result;
use crate::upstream::{own_request, Instance, NotSent, INITIALIZED};

/// What a session does when its instance is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Failover {
    /// Set the session up again on a healthy instance, replaying the
    /// recorded setup; the client notices nothing.
    #[default]
    Reinitialize,
    /// End the session: the client gets 404 and starts a new one, as the
    /// specification allows.
    Error,
}

/// Why a session moved to another instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Moved {
    /// Its instance became unhealthy, was ejected or removed.
    InstanceLost,
    /// Its instance answered 404 for the backend session (it restarted).
    BackendForgot,
    /// Its instance could not be connected to.
    Unreachable,
    /// Its instance was drained and the drain deadline passed.
    Drained,
}

impl Moved {
    /// `"instance_lost"`, `"backend_forgot"`, `"unreachable"` or `"drained"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Moved::InstanceLost => "instance_lost",
            Moved::BackendForgot => "backend_forgot",
            Moved::Unreachable => "unreachable",
            Moved::Drained => "drained",
        }
    }
}

/// Records what a request changes of its session's setup; true when it
/// changed something.
pub(super) fn note_setup(rec: &SessionRecord, mcp: &McpRequest) -> bool {
    let Some(setup) = rec.setup() else {
        return false;
    };
    match mcp.method() {
        Some(Method::LoggingSetLevel) => setup.set_log_level(mcp.body().clone()),
        Some(Method::ResourcesSubscribe) => match uri_of(mcp.body()) {
            Some(uri) => setup.subscribe(&uri, mcp.body().clone()),
            None => return false,
        },
        Some(Method::ResourcesUnsubscribe) => match uri_of(mcp.body()) {
            Some(uri) => setup.unsubscribe(&uri),
            None => return false,
        },
        _ => return false,
    }
    true
}

/// `params.uri` of a request (the cold path of a subscription).
fn uri_of(body: &Bytes) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Req {
        params: Params,
    }
    #[derive(serde::Deserialize)]
    struct Params {
        uri: String,
    }
    serde_json::from_slice::<Req>(body)
        .ok()
        .map(|r| r.params.uri)
}

/// What it takes to send a request again after a failover: its method and
/// target, the parsed request (which holds the body), the caller, and a
/// `GET`'s `Last-Event-ID`. The headers MCP needs are written afresh
/// (`Content-Type`, `Accept`, and the `MCP-Protocol-Version` the new
/// backend session agreed to); other client headers are not replayed:
/// keeping them for every call would cost more than the rest of the
/// failover machinery on the hot path.
pub(super) struct Resend {
    method: HttpMethod,
    uri: http::Uri,
    last_event_id: Option<HeaderValue>,
    mcp: Option<McpRequest>,
    principal: Option<Principal>,
}

impl Resend {
    /// What it takes to send `req` again; `None` for a `POST` the JSON-RPC
    /// layer did not parse (its body cannot be sent twice).
    pub(super) fn of(req: &Request<Body>) -> Option<Resend> {
        let ext = req.extensions();
        let mcp = ext.get::<McpRequest>().cloned();
        let get = req.method() == HttpMethod::GET;
        if mcp.is_none() && !get {
            return None;
        }
        Some(Resend {
            method: req.method().clone(),
            uri: req.uri().clone(),
            last_event_id: get
                .then(|| req.headers().get("last-event-id").cloned())
                .flatten(),
            mcp,
            principal: ext.get::<Principal>().cloned(),
        })
    }

    /// The caller, for the failover's own requests.
    pub(super) fn principal(&self) -> Option<&Principal> {
        self.principal.as_ref()
    }

    /// The first JSON-RPC id of the request.
    pub(super) fn id(&self) -> Option<RequestId> {
        self.mcp.as_ref().and_then(|m| m.first_id().cloned())
    }

    /// The request again, for the session as `rec` now is.
    pub(super) fn request(self, rec: &SessionRecord) -> Request<Body> {
        let body = self
            .mcp
            .as_ref()
            .map(|m| m.body().clone())
            .unwrap_or_default();
        let version = rec
            .protocol_version()
            .map(|v| HeaderValue::from_static(v.as_str()));
        let get = self.method == HttpMethod::GET;
        let mut req = own_request(self.method, body, None, version.as_ref());
        if get {
            let h = req.headers_mut();
            h.insert(
                header::ACCEPT,
                HeaderValue::from_static("text/event-stream"),
            );
            if let Some(v) = self.last_event_id {
                h.insert(HeaderName::from_static("last-event-id"), v);
            }
        }
        *req.uri_mut() = self.uri;
        if let Some(m) = self.mcp {
            req.extensions_mut().insert(m);
        }
        if let Some(p) = self.principal {
            req.extensions_mut().insert(p);
        }
        set_route(&mut req, rec);
        req
    }
}

/// A whole copy of a request that starts something new (`initialize`, a
/// stateless call), to send to another instance when the first could not
/// be connected to: every header goes again (a stateless call's `Mcp-*`
/// headers must). Made only when there is another instance to try.
pub(super) fn copy(req: &Request<Body>) -> Option<Request<Body>> {
    let body = Body::full(req.body().as_bytes()?.clone());
    let mut out = Request::new(body);
    *out.method_mut() = req.method().clone();
    *out.uri_mut() = req.uri().clone();
    *out.headers_mut() = req.headers().clone();
    let ext = req.extensions();
    if let Some(m) = ext.get::<McpRequest>() {
        out.extensions_mut().insert(m.clone());
    }
    if let Some(p) = ext.get::<Principal>() {
        out.extensions_mut().insert(p.clone());
    }
    Some(out)
}

/// Points `req` at the session's instance and backend session.
pub(super) fn set_route(req: &mut Request<Body>, rec: &SessionRecord) {
    match rec.upstream_header() {
        Some(v) => {
            req.headers_mut()
                .insert(header_names::MCP_SESSION_ID, v.clone());
        }
        None => {
            req.headers_mut().remove(&header_names::MCP_SESSION_ID);
        }
    }
    req.extensions_mut().insert(Instance(rec.instance()));
}

/// Tells the layers below which gateway session `req` belongs to (the
/// header now names the backend's): what resumption keys its streams by.
pub(super) fn tell_session(req: &mut Request<Body>, rec: &SessionRecord) {
    req.extensions_mut()
        .insert(crate::resume::GatewaySession(rec.id().clone()));
}

/// A move to ask of [`reestablish`].
pub(super) struct Move {
    /// Why the session moves.
    pub(super) why: Moved,
    /// End the backend session it leaves (best effort).
    pub(super) end_old: bool,
    /// The caller, for the backend's credentials.
    pub(super) principal: Option<Principal>,
    /// The id of the request that found the loss, for an error answer.
    pub(super) id: Option<RequestId>,
}

/// Sets session `rec` up again on a healthy instance and stores where it
/// now lives. The error is the answer for the client.
pub(super) async fn reestablish<S: RoutedService>(
    shared: &Arc<Shared>,
    inner: S,
    rec: &Arc<SessionRecord>,
    m: Move,
) -> Result<Arc<SessionRecord>, Response<Body>> {
    let sid = rec.id().as_str();
    let lock = shared.move_lock(sid);
    let moved = {
        let _one_at_a_time = lock.lock().await;
        move_session(shared, inner, rec, &m).await
    };
    shared.release_move_lock(sid, lock);
    moved
}

async fn move_session<S: RoutedService>(
    shared: &Arc<Shared>,
    inner: S,
    rec: &Arc<SessionRecord>,
    m: &Move,
) -> Result<Arc<SessionRecord>, Response<Body>> {
    let (why, id) = (m.why, m.id.as_ref());
    let sid = rec.id().as_str();
    let Some(current) = shared.store.get(sid).await else {
        return Err(not_found(id));
    };
    let same_route = current.instance() == rec.instance()
        && current.upstream_header() == rec.upstream_header()
        && current.detached() == rec.detached();
    if !same_route && !current.detached() && !shared.instances.is_lost(current.instance()) {
        // Another request of the session moved it meanwhile.
        return Ok(current);
    }
    let Some(setup) = rec.setup().cloned() else {
        return Err(not_found(id));
    };
    let from = rec.instance();
    let mut tried = Vec::new();
    if why == Moved::Unreachable {
        tried.push(from);
    }
    let (to, upstream_id, agreed) = loop {
        let Some(i) = choose(None, &shared.instances, None, &tried) else {
            return Err(shared.no_instance(id));
        };
        match set_up(inner.clone(), i, &setup, rec, m.principal.as_ref()).await {
            Ok((up, agreed)) => break (i, up, agreed),
            Err(SetUp::NotSent) => tried.push(i),
            Err(SetUp::Failed(e)) => {
                tracing::warn!(session = ?rec.id(), instance = i, error = %e, "failover: the session could not be set up again");
                let err = GatewayError::new(
                    ErrorKind::UpstreamUnavailable,
                    format!(
                        "Bad Gateway: the session could not be moved to another instance of backend {}",
                        shared.instances.backend()
                    ),
                );
                return Err(error_response(&err, id));
            }
        }
    };
    // The record now describes the new backend session, in the version it
    // agreed to (what a request sent again carries).
    let moved = rec
        .moved(to, upstream_id.clone())
        .with_protocol_version(agreed);
    let Some(new) = shared.store.update(moved).await else {
        // The session ended meanwhile: end what was set up for it.
        let (inner, orphan) = (inner.clone(), rec.moved(to, upstream_id));
        tokio::spawn(async move { end_upstream(inner, &orphan).await });
        return Err(not_found(id));
    };
    if m.end_old && !rec.detached() {
        let (inner, old) = (inner.clone(), rec.clone());
        tokio::spawn(async move { end_upstream(inner, &old).await });
    }
    if let Some(s) = shared.instances.state(from) {
        s.failed_over();
    }
    tracing::info!(session = ?rec.id(), from, to, why = why.as_str(), "session moved to another instance");
    shared.moved(&new, from, why);
    Ok(new)
}

enum SetUp {
    /// The instance could not be connected to: try another.
    NotSent,
    Failed(String),
}

/// Replays `setup` on instance `i`: `initialize`, `notifications/initialized`,
/// then the recorded requests. Returns the backend's session id.
async fn set_up<S: RoutedService>(
    inner: S,
    i: usize,
    setup: &SessionSetup,
    rec: &SessionRecord,
    principal: Option<&Principal>,
) -> Result<(Option<HeaderValue>, Option<ProtocolVersion>), SetUp> {
    let request = |body: Bytes, session: Option<&HeaderValue>, version: Option<&HeaderValue>| {
        let mut req = own_request(HttpMethod::POST, body, session, version);
        req.extensions_mut().insert(Instance(i));
        if let Some(p) = principal {
            req.extensions_mut().insert(p.clone());
        }
        req
    };
    let Ok(res) = inner
        .clone()
        .oneshot(request(setup.initialize().clone(), None, None))
        .await;
    if res.extensions().get::<NotSent>().is_some() {
        return Err(SetUp::NotSent);
    }
    let upstream_id = res.headers().get(&header_names::MCP_SESSION_ID).cloned();
    let result = expect_result(res)
        .await
        .map_err(|e| SetUp::Failed(format!("initialize: {e}")))?;
    // The version the backend agreed to (the client's, when it did not say).
    let agreed = result["protocolVersion"]
        .as_str()
        .and_then(ProtocolVersion::parse)
        .or(rec.protocol_version());
    let version = agreed.map(|v| HeaderValue::from_static(v.as_str()));
    let initialized = Bytes::from_static(INITIALIZED);
    let Ok(res) = inner
        .clone()
        .oneshot(request(initialized, upstream_id.as_ref(), version.as_ref()))
        .await;
    if !res.status().is_success() {
        return Err(SetUp::Failed(format!(
            "notifications/initialized answered {}",
            res.status()
        )));
    }
    let _ = res.into_body().collect().await;
    for body in setup.replay() {
        let Ok(res) = inner
            .clone()
            .oneshot(request(body, upstream_id.as_ref(), version.as_ref()))
            .await;
        if let Err(e) = expect_result(res).await {
            // The session works without it; say so.
            tracing::warn!(session = ?rec.id(), instance = i, error = %e, "failover: a replayed request failed");
        }
    }
    Ok((upstream_id, agreed))
}

/// At a drained instance's deadline: ends its sessions' backend sessions
/// (`DELETE`) and marks them to be set up elsewhere on their next request;
/// a retiring instance is then removed.
pub(super) async fn drain_deadlines<S: RoutedService>(shared: &Arc<Shared>, inner: S) {
    for i in shared.instances.drain_deadlines() {
        let mut n = 0usize;
        for rec in shared.store.records().await {
            if rec.instance() != i || rec.detached() {
                continue;
            }
            if shared.store.update(rec.detach()).await.is_some() {
                end_upstream(inner.clone(), &rec).await;
                n += 1;
            }
        }
        tracing::info!(backend = %shared.instances.backend(), instance = i, sessions = n, "drain deadline: sessions leave the instance");
        shared.instances.finish_retiring(i);
    }
}
