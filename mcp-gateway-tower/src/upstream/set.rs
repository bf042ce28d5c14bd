//! [`Upstreams`]: the instances of one backend, and which one serves a
//! request.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower::util::BoxCloneSyncService;
use tower::ServiceExt;
use tower_service::Service;

use super::{BoxUpstream, HttpUpstream, HttpUpstreamConfig};
use crate::body::{Body, BoxError, BoxFuture};

/// Which instance of the backend serves a request; set by the session
/// router in the request extensions. Absent means instance 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Instance(pub usize);

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
