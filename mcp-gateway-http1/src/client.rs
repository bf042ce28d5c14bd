//! The upstream connection pool behind `mcp_gateway_tower::upstream::HttpUpstream`
//! for `http://` backends.
//!
//! Why not hyper-util's pooled client: it spawns a task per connection and
//! reaches it through channels, so every call crosses two extra task
//! wake-ups (request in, response out). On a loopback hop that was about
//! half of the gateway's added latency. Here the request's own task uses
//! the connection: it writes the request (head and body in one write),
//! reads the response head, and the response body reads the rest as it is
//! polled — HTTP/1.1 framing from the crate's `framing` module, no
//! second state machine. When the body ends the connection goes back to
//! the pool; when the body is dropped early (client gone) the connection
//! is closed with it, which is exactly the cancellation a stream needs.
//!
//! Idle connections sit in lock-free bounded queues. A connection is
//! registered with the I/O driver of the runtime that opened it; with one
//! single-threaded runtime per core (as `gateway` serves), a connection
//! used from another thread would have every readiness event relayed by
//! its home thread (an extra thread wake-up per call). So a connection
//! opened on a current-thread runtime is reused only on its thread, and
//! each such thread keeps up to `max_idle` idle ones; a multi-threaded
//! runtime has one driver for all its workers and shares one queue. Either
//! way a connection is reused only on the runtime that opened it: its
//! socket and its timer are registered with that runtime's drivers, which
//! another runtime does not drive (and which stop with their runtime). One
//! taken from the queue is checked before reuse (no system call unless its
//! socket turned readable) so that a connection the backend closed while
//! idle is noticed and discarded, and a request that failed before a byte
//! of it was written on a reused connection is sent again on a new one.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{ready, Context, Poll, Waker};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use crossbeam_queue::ArrayQueue;
use http::{Request, Response};
use http_body::{Body as _, Frame, SizeHint};
use thread_local::ThreadLocal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::framing::{self, BodyFraming, Decoded, RequestFraming};
use mcp_gateway_core::body::{Body, BoxError};

/// The smallest read: below this much free space the buffer grows first.
const MIN_READ: usize = 1024;
/// The first read size, and the floor of the adaptive one.
const READ_SIZE: usize = 8 * 1024;
/// The largest read size (large bodies: fewer, bigger reads).
const MAX_READ_SIZE: usize = 256 * 1024;

/// One HTTP/1.1 connection, driven by the task that uses it. Kept boxed:
/// it moves from the pool into the call and into the response body.
struct Conn {
    io: TcpStream,
    /// Bytes read and not yet consumed. Response heads and bodies are
    /// split off it without a copy.
    rbuf: BytesMut,
    /// The head of the request being written (reused from call to call).
    wbuf: Vec<u8>,
    /// How much the next read asks for (grows while reads fill it).
    read_size: usize,
    idle_since: Instant,
    /// The thread that opened it, when that was a current-thread runtime
    /// (whose driver it is registered with).
    home: Option<ThreadId>,
    /// The runtime whose drivers its socket and timer are registered with.
    runtime: tokio::runtime::Id,
    /// The response deadline timer, kept from call to call (see [`Timer`]).
    timer: Option<Timer>,
}

/// A connection's response deadline timer.
///
/// Why one per connection rather than a `tokio::time::timeout` per call: a
/// new timer takes the runtime's timer lock to be filed and again to be
/// removed, and when it is the earliest one it also wakes the driver
/// through an `eventfd` write (a system call). Here a call only notes its
/// deadline; the timer stays armed for an earlier call's deadline and,
/// when that comes first (once per response timeout, or never), is moved
/// on to the noted one. Measured on the loopback benchmark, a timer per
/// call cost about 740 instructions and 0.15 `eventfd` writes, 1 µs of
/// the gateway's CPU per call.
struct Timer {
    sleep: Pin<Box<tokio::time::Sleep>>,
    /// The deadline of the call in progress: never earlier than `sleep`'s.
    deadline: tokio::time::Instant,
}

impl Timer {
    /// The connection's timer, set for a call due by `deadline`.
    fn arm(old: Option<Timer>, deadline: tokio::time::Instant) -> Timer {
        match old {
            Some(mut t) => {
                // Moving a timer earlier re-files it: only for a call with a
                // shorter deadline than the one the timer is armed for.
                if deadline < t.sleep.deadline() {
                    t.sleep.as_mut().reset(deadline);
                }
                t.deadline = deadline;
                t
            }
            None => Timer {
                sleep: Box::pin(tokio::time::sleep_until(deadline)),
                deadline,
            },
        }
    }

    /// Polls `f` until it completes or the deadline passes. `f` is pinned
    /// where it is (it holds the call's buffers; moving it costs a copy).
    fn poll_bound<F: Future>(
        &mut self,
        f: Pin<&mut F>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<F::Output, TimedOut>> {
        if let Poll::Ready(out) = f.poll(cx) {
            return Poll::Ready(Ok(out));
        }
        while self.sleep.as_mut().poll(cx).is_ready() {
            if self.sleep.deadline() >= self.deadline {
                return Poll::Ready(Err(TimedOut));
            }
            // Armed for an earlier call: on to this one's deadline.
            self.sleep.as_mut().reset(self.deadline);
        }
        Poll::Pending
    }
}

/// The backend did not send its response head before the deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimedOut;

impl std::fmt::Display for TimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no response before the deadline")
    }
}

impl std::error::Error for TimedOut {}

impl Conn {
    fn new(io: TcpStream, here: Here) -> Self {
        Conn {
            io,
            rbuf: BytesMut::new(),
            wbuf: Vec::with_capacity(512),
            read_size: READ_SIZE,
            idle_since: Instant::now(),
            home: here.home,
            runtime: here.runtime,
            timer: None,
        }
    }

    /// Whether an idle connection can take a request: nothing arrived on
    /// it since its last response (no close from the backend, no stray
    /// bytes). Costs no system call unless the socket turned readable.
    fn still_open(&mut self) -> bool {
        if !self.rbuf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => matches!(
                self.io.try_read(&mut [0u8; 1]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock
            ),
        }
    }

    /// Reads more bytes into `rbuf`; `Ok(0)` at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let spare = self.rbuf.capacity() - self.rbuf.len();
        if spare < MIN_READ {
            self.rbuf.reserve(self.read_size);
        }
        let spare = self.rbuf.capacity() - self.rbuf.len();
        let n = ready!(std::pin::pin!(self.io.read_buf(&mut self.rbuf)).poll(cx))?;
        // A read that filled the buffer says more is waiting: ask for more
        // next time; small reads bring the size back down.
        if n == spare {
            self.read_size = (self.read_size * 2).min(MAX_READ_SIZE);
        } else if n < self.read_size / 4 {
            self.read_size = (self.read_size / 2).max(READ_SIZE);
        }
        Poll::Ready(Ok(n))
    }

    async fn fill(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }
}

/// Writes all of `bufs`. The error says whether any byte went out.
async fn write_all(
    io: &mut TcpStream,
    mut bufs: &mut [IoSlice<'_>],
) -> Result<(), (io::Error, bool)> {
    let mut wrote = false;
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match io.write_vectored(bufs).await {
            Ok(0) => return Err((io::ErrorKind::WriteZero.into(), wrote)),
            Ok(n) => {
                wrote = true;
                IoSlice::advance_slices(&mut bufs, n);
            }
            Err(e) => return Err((e, wrote)),
        }
    }
    Ok(())
}

/// Pool settings.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Time allowed to establish a TCP connection.
    pub connect_timeout: Duration,
    /// Idle connections are closed after this.
    pub idle_timeout: Duration,
    /// Idle connections kept (per serving thread on current-thread runtimes).
    pub max_idle: usize,
}

struct Inner {
    /// `host:port` to connect to.
    addr: String,
    cfg: PoolConfig,
    /// Idle connections of multi-threaded runtimes.
    shared: ArrayQueue<Box<Conn>>,
    /// Idle connections of current-thread runtimes, by home thread.
    local: ThreadLocal<ArrayQueue<Box<Conn>>>,
}

/// Where a call runs: its runtime, and the thread to pin a new connection
/// to (this one when the runtime is a current-thread one).
#[derive(Clone, Copy)]
struct Here {
    home: Option<ThreadId>,
    runtime: tokio::runtime::Id,
}

impl Here {
    /// Must be called within a runtime (timers and sockets need one).
    fn now() -> Here {
        use tokio::runtime::{Handle, RuntimeFlavor};
        let rt = Handle::current();
        let home = match rt.runtime_flavor() {
            RuntimeFlavor::CurrentThread => Some(std::thread::current().id()),
            _ => None,
        };
        Here {
            home,
            runtime: rt.id(),
        }
    }
}

impl Inner {
    /// The idle queue for connections homed at `home`.
    fn queue(&self, home: Option<ThreadId>) -> &ArrayQueue<Box<Conn>> {
        match home {
            Some(_) => self
                .local
                .get_or(|| ArrayQueue::new(self.cfg.max_idle.max(1))),
            None => &self.shared,
        }
    }

    fn idle_len(&self) -> usize {
        self.shared.len() + self.local.iter().map(ArrayQueue::len).sum::<usize>()
    }
}

/// A pool of HTTP/1.1 connections to one backend address.
#[derive(Clone)]
pub struct ConnPool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ConnPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnPool")
            .field("addr", &self.inner.addr)
            .field("idle", &self.inner.idle_len())
            .finish()
    }
}

impl ConnPool {
    /// A pool for the backend at `addr` (`host:port`); connects lazily.
    pub fn new(addr: String, cfg: PoolConfig) -> Self {
        ConnPool {
            inner: Arc::new(Inner {
                addr,
                shared: ArrayQueue::new(cfg.max_idle.max(1)),
                cfg,
                local: ThreadLocal::new(),
            }),
        }
    }

    /// Idle connections currently pooled, on every thread.
    #[cfg(test)]
    pub fn idle(&self) -> usize {
        self.inner.idle_len()
    }

    /// A live idle connection, if the pool has one.
    fn take_idle(&self, here: Here) -> Option<Box<Conn>> {
        let now = Instant::now();
        let idle = self.inner.queue(here.home);
        while let Some(mut c) = idle.pop() {
            // (A queue can outlive its thread and pass to a new one, and a
            // thread can run one runtime after another: the home and
            // runtime checks drop what the others left.)
            if c.home == here.home
                && c.runtime == here.runtime
                && now.duration_since(c.idle_since) < self.inner.cfg.idle_timeout
                && c.still_open()
            {
                return Some(c);
            }
        }
        None
    }

    /// A new connection, within the connect timeout and `deadline`.
    async fn connect(
        &self,
        here: Here,
        deadline: tokio::time::Instant,
    ) -> Result<Box<Conn>, BoxError> {
        let cfg = &self.inner.cfg;
        let connect_by = tokio::time::Instant::now() + cfg.connect_timeout;
        let by = connect_by.min(deadline);
        let stream = match tokio::time::timeout_at(by, TcpStream::connect(&self.inner.addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(format!("connect to {}: {e}", self.inner.addr).into()),
            Err(_) if by == deadline => return Err(TimedOut.into()),
            Err(_) => {
                return Err(format!(
                    "connect to {} timed out after {:?}",
                    self.inner.addr, cfg.connect_timeout
                )
                .into())
            }
        };
        // Requests are small and latency-bound: never wait for Nagle.
        stream.set_nodelay(true)?;
        // Notice a backend host that vanished without closing (idle
        // connections behind NAT or a crashed VM).
        let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60));
        socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive)?;
        Ok(Box::new(Conn::new(stream, here)))
    }

    /// Returns a finished-with connection to its thread's pool, or drops
    /// it if that pool is full or this is not its thread (a body finished
    /// elsewhere: rare, and not worth a connection relayed by another
    /// thread's driver from then on).
    fn put(inner: &Inner, mut c: Box<Conn>) {
        if c.home.is_some_and(|h| h != std::thread::current().id()) {
            return;
        }
        c.idle_since = Instant::now();
        let _ = inner.queue(c.home).push(c);
    }

    /// Sends `req` and returns the response with its head read; the body is
    /// read from the connection by whoever polls it. A response head that
    /// has not arrived by `deadline` (connecting and sending included) is
    /// the error [`TimedOut`].
    pub async fn send(
        &self,
        req: Request<Body>,
        deadline: tokio::time::Instant,
    ) -> Result<Response<PooledBody>, BoxError> {
        let (parts, mut body) = req.into_parts();
        let framing = RequestFraming::of(&parts.method, &body.size_hint());
        // The body's first bytes go out with the head, in one write: all of
        // it when it is held in one buffer (the JSON-RPC layer's, the usual
        // case), else its first frame, read before the head is written. They
        // are kept until written, for a second attempt.
        let (first, done) = match body.as_bytes() {
            Some(b) => (Some(b.clone()), true),
            None => {
                let first = match framing {
                    RequestFraming::None => None,
                    // Boxed: the cold path's state stays out of every call's future.
                    _ => Box::pin(tokio::time::timeout_at(deadline, next_data(&mut body)))
                        .await
                        .map_err(|_| TimedOut)??,
                };
                (first, body.is_end_stream())
            }
        };
        let first_len = first.as_ref().map_or(0, |b| b.len() as u64);
        if let (true, RequestFraming::Length(n)) = (done, framing) {
            check_length(n, first_len)?;
        }
        let mut size_line = Vec::new();
        if let (Some(b), RequestFraming::Chunked) = (&first, framing) {
            framing::chunk_size_line(b.len(), &mut size_line);
        }
        let here = Here::now();
        loop {
            let (mut c, reused) = match self.take_idle(here) {
                Some(c) => (c, true),
                None => (Box::pin(self.connect(here, deadline)).await?, false),
            };
            let mut timer = Timer::arm(c.timer.take(), deadline);
            // Writing the request and reading the response head (into
            // `head`), bounded by the deadline. `Ok(false)`: nothing was
            // written on a reused connection the backend had already given
            // up, so the request is safe to send again on a new one.
            let mut head = None;
            let outcome = {
                let mut attempt = std::pin::pin!(async {
                    c.wbuf.clear();
                    framing::encode_head(&parts, framing, &self.inner.addr, &mut c.wbuf);
                    let data = first.as_deref().unwrap_or_default();
                    let written = match framing {
                        RequestFraming::Chunked => {
                            let (crlf, end): (&[u8], &[u8]) = match (data.is_empty(), done) {
                                (true, _) => (b"", framing::LAST_CHUNK),
                                (false, true) => (b"\r\n", framing::LAST_CHUNK),
                                (false, false) => (b"\r\n", b""),
                            };
                            let bufs = &mut [
                                IoSlice::new(&c.wbuf),
                                IoSlice::new(&size_line),
                                IoSlice::new(data),
                                IoSlice::new(crlf),
                                IoSlice::new(end),
                            ];
                            write_all(&mut c.io, bufs).await
                        }
                        _ => {
                            let bufs = &mut [IoSlice::new(&c.wbuf), IoSlice::new(data)];
                            write_all(&mut c.io, bufs).await
                        }
                    };
                    match written {
                        Ok(()) => {}
                        Err((_, false)) if reused => return Ok(false),
                        Err((e, _)) => return Err(BoxError::from(e)),
                    }
                    if !done {
                        write_rest_of_body(&mut c, &mut body, framing, first_len).await?;
                    }
                    loop {
                        head = framing::parse_head(&mut c.rbuf, &parts.method)?;
                        if head.is_some() {
                            return Ok(true);
                        }
                        if c.fill().await? == 0 {
                            return Err("upstream closed the connection before responding".into());
                        }
                    }
                });
                std::future::poll_fn(|cx| timer.poll_bound(attempt.as_mut(), cx)).await
            };
            c.timer = Some(timer);
            match outcome {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => continue,
                Ok(Err(e)) => return Err(e),
                Err(e) => return Err(e.into()),
            }
            // (A completed attempt has always read the head.)
            let Some(head) = head else {
                return Err("upstream response head missing".into());
            };
            let mut body = PooledBody {
                conn: Some(c),
                state: head.framing,
                keep_alive: head.keep_alive,
                pool: Arc::downgrade(&self.inner),
            };
            if body.is_end_stream() {
                body.release();
            }
            let mut res = Response::new(body);
            *res.status_mut() = head.status;
            *res.version_mut() = head.version;
            *res.headers_mut() = head.headers;
            return Ok(res);
        }
    }
}

/// The next non-empty data frame of `body` (trailers are not forwarded).
async fn next_data(body: &mut Body) -> Result<Option<Bytes>, BoxError> {
    use http_body_util::BodyExt;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            if !data.is_empty() {
                return Ok(Some(data));
            }
        }
    }
    Ok(None)
}

/// A body must be as long as its `Content-Length` said.
fn check_length(announced: u64, sent: u64) -> Result<(), BoxError> {
    if announced == sent {
        Ok(())
    } else {
        Err(format!("request body was {sent} bytes, announced {announced}").into())
    }
}

/// Writes what is left of a streamed body after its first frame: in
/// chunks, or raw up to its announced length (and an error if it sends
/// another amount). `sent`: the bytes already written.
async fn write_rest_of_body(
    c: &mut Conn,
    body: &mut Body,
    framing: RequestFraming,
    mut sent: u64,
) -> Result<(), BoxError> {
    while let Some(data) = next_data(body).await? {
        sent += data.len() as u64;
        let written = if framing == RequestFraming::Chunked {
            c.wbuf.clear();
            framing::chunk_size_line(data.len(), &mut c.wbuf);
            let bufs = &mut [
                IoSlice::new(&c.wbuf),
                IoSlice::new(&data),
                IoSlice::new(b"\r\n"),
            ];
            write_all(&mut c.io, bufs).await
        } else {
            write_all(&mut c.io, &mut [IoSlice::new(&data)]).await
        };
        written.map_err(|(e, _)| e)?;
    }
    match framing {
        RequestFraming::Chunked => write_all(&mut c.io, &mut [IoSlice::new(framing::LAST_CHUNK)])
            .await
            .map_err(|(e, _)| e)?,
        RequestFraming::Length(n) => check_length(n, sent)?,
        RequestFraming::None => {}
    }
    Ok(())
}

/// A response body read from its connection as it is polled; the
/// connection goes back to the pool once the body is complete.
pub struct PooledBody {
    conn: Option<Box<Conn>>,
    /// What is left to read; `Length(0)` once the body is complete.
    state: BodyFraming,
    keep_alive: bool,
    pool: Weak<Inner>,
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // A body not read to the end: dropping its connection closes it,
        // which tells the backend the client left.
        if self.is_end_stream() {
            self.release();
        }
    }
}

impl PooledBody {
    /// Hands a connection whose response is complete back to the pool,
    /// if it may carry another request.
    fn release(&mut self) {
        let Some(c) = self.conn.take() else { return };
        if self.keep_alive && c.rbuf.is_empty() {
            if let Some(inner) = self.pool.upgrade() {
                ConnPool::put(&inner, c);
            }
        }
    }

    /// Ends the body with an error; the connection is closed.
    fn fail(&mut self, e: BoxError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.conn = None;
        self.state = BodyFraming::Length(0);
        Poll::Ready(Some(Err(e)))
    }
}

impl http_body::Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            let Some(c) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match &mut this.state {
                BodyFraming::Length(0) => {
                    this.release();
                    return Poll::Ready(None);
                }
                BodyFraming::Length(left) => {
                    if !c.rbuf.is_empty() {
                        let n = (*left).min(c.rbuf.len() as u64);
                        *left -= n;
                        let data = c.rbuf.split_to(n as usize).freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                BodyFraming::Chunked(dec) => match dec.decode(&mut c.rbuf) {
                    Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Decoded::Trailers(t)) => return Poll::Ready(Some(Ok(Frame::trailers(t)))),
                    Ok(Decoded::End) => {
                        this.state = BodyFraming::Length(0);
                        continue;
                    }
                    Ok(Decoded::NeedMore) => {}
                    Err(e) => return this.fail(e.into()),
                },
                BodyFraming::Close => {
                    if !c.rbuf.is_empty() {
                        let data = c.rbuf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
            }
            match ready!(c.poll_fill(cx)) {
                Ok(0) if matches!(this.state, BodyFraming::Close) => {
                    this.keep_alive = false;
                    this.state = BodyFraming::Length(0);
                }
                Ok(0) => {
                    return this
                        .fail("upstream closed the connection before the body was complete".into())
                }
                Ok(_) => {}
                Err(e) => return this.fail(e.into()),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, BodyFraming::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            BodyFraming::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use hyper::body::Incoming;
    use hyper_util::rt::TokioIo;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A backend counting accepted connections, answering `ok` with a
    /// Content-Length.
    async fn backend() -> (String, Arc<AtomicUsize>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let n = accepted.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                n.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|_r: Request<Incoming>| async {
                        Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(
                            Bytes::from_static(b"ok"),
                        )))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        (addr, accepted)
    }

    fn cfg() -> PoolConfig {
        PoolConfig {
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(90),
            max_idle: 8,
        }
    }

    /// A deadline no test reaches.
    fn later() -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_secs(60)
    }

    fn req() -> Request<Body> {
        Request::post("/mcp").body(Body::from("{}")).unwrap()
    }

    /// A [`backend`] on a runtime of its own, alive while the runtime is
    /// held.
    fn backend_on_its_own_runtime() -> (tokio::runtime::Runtime, String, Arc<AtomicUsize>) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (addr, accepted) = rt.block_on(backend());
        (rt, addr, accepted)
    }

    #[test]
    fn current_thread_runtimes_keep_their_own_connections() {
        let (_backend_rt, addr, accepted) = backend_on_its_own_runtime();
        let pool = ConnPool::new(addr, cfg());
        // Thread A calls, then keeps running its runtime (with its idle
        // connection) while thread B calls.
        let (a_done, a_done_rx) = tokio::sync::oneshot::channel::<()>();
        let (b_done, b_done_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = |pool: ConnPool,
                      before: Option<tokio::sync::oneshot::Receiver<()>>,
                      done: tokio::sync::oneshot::Sender<()>,
                      after: Option<tokio::sync::oneshot::Receiver<()>>| {
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    if let Some(b) = before {
                        b.await.unwrap();
                    }
                    for _ in 0..3 {
                        let res = pool.send(req(), later()).await.unwrap();
                        res.into_body().collect().await.unwrap();
                    }
                    done.send(()).unwrap();
                    if let Some(a) = after {
                        a.await.unwrap();
                    }
                });
            })
        };
        let a = thread(pool.clone(), None, a_done, Some(b_done_rx));
        let b = thread(pool.clone(), Some(a_done_rx), b_done, None);
        a.join().unwrap();
        b.join().unwrap();
        // Each thread reused its own connection; B never borrowed A's.
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn sequential_calls_reuse_one_connection() {
        let (addr, accepted) = backend().await;
        let pool = ConnPool::new(addr, cfg());
        for _ in 0..20 {
            let res = pool.send(req(), later()).await.unwrap();
            let body = res.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.idle(), 1);
    }

    #[tokio::test]
    async fn unread_body_closes_the_connection_instead_of_pooling_it() {
        let (addr, accepted) = backend().await;
        let pool = ConnPool::new(addr, cfg());
        let res = pool.send(req(), later()).await.unwrap();
        drop(res);
        assert_eq!(pool.idle(), 0);
        let res = pool.send(req(), later()).await.unwrap();
        res.into_body().collect().await.unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn connection_closed_by_backend_while_idle_is_replaced() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // A raw backend that answers one request per connection (keep-alive
        // implied, no `Connection: close`) and then closes the socket,
        // reporting each close on a channel.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let (closed_tx, mut closed) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let closed_tx = closed_tx.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    while !buf.ends_with(b"\r\n\r\n{}") {
                        let mut chunk = [0u8; 1024];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await
                        .unwrap();
                    drop(s);
                    let _ = closed_tx.send(());
                });
            }
        });
        let pool = ConnPool::new(addr, cfg());
        for _ in 0..3 {
            let res = pool.send(req(), later()).await.unwrap();
            let body = res.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"ok");
            // Wait until the backend has closed the connection now pooled.
            closed.recv().await.unwrap();
        }
    }

    /// A backend that answers the first request on its first connection
    /// and then reads the next one and never answers it.
    async fn answers_once() -> String {
        use tokio::io::AsyncWriteExt;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = Vec::new();
            read_request(&mut s, &mut buf).await.unwrap();
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .unwrap();
            let _ = read_request(&mut s, &mut buf).await;
            std::future::pending::<()>().await;
        });
        addr
    }

    fn soon() -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_millis(100)
    }

    #[tokio::test]
    async fn the_deadline_holds_for_a_call_on_a_reused_connection() {
        let pool = ConnPool::new(answers_once().await, cfg());
        let res = pool.send(req(), later()).await.unwrap();
        res.into_body().collect().await.unwrap();
        assert_eq!(pool.idle(), 1);
        // The connection's timer, re-armed for this call's deadline.
        let err = pool.send(req(), soon()).await.err().unwrap();
        assert!(err.is::<TimedOut>(), "{err}");
        assert_eq!(pool.idle(), 0, "a timed-out connection is not pooled");
    }

    #[test]
    fn a_connection_is_reused_only_on_the_runtime_that_opened_it() {
        let (_backend_rt, addr, accepted) = backend_on_its_own_runtime();
        let pool = ConnPool::new(addr, cfg());
        let runtime = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
        };
        let call = |rt: &tokio::runtime::Runtime| {
            rt.block_on(async {
                let call = tokio::time::timeout(Duration::from_secs(30), pool.send(req(), later()));
                let res = call.await.expect("the call hung").unwrap();
                res.into_body().collect().await.unwrap();
            })
        };
        // Runtime `a` opens a connection and stays alive without running
        // while `b`, on the same thread, calls: `a`'s connection would
        // never see its response (`a`'s driver is not running).
        let a = runtime();
        call(&a);
        call(&a);
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        let b = runtime();
        call(&b);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        drop(a);
    }

    #[tokio::test]
    async fn a_deadline_later_than_the_armed_one_is_kept() {
        let pool = ConnPool::new(answers_once().await, cfg());
        let res = pool.send(req(), soon()).await.unwrap();
        res.into_body().collect().await.unwrap();
        // The timer, still armed for the first call's deadline (past by the
        // time this call waits), is moved on to this call's.
        let start = tokio::time::Instant::now();
        let deadline = soon() + Duration::from_millis(200);
        let err = pool.send(req(), deadline).await.err().unwrap();
        assert!(err.is::<TimedOut>(), "{err}");
        assert!(
            tokio::time::Instant::now() >= deadline,
            "{:?}",
            start.elapsed()
        );
    }

    /// Reads one request (head, then a body by its length or chunks) from
    /// `s`; `None` at the end of the stream.
    async fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
        use tokio::io::AsyncReadExt;
        loop {
            let text = String::from_utf8_lossy(buf).to_string();
            if let Some(end) = text.find("\r\n\r\n") {
                let head = text[..end].to_ascii_lowercase();
                let body_end = if head.contains("transfer-encoding: chunked") {
                    text.find("\r\n0\r\n\r\n").map(|i| i + 7)
                } else {
                    let len = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .map_or(0, |n| n.parse::<usize>().unwrap());
                    (text.len() >= end + 4 + len).then_some(end + 4 + len)
                };
                if let Some(body_end) = body_end {
                    buf.drain(..body_end);
                    return Some(text[..body_end].to_string());
                }
            }
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// A backend answering the requests on each connection with the given
    /// raw responses in turn (closing after the last, or after one that
    /// is not self-delimited or says close); the requests it read, and
    /// the number of connections, are reported.
    async fn scripted(
        responses: Vec<&'static [u8]>,
    ) -> (
        String,
        tokio::sync::mpsc::UnboundedReceiver<String>,
        Arc<AtomicUsize>,
    ) {
        use tokio::io::AsyncWriteExt;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let accepted = Arc::new(AtomicUsize::new(0));
        let n = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                n.fetch_add(1, Ordering::SeqCst);
                let (tx, responses) = (tx.clone(), responses.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    for r in responses {
                        let Some(req) = read_request(&mut s, &mut buf).await else {
                            return;
                        };
                        let _ = tx.send(req);
                        if s.write_all(r).await.is_err() {
                            return;
                        }
                        // As a server does after a response that ends with
                        // the connection or asks for it to close.
                        let text = String::from_utf8_lossy(r).to_ascii_lowercase();
                        if text.starts_with("http/1.0")
                            || text.contains("connection: close")
                            || !(text.contains("content-length") || text.contains("chunked"))
                        {
                            return;
                        }
                    }
                });
            }
        });
        (addr, rx, accepted)
    }

    async fn body_of(res: Response<PooledBody>) -> Result<Bytes, BoxError> {
        Ok(res.into_body().collect().await?.to_bytes())
    }

    #[tokio::test]
    async fn chunked_body_arrives_as_sent_and_the_connection_is_reused() {
        let (addr, mut reqs, accepted) = scripted(vec![
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
              5\r\nhello\r\n1;ext\r\n!\r\n0\r\nx-done: yes\r\n\r\n",
            b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n",
        ])
        .await;
        let pool = ConnPool::new(addr, cfg());
        let res = pool.send(req(), later()).await.unwrap();
        assert_eq!(res.status(), 200);
        let collected = res.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["x-done"], "yes");
        assert_eq!(&collected.to_bytes()[..], b"hello!");
        let sent = reqs.recv().await.unwrap();
        assert!(sent.starts_with("POST /mcp HTTP/1.1\r\n"), "{sent}");
        assert!(sent.contains("content-length: 2\r\n") && sent.ends_with("\r\n\r\n{}"));
        // An empty 202: the connection is pooled at once.
        let res = pool.send(req(), later()).await.unwrap();
        assert_eq!(res.status(), 202);
        assert_eq!(pool.idle(), 1);
        assert!(body_of(res).await.unwrap().is_empty());
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_event_stream_is_read_event_by_event() {
        use tokio::io::AsyncWriteExt;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let (next_tx, mut next) = tokio::sync::mpsc::unbounded_channel::<()>();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            read_request(&mut s, &mut Vec::new()).await.unwrap();
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
                .await
                .unwrap();
            for i in 0..3 {
                // The next event only once the client has read this one.
                let event = format!("data: {i}\n\n");
                s.write_all(format!("{:x}\r\n{event}\r\n", event.len()).as_bytes())
                    .await
                    .unwrap();
                next.recv().await.unwrap();
            }
            s.write_all(b"0\r\n\r\n").await.unwrap();
        });
        let pool = ConnPool::new(addr, cfg());
        let mut body = pool.send(req(), later()).await.unwrap().into_body();
        for i in 0..3 {
            let frame = body.frame().await.unwrap().unwrap();
            assert_eq!(frame.into_data().unwrap(), format!("data: {i}\n\n"));
            next_tx.send(()).unwrap();
        }
        assert!(body.frame().await.is_none());
        assert_eq!(pool.idle(), 1);
    }

    #[tokio::test]
    async fn a_streamed_request_body_is_sent_in_chunks() {
        let (addr, mut reqs, _) =
            scripted(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]).await;
        let pool = ConnPool::new(addr, cfg());
        let frames = futures_util::stream::iter([
            Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"{\"a\":"))),
            Ok(Frame::data(Bytes::from_static(b"1}"))),
        ]);
        let body = Body::new(http_body_util::StreamBody::new(frames));
        let req = Request::post("/mcp").body(body).unwrap();
        let res = pool.send(req, later()).await.unwrap();
        assert_eq!(body_of(res).await.unwrap(), "ok");
        let sent = reqs.recv().await.unwrap();
        assert!(sent.contains("transfer-encoding: chunked\r\n"), "{sent}");
        assert!(
            sent.ends_with("\r\n\r\n5\r\n{\"a\":\r\n2\r\n1}\r\n0\r\n\r\n"),
            "{sent}"
        );
    }

    #[tokio::test]
    async fn a_boxed_body_of_known_size_is_sent_with_its_length() {
        let (addr, mut reqs, _) =
            scripted(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]).await;
        let pool = ConnPool::new(addr, cfg());
        let body = Body::new(http_body_util::Full::new(Bytes::from_static(b"[1,2]")));
        let req = Request::put("/mcp").body(body).unwrap();
        let res = pool.send(req, later()).await.unwrap();
        assert_eq!(body_of(res).await.unwrap(), "ok");
        let sent = reqs.recv().await.unwrap();
        assert!(sent.starts_with("PUT /mcp HTTP/1.1\r\n"), "{sent}");
        assert!(sent.ends_with("content-length: 5\r\n\r\n[1,2]"), "{sent}");
    }

    #[tokio::test]
    async fn bodies_ended_by_close_or_after_connection_close_are_not_pooled() {
        for response in [
            &b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nto the end"[..],
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 10\r\n\r\nto the end",
            b"HTTP/1.0 200 OK\r\ncontent-length: 10\r\n\r\nto the end",
            // Bytes after the response: the connection is out of step.
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nto the endHTTP/1.1",
        ] {
            let (addr, _reqs, accepted) = scripted(vec![response, response]).await;
            let pool = ConnPool::new(addr, cfg());
            for _ in 0..2 {
                let res = pool.send(req(), later()).await.unwrap();
                assert_eq!(body_of(res).await.unwrap(), "to the end");
                assert_eq!(pool.idle(), 0);
            }
            assert_eq!(accepted.load(Ordering::SeqCst), 2);
        }
    }

    #[tokio::test]
    async fn a_body_cut_short_or_malformed_is_an_error() {
        for response in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort"[..],
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nxyz\r\n",
        ] {
            let (addr, _reqs, _) = scripted(vec![response]).await;
            let pool = ConnPool::new(addr, cfg());
            let res = pool.send(req(), later()).await.unwrap();
            let err = body_of(res).await.unwrap_err().to_string();
            assert!(
                err.contains("before the body was complete") || err.contains("invalid HTTP/1.1"),
                "{err}"
            );
            assert_eq!(pool.idle(), 0);
        }
        // No response at all, or not HTTP: the send fails.
        for response in [&b""[..], b"SSH-2.0-x\r\n\r\n"] {
            let (addr, _reqs, _) = scripted(vec![response]).await;
            let pool = ConnPool::new(addr, cfg());
            assert!(pool.send(req(), later()).await.is_err());
        }
    }
}
