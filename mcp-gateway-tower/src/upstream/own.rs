//! Requests the gateway sends a backend on its own behalf: health probes,
//! the setup a failover replays, the `DELETE` that ends a session.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request};
use mcp_gateway_core::protocol::header_names;

use crate::body::Body;

/// The `notifications/initialized` that follows an `initialize`.
pub(crate) const INITIALIZED: &[u8] = br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;

/// A request of the gateway's own: a `POST` carries JSON and accepts JSON
/// or SSE; `session` (when not empty) and `version` name the backend
/// session and its protocol version. `Host` is `localhost` (what an
/// in-process server such as rmcp accepts); an HTTP upstream replaces it
/// with the backend's, and sets the target.
pub(crate) fn own_request(
    method: Method,
    body: Bytes,
    session: Option<&HeaderValue>,
    version: Option<&HeaderValue>,
) -> Request<Body> {
    let post = method == Method::POST;
    let mut req = Request::new(Body::full(body));
    *req.method_mut() = method;
    let h = req.headers_mut();
    h.insert(header::HOST, HeaderValue::from_static("localhost"));
    if post {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream"),
        );
    }
    if let Some(sid) = session.filter(|s| !s.is_empty()) {
        h.insert(header_names::MCP_SESSION_ID, sid.clone());
    }
    if let Some(v) = version {
        h.insert(header_names::MCP_PROTOCOL_VERSION, v.clone());
    }
    req
}
