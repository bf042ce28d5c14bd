//! The body type of the layers, and small helpers they share.
//!
//! [`Body`] lives in `mcp-gateway-core` so that the HTTP/1.1 wire crate and
//! the layers speak the same type; it is re-exported here.

pub use mcp_gateway_core::body::{Body, BoxError};

/// The boxed response future the gateway's layers return.
pub(crate) type BoxFuture = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = Result<http::Response<Body>, std::convert::Infallible>>
            + Send,
    >,
>;

/// A mutex's guard, poisoned or not: the state behind the crate's mutexes
/// (audit batches, a streamed request body's hand-over) stays whole if a
/// holder panics, so a poisoned lock is still good.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Takes the service `poll_ready` prepared and leaves a clone in its place:
/// tower's way to use a service from a `'static` future.
pub(crate) fn take_ready<S: Clone>(inner: &mut S) -> S {
    let clone = inner.clone();
    std::mem::replace(inner, clone)
}
