//! The body type of the layers, the observer body that watches a stream
//! pass ([`ObservedBody`]), and small helpers the layers share.
//!
//! [`Body`] lives in `mcp-gateway-core` so that the HTTP/1.1 wire crate and
//! the layers speak the same type; it is re-exported here.

pub use mcp_gateway_core::body::{Body, BoxError};

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};

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

/// Polls `fut` once, outside any task (a no-op waker): how a layer acts on
/// an [`Answer`](mcp_gateway_core::Answer) that is ready at once without
/// a suspended state, keeping the future to await when it is not. Futures
/// register the waker of every poll, so the later polls' wakers count.
pub(crate) fn poll_once<F: std::future::Future + Unpin>(fut: &mut F) -> std::task::Poll<F::Output> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    std::pin::Pin::new(fut).poll(&mut cx)
}

/// How a watched body ended (see [`ObservedBody`]).
#[derive(Debug)]
pub enum BodyEnd<'a> {
    /// Its last frame was read.
    Complete,
    /// Reading it failed.
    Failed(&'a BoxError),
    /// It was dropped before its end: the client went away, or the server
    /// stopped reading.
    Dropped,
}

/// The hooks of an [`ObservedBody`], in the style of tower-http's
/// `on_body_chunk` / `on_eos`: `on_data` for each data frame as it passes,
/// `on_end` exactly once.
pub trait BodyObserver: Send + 'static {
    /// A data frame passed on to the reader.
    fn on_data(&mut self, data: &Bytes) {
        let _ = data;
    }
    /// The body ended. Called in the poll that reads the end (before the
    /// server writes the last bytes), or on drop.
    fn on_end(&mut self, end: BodyEnd<'_>);
}

pin_project_lite::pin_project! {
    /// A response body passed through unchanged while an observer watches
    /// it: what "guards in the body" need (a permit released, a record
    /// emitted, a metric observed when a stream ends, not when its head
    /// was sent), written once.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use mcp_gateway_tower::body::{Body, BodyEnd, BodyObserver, ObservedBody};
    ///
    /// struct Count(usize);
    /// impl BodyObserver for Count {
    ///     fn on_data(&mut self, data: &Bytes) {
    ///         self.0 += data.len();
    ///     }
    ///     fn on_end(&mut self, end: BodyEnd<'_>) {
    ///         println!("{} bytes, {end:?}", self.0);
    ///     }
    /// }
    /// let body = Body::new(ObservedBody::new(Body::from("hello"), Count(0)));
    /// # drop(body);
    /// ```
    pub struct ObservedBody<O: BodyObserver> {
        #[pin]
        inner: Body,
        observer: Option<O>,
    }

    impl<O: BodyObserver> PinnedDrop for ObservedBody<O> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(mut o) = this.project().observer.take() {
                o.on_end(BodyEnd::Dropped);
            }
        }
    }
}

impl<O: BodyObserver> ObservedBody<O> {
    /// Watches `inner` with `observer`.
    pub fn new(inner: Body, observer: O) -> Self {
        ObservedBody {
            inner,
            observer: Some(observer),
        }
    }
}

impl<O: BodyObserver> std::fmt::Debug for ObservedBody<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObservedBody")
            .field("ended", &self.observer.is_none())
            .finish_non_exhaustive()
    }
}

impl<O: BodyObserver> http_body::Body for ObservedBody<O> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let res = this.inner.as_mut().poll_frame(cx);
        let Some(o) = this.observer.as_mut() else {
            return res;
        };
        let end = match &res {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    o.on_data(d);
                }
                // The last frame: the end is known now, not at the next poll.
                this.inner.is_end_stream().then_some(BodyEnd::Complete)
            }
            Poll::Ready(Some(Err(e))) => Some(BodyEnd::Failed(e)),
            Poll::Ready(None) => Some(BodyEnd::Complete),
            Poll::Pending => None,
        };
        if let Some(end) = end {
            o.on_end(end);
            *this.observer = None;
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
