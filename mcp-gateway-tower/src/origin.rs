//! Origin / Host validation against DNS rebinding.
//!
//! A malicious web page can make a browser send requests to a gateway on the
//! user's machine by pointing its own DNS name at `127.0.0.1`. The browser
//! then sends that page's `Host` and `Origin`. [`OriginLayer`] refuses any
//! request whose `Host` or `Origin` is not allowed with `403` and a JSON-RPC
//! error, before anything else runs.
//!
//! ```
//! use mcp_gateway_tower::origin::{OriginLayer, OriginPolicy};
//! use mcp_gateway_tower::Body;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let svc = ServiceBuilder::new()
//!     .layer(OriginLayer::new(OriginPolicy::loopback()))
//!     .service_fn(|_req: http::Request<Body>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(Body::empty()))
//!     });
//! let req = http::Request::post("/mcp")
//!     .header("host", "evil.example.com")
//!     .body(Body::empty())
//!     .unwrap();
//! let res = svc.oneshot(req).await.unwrap();
//! assert_eq!(res.status(), 403);
//! # }
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderMap, Request, Response};
use mcp_gateway_core::ErrorKind;
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::body::Body;
use crate::error::respond;

/// Which `Host` and `Origin` values are allowed.
#[derive(Debug, Clone)]
pub struct OriginPolicy {
    hosts: Option<Vec<HostPattern>>,
    origins: OriginRule,
}

#[derive(Debug, Clone)]
enum OriginRule {
    Any,
    /// `Origin`, when present, must name the same host and port as `Host`.
    SameAsHost,
    List(Vec<OriginPattern>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct HostPattern {
    host: String,
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct OriginPattern {
    scheme: String,
    host: String,
    /// `None` = any port (`:*`).
    port: Option<u16>,
    null: bool,
}

const LOOPBACK: [&str; 3] = ["localhost", "127.0.0.1", "[::1]"];

impl OriginPolicy {
    /// Only loopback names (`localhost`, `127.0.0.1`, `[::1]`, any port) as
    /// `Host`, and only `http(s)://` loopback origins. The default for a
    /// gateway bound to a loopback address.
    pub fn loopback() -> Self {
        OriginPolicy {
            hosts: Some(
                LOOPBACK
                    .iter()
                    .map(|h| HostPattern {
                        host: h.to_string(),
                        port: None,
                    })
                    .collect(),
            ),
            origins: OriginRule::List(
                LOOPBACK
                    .iter()
                    .flat_map(|h| {
                        ["http", "https"].map(|s| OriginPattern {
                            scheme: s.into(),
                            host: h.to_string(),
                            port: None,
                            null: false,
                        })
                    })
                    .collect(),
            ),
        }
    }

    /// Any `Host`; a browser `Origin` must match the `Host` it was sent to.
    /// The default for a gateway bound to a public address.
    pub fn same_origin() -> Self {
        OriginPolicy {
            hosts: None,
            origins: OriginRule::SameAsHost,
        }
    }

    /// No checks at all (for gateways behind a proxy that already checks).
    pub fn allow_any() -> Self {
        OriginPolicy {
            hosts: None,
            origins: OriginRule::Any,
        }
    }

    /// Adds allowed `Host` values: `name` (any port) or `name:port`.
    pub fn allow_hosts<I: IntoIterator<Item = S>, S: AsRef<str>>(mut self, hosts: I) -> Self {
        let list = self.hosts.get_or_insert_with(Vec::new);
        for h in hosts {
            if let Some((host, port)) = split_host_port(h.as_ref()) {
                list.push(HostPattern {
                    host: host.to_owned(),
                    port,
                });
            }
        }
        self
    }

    /// Adds allowed origins: `scheme://host`, `scheme://host:port`,
    /// `scheme://host:*` (any port), or `null`.
    pub fn allow_origins<I: IntoIterator<Item = S>, S: AsRef<str>>(mut self, origins: I) -> Self {
        let mut list = match std::mem::replace(&mut self.origins, OriginRule::Any) {
            OriginRule::List(l) => l,
            _ => Vec::new(),
        };
        for o in origins {
            if let Some(p) = parse_origin_pattern(o.as_ref()) {
                list.push(p);
            }
        }
        self.origins = OriginRule::List(list);
        self
    }

    /// Checks the request headers (and the URI authority for HTTP/2).
    pub fn check(
        &self,
        headers: &HeaderMap,
        uri_authority: Option<&str>,
    ) -> Result<(), &'static str> {
        let host_raw = match headers.get(http::header::HOST) {
            Some(h) => Some(h.to_str().map_err(|_| "Host header is not valid text")?),
            None => uri_authority,
        };
        let host = host_raw.and_then(split_host_port);
        if let Some(allowed) = &self.hosts {
            let Some((name, port)) = &host else {
                return Err("missing or invalid Host header");
            };
            if !allowed
                .iter()
                .any(|p| p.host.eq_ignore_ascii_case(name) && (p.port.is_none() || p.port == *port))
            {
                return Err("Host not allowed");
            }
        }
        let Some(origin) = headers.get(http::header::ORIGIN) else {
            // Non-browser clients send no Origin; DNS rebinding needs a browser.
            return Ok(());
        };
        let origin = origin
            .to_str()
            .map_err(|_| "Origin header is not valid text")?;
        match &self.origins {
            OriginRule::Any => Ok(()),
            OriginRule::SameAsHost => {
                let o = parse_origin_pattern(origin).ok_or("invalid Origin header")?;
                let Some((name, port)) = &host else {
                    return Err("missing Host header");
                };
                let oport = o.port.or(default_port(&o.scheme));
                let hport = port.or(default_port(&o.scheme));
                if !o.null && o.host.eq_ignore_ascii_case(name) && oport == hport {
                    Ok(())
                } else {
                    Err("Origin does not match Host")
                }
            }
            OriginRule::List(list) => {
                let o = parse_origin_pattern(origin).ok_or("invalid Origin header")?;
                let oport = o.port.or(default_port(&o.scheme));
                let ok = list.iter().any(|p| {
                    if p.null || o.null {
                        return p.null && o.null;
                    }
                    p.scheme.eq_ignore_ascii_case(&o.scheme)
                        && p.host.eq_ignore_ascii_case(&o.host)
                        && (p.port.is_none() || p.port == oport)
                });
                if ok {
                    Ok(())
                } else {
                    Err("Origin not allowed")
                }
            }
        }
    }
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

/// `host[:port]`, `[v6][:port]` → (host, port). `None` for nonsense.
/// `host[:port]` or `[v6]:port`, borrowed (this runs on every request).
fn split_host_port(s: &str) -> Option<(&str, Option<u16>)> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if s.starts_with('[') {
        let end = s.find(']')?;
        let host = &s[..=end];
        let rest = &s[end + 1..];
        let port = match rest.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None if rest.is_empty() => None,
            None => return None,
        };
        return Some((host, port));
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => Some((h, Some(p.parse().ok()?))),
        Some(_) => None,
        None => Some((s, None)),
    }
}

fn parse_origin_pattern(s: &str) -> Option<OriginPattern> {
    if s.eq_ignore_ascii_case("null") {
        return Some(OriginPattern {
            scheme: String::new(),
            host: String::new(),
            port: None,
            null: true,
        });
    }
    let (scheme, rest) = s.split_once("://")?;
    let rest = rest.trim_end_matches('/');
    let (host, port) = if let Some(h) = rest.strip_suffix(":*") {
        (h.to_string(), None)
    } else {
        let (h, p) = split_host_port(rest)?;
        (h.to_owned(), p.or(default_port(scheme)))
    };
    Some(OriginPattern {
        scheme: scheme.to_ascii_lowercase(),
        host,
        port,
        null: false,
    })
}

/// Applies an [`OriginPolicy`] to every request. See the module docs.
#[derive(Debug, Clone)]
pub struct OriginLayer {
    policy: Arc<OriginPolicy>,
}

impl OriginLayer {
    /// A layer enforcing `policy`.
    pub fn new(policy: OriginPolicy) -> Self {
        OriginLayer {
            policy: Arc::new(policy),
        }
    }
}

impl<S> Layer<S> for OriginLayer {
    type Service = Origin<S>;
    fn layer(&self, inner: S) -> Origin<S> {
        Origin {
            inner,
            policy: self.policy.clone(),
        }
    }
}

/// The service built by [`OriginLayer`].
#[derive(Debug, Clone)]
pub struct Origin<S> {
    inner: S,
    policy: Arc<OriginPolicy>,
}

impl<S> Origin<S> {
    /// Wraps `inner` with `policy`.
    pub fn new(inner: S, policy: OriginPolicy) -> Self {
        Origin {
            inner,
            policy: Arc::new(policy),
        }
    }
    /// A layer for `policy`.
    pub fn layer(policy: OriginPolicy) -> OriginLayer {
        OriginLayer::new(policy)
    }
    inner_accessors!();
}

impl<S, B> Service<Request<B>> for Origin<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = Infallible>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if let Err(why) = host_framing(&req) {
            tracing::debug!(reason = why, "bad Host");
            return ResponseFuture {
                inner: Inner::Refused {
                    response: Some(respond(
                        ErrorKind::InvalidRequest,
                        format!("Bad Request: {why}"),
                    )),
                },
            };
        }
        let authority = req.uri().authority().map(|a| a.as_str());
        match self.policy.check(req.headers(), authority) {
            Ok(()) => ResponseFuture {
                inner: Inner::Future {
                    future: self.inner.call(req),
                },
            },
            Err(why) => {
                tracing::debug!(reason = why, "refused by origin policy");
                ResponseFuture {
                    inner: Inner::Refused {
                        response: Some(respond(ErrorKind::Forbidden, format!("Forbidden: {why}"))),
                    },
                }
            }
        }
    }
}

/// The `Host` rules of RFC 9112 §3.2, whichever server read the request:
/// an HTTP/1.1 request needs exactly one `Host`, and an absolute-form
/// target must name the same authority as its `Host`. Checked here, the
/// first layer, so that no later layer (nor the origin check, nor a
/// backend) can be shown one host while routing by another.
fn host_framing<B>(req: &Request<B>) -> Result<(), &'static str> {
    let mut hosts = req.headers().get_all(http::header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err("more than one Host header");
    }
    match (host, req.uri().authority()) {
        (None, None) if req.version() == http::Version::HTTP_11 => {
            Err("an HTTP/1.1 request needs a Host header")
        }
        (Some(h), Some(a))
            if req.version() <= http::Version::HTTP_11
                && !h.as_bytes().eq_ignore_ascii_case(a.as_str().as_bytes()) =>
        {
            Err("the request target's authority and the Host header differ")
        }
        _ => Ok(()),
    }
}

pin_project! {
    /// Future of [`Origin`]: the inner future, or an immediate refusal.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Inner<F>,
    }
}

pin_project! {
    #[project = InnerProj]
    enum Inner<F> {
        Future { #[pin] future: F },
        Refused { response: Option<Response<Body>> },
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, Infallible>>,
{
    type Output = Result<Response<Body>, Infallible>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().inner.project() {
            InnerProj::Future { future } => future.poll(cx),
            InnerProj::Refused { response } => {
                Poll::Ready(Ok(response.take().expect("polled after completion")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        m
    }

    #[test]
    fn loopback_policy() {
        let p = OriginPolicy::loopback();
        assert!(p.check(&h(&[("host", "127.0.0.1:8080")]), None).is_ok());
        assert!(p.check(&h(&[("host", "localhost")]), None).is_ok());
        assert!(p.check(&h(&[("host", "[::1]:3000")]), None).is_ok());
        assert!(p
            .check(
                &h(&[("host", "localhost:1"), ("origin", "http://localhost:5173")]),
                None
            )
            .is_ok());
        assert!(p.check(&h(&[("host", "evil.example.com")]), None).is_err());
        assert!(p
            .check(
                &h(&[("host", "localhost"), ("origin", "http://evil.example.com")]),
                None
            )
            .is_err());
        assert!(p
            .check(&h(&[("host", "localhost"), ("origin", "null")]), None)
            .is_err());
        assert!(p.check(&h(&[]), None).is_err(), "no Host at all");
        assert!(
            p.check(&h(&[]), Some("127.0.0.1:9")).is_ok(),
            "HTTP/2 authority"
        );
    }

    #[test]
    fn same_origin_policy() {
        let p = OriginPolicy::same_origin();
        assert!(p.check(&h(&[("host", "gw.example.com")]), None).is_ok());
        assert!(
            p.check(
                &h(&[
                    ("host", "gw.example.com"),
                    ("origin", "https://gw.example.com")
                ]),
                None
            )
            .is_ok(),
            "a Host without port means the scheme's default port"
        );
        assert!(p
            .check(
                &h(&[
                    ("host", "gw.example.com:443"),
                    ("origin", "https://gw.example.com")
                ]),
                None
            )
            .is_ok());
        assert!(p
            .check(
                &h(&[("host", "gw.example.com"), ("origin", "http://evil.com")]),
                None
            )
            .is_err());
    }

    #[test]
    fn explicit_lists() {
        let p = OriginPolicy::allow_any()
            .allow_hosts(["gw.example.com"])
            .allow_origins(["https://app.example.com", "http://localhost:*"]);
        assert!(p
            .check(
                &h(&[
                    ("host", "gw.example.com"),
                    ("origin", "https://app.example.com:443")
                ]),
                None
            )
            .is_ok());
        assert!(p
            .check(
                &h(&[
                    ("host", "gw.example.com"),
                    ("origin", "http://localhost:1234")
                ]),
                None
            )
            .is_ok());
        assert!(p
            .check(
                &h(&[
                    ("host", "gw.example.com"),
                    ("origin", "https://app.example.com:8443")
                ]),
                None
            )
            .is_err());
        assert!(p.check(&h(&[("host", "other.example.com")]), None).is_err());
    }

    #[tokio::test]
    async fn host_framing_follows_rfc_9112() {
        use tower::ServiceExt;
        let svc = OriginLayer::new(OriginPolicy::allow_any()).layer(tower::service_fn(
            |_req: Request<crate::Body>| async {
                Ok::<_, std::convert::Infallible>(http::Response::new(crate::Body::empty()))
            },
        ));
        let status = |req: Request<crate::Body>| {
            let svc = svc.clone();
            async move { svc.oneshot(req).await.unwrap().status().as_u16() }
        };
        let req = |uri: &str, hosts: &[&str], version| {
            let mut b = Request::post(uri).version(version);
            for h in hosts {
                b = b.header("host", *h);
            }
            b.body(crate::Body::empty()).unwrap()
        };
        use http::Version;
        assert_eq!(status(req("/mcp", &["gw"], Version::HTTP_11)).await, 200);
        // Missing or repeated Host: 400.
        assert_eq!(status(req("/mcp", &[], Version::HTTP_11)).await, 400);
        assert_eq!(
            status(req("/mcp", &["gw", "gw"], Version::HTTP_11)).await,
            400
        );
        assert_eq!(
            status(req("/mcp", &["a", "b"], Version::HTTP_11)).await,
            400
        );
        // HTTP/1.0 may go without.
        assert_eq!(status(req("/mcp", &[], Version::HTTP_10)).await, 200);
        // Absolute form: the authority must be the Host.
        assert_eq!(
            status(req("http://gw/mcp", &["gw"], Version::HTTP_11)).await,
            200
        );
        assert_eq!(
            status(req("http://evil/mcp", &["gw"], Version::HTTP_11)).await,
            400
        );
        assert_eq!(
            status(req("http://gw/mcp", &[], Version::HTTP_11)).await,
            200
        );
        // HTTP/2 carries :authority; a Host beside it is the origin check's.
        assert_eq!(
            status(req("http://gw/mcp", &[], Version::HTTP_2)).await,
            200
        );
    }
}
