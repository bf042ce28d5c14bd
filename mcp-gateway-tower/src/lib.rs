//! The tower layers and upstream services of **mcp-gateway**.
//!
//! Each layer is a `FooLayer` building a `Foo<S>`, in the style of
//! tower-http. All of them speak `Request<`[`Body`]`>` /
//! `Response<`[`Body`]`>` with `Error = Infallible`: every failure is an HTTP
//! response carrying a JSON-RPC error, with the status the MCP spec
//! prescribes.
//!
//! | layer | does |
//! | --- | --- |
//! | [`origin`] | `Origin` / `Host` validation against DNS rebinding (403) |
//! | [`jsonrpc`] | reads the bounded body once, parses and validates, puts an `McpRequest` in extensions |
//! | [`session`] | the session router: gateway session ids, sticky instances, `DELETE`, expiry |
//! | [`sse`] | the SSE relay: unchanged frames, per-event hook, keep-alive, idle timeout |
//! | [`auth`] | authentication: a [`Principal`](mcp_gateway_core::Principal) from API keys, JWTs ([`jwt`]) or client certificates; 401 / 403 as an OAuth resource server |
//! | [`audit`] | one record per message and per session, to `tracing`, a JSON Lines file, ClickHouse or a channel |
//! | [`acl`] | tool-level authorization ([`acl::ToolPolicy`], [`rules`]), list filtering, tool pinning ([`pinning`]) |
//! | [`limit`] | rate limits, session and in-flight caps, token and cost budgets ([`limit::Limiter`]) |
//! | [`upstream`] | pooled HTTP backends, any tower service as a backend, instance sets, [`credentials`] injection |
//! | [`legacy`] | legacy HTTP+SSE clients (2024-11-05): `GET {path}/sse` and its `POST` endpoint, in front of the whole stack |
//! | [`aggregate`] | several named backends behind one endpoint: merged lists with their own cursors, routing by (prefixed) name or URI, server-to-client ids remapped |
//!
//! With the `otel` feature, `telemetry` records metrics and spans named by
//! OpenTelemetry's MCP semantic conventions (through the audit layer and
//! the upstreams).
//!
//! Stack them with [`ServiceBuilderExt`] (outermost first):
//! `origin → audit → auth → jsonrpc → acl → limit → session → sse relay → upstreams`.
#![deny(missing_docs)]

#[macro_use]
mod macros;

pub mod acl;
pub mod aggregate;
pub mod audit;
pub mod auth;
pub mod body;
pub mod builder;
#[cfg(feature = "cluster")]
pub mod cluster;
pub mod error;
pub mod forwarded;
pub mod jsonrpc;
pub mod legacy;
pub mod limit;
pub mod origin;
pub mod resume;
pub mod session;
pub mod sse;
#[cfg(feature = "otel")]
pub mod telemetry;
#[cfg(test)]
mod test_support;
pub mod upstream;

pub use acl::{pinning, rules};
#[cfg(feature = "jwt")]
pub use auth::jwt;
pub use upstream::credentials;

pub use body::{Body, BoxError};
pub use builder::ServiceBuilderExt;
pub use error::error_response;
