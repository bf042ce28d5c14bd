//! The JSON-RPC layer: read the body once, parse the envelope, validate the
//! transport rules, and hand the same bytes on with an [`McpRequest`] in the
//! request extensions.
//!
//! Checks, in order, each answered with the status and JSON-RPC code the
//! spec prescribes:
//! - HTTP method: `POST`, `GET`, `DELETE` (else 405); on 2026-07-28 only `POST`;
//! - `POST`: `Content-Type: application/json` (415), `Accept` allowing both
//!   `application/json` and `text/event-stream` (406), body within the limit
//!   (413), valid JSON (-32700), valid JSON-RPC (-32600), no batch on
//!   2025-06-18 or later (-32600), a known `MCP-Protocol-Version` (-32022),
//!   and on 2026-07-28 the header/body consistency rules (-32020);
//! - `GET`: `Accept` allowing `text/event-stream` (406).
//!
//! ```
//! use mcp_gateway_tower::jsonrpc::{JsonRpcConfig, JsonRpcLayer};
//! use mcp_gateway_tower::Body;
//! use mcp_gateway_core::McpRequest;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let svc = ServiceBuilder::new()
//!     .layer(JsonRpcLayer::new(JsonRpcConfig::default()))
//!     .service_fn(|req: http::Request<Body>| async move {
//!         let mcp = req.extensions().get::<McpRequest>().unwrap();
//!         assert_eq!(mcp.method().unwrap().as_str(), "tools/list");
//!         Ok::<_, std::convert::Infallible>(http::Response::new(Body::empty()))
//!     });
//! let req = http::Request::post("/mcp")
//!     .header("content-type", "application/json")
//!     .header("accept", "application/json, text/event-stream")
//!     .header("mcp-protocol-version", "2025-11-25")
//!     .body(Body::from(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#))
//!     .unwrap();
//! assert_eq!(svc.oneshot(req).await.unwrap().status(), 200);
//! # }
//! ```

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, Method as HttpMethod, Request, Response};
use http_body::Frame;
use http_body_util::BodyExt;
use mcp_gateway_core::protocol::{check_stateless_headers, header_names, HeaderValue};
use mcp_gateway_core::{Envelope, ErrorKind, GatewayError, McpRequest, ProtocolVersion};
use tower_layer::Layer;
use tower_service::Service;

use crate::body::{take_ready, Body, BoxError, BoxFuture};
use crate::error::error_response;

mod layer;
pub use self::layer::{JsonRpc, JsonRpcConfig, JsonRpcLayer};
mod headers;
use self::headers::*;
mod body;
use self::body::*;
mod validate;
use self::validate::*;
#[cfg(test)]
mod tests;
