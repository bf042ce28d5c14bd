//! A request body that streams from the connection to the service as it is asked for.

#[allow(unused_imports)]
use super::*;

/// The connection's side of a streamed request body.
pub(crate) struct Feed {
    pub(crate) shared: Arc<Mutex<FeedState>>,
    pub(crate) framing: Framing,
    /// The whole body was handed over (or failed).
    pub(crate) done: bool,
    /// The body failed: the connection is not at a message boundary.
    pub(crate) failed: bool,
}

/// What the connection and the body share.
#[derive(Default)]
pub(crate) struct FeedState {
    /// The next frame, not yet taken by the body.
    frame: Option<Frame<Bytes>>,
    /// No frame after `frame`.
    end: bool,
    error: Option<&'static str>,
    /// The body asked for data.
    want: bool,
    /// The task reading the body.
    reader: Option<Waker>,
    /// The connection's task, to wake when the body asks.
    conn: Option<Waker>,
    /// The body was dropped: nothing more is wanted.
    dropped: bool,
}

pub(crate) enum FeedStep {
    /// A frame was handed over, or nothing is wanted right now.
    Fed,
    Idle,
    /// More bytes from the client are needed.
    NeedMore,
    /// The body is broken (bad chunk framing): the connection is done.
    Broken,
}

impl Feed {
    /// Read to its end, so the connection can carry another request.
    pub(crate) fn finished(&self) -> bool {
        self.done && !self.failed
    }

    pub(crate) fn fail(&mut self, why: &'static str) {
        self.done = true;
        self.failed = true;
        let reader = {
            let mut s = lock(&self.shared);
            s.error = Some(why);
            s.reader.take()
        };
        if let Some(w) = reader {
            w.wake();
        }
    }

    pub(crate) fn poll_feed(&mut self, cx: &mut Context<'_>, rbuf: &mut BytesMut) -> FeedStep {
        let mut s = lock(&self.shared);
        if s.dropped {
            // Nobody reads the rest; the connection closes after the
            // response (the body was not read to its end).
            return FeedStep::Idle;
        }
        if !s.want || s.frame.is_some() {
            if !s.conn.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                s.conn = Some(cx.waker().clone());
            }
            return FeedStep::Idle;
        }
        let (frame, end) = match &mut self.framing {
            Framing::Length(left) => {
                if rbuf.is_empty() {
                    return FeedStep::NeedMore;
                }
                let n = (*left).min(rbuf.len() as u64) as usize;
                *left -= n as u64;
                (Frame::data(rbuf.split_to(n).freeze()), *left == 0)
            }
            Framing::Chunked(dec) => match dec.decode(rbuf) {
                Ok(Decoded::Data(d)) => (Frame::data(d), false),
                Ok(Decoded::Trailers(t)) => (Frame::trailers(t), true),
                Ok(Decoded::End) => {
                    s.end = true;
                    s.want = false;
                    self.done = true;
                    let reader = s.reader.take();
                    drop(s);
                    if let Some(w) = reader {
                        w.wake();
                    }
                    return FeedStep::Fed;
                }
                Ok(Decoded::NeedMore) => return FeedStep::NeedMore,
                Err(_) => {
                    drop(s);
                    self.fail("malformed chunked request body");
                    return FeedStep::Broken;
                }
            },
        };
        s.frame = Some(frame);
        s.want = false;
        if end {
            s.end = true;
            self.done = true;
        }
        let reader = s.reader.take();
        drop(s);
        if let Some(w) = reader {
            w.wake();
        }
        FeedStep::Fed
    }
}

/// A request body streamed from the connection.
pub(crate) struct IncomingBody {
    pub(crate) shared: Arc<Mutex<FeedState>>,
    /// Bytes still to come, when the length is known.
    pub(crate) remaining: Option<u64>,
    pub(crate) ended: bool,
}

impl http_body::Body for IncomingBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        let conn = {
            let mut s = lock(&this.shared);
            if let Some(f) = s.frame.take() {
                drop(s);
                if let (Some(left), Some(d)) = (this.remaining.as_mut(), f.data_ref()) {
                    *left -= d.len() as u64;
                }
                return Poll::Ready(Some(Ok(f)));
            }
            if let Some(why) = s.error {
                this.ended = true;
                return Poll::Ready(Some(Err(why.into())));
            }
            if s.end {
                this.ended = true;
                return Poll::Ready(None);
            }
            s.want = true;
            if !s.reader.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                s.reader = Some(cx.waker().clone());
            }
            s.conn.take()
        };
        if let Some(w) = conn {
            w.wake();
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        if self.ended {
            return true;
        }
        let s = lock(&self.shared);
        s.end && s.frame.is_none() && s.error.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

impl Drop for IncomingBody {
    fn drop(&mut self) {
        let conn = {
            let mut s = lock(&self.shared);
            s.dropped = true;
            s.conn.take()
        };
        if let Some(w) = conn {
            w.wake();
        }
    }
}
