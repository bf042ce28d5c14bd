//! One connection: read a request, call the service, write the answer, keep alive.

#[allow(unused_imports)]
use super::*;

/// The client went away (closed, reset, or broke the framing).
struct Gone;

pub(crate) struct Conn {
    pub(crate) io: TcpStream,
    pub(crate) rbuf: BytesMut,
    pub(crate) wbuf: Vec<u8>,
}

impl Conn {
    /// Reads more into the read buffer; `Ok(0)` at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.rbuf.capacity() - self.rbuf.len() < READ_SIZE / 2 {
            self.rbuf.reserve(READ_SIZE);
        }
        // Through `AsyncRead`: a read shorter than the room it had drained
        // the socket, and tokio then forgets the readiness, so the next
        // poll waits for the kernel's next event instead of trying a read
        // that would find nothing (a system call per request).
        pin!(self.io.read_buf(&mut self.rbuf)).poll(cx)
    }

    /// The next request head. `Ok(None)`: the client closed the connection
    /// between requests, or `stopping` was set while it was idle.
    pub(crate) async fn read_head(
        &mut self,
        stopping: &AtomicBool,
    ) -> Result<Option<RequestHead>, Refusal> {
        loop {
            if !self.rbuf.is_empty() {
                if let Some(h) = parse_request(&mut self.rbuf)? {
                    return Ok(Some(h));
                }
            }
            let idle = self.rbuf.is_empty();
            let read = poll_fn(|cx| {
                if idle && stopping.load(Ordering::Acquire) {
                    return Poll::Ready(Ok(0));
                }
                self.poll_fill(cx)
            })
            .await;
            match read {
                // Closed (between requests, or inside a head: nobody is
                // left to answer), or stopped while idle.
                Ok(0) | Err(_) => return Ok(None),
                Ok(_) => {}
            }
        }
    }

    /// Answers a refused head (the connection is closed after it).
    pub(crate) async fn refuse(&mut self, Refusal(status, why): Refusal) {
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":null,"error":{{"code":-32600,"message":"{}: {why}"}}}}"#,
            status.canonical_reason().unwrap_or("Bad Request")
        );
        self.wbuf.clear();
        status_line(status, &mut self.wbuf);
        self.wbuf
            .extend_from_slice(b"content-type: application/json\r\nconnection: close\r\n");
        date_field(&mut self.wbuf);
        content_length(body.len() as u64, &mut self.wbuf);
        self.wbuf.extend_from_slice(body.as_bytes());
        let _ = self.io.write_all(&self.wbuf).await;
        let _ = self.io.shutdown().await;
    }

    /// The request's body: whole when it is already in the buffer, else a
    /// stream fed from the connection as the service reads it.
    pub(crate) fn request_body(&mut self, framing: Framing) -> (Body, Option<Feed>) {
        match framing {
            Framing::Length(0) => (Body::empty(), None),
            Framing::Length(n) if n <= self.rbuf.len() as u64 => {
                (Body::from(self.rbuf.split_to(n as usize).freeze()), None)
            }
            framing => {
                let shared = Arc::new(Mutex::new(FeedState::default()));
                let exact = match framing {
                    Framing::Length(n) => Some(n),
                    Framing::Chunked(_) => None,
                };
                let body = Body::new(IncomingBody {
                    shared: shared.clone(),
                    remaining: exact,
                    ended: false,
                });
                (
                    body,
                    Some(Feed {
                        shared,
                        framing,
                        done: false,
                        failed: false,
                    }),
                )
            }
        }
    }

    /// Runs `fut`, feeding the request body and watching the client.
    /// `None`: the client went away first (`fut` is dropped).
    pub(crate) async fn run_while_watching<F: Future>(
        &mut self,
        fut: F,
        feed: &mut Option<Feed>,
    ) -> Option<F::Output> {
        let mut fut = pin!(fut);
        poll_fn(|cx| {
            if let Poll::Ready(out) = fut.as_mut().poll(cx) {
                return Poll::Ready(Some(out));
            }
            match self.poll_client(cx, feed) {
                Poll::Ready(Gone) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }

    /// Feeds the request body when it wants data, and otherwise reads
    /// ahead (bounded) to notice the client closing. Ready only when the
    /// client is gone.
    fn poll_client(&mut self, cx: &mut Context<'_>, feed: &mut Option<Feed>) -> Poll<Gone> {
        loop {
            if let Some(f) = feed.as_mut().filter(|f| !f.done) {
                match f.poll_feed(cx, &mut self.rbuf) {
                    FeedStep::Fed | FeedStep::Idle => return Poll::Pending,
                    // The service was told (its body failed) and answers;
                    // the connection closes after that.
                    FeedStep::Broken => continue,
                    FeedStep::NeedMore => {}
                }
            } else if self.rbuf.len() >= MAX_READ_AHEAD {
                // Enough of the next request is waiting; stop reading until
                // this one is answered.
                return Poll::Pending;
            }
            match self.poll_fill(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0) | Err(_)) => {
                    if let Some(f) = feed.as_mut().filter(|f| !f.done) {
                        f.fail("client closed the connection inside the request body");
                    }
                    return Poll::Ready(Gone);
                }
                Poll::Ready(Ok(_)) => {}
            }
        }
    }

    /// Writes the response; false when the connection cannot go on (write
    /// failed, body failed, client gone, or a body ended by the close).
    pub(crate) async fn write_response<B>(
        &mut self,
        parts: http::response::Parts,
        body: B,
        version: Version,
        head_only: bool,
        keep_alive: bool,
        feed: &mut Option<Feed>,
    ) -> bool
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let mut body = pin!(body);
        let status = parts.status;
        let bodiless = head_only
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let exact = body.size_hint().exact();
        // Without a length, HTTP/1.1 chunks; an HTTP/1.0 client reads to the
        // close.
        let chunked = !bodiless && exact.is_none() && version == Version::HTTP_11;
        let keep_alive = keep_alive && (bodiless || exact.is_some() || chunked);
        self.wbuf.clear();
        status_line(status, &mut self.wbuf);
        for (name, value) in &parts.headers {
            if name == CONTENT_LENGTH || name == TRANSFER_ENCODING || name == CONNECTION {
                continue;
            }
            self.wbuf.extend_from_slice(name.as_str().as_bytes());
            self.wbuf.extend_from_slice(b": ");
            self.wbuf.extend_from_slice(value.as_bytes());
            self.wbuf.extend_from_slice(b"\r\n");
        }
        if !parts.headers.contains_key(DATE) {
            date_field(&mut self.wbuf);
        }
        if !keep_alive {
            self.wbuf.extend_from_slice(b"connection: close\r\n");
        }
        let no_length = status.is_informational() || status == StatusCode::NO_CONTENT;
        match exact {
            _ if no_length => self.wbuf.extend_from_slice(b"\r\n"),
            Some(n) if status != StatusCode::NOT_MODIFIED => content_length(n, &mut self.wbuf),
            _ if chunked => self
                .wbuf
                .extend_from_slice(b"transfer-encoding: chunked\r\n\r\n"),
            _ => self.wbuf.extend_from_slice(b"\r\n"),
        }
        if bodiless {
            return self.io.write_all(&self.wbuf).await.is_ok() && keep_alive;
        }
        let mut head_sent = false;
        loop {
            // Wait for a frame (watching the client), then take whatever
            // else is ready at once: one write for all of it, and the last
            // chunk goes out with the last data instead of in a write of
            // its own.
            let first = poll_fn(|cx| {
                if let Poll::Ready(f) = body.as_mut().poll_frame(cx) {
                    return Poll::Ready(Some(f));
                }
                match self.poll_client(cx, feed) {
                    Poll::Ready(Gone) => Poll::Ready(None),
                    Poll::Pending => Poll::Pending,
                }
            })
            .await;
            // The client went away: dropping the body cancels the call.
            let Some(mut next) = first else { return false };
            let mut batch = Batch::default();
            let end = loop {
                match next {
                    Some(Ok(frame)) => {
                        // Trailers are not sent (clients of this server ask
                        // for none); the body ends after them.
                        if let Ok(data) = frame.into_data() {
                            batch.push(data);
                        }
                    }
                    None => break End::Complete,
                    // Mid-body failure: the client must see a cut message,
                    // never a complete one: no last chunk, and close.
                    Some(Err(_)) => break End::Failed,
                }
                if body.is_end_stream() {
                    break End::Complete;
                }
                if batch.is_full() {
                    break End::NotYet;
                }
                match poll_fn(|cx| Poll::Ready(body.as_mut().poll_frame(cx))).await {
                    Poll::Ready(f) => next = f,
                    Poll::Pending => break End::NotYet,
                }
            };
            let last = chunked && end == End::Complete;
            if self.send(batch, head_sent, chunked, last).await.is_err() {
                return false;
            }
            head_sent = true;
            match end {
                End::Complete => return keep_alive,
                End::Failed => return false,
                End::NotYet => {}
            }
        }
    }
}
