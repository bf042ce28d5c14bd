//! One error type for every failure the gateway answers by itself.
//!
//! Each [`ErrorKind`] maps to exactly one HTTP status and one JSON-RPC error
//! code, so a layer never has to decide both: it names the failure and
//! [`GatewayError::to_json_body`] renders the body the spec prescribes.

use std::borrow::Cow;
use std::fmt;

use http::StatusCode;

use crate::jsonrpc::RequestId;

/// JSON-RPC and MCP error codes used by the gateway.
pub mod codes {
    /// Invalid JSON was received.
    pub const PARSE_ERROR: i32 = -32700;
    /// The JSON sent is not a valid request object.
    pub const INVALID_REQUEST: i32 = -32600;
    /// The method does not exist or is not available.
    pub const METHOD_NOT_FOUND: i32 = -32601;
    /// Invalid method parameters.
    pub const INVALID_PARAMS: i32 = -32602;
    /// Internal JSON-RPC error.
    pub const INTERNAL_ERROR: i32 = -32603;
    /// Generic server error; used (as the TypeScript SDK does) for a missing
    /// session id and for transport-level refusals.
    pub const SERVER_ERROR: i32 = -32000;
    /// The session id is unknown, expired or belongs to someone else.
    pub const SESSION_NOT_FOUND: i32 = -32001;
    /// MCP 2026-07-28: a standard header does not match the body.
    pub const HEADER_MISMATCH: i32 = -32020;
    /// MCP 2026-07-28: the protocol version is not supported.
    pub const UNSUPPORTED_PROTOCOL_VERSION: i32 = -32022;
    /// Gateway: the backend could not be reached or answered badly.
    pub const UPSTREAM_UNAVAILABLE: i32 = -32050;
    /// Gateway: the backend did not answer in time.
    pub const UPSTREAM_TIMEOUT: i32 = -32051;
    /// Gateway: the session table is full.
    pub const SESSION_CAPACITY: i32 = -32052;
    /// Gateway: the principal may not use this tool, prompt or resource.
    pub const DENIED: i32 = -32053;
    /// Gateway: the tool's definition changed since it was pinned, and the
    /// pinning mode blocks changed tools.
    pub const TOOL_CHANGED: i32 = -32054;
    /// Gateway: a limit refused the request; `data` says which limit
    /// (`limit`) and when to retry (`retryAfterMs`).
    pub const LIMITED: i32 = -32055;
    /// Gateway: the audit log cannot keep up and the overflow policy is to
    /// refuse calls rather than lose records.
    pub const AUDIT_BACKLOG: i32 = -32056;
    /// Gateway: the state replicas share (Redis) cannot be reached.
    pub const STATE_UNAVAILABLE: i32 = -32057;
    /// Gateway: a stream cannot be resumed from the `Last-Event-ID` given
    /// (unknown, expired, or cut while the client was away).
    pub const CANNOT_RESUME: i32 = -32058;
}

/// What went wrong; decides the HTTP status and the JSON-RPC code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The body is not valid JSON (400, -32700).
    Parse,
    /// Valid JSON, wrong JSON-RPC shape (400, -32600).
    InvalidRequest,
    /// Unknown method (404, -32601).
    MethodNotFound,
    /// Invalid parameters (400, -32602).
    InvalidParams,
    /// A bug or an unexpected state in the gateway (500, -32603).
    Internal,
    /// 2026-07-28 header/body mismatch or missing standard header (400, -32020).
    HeaderMismatch,
    /// `MCP-Protocol-Version` names a version the gateway does not speak (400, -32022).
    UnsupportedVersion,
    /// The request body is larger than the configured limit (413, -32600).
    PayloadTooLarge,
    /// `Accept` does not allow the required media types (406, -32600).
    NotAcceptable,
    /// `Content-Type` is not `application/json` (415, -32600).
    UnsupportedMediaType,
    /// The HTTP method is not allowed here (405, -32000).
    MethodNotAllowed,
    /// A session id is required and missing (400, -32000).
    MissingSession,
    /// The session id is unknown, expired, ended or someone else's (404, -32001).
    SessionNotFound,
    /// `Origin` or `Host` is not allowed (403, -32000).
    Forbidden,
    /// The backend refused the connection or broke it (502, -32050).
    UpstreamUnavailable,
    /// The backend did not answer in time (504, -32051).
    UpstreamTimeout,
    /// No instance of the backend is healthy (503, -32050, `Retry-After`):
    /// answered at once, without trying a connection.
    NoHealthyInstance,
    /// No room for another session (503, -32052).
    SessionCapacity,
    /// No credential, or one that does not verify (401, -32000). The auth
    /// layer adds `WWW-Authenticate`.
    Unauthorized,
    /// A valid credential without a scope the request needs (403, -32000).
    InsufficientScope,
    /// The policy refuses this tool, prompt or resource (200, -32053): the
    /// transport worked, the call is refused, and the client shows why.
    Denied,
    /// The tool's definition changed since it was first seen and changed
    /// tools are blocked (200, -32054).
    ToolChanged,
    /// A call-level limit (rate, in-flight, token or cost budget) refused
    /// the call (200, -32055).
    Limited,
    /// A session cap refused a new session (429, -32055, `Retry-After`).
    TooManySessions,
    /// A per-client cap refused the request: too many calls in flight or
    /// connections from one client (429, -32055, `Retry-After`).
    TooManyRequests,
    /// The audit sink is full and calls are refused (503, -32056).
    AuditBacklog,
    /// The state replicas share (the session store) cannot be reached
    /// (503, -32057, `Retry-After`).
    StateUnavailable,
    /// A stream cannot be resumed from the `Last-Event-ID` given: unknown,
    /// expired, or cut while the client was away (400, -32058).
    CannotResume,
}

impl ErrorKind {
    /// The HTTP status this failure is answered with.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::Parse
            | ErrorKind::InvalidRequest
            | ErrorKind::InvalidParams
            | ErrorKind::HeaderMismatch
            | ErrorKind::UnsupportedVersion
            | ErrorKind::MissingSession
            | ErrorKind::CannotResume => StatusCode::BAD_REQUEST,
            ErrorKind::MethodNotFound | ErrorKind::SessionNotFound => StatusCode::NOT_FOUND,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::NotAcceptable => StatusCode::NOT_ACCEPTABLE,
            ErrorKind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorKind::Forbidden | ErrorKind::InsufficientScope => StatusCode::FORBIDDEN,
            ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorKind::Denied | ErrorKind::ToolChanged | ErrorKind::Limited => StatusCode::OK,
            ErrorKind::TooManySessions | ErrorKind::TooManyRequests => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ErrorKind::AuditBacklog | ErrorKind::StateUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ErrorKind::UpstreamUnavailable => StatusCode::BAD_GATEWAY,
            ErrorKind::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::SessionCapacity | ErrorKind::NoHealthyInstance => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    /// The JSON-RPC error code this failure is answered with.
    pub fn code(self) -> i32 {
        use codes::*;
        match self {
            ErrorKind::Parse => PARSE_ERROR,
            ErrorKind::InvalidRequest
            | ErrorKind::PayloadTooLarge
            | ErrorKind::NotAcceptable
            | ErrorKind::UnsupportedMediaType => INVALID_REQUEST,
            ErrorKind::MethodNotFound => METHOD_NOT_FOUND,
            ErrorKind::InvalidParams => INVALID_PARAMS,
            ErrorKind::Internal => INTERNAL_ERROR,
            ErrorKind::HeaderMismatch => HEADER_MISMATCH,
            ErrorKind::UnsupportedVersion => UNSUPPORTED_PROTOCOL_VERSION,
            ErrorKind::MethodNotAllowed
            | ErrorKind::MissingSession
            | ErrorKind::Forbidden
            | ErrorKind::Unauthorized
            | ErrorKind::InsufficientScope => SERVER_ERROR,
            ErrorKind::Denied => DENIED,
            ErrorKind::ToolChanged => TOOL_CHANGED,
            ErrorKind::Limited | ErrorKind::TooManySessions | ErrorKind::TooManyRequests => LIMITED,
            ErrorKind::AuditBacklog => AUDIT_BACKLOG,
            ErrorKind::StateUnavailable => STATE_UNAVAILABLE,
            ErrorKind::CannotResume => CANNOT_RESUME,
            ErrorKind::SessionNotFound => SESSION_NOT_FOUND,
            ErrorKind::UpstreamUnavailable | ErrorKind::NoHealthyInstance => UPSTREAM_UNAVAILABLE,
            ErrorKind::UpstreamTimeout => UPSTREAM_TIMEOUT,
            ErrorKind::SessionCapacity => SESSION_CAPACITY,
        }
    }
}

/// A failure the gateway answers itself: kind, human message, optional data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayError {
    kind: ErrorKind,
    message: Cow<'static, str>,
    /// Pre-serialised JSON for the `data` member: errors are the cold path,
    /// and keeping JSON text avoids a `serde_json::Value` in the type.
    data: Option<String>,
}

impl GatewayError {
    /// A new error of `kind` with a message for humans.
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        GatewayError {
            kind,
            message: message.into(),
            data: None,
        }
    }

    /// Attach a JSON `data` member (any serialisable value).
    pub fn with_data<T: serde::Serialize>(mut self, data: &T) -> Self {
        self.data = serde_json::to_string(data).ok();
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The JSON text of the `data` member, if any.
    pub fn data(&self) -> Option<&str> {
        self.data.as_deref()
    }

    /// HTTP status of the response.
    pub fn status(&self) -> StatusCode {
        self.kind.status()
    }

    /// JSON-RPC error code.
    pub fn code(&self) -> i32 {
        self.kind.code()
    }

    /// The JSON-RPC error response, answering `id` (or `null` when the
    /// request's id is unknown, as JSON-RPC requires).
    pub fn to_json_body(&self, id: Option<&RequestId>) -> Vec<u8> {
        let mut out = Vec::with_capacity(96 + self.message.len());
        out.extend_from_slice(br#"{"jsonrpc":"2.0","id":"#);
        match id {
            Some(id) => out.extend_from_slice(id.as_bytes()),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(br#","error":{"code":"#);
        out.extend_from_slice(self.code().to_string().as_bytes());
        out.extend_from_slice(br#","message":"#);
        // Writing a &str to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut out, self.message.as_ref());
        if let Some(data) = &self.data {
            out.extend_from_slice(br#","data":"#);
            out.extend_from_slice(data.as_bytes());
        }
        out.extend_from_slice(b"}}");
        out
    }
}

impl fmt::Display for GatewayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.code())
    }
}

impl std::error::Error for GatewayError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_valid_json_rpc_error() {
        let err = GatewayError::new(ErrorKind::HeaderMismatch, "Mcp-Name \"x\" differs")
            .with_data(&serde_json::json!({"header": "Mcp-Name"}));
        let id = RequestId::from_raw_json(b"7").unwrap();
        let body: serde_json::Value = serde_json::from_slice(&err.to_json_body(Some(&id))).unwrap();
        assert_eq!(body["jsonrpc"], "2.0");
        assert_eq!(body["id"], 7);
        assert_eq!(body["error"]["code"], -32020);
        assert_eq!(body["error"]["message"], "Mcp-Name \"x\" differs");
        assert_eq!(body["error"]["data"]["header"], "Mcp-Name");
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn null_id_when_unknown() {
        let err = GatewayError::new(ErrorKind::Parse, "bad");
        let body: serde_json::Value = serde_json::from_slice(&err.to_json_body(None)).unwrap();
        assert!(body["id"].is_null());
        assert_eq!(body["error"]["code"], -32700);
    }

    #[test]
    fn every_kind_has_status_and_code() {
        let cases = [
            (ErrorKind::PayloadTooLarge, 413, -32600),
            (ErrorKind::NotAcceptable, 406, -32600),
            (ErrorKind::UnsupportedMediaType, 415, -32600),
            (ErrorKind::SessionNotFound, 404, -32001),
            (ErrorKind::MissingSession, 400, -32000),
            (ErrorKind::UnsupportedVersion, 400, -32022),
            (ErrorKind::UpstreamTimeout, 504, -32051),
            (ErrorKind::UpstreamUnavailable, 502, -32050),
            (ErrorKind::Forbidden, 403, -32000),
            (ErrorKind::MethodNotAllowed, 405, -32000),
            (ErrorKind::Unauthorized, 401, -32000),
            (ErrorKind::InsufficientScope, 403, -32000),
            (ErrorKind::Denied, 200, -32053),
            (ErrorKind::ToolChanged, 200, -32054),
            (ErrorKind::Limited, 200, -32055),
            (ErrorKind::TooManySessions, 429, -32055),
            (ErrorKind::TooManyRequests, 429, -32055),
            (ErrorKind::NoHealthyInstance, 503, -32050),
            (ErrorKind::AuditBacklog, 503, -32056),
            (ErrorKind::StateUnavailable, 503, -32057),
            (ErrorKind::CannotResume, 400, -32058),
        ];
        for (kind, status, code) in cases {
            assert_eq!(kind.status().as_u16(), status, "{kind:?}");
            assert_eq!(kind.code(), code, "{kind:?}");
        }
    }
}
