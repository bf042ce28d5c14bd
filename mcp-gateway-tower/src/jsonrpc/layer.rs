//! [`JsonRpcLayer`], its settings, and the service [`JsonRpc`].

#[allow(unused_imports)]
use super::*;

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
            HttpMethod::GET
                if parts
                    .extensions
                    .get::<crate::legacy::LegacyProbe>()
                    .is_some() =>
            {
                // A legacy client's stream is opening: it got past the
                // origin guard and authentication. Who it is goes back.
                let mut res = http::Response::new(Body::empty());
                *res.status_mut() = http::StatusCode::NO_CONTENT;
                if let Some(p) = parts.extensions.get::<mcp_gateway_core::Principal>() {
                    res.extensions_mut().insert(p.clone());
                }
                return ready(res);
            }
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
    let mcp = match header_version(&parts.headers) {
        Ok(version) => {
            validate(&parts.headers, bytes.clone(), envelope, version).map_err(refuse)?
        }
        // Which versions a server speaks is the backend's to say: a
        // `server/discover` in a version the gateway does not know goes on
        // as a stateless request, and the backend's own -32022 names the
        // versions it supports (the gateway's list would name others).
        Err(_) if is_discover(&envelope) => {
            McpRequest::new(bytes.clone(), envelope, ProtocolVersion::V2026_07_28, true)
        }
        Err(e) => return Err(refuse(e)),
    };
    let mut req = Request::from_parts(parts, Body::full(bytes));
    // The response carries it too, for layers outside this one (the audit
    // log) that see only what comes back.
    let seen = mcp.clone();
    #[cfg(feature = "otel")]
    crate::telemetry::on_parsed(req.extensions_mut(), &mcp);
    req.extensions_mut().insert(mcp);
    Ok((req, seen))
}

/// A single `server/discover` request.
fn is_discover(envelope: &Envelope) -> bool {
    matches!(envelope, Envelope::Single(m) if m.method() == Some(&mcp_gateway_core::Method::ServerDiscover))
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
