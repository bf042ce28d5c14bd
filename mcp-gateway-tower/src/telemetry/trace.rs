//! Spans: a SERVER span per request received, a CLIENT span per request
//! sent to a backend, and W3C trace context carried through.
//!
//! Spans are `tracing` spans (target [`SPAN_TARGET`]) with the fields
//! `tracing-opentelemetry` maps to OpenTelemetry (`otel.name`,
//! `otel.kind`, `otel.status_code`) and the MCP semantic conventions'
//! attributes. The trace context is read and written through OpenTelemetry's
//! global text-map propagator (the application sets W3C trace context and
//! baggage), from and to both HTTP headers and `params._meta`.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH};
use http::{HeaderMap, Request};
use mcp_gateway_core::meta::{read_meta, write_meta, TRACE_KEYS};
use mcp_gateway_core::{McpRequest, MessageKind};
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TraceContextExt;
use tracing::field::Empty;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::names::*;
use crate::body::Body;

/// The `tracing` target of the gateway's spans: what a subscriber's
/// OpenTelemetry layer is filtered to.
pub const SPAN_TARGET: &str = "mcp_gateway::otel";

/// The gateway's SERVER span of a request, in the request's extensions
/// (set by the audit layer), so that the CLIENT span of the request sent
/// on to the backend is its child. Carries the client's `baggage`, passed
/// on unchanged.
#[derive(Debug, Clone)]
pub struct ServerSpan {
    /// The span.
    pub span: Span,
    /// The client's baggage (header, or `params._meta`).
    pub baggage: Option<String>,
}

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct Meta<'a>(&'a [Option<String>; 3]);

impl Extractor for Meta<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        let i = TRACE_KEYS.iter().position(|k| *k == key)?;
        self.0[i].as_deref()
    }
    fn keys(&self) -> Vec<&str> {
        TRACE_KEYS
            .iter()
            .zip(self.0.iter())
            .filter(|(_, v)| v.is_some())
            .map(|(k, _)| *k)
            .collect()
    }
}

#[derive(Default)]
struct Pairs(Vec<(String, String)>);

impl Injector for Pairs {
    fn set(&mut self, key: &str, value: String) {
        self.0.push((key.to_owned(), value));
    }
}

/// A SERVER span for a request with these headers: a child of the trace
/// context they carry (`traceparent`, `tracestate`), if any. Its name and
/// attributes are recorded when the call ends ([`end_server`]); a
/// `traceparent` in `params._meta` is adopted once the body is parsed
/// ([`adopt_meta`]).
pub(crate) fn server_span(method: &http::Method, headers: &HeaderMap) -> ServerSpan {
    let span = tracing::info_span!(
        target: SPAN_TARGET,
        "mcp.server",
        otel.name = method.as_str(),
        otel.kind = "server",
        otel.status_code = Empty,
        mcp.method.name = Empty,
        gen_ai.tool.name = Empty,
        gen_ai.prompt.name = Empty,
        gen_ai.operation.name = Empty,
        mcp.resource.uri = Empty,
        jsonrpc.request.id = Empty,
        mcp.session.id = Empty,
        mcp.protocol.version = Empty,
        error.type = Empty,
        rpc.response.status_code = Empty,
        network.transport = "tcp",
        network.protocol.name = "http",
        http.response.status_code = Empty,
        enduser.id = Empty,
        mcp.gateway.tenant = Empty,
        mcp.gateway.backend = Empty,
        mcp.gateway.outcome = Empty,
    );
    let baggage = headers
        .get("baggage")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if !span.is_disabled() && headers.contains_key("traceparent") {
        let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&Headers(headers)));
        if cx.span().span_context().is_valid() {
            let _ = span.set_parent(cx);
        }
    }
    ServerSpan { span, baggage }
}

/// Names the SERVER span after the parsed request (`{method} {target}`)
/// and adopts the trace context of its `params._meta` (where MCP clients
/// put it), which takes precedence over the headers: the message is the
/// more specific carrier. Called by the JSON-RPC layer once the body is
/// parsed, before any CLIENT span exists (a span's name and parent are
/// fixed once it has a child).
pub(crate) fn on_parsed(ext: &mut http::Extensions, mcp: &McpRequest) {
    let Some(server) = ext.get_mut::<ServerSpan>() else {
        return;
    };
    if server.span.is_disabled() {
        return;
    }
    if let Some(m) = mcp.message() {
        name_and_target(&server.span, m.method().map(|x| x.as_str()), m.target());
    }
    if memchr::memmem::find(mcp.body(), b"traceparent").is_none() {
        return;
    }
    let found = read_meta(mcp.body(), TRACE_KEYS);
    if found[0].is_none() {
        return;
    }
    let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&Meta(&found)));
    if cx.span().span_context().is_valid() {
        let _ = server.span.set_parent(cx);
        if let Some(b) = &found[2] {
            server.baggage = Some(b.clone());
        }
    }
}

/// What the end of a call tells its SERVER span.
pub(crate) struct ServerEnd<'a> {
    pub(crate) method: Option<&'a str>,
    pub(crate) id: Option<&'a str>,
    pub(crate) session: Option<&'a str>,
    pub(crate) version: Option<&'a str>,
    pub(crate) outcome: &'static str,
    pub(crate) error_type: Option<&'a str>,
    pub(crate) rpc_status: Option<i64>,
    pub(crate) http_status: u16,
    pub(crate) principal: Option<&'a str>,
    pub(crate) tenant: Option<&'a str>,
    pub(crate) backend: Option<&'a str>,
}

/// Records the call's name and attributes on its SERVER span (which ends
/// when the caller drops it) and returns its trace and span ids, for the
/// audit record.
pub(crate) fn end_server(span: &Span, e: &ServerEnd<'_>) -> Option<(String, String)> {
    if span.is_disabled() {
        return None;
    }
    if let Some(m) = e.method {
        span.record(METHOD, m);
    }
    if let Some(v) = e.id {
        span.record(REQUEST_ID, v);
    }
    if let Some(v) = e.session {
        span.record(SESSION_ID, v);
    }
    if let Some(v) = e.version {
        span.record(PROTOCOL_VERSION, v);
    }
    span.record(OUTCOME, e.outcome);
    span.record("http.response.status_code", e.http_status);
    if let Some(t) = e.error_type {
        span.record(ERROR_TYPE, t);
        span.record("otel.status_code", "ERROR");
    }
    if let Some(c) = e.rpc_status {
        span.record(RPC_STATUS, itoa::Buffer::new().format(c));
    }
    if let Some(v) = e.principal {
        span.record(PRINCIPAL, v);
    }
    if let Some(v) = e.tenant {
        span.record(TENANT, v);
    }
    if let Some(v) = e.backend {
        span.record(BACKEND, v);
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid()
        .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
}

fn name_and_target(span: &Span, method: Option<&str>, target: Option<&str>) {
    let Some(m) = method else { return };
    span.record(METHOD, m);
    let key = match m {
        "tools/call" => {
            span.record(OPERATION, "execute_tool");
            Some(TOOL)
        }
        "prompts/get" => Some(PROMPT),
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => Some(RESOURCE_URI),
        _ => None,
    };
    match (key, target) {
        (Some(k), Some(t)) => {
            span.record(k, t);
            span.record("otel.name", format!("{m} {t}"));
        }
        _ => {
            span.record("otel.name", m);
        }
    }
}

/// A CLIENT span for `req`, sent to backend `backend` at `address`
/// (host, port): a child of the request's [`ServerSpan`] (none without
/// one). Its context goes into the request's `traceparent` /
/// `tracestate` / `baggage` headers and into `params._meta` (the body is
/// rewritten only in `_meta`), so a backend reading either continues the
/// trace.
pub(crate) fn client_span(
    req: &mut Request<Body>,
    backend: &str,
    address: Option<(&str, u16)>,
) -> Option<Span> {
    let server = req.extensions().get::<ServerSpan>()?;
    if server.span.is_disabled() {
        return None;
    }
    let baggage = server.baggage.clone();
    let span = tracing::info_span!(
        target: SPAN_TARGET,
        parent: &server.span,
        "mcp.client",
        otel.name = Empty,
        otel.kind = "client",
        otel.status_code = Empty,
        mcp.method.name = Empty,
        gen_ai.tool.name = Empty,
        gen_ai.prompt.name = Empty,
        gen_ai.operation.name = Empty,
        mcp.resource.uri = Empty,
        jsonrpc.request.id = Empty,
        mcp.session.id = Empty,
        error.type = Empty,
        network.transport = "tcp",
        network.protocol.name = "http",
        server.address = Empty,
        server.port = Empty,
        http.response.status_code = Empty,
        mcp.gateway.backend = backend,
    );
    if span.is_disabled() {
        return None;
    }
    if let Some((host, port)) = address {
        span.record(SERVER_ADDRESS, host);
        span.record(SERVER_PORT, port);
    }
    let mcp = req.extensions().get::<McpRequest>().cloned();
    let message = mcp.as_ref().and_then(McpRequest::message);
    match message.and_then(|m| m.method()) {
        Some(m) => name_and_target(&span, Some(m.as_str()), message.and_then(|m| m.target())),
        None => {
            span.record("otel.name", req.method().as_str());
        }
    }
    if let Some(id) = message.and_then(|m| m.id()) {
        span.record(REQUEST_ID, String::from_utf8_lossy(id.as_bytes()).as_ref());
    }
    if let Some(sid) = req
        .headers()
        .get(mcp_gateway_core::protocol::header_names::MCP_SESSION_ID)
        .and_then(|v| v.to_str().ok())
    {
        span.record(SESSION_ID, sid);
    }
    let cx = span.context();
    let mut pairs = Pairs::default();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut pairs));
    if let Some(b) = baggage {
        pairs.0.retain(|(k, _)| k != "baggage");
        pairs.0.push(("baggage".into(), b));
    }
    for (k, v) in &pairs.0 {
        if let (Ok(k), Ok(v)) = (HeaderName::try_from(k.as_str()), HeaderValue::try_from(v)) {
            req.headers_mut().insert(k, v);
        }
    }
    let in_body = req.method() == http::Method::POST
        && message
            .is_some_and(|m| matches!(m.kind(), MessageKind::Request | MessageKind::Notification));
    if let (true, Some(mcp)) = (in_body, &mcp) {
        let entries: Vec<(&str, &str)> = pairs
            .0
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        if let Some(body) = write_meta(mcp.body(), &entries) {
            let body = Bytes::from(body);
            if req.headers().contains_key(CONTENT_LENGTH) {
                req.headers_mut()
                    .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
            }
            *req.body_mut() = Body::full(body);
        }
    }
    Some(span)
}

/// Ends a CLIENT span's record: its HTTP status and, on failure, the error.
pub(crate) fn end_client(span: &Span, status: Option<u16>, error: Option<&str>) {
    if let Some(s) = status {
        span.record("http.response.status_code", s);
    }
    if let Some(e) = error {
        span.record(ERROR_TYPE, e);
        span.record("otel.status_code", "ERROR");
    }
}
