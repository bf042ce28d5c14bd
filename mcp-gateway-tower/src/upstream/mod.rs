//! Backends: Streamable HTTP servers over `http://` or `https://`
//! ([`HttpUpstream`]), any tower service ([`ServiceUpstream`], e.g. rmcp's
//! `StreamableHttpService` in-process), and [`Upstreams`], the set of
//! instances of one backend that the session router dispatches to by
//! [`Instance`].
//!
//! Every upstream looks the same to the layers above it: a
//! `Service<Request<Body>, Response = Response<Body>, Error = Infallible>`.
//! Every failure is a response: a refused or broken connection, a TLS
//! failure or a redirect is `502` (-32050), a backend that does not answer
//! in time is `504` (-32051); the gateway never hangs on a dead backend.
//!
//! | module | holds |
//! | --- | --- |
//! | `client` | the HTTP(S) client: hyper with rustls, or the built-in HTTP/1.1 pool for `http://` |
//! | [`tls`] | the client TLS settings of a backend ([`TlsClientConfig`]), and the PEM and provider helpers the binary's server side shares |
//! | [`credentials`] | the headers the gateway adds towards a backend |
//! | `service` | [`ServiceUpstream`] |
//! | `idle` | the idle limit of an upstream response stream |
//! | `own` | the requests the gateway sends on its own behalf (probes, failover, session ends) |
//! | [`health`] | instance health: active probes, passive outlier detection, loss |
//! | `set` | [`Upstreams`], [`Instance`], [`Instances`] |
//! | [`bridge`] | stdio and legacy HTTP+SSE servers served as Streamable HTTP ([`bridge::Bridge`]) |

use std::convert::Infallible;

use http::{Request, Response};
use tower::util::BoxCloneSyncService;

use crate::body::Body;

pub mod bridge;
mod client;
pub mod credentials;
mod headers;
pub mod health;
mod idle;
mod own;
mod service;
mod set;
#[cfg(test)]
mod tests;
#[cfg(feature = "tls")]
pub mod tls;

pub use self::client::{ConnectObserver, HttpClient, HttpUpstream, HttpUpstreamConfig};
pub(crate) use self::own::{own_request, INITIALIZED};
pub use self::service::ServiceUpstream;
pub use self::set::{Instance, InstanceInfo, Instances, UpstreamInstance, Upstreams};
#[cfg(feature = "tls")]
pub use self::tls::TlsClientConfig;

/// Why an upstream call failed, in the words of the network (address,
/// OS error): in the extensions of the gateway's error response, for the
/// audit record and the log. The client's answer names only the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamFailure(pub std::sync::Arc<str>);

/// Marks an error response for a request that never reached the backend
/// (its connection could not be made): the session router may send it to
/// another instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotSent;

/// A type-erased upstream service: what [`Upstreams`] holds.
pub type BoxUpstream = BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>;
