//! [`HttpUpstream`]: a Streamable HTTP backend over `http://` or `https://`.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{self, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use mcp_gateway_core::{ErrorKind, GatewayError, McpRequest, RequestId};
use mcp_gateway_http1::client::{ConnPool, OnConnect, PoolConfig, TimedOut};
use tower_service::Service;

use super::credentials::{
    apply_pending_credentials, apply_ready_credentials, CredentialProvider, Credentials,
};
use super::headers::{for_backend, strip_hop_by_hop};
use super::idle::IdleLimited;
use super::{NotSent, UpstreamFailure};
use crate::body::{Body, BoxError, BoxFuture};
use crate::error::error_response;

/// Which HTTP client carries the calls of an [`HttpUpstream`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum HttpClient {
    /// The built-in HTTP/1.1 pool for `http://` backends (the request's
    /// own task drives its connection: the cheapest hop), hyper for
    /// `https://` and HTTP/2.
    #[default]
    Auto,
    /// hyper-util's pooled client for every backend: HTTP/1.1 keep-alive,
    /// or HTTP/2 when TLS negotiates it (ALPN) or
    /// [`http2_prior_knowledge`](HttpUpstreamConfig::http2_prior_knowledge) says so.
    Hyper,
}

/// Told of each connection set-up to a backend: how long it took (TCP,
/// and TLS for `https://`) and whether it succeeded. For metrics.
/// The built-in pool takes the same hook ([`OnConnect`]).
#[derive(Clone)]
pub struct ConnectObserver(pub OnConnect);

impl ConnectObserver {
    /// An observer calling `f`.
    pub fn new(f: impl Fn(Duration, bool) + Send + Sync + 'static) -> Self {
        ConnectObserver(Arc::new(f))
    }
}

impl std::fmt::Debug for ConnectObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnectObserver")
    }
}

/// Settings of [`HttpUpstream`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HttpUpstreamConfig {
    /// Time allowed to establish a TCP connection (and, for `https://`,
    /// its TLS handshake). Default: 2 s (`upstream_connect_ms`).
    pub connect_timeout: Duration,
    /// Time allowed until the response *headers* arrive (`504`, -32051,
    /// past it). Default: 30 s (`upstream_first_byte_secs`). A backend that
    /// answers a long tool call should stream it (SSE, with progress), so
    /// its headers come at once; this bounds only the wait for them.
    pub response_timeout: Duration,
    /// An open response body (a stream) that brings no byte for this long
    /// ends with an error, and its connection is closed. A tool that keeps
    /// streaming progress never reaches it. Default: 300 s
    /// (`upstream_idle_secs`); `None`: no limit.
    pub idle_timeout: Option<Duration>,
    /// Idle pooled connections are closed after this. Default: 90 s.
    pub pool_idle_timeout: Duration,
    /// Pooled idle connections kept per backend. Default: 256.
    pub pool_max_idle: usize,
    /// Which client carries the calls. Default: [`HttpClient::Auto`].
    pub client: HttpClient,
    /// Speak HTTP/2 without TLS (h2c, prior knowledge) to an `http://`
    /// backend; uses hyper. Default: off (`https://` backends get HTTP/2
    /// whenever they offer it by ALPN).
    pub http2_prior_knowledge: bool,
    /// TLS towards `https://` backends.
    #[cfg(feature = "tls")]
    pub tls: super::TlsClientConfig,
    /// Told of each connection set-up (metrics). Default: none.
    pub on_connect: Option<ConnectObserver>,
}

impl Default for HttpUpstreamConfig {
    fn default() -> Self {
        HttpUpstreamConfig {
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(30),
            idle_timeout: Some(Duration::from_secs(300)),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle: 256,
            client: HttpClient::Auto,
            http2_prior_knowledge: false,
            #[cfg(feature = "tls")]
            tls: super::TlsClientConfig::default(),
            on_connect: None,
        }
    }
}

impl HttpUpstreamConfig {
    /// Sets [`connect_timeout`](Self::connect_timeout).
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// Sets [`response_timeout`](Self::response_timeout).
    pub fn response_timeout(mut self, t: Duration) -> Self {
        self.response_timeout = t;
        self
    }

    /// Sets [`idle_timeout`](Self::idle_timeout).
    pub fn idle_timeout(mut self, t: Option<Duration>) -> Self {
        self.idle_timeout = t;
        self
    }

    /// Sets [`client`](Self::client).
    pub fn client(mut self, c: HttpClient) -> Self {
        self.client = c;
        self
    }

    /// Sets [`http2_prior_knowledge`](Self::http2_prior_knowledge).
    pub fn http2_prior_knowledge(mut self, yes: bool) -> Self {
        self.http2_prior_knowledge = yes;
        self
    }

    /// Sets [`tls`](Self::tls).
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: super::TlsClientConfig) -> Self {
        self.tls = tls;
        self
    }
}

#[cfg(feature = "tls")]
type Connector = Bounded<hyper_rustls::HttpsConnector<HttpConnector>>;
#[cfg(not(feature = "tls"))]
type Connector = Bounded<HttpConnector>;

/// A connector whose whole connect is bounded: the TCP connection and, for
/// `https://`, the TLS handshake (hyper's connector bounds only the first).
#[derive(Clone)]
struct Bounded<C> {
    inner: C,
    limit: Duration,
    observer: Option<ConnectObserver>,
}

impl<C> Service<Uri> for Bounded<C>
where
    C: Service<Uri> + Clone + Send + 'static,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
    C::Response: Send + 'static,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<C::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connect = self.inner.call(uri);
        let limit = self.limit;
        let observer = self.observer.clone();
        Box::pin(async move {
            let started = std::time::Instant::now();
            let r = match tokio::time::timeout(limit, connect).await {
                Ok(r) => r.map_err(Into::into),
                Err(_) => Err(format!("connect (TCP and TLS) took longer than {limit:?}").into()),
            };
            if let Some(o) = observer {
                (o.0)(started.elapsed(), r.is_ok());
            }
            r
        })
    }
}

/// The connection side of an [`HttpUpstream`].
#[derive(Clone)]
enum Transport {
    /// The built-in HTTP/1.1 pool (`http://` only).
    Pool(ConnPool),
    /// hyper-util's pooled client: HTTP/1.1 or HTTP/2, plain or TLS.
    Hyper(Box<Client<Connector, Body>>),
}

/// A Streamable HTTP backend reached over pooled connections.
///
/// `http://` backends are called through the built-in HTTP/1.1 pool by
/// default (each request's task drives its connection, with no
/// per-connection task to hand requests to); `https://` backends, h2c and
/// [`HttpClient::Hyper`] go through hyper-util's client with rustls,
/// which speaks HTTP/2 when the backend offers it by ALPN. Either way, a
/// response body that is dropped unread closes its connection (or resets
/// its HTTP/2 stream), which is how the backend learns that a client left
/// a stream.
///
/// Per request it: points the URI at the backend URL (keeping the client's
/// query string when the URL has none), sets `Host` to the backend's
/// authority, strips hop-by-hop headers and the client's credentials
/// (`Authorization`, `Cookie`: tokens stop at the gateway), and adds the
/// headers configured with [`HttpUpstream::with_header`]. A redirect from
/// the backend is not followed: it is a `502` that names where it pointed.
#[derive(Clone)]
pub struct HttpUpstream {
    transport: Transport,
    scheme: Scheme,
    authority: Authority,
    /// The backend path in origin form, as sent on the request line.
    path: Uri,
    host: HeaderValue,
    extra: Arc<HeaderMap>,
    credentials: Credentials,
    response_timeout: Duration,
    idle_timeout: Option<Duration>,
    /// The backend's configured name: what error answers name (never the
    /// host, port or OS error, which go to the log and the audit record).
    name: Arc<str>,
}

impl HttpUpstream {
    /// A client for the backend at `url` (`http://host:port/path` or
    /// `https://…`; IPv6 literals in brackets; a path prefix and a query
    /// are kept).
    pub fn new(url: &str, cfg: HttpUpstreamConfig) -> Result<Self, BoxError> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("invalid URL {url:?}: {e}"))?;
        let scheme = uri
            .scheme()
            .cloned()
            .ok_or_else(|| format!("{url}: the URL needs a scheme (http:// or https://)"))?;
        let tls = if scheme == Scheme::HTTPS {
            true
        } else if scheme == Scheme::HTTP {
            false
        } else {
            return Err(format!("{url}: unsupported scheme {scheme} (http:// or https://)").into());
        };
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("{url}: the URL needs a host"))?;
        if authority.as_str().contains('@') {
            return Err(format!(
                "{url}: credentials in the URL are not sent; use the backend's credentials"
            )
            .into());
        }
        let path = uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let transport = if !tls && cfg.client == HttpClient::Auto && !cfg.http2_prior_knowledge {
            let port = authority.port_u16().unwrap_or(80);
            Transport::Pool(ConnPool::new(
                format!("{}:{port}", authority.host()),
                PoolConfig {
                    connect_timeout: cfg.connect_timeout,
                    idle_timeout: cfg.pool_idle_timeout,
                    max_idle: cfg.pool_max_idle,
                    on_connect: cfg.on_connect.as_ref().map(|o| o.0.clone()),
                },
            ))
        } else {
            Transport::Hyper(Box::new(hyper_client(&cfg, tls, authority.as_str())?))
        };
        Ok(HttpUpstream {
            transport,
            host: HeaderValue::from_str(authority.as_str())?,
            scheme,
            authority,
            path: Uri::from(path),
            extra: Arc::new(HeaderMap::new()),
            credentials: None,
            response_timeout: cfg.response_timeout,
            idle_timeout: cfg.idle_timeout,
            name: Arc::from("default"),
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
    /// credentials were removed. See [`super::credentials`].
    pub fn with_credentials(
        mut self,
        provider: Arc<dyn CredentialProvider>,
        backend: impl Into<Arc<str>>,
    ) -> Self {
        self.credentials = Some((provider, backend.into()));
        self
    }

    /// Names the backend (default `default`): error answers to clients
    /// name it instead of its address.
    pub fn named(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// The backend URL, as configured.
    pub fn url(&self) -> String {
        format!("{}://{}{}", self.scheme, self.authority, self.path)
    }

    /// The backend URL's authority (`host:port`).
    pub fn authority(&self) -> &str {
        self.authority.as_str()
    }

    /// The backend's host and port (the scheme's default when the URL has
    /// none): a span's `server.address` and `server.port`.
    pub fn host_port(&self) -> (&str, u16) {
        let default = if self.scheme == Scheme::HTTPS {
            443
        } else {
            80
        };
        (
            self.authority.host(),
            self.authority.port_u16().unwrap_or(default),
        )
    }

    /// Whether calls go through hyper (`https://`, HTTP/2, or chosen).
    pub fn uses_hyper(&self) -> bool {
        matches!(self.transport, Transport::Hyper(_))
    }

    /// The request target: the backend path, with the client's query
    /// string when the backend URL has none; absolute for hyper.
    pub(super) fn target(&self, incoming: &Uri) -> Uri {
        let pq = match (self.path.query(), incoming.query()) {
            (None, Some(q)) => format!("{}?{q}", self.path.path())
                .parse()
                .unwrap_or_else(|_| self.path.clone()),
            _ => self.path.clone(),
        };
        match self.transport {
            Transport::Pool(_) => pq,
            Transport::Hyper(_) => {
                let mut parts = pq.into_parts();
                parts.scheme = Some(self.scheme.clone());
                parts.authority = Some(self.authority.clone());
                Uri::from_parts(parts).unwrap_or_else(|_| self.path.clone())
            }
        }
    }
}

/// hyper-util's pooled client with the backend's TLS settings.
fn hyper_client(
    cfg: &HttpUpstreamConfig,
    tls: bool,
    backend: &str,
) -> Result<Client<Connector, Body>, BoxError> {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(cfg.connect_timeout));
    http.enforce_http(!tls);
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(cfg.pool_idle_timeout)
        .pool_max_idle_per_host(cfg.pool_max_idle)
        .http2_only(cfg.http2_prior_knowledge && !tls);
    #[cfg(feature = "tls")]
    {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(cfg.tls.build(backend)?)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        Ok(builder.build(Bounded {
            inner: connector,
            limit: cfg.connect_timeout,
            observer: cfg.on_connect.clone(),
        }))
    }
    #[cfg(not(feature = "tls"))]
    {
        if tls {
            return Err(
                format!("{backend}: https:// needs mcp-gateway-tower's `tls` feature").into(),
            );
        }
        Ok(builder.build(Bounded {
            inner: http,
            limit: cfg.connect_timeout,
            observer: cfg.on_connect.clone(),
        }))
    }
}

impl std::fmt::Debug for HttpUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpUpstream")
            .field("scheme", &self.scheme)
            .field("authority", &self.authority)
            .field("path", &self.path)
            .field("hyper", &self.uses_hyper())
            .field("credentials", &self.credentials.as_ref().map(|c| &c.1))
            .finish()
    }
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
        // Both clients open a connection when none is idle; readiness is
        // per connection, not per service.
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
        for_backend(&mut parts.headers);
        for (k, v) in self.extra.iter() {
            parts.headers.insert(k.clone(), v.clone());
        }
        // The principal is looked up only for a provider to ask.
        let principal = self
            .credentials
            .as_ref()
            .and_then(|_| parts.extensions.get::<mcp_gateway_core::Principal>());
        let creds = match apply_ready_credentials(&self.credentials, principal, &mut parts.headers)
        {
            Ok(pending) => pending,
            Err(e) => {
                tracing::warn!(upstream = %self.authority, error = %e, "no credentials for the upstream");
                return Box::pin(std::future::ready(Ok(error_response(&e, id.as_ref()))));
            }
        };
        let deadline = tokio::time::Instant::now() + self.response_timeout;
        let ctx = Failing {
            name: self.name.clone(),
            authority: self.authority.clone(),
            timeout: self.response_timeout,
            idle: self.idle_timeout,
        };
        match &self.transport {
            Transport::Pool(pool) => {
                parts.headers.insert(header::HOST, self.host.clone());
                parts.version = http::Version::HTTP_11;
                let mut req = Request::from_parts(parts, body);
                let pool = pool.clone();
                // One small future: the per-request credential lookup
                // (rare) is boxed apart, the deadline is kept by the
                // connection's own timer, and the result is turned into a
                // response by a plain function, so the state moved into
                // the box on every call is little more than the send.
                Box::pin(async move {
                    let res = async {
                        lookup_credentials(creds, &mut req, deadline).await?;
                        pool.send(req, deadline).await.map_err(|e| {
                            if e.is::<TimedOut>() {
                                CallError::TimedOut
                            } else {
                                CallError::Send(e)
                            }
                        })
                    }
                    .await;
                    Ok(upstream_response(res, &ctx, id.as_ref()))
                })
            }
            Transport::Hyper(client) => {
                // hyper writes `Host` (HTTP/1.1) or `:authority` (HTTP/2)
                // from the absolute URI, and picks the version itself.
                parts.version = http::Version::HTTP_11;
                let mut req = Request::from_parts(parts, body);
                let client = (**client).clone();
                Box::pin(async move {
                    let res = async {
                        lookup_credentials(creds, &mut req, deadline).await?;
                        match tokio::time::timeout_at(deadline, client.request(req)).await {
                            Err(_) => Err(CallError::TimedOut),
                            Ok(Err(e)) => Err(CallError::Send(Box::new(e))),
                            Ok(Ok(res)) => Ok(res),
                        }
                    }
                    .await;
                    Ok(upstream_response(res, &ctx, id.as_ref()))
                })
            }
        }
    }
}

/// Asks a per-request credential provider, within the call's deadline.
async fn lookup_credentials(
    creds: Credentials,
    req: &mut Request<Body>,
    deadline: tokio::time::Instant,
) -> Result<(), CallError> {
    if creds.is_none() {
        return Ok(());
    }
    let lookup = apply_pending_credentials(creds, req);
    match Box::pin(tokio::time::timeout_at(deadline, lookup)).await {
        Ok(r) => r.map_err(CallError::Credentials),
        Err(_) => Err(CallError::TimedOut),
    }
}

/// Whether the request never reached the backend: the connection (or its
/// TLS handshake) failed, so sending it elsewhere is safe.
fn never_sent(e: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
    if e.is::<mcp_gateway_http1::client::ConnectError>() {
        return true;
    }
    e.downcast_ref::<hyper_util::client::legacy::Error>()
        .is_some_and(|e| e.is_connect())
}

/// What a failed call's error says, with every cause in its chain (a TLS
/// failure sits two or three sources below hyper's "client error").
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let s = c.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cause = c.source();
    }
    out
}

/// What a response or an error needs to know of its backend.
struct Failing {
    name: Arc<str>,
    authority: Authority,
    timeout: Duration,
    idle: Option<Duration>,
}

/// The client's response for what the upstream call came to. Error
/// answers name the backend by its configured name only; the address and
/// the cause go to the log and, as [`UpstreamFailure`], to the audit
/// record.
fn upstream_response<B>(
    res: Result<Response<B>, CallError>,
    ctx: &Failing,
    id: Option<&RequestId>,
) -> Response<Body>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let Failing {
        name,
        authority,
        timeout,
        idle,
    } = ctx;
    let (kind, message, detail) = match res {
        Ok(res) if res.status().is_redirection() && res.status() != StatusCode::NOT_MODIFIED => {
            let to = res
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("no Location");
            let detail = format!(
                "upstream {authority} answered {} redirecting to {to}; redirects are not followed",
                res.status()
            );
            (
                ErrorKind::UpstreamUnavailable,
                format!(
                    "Bad Gateway: backend {name} answered with a redirect, which is not followed"
                ),
                detail,
            )
        }
        Ok(res) => {
            let (mut parts, body) = res.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            // The client's hop has its own version.
            parts.version = http::Version::HTTP_11;
            let body = match idle {
                Some(idle) => Body::new(IdleLimited::new(body, *idle)),
                None => Body::new(body),
            };
            return Response::from_parts(parts, body);
        }
        Err(CallError::Credentials(e)) => {
            tracing::warn!(backend = %name, upstream = %authority, error = %e, "no credentials for the upstream");
            return error_response(&e, id);
        }
        Err(CallError::Send(e)) => {
            let detail = format!("upstream {authority} failed: {}", describe(e.as_ref()));
            tracing::warn!(backend = %name, error = %detail, "upstream call failed");
            let e2 = GatewayError::new(
                ErrorKind::UpstreamUnavailable,
                format!("Bad Gateway: backend {name} is unreachable"),
            );
            let mut res = error_response(&e2, id);
            res.extensions_mut().insert(UpstreamFailure(detail.into()));
            if never_sent(e.as_ref()) {
                res.extensions_mut().insert(NotSent);
            }
            return res;
        }
        Err(CallError::TimedOut) => (
            ErrorKind::UpstreamTimeout,
            format!("Gateway Timeout: backend {name} sent no response within {timeout:?}"),
            format!("upstream {authority} sent no response head within {timeout:?}"),
        ),
    };
    tracing::warn!(backend = %name, error = %detail, "upstream call failed");
    let mut res = error_response(&GatewayError::new(kind, message), id);
    res.extensions_mut().insert(UpstreamFailure(detail.into()));
    res
}
