//! An existing axum application that stacks the gateway's layers itself,
//! with a **custom [`ToolPolicy`]** of its own, beside its own routes.
//!
//! ```text
//! cargo run --example policy                 # listens on 127.0.0.1:8081
//! cargo run --example policy -- --listen 127.0.0.1:0
//! ```
//!
//! The policy, written here and not in configuration: every caller may use
//! read-only tools (`whoami`, `echo`, `test_simple_*`); a tool named
//! `<tenant>_…` only by callers of that tenant; callers with the role
//! `admin` everything, but only during the hours the company chose (a rule
//! a static configuration cannot say). API keys (printed at start) name the
//! callers. `GET /me` is an ordinary axum handler reading the caller with
//! the `Caller` extractor.

#[path = "support/fixtures.rs"]
mod fixtures;

use std::sync::Arc;

use mcp_gateway_axum::Caller;
use mcp_gateway_core::session::InMemorySessionStore;
use mcp_gateway_core::Principal;
use mcp_gateway_tower::acl::{Access, AclLayer, Decision, Target, ToolPolicy};
use mcp_gateway_tower::auth::{ApiKeys, AuthConfig, AuthLayer};
use mcp_gateway_tower::origin::OriginPolicy;
use mcp_gateway_tower::session::SessionLayer;
use mcp_gateway_tower::upstream::{ServiceUpstream, Upstreams};
use mcp_gateway_tower::{Body, ServiceBuilderExt};
use tower::ServiceBuilder;

/// The application's own rule. Cheap and non-blocking: it runs for every
/// guarded call and for every item of every list result.
struct TenantHoursPolicy {
    /// Admin hours, UTC, [start, end).
    admin_hours: std::ops::Range<u64>,
}

impl TenantHoursPolicy {
    fn hour_now() -> u64 {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        (secs / 3600) % 24
    }
}

impl ToolPolicy for TenantHoursPolicy {
    fn check(&self, a: &Access<'_>) -> Decision {
        let Some(p) = a.principal else {
            return Decision::Deny(Some("anonymous".into()));
        };
        if p.has_role("admin") {
            return if self.admin_hours.contains(&Self::hour_now()) {
                Decision::Allow
            } else {
                Decision::Deny(Some("outside admin hours".into()))
            };
        }
        match a.target {
            Target::Tool(name) => {
                let read_only =
                    matches!(name, "whoami" | "echo") || name.starts_with("test_simple_");
                let own_tenant = p
                    .tenant()
                    .is_some_and(|t| name.strip_prefix(t).is_some_and(|r| r.starts_with('_')));
                if read_only || own_tenant {
                    Decision::Allow
                } else {
                    Decision::Deny(None)
                }
            }
            // Prompts and resources: none for non-admins in this app.
            _ => Decision::Deny(None),
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let listen = match std::env::args().skip(1).collect::<Vec<_>>().as_slice() {
        [] => "127.0.0.1:8081".to_owned(),
        [flag, addr] if flag == "--listen" => addr.clone(),
        _ => return Err("usage: policy [--listen ADDR]".into()),
    };

    let keys = ApiKeys::new()
        .with_key(
            "acme-agent-key",
            Principal::builder("acme-agent")
                .tenant("acme")
                .auth_method("api_key")
                .build(),
        )
        .with_key(
            "ops-key",
            Principal::builder("ops")
                .roles(["admin"])
                .auth_method("api_key")
                .build(),
        );
    let backend = Upstreams::new(vec![Upstreams::boxed(ServiceUpstream::new(
        fixtures::service("policy-demo"),
    ))]);
    let mcp = ServiceBuilder::new()
        .map_request(|r: http::Request<axum::body::Body>| r.map(Body::new))
        .mcp_origin(OriginPolicy::loopback())
        .mcp_auth(AuthLayer::new(keys, AuthConfig::default()))
        .mcp_jsonrpc(Default::default())
        .mcp_acl(AclLayer::new(
            TenantHoursPolicy { admin_hours: 0..24 },
            "demo",
        ))
        .mcp_session(SessionLayer::from_arcs(
            Arc::new(InMemorySessionStore::default()),
            backend.instances(),
        ))
        .mcp_sse_relay(Default::default())
        .service(backend);

    // The application's own routes, one of them behind the same
    // authentication, reading the caller like any other extractor.
    // The gateway layers answer with their own body type; an axum handler
    // behind one is mapped to it.
    let me = ServiceBuilder::new()
        .layer(AuthLayer::new(
            ApiKeys::new().with_key(
                "acme-agent-key",
                Principal::builder("acme-agent").tenant("acme").build(),
            ),
            AuthConfig::default(),
        ))
        .map_response(|r: http::Response<axum::body::Body>| r.map(Body::new))
        .service(axum::routing::get(|Caller(p): Caller| async move {
            format!("you are {} of tenant {:?}\n", p.subject(), p.tenant())
        }));
    let app = axum::Router::new()
        .route("/health", axum::routing::get(|| async { "ok\n" }))
        .route_service("/me", me)
        .route_service("/mcp", mcp);

    let listener = tokio::net::TcpListener::bind(&listen).await?;
    let addr = listener.local_addr()?;
    println!("policy example: MCP at http://{addr}/mcp, API keys: acme-agent-key (tenant acme), ops-key (admin)");
    println!(
        "try: curl -s http://{addr}/me -H 'x-api-key: acme-agent-key'   and any MCP client with header x-api-key"
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
