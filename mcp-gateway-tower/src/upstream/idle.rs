//! The idle limit of an upstream response body: a stream that brings no
//! byte for too long ends with an error instead of holding the client, a
//! connection and the call's limits for ever.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::body::BoxError;

pin_project_lite::pin_project! {
    /// `B`, ended with an error after `idle` without a frame. The timer is
    /// armed only when the body first waits (a JSON answer that is already
    /// here never touches it) and re-armed lazily after frames, so a busy
    /// stream costs one clock reading per wait, not per frame.
    pub(crate) struct IdleLimited<B> {
        #[pin]
        inner: B,
        idle: Duration,
        timer: Option<Pin<Box<Sleep>>>,
        moved: bool,
    }
}

impl<B> IdleLimited<B> {
    pub(crate) fn new(inner: B, idle: Duration) -> Self {
        IdleLimited {
            inner,
            idle,
            timer: None,
            moved: false,
        }
    }
}

/// The error an idle stream ends with.
#[derive(Debug)]
pub(crate) struct StreamIdle(pub(crate) Duration);

impl std::fmt::Display for StreamIdle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the backend's stream sent nothing for {:?}", self.0)
    }
}

impl std::error::Error for StreamIdle {}

impl<B> HttpBody for IdleLimited<B>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(f) => {
                *this.moved = true;
                Poll::Ready(f.map(|r| r.map_err(Into::into)))
            }
            Poll::Pending => {
                let deadline = Instant::now() + *this.idle;
                let timer = match this.timer {
                    Some(t) => {
                        if *this.moved {
                            t.as_mut().reset(deadline);
                        }
                        t
                    }
                    None => this
                        .timer
                        .insert(Box::pin(tokio::time::sleep_until(deadline))),
                };
                *this.moved = false;
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        tracing::warn!(idle = ?this.idle, "upstream stream idle: ended");
                        Poll::Ready(Some(Err(Box::new(StreamIdle(*this.idle)))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// A body fed through a channel.
    struct Fed(tokio::sync::mpsc::Receiver<Bytes>);

    impl HttpBody for Fed {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_stream_ends_with_an_error_and_a_lively_one_does_not() {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut body = std::pin::pin!(IdleLimited::new(Fed(rx), Duration::from_secs(10)));
        let feeder = tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_secs(6)).await;
                tx.send(Bytes::from_static(b"data: x\n\n")).await.unwrap();
            }
            // Then silence, sender kept.
            tokio::time::sleep(Duration::from_secs(3600)).await;
            drop(tx);
        });
        for _ in 0..5 {
            let f = body.frame().await.unwrap().unwrap();
            assert!(f.is_data(), "every 6 s stays under the 10 s limit");
        }
        let start = Instant::now();
        let e = body.frame().await.unwrap().unwrap_err();
        assert!(e.is::<StreamIdle>(), "{e}");
        assert_eq!(start.elapsed(), Duration::from_secs(10));
        feeder.abort();
    }
}
