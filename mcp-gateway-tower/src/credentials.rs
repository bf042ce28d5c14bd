//! Credential injection: backends get the gateway's credentials, never the
//! client's.
//!
//! The client's `Authorization` and `Cookie` are removed before any
//! request leaves for a backend (by [`crate::upstream::HttpUpstream`],
//! whatever layers are stacked). A [`CredentialProvider`] attached to the
//! upstream then adds the headers the backend needs, on every request to
//! it: `POST`, `GET` streams, `DELETE` and the gateway's own session
//! clean-up. Static headers cost nothing per request; a provider may also
//! compute them per principal (a token exchange, a per-tenant key).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};
use mcp_gateway_core::{GatewayError, Principal};

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
