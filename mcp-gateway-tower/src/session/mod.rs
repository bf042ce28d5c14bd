//! The session router.
//!
//! - `initialize`: a [`BackendSelector`] picks a backend instance; the request
//!   goes there; the gateway reads the backend's `Mcp-Session-Id`, mints its
//!   own id, stores the mapping and returns *its* id to the client.
//! - Later requests (`POST`, `GET` streams, `DELETE`): the gateway id is
//!   mapped back to (instance, backend id) and the backend id is sent on.
//!   Missing id → 400; unknown, expired, ended or someone else's → 404.
//! - `DELETE` ends the backend session and the mapping; a backend that
//!   forgot a session (404) loses its mapping too, so nothing leaks.
//! - Idle sessions expire; a background sweep ends them at the backend.
//! - Stateless 2026-07-28 requests carry no session and are routed per call.
//! - New sessions and stateless calls go to eligible instances only
//!   ([`BackendSelector`], [`Instances`]); one that could not be connected
//!   to is retried on another. With none eligible: 503 and `Retry-After`.
//! - A session whose instance is lost, drained, unreachable or forgot it is
//!   moved to a healthy one ([`Failover`]): its recorded setup is replayed
//!   there and the request goes on; the client keeps its session id.
//!
//! The router must run after [`JsonRpcLayer`](crate::jsonrpc::JsonRpcLayer),
//! whose [`McpRequest`] it reads, and before the upstream service, which
//! reads the [`Instance`] it sets.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::HeaderValue;
use http::{Method as HttpMethod, Request, Response, StatusCode};
use http_body_util::BodyExt;
use mcp_gateway_core::protocol::header_names;
use mcp_gateway_core::session::{SessionId, SessionRecord, SessionSetup, SessionStore, StoreError};
use mcp_gateway_core::{
    Era, ErrorKind, GatewayError, McpRequest, Principal, ProtocolVersion, RequestId,
};
use tower::ServiceExt;
use tower_layer::Layer;
use tower_service::Service;

use crate::body::{take_ready, Body, BoxFuture};
use crate::error::error_response;
use crate::upstream::{own_request, Instance, Instances, NotSent};

mod failover;
mod select;

use self::failover::{copy, note_setup, reestablish, set_route, tell_session, Move, Resend};
pub use self::failover::{Failover, Moved};
use self::select::choose;
pub use self::select::BackendSelector;

/// Who a session belongs to. A session created with one owner is unknown
/// (404) to requests carrying another (or none).
///
/// The owner of a request is this, if its extensions hold one, else the
/// key of its [`Principal`] (which is how the `auth` layer states it, with
/// one extension fewer per request). A layer of your own that knows the
/// caller without a `Principal` puts this in the request extensions.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionOwner(pub Arc<str>);

/// The owner of `req`'s session: see [`SessionOwner`].
pub(crate) fn session_owner<B>(req: &Request<B>) -> Option<&str> {
    let ext = req.extensions();
    ext.get::<SessionOwner>()
        .map(|o| &*o.0)
        .or_else(|| ext.get::<Principal>().map(|p| &**p.key()))
}

/// Why a session ended (the `end_reason` of its audit record).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionEnd {
    /// The client sent `DELETE`.
    Deleted,
    /// It was idle past the store's timeout (found by the sweep).
    Expired,
    /// The backend answered 404 for it: the backend lost it.
    BackendLost,
    /// The session table was full: this idle session made room for a new
    /// one.
    Evicted,
}

impl SessionEnd {
    /// `"deleted"`, `"expired"`, `"backend_lost"` or `"evicted"`.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionEnd::Deleted => "deleted",
            SessionEnd::Expired => "expired",
            SessionEnd::BackendLost => "backend_lost",
            SessionEnd::Evicted => "evicted",
        }
    }
}

/// Told when a session starts and ends, whatever the reason: the hook that
/// per-session limits and the audit log use so that no slot and no session
/// record leaks.
pub trait SessionObserver: Send + Sync + 'static {
    /// A session started (its record is stored).
    fn started(&self, _record: &SessionRecord) {}
    /// A session ended; called once per session.
    fn ended(&self, record: &SessionRecord, why: SessionEnd);
    /// A session moved from instance `from` to the one `record` names.
    fn moved(&self, _record: &SessionRecord, _from: usize, _why: Moved) {}
    /// Session `id` ended on another replica sharing the store (where it
    /// was recorded and reported as [`ended`](Self::ended)): let go of what
    /// this process holds for it, without reporting it again.
    fn gone(&self, _id: &str) {}
}

/// Session observers that the layers outside the session router (limits,
/// audit) hand it with a request, in the request extensions: the router
/// adopts each one, once, before it starts a session. So stacking
/// [`LimitLayer`](crate::limit::LimitLayer) or
/// [`AuditLayer`](crate::audit::AuditLayer) outside a [`SessionLayer`]
/// needs no [`SessionLayer::observe`] call: no session slot or session
/// record can leak because one was forgotten.
#[derive(Clone, Default)]
pub struct SessionHooks(Vec<Arc<dyn SessionObserver>>);

impl SessionHooks {
    /// Adds `hook` to the hooks `req` carries.
    pub fn add<B>(req: &mut Request<B>, hook: &Arc<dyn SessionObserver>) {
        let ext = req.extensions_mut();
        match ext.get_mut::<SessionHooks>() {
            Some(h) => h.0.push(hook.clone()),
            None => {
                ext.insert(SessionHooks(vec![hook.clone()]));
            }
        }
    }
}

impl std::fmt::Debug for SessionHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SessionHooks").field(&self.0.len()).finish()
    }
}

/// Whether two observers are the same object.
fn same(a: &Arc<dyn SessionObserver>, b: &Arc<dyn SessionObserver>) -> bool {
    std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b))
}

struct Shared {
    store: Arc<dyn SessionStore>,
    instances: Instances,
    selector: Option<Arc<dyn BackendSelector>>,
    failover: Failover,
    /// One failover at a time per session.
    moving: std::sync::Mutex<std::collections::HashMap<Arc<str>, Arc<tokio::sync::Mutex<()>>>>,
    sweep_interval: Duration,
    sweeper_started: AtomicBool,
    observers: arc_swap::ArcSwap<Vec<Arc<dyn SessionObserver>>>,
    /// Put a [`GatewaySession`](crate::resume::GatewaySession) in routed
    /// requests (a resumption layer below needs it).
    tell_session: bool,
}

impl Shared {
    /// Adopts the hooks a request brought that are not observers yet.
    fn adopt(&self, hooks: &SessionHooks) {
        let known = self.observers.load();
        if hooks.0.iter().all(|h| known.iter().any(|o| same(o, h))) {
            return;
        }
        self.observers.rcu(|list| {
            let mut list = Vec::clone(list);
            for h in &hooks.0 {
                if !list.iter().any(|o| same(o, h)) {
                    list.push(h.clone());
                }
            }
            list
        });
    }

    fn started(&self, rec: &SessionRecord) {
        for o in self.observers.load().iter() {
            o.started(rec);
        }
    }

    /// Removes `sid` and tells the observers, if it was still there (two
    /// racing ends report once).
    async fn end(&self, sid: &str, why: SessionEnd) {
        if let Some(rec) = self.store.remove(sid).await {
            self.ended(&rec, why);
        }
    }

    fn ended(&self, rec: &SessionRecord, why: SessionEnd) {
        for o in self.observers.load().iter() {
            o.ended(rec, why);
        }
    }

    fn moved(&self, rec: &SessionRecord, from: usize, why: Moved) {
        for o in self.observers.load().iter() {
            o.moved(rec, from, why);
        }
    }

    fn move_lock(&self, sid: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.moving.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(sid.into()).or_default().clone()
    }

    fn release_move_lock(&self, sid: &str, lock: Arc<tokio::sync::Mutex<()>>) {
        let mut map = self.moving.lock().unwrap_or_else(|e| e.into_inner());
        drop(lock);
        // The last one out removes the entry.
        if map.get(sid).is_some_and(|l| Arc::strong_count(l) == 1) {
            map.remove(sid);
        }
    }

    /// 503 with `Retry-After`: no instance can take the request.
    fn no_instance(&self, id: Option<&RequestId>) -> Response<Body> {
        let e = GatewayError::new(
            ErrorKind::NoHealthyInstance,
            format!(
                "Service Unavailable: no healthy instance of backend {}",
                self.instances.backend()
            ),
        );
        let mut res = error_response(&e, id);
        let secs = self
            .instances
            .health()
            .active
            .as_ref()
            .map_or(5, |a| a.interval.as_secs().clamp(1, 30));
        res.headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
        res
    }
}

/// Builds [`Session`] routers. See the module docs.
#[derive(Clone)]
pub struct SessionLayer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SessionLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionLayer")
            .field("sessions", &self.shared.store.len())
            .finish()
    }
}

impl SessionLayer {
    /// A router over `store` for the backend whose instances are
    /// `instances` ([`Upstreams::instances`](crate::upstream::Upstreams::instances)).
    pub fn new(store: impl SessionStore, instances: Instances) -> Self {
        Self::from_arcs(Arc::new(store), instances)
    }

    /// Like [`SessionLayer::new`] with a shared store.
    pub fn from_arcs(store: Arc<dyn SessionStore>, instances: Instances) -> Self {
        let shared = Arc::new(Shared {
            store,
            instances,
            selector: None,
            failover: Failover::default(),
            moving: Default::default(),
            sweep_interval: Duration::from_secs(30),
            sweeper_started: AtomicBool::new(false),
            observers: Default::default(),
            tell_session: false,
        });
        SessionLayer { shared }
    }

    /// Adds an observer of session starts and ends. The limit and audit
    /// layers need not be added here: they hand theirs over with the
    /// requests ([`SessionHooks`]).
    pub fn observe(self, observer: Arc<dyn SessionObserver>) -> Self {
        self.shared.adopt(&SessionHooks(vec![observer]));
        self
    }

    /// How often idle sessions are swept (and ended at their backend).
    /// Default: 30 s. Must be called before the layer is used.
    pub fn sweep_interval(mut self, every: Duration) -> Self {
        if let Some(s) = Arc::get_mut(&mut self.shared) {
            s.sweep_interval = every;
        }
        self
    }

    /// Picks instances with `selector` before the configured balance.
    /// Must be called before the layer is used.
    pub fn selector(mut self, selector: Arc<dyn BackendSelector>) -> Self {
        if let Some(s) = Arc::get_mut(&mut self.shared) {
            s.selector = Some(selector);
        }
        self
    }

    /// What a session does when its instance is lost. Default
    /// [`Failover::Reinitialize`]. Must be called before the layer is used.
    pub fn failover(mut self, failover: Failover) -> Self {
        if let Some(s) = Arc::get_mut(&mut self.shared) {
            s.failover = failover;
        }
        self
    }

    /// Puts a [`GatewaySession`](crate::resume::GatewaySession) in every
    /// request routed in a session, for a
    /// [`ResumeLayer`](crate::resume::ResumeLayer) below (without it, that
    /// layer resumes nothing). Must be called before the layer is used.
    pub fn tell_session(mut self) -> Self {
        if let Some(s) = Arc::get_mut(&mut self.shared) {
            s.tell_session = true;
        }
        self
    }

    /// The instances sessions are routed to.
    pub fn instances(&self) -> &Instances {
        &self.shared.instances
    }

    /// The session store (for metrics and tests).
    pub fn store(&self) -> &Arc<dyn SessionStore> {
        &self.shared.store
    }
}

impl<S> Layer<S> for SessionLayer {
    type Service = Session<S>;
    fn layer(&self, inner: S) -> Session<S> {
        Session {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The session router service.
#[derive(Clone)]
pub struct Session<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Session<S> {
    inner_accessors!();
}

/// What the router needs of the service behind it.
pub trait RoutedService:
    Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future: Send>
    + Clone
    + Send
    + 'static
{
}

impl<T> RoutedService for T where
    T: Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future: Send>
        + Clone
        + Send
        + 'static
{
}

impl<S> Service<Request<Body>> for Session<S>
where
    S: RoutedService,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> BoxFuture {
        self.start_sweeper();
        let inner = take_ready(&mut self.inner);
        Box::pin(route(self.shared.clone(), inner, req))
    }
}

impl<S> Session<S>
where
    S: RoutedService,
{
    fn start_sweeper(&self) {
        if self.shared.sweeper_started.load(Ordering::Relaxed)
            || self.shared.sweeper_started.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.shared.sweeper_started.store(false, Ordering::Release);
            return;
        };
        // Sessions ended on another replica: the observers let go of what
        // they hold here.
        let weak: Weak<Shared> = Arc::downgrade(&self.shared);
        self.shared.store.on_remote_end(Arc::new(move |id: &str| {
            if let Some(shared) = weak.upgrade() {
                for o in shared.observers.load().iter() {
                    o.gone(id);
                }
            }
        }));
        let weak: Weak<Shared> = Arc::downgrade(&self.shared);
        let inner = self.inner.clone();
        let every = self.shared.sweep_interval;
        rt.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                // Stop once every router using this store is gone.
                let Some(shared) = weak.upgrade() else { break };
                sweep_once(&shared, inner.clone()).await;
            }
        });
        // Drain deadlines are checked every second.
        let weak: Weak<Shared> = Arc::downgrade(&self.shared);
        let inner = self.inner.clone();
        rt.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(shared) = weak.upgrade() else { break };
                failover::drain_deadlines(&shared, inner.clone()).await;
            }
        });
        self.shared.instances.start_probes();
    }
}

/// Ends what the store says has expired or was evicted: observers first
/// (audit, limits), then the backend sessions.
async fn sweep_once<S>(shared: &Shared, inner: S)
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone,
{
    let expired = shared.store.sweep().await;
    for rec in &expired {
        let why = if rec.evicted() {
            SessionEnd::Evicted
        } else {
            SessionEnd::Expired
        };
        shared.ended(rec, why);
    }
    for rec in expired {
        tracing::info!(session = ?rec.id(), evicted = rec.evicted(), "session ended by the gateway");
        end_upstream(inner.clone(), &rec).await;
    }
}

/// Ends a session at its backend (best effort: the mapping is already gone).
async fn end_upstream<S>(inner: S, rec: &SessionRecord)
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
{
    let Some(value) = rec.upstream_header().cloned() else {
        return;
    };
    let version = rec
        .protocol_version()
        .map(|v| HeaderValue::from_static(v.as_str()));
    let mut req = own_request(
        HttpMethod::DELETE,
        bytes::Bytes::new(),
        Some(&value),
        version.as_ref(),
    );
    req.extensions_mut().insert(Instance(rec.instance()));
    let Ok(res) = inner.oneshot(req).await;
    let _ = res.into_body().collect().await;
}

fn first_id(req: &Request<Body>) -> Option<RequestId> {
    req.extensions()
        .get::<McpRequest>()
        .and_then(|m| m.first_id().cloned())
}

/// `inner` has been driven ready by [`Session::poll_ready`] (and taken
/// with `take_ready`), so it is called without another readiness check.
async fn route<S>(
    shared: Arc<Shared>,
    inner: S,
    mut req: Request<Body>,
) -> Result<Response<Body>, Infallible>
where
    S: RoutedService,
{
    if req.method() == HttpMethod::POST {
        let Some(mcp) = req.extensions().get::<McpRequest>() else {
            let e = GatewayError::new(
                ErrorKind::Internal,
                "gateway misconfigured: JsonRpcLayer must run before SessionLayer",
            );
            return Ok(error_response(&e, None));
        };
        if mcp.is_initialize() {
            if let Some(hooks) = req.extensions().get::<SessionHooks>() {
                shared.adopt(hooks);
            }
            return initialize(shared, inner, req).await;
        }
        if mcp.era() == Era::Stateless {
            // A stateless request has no session; never forward a stray id.
            req.headers_mut().remove(&header_names::MCP_SESSION_ID);
            return Ok(match send_fresh(&shared, inner, req).await {
                Ok((res, _)) => res,
                Err(res) => res,
            });
        }
    }
    in_session(shared, inner, req).await
}

/// Sends a request that starts something new (`initialize`, a stateless
/// call) to an eligible instance; one that could not be connected to is
/// retried on another. Returns the answer and the instance.
async fn send_fresh<S>(
    shared: &Arc<Shared>,
    mut inner: S,
    mut req: Request<Body>,
) -> Result<(Response<Body>, usize), Response<Body>>
where
    S: RoutedService,
{
    let mcp = req.extensions().get::<McpRequest>().cloned();
    let mut tried = Vec::new();
    loop {
        let Some(i) = choose(
            shared.selector.as_ref(),
            &shared.instances,
            mcp.as_ref(),
            &tried,
        ) else {
            return Err(shared.no_instance(mcp.as_ref().and_then(|m| m.first_id())));
        };
        let again = (tried.len() + 1 < shared.instances.len())
            .then(|| copy(&req))
            .flatten();
        req.extensions_mut().insert(Instance(i));
        let Ok(res) = if tried.is_empty() {
            // Ready: see `route`.
            inner.call(req).await
        } else {
            inner.clone().oneshot(req).await
        };
        match again {
            Some(again) if res.extensions().get::<NotSent>().is_some() => {
                tracing::info!(backend = %shared.instances.backend(), instance = i, "instance unreachable: the request goes to another");
                tried.push(i);
                req = again;
            }
            _ => return Ok((res, i)),
        }
    }
}

/// Answers 404: the session is unknown, ended or someone else's.
fn not_found(id: Option<&RequestId>) -> Response<Body> {
    let e = GatewayError::new(ErrorKind::SessionNotFound, "Session not found");
    error_response(&e, id)
}

async fn initialize<S>(
    shared: Arc<Shared>,
    inner: S,
    mut req: Request<Body>,
) -> Result<Response<Body>, Infallible>
where
    S: RoutedService,
{
    let id = first_id(&req);
    let (version, setup) = {
        let mcp = req
            .extensions()
            .get::<McpRequest>()
            .expect("checked by route");
        let version = mcp
            .message()
            .and_then(|m| m.initialize_protocol_version())
            .and_then(ProtocolVersion::parse);
        (version, Arc::new(SessionSetup::new(mcp.body().clone())))
    };
    let owner = session_owner(&req).map(str::to_owned);
    // initialize starts a new session: an id sent along is not forwarded.
    req.headers_mut().remove(&header_names::MCP_SESSION_ID);
    let (mut res, instance) = match send_fresh(&shared, inner.clone(), req).await {
        Ok(answer) => answer,
        Err(res) => return Ok(res),
    };
    if !res.status().is_success() {
        return Ok(res);
    }
    let upstream_id = res.headers().get(&header_names::MCP_SESSION_ID).cloned();
    let gid = SessionId::random();
    let record = SessionRecord::new(gid.clone(), instance, upstream_id.clone())
        .with_protocol_version(version)
        .with_owner(owner)
        .with_setup(Some(setup));
    match shared.store.insert(record).await {
        Ok(rec) => {
            res.headers_mut()
                .insert(header_names::MCP_SESSION_ID, rec.id_header().clone());
            tracing::debug!(session = ?gid, instance, "session started");
            shared.started(&rec);
            if shared.store.has_evicted() {
                // Sessions made room for this one: end them now.
                let (shared, inner) = (shared.clone(), inner.clone());
                tokio::spawn(async move { sweep_once(&shared, inner).await });
            }
            Ok(res)
        }
        Err(e) => {
            // The backend session exists but cannot be tracked: end it.
            let orphan =
                SessionRecord::new(gid, instance, upstream_id).with_protocol_version(version);
            tokio::spawn(async move { end_upstream(inner, &orphan).await });
            Ok(store_failure(&e, "cannot start a session", id.as_ref()))
        }
    }
}

async fn in_session<S>(
    shared: Arc<Shared>,
    mut inner: S,
    mut req: Request<Body>,
) -> Result<Response<Body>, Infallible>
where
    S: RoutedService,
{
    // A header value clone shares the buffer: no allocation per request.
    let Some(sid) = req.headers().get(&header_names::MCP_SESSION_ID).cloned() else {
        let e = GatewayError::new(
            ErrorKind::MissingSession,
            "Bad Request: Mcp-Session-Id header is required",
        );
        return Ok(error_response(&e, first_id(&req).as_ref()));
    };
    let Ok(sid) = sid.to_str() else {
        return Ok(not_found(first_id(&req).as_ref()));
    };
    let mut rec = match shared.store.get_checked(sid).await {
        Ok(Some(rec)) => rec,
        Ok(None) => return Ok(not_found(first_id(&req).as_ref())),
        Err(e) => {
            return Ok(store_failure(
                &e,
                "Service Unavailable",
                first_id(&req).as_ref(),
            ))
        }
    };
    let owner = session_owner(&req);
    if rec.owner() != owner {
        // Indistinguishable from an unknown id: no hint that it exists.
        return Ok(not_found(first_id(&req).as_ref()));
    }
    let is_delete = req.method() == HttpMethod::DELETE;
    let lost = rec.detached() || shared.instances.is_lost(rec.instance());
    if is_delete && (lost || rec.upstream_header().is_none()) {
        // Nothing to end at the backend, or its instance is gone: the
        // session ends here, and its backend session if it can be reached.
        shared.end(sid, SessionEnd::Deleted).await;
        if lost && !rec.detached() {
            let old = rec.clone();
            tokio::spawn(async move { end_upstream(inner, &old).await });
        }
        return Ok(no_content());
    }
    let movable = shared.failover == Failover::Reinitialize && rec.setup().is_some();
    if let Some(mcp) = req.extensions().get::<McpRequest>() {
        if note_setup(&rec, mcp) {
            // A shared store keeps its own copy of the setup: store the
            // change (rare: a log level, a subscription).
            if let Some(stored) = shared.store.update(rec.copy()).await {
                rec = stored;
            }
        }
    }
    if lost {
        if !movable {
            shared.end(sid, SessionEnd::BackendLost).await;
            let old = rec.clone();
            tokio::spawn(async move { end_upstream(inner, &old).await });
            return Ok(not_found(first_id(&req).as_ref()));
        }
        let why = if rec.detached() {
            Moved::Drained
        } else {
            Moved::InstanceLost
        };
        let m = Move {
            why,
            end_old: true,
            principal: req.extensions().get::<Principal>().cloned(),
            id: first_id(&req),
        };
        match reestablish(&shared, inner.clone(), &rec, m).await {
            Ok(moved) => rec = moved,
            Err(res) => return Ok(res),
        }
    }
    let again = (movable && !is_delete).then(|| Resend::of(&req)).flatten();
    set_route(&mut req, &rec);
    if shared.tell_session {
        tell_session(&mut req, &rec);
    }
    // Ready: see `route`.
    let mut res = inner.call(req).await?;
    let status = res.status();
    let forgot = status == StatusCode::NOT_FOUND && rec.upstream_id().is_some();
    let unreachable = res.extensions().get::<NotSent>().is_some();
    if forgot || unreachable {
        if let Some(again) = again {
            let why = if forgot {
                Moved::BackendForgot
            } else {
                Moved::Unreachable
            };
            let m = Move {
                why,
                end_old: false,
                principal: again.principal().cloned(),
                id: again.id(),
            };
            match reestablish(&shared, inner.clone(), &rec, m).await {
                Ok(moved) => {
                    let mut again = again.request(&moved);
                    if shared.tell_session {
                        tell_session(&mut again, &moved);
                    }
                    rec = moved;
                    res = inner.clone().oneshot(again).await?;
                }
                Err(_) => {
                    // The first answer says best what happened: 502 for an
                    // unreachable instance, 404 for a forgotten session
                    // (which then ends here too: the client starts over).
                    if forgot {
                        shared.end(sid, SessionEnd::BackendLost).await;
                    }
                    return Ok(res);
                }
            }
        } else if forgot {
            // The backend no longer knows the session: forget it here as
            // well, so the client's next initialize starts clean.
            shared.end(sid, SessionEnd::BackendLost).await;
        }
    } else if is_delete && status.is_success() {
        shared.end(sid, SessionEnd::Deleted).await;
        tracing::debug!(session = ?rec.id(), "session ended by client");
        // The session is the gateway's: it answers the DELETE itself, with
        // the status SDK clients expect (some backends say 202).
        return Ok(no_content());
    }
    if res.headers().contains_key(&header_names::MCP_SESSION_ID) {
        // Never leak a backend's id to the client.
        res.headers_mut()
            .insert(header_names::MCP_SESSION_ID, rec.id_header().clone());
    }
    Ok(res)
}

/// The answer when the session store failed: a full table is 503 /
/// -32052; a shared store out of reach 503 / -32057 with `Retry-After`, its
/// cause logged, not answered (it names the network behind the gateway).
fn store_failure(e: &StoreError, what: &str, id: Option<&RequestId>) -> Response<Body> {
    let err = match e {
        StoreError::Full { .. } => {
            GatewayError::new(ErrorKind::SessionCapacity, format!("{what}: {e}"))
        }
        StoreError::Backend(cause) => {
            tracing::warn!(error = %cause, "session store unavailable");
            GatewayError::new(
                ErrorKind::StateUnavailable,
                format!("{what}: the session store cannot be reached"),
            )
        }
        _ => GatewayError::new(ErrorKind::Internal, format!("{what}: {e}")),
    };
    let mut res = error_response(&err, id);
    if err.kind() == ErrorKind::StateUnavailable {
        res.headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    res
}

fn no_content() -> Response<Body> {
    Response::builder()
        .status(StatusCode::NO_CONTENT)
        .body(Body::empty())
        .expect("a valid response")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_owner_is_the_one_stated_else_the_principals_key() {
        let ann = Principal::builder("ann").build();
        let mut req = Request::new(());
        assert_eq!(session_owner(&req), None);
        req.extensions_mut().insert(ann.clone());
        assert_eq!(session_owner(&req), Some(&**ann.key()));
        req.extensions_mut().insert(SessionOwner("team-a".into()));
        assert_eq!(session_owner(&req), Some("team-a"));
    }
}
