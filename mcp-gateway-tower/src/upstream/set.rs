//! [`Upstreams`]: the instances of one backend, their health, and which
//! one serves a request; [`Instances`], the handle that selectors, the
//! session router, reloads and the admin endpoint use.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{Request, Response};
use mcp_gateway_core::{ErrorKind, GatewayError, McpRequest};
use tower::util::BoxCloneSyncService;
use tower::ServiceExt;
use tower_service::Service;

use super::health::{
    lost_call, spawn_probe, Balance, HealthConfig, InstanceState, LossWatch, Outstanding, Watched,
};
use super::{BoxUpstream, HttpUpstream, HttpUpstreamConfig};
use crate::body::{Body, BoxError, BoxFuture};
use crate::error::error_response;

/// Which instance of the backend serves a request; set by the session
/// router in the request extensions. Absent means instance 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Instance(pub usize);

/// The instances of one backend. Dispatches each request to the instance
/// named by its [`Instance`] extension (0 when absent), counts it in
/// flight there, reports how it went to the instance's health (passive
/// outlier detection), and ends it with a JSON-RPC error if the instance
/// is lost meanwhile. See [`health`](super::health).
///
/// Instances are only ever added: an instance taken out of the
/// configuration is drained, then marked removed, and its index is never
/// reused, so a session's [`Instance`] always means the same server.
#[derive(Clone)]
pub struct Upstreams {
    pool: Arc<Pool>,
}

struct Pool {
    backend: Arc<str>,
    slots: ArcSwap<Vec<Arc<Slot>>>,
    health: HealthConfig,
    next: AtomicUsize,
    probing: AtomicBool,
    /// Serialises changes to `slots`.
    edit: Mutex<()>,
    /// Client-side metrics (gateway to backend).
    #[cfg(feature = "otel")]
    metrics: Option<Arc<crate::telemetry::Metrics>>,
}

struct Slot {
    key: Arc<str>,
    state: Arc<InstanceState>,
    upstream: UpstreamInstance,
}

/// One instance of a backend in an [`Upstreams`] set.
#[derive(Clone)]
#[non_exhaustive]
pub enum UpstreamInstance {
    /// Reached over HTTP: called in place, without a clone per call.
    Http(Box<HttpUpstream>),
    /// Any other service (cloned and driven ready per call).
    Service(BoxUpstream),
}

impl UpstreamInstance {
    /// Sends one request to this instance.
    pub fn send(&self, req: Request<Body>) -> BoxFuture {
        match self {
            UpstreamInstance::Http(up) => up.send(req),
            UpstreamInstance::Service(svc) => Box::pin(svc.clone().oneshot(req)),
        }
    }

    /// How the instance is shown: its URL, or `label` for a service.
    fn label(&self, fallback: String) -> Arc<str> {
        match self {
            UpstreamInstance::Http(up) => up.url().into(),
            UpstreamInstance::Service(_) => fallback.into(),
        }
    }
}

impl From<HttpUpstream> for UpstreamInstance {
    fn from(u: HttpUpstream) -> Self {
        UpstreamInstance::Http(Box::new(u))
    }
}

impl From<BoxUpstream> for UpstreamInstance {
    fn from(s: BoxUpstream) -> Self {
        UpstreamInstance::Service(s)
    }
}

impl std::fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstreams")
            .field("backend", &self.pool.backend)
            .field("instances", &self.pool.slots.load().len())
            .finish()
    }
}

impl Upstreams {
    /// A set of instances (at least one): [`HttpUpstream`]s, boxed
    /// services ([`Upstreams::boxed`]), or [`UpstreamInstance`]s; default
    /// health settings ([`HealthConfig::default`]: passive detection, no
    /// probes).
    pub fn new<I: Into<UpstreamInstance>>(instances: Vec<I>) -> Self {
        assert!(
            !instances.is_empty(),
            "a backend needs at least one instance"
        );
        let slots = instances
            .into_iter()
            .enumerate()
            .map(|(i, u)| {
                let upstream = u.into();
                let key = upstream.label(format!("instance-{i}"));
                Arc::new(Slot {
                    state: Arc::new(InstanceState::new(key.clone())),
                    key,
                    upstream,
                })
            })
            .collect();
        Upstreams {
            pool: Arc::new(Pool {
                backend: "default".into(),
                slots: ArcSwap::from_pointee(slots),
                health: HealthConfig::default(),
                next: AtomicUsize::new(0),
                probing: AtomicBool::new(false),
                edit: Mutex::new(()),
                #[cfg(feature = "otel")]
                metrics: None,
            }),
        }
    }

    /// One instance from any upstream service with `Error = Infallible`.
    pub fn boxed<S>(svc: S) -> BoxUpstream
    where
        S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        BoxCloneSyncService::new(svc)
    }

    /// HTTP instances from URLs, with one configuration.
    pub fn http<I, U>(urls: I, cfg: HttpUpstreamConfig) -> Result<Self, BoxError>
    where
        I: IntoIterator<Item = U>,
        U: AsRef<str>,
    {
        let v = urls
            .into_iter()
            .map(|u| HttpUpstream::new(u.as_ref(), cfg.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        if v.is_empty() {
            return Err("no upstream URL".into());
        }
        Ok(Upstreams::new(v))
    }

    /// The backend's name, in logs and error answers. Call before the set
    /// is cloned or used.
    pub fn named(mut self, name: impl Into<Arc<str>>) -> Self {
        self.edit_pool(|p| p.backend = name.into());
        self
    }

    /// Health checking and balancing ([`HealthConfig`]). Call before the
    /// set is cloned or used.
    pub fn with_health(mut self, health: HealthConfig) -> Self {
        self.edit_pool(|p| p.health = health);
        self
    }

    /// Records client-side metrics (each call's duration and time to
    /// first byte at the backend) on `metrics`. Call before the set is
    /// cloned or used.
    #[cfg(feature = "otel")]
    pub fn with_metrics(mut self, metrics: Arc<crate::telemetry::Metrics>) -> Self {
        self.edit_pool(|p| p.metrics = Some(metrics));
        self
    }

    fn edit_pool(&mut self, f: impl FnOnce(&mut Pool)) {
        match Arc::get_mut(&mut self.pool) {
            Some(p) => f(p),
            None => panic!("Upstreams settings must be set before the set is cloned"),
        }
    }

    /// The handle on the instances: health, drain, additions.
    pub fn instances(&self) -> Instances {
        Instances(self.pool.clone())
    }

    /// Number of instances (removed ones included: indexes are never
    /// reused).
    pub fn len(&self) -> usize {
        self.pool.slots.load().len()
    }

    /// Always false: a set has at least one instance.
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl Service<Request<Body>> for Upstreams {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let pool = &self.pool;
        if pool.health.active.is_some() && !pool.probing.load(Ordering::Relaxed) {
            Instances(pool.clone()).start_probes();
        }
        let i = req.extensions().get::<Instance>().map_or(0, |i| i.0);
        let slots = pool.slots.load();
        let Some(slot) = slots.get(i) else {
            // An out-of-range index is a bug in a custom selector.
            let e = GatewayError::new(
                ErrorKind::NoHealthyInstance,
                format!("backend {} has no instance {i}", pool.backend),
            );
            let id = req
                .extensions()
                .get::<McpRequest>()
                .and_then(|m| m.first_id());
            return Box::pin(std::future::ready(Ok(error_response(&e, id))));
        };
        let counted = Outstanding::start(&slot.state);
        let mut lost = LossWatch::new(slot.state.clone());
        let id = match req.method() {
            &http::Method::POST => req
                .extensions()
                .get::<McpRequest>()
                .and_then(|m| m.first_id().cloned()),
            _ => None,
        };
        #[cfg(feature = "otel")]
        let mut req = req;
        #[cfg(feature = "otel")]
        let observed = client_obs::ClientObs::start(pool, &slot.upstream, &mut req);
        let mut fut = slot.upstream.send(req);
        let backend = pool.backend.clone();
        let outlier = pool.health.outlier;
        Box::pin(async move {
            // The answer, unless the instance is lost first.
            let answer = std::future::poll_fn(|cx| {
                if let Poll::Ready(r) = fut.as_mut().poll(cx) {
                    return Poll::Ready(Some(r));
                }
                lost.poll_lost(cx).map(|()| None)
            })
            .await;
            let Some(res) = answer else {
                #[cfg(feature = "otel")]
                if let Some(o) = observed {
                    o.failed("instance_lost");
                }
                return Ok(lost_call(&backend, id.as_ref()));
            };
            #[cfg(feature = "otel")]
            let res = match observed {
                Some(o) => res.map(|r| o.head(r)),
                None => res,
            };
            let state = counted.state();
            let Ok(res) = res;
            if res.status().is_server_error() {
                if let Some(len) = state.passive_failure(&outlier) {
                    tracing::warn!(%backend, instance = %state.label(), ejected_for = ?len, "instance ejected: its calls keep failing");
                }
            } else {
                state.passive_success(&outlier);
            }
            let sse = res
                .headers()
                .get(http::header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
            if !sse {
                return Ok(res);
            }
            let (parts, body) = res.into_parts();
            let body = Watched::new(body, counted, outlier, lost, backend, id);
            Ok(Response::from_parts(parts, Body::boxed(body)))
        })
    }
}

/// A shared handle on a backend's instances (from
/// [`Upstreams::instances`]): what selectors read, and what the session
/// router, reloads and the admin endpoint change.
#[derive(Clone)]
pub struct Instances(Arc<Pool>);

impl std::fmt::Debug for Instances {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instances")
            .field("backend", &self.0.backend)
            .field("len", &self.len())
            .finish()
    }
}

/// One instance as [`Instances::list`] shows it.
#[derive(Debug, Clone)]
pub struct InstanceInfo {
    /// Its index (the [`Instance`] of its sessions).
    pub index: usize,
    /// What it was added as (its URL, for HTTP instances).
    pub key: Arc<str>,
    /// Its health, load and drain state.
    pub state: Arc<InstanceState>,
}

impl Instances {
    /// The backend's name.
    pub fn backend(&self) -> &Arc<str> {
        &self.0.backend
    }

    /// The health settings.
    pub fn health(&self) -> &HealthConfig {
        &self.0.health
    }

    /// Number of instances, removed ones included.
    pub fn len(&self) -> usize {
        self.0.slots.load().len()
    }

    /// Always false: a set has at least one instance.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The state of instance `i`.
    pub fn state(&self, i: usize) -> Option<Arc<InstanceState>> {
        self.0.slots.load().get(i).map(|s| s.state.clone())
    }

    /// Every instance, removed ones included.
    pub fn list(&self) -> Vec<InstanceInfo> {
        self.0
            .slots
            .load()
            .iter()
            .enumerate()
            .map(|(index, s)| InstanceInfo {
                index,
                key: s.key.clone(),
                state: s.state.clone(),
            })
            .collect()
    }

    /// Whether instance `i` can take new sessions and stateless calls.
    pub fn is_eligible(&self, i: usize) -> bool {
        self.0
            .slots
            .load()
            .get(i)
            .is_some_and(|s| s.state.is_eligible())
    }

    /// Whether the sessions of instance `i` must move before their next
    /// request (unhealthy, ejected, removed, or unknown).
    pub fn is_lost(&self, i: usize) -> bool {
        self.0.slots.load().get(i).is_none_or(|s| s.state.is_lost())
    }

    /// Whether any instance is eligible.
    pub fn any_eligible(&self) -> bool {
        self.0.slots.load().iter().any(|s| s.state.is_eligible())
    }

    /// An eligible instance, by the configured [`Balance`].
    pub fn pick(&self) -> Option<usize> {
        self.pick_except(&[])
    }

    /// Like [`pick`](Self::pick), leaving out the instances in `tried`.
    pub fn pick_except(&self, tried: &[usize]) -> Option<usize> {
        let slots = self.0.slots.load();
        let n = slots.len();
        let start = self.0.next.fetch_add(1, Ordering::Relaxed);
        let mut best: Option<(usize, usize)> = None;
        for k in 0..n {
            let i = (start + k) % n;
            let state = &slots[i].state;
            if tried.contains(&i) || !state.is_eligible() {
                continue;
            }
            match self.0.health.balance {
                Balance::RoundRobin => return Some(i),
                _ => {
                    let load = state.outstanding();
                    if best.is_none_or(|(_, b)| load < b) {
                        best = Some((i, load));
                    }
                }
            }
        }
        best.map(|(i, _)| i)
    }

    /// Drains instance `i`: no new sessions; its sessions move at the
    /// drain deadline. False if it is unknown or already draining.
    pub fn drain(&self, i: usize) -> bool {
        let ok = self.state(i).is_some_and(|s| !s.is_removed() && s.drain());
        if ok {
            tracing::info!(backend = %self.0.backend, instance = i, "instance draining");
        }
        ok
    }

    /// Ends the drain of instance `i`. False if it was not draining (or
    /// is being removed).
    pub fn undrain(&self, i: usize) -> bool {
        let ok = self
            .state(i)
            .is_some_and(|s| !s.is_retiring() && s.undrain());
        if ok {
            tracing::info!(backend = %self.0.backend, instance = i, "instance takes sessions again");
        }
        ok
    }

    /// Adds an instance under `key` (its URL); returns its index. It is
    /// probed at once when probes are on.
    pub fn add(&self, key: impl Into<Arc<str>>, upstream: impl Into<UpstreamInstance>) -> usize {
        let _edit = self.0.edit.lock().unwrap_or_else(|e| e.into_inner());
        let key = key.into();
        let slot = Arc::new(Slot {
            state: Arc::new(InstanceState::new(key.clone())),
            key,
            upstream: upstream.into(),
        });
        let mut slots = Vec::clone(&self.0.slots.load());
        slots.push(slot.clone());
        let i = slots.len() - 1;
        self.0.slots.store(Arc::new(slots));
        if self.0.probing.load(Ordering::Acquire) {
            self.probe(&slot);
        }
        tracing::info!(backend = %self.0.backend, instance = i, key = %slot.key, "instance added");
        i
    }

    /// Takes instance `i` out: it drains, and is removed once its
    /// sessions have moved at the drain deadline.
    pub fn retire(&self, i: usize) {
        if let Some(s) = self.state(i) {
            s.retire();
            tracing::info!(backend = %self.0.backend, instance = i, "instance retiring: draining before removal");
        }
    }

    /// The drained instances whose deadline has now passed, each returned
    /// once per drain; retiring ones are removed.
    pub(crate) fn drain_deadlines(&self) -> Vec<usize> {
        let timeout = self.0.health.drain_timeout;
        let mut out = Vec::new();
        for (i, s) in self.0.slots.load().iter().enumerate() {
            if s.state.claim_drain_deadline(timeout) {
                out.push(i);
            }
        }
        out
    }

    /// Marks a retiring instance removed (after its sessions moved).
    pub(crate) fn finish_retiring(&self, i: usize) {
        if let Some(s) = self.state(i).filter(|s| s.is_retiring()) {
            s.remove();
            tracing::info!(backend = %self.0.backend, instance = i, "instance removed");
        }
    }

    /// Starts the active probes (when configured), once; the first request
    /// starts them too. Needs a Tokio runtime.
    pub fn start_probes(&self) {
        if self.0.health.active.is_none()
            || tokio::runtime::Handle::try_current().is_err()
            || self.0.probing.swap(true, Ordering::AcqRel)
        {
            return;
        }
        for slot in self.0.slots.load().iter() {
            self.probe(slot);
        }
    }

    fn probe(&self, slot: &Arc<Slot>) {
        let Some(cfg) = self.0.health.active.clone() else {
            return;
        };
        let weak: Weak<Slot> = Arc::downgrade(slot);
        spawn_probe(
            slot.state.clone(),
            self.0.backend.clone(),
            cfg,
            move |req| weak.upgrade().map(|s| s.upstream.send(req)),
        );
    }

    /// How long a draining instance keeps its sessions.
    pub fn drain_timeout(&self) -> Duration {
        self.0.health.drain_timeout
    }
}

/// Client-side telemetry of one call sent to an instance: its metrics and
/// CLIENT span, ended when the response body ends.
#[cfg(feature = "otel")]
mod client_obs {
    use std::time::Instant;

    use bytes::Bytes;
    use http::{Request, Response};
    use mcp_gateway_core::McpRequest;

    use super::{Pool, UpstreamInstance};
    use crate::body::{Body, BodyEnd, BodyObserver, ObservedBody};
    use crate::telemetry::{client_span, end_client, target_key, ClientKey, Metrics};
    use std::sync::Arc;

    pub(super) struct ClientObs {
        started: Instant,
        metrics: Option<(Arc<Metrics>, ClientKey)>,
        span: Option<tracing::Span>,
        status: Option<u16>,
    }

    impl ClientObs {
        pub(super) fn start(
            pool: &Pool,
            up: &UpstreamInstance,
            req: &mut Request<Body>,
        ) -> Option<Self> {
            let traced = req
                .extensions()
                .get::<crate::telemetry::ServerSpan>()
                .is_some();
            if !traced && pool.metrics.is_none() {
                return None;
            }
            let span = if traced {
                let address = match up {
                    UpstreamInstance::Http(h) => Some(h.host_port()),
                    UpstreamInstance::Service(_) => None,
                };
                client_span(req, &pool.backend, address)
            } else {
                None
            };
            let metrics = pool.metrics.as_ref().map(|m| {
                let message = req
                    .extensions()
                    .get::<McpRequest>()
                    .and_then(|r| r.message());
                let method = message
                    .and_then(|m| m.method())
                    .map(|m| m.static_name().unwrap_or("_other"));
                let target = method
                    .and_then(target_key)
                    .zip(message.and_then(|m| m.target()));
                let method = method.or(match *req.method() {
                    http::Method::GET => Some("GET"),
                    http::Method::DELETE => Some("DELETE"),
                    _ => None,
                });
                (m.clone(), m.client_key(&pool.backend, method, target))
            });
            if span.is_none() && metrics.is_none() {
                return None;
            }
            Some(ClientObs {
                started: Instant::now(),
                metrics,
                span,
                status: None,
            })
        }

        /// The call failed before an answer.
        pub(super) fn failed(self, why: &str) {
            self.end(Some(why));
        }

        fn end(&self, error: Option<&str>) {
            if let Some((m, call)) = &self.metrics {
                m.client_call(call.clone(), self.started.elapsed(), error);
            }
            if let Some(s) = &self.span {
                end_client(s, self.status, error);
            }
        }

        /// The answer's head came: its body is watched to the end.
        pub(super) fn head(mut self, res: Response<Body>) -> Response<Body> {
            if let Some((m, call)) = &self.metrics {
                m.client_head(call, self.started.elapsed());
            }
            self.status = Some(res.status().as_u16());
            res.map(|b| Body::new(ObservedBody::new(b, self)))
        }
    }

    impl BodyObserver for ClientObs {
        fn on_data(&mut self, _: &Bytes) {}
        fn on_end(&mut self, end: BodyEnd<'_>) {
            let status = self.status.unwrap_or(0);
            let mut code = itoa::Buffer::new();
            let error = match end {
                BodyEnd::Failed(_) => Some("stream_broken"),
                BodyEnd::Dropped => Some("cancelled"),
                BodyEnd::Complete if status >= 400 => Some(code.format(status)),
                BodyEnd::Complete => None,
            };
            self.end(error);
            self.span = None;
        }
    }
}
