//! [`ServiceBuilderExt`]: one method per layer on `tower::ServiceBuilder`.
//!
//! ```
//! use mcp_gateway_core::session::InMemorySessionStore;
//! use mcp_gateway_tower::origin::OriginPolicy;
//! use mcp_gateway_tower::session::SessionLayer;
//! use mcp_gateway_tower::upstream::{HttpUpstreamConfig, Upstreams};
//! use mcp_gateway_tower::ServiceBuilderExt;
//! use tower::ServiceBuilder;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let backend = Upstreams::http(["http://127.0.0.1:9000/mcp"], HttpUpstreamConfig::default())?;
//! let gateway = ServiceBuilder::new()
//!     .mcp_origin(OriginPolicy::loopback())
//!     .mcp_jsonrpc(Default::default())
//!     .mcp_session(SessionLayer::new(InMemorySessionStore::default(), backend.instances()))
//!     .mcp_sse_relay(Default::default())
//!     .service(backend);
//! # let _ = gateway;
//! # Ok(())
//! # }
//! ```

use tower::layer::util::Stack;
use tower::ServiceBuilder;

use crate::acl::AclLayer;
use crate::audit::AuditLayer;
use crate::auth::AuthLayer;
use crate::jsonrpc::{JsonRpcConfig, JsonRpcLayer};
use crate::limit::LimitLayer;
use crate::origin::{OriginLayer, OriginPolicy};
use crate::session::SessionLayer;
use crate::sse::{SseRelayConfig, SseRelayLayer};

mod sealed {
    pub trait Sealed {}
    impl<L> Sealed for tower::ServiceBuilder<L> {}
}

/// Adds the gateway layers to [`ServiceBuilder`], outermost first.
pub trait ServiceBuilderExt<L>: sealed::Sealed + Sized {
    /// [`OriginLayer`]: 403 for disallowed `Host` / `Origin`.
    fn mcp_origin(self, policy: OriginPolicy) -> ServiceBuilder<Stack<OriginLayer, L>>;
    /// [`AuditLayer`]: one record per message and per session (outermost
    /// after the origin guard, so refusals are recorded too).
    fn mcp_audit(self, layer: AuditLayer) -> ServiceBuilder<Stack<AuditLayer, L>>;
    /// [`AuthLayer`]: a `Principal` in extensions; 401 / 403 otherwise.
    fn mcp_auth(self, layer: AuthLayer) -> ServiceBuilder<Stack<AuthLayer, L>>;
    /// [`JsonRpcLayer`]: parse and validate; `McpRequest` in extensions.
    fn mcp_jsonrpc(self, cfg: JsonRpcConfig) -> ServiceBuilder<Stack<JsonRpcLayer, L>>;
    /// [`AclLayer`]: tool-level authorization and list filtering (after
    /// the JSON-RPC layer).
    fn mcp_acl(self, layer: AclLayer) -> ServiceBuilder<Stack<AclLayer, L>>;
    /// [`LimitLayer`]: rates, caps and budgets (after the ACL; it hands
    /// the session layer its session observer by itself).
    fn mcp_limit(self, layer: LimitLayer) -> ServiceBuilder<Stack<LimitLayer, L>>;
    /// [`SessionLayer`]: the session router.
    fn mcp_session(self, layer: SessionLayer) -> ServiceBuilder<Stack<SessionLayer, L>>;
    /// [`SseRelayLayer`]: relay SSE responses with keep-alives.
    fn mcp_sse_relay(self, cfg: SseRelayConfig) -> ServiceBuilder<Stack<SseRelayLayer, L>>;
}

impl<L> ServiceBuilderExt<L> for ServiceBuilder<L> {
    fn mcp_origin(self, policy: OriginPolicy) -> ServiceBuilder<Stack<OriginLayer, L>> {
        self.layer(OriginLayer::new(policy))
    }
    fn mcp_audit(self, layer: AuditLayer) -> ServiceBuilder<Stack<AuditLayer, L>> {
        self.layer(layer)
    }
    fn mcp_auth(self, layer: AuthLayer) -> ServiceBuilder<Stack<AuthLayer, L>> {
        self.layer(layer)
    }
    fn mcp_jsonrpc(self, cfg: JsonRpcConfig) -> ServiceBuilder<Stack<JsonRpcLayer, L>> {
        self.layer(JsonRpcLayer::new(cfg))
    }
    fn mcp_acl(self, layer: AclLayer) -> ServiceBuilder<Stack<AclLayer, L>> {
        self.layer(layer)
    }
    fn mcp_limit(self, layer: LimitLayer) -> ServiceBuilder<Stack<LimitLayer, L>> {
        self.layer(layer)
    }
    fn mcp_session(self, layer: SessionLayer) -> ServiceBuilder<Stack<SessionLayer, L>> {
        self.layer(layer)
    }
    fn mcp_sse_relay(self, cfg: SseRelayConfig) -> ServiceBuilder<Stack<SseRelayLayer, L>> {
        self.layer(SseRelayLayer::new(cfg))
    }
}
