//! axum glue for **mcp-gateway**: [`McpGateway::builder`] returns an
//! [`axum::Router`] serving the MCP endpoint (`POST`, `GET`, `DELETE`) with
//! the whole layer stack, ready to `merge` into an existing application
//! beside its own routes; [`Mcp`] extracts the parsed request in handlers
//! that sit behind the JSON-RPC layer.
//!
//! ```no_run
//! use mcp_gateway_axum::McpGateway;
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let mcp = McpGateway::builder()
//!     .path("/mcp")
//!     .upstream_url("http://127.0.0.1:9000/mcp")?
//!     .build()?;
//! let app = axum::Router::new()
//!     .route("/health", axum::routing::get(|| async { "ok" }))
//!     .merge(mcp);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app).await?;
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

mod backend;
pub use backend::Backend;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::response::{IntoResponse, Response};
use axum::Router;
use http::request::Parts;
use mcp_gateway_core::session::{InMemoryConfig, InMemorySessionStore, SessionStore};
pub use mcp_gateway_core::McpRequest;
use mcp_gateway_core::Principal;
use mcp_gateway_core::{ErrorKind, GatewayError};
use mcp_gateway_tower::acl::{Access, AclLayer, Decision, ToolPolicy};
use mcp_gateway_tower::aggregate::Member;
pub use mcp_gateway_tower::aggregate::{Aggregate, AggregateConfig, PrefixMode};
use mcp_gateway_tower::audit::{AccessLog, AuditConfig, AuditLayer, AuditSink, FanOut};
use mcp_gateway_tower::auth::{AuthConfig, AuthLayer, Authenticator, ProtectedResourceMetadata};
use mcp_gateway_tower::credentials::CredentialProvider;
use mcp_gateway_tower::forwarded::{forward, TrustedProxies};
use mcp_gateway_tower::jsonrpc::JsonRpcConfig;
use mcp_gateway_tower::legacy::{LegacySseConfig, LegacySseLayer};
use mcp_gateway_tower::limit::{ClientAddr, InMemoryLimiter, LimitConfig, LimitLayer, Limiter};
use mcp_gateway_tower::origin::OriginPolicy;
use mcp_gateway_tower::pinning::ToolPins;
use mcp_gateway_tower::session::{BackendSelector, Failover, SessionLayer};
use mcp_gateway_tower::sse::SseRelayConfig;
use mcp_gateway_tower::upstream::health::HealthConfig;
use mcp_gateway_tower::upstream::{
    HttpUpstreamConfig, Instances, ServiceUpstream, UpstreamInstance, Upstreams,
};
use mcp_gateway_tower::{error_response, Body, BoxError, ServiceBuilderExt};
use tower::ServiceBuilder;

/// Entry point: `McpGateway::builder()`.
#[derive(Debug, Clone, Copy)]
pub struct McpGateway;

impl McpGateway {
    /// A builder with the defaults: path `/mcp`, loopback origin policy,
    /// 4 MiB bodies, in-memory sessions, round robin over instances.
    pub fn builder() -> McpGatewayBuilder {
        McpGatewayBuilder::default()
    }
}

/// Collects the backend instances and the policies; [`build`](Self::build)
/// returns the router.
pub struct McpGatewayBuilder {
    path: String,
    instances: Vec<PendingUpstream>,
    backend: Arc<str>,
    auth: Option<(Arc<dyn Authenticator>, AuthConfig)>,
    metadata: Option<ProtectedResourceMetadata>,
    policy: Option<Arc<dyn ToolPolicy>>,
    pins: Option<Arc<ToolPins>>,
    credentials: Option<Arc<dyn CredentialProvider>>,
    limits: Option<(LimitConfig, Arc<dyn Limiter>)>,
    audit: Option<(Arc<dyn AuditSink>, AuditConfig)>,
    access_log: bool,
    trusted: TrustedProxies,
    cors: Option<Cors>,
    http: HttpUpstreamConfig,
    origin: OriginPolicy,
    jsonrpc: JsonRpcConfig,
    sse: SseRelayConfig,
    sessions: InMemoryConfig,
    store: Option<Arc<dyn SessionStore>>,
    resume: Option<mcp_gateway_tower::resume::ResumeLayer>,
    selector: Option<Arc<dyn BackendSelector>>,
    health: HealthConfig,
    failover: Failover,
    sweep_interval: Duration,
    metadata_url: Option<String>,
    backends: Vec<Backend>,
    aggregate: AggregateConfig,
    legacy_sse: bool,
    #[cfg(feature = "otel")]
    telemetry: mcp_gateway_tower::telemetry::Telemetry,
}

impl Default for McpGatewayBuilder {
    fn default() -> Self {
        McpGatewayBuilder {
            path: "/mcp".into(),
            instances: Vec::new(),
            backend: "default".into(),
            auth: None,
            metadata: None,
            policy: None,
            pins: None,
            credentials: None,
            limits: Some((
                LimitConfig::default().client_caps(),
                Arc::new(InMemoryLimiter::new()),
            )),
            audit: None,
            access_log: false,
            trusted: TrustedProxies::default(),
            cors: None,
            legacy_sse: true,
            http: HttpUpstreamConfig::default(),
            origin: OriginPolicy::loopback(),
            jsonrpc: JsonRpcConfig::default(),
            sse: SseRelayConfig::default(),
            sessions: InMemoryConfig::default(),
            store: None,
            resume: None,
            selector: None,
            health: HealthConfig::default(),
            failover: Failover::default(),
            sweep_interval: Duration::from_secs(30),
            metadata_url: None,
            backends: Vec::new(),
            aggregate: AggregateConfig::default(),
            #[cfg(feature = "otel")]
            telemetry: Default::default(),
        }
    }
}

impl std::fmt::Debug for McpGatewayBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpGatewayBuilder")
            .field("path", &self.path)
            .field("instances", &self.instances.len())
            .finish()
    }
}

impl McpGatewayBuilder {
    /// The MCP endpoint path. Default: `/mcp`.
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self
    }

    /// Settings for HTTP upstreams added after this call.
    pub fn http_upstream_config(mut self, cfg: HttpUpstreamConfig) -> Self {
        self.http = cfg;
        self
    }

    /// Adds an instance reached over HTTP (`http://host:port/path`).
    pub fn upstream_url(mut self, url: &str) -> Result<Self, BoxError> {
        #[allow(unused_mut)]
        let mut cfg = self.http.clone();
        #[cfg(feature = "otel")]
        if let (None, Some(m)) = (&cfg.on_connect, &self.telemetry.metrics) {
            cfg.on_connect = Some(m.connect_observer(self.backend.clone()));
        }
        let up = mcp_gateway_tower::upstream::HttpUpstream::new(url, cfg)?;
        self.instances
            .push(Box::new(move |name, creds| named_instance(up, name, creds)));
        Ok(self)
    }

    /// Adds a named backend: with two or more (or any, instead of
    /// [`upstream_url`](Self::upstream_url)), the gateway serves them as one
    /// server through an [`Aggregate`] (see
    /// `mcp_gateway_tower::aggregate`): merged lists, names routed and
    /// prefixed by [`aggregate_config`](Self::aggregate_config). Policies,
    /// pins, credentials and limits see each backend by its name.
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backends.push(backend);
        self
    }

    /// How the backends added with [`backend`](Self::backend) are joined.
    /// Default: [`AggregateConfig::default`] (prefix every name with
    /// `{backend}__`).
    pub fn aggregate_config(mut self, cfg: AggregateConfig) -> Self {
        self.aggregate = cfg;
        self
    }

    /// The backend's name, as policies, pins and credential providers see
    /// it. Default: `default`.
    pub fn backend_name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.backend = name.into();
        self
    }

    /// Authenticates every request (see `mcp_gateway_tower::auth`).
    pub fn authenticator(mut self, a: Arc<dyn Authenticator>, cfg: AuthConfig) -> Self {
        self.auth = Some((a, cfg));
        self
    }

    /// Serves RFC 9728 protected-resource metadata for this endpoint at
    /// `/.well-known/oauth-protected-resource` and
    /// `/.well-known/oauth-protected-resource<path>`, and points
    /// `WWW-Authenticate` at it. `resource` is the endpoint's public URL.
    pub fn protected_resource(
        mut self,
        resource: &str,
        authorization_servers: &[String],
        scopes: &[String],
    ) -> Self {
        self.metadata = Some(ProtectedResourceMetadata::new(
            resource,
            authorization_servers,
            scopes,
        ));
        self.metadata_url = Some(metadata_url(resource));
        self
    }

    /// Authorizes tool, prompt and resource use with `policy` and filters
    /// lists (see `mcp_gateway_tower::acl`).
    pub fn policy(mut self, policy: Arc<dyn ToolPolicy>) -> Self {
        self.policy = Some(policy);
        self
    }

    /// Pins tool definitions (see `mcp_gateway_tower::pinning`).
    pub fn pins(mut self, pins: Arc<ToolPins>) -> Self {
        self.pins = Some(pins);
        self
    }

    /// Limits and quotas (see `mcp_gateway_tower::limit`), counted by the
    /// in-process limiter. The per-client caps are on unless `cfg` sets
    /// them to 0 ([`LimitConfig::client_caps`]); without this call, they
    /// are the only limits.
    pub fn limits(self, cfg: LimitConfig) -> Self {
        self.limits_with(cfg, Arc::new(InMemoryLimiter::new()))
    }

    /// Limits counted by a limiter of your own (e.g. a shared store).
    pub fn limits_with(mut self, cfg: LimitConfig, limiter: Arc<dyn Limiter>) -> Self {
        self.limits = Some((cfg.client_caps(), limiter));
        self
    }

    /// No limits at all, not even the default per-client caps (for a
    /// gateway whose callers are all trusted, or limited in front of it).
    pub fn without_limits(mut self) -> Self {
        self.limits = None;
        self
    }

    /// Records every message and session to `sink` (see
    /// `mcp_gateway_tower::audit`).
    pub fn audit(mut self, sink: Arc<dyn AuditSink>, cfg: AuditConfig) -> Self {
        self.audit = Some((sink, cfg));
        self
    }

    /// Writes one access line per MCP message and session at INFO
    /// ([`AccessLog`]), beside any audit sink. Default: off (the
    /// `mcp-gateway` binary turns it on).
    pub fn access_log(mut self, on: bool) -> Self {
        self.access_log = on;
        self
    }

    /// Peers whose `X-Forwarded-For` names the client (see
    /// `mcp_gateway_tower::forwarded`). Default: none, so every client's
    /// own forwarding headers are dropped.
    pub fn trusted_proxies(mut self, trusted: TrustedProxies) -> Self {
        self.trusted = trusted;
        self
    }

    /// Lets browser pages on `cors.allow_origins` call the endpoint
    /// (answers CORS preflight, exposes the MCP headers). The origins are
    /// also added to the origin guard's allowed origins. Default: off.
    pub fn cors(mut self, cors: Cors) -> Self {
        self.cors = Some(cors);
        self
    }

    /// Credentials for the backend, added to every upstream request.
    pub fn credentials(mut self, provider: Arc<dyn CredentialProvider>) -> Self {
        self.credentials = Some(provider);
        self
    }

    /// Adds an instance that is any tower service, e.g. rmcp's
    /// `StreamableHttpService` running in this process.
    pub fn upstream_service<S, B>(mut self, svc: S) -> Self
    where
        S: tower::Service<http::Request<Body>, Response = http::Response<B>>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        self.instances.push(service_instance(svc));
        self
    }

    /// The `Origin` / `Host` policy. Default: [`OriginPolicy::loopback`].
    pub fn origin_policy(mut self, policy: OriginPolicy) -> Self {
        self.origin = policy;
        self
    }

    /// JSON-RPC layer settings (body limit).
    pub fn jsonrpc_config(mut self, cfg: JsonRpcConfig) -> Self {
        self.jsonrpc = cfg;
        self
    }

    /// SSE relay settings (keep-alive, idle timeout).
    pub fn sse_config(mut self, cfg: SseRelayConfig) -> Self {
        self.sse = cfg;
        self
    }

    /// In-memory session store settings (ignored with [`Self::session_store`]).
    pub fn session_config(mut self, cfg: InMemoryConfig) -> Self {
        self.sessions = cfg;
        self
    }

    /// A custom session store (for example a shared one).
    pub fn session_store(mut self, store: Arc<dyn SessionStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Resumable streams: the gateway gives SSE events its own ids, keeps
    /// them in `events` and answers `Last-Event-ID` itself (on any replica,
    /// with a shared store). See `mcp_gateway_tower::resume`.
    pub fn resumption(
        mut self,
        events: Arc<dyn mcp_gateway_tower::resume::EventStore>,
        cfg: mcp_gateway_tower::resume::ResumeConfig,
    ) -> Self {
        self.resume = Some(mcp_gateway_tower::resume::ResumeLayer::new(events, cfg));
        self
    }

    /// A backend selector of your own, asked before the configured
    /// balance (its picks among unhealthy instances are not used).
    pub fn selector(mut self, selector: Arc<dyn BackendSelector>) -> Self {
        self.selector = Some(selector);
        self
    }

    /// Health checks, outlier ejection, balancing and drain time of the
    /// instances. Default [`HealthConfig::default`]: passive detection,
    /// no active probes, least outstanding requests.
    pub fn health(mut self, health: HealthConfig) -> Self {
        self.health = health;
        self
    }

    /// What a session does when its instance is lost. Default
    /// [`Failover::Reinitialize`].
    pub fn failover(mut self, failover: Failover) -> Self {
        self.failover = failover;
        self
    }

    /// Metrics and traces (feature `otel`; see `mcp_gateway_tower::telemetry`):
    /// the audit layer records each call's metrics and SERVER span (it is
    /// added, with no other sink, when no audit log is configured), the
    /// upstreams each call's client-side metrics and CLIENT span, the SSE
    /// relay the events it relays, and the HTTP client its connect times
    /// for upstreams added *after* this call. Collection-time gauges watch
    /// the instances, sessions and audit sink.
    #[cfg(feature = "otel")]
    pub fn telemetry(mut self, t: mcp_gateway_tower::telemetry::Telemetry) -> Self {
        self.telemetry = t;
        self
    }

    /// How often idle sessions are swept. Default: 30 s.
    pub fn sweep_interval(mut self, every: Duration) -> Self {
        self.sweep_interval = every;
        self
    }

    /// The assembled tower service (for hyper or tonic users), plus the
    /// handles an operator needs (instances, sessions, the aggregate).
    pub fn into_service(
        mut self,
    ) -> Result<
        (
            impl tower::Service<
                    http::Request<axum::body::Body>,
                    Response = http::Response<Body>,
                    Error = Infallible,
                    Future = impl Send,
                > + Clone
                + Send
                + Sync
                + 'static,
            GatewayHandles,
        ),
        BoxError,
    > {
        if self.instances.is_empty() && self.backends.is_empty() {
            return Err("McpGateway needs at least one upstream instance".into());
        }
        if !self.instances.is_empty() && !self.backends.is_empty() {
            return Err(
                "McpGateway: name every backend with `backend(..)`, or use `upstream_url` alone"
                    .into(),
            );
        }
        let creds = self.credentials;
        let mut aggregate = None;
        let name = if self.backends.is_empty() {
            self.backend.clone()
        } else {
            Arc::from("aggregate")
        };
        let upstreams = if self.backends.is_empty() {
            Upstreams::new(
                self.instances
                    .into_iter()
                    .map(|make| make(name.clone(), creds.clone()))
                    .collect(),
            )
            .named(name.clone())
            .with_health(self.health)
        } else {
            let mut cfg = self.aggregate.clone();
            cfg.private_lists |= self.policy.is_some();
            let mut members = Vec::new();
            for b in std::mem::take(&mut self.backends) {
                #[cfg(feature = "otel")]
                let metrics = self.telemetry.metrics.clone();
                let bname = b.name.clone();
                let up = Backend::build(b)?;
                #[cfg(feature = "otel")]
                let up = match metrics {
                    Some(m) => up.with_metrics(m),
                    None => up,
                };
                let mut member = Member::new(bname.clone(), up);
                let acl = match (&self.policy, &self.pins) {
                    (Some(p), pins) => {
                        Some(AclLayer::shared(p.clone(), bname.clone(), pins.clone()))
                    }
                    (None, Some(pins)) => Some(AclLayer::shared(
                        Arc::new(|_: &Access<'_>| Decision::Allow),
                        bname.clone(),
                        Some(pins.clone()),
                    )),
                    (None, None) => None,
                };
                if let Some(acl) = acl {
                    member = member.with_acl(acl);
                }
                members.push(member);
            }
            let agg = Aggregate::new(members, cfg)?;
            aggregate = Some(agg.clone());
            Upstreams::new(vec![UpstreamInstance::Service(Upstreams::boxed(agg))])
                .named(name.clone())
        };
        #[cfg(feature = "otel")]
        let upstreams = match &self.telemetry.metrics {
            Some(m) => upstreams.with_metrics(m.clone()),
            None => upstreams,
        };
        #[cfg(feature = "otel")]
        let telemetry = self.telemetry.clone();
        #[cfg(feature = "otel")]
        let audit = match (self.audit, telemetry.is_on()) {
            (None, true) if !self.access_log => Some((
                Arc::new(FanOut(Vec::new())) as Arc<dyn AuditSink>,
                AuditConfig::default(),
            )),
            (a, _) => a,
        };
        #[cfg(not(feature = "otel"))]
        let audit = self.audit;
        let audit = match (audit, self.access_log) {
            (Some((sink, cfg)), true) => Some(AuditLayer::new(
                Arc::new(FanOut(vec![Arc::new(AccessLog), sink])),
                cfg,
            )),
            (Some((sink, cfg)), false) => Some(AuditLayer::new(sink, cfg)),
            (None, true) => Some(AuditLayer::new(Arc::new(AccessLog), AuditConfig::default())),
            (None, false) => None,
        }
        .map(|a| a.backend_name(name.clone()));
        #[cfg(feature = "otel")]
        let audit = audit.map(|a| a.telemetry(&telemetry));
        #[cfg(feature = "otel")]
        let sse_hook = match &telemetry.metrics {
            Some(m) => m.sse_counter(name.clone()),
            None => Default::default(),
        };
        let mut origin = self.origin;
        if let Some(c) = &self.cors {
            origin = origin.allow_origins(&c.allow_origins);
        }
        let trusted = self.trusted;
        let auth = self.auth.map(|(a, mut cfg)| {
            if cfg.resource_metadata.is_none() {
                cfg.resource_metadata = self.metadata_url.clone();
            }
            AuthLayer::shared(a, cfg)
        });
        let acl = match (self.policy, self.pins) {
            (Some(p), pins) => Some(AclLayer::shared(p, self.backend.clone(), pins)),
            // Pinning without a policy: everything allowed, definitions pinned.
            (None, Some(pins)) => Some(AclLayer::shared(
                Arc::new(|_: &Access<'_>| Decision::Allow),
                self.backend.clone(),
                Some(pins),
            )),
            (None, None) => None,
        };
        // In front of an aggregate, the layer only guards the calls it
        // routed (before limits count them); each backend filters its own
        // lists.
        let acl = match aggregate {
            Some(_) => acl.map(AclLayer::guard_only),
            None => acl,
        };
        let store = self
            .store
            .unwrap_or_else(|| Arc::new(InMemorySessionStore::new(self.sessions)));
        // The limit and audit layers hand the session router their session
        // observers themselves (`SessionHooks`): nothing to register here.
        let mut sessions = SessionLayer::from_arcs(store, upstreams.instances())
            .failover(self.failover)
            .sweep_interval(self.sweep_interval);
        if let Some(s) = self.selector {
            sessions = sessions.selector(s);
        }
        if self.resume.is_some() {
            sessions = sessions.tell_session();
        }
        let limit = self
            .limits
            .map(|(cfg, limiter)| LimitLayer::new(cfg, self.backend.clone(), limiter));
        #[cfg(feature = "otel")]
        {
            if let Some(m) = &telemetry.metrics {
                m.watch_instances(sessions.instances().clone());
                m.watch_sessions(name.clone(), sessions.store().clone());
            }
        }
        #[cfg(feature = "otel")]
        let sse_layer = mcp_gateway_tower::sse::SseRelayLayer::new(self.sse).on_event(sse_hook);
        #[cfg(not(feature = "otel"))]
        let sse_layer = mcp_gateway_tower::sse::SseRelayLayer::new(self.sse);
        let svc = ServiceBuilder::new()
            .map_request(move |req| {
                let mut req = client_addr(req);
                forward(&mut req, &trusted);
                req
            })
            .mcp_origin(origin)
            .option_layer(audit)
            .option_layer(auth)
            .mcp_jsonrpc(self.jsonrpc)
            .option_layer(aggregate.as_ref().map(Aggregate::route_layer))
            .option_layer(acl)
            .option_layer(limit)
            .mcp_session(sessions.clone())
            .layer(sse_layer)
            .option_layer(self.resume)
            // An aggregate is called in place: its one instance in
            // `upstreams` only gives the session router something to pick.
            .service(match &aggregate {
                Some(agg) => tower::util::Either::Right(agg.clone()),
                None => tower::util::Either::Left(upstreams),
            });
        let handles = GatewayHandles {
            instances: sessions.instances().clone(),
            sessions: sessions.store().clone(),
            aggregate,
        };
        Ok((svc, handles))
    }

    /// Whether legacy HTTP+SSE clients (2024-11-05) are served:
    /// `GET {path}/sse` and `POST {path}/message`, through the same stack
    /// (see `mcp_gateway_tower::legacy`). Default true.
    pub fn legacy_sse(mut self, yes: bool) -> Self {
        self.legacy_sse = yes;
        self
    }

    /// The router: the MCP path with every method routed through the stack
    /// (the stack itself answers 405 for methods MCP does not use).
    pub fn build(self) -> Result<Router, BoxError> {
        self.build_with_handles().map(|(router, _)| router)
    }

    /// [`build`](Self::build), with the handles an operator needs at run
    /// time: the backend's instances (health, drain, additions) and the
    /// session store.
    pub fn build_with_handles(self) -> Result<(Router, GatewayHandles), BoxError> {
        let path = self.path.clone();
        let metadata = self.metadata.clone();
        let cors = self.cors.as_ref().map(Cors::layer).transpose()?;
        let legacy = self.legacy_sse;
        let (svc, handles) = self.into_service()?;
        let mut router = if legacy {
            let layer = LegacySseLayer::with_body(
                LegacySseConfig::new(path.clone()),
                axum::body::Body::new,
            );
            let extra = [layer.sse_path(), layer.message_path()];
            mount(&path, tower::Layer::layer(&layer, svc), cors, &extra)
        } else {
            mount(&path, svc, cors, &[])
        };
        if let Some(m) = metadata {
            router = router
                .route_service(WELL_KNOWN, m.clone())
                .route_service(&format!("{WELL_KNOWN}{path}"), m);
        }
        Ok((router, handles))
    }
}

/// The router serving `svc` at `path` (and `extra` paths), behind CORS
/// when set.
fn mount<S>(
    path: &str,
    svc: S,
    cors: Option<tower_http::cors::CorsLayer>,
    extra: &[String],
) -> Router
where
    S: tower::Service<
            http::Request<axum::body::Body>,
            Response = http::Response<Body>,
            Error = Infallible,
        > + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let mut router = Router::new();
    match cors {
        Some(cors) => {
            let svc = tower::Layer::layer(&cors, svc);
            for p in std::iter::once(path).chain(extra.iter().map(String::as_str)) {
                router = router.route_service(p, svc.clone());
            }
        }
        None => {
            for p in std::iter::once(path).chain(extra.iter().map(String::as_str)) {
                router = router.route_service(p, svc.clone());
            }
        }
    }
    router
}

/// What [`McpGatewayBuilder::build_with_handles`] returns beside the
/// router.
#[derive(Clone)]
#[non_exhaustive]
pub struct GatewayHandles {
    /// The backend's instances: health, drain, additions.
    pub instances: Instances,
    /// Where sessions live.
    pub sessions: Arc<dyn SessionStore>,
    /// The aggregate, when the gateway serves several named backends: call
    /// [`Aggregate::discover`] before serving to list their names (and
    /// refuse shared names with `prefix = "never"`).
    pub aggregate: Option<Aggregate>,
}

impl std::fmt::Debug for GatewayHandles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayHandles")
            .field("instances", &self.instances)
            .field("sessions", &self.sessions.len())
            .finish()
    }
}

/// An HTTP instance of backend `name` at `url`, with `cfg` and the
/// backend's credentials: what [`McpGatewayBuilder::upstream_url`] adds,
/// for instances added at run time ([`Instances::add`]).
pub fn http_instance(
    url: &str,
    cfg: HttpUpstreamConfig,
    name: Arc<str>,
    credentials: Option<Arc<dyn CredentialProvider>>,
) -> Result<UpstreamInstance, BoxError> {
    let up = mcp_gateway_tower::upstream::HttpUpstream::new(url, cfg)?;
    Ok(named_instance(up, name, credentials))
}

fn named_instance(
    up: mcp_gateway_tower::upstream::HttpUpstream,
    name: Arc<str>,
    credentials: Option<Arc<dyn CredentialProvider>>,
) -> UpstreamInstance {
    let up = up.named(name.clone());
    UpstreamInstance::from(match credentials {
        Some(p) => up.with_credentials(p, name),
        None => up,
    })
}

/// Cross-origin access for browser clients (the MCP Inspector, web apps):
/// which origins may call the endpoint. See [`McpGatewayBuilder::cors`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Cors {
    /// Origins (`https://app.example`, `http://localhost:6274`) allowed to
    /// call the endpoint from a browser.
    pub allow_origins: Vec<String>,
    /// How long a browser may cache a preflight answer. Default 10 min.
    pub max_age: Option<Duration>,
}

impl Cors {
    /// CORS for these origins.
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(origins: I) -> Self {
        Cors {
            allow_origins: origins.into_iter().map(Into::into).collect(),
            max_age: None,
        }
    }

    /// tower-http's `CorsLayer` for these rules: `POST`, `GET`, `DELETE`
    /// with the headers MCP clients send; `Mcp-Session-Id` and
    /// `MCP-Protocol-Version` readable by the page; no cookies (MCP
    /// authenticates with `Authorization`, which is allowed).
    fn layer(&self) -> Result<tower_http::cors::CorsLayer, BoxError> {
        use http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
        use http::HeaderName;
        let mut origins = Vec::with_capacity(self.allow_origins.len());
        for o in &self.allow_origins {
            let v = http::HeaderValue::from_str(o.trim_end_matches('/'))
                .map_err(|e| format!("cors origin {o:?}: {e}"))?;
            origins.push(v);
        }
        let mcp = |n: &'static str| HeaderName::from_static(n);
        Ok(tower_http::cors::CorsLayer::new()
            .allow_origin(origins)
            .allow_methods([http::Method::POST, http::Method::GET, http::Method::DELETE])
            .allow_headers([
                AUTHORIZATION,
                CONTENT_TYPE,
                http::header::ACCEPT,
                mcp("mcp-session-id"),
                mcp("mcp-protocol-version"),
                mcp("last-event-id"),
                mcp("mcp-method"),
                mcp("mcp-name"),
            ])
            .expose_headers([
                mcp("mcp-session-id"),
                mcp("mcp-protocol-version"),
                WWW_AUTHENTICATE,
                http::header::RETRY_AFTER,
            ])
            .max_age(self.max_age.unwrap_or(Duration::from_secs(600))))
    }
}

/// Copies axum's `ConnectInfo<SocketAddr>` (present when the app is served
/// with connect info) into the gateway's own `ClientAddr`, which the limit
/// layer keys anonymous callers by.
fn client_addr<B>(mut req: http::Request<B>) -> http::Request<B> {
    if let Some(ci) = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
    {
        let addr = ci.0;
        req.extensions_mut().insert(ClientAddr(addr));
    }
    req
}

/// An upstream instance waiting for the credentials chosen at build time.
/// It is given the backend's name and credential provider.
/// An instance that is any tower service, named and given its
/// credentials when the backend is built.
pub(crate) fn service_instance<S, B>(svc: S) -> PendingUpstream
where
    S: tower::Service<http::Request<Body>, Response = http::Response<B>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    Box::new(move |name, creds| {
        let up = ServiceUpstream::new(svc);
        UpstreamInstance::Service(match creds {
            Some(p) => Upstreams::boxed(up.with_credentials(p, name)),
            None => Upstreams::boxed(up),
        })
    })
}

type PendingUpstream =
    Box<dyn FnOnce(Arc<str>, Option<Arc<dyn CredentialProvider>>) -> UpstreamInstance + Send>;

/// Where RFC 9728 puts protected-resource metadata.
const WELL_KNOWN: &str = "/.well-known/oauth-protected-resource";

/// The metadata URL of `resource` (RFC 9728 §3.1: the well-known prefix
/// goes between the host and the resource's path).
fn metadata_url(resource: &str) -> String {
    match resource.parse::<http::Uri>() {
        Ok(u) if u.scheme().is_some() && u.authority().is_some() => {
            let path = u.path().trim_end_matches('/');
            format!(
                "{}://{}{WELL_KNOWN}{path}",
                u.scheme_str().unwrap_or("https"),
                u.authority().map_or("", |a| a.as_str())
            )
        }
        _ => resource.to_owned(),
    }
}

/// Extracts the caller's [`Principal`] (set by the authentication layer).
/// Answers 401 when there is none.
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .map(Caller)
            .ok_or_else(|| {
                let e = GatewayError::new(ErrorKind::Unauthorized, "no authenticated caller");
                error_response(&e, None).into_response()
            })
    }
}

/// Extracts the [`McpRequest`] that the JSON-RPC layer put in the request
/// extensions. Answers 500 with a JSON-RPC error when the layer is missing.
#[derive(Debug, Clone)]
pub struct Mcp(pub McpRequest);

impl<S: Send + Sync> FromRequestParts<S> for Mcp {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<McpRequest>()
            .cloned()
            .map(Mcp)
            .ok_or_else(|| {
                let e = GatewayError::new(
                    ErrorKind::Internal,
                    "no McpRequest: the handler is not behind JsonRpcLayer",
                );
                error_response(&e, None).into_response()
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    #[tokio::test]
    async fn extractor_reads_the_parsed_request() {
        let app = Router::new()
            .route(
                "/rpc",
                axum::routing::post(|Mcp(req): Mcp| async move {
                    req.method().unwrap().as_str().to_owned()
                }),
            )
            .layer(mcp_gateway_tower::jsonrpc::JsonRpcLayer::default());
        let req = http::Request::post("/rpc")
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(axum::body::Body::from(
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
            ))
            .unwrap();
        let res = app.oneshot(req).await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(
            res.into_body().collect().await.unwrap().to_bytes(),
            "tools/list"
        );
    }

    #[test]
    fn build_needs_an_upstream() {
        assert!(McpGateway::builder().build().is_err());
    }
}
