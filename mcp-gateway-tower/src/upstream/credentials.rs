//! Credential injection: backends get the gateway's credentials, never the
//! client's.
//!
//! The client's `Authorization` and `Cookie` are removed before any
//! request leaves for a backend (by [`HttpUpstream`](super::HttpUpstream) and [`ServiceUpstream`](super::ServiceUpstream),
//! whatever layers are stacked). A [`CredentialProvider`] attached to the
//! upstream then adds the headers the backend needs, on every request to
//! it: `POST`, `GET` streams, `DELETE` and the gateway's own session
//! clean-up. Static headers cost nothing per request; a provider may also
//! compute them per principal (a token exchange, a per-tenant key).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http::Request;
use http::{HeaderMap, HeaderName, HeaderValue};
use mcp_gateway_core::{GatewayError, Principal};

use crate::body::Body;

/// The future [`CredentialProvider::credentials`] returns.
pub type CredentialFuture<'a> =
    Pin<Box<dyn Future<Output = Result<HeaderMap, GatewayError>> + Send + 'a>>;

/// Supplies the headers a backend needs.
pub trait CredentialProvider: Send + Sync + 'static {
    /// Headers for a request to `backend` on behalf of `principal` (`None`
    /// for anonymous callers and for the gateway's own requests, such as
    /// ending an expired session). An error is answered to the client (use
    /// [`mcp_gateway_core::ErrorKind::UpstreamUnavailable`] when a token
    /// service is down) and the request is not sent.
    fn credentials<'a>(
        &'a self,
        principal: Option<&'a Principal>,
        backend: &'a str,
    ) -> CredentialFuture<'a>;

    /// Headers that never depend on the caller: applied without a future.
    /// Providers returning `Some` here are not asked per request.
    fn static_headers(&self) -> Option<&HeaderMap> {
        None
    }
}

/// Fixed headers (an API key, a service token).
#[derive(Debug, Clone, Default)]
pub struct StaticCredentials {
    headers: HeaderMap,
}

impl StaticCredentials {
    /// No headers yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a header.
    pub fn with(mut self, name: HeaderName, value: HeaderValue) -> Self {
        let mut value = value;
        // Keep secrets out of debug output and HTTP/2 header tables.
        value.set_sensitive(true);
        self.headers.insert(name, value);
        self
    }
}

impl CredentialProvider for StaticCredentials {
    fn credentials<'a>(&'a self, _: Option<&'a Principal>, _: &'a str) -> CredentialFuture<'a> {
        let h = self.headers.clone();
        Box::pin(async move { Ok(h) })
    }

    fn static_headers(&self) -> Option<&HeaderMap> {
        Some(&self.headers)
    }
}

/// Headers computed by a closure per principal (synchronously: a lookup in
/// a per-tenant table, a token minted locally). For asynchronous work
/// implement [`CredentialProvider`] directly.
pub struct FnCredentials<F>(pub F);

impl<F> std::fmt::Debug for FnCredentials<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FnCredentials")
    }
}

impl<F> CredentialProvider for FnCredentials<F>
where
    F: Fn(Option<&Principal>, &str) -> Result<HeaderMap, GatewayError> + Send + Sync + 'static,
{
    fn credentials<'a>(
        &'a self,
        p: Option<&'a Principal>,
        backend: &'a str,
    ) -> CredentialFuture<'a> {
        let r = (self.0)(p, backend);
        Box::pin(async move { r })
    }
}

impl<P: CredentialProvider + ?Sized> CredentialProvider for Arc<P> {
    fn credentials<'a>(
        &'a self,
        p: Option<&'a Principal>,
        backend: &'a str,
    ) -> CredentialFuture<'a> {
        (**self).credentials(p, backend)
    }
    fn static_headers(&self) -> Option<&HeaderMap> {
        (**self).static_headers()
    }
}

/// Credentials for one backend: the provider and the backend's name.
pub(crate) type Credentials = Option<(Arc<dyn CredentialProvider>, Arc<str>)>;

/// Applies caller-independent credentials at once; returns the provider
/// when it must be asked per request.
pub(crate) fn apply_static_credentials(
    creds: &Credentials,
    headers: &mut HeaderMap,
) -> Credentials {
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
pub(crate) async fn apply_dynamic_credentials(
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
