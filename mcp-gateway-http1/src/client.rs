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
/// on to the noted one: no timer filed, removed or driver woken per call.
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

/// No connection could be made: the request was not sent.
#[derive(Debug)]
pub struct ConnectError(pub String);

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConnectError {}

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

/// Called with each connection set-up's duration and whether it
/// succeeded (for metrics).
pub type OnConnect = std::sync::Arc<dyn Fn(Duration, bool) + Send + Sync>;

/// Pool settings.
#[derive(Clone)]
pub struct PoolConfig {
    /// Time allowed to establish a TCP connection.
    pub connect_timeout: Duration,
    /// Idle connections are closed after this.
    pub idle_timeout: Duration,
    /// Idle connections kept (per serving thread on current-thread runtimes).
    pub max_idle: usize,
    /// Told of each new connection's set-up time.
    pub on_connect: Option<OnConnect>,
}

impl std::fmt::Debug for PoolConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolConfig")
            .field("connect_timeout", &self.connect_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_idle", &self.max_idle)
            .field("on_connect", &self.on_connect.is_some())
            .finish()
    }
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
            Ok(Err(e)) => {
                return Err(ConnectError(format!("connect to {}: {e}", self.inner.addr)).into())
            }
            Err(_) if by == deadline => return Err(TimedOut.into()),
            Err(_) => {
                return Err(ConnectError(format!(
                    "connect to {} timed out after {:?}",
                    self.inner.addr, cfg.connect_timeout
                ))
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
                None => {
                    let started = std::time::Instant::now();
                    let c = Box::pin(self.connect(here, deadline)).await;
                    if let Some(f) = &self.inner.cfg.on_connect {
                        f(started.elapsed(), c.is_ok());
                    }
                    (c?, false)
                }
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
mod tests;
