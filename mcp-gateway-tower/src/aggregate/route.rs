//! [`RouteLayer`]: decides early which backend of an [`Aggregate`] a named
//! request goes to, so that the layers between (limits, keyed by backend)
//! see the backend and its own name; answers -32602 for a name no backend
//! has.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Method as HttpMethod, Request, Response};
use mcp_gateway_core::jsonrpc::Method;
use mcp_gateway_core::McpRequest;
use tower_layer::Layer;
use tower_service::Service;

use super::names::{Kind, Unresolved};
use super::service::{unresolved, Aggregate};
use crate::body::{take_ready, Body, BoxFuture};

/// Where the [`RouteLayer`] sent a named request: in its extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    member: usize,
    backend: Arc<str>,
    /// UTF-8: a slice of the request body's name, or a copy.
    name: Bytes,
}

impl Routed {
    pub(crate) fn new(member: usize, backend: Arc<str>, name: Bytes) -> Self {
        debug_assert!(std::str::from_utf8(&name).is_ok());
        Routed {
            member,
            backend,
            name,
        }
    }

    /// The backend's index in the aggregate.
    pub fn member(&self) -> usize {
        self.member
    }

    /// The backend's name.
    pub fn backend(&self) -> &Arc<str> {
        &self.backend
    }

    /// The tool's, prompt's or resource's name at that backend (no prefix).
    pub fn name(&self) -> &str {
        std::str::from_utf8(&self.name).unwrap_or_default()
    }

    /// [`name`](Self::name) as UTF-8 bytes (no check).
    pub(crate) fn name_bytes(&self) -> &Bytes {
        &self.name
    }
}

/// Routes `tools/call`, `prompts/get` and `resources/read` /
/// `subscribe` / `unsubscribe` by name before the layers inside it: put it
/// right after the JSON-RPC layer. See [`Aggregate::route_layer`].
#[derive(Clone, Debug)]
pub struct RouteLayer {
    agg: Aggregate,
}

impl RouteLayer {
    /// Routes for `agg`.
    pub fn new(agg: Aggregate) -> Self {
        RouteLayer { agg }
    }
}

impl<S> Layer<S> for RouteLayer {
    type Service = RouteService<S>;
    fn layer(&self, inner: S) -> RouteService<S> {
        RouteService {
            inner,
            agg: self.agg.clone(),
        }
    }
}

/// The service of [`RouteLayer`].
#[derive(Clone, Debug)]
pub struct RouteService<S> {
    inner: S,
    agg: Aggregate,
}

fn kind_of(m: &Method) -> Option<Kind> {
    match m {
        Method::ToolsCall => Some(Kind::Tool),
        Method::PromptsGet => Some(Kind::Prompt),
        Method::ResourcesRead | Method::ResourcesSubscribe | Method::ResourcesUnsubscribe => {
            Some(Kind::Resource)
        }
        _ => None,
    }
}

impl<S> Service<Request<Body>> for RouteService<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> BoxFuture {
        let found = (req.method() == HttpMethod::POST)
            .then(|| req.extensions().get::<McpRequest>())
            .flatten()
            .and_then(|mcp| {
                let msg = mcp.message()?;
                let method = msg.method()?;
                if mcp.era() == mcp_gateway_core::Era::Stateless
                    && matches!(
                        method,
                        Method::ResourcesSubscribe | Method::ResourcesUnsubscribe
                    )
                {
                    // Removed in that revision: the backend says so.
                    return None;
                }
                let kind = kind_of(method)?;
                Some((kind, msg.target_text()?.clone()))
            });
        let Some((kind, name)) = found else {
            return Box::pin(self.inner.call(req));
        };
        let inner = &self.agg.inner;
        match inner.naming.resolve(kind, name.as_str()) {
            Ok((m, own)) => {
                // The backend's name is the end of the client's: shared.
                let own = name.as_bytes().slice_ref(own.as_bytes());
                let routed = Routed::new(m, inner.members[m].name.clone(), own);
                req.extensions_mut().insert(routed);
                Box::pin(self.inner.call(req))
            }
            Err(why) => {
                let mut svc = take_ready(&mut self.inner);
                let agg = self.agg.clone();
                Box::pin(async move {
                    let inner = &agg.inner;
                    let why = match why {
                        Unresolved::Unknown => {
                            match inner.resolve_or_refresh(kind, name.as_str()).await {
                                Ok((m, own)) => {
                                    let b = inner.members[m].name.clone();
                                    req.extensions_mut().insert(Routed::new(
                                        m,
                                        b,
                                        Bytes::from(own),
                                    ));
                                    return svc.call(req).await;
                                }
                                Err(e) => e,
                            }
                        }
                        other => other,
                    };
                    let id = req
                        .extensions()
                        .get::<McpRequest>()
                        .and_then(|m| m.first_id().cloned());
                    Ok(unresolved(inner, id.as_ref(), kind, name.as_str(), why))
                })
            }
        }
    }
}
