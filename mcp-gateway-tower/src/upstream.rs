//! Backends: a pooled HTTP client ([`HttpUpstream`]), an adapter for any
//! tower service ([`ServiceUpstream`], e.g. rmcp's `StreamableHttpService`
//! in-process), and [`Upstreams`], the set of instances of one backend that
//! the session router dispatches to by [`Instance`].
//!
//! Every failure is a response: a refused or broken connection is `502`
//! (-32050), a backend that does not answer in time is `504` (-32051); the
//! gateway never hangs on a dead backend.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::{HeaderMap, Request, Response, Uri};
use mcp_gateway_core::{ErrorKind, GatewayError, McpRequest, Principal};
use tower::util::BoxCloneSyncService;
use tower::ServiceExt;
use tower_service::Service;

use crate::body::{Body, BoxError, BoxFuture};
use crate::conn_pool::{ConnPool, PoolConfig, PooledBody, TimedOut};
use crate::credentials::CredentialProvider;
use crate::error::error_response;

/// Which instance of the backend serves a request; set by the session
/// router in the request extensions. Absent means instance 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Instance(pub usize);

/// A type-erased upstream service: what [`Upstreams`] holds.
pub type BoxUpstream = BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>;

/// Settings of [`HttpUpstream`].
#[derive(Debug, Clone)]
pub struct HttpUpstreamConfig {
    /// Time allowed to establish a TCP connection. Default: 5 s.
    pub connect_timeout: Duration,
    /// Time allowed until the response *headers* arrive. Streams are not cut
    /// by it (the SSE relay has its own idle timeout). Default: 300 s, since
    /// a backend may answer a long tool call with plain JSON.
    pub response_timeout: Duration,
    /// Idle pooled connections are closed after this. Default: 90 s.
    pub pool_idle_timeout: Duration,
    /// Pooled idle connections kept per backend. Default: 256.
    pub pool_max_idle: usize,
}

impl Default for HttpUpstreamConfig {
    fn default() -> Self {
        HttpUpstreamConfig {
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(300),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle: 256,
        }
    }
}

/// A Streamable HTTP backend reached over pooled HTTP/1.1 connections.
///
/// The pool is the gateway's own: each request's task drives its
/// connection, with no per-connection task to hand requests to (see the
/// `conn_pool` module for why), and a response body that is dropped
/// unread closes its connection, which is how the backend learns that a
/// client left a stream.
///
/// Per request it: points the URI at the backend URL (keeping the client's
/// query string when the URL has none), sets `Host` to the backend's
/// authority, strips hop-by-hop headers and the client's credentials
/// (`Authorization`, `Cookie`: tokens stop at the gateway), and adds the
/// headers configured with [`HttpUpstream::with_header`].
#[derive(Clone)]
pub struct HttpUpstream {
    pool: ConnPool,
    authority: http::uri::Authority,
    /// The backend path in origin form, as sent on the request line.
    path: Uri,
    host: HeaderValue,
    extra: Arc<HeaderMap>,
    credentials: Credentials,
    response_timeout: Duration,
}

impl HttpUpstream {
    /// A client for the backend at `url` (`http://host:port/path`).
    pub fn new(url: &str, cfg: HttpUpstreamConfig) -> Result<Self, BoxError> {
        let uri: Uri = url.parse()?;
        let scheme = uri.scheme().cloned().ok_or("upstream URL needs a scheme")?;
        if scheme != Scheme::HTTP {
            return Err(
                format!("unsupported upstream scheme {scheme} (only http:// is built in)").into(),
            );
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or("upstream URL needs a host")?;
        let path = uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let addr = format!(
            "{}:{}",
            authority.host(),
            authority.port_u16().unwrap_or(80)
        );
        let pool = ConnPool::new(
            addr,
            PoolConfig {
                connect_timeout: cfg.connect_timeout,
                idle_timeout: cfg.pool_idle_timeout,
                max_idle: cfg.pool_max_idle,
            },
        );
        Ok(HttpUpstream {
            pool,
            host: HeaderValue::from_str(authority.as_str())?,
            authority,
            path: Uri::from(path),
            extra: Arc::new(HeaderMap::new()),
            credentials: None,
            response_timeout: cfg.response_timeout,
        })
    }

    /// Adds a header sent on every request to this backend (for example a
    /// static credential). Replaces any client value of the same name.
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        Arc::make_mut(&mut self.extra).insert(name, value);
        self
    }

    /// Adds the headers of `provider` to every request sent to this
    /// backend (named `backend` for the provider), after the client's
    /// credentials were removed. See [`crate::credentials`].
    pub fn with_credentials(
        mut self,
        provider: Arc<dyn CredentialProvider>,
        backend: impl Into<Arc<str>>,
    ) -> Self {
        self.credentials = Some((provider, backend.into()));
        self
    }

    /// The backend URL's authority (`host:port`).
    pub fn authority(&self) -> &str {
        self.authority.as_str()
    }

    /// The request-line target: the backend path, with the client's query
    /// string when the backend URL has none.
    fn target(&self, incoming: &Uri) -> Uri {
        match (self.path.query(), incoming.query()) {
            (None, Some(q)) => format!("{}?{q}", self.path.path())
                .parse()
                .unwrap_or_else(|_| self.path.clone()),
            _ => self.path.clone(),
        }
    }
}

/// Headers meaningful for one hop only (RFC 9110 §7.6.1), plus the client's
/// credentials, which never travel past the gateway.
const STRIP: [HeaderName; 10] = [
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::HOST,
    header::AUTHORIZATION,
    header::COOKIE,
];

/// Whether `n` names a hop-by-hop header (RFC 9110 §7.6.1, plus the two
/// pre-standard ones still seen in the wild).
fn is_hop_by_hop(n: &HeaderName) -> bool {
    STRIP[..7].contains(n) || n == "keep-alive" || n == "proxy-connection"
}

/// Removes hop-by-hop headers, including any named in `Connection`.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Most messages carry none: one pass over the names that are there is
    // cheaper than nine hashed removals of names that are not.
    if !h.keys().any(is_hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in &STRIP[..7] {
        h.remove(n);
    }
    h.remove("keep-alive");
    h.remove("proxy-connection");
}

impl std::fmt::Debug for HttpUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpUpstream")
            .field("authority", &self.authority)
            .field("path", &self.path)
            .field("pool", &self.pool)
            .field("credentials", &self.credentials.as_ref().map(|c| &c.1))
            .finish()
    }
}

/// Credentials for one backend: the provider and the backend's name.
type Credentials = Option<(Arc<dyn CredentialProvider>, Arc<str>)>;

/// Applies caller-independent credentials at once; returns the provider
/// when it must be asked per request.
fn apply_static_credentials(creds: &Credentials, headers: &mut HeaderMap) -> Credentials {
    let (provider, backend) = creds.as_ref()?;
    match provider.static_headers() {
        Some(h) => {
            for (k, v) in h {
                headers.insert(k.clone(), v.clone());
            }
            None
        }
        None => Some((provider.clone(), backend.clone())),
    }
}

/// Asks a per-request provider for this request's principal.
async fn apply_dynamic_credentials(
    creds: Credentials,
    req: &mut Request<Body>,
) -> Result<(), GatewayError> {
    let Some((provider, backend)) = creds else {
        return Ok(());
    };
    let principal = req.extensions().get::<Principal>().cloned();
    let h = provider.credentials(principal.as_ref(), &backend).await?;
    let mut last = None;
    for (k, v) in h {
        // `HeaderMap`'s iterator names a header once (replace the client's
        // value), then `None` for its further values (append them).
        match k {
            Some(k) => {
                req.headers_mut().insert(k.clone(), v);
                last = Some(k);
            }
            None => {
                if let Some(k) = &last {
                    req.headers_mut().append(k.clone(), v);
                }
            }
        }
    }
    Ok(())
}

enum CallError {
    Credentials(GatewayError),
    Send(BoxError),
    TimedOut,
}

impl Service<Request<Body>> for HttpUpstream {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The pool opens a connection when none is idle; readiness is per
        // connection, not per service.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> BoxFuture {
        self.send(req)
    }
}

impl HttpUpstream {
    /// Sends `req` to the backend: [`Service::call`] without the `&mut`
    /// (an instance shared by a set needs no clone per call).
    pub fn send(&self, req: Request<Body>) -> BoxFuture {
        let (mut parts, body) = req.into_parts();
        let id = parts
            .extensions
            .get::<McpRequest>()
            .and_then(|m| m.first_id().cloned());
        parts.uri = self.target(&parts.uri);
        strip_hop_by_hop(&mut parts.headers);
        for n in &STRIP[7..] {
            parts.headers.remove(n);
        }
        parts.headers.insert(header::HOST, self.host.clone());
        for (k, v) in self.extra.iter() {
            parts.headers.insert(k.clone(), v.clone());
        }
        let creds = apply_static_credentials(&self.credentials, &mut parts.headers);
        parts.version = http::Version::HTTP_11;
        let mut req = Request::from_parts(parts, body);
        let pool = self.pool.clone();
        let timeout = self.response_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let authority = self.authority.clone();
        // One small future: the per-request credential lookup (rare) is
        // boxed apart, the deadline is kept by the connection's own timer
        // (see `conn_pool`), and the result is turned into a response by a
        // plain function, so the state moved into the box on every call is
        // little more than the pooled send itself.
        Box::pin(async move {
            let res = async {
                if creds.is_some() {
                    let lookup = apply_dynamic_credentials(creds, &mut req);
                    match Box::pin(tokio::time::timeout_at(deadline, lookup)).await {
                        Ok(r) => r.map_err(CallError::Credentials)?,
                        Err(_) => return Err(CallError::TimedOut),
                    }
                }
                pool.send(req, deadline).await.map_err(|e| {
                    if e.is::<TimedOut>() {
                        CallError::TimedOut
                    } else {
                        CallError::Send(e)
                    }
                })
            }
            .await;
            Ok(upstream_response(res, &authority, timeout, id.as_ref()))
        })
    }
}

/// The client's response for what the upstream call came to.
fn upstream_response(
    res: Result<Response<PooledBody>, CallError>,
    authority: &http::uri::Authority,
    timeout: Duration,
    id: Option<&mcp_gateway_core::RequestId>,
) -> Response<Body> {
    match res {
        Ok(res) => {
            let (mut parts, body) = res.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, Body::new(body))
        }
        Err(CallError::Credentials(e)) => {
            tracing::warn!(upstream = %authority, error = %e, "no credentials for the upstream");
            error_response(&e, id)
        }
        Err(CallError::Send(e)) => {
            tracing::warn!(upstream = %authority, error = %e, "upstream request failed");
            let err = GatewayError::new(
                ErrorKind::UpstreamUnavailable,
                format!("Bad Gateway: upstream {authority} failed: {e}"),
            );
            error_response(&err, id)
        }
        Err(CallError::TimedOut) => {
            tracing::warn!(upstream = %authority, ?timeout, "upstream timed out");
            let err = GatewayError::new(
                ErrorKind::UpstreamTimeout,
                format!(
                    "Gateway Timeout: upstream {authority} sent no response within {timeout:?}"
                ),
            );
            error_response(&err, id)
        }
    }
}

/// Any tower service as a backend (for example rmcp's
/// `StreamableHttpService` in the same process). Errors become `502`. As
/// with [`HttpUpstream`], the client's `Authorization` and `Cookie` are
/// removed and the configured credentials added.
#[derive(Clone)]
pub struct ServiceUpstream<S> {
    inner: S,
    credentials: Credentials,
}

impl<S> std::fmt::Debug for ServiceUpstream<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceUpstream").finish_non_exhaustive()
    }
}

impl<S> ServiceUpstream<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        ServiceUpstream {
            inner,
            credentials: None,
        }
    }

    /// Adds the headers of `provider` to every request (see
    /// [`HttpUpstream::with_credentials`]).
    pub fn with_credentials(
        mut self,
        provider: Arc<dyn CredentialProvider>,
        backend: impl Into<Arc<str>>,
    ) -> Self {
        self.credentials = Some((provider, backend.into()));
        self
    }
}

impl<S, B> Service<Request<Body>> for ServiceUpstream<S>
where
    S: Service<Request<Body>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Body>) -> BoxFuture {
        let svc = self.inner.clone();
        for n in &STRIP[8..] {
            req.headers_mut().remove(n);
        }
        let creds = apply_static_credentials(&self.credentials, req.headers_mut());
        Box::pin(async move {
            if let Err(e) = apply_dynamic_credentials(creds, &mut req).await {
                let id = req
                    .extensions()
                    .get::<McpRequest>()
                    .and_then(|m| m.first_id().cloned());
                return Ok(error_response(&e, id.as_ref()));
            }
            match svc.oneshot(req).await {
                Ok(res) => Ok(res.map(Body::new)),
                Err(e) => {
                    let e: BoxError = e.into();
                    let err = GatewayError::new(
                        ErrorKind::UpstreamUnavailable,
                        format!("Bad Gateway: upstream service failed: {e}"),
                    );
                    Ok(error_response(&err, None))
                }
            }
        })
    }
}

/// The instances of one backend. Dispatches each request to the instance
/// named by its [`Instance`] extension (0 when absent).
#[derive(Clone)]
pub struct Upstreams {
    instances: Arc<[UpstreamInstance]>,
}

/// One instance of a backend in an [`Upstreams`] set.
#[derive(Clone)]
#[non_exhaustive]
pub enum UpstreamInstance {
    /// Reached over HTTP: called in place, without a clone per call.
    Http(Box<HttpUpstream>),
    /// Any other service (cloned and driven ready per call).
    Service(BoxUpstream),
}

impl From<HttpUpstream> for UpstreamInstance {
    fn from(u: HttpUpstream) -> Self {
        UpstreamInstance::Http(Box::new(u))
    }
}

impl From<BoxUpstream> for UpstreamInstance {
    fn from(s: BoxUpstream) -> Self {
        UpstreamInstance::Service(s)
    }
}

impl std::fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstreams")
            .field("instances", &self.instances.len())
            .finish()
    }
}

impl Upstreams {
    /// A set of instances (at least one): [`HttpUpstream`]s, boxed
    /// services ([`Upstreams::boxed`]), or [`UpstreamInstance`]s.
    pub fn new<I: Into<UpstreamInstance>>(instances: Vec<I>) -> Self {
        assert!(
            !instances.is_empty(),
            "a backend needs at least one instance"
        );
        Upstreams {
            instances: instances.into_iter().map(Into::into).collect(),
        }
    }

    /// One instance from any upstream service with `Error = Infallible`.
    pub fn boxed<S>(svc: S) -> BoxUpstream
    where
        S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        BoxCloneSyncService::new(svc)
    }

    /// HTTP instances from URLs, with one configuration.
    pub fn http<I, U>(urls: I, cfg: HttpUpstreamConfig) -> Result<Self, BoxError>
    where
        I: IntoIterator<Item = U>,
        U: AsRef<str>,
    {
        let v = urls
            .into_iter()
            .map(|u| HttpUpstream::new(u.as_ref(), cfg.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        if v.is_empty() {
            return Err("no upstream URL".into());
        }
        Ok(Upstreams::new(v))
    }

    /// Number of instances.
    pub fn len(&self) -> usize {
        self.instances.len()
    }

    /// Always false: a set has at least one instance.
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl Service<Request<Body>> for Upstreams {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let i = req.extensions().get::<Instance>().map_or(0, |i| i.0);
        // An out-of-range index is a bug in a custom selector; fall back to a
        // valid instance rather than panic in the request path.
        match &self.instances[i % self.instances.len()] {
            UpstreamInstance::Http(up) => up.send(req),
            UpstreamInstance::Service(svc) => Box::pin(svc.clone().oneshot(req)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("x-trace, Keep-Alive"),
        );
        h.insert("x-trace", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("proxy-connection", HeaderValue::from_static("close"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert("mcp-session-id", HeaderValue::from_static("abc"));
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-type", "mcp-session-id"]);

        // Nothing hop-by-hop: the map is left as it was.
        let before = h.clone();
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before);
    }

    #[tokio::test]
    async fn refused_connection_is_502_with_json_rpc_error() {
        // Bind then drop a listener to get a port nobody listens on.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let up =
            HttpUpstream::new(&format!("http://127.0.0.1:{port}/mcp"), Default::default()).unwrap();
        let res = up
            .oneshot(Request::post("/mcp").body(Body::from("{}")).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), 502);
        let v: serde_json::Value =
            serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(v["error"]["code"], -32050);
    }

    #[tokio::test]
    async fn silent_backend_is_504() {
        // Accepts connections, never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hold = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                conns.push(s);
            }
        });
        let up = HttpUpstream::new(
            &format!("http://{addr}/mcp"),
            HttpUpstreamConfig {
                response_timeout: Duration::from_millis(200),
                ..Default::default()
            },
        )
        .unwrap();
        let res = up
            .oneshot(Request::post("/mcp").body(Body::from("{}")).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), 504);
        hold.abort();
    }

    #[tokio::test]
    async fn a_credential_lookup_that_never_ends_is_504_within_the_response_timeout() {
        struct Stuck;
        impl CredentialProvider for Stuck {
            fn credentials<'a>(
                &'a self,
                _: Option<&'a Principal>,
                _: &'a str,
            ) -> crate::credentials::CredentialFuture<'a> {
                Box::pin(std::future::pending())
            }
        }
        let up = HttpUpstream::new(
            "http://127.0.0.1:9/mcp",
            HttpUpstreamConfig {
                response_timeout: Duration::from_millis(100),
                ..Default::default()
            },
        )
        .unwrap()
        .with_credentials(Arc::new(Stuck), "stuck");
        let res = up
            .oneshot(Request::post("/mcp").body(Body::from("{}")).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), 504);
    }

    #[test]
    fn hop_by_hop_and_credentials_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "close, x-private".parse().unwrap());
        h.insert("x-private", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("mcp-session-id", "abc".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert!(h.get("x-private").is_none());
        assert!(h.get("keep-alive").is_none());
        assert!(h.get(header::CONNECTION).is_none());
        assert_eq!(h.get("mcp-session-id").unwrap(), "abc");
    }

    #[test]
    fn target_keeps_client_query_only_when_url_has_none() {
        let up = HttpUpstream::new("http://127.0.0.1:9/mcp", Default::default()).unwrap();
        assert_eq!(
            up.target(&"/x?a=1".parse().unwrap()).to_string(),
            "/mcp?a=1"
        );
        let up = HttpUpstream::new("http://127.0.0.1:9/mcp?k=v", Default::default()).unwrap();
        assert_eq!(
            up.target(&"/x?a=1".parse().unwrap()).to_string(),
            "/mcp?k=v"
        );
    }
}
