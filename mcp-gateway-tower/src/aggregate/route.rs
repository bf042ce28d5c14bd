//! [`RouteLayer`]: decides early which backend of an [`Aggregate`] a named
//! request goes to, so that the layers between (limits, keyed by backend)
//! see the backend and its own name; answers -32602 for a name no backend
//! has.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

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
    /// The backend's index in the aggregate.
    pub member: usize,
    /// The backend's name.
    pub backend: Arc<str>,
    /// The tool's, prompt's or resource's name at that backend (no prefix).
    pub name: Arc<str>,
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
                let name = msg.target()?;
                Some((kind, name.to_owned(), mcp.clone()))
            });
        let Some((kind, name, mcp)) = found else {
            return Box::pin(self.inner.call(req));
        };
        let naming = &self.agg.inner.naming;
        match naming.resolve(kind, &name) {
            Ok((m, own)) => {
                req.extensions_mut().insert(Routed {
                    member: m,
                    backend: self.agg.inner.members[m].name.clone(),
                    name: own.into(),
                });
                Box::pin(self.inner.call(req))
            }
            Err(why) => {
                let inner = take_ready(&mut self.inner);
                let agg = self.agg.clone();
                Box::pin(async move {
                    let why = match why {
                        Unresolved::Unknown => {
                            agg.inner
                                .resolve_or_refresh(kind, &name)
                                .await
                                .map(|(m, own)| {
                                    req.extensions_mut().insert(Routed {
                                        member: m,
                                        backend: agg.inner.members[m].name.clone(),
                                        name: own.into(),
                                    });
                                })
                        }
                        other => Err(other),
                    };
                    match why {
                        Ok(()) => {
                            let mut inner = inner;
                            inner.call(req).await
                        }
                        Err(why) => Ok(unresolved(&agg.inner, mcp.first_id(), kind, &name, why)),
                    }
                })
            }
        }
    }
}
