//! What a call through an instance tells its health, and the response body
//! of a streamed call, which ends cleanly when its instance is lost.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Response;
use http_body::{Frame, SizeHint};
use mcp_gateway_core::{ErrorKind, GatewayError, RequestId};

use super::state::{InstanceState, LossWatch};
use super::OutlierConfig;
use crate::body::{Body, BoxError};
use crate::error::error_response;
use crate::upstream::UpstreamFailure;

/// The answer to a call whose instance was lost before the response head
/// arrived.
pub(crate) fn lost_call(backend: &str, id: Option<&RequestId>) -> Response<Body> {
    let mut res = error_response(&cut_error(backend, true), id);
    res.extensions_mut().insert(UpstreamFailure(
        "the instance was lost during the call".into(),
    ));
    res
}

/// The error a call gets when its instance was lost (`lost`) or its
/// stream broke.
fn cut_error(backend: &str, lost: bool) -> GatewayError {
    let message = if lost {
        format!("Bad Gateway: the instance of backend {backend} serving this call was lost")
    } else {
        format!("Bad Gateway: the stream from backend {backend} broke before the answer")
    };
    GatewayError::new(ErrorKind::UpstreamUnavailable, message)
}

/// The body of an SSE response from an instance: counts as in flight until
/// it ends, and when the instance is lost or the stream breaks, ends with
/// a JSON-RPC error event for its request (at an event boundary) instead
/// of hanging or breaking the client's connection. A GET stream (no
/// request id) just ends, so the client reconnects.
pub(crate) struct Watched {
    inner: Body,
    counted: Outstanding,
    outlier: OutlierConfig,
    lost: LossWatch,
    backend: Arc<str>,
    id: Option<RequestId>,
    at_boundary: bool,
    done: bool,
}

impl Watched {
    /// Watches `inner`; the call stays counted in flight until this is
    /// dropped. `lost` watches its instance since the call started.
    pub(crate) fn new(
        inner: Body,
        counted: Outstanding,
        outlier: OutlierConfig,
        lost: LossWatch,
        backend: Arc<str>,
        id: Option<RequestId>,
    ) -> Self {
        Watched {
            inner,
            counted,
            outlier,
            lost,
            backend,
            id,
            at_boundary: true,
            done: false,
        }
    }

    /// The last frame: an error event for the request, when there is one
    /// and the stream is between events.
    fn end(&mut self, lost: bool) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.done = true;
        match (&self.id, self.at_boundary) {
            (Some(id), true) => {
                let json = cut_error(&self.backend, lost).to_json_body(Some(id));
                let mut out = Vec::with_capacity(json.len() + 24);
                mcp_gateway_core::sse::encode_event(
                    &mut out,
                    Some("message"),
                    None,
                    std::str::from_utf8(&json).unwrap_or_default(),
                );
                Poll::Ready(Some(Ok(Frame::data(out.into()))))
            }
            _ => Poll::Ready(None),
        }
    }
}

/// A call counted in flight on an instance until this is dropped.
pub(crate) struct Outstanding(Arc<InstanceState>);

impl Outstanding {
    pub(crate) fn start(state: &Arc<InstanceState>) -> Self {
        state.call_started();
        Outstanding(state.clone())
    }

    /// The instance the call is counted on.
    pub(crate) fn state(&self) -> &Arc<InstanceState> {
        &self.0
    }
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.0.call_ended();
    }
}

/// Whether `data` ends an SSE event (a blank line).
fn ends_event(data: &[u8]) -> bool {
    data.ends_with(b"\n\n") || data.ends_with(b"\r\n\r\n") || data.ends_with(b"\r\r")
}

impl http_body::Body for Watched {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        // The loss is looked at only when the stream waits: a stream that
        // flows is not lost, and its waiter stays registered meanwhile.
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    if !d.is_empty() {
                        this.at_boundary = ends_event(d);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                tracing::warn!(backend = %this.backend, instance = %this.counted.state().label(), error = %e, "upstream stream broke");
                if this
                    .counted
                    .state()
                    .passive_failure(&this.outlier)
                    .is_some()
                {
                    tracing::warn!(backend = %this.backend, instance = %this.counted.state().label(), "instance ejected");
                }
                if this.id.is_some() && this.at_boundary {
                    return this.end(false);
                }
                this.done = true;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => {
                if this.lost.poll_lost(cx).is_ready() {
                    tracing::warn!(backend = %this.backend, instance = %this.counted.state().label(), "instance lost: its stream ends");
                    return this.end(true);
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::sync::mpsc;

    /// A body fed by hand, frame by frame.
    struct Fed(mpsc::UnboundedReceiver<Bytes>);

    impl http_body::Body for Fed {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
        }
    }

    #[tokio::test]
    async fn a_lost_instance_ends_a_call_stream_with_an_error_event_and_a_get_stream_cleanly() {
        for (id, expect_error) in [(RequestId::from_raw_json(b"7"), true), (None, false)] {
            let state = Arc::new(InstanceState::new("a"));
            let (tx, rx) = mpsc::unbounded_channel();
            let body = Watched::new(
                Body::new(Fed(rx)),
                Outstanding::start(&state),
                OutlierConfig::default(),
                LossWatch::new(state.clone()),
                "db".into(),
                id,
            );
            tx.send(Bytes::from_static(b"data: {}\n\n")).unwrap();
            let mut body = Box::pin(body);
            let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
            assert_eq!(&first[..], b"data: {}\n\n");
            assert_eq!(state.outstanding(), 1);
            let cut = OutlierConfig {
                consecutive_failures: 1,
                ..OutlierConfig::default()
            };
            assert!(state.passive_failure(&cut).is_some());
            // The backend never ends its stream: the loss does.
            let rest = body.collect().await.unwrap().to_bytes();
            let text = String::from_utf8(rest.to_vec()).unwrap();
            assert_eq!(
                text.contains("\"code\":-32050") && text.contains("\"id\":7"),
                expect_error,
                "{text}"
            );
            assert_eq!(state.outstanding(), 0);
            drop(tx);
        }
    }
}
