//! Turning a [`GatewayError`] into the HTTP response the spec prescribes.

use http::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use http::Response;
use mcp_gateway_core::{ErrorKind, GatewayError, RequestId};

use crate::body::Body;

/// The response for `err`: its status, `Content-Type: application/json`, and
/// a JSON-RPC error body answering `id` (or `null`).
pub fn error_response(err: &GatewayError, id: Option<&RequestId>) -> Response<Body> {
    let mut res = Response::new(Body::full(err.to_json_body(id)));
    *res.status_mut() = err.status();
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    // Layers outside the one that refused (the audit log) learn why.
    res.extensions_mut().insert(err.kind());
    if err.kind() == ErrorKind::MethodNotAllowed {
        res.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, POST, DELETE"));
    }
    res
}

/// Shorthand: a new error of `kind` rendered as a response.
pub(crate) fn respond(
    kind: ErrorKind,
    msg: impl Into<std::borrow::Cow<'static, str>>,
) -> Response<Body> {
    error_response(&GatewayError::new(kind, msg), None)
}
