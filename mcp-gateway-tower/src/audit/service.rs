//! [`Audit`]: the service, which opens a call record per request.

#[allow(unused_imports)]
use super::*;

impl<S> Layer<S> for AuditLayer {
    type Service = Audit<S>;
    fn layer(&self, inner: S) -> Audit<S> {
        Audit {
            inner,
            shared: self.shared.clone(),
            hook: self.hook.clone(),
        }
    }
}

/// The audit service. See the module docs.
#[derive(Clone)]
pub struct Audit<S> {
    inner: S,
    shared: Arc<Shared>,
    hook: Arc<dyn SessionObserver>,
}

impl<S> Audit<S> {
    inner_accessors!();
}

impl<S> std::fmt::Debug for Audit<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit").finish_non_exhaustive()
    }
}

impl<S, B> Service<Request<B>> for Audit<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> BoxFuture {
        let start = Instant::now();
        if self.shared.sink.saturated() {
            let e = GatewayError::new(
                ErrorKind::AuditBacklog,
                "Service Unavailable: the audit log cannot keep up; retry shortly",
            );
            return Box::pin(std::future::ready(Ok(error_response(&e, None))));
        }
        let shared = self.shared.clone();
        if req.method() == http::Method::POST
            && !req.headers().contains_key(&header_names::MCP_SESSION_ID)
        {
            // It may be an `initialize`: the session router then learns of
            // the observer that records the session's end.
            SessionHooks::add(&mut req, &self.hook);
        }
        #[cfg(feature = "otel")]
        let span = self.shared.traces.then(|| {
            let s = crate::telemetry::server_span(req.method(), req.headers());
            let span = s.span.clone();
            req.extensions_mut().insert(s);
            span
        });
        let session = req
            .headers()
            .get(&header_names::MCP_SESSION_ID)
            .and_then(|v| v.to_str().ok());
        let in_flight = match session {
            Some(sid) if req.method() == http::Method::POST => InFlight::start(&shared, sid),
            _ => None,
        };
        let asked = Asked {
            start,
            client: req
                .extensions()
                .get::<crate::limit::ClientAddr>()
                .map(|a| a.0.ip()),
            http_method: req.method().clone(),
            session: session.map(str::to_owned),
            in_flight,
            declared_len: req
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok()),
            #[cfg(feature = "otel")]
            span,
        };
        // Called here, not in the future: the service polled ready is used
        // as it is, with no clone of the stack below (a clone touches the
        // reference count of every layer under this one, counts every
        // serving thread shares).
        let fut = self.inner.call(req);
        // One await; what follows is plain code outside the future.
        Box::pin(async move { Ok(watch(shared, asked, fut.await?)) })
    }
}

/// What the request said, noted before it goes on.
struct Asked {
    start: Instant,
    /// The client's address (behind a trusted proxy: the one it named).
    client: Option<std::net::IpAddr>,
    http_method: http::Method,
    session: Option<String>,
    in_flight: Option<InFlight>,
    declared_len: Option<u64>,
    /// The call's SERVER span.
    #[cfg(feature = "otel")]
    span: Option<tracing::Span>,
}

/// Notes what the response head says, records a session start, and wraps
/// the body so the call is recorded when it ends.
fn watch(shared: Arc<Shared>, asked: Asked, res: Response<Body>) -> Response<Body> {
    let ttfb = asked.start.elapsed();
    let mcp = res.extensions().get::<McpRequest>().cloned();
    let started_session =
        mcp.as_ref().is_some_and(McpRequest::is_initialize) && res.status().is_success();
    let session = if started_session {
        res.headers()
            .get(&header_names::MCP_SESSION_ID)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    } else {
        asked.session
    };
    let sse = res
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let call = CallRecord {
        start: asked.start,
        ttfb,
        http_method: asked.http_method,
        session,
        bytes_in: mcp
            .as_ref()
            .map(|m| m.body().len() as u64)
            .or(asked.declared_len)
            .unwrap_or(0),
        status: res.status().as_u16(),
        kind: res.extensions().get::<ErrorKind>().copied(),
        limit: res.extensions().get::<LimitKind>().copied(),
        client: asked.client,
        detail: res
            .extensions()
            .get::<crate::upstream::UpstreamFailure>()
            .map(|f| f.0.clone()),
        principal: res.extensions().get::<Principal>().cloned(),
        // Shared, not copied: the record's `String` is made once, in `base`.
        backend: res
            .extensions()
            .get::<BackendName>()
            .map(|b| b.0.clone())
            .or_else(|| shared.backend.clone()),
        cost: res.extensions().get::<CostCharged>().map_or(0, |c| c.0),
        tokens: res
            .extensions()
            .get::<crate::limit::TokensCharged>()
            .cloned(),
        mcp,
        in_flight: asked.in_flight,
        #[cfg(feature = "otel")]
        span: asked.span,
    };
    if started_session {
        if let Some(sid) = &call.session {
            let mut e = call.base(EventKind::SessionStart);
            e.outcome = Outcome::Ok;
            shared.sink.record(&e.borrowed());
            shared.totals(sid).insert(
                sid.clone(),
                SessionTotals {
                    started: Some(asked.start),
                    principal: call.principal.clone(),
                    backend: call.backend.clone(),
                    protocol_version: call.version(),
                    ..Default::default()
                },
            );
        }
    }
    let (parts, body) = res.into_parts();
    Response::from_parts(
        parts,
        Body::new(ObservedBody::new(
            body,
            AuditWatch {
                meter: Meter::new(sse),
                call: Some(call),
                shared,
            },
        )),
    )
}
