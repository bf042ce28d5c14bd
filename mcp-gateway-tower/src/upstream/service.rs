//! [`ServiceUpstream`]: any tower service as a backend.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use mcp_gateway_core::{ErrorKind, GatewayError, McpRequest};
use tower::ServiceExt;
use tower_service::Service;

use super::credentials::{
    apply_pending_credentials, apply_ready_credentials, CredentialProvider, Credentials,
};
use super::headers::strip_client_credentials;
use crate::body::{Body, BoxError, BoxFuture};
use crate::error::error_response;

/// Any tower service as a backend (for example rmcp's
/// `StreamableHttpService` in the same process). Errors become `502`. As
/// with [`HttpUpstream`](super::HttpUpstream), the client's `Authorization` and `Cookie` are
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
    /// [`HttpUpstream::with_credentials`](super::HttpUpstream::with_credentials)).
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
        strip_client_credentials(req.headers_mut());
        let (mut parts, body) = req.into_parts();
        // The principal is looked up only for a provider to ask.
        let principal = self
            .credentials
            .as_ref()
            .and_then(|_| parts.extensions.get::<mcp_gateway_core::Principal>());
        let ready = apply_ready_credentials(&self.credentials, principal, &mut parts.headers);
        let mut req = Request::from_parts(parts, body);
        Box::pin(async move {
            let applied = match ready {
                Ok(pending) => apply_pending_credentials(pending, &mut req).await,
                Err(e) => Err(e),
            };
            if let Err(e) = applied {
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
                    tracing::warn!(error = %e, "in-process upstream service failed");
                    let err = GatewayError::new(
                        ErrorKind::UpstreamUnavailable,
                        "Bad Gateway: the backend failed",
                    );
                    let mut res = error_response(&err, None);
                    res.extensions_mut()
                        .insert(super::UpstreamFailure(e.to_string().into()));
                    Ok(res)
                }
            }
        })
    }
}
