//! HTTP/1.1 serving of a tower service on one TCP connection: what
//! what the `mcp-gateway` binary runs for every HTTP/1 client when
//! `--http1-server builtin` is chosen.
//!
//! Why a server connection of our own: hyper's HTTP/1 dispatcher (a
//! request body channel, its own read and write buffers, a state machine
//! around the service) is a large share of a small MCP call; a connection
//! that reads the head, calls the service and writes the answer does less
//! (the figures are in `docs/benchmarks.md`). It is opt-in: hyper is the
//! default server, and serves HTTP/2 and TLS always.
//!
//! What it does, by RFC 9112:
//! - request heads parsed with httparse (as hyper does), bounded to 64 KiB
//!   and 100 fields (431 beyond), anything malformed answered with 400 and
//!   the connection closed;
//! - bodies framed by `Content-Length` (values must agree) or chunked
//!   `Transfer-Encoding` (it must be the final coding; with both fields,
//!   or on HTTP/1.0, the request is refused: a request smuggling vector);
//!   a body already in the read buffer is handed over whole, a larger one
//!   streams to the service one frame at a time, read only as the service
//!   asks for it; `Expect: 100-continue` is answered when the body is not
//!   there yet;
//! - responses with `Content-Length` when the body's size is known, else
//!   chunked (HTTP/1.1) or ended by the close (HTTP/1.0); none for `HEAD`,
//!   `1xx`, `204` and `304`; a `Date` when the service set none; each body
//!   frame written as it comes (an event stream is never held back), the
//!   first one with the head in one `writev`;
//! - keep-alive for HTTP/1.1 unless either side said `Connection: close`,
//!   pipelined requests answered in order, a connection closed after a
//!   response whose request body was not read to its end;
//! - the client watched while the service works and while a response
//!   streams: when it closes the connection the service's future and the
//!   response body are dropped, which is how a streamed call is cancelled;
//! - an optional header read timeout, and a graceful stop that lets the
//!   request in progress finish.
//!
//! A minimal accept loop around any tower service (the `mcp-gateway` binary
//! adds threads per core, busy polling, HTTP/2 and graceful shutdown):
//!
//! ```no_run
//! use std::convert::Infallible;
//! use std::sync::atomic::AtomicBool;
//! use std::sync::Arc;
//! use mcp_gateway_http1::server::{serve_http1, Http1Config};
//! use mcp_gateway_core::Body;
//!
//! # async fn run() -> std::io::Result<()> {
//! let svc = tower::service_fn(|_req: http::Request<Body>| async {
//!     Ok::<_, Infallible>(http::Response::new(Body::from("hello")))
//! });
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! loop {
//!     let (socket, _peer) = listener.accept().await?;
//!     let stopping = Arc::new(AtomicBool::new(false));
//!     tokio::spawn(serve_http1(socket, svc, Http1Config::default(), stopping));
//! }
//! # }
//! ```

use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, EXPECT, TRANSFER_ENCODING};
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower_service::Service;

use mcp_gateway_core::body::{Body, BoxError};

/// A mutex's guard, poisoned or not: the state behind it (a streamed
/// request body's hand-over) stays whole if a holder panics.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
use crate::framing::{
    add_content_length, ends_chunked, has_token, ChunkDecoder, Decoded, Spans, MAX_HEAD,
};

/// At most this many request header fields.
const MAX_FIELDS: usize = 100;
/// Read size: a typical request, head and body, in one read.
const READ_SIZE: usize = 8 * 1024;
/// While the service works, bytes of the next (pipelined) request are read
/// ahead up to this much; beyond it the client waits.
const MAX_READ_AHEAD: usize = MAX_HEAD + READ_SIZE;

/// Settings of [`serve_http1`].
#[derive(Debug, Clone, Default)]
pub struct Http1Config {
    /// Closes a connection whose next request head has not fully arrived
    /// within this long (counted from the previous response on a kept-alive
    /// connection). `None`: no limit.
    pub header_read_timeout: Option<Duration>,
}

/// Serves HTTP/1.1 on `io` with `service` until the client closes the
/// connection, a request asks to close it, or `stopping` is set (checked
/// between requests; the request in progress finishes). Wake the task
/// after setting `stopping` so that an idle connection notices.
pub async fn serve_http1<S, B>(
    io: TcpStream,
    mut service: S,
    cfg: Http1Config,
    stopping: Arc<AtomicBool>,
) where
    S: Service<Request<Body>, Response = Response<B>, Error = Infallible>,
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let mut conn = Conn {
        io,
        rbuf: BytesMut::with_capacity(READ_SIZE),
        wbuf: Vec::with_capacity(512),
    };
    loop {
        let head = match cfg.header_read_timeout {
            None => conn.read_head(&stopping).await,
            Some(t) => match tokio::time::timeout(t, conn.read_head(&stopping)).await {
                Ok(h) => h,
                Err(_) => return,
            },
        };
        let head = match head {
            Ok(Some(h)) => h,
            Ok(None) => return,
            Err(e) => {
                conn.refuse(e).await;
                return;
            }
        };
        let RequestHead {
            parts,
            framing,
            mut keep_alive,
            expect_continue,
        } = head;
        let head_only = parts.method == Method::HEAD;
        let version = parts.version;
        let (body, mut feed) = conn.request_body(framing);
        // The client waits for this before it sends a body not yet here.
        let continue_first = expect_continue && feed.is_some() && parts.version == Version::HTTP_11;
        if continue_first
            && conn
                .io
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .is_err()
        {
            return;
        }
        // Readiness first, as the tower contract asks (a router is always
        // ready: this costs it nothing).
        let Ok(()) = poll_fn(|cx| service.poll_ready(cx)).await;
        let call = service.call(Request::from_parts(parts, body));
        let Some(res) = conn.run_while_watching(call, &mut feed).await else {
            return;
        };
        let Ok(res) = res;
        let (parts, body) = res.into_parts();
        keep_alive &= !has_token(&parts.headers, "close") && !stopping.load(Ordering::Acquire);
        let done = conn
            .write_response(parts, body, version, head_only, keep_alive, &mut feed)
            .await;
        // A request body not read to its end leaves the connection in the
        // middle of a message: it cannot carry another.
        let body_read = feed.as_ref().is_none_or(Feed::finished);
        if !(done && keep_alive && body_read) || stopping.load(Ordering::Acquire) {
            return;
        }
    }
}

/// A parsed request head.
struct RequestHead {
    parts: http::request::Parts,
    framing: Framing,
    keep_alive: bool,
    expect_continue: bool,
}

/// How a request body is delimited.
#[derive(Debug)]
enum Framing {
    /// This many bytes (0: no body).
    Length(u64),
    Chunked(ChunkDecoder),
}

/// Why a request head is refused: the status, and what the client is told.
#[derive(Debug, PartialEq)]
struct Refusal(StatusCode, &'static str);

fn bad(why: &'static str) -> Refusal {
    Refusal(StatusCode::BAD_REQUEST, why)
}

/// Reads a request head from the front of `buf`, consuming it. `Ok(None)`:
/// not complete yet.
fn parse_request(buf: &mut BytesMut) -> Result<Option<RequestHead>, Refusal> {
    // Field positions are noted as offsets: the bytes are frozen after the
    // parse, and names, values and the target then point into them.
    let mut fields =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
    let mut spans = Spans::new();
    let mut req = httparse::Request::new(&mut []);
    let (len, method, target, minor) = match httparse::ParserConfig::default()
        .parse_request_with_uninit_headers(&mut req, buf, &mut fields)
    {
        Ok(httparse::Status::Complete(len)) => {
            let base = buf.as_ptr() as usize;
            spans.note(req.headers, buf.as_ptr());
            let method = Method::from_bytes(req.method.unwrap_or("").as_bytes())
                .map_err(|_| bad("invalid method"))?;
            let path = req.path.unwrap_or("");
            let target = (path.as_ptr() as usize - base, path.len());
            (len, method, target, req.version.unwrap_or(1))
        }
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
            return Err(Refusal(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request head too large",
            ))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Refusal(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "too many header fields",
            ))
        }
        Err(httparse::Error::Version) => {
            return Err(Refusal(
                StatusCode::HTTP_VERSION_NOT_SUPPORTED,
                "HTTP version not supported",
            ))
        }
        Err(_) => return Err(bad("malformed request head")),
    };
    if len > MAX_HEAD {
        return Err(Refusal(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request head too large",
        ));
    }
    let head = buf.split_to(len).freeze();
    let uri = http::Uri::from_maybe_shared(head.slice(target.0..target.0 + target.1))
        .map_err(|_| bad("invalid request target"))?;
    let version = if minor == 1 {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    // Room for the fields the layers add (Host for the backend,
    // credentials): a full map rehashes every field to take one more.
    let mut headers = HeaderMap::with_capacity(spans.as_slice().len() + 4);
    let mut length: Option<u64> = None;
    let mut chunked = None;
    let mut close = version == Version::HTTP_10;
    let mut expect_continue = false;
    spans.for_each(&head, bad, |name, value| {
        if name == CONTENT_LENGTH {
            add_content_length(value.as_bytes(), &mut length).map_err(bad)?;
        } else if name == TRANSFER_ENCODING {
            // The last field's last coding counts: it must be chunked.
            chunked = Some(ends_chunked(value.as_bytes()));
        } else if name == CONNECTION {
            for token in value.as_bytes().split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                }
            }
        } else if name == EXPECT {
            expect_continue = value.as_bytes().eq_ignore_ascii_case(b"100-continue");
        }
        headers.append(name, value);
        Ok(())
    })?;
    let framing = match (chunked, length) {
        (Some(_), Some(_)) => return Err(bad("both Content-Length and Transfer-Encoding")),
        (Some(_), None) if version == Version::HTTP_10 => {
            return Err(bad("Transfer-Encoding in an HTTP/1.0 request"))
        }
        (Some(false), None) => return Err(bad("Transfer-Encoding must end with chunked")),
        (Some(true), None) => Framing::Chunked(ChunkDecoder::default()),
        (None, n) => Framing::Length(n.unwrap_or(0)),
    };
    let mut parts = Request::new(()).into_parts().0;
    parts.method = method;
    parts.uri = uri;
    parts.version = version;
    parts.headers = headers;
    Ok(Some(RequestHead {
        parts,
        framing,
        keep_alive: !close,
        expect_continue,
    }))
}

/// The client went away (closed, reset, or broke the framing).
struct Gone;

struct Conn {
    io: TcpStream,
    rbuf: BytesMut,
    wbuf: Vec<u8>,
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
    async fn read_head(&mut self, stopping: &AtomicBool) -> Result<Option<RequestHead>, Refusal> {
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
    async fn refuse(&mut self, Refusal(status, why): Refusal) {
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
    fn request_body(&mut self, framing: Framing) -> (Body, Option<Feed>) {
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
    async fn run_while_watching<F: Future>(
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
    async fn write_response<B>(
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

/// How a batch of response frames left the body.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The body ended (the message is complete after this batch).
    Complete,
    /// The body failed.
    Failed,
    /// More frames will come.
    NotYet,
}

/// Response data frames written together.
#[derive(Default)]
struct Batch {
    frames: [Option<Bytes>; Batch::MAX],
    len: usize,
}

impl Batch {
    /// At most this many frames per write (an event and the end of its
    /// stream are two).
    const MAX: usize = 4;

    fn push(&mut self, data: Bytes) {
        if !data.is_empty() {
            self.frames[self.len] = Some(data);
            self.len += 1;
        }
    }

    fn is_full(&self) -> bool {
        self.len == Self::MAX
    }

    /// The write: `head`, each frame (chunked if `chunked`), and the last
    /// chunk if `last`. Returns how many of `out` are used.
    fn slices<'a>(
        &'a self,
        head: &'a [u8],
        chunked: bool,
        last: bool,
        lines: &'a mut [[u8; 18]; Self::MAX],
        out: &mut [IoSlice<'a>; 2 + 3 * Self::MAX],
    ) -> usize {
        let mut n = 0;
        let mut put = |s: &'a [u8]| {
            if !s.is_empty() {
                out[n] = IoSlice::new(s);
                n += 1;
            }
        };
        put(head);
        for (data, line) in self.frames[..self.len]
            .iter()
            .flatten()
            .zip(lines.iter_mut())
        {
            if chunked {
                put(crate::framing::chunk_size_line_in(data.len(), line));
                put(data);
                put(b"\r\n");
            } else {
                put(data);
            }
        }
        if last {
            put(b"0\r\n\r\n");
        }
        n
    }
}

impl Conn {
    /// Writes the head (unless `head_sent`) and `batch`. Without waiting
    /// when the socket takes it all, the usual case; otherwise the rest is
    /// copied out and written as the socket drains. Either way the slices
    /// and the batch are gone before any wait, so they are not part of the
    /// response future, which every response moves (the arrays made it
    /// 2 KiB).
    async fn send(
        &mut self,
        batch: Batch,
        head_sent: bool,
        chunked: bool,
        last: bool,
    ) -> io::Result<()> {
        let rest = {
            let head: &[u8] = if head_sent { b"" } else { &self.wbuf };
            let mut lines = [[0u8; 18]; Batch::MAX];
            let mut slices = [IoSlice::new(b""); 2 + 3 * Batch::MAX];
            let n = batch.slices(head, chunked, last, &mut lines, &mut slices);
            let slices = &slices[..n];
            let total: usize = slices.iter().map(|s| s.len()).sum();
            let wrote = match self.io.try_write_vectored(slices) {
                Ok(w) => w,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                Err(e) => return Err(e),
            };
            if wrote == total {
                return Ok(());
            }
            let mut rest = Vec::with_capacity(total - wrote);
            let mut skip = wrote;
            for s in slices {
                let take = s.len().saturating_sub(skip);
                rest.extend_from_slice(&s[s.len() - take..]);
                skip = skip.saturating_sub(s.len());
            }
            rest
        };
        self.io.write_all(&rest).await
    }
}

fn status_line(status: StatusCode, out: &mut Vec<u8>) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// `content-length: n`, and the end of the head.
fn content_length(n: u64, out: &mut Vec<u8>) {
    crate::framing::content_length_field(n, out);
    out.extend_from_slice(b"\r\n");
}

/// A `date` field, formatted once a second per thread.
fn date_field(out: &mut Vec<u8>) {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static CACHED: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            *c = (secs, httpdate::fmt_http_date(now));
        }
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(c.1.as_bytes());
        out.extend_from_slice(b"\r\n");
    });
}

/// The connection's side of a streamed request body.
struct Feed {
    shared: Arc<Mutex<FeedState>>,
    framing: Framing,
    /// The whole body was handed over (or failed).
    done: bool,
    /// The body failed: the connection is not at a message boundary.
    failed: bool,
}

/// What the connection and the body share.
#[derive(Default)]
struct FeedState {
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

enum FeedStep {
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
    fn finished(&self) -> bool {
        self.done && !self.failed
    }

    fn fail(&mut self, why: &'static str) {
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

    fn poll_feed(&mut self, cx: &mut Context<'_>, rbuf: &mut BytesMut) -> FeedStep {
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
struct IncomingBody {
    shared: Arc<Mutex<FeedState>>,
    /// Bytes still to come, when the length is known.
    remaining: Option<u64>,
    ended: bool,
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

#[cfg(test)]
mod tests;
