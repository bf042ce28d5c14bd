//! [`Backend`]: one named backend of a gateway that serves several.

use std::sync::Arc;

use mcp_gateway_tower::credentials::CredentialProvider;
use mcp_gateway_tower::upstream::health::HealthConfig;
use mcp_gateway_tower::upstream::{HttpUpstreamConfig, UpstreamInstance, Upstreams};
use mcp_gateway_tower::{Body, BoxError};

use crate::PendingUpstream;

/// A named backend for [`McpGatewayBuilder::backend`](crate::McpGatewayBuilder::backend):
/// its instances, credentials and health checks. Its name is the namespace
/// of its tools and what policies, pins, limits and audit records call it.
///
/// ```no_run
/// use mcp_gateway_axum::{Backend, McpGateway};
/// # fn main() -> Result<(), mcp_gateway_tower::BoxError> {
/// let router = McpGateway::builder()
///     .backend(Backend::new("db").upstream_url("http://10.0.0.5:3000/mcp")?)
///     .backend(Backend::new("tickets").upstream_url("https://tickets.example.com/mcp")?)
///     .build()?;
/// # let _ = router;
/// # Ok(())
/// # }
/// ```
pub struct Backend {
    pub(crate) name: Arc<str>,
    instances: Vec<PendingUpstream>,
    credentials: Option<Arc<dyn CredentialProvider>>,
    health: HealthConfig,
    http: HttpUpstreamConfig,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("name", &self.name)
            .field("instances", &self.instances.len())
            .finish()
    }
}

impl Backend {
    /// A backend named `name` (letters, digits, `-`, `_`).
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        Backend {
            name: name.into(),
            instances: Vec::new(),
            credentials: None,
            health: HealthConfig::default(),
            http: HttpUpstreamConfig::default(),
        }
    }

    /// Settings for the HTTP instances added after this call.
    pub fn http_upstream_config(mut self, cfg: HttpUpstreamConfig) -> Self {
        self.http = cfg;
        self
    }

    /// Adds an instance reached over HTTP(S).
    pub fn upstream_url(mut self, url: &str) -> Result<Self, BoxError> {
        let up = mcp_gateway_tower::upstream::HttpUpstream::new(url, self.http.clone())?;
        self.instances.push(Box::new(move |name, creds| {
            crate::named_instance(up, name, creds)
        }));
        Ok(self)
    }

    /// Adds an instance that is any tower service (e.g. an in-process
    /// rmcp server).
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
        self.instances.push(crate::service_instance(svc));
        self
    }

    /// Adds an instance built elsewhere (e.g. [`http_instance`](crate::http_instance)).
    pub fn instance(mut self, instance: UpstreamInstance) -> Self {
        self.instances.push(Box::new(move |_, _| instance));
        self
    }

    /// The credentials the gateway adds towards this backend.
    pub fn credentials(mut self, provider: Arc<dyn CredentialProvider>) -> Self {
        self.credentials = Some(provider);
        self
    }

    /// Health checks, balance and drain of this backend's instances.
    pub fn health(mut self, health: HealthConfig) -> Self {
        self.health = health;
        self
    }

    pub(crate) fn build(self) -> Result<Upstreams, BoxError> {
        if self.instances.is_empty() {
            return Err(format!("backend {} has no instance", self.name).into());
        }
        let name = self.name.clone();
        let creds = self.credentials;
        Ok(Upstreams::new(
            self.instances
                .into_iter()
                .map(|make| make(name.clone(), creds.clone()))
                .collect(),
        )
        .named(name)
        .with_health(self.health))
    }
}
