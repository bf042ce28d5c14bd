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

use std::sync::Arc;

use http::Request;
use http::{HeaderMap, HeaderName, HeaderValue};
use mcp_gateway_core::{Answer, GatewayError, Principal};

use crate::body::Body;

/// Supplies the headers a backend needs.
pub trait CredentialProvider: Send + Sync + 'static {
    /// Headers for a request to `backend` on behalf of `principal` (`None`
    /// for anonymous callers and for the gateway's own requests, such as
    /// ending an expired session). An error is answered to the client (use
    /// [`mcp_gateway_core::ErrorKind::UpstreamUnavailable`] when a token
    /// service is down) and the request is not sent.
    ///
    /// Answer at once ([`Answer::ready`]) when nothing waits (static
    /// headers, a table lookup): the request leaves without a suspended
    /// state. A pending answer (a token exchange) is awaited within the
    /// upstream's response timeout; it must be lazy (see [`Answer`]).
    fn credentials<'a>(
        &'a self,
        principal: Option<&'a Principal>,
        backend: &'a str,
    ) -> Answer<'a, Result<HeaderMap, GatewayError>>;
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
    fn credentials<'a>(
        &'a self,
        _: Option<&'a Principal>,
        _: &'a str,
    ) -> Answer<'a, Result<HeaderMap, GatewayError>> {
        Answer::ready(Ok(self.headers.clone()))
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
    ) -> Answer<'a, Result<HeaderMap, GatewayError>> {
        Answer::ready((self.0)(p, backend))
    }
}

impl<P: CredentialProvider + ?Sized> CredentialProvider for Arc<P> {
    fn credentials<'a>(
        &'a self,
        p: Option<&'a Principal>,
        backend: &'a str,
    ) -> Answer<'a, Result<HeaderMap, GatewayError>> {
        (**self).credentials(p, backend)
    }
}

/// Credentials for one backend: the provider and the backend's name.
pub(crate) type Credentials = Option<(Arc<dyn CredentialProvider>, Arc<str>)>;

/// Asks the provider for this request's headers and adds those it has at
/// once. `Ok(Some(_))`: the answer is pending, ask again in the call's
/// task with [`apply_pending_credentials`].
pub(crate) fn apply_ready_credentials(
    creds: &Credentials,
    principal: Option<&Principal>,
    headers: &mut HeaderMap,
) -> Result<Credentials, GatewayError> {
    let Some((provider, backend)) = creds else {
        return Ok(None);
    };
    match provider.credentials(principal, backend).now() {
        Ok(h) => {
            merge(headers, h?);
            Ok(None)
        }
        Err(_pending) => Ok(Some((provider.clone(), backend.clone()))),
    }
}

/// Awaits a provider whose answer was pending for this request's principal.
pub(crate) async fn apply_pending_credentials(
    creds: Credentials,
    req: &mut Request<Body>,
) -> Result<(), GatewayError> {
    let Some((provider, backend)) = creds else {
        return Ok(());
    };
    let principal = req.extensions().get::<Principal>().cloned();
    let h = provider.credentials(principal.as_ref(), &backend).await?;
    merge(req.headers_mut(), h);
    Ok(())
}

/// Adds `h` to `headers`: a name given replaces the client's value, its
/// further values are appended.
fn merge(headers: &mut HeaderMap, h: HeaderMap) {
    let mut last = None;
    for (k, v) in h {
        // `HeaderMap`'s iterator names a header once, then `None` for its
        // further values.
        match k {
            Some(k) => {
                headers.insert(k.clone(), v);
                last = Some(k);
            }
            None => {
                if let Some(k) = &last {
                    headers.append(k.clone(), v);
                }
            }
        }
    }
}
