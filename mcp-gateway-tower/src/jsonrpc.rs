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

/// Settings of [`JsonRpcLayer`].
#[derive(Debug, Clone)]
pub struct JsonRpcConfig {
    /// Largest request body accepted, in bytes. Default: 4 MiB.
    pub max_body_bytes: usize,
}

impl Default for JsonRpcConfig {
    fn default() -> Self {
        JsonRpcConfig {
            max_body_bytes: 4 * 1024 * 1024,
        }
    }
}

/// Parses and validates MCP requests. See the module docs.
#[derive(Debug, Clone, Default)]
pub struct JsonRpcLayer {
    cfg: JsonRpcConfig,
}

impl JsonRpcLayer {
    /// A layer with these settings.
    pub fn new(cfg: JsonRpcConfig) -> Self {
        JsonRpcLayer { cfg }
    }
}

impl<S> Layer<S> for JsonRpcLayer {
    type Service = JsonRpc<S>;
    fn layer(&self, inner: S) -> JsonRpc<S> {
        JsonRpc {
            inner,
            cfg: self.cfg.clone(),
        }
    }
}

/// The service built by [`JsonRpcLayer`].
#[derive(Debug, Clone)]
pub struct JsonRpc<S> {
    inner: S,
    cfg: JsonRpcConfig,
}

impl<S> JsonRpc<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, cfg: JsonRpcConfig) -> Self {
        JsonRpc { inner, cfg }
    }
    /// A layer with `cfg`.
    pub fn layer(cfg: JsonRpcConfig) -> JsonRpcLayer {
        JsonRpcLayer::new(cfg)
    }
    inner_accessors!();
}

impl<S, B, RB> Service<Request<B>> for JsonRpc<S>
where
    S: Service<Request<Body>, Response = Response<RB>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    RB: http_body::Body<Data = Bytes> + Send + 'static,
    RB::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> BoxFuture {
        let max = self.cfg.max_body_bytes;
        let (parts, body) = req.into_parts();
        match parts.method {
            HttpMethod::POST => {}
            HttpMethod::GET | HttpMethod::DELETE => {
                if let Err(refused) = check_get_or_delete(&parts) {
                    return ready(refused);
                }
                let fut = self.inner.call(Request::from_parts(parts, Body::empty()));
                return Box::pin(async move { fut.await.map(|r| r.map(Body::new)) });
            }
            _ => {
                return ready(error_response(
                    &GatewayError::new(ErrorKind::MethodNotAllowed, "Method Not Allowed"),
                    None,
                ))
            }
        }
        if let Err(e) = check_post_headers(&parts.headers) {
            return ready(error_response(&e, None));
        }
        if let Err(e) = check_declared_len(&parts.headers, max) {
            return ready(error_response(&e, None));
        }
        // Most bodies arrive whole, already read by the server: then the
        // request goes on from here, to the service polled ready as it is.
        // Why: a future holding a clone of the stack below would touch the
        // reference count of every layer under this one, counts that every
        // serving thread shares.
        let mut body = Box::pin(body);
        let first = body
            .as_mut()
            .poll_frame(&mut Context::from_waker(std::task::Waker::noop()));
        if let Poll::Ready(first) = first {
            if first.is_none() || body.is_end_stream() {
                let req = match first_frame(first, max) {
                    Ok(bytes) => prepare(parts, bytes),
                    Err(refused) => Err(refused),
                };
                return match req {
                    Ok((req, seen)) => {
                        let fut = self.inner.call(req);
                        Box::pin(async move { fut.await.map(|r| answered(r, seen)) })
                    }
                    Err(refused) => ready(refused),
                };
            }
            // More to come: read on below, this frame first.
            let first = match first_frame(first, max) {
                Ok(b) => b,
                Err(refused) => return ready(refused),
            };
            let mut inner = take_ready(&mut self.inner);
            return Box::pin(async move {
                let req = match read_rest(first, body, max).await {
                    Ok(bytes) => prepare(parts, bytes),
                    Err(e) => Err(error_response(&e, None)),
                };
                match req {
                    Ok((req, seen)) => inner.call(req).await.map(|r| answered(r, seen)),
                    Err(refused) => Ok(refused),
                }
            });
        }
        let mut inner = take_ready(&mut self.inner);
        Box::pin(async move {
            let req = match read_body(body, max).await {
                Ok(bytes) => prepare(parts, bytes),
                Err(e) => Err(error_response(&e, None)),
            };
            match req {
                Ok((req, seen)) => inner.call(req).await.map(|r| answered(r, seen)),
                Err(refused) => Ok(refused),
            }
        })
    }
}

/// A future that is ready with `res`.
fn ready(res: Response<Body>) -> BoxFuture {
    Box::pin(std::future::ready(Ok(res)))
}

/// `GET` (a server stream) and `DELETE` (a session's end): no body to
/// read, but the protocol version and `Accept` still count.
#[allow(clippy::result_large_err)]
fn check_get_or_delete(parts: &http::request::Parts) -> Result<(), Response<Body>> {
    let version = header_version(&parts.headers).map_err(|e| error_response(&e, None))?;
    if version == Some(ProtocolVersion::V2026_07_28) {
        return Err(error_response(
            &GatewayError::new(
                ErrorKind::MethodNotAllowed,
                "GET and DELETE are not part of the 2026-07-28 transport; use POST",
            ),
            None,
        ));
    }
    if parts.method == HttpMethod::GET && !accepts(&parts.headers, "text/event-stream") {
        return Err(error_response(
            &GatewayError::new(
                ErrorKind::NotAcceptable,
                "Not Acceptable: GET requires Accept: text/event-stream",
            ),
            None,
        ));
    }
    Ok(())
}

/// Parses and validates a `POST`'s body: the request to send on, with its
/// [`McpRequest`] in the extensions, and a copy of that for the response;
/// or the error to answer with.
#[allow(clippy::result_large_err)]
fn prepare(
    parts: http::request::Parts,
    bytes: Bytes,
) -> Result<(Request<Body>, McpRequest), Response<Body>> {
    let envelope = Envelope::parse(bytes.clone()).map_err(|e| error_response(&e, None))?;
    let first_id = envelope.first_id().cloned();
    // The version is checked after parsing so that even this error can
    // answer the request's id, as JSON-RPC requires.
    let refuse = |e: GatewayError| error_response(&e, first_id.as_ref());
    let version = header_version(&parts.headers).map_err(refuse)?;
    let mcp = validate(&parts.headers, bytes.clone(), envelope, version).map_err(refuse)?;
    let mut req = Request::from_parts(parts, Body::full(bytes));
    // The response carries it too, for layers outside this one (the audit
    // log) that see only what comes back.
    let seen = mcp.clone();
    req.extensions_mut().insert(mcp);
    Ok((req, seen))
}

/// The response, with the request's [`McpRequest`] for outer layers.
fn answered<RB>(r: Response<RB>, seen: McpRequest) -> Response<Body>
where
    RB: http_body::Body<Data = Bytes> + Send + 'static,
    RB::Error: Into<BoxError>,
{
    let mut r = r.map(Body::new);
    r.extensions_mut().insert(seen);
    r
}

/// The `MCP-Protocol-Version` header, if sent; unknown → -32022.
fn header_version(h: &HeaderMap) -> Result<Option<ProtocolVersion>, GatewayError> {
    let Some(raw) = h.get(&header_names::MCP_PROTOCOL_VERSION) else {
        return Ok(None);
    };
    let s = raw.to_str().unwrap_or("");
    ProtocolVersion::parse(s.trim()).map(Some).ok_or_else(|| {
        GatewayError::new(
            ErrorKind::UnsupportedVersion,
            format!("Unsupported protocol version: {s}"),
        )
        .with_data(&serde_json::json!({
            "supported": ProtocolVersion::supported_strs(),
            "requested": s,
        }))
    })
}

/// Whether `Accept` allows JSON and event streams (directly or by
/// wildcard): what every POST must, read in one pass over the ranges, as
/// bytes (a `str` split by `char` patterns cost ~600 instructions here).
fn accepts_json_and_sse(h: &HeaderMap) -> (bool, bool) {
    let (mut json, mut sse) = (false, false);
    for v in h.get_all(ACCEPT) {
        for m in media_ranges(v.as_bytes()) {
            if m == b"*/*" {
                return (true, true);
            }
            json |= m.eq_ignore_ascii_case(b"application/json")
                || m.eq_ignore_ascii_case(b"application/*");
            sse |=
                m.eq_ignore_ascii_case(b"text/event-stream") || m.eq_ignore_ascii_case(b"text/*");
        }
    }
    (json, sse)
}

/// The media types of a header value's comma-separated ranges, without
/// their parameters and surrounding whitespace.
fn media_ranges(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|b| *b == b',').map(media_type)
}

/// The media type of one range or `Content-Type` (before any `;`).
fn media_type(v: &[u8]) -> &[u8] {
    v.split(|b| *b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii()
}

/// Does `Accept` allow `mime` (directly or by wildcard)?
fn accepts(h: &HeaderMap, mime: &str) -> bool {
    let (ty, _) = mime.split_once('/').unwrap_or((mime, ""));
    h.get_all(ACCEPT).iter().any(|v| {
        media_ranges(v.as_bytes()).any(|m| {
            m.eq_ignore_ascii_case(mime.as_bytes())
                || m == b"*/*"
                || m.strip_suffix(b"/*")
                    .is_some_and(|t| t.eq_ignore_ascii_case(ty.as_bytes()))
        })
    })
}

fn check_post_headers(h: &HeaderMap) -> Result<(), GatewayError> {
    let ct_ok = h
        .get(CONTENT_TYPE)
        .is_some_and(|v| media_type(v.as_bytes()).eq_ignore_ascii_case(b"application/json"));
    if !ct_ok {
        return Err(GatewayError::new(
            ErrorKind::UnsupportedMediaType,
            "Unsupported Media Type: Content-Type must be application/json",
        ));
    }
    if accepts_json_and_sse(h) != (true, true) {
        return Err(GatewayError::new(
            ErrorKind::NotAcceptable,
            "Not Acceptable: Accept must allow both application/json and text/event-stream",
        ));
    }
    Ok(())
}

/// The error for a body over `max` bytes (413).
fn too_large(max: usize) -> GatewayError {
    GatewayError::new(
        ErrorKind::PayloadTooLarge,
        format!("Payload Too Large: request body exceeds {max} bytes"),
    )
    .with_data(&serde_json::json!({ "maxBytes": max }))
}

/// The error for a body that could not be read (400).
fn unreadable(e: BoxError) -> GatewayError {
    GatewayError::new(
        ErrorKind::InvalidRequest,
        format!("could not read request body: {e}"),
    )
}

/// Refuses a body whose declared length is over `max`, before reading it.
fn check_declared_len(h: &HeaderMap, max: usize) -> Result<(), GatewayError> {
    let declared = h
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large(max));
    }
    Ok(())
}

/// The bytes of a body's first frame (`None`: the body is empty), or the
/// error response for it.
#[allow(clippy::result_large_err)]
fn first_frame<E: Into<BoxError>>(
    first: Option<Result<Frame<Bytes>, E>>,
    max: usize,
) -> Result<Bytes, Response<Body>> {
    let bytes = match first {
        None => Bytes::new(),
        Some(Err(e)) => return Err(error_response(&unreadable(e.into()), None)),
        Some(Ok(frame)) => frame.into_data().unwrap_or_default(),
    };
    if bytes.len() > max {
        return Err(error_response(&too_large(max), None));
    }
    Ok(bytes)
}

/// Reads a whole body, bounded by `max`.
async fn read_body<B>(mut body: Pin<Box<B>>, max: usize) -> Result<Bytes, GatewayError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    // Most bodies arrive whole in one frame: take it as it is, without a
    // collector.
    let first = match std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        None => return Ok(Bytes::new()),
        Some(Err(e)) => return Err(unreadable(e.into())),
        Some(Ok(frame)) => frame.into_data().unwrap_or_default(),
    };
    if first.len() > max {
        return Err(too_large(max));
    }
    if body.is_end_stream() {
        return Ok(first);
    }
    read_rest(first, body, max).await
}

/// Reads the rest of a body whose first `first` bytes are in, bounded by
/// `max` in all.
async fn read_rest<B>(first: Bytes, body: Pin<Box<B>>, max: usize) -> Result<Bytes, GatewayError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    match http_body_util::Limited::new(body, max - first.len())
        .collect()
        .await
    {
        Ok(rest) if first.is_empty() => Ok(rest.to_bytes()),
        Ok(rest) => {
            let rest = rest.to_bytes();
            let mut all = bytes::BytesMut::with_capacity(first.len() + rest.len());
            all.extend_from_slice(&first);
            all.extend_from_slice(&rest);
            Ok(all.freeze())
        }
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large(max)),
        Err(e) => Err(unreadable(e)),
    }
}

/// One header's value for the 2026-07-28 checks: repeated or non-text
/// values are reported as invalid rather than resolved one way or another.
fn single<'a>(h: &'a HeaderMap, name: &http::HeaderName) -> HeaderValue<'a> {
    let mut it = h.get_all(name).iter();
    match (it.next(), it.next()) {
        (None, _) => HeaderValue::Absent,
        (Some(v), None) => v.to_str().map_or(HeaderValue::Invalid, HeaderValue::One),
        (Some(_), Some(_)) => HeaderValue::Invalid,
    }
}

fn validate(
    h: &HeaderMap,
    body: Bytes,
    envelope: Envelope,
    header_version: Option<ProtocolVersion>,
) -> Result<McpRequest, GatewayError> {
    let first = &envelope.messages()[0];
    let version = match header_version {
        Some(v) => v,
        None => {
            if first.meta_protocol_version() == Some(ProtocolVersion::V2026_07_28.as_str()) {
                return Err(GatewayError::new(
                    ErrorKind::HeaderMismatch,
                    "missing MCP-Protocol-Version header (required on 2026-07-28)",
                )
                .with_data(&serde_json::json!({ "header": "MCP-Protocol-Version" })));
            }
            // An initialize request names its version in the body; anything
            // else without the header is 2025-03-26 by the spec's rule.
            first
                .initialize_protocol_version()
                .and_then(ProtocolVersion::parse)
                .filter(|v| *v != ProtocolVersion::V2026_07_28)
                .unwrap_or(ProtocolVersion::DEFAULT_WITHOUT_HEADER)
        }
    };
    if let Envelope::Batch(msgs) = &envelope {
        if !version.allows_batch() {
            return Err(GatewayError::new(
                ErrorKind::InvalidRequest,
                format!("JSON-RPC batches are not supported on protocol version {version}"),
            ));
        }
        if msgs.iter().any(|m| m.is_initialize()) && msgs.len() > 1 {
            return Err(GatewayError::new(
                ErrorKind::InvalidRequest,
                "initialize must not be part of a batch",
            ));
        }
    }
    if version == ProtocolVersion::V2026_07_28 && !first.is_initialize() {
        check_stateless_headers(
            first,
            single(h, &header_names::MCP_METHOD),
            single(h, &header_names::MCP_NAME),
            version,
        )?;
    }
    Ok(McpRequest::new(
        body,
        envelope,
        version,
        header_version.is_some(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    /// A header map of these (name, value) pairs, repeats kept.
    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    #[test]
    fn accept_ranges_for_post() {
        let check = |values: &[&str]| {
            let pairs: Vec<_> = values.iter().map(|v| ("accept", *v)).collect();
            accepts_json_and_sse(&headers(&pairs))
        };
        assert_eq!(
            check(&["application/json, text/event-stream"]),
            (true, true)
        );
        assert_eq!(
            check(&["application/json", "text/event-stream"]),
            (true, true)
        );
        assert_eq!(check(&["Application/JSON;q=0.9 , TEXT/*"]), (true, true));
        assert_eq!(check(&["*/*"]), (true, true));
        assert_eq!(check(&["application/*"]), (true, false));
        assert_eq!(check(&["text/event-stream"]), (false, true));
        assert_eq!(check(&["text/html, application/xml"]), (false, false));
        assert_eq!(check(&[]), (false, false));
    }

    fn svc() -> impl Service<Request<Body>, Response = Response<Body>, Error = Infallible> {
        JsonRpcLayer::default().layer(tower::service_fn(|req: Request<Body>| async move {
            let ok =
                req.extensions().get::<McpRequest>().is_some() || req.method() != HttpMethod::POST;
            assert!(ok, "POST reached the inner service without McpRequest");
            Ok::<_, Infallible>(Response::new(Body::empty()))
        }))
    }

    async fn code(req: Request<Body>) -> (u16, Option<i64>) {
        let res = svc().oneshot(req).await.unwrap();
        let status = res.status().as_u16();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        let code = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"]["code"].as_i64());
        (status, code)
    }

    fn post(body: &str) -> http::request::Builder {
        let _ = body;
        Request::post("/mcp")
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
    }

    #[tokio::test]
    async fn a_body_in_several_frames_is_read_whole_and_bounded() {
        let frames = |parts: Vec<Bytes>| {
            let frames = parts
                .into_iter()
                .map(|b| Ok::<_, Infallible>(http_body::Frame::data(b)));
            Body::new(http_body_util::StreamBody::new(futures_util::stream::iter(
                frames,
            )))
        };
        let echo = JsonRpcLayer::default().layer(tower::service_fn(|req: Request<Body>| async {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            Ok::<_, Infallible>(Response::new(Body::from(body)))
        }));
        let msg = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
        let (a, b) = msg.split_at(17);
        let parts = vec![
            Bytes::from_static(a.as_bytes()),
            Bytes::from_static(b.as_bytes()),
        ];
        let res = echo
            .clone()
            .oneshot(post("").body(frames(parts)).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, msg.as_bytes(), "downstream gets the same bytes");
        // A body not there yet when the request comes in: read when it is.
        let later = futures_util::stream::once(async move {
            tokio::task::yield_now().await;
            Ok::<_, Infallible>(http_body::Frame::data(Bytes::from_static(msg.as_bytes())))
        });
        let res = echo
            .oneshot(
                post("")
                    .body(Body::new(http_body_util::StreamBody::new(later)))
                    .unwrap(),
            )
            .await
            .unwrap();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            body,
            msg.as_bytes(),
            "a body that comes later is read whole"
        );
        // Over the limit across frames, with no Content-Length: 413.
        let mib = Bytes::from(vec![b' '; 1 << 20]);
        let r = post("").body(frames(vec![mib; 5])).unwrap();
        assert_eq!(code(r).await, (413, Some(-32600)));
    }

    #[tokio::test]
    async fn good_request_passes() {
        let b = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
        assert_eq!(
            code(post(b).body(Body::from(b)).unwrap()).await,
            (200, None)
        );
    }

    #[test]
    fn accept_and_content_type_are_read_by_media_type() {
        // Accept ranges with parameters, whitespace, case and wildcards.
        for (accept, want) in [
            ("application/json, text/event-stream", (true, true)),
            (
                " Application/JSON ;q=0.9 ,\tTEXT/event-stream; q=1",
                (true, true),
            ),
            ("application/*,text/*", (true, true)),
            ("*/*;q=0.1", (true, true)),
            ("application/json", (true, false)),
            ("text/event-stream", (false, true)),
            ("application/jsonx, text/event-streams", (false, false)),
            ("", (false, false)),
        ] {
            assert_eq!(
                accepts_json_and_sse(&headers(&[("accept", accept)])),
                want,
                "{accept:?}"
            );
        }
        // Ranges spread over several Accept headers count together.
        let two = headers(&[
            ("accept", "application/json"),
            ("accept", "text/event-stream"),
        ]);
        assert_eq!(accepts_json_and_sse(&two), (true, true));
        assert!(accepts(
            &headers(&[("accept", "text/*")]),
            "text/event-stream"
        ));
        assert!(!accepts(
            &headers(&[("accept", "application/*")]),
            "text/event-stream"
        ));
        let ct = |v: &str| {
            check_post_headers(&headers(&[("content-type", v), ("accept", "*/*")])).is_ok()
        };
        assert!(ct("application/json"));
        assert!(ct("Application/Json ; charset=utf-8"));
        assert!(!ct("application/json-seq"));
        assert!(!ct("text/plain; x=application/json"));
    }

    #[tokio::test]
    async fn bad_inputs_get_their_status_and_code() {
        let ping = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
        // Content-Type
        let r = Request::post("/mcp")
            .header("content-type", "text/plain")
            .header("accept", "application/json, text/event-stream")
            .body(Body::from(ping))
            .unwrap();
        assert_eq!(code(r).await, (415, Some(-32600)));
        // Accept
        let r = Request::post("/mcp")
            .header("content-type", "application/json")
            .header("accept", "application/json")
            .body(Body::from(ping))
            .unwrap();
        assert_eq!(code(r).await, (406, Some(-32600)));
        // Malformed JSON
        assert_eq!(
            code(post("").body(Body::from("{oops")).unwrap()).await,
            (400, Some(-32700))
        );
        // Wrong JSON-RPC shape
        assert_eq!(
            code(
                post("")
                    .body(Body::from(r#"{"jsonrpc":"2.0","id":1}"#))
                    .unwrap()
            )
            .await,
            (400, Some(-32600))
        );
        // Batch on 2025-06-18+
        let batch = format!("[{ping}]");
        let r = post("")
            .header("mcp-protocol-version", "2025-06-18")
            .body(Body::from(batch.clone()))
            .unwrap();
        assert_eq!(code(r).await, (400, Some(-32600)));
        // ... but allowed on 2025-03-26
        let r = post("")
            .header("mcp-protocol-version", "2025-03-26")
            .body(Body::from(batch))
            .unwrap();
        assert_eq!(code(r).await, (200, None));
        // Unsupported version
        let r = post("")
            .header("mcp-protocol-version", "1999-01-01")
            .body(Body::from(ping))
            .unwrap();
        assert_eq!(code(r).await, (400, Some(-32022)));
        // Oversized body (declared and streamed)
        let big = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"ping","params":{{"x":"{}"}}}}"#,
            "a".repeat(5 << 20)
        );
        assert_eq!(
            code(post("").body(Body::from(big.clone())).unwrap()).await,
            (413, Some(-32600))
        );
        let r = post("")
            .header("content-length", "10")
            .body(Body::from(big))
            .unwrap();
        assert_eq!(code(r).await.0, 413);
        // Methods
        let r = Request::put("/mcp").body(Body::empty()).unwrap();
        assert_eq!(code(r).await, (405, Some(-32000)));
        let r = Request::get("/mcp")
            .header("accept", "application/json")
            .body(Body::empty())
            .unwrap();
        assert_eq!(code(r).await, (406, Some(-32600)));
        for m in ["GET", "DELETE"] {
            let r = Request::builder()
                .method(m)
                .uri("/mcp")
                .header("accept", "text/event-stream")
                .header("mcp-protocol-version", "2026-07-28")
                .body(Body::empty())
                .unwrap();
            assert_eq!(code(r).await, (405, Some(-32000)), "{m} on 2026-07-28");
        }
    }

    #[tokio::test]
    async fn unsupported_version_answers_the_request_id() {
        let r = post("")
            .header("mcp-protocol-version", "v999.0.0")
            .body(Body::from(
                r#"{"jsonrpc":"2.0","id":301,"method":"server/discover","params":{}}"#,
            ))
            .unwrap();
        let res = svc().oneshot(r).await.unwrap();
        assert_eq!(res.status(), 400);
        let v: serde_json::Value =
            serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(v["id"], 301);
        assert_eq!(v["error"]["code"], -32022);
        assert!(v["error"]["data"]["supported"].as_array().unwrap().len() >= 4);
    }

    const STATELESS_CALL: &str = r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"echo","arguments":{},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientInfo":{"name":"t","version":"1"},"io.modelcontextprotocol/clientCapabilities":{}}}}"#;

    #[tokio::test]
    async fn stateless_header_rules() {
        let ok = post("")
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", "tools/call")
            .header("mcp-name", "echo")
            .body(Body::from(STATELESS_CALL))
            .unwrap();
        assert_eq!(code(ok).await, (200, None));
        let mismatch = post("")
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", "tools/call")
            .header("mcp-name", "other")
            .body(Body::from(STATELESS_CALL))
            .unwrap();
        assert_eq!(code(mismatch).await, (400, Some(-32020)));
        let dup = post("")
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", "tools/call")
            .header("mcp-name", "echo")
            .header("mcp-name", "echo")
            .body(Body::from(STATELESS_CALL))
            .unwrap();
        assert_eq!(code(dup).await, (400, Some(-32020)));
        let no_version_header = post("")
            .header("mcp-method", "tools/call")
            .header("mcp-name", "echo")
            .body(Body::from(STATELESS_CALL))
            .unwrap();
        assert_eq!(code(no_version_header).await, (400, Some(-32020)));
        let b64 = post("")
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", "tools/call")
            .header("mcp-name", "=?base64?ZWNobw==?=")
            .body(Body::from(STATELESS_CALL))
            .unwrap();
        assert_eq!(code(b64).await, (200, None));
    }
}
