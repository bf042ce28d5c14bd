//! The upstream connection pool behind [`HttpUpstream`](crate::upstream::HttpUpstream).
//!
//! Why not hyper-util's pooled client: it spawns a task per connection and
//! reaches it through channels, so every call crosses two extra task
//! wake-ups (request in, response out). On a loopback hop that was about
//! half of the gateway's added latency. Here the request's own task drives
//! the HTTP/1.1 connection: while waiting for the response head, and then
//! from inside the response body, which polls the connection before each
//! frame. When the body ends the connection goes back to the pool; when the
//! body is dropped early (client gone) the connection is closed with it,
//! which is exactly the cancellation a stream needs.
//!
//! Idle connections sit in lock-free bounded queues. A connection is
//! registered with the I/O driver of the runtime that opened it; with one
//! single-threaded runtime per core (as `gateway` serves), a connection
//! used from another thread would have every readiness event relayed by
//! its home thread (an extra thread wake-up per call). So a connection
//! opened on a current-thread runtime is reused only on its thread, and
//! each such thread keeps up to `max_idle` idle ones; a multi-threaded
//! runtime has one driver for all its workers and shares one queue. One taken from the queue is polled
//! once before reuse so that a connection the backend closed while idle is
//! noticed and discarded, and a request that failed before a byte of it was
//! written on a reused connection is retried once on a new one.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use http::{Request, Response};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use thread_local::ThreadLocal;
use tokio::net::TcpStream;

use crate::body::{Body, BoxError};

type Connection = http1::Connection<TokioIo<TcpStream>, Body>;

/// One HTTP/1.1 connection: the handle that sends requests and the state
/// machine that moves bytes, driven by whoever uses it. Always kept boxed:
/// it is some 700 bytes, and it moves from the pool into the call and into
/// the response body on every request.
struct Conn {
    tx: http1::SendRequest<Body>,
    io: Connection,
    /// The connection future finished (closed or failed); never poll again.
    done: bool,
    idle_since: Instant,
    /// The thread that opened it, when that was a current-thread runtime
    /// (whose driver it is registered with).
    home: Option<ThreadId>,
}

impl Conn {
    /// Moves bytes; returns false once the connection is finished.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.done && Pin::new(&mut self.io).poll(cx).is_ready() {
            self.done = true;
        }
        !self.done
    }

    /// Whether the connection can take a new request now.
    fn reusable(&mut self, cx: &mut Context<'_>) -> bool {
        self.drive(cx) && matches!(self.tx.poll_ready(cx), Poll::Ready(Ok(())))
    }
}

/// Pool settings.
#[derive(Debug, Clone)]
pub(crate) struct PoolConfig {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
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

/// The thread to pin a new connection to: this one when its runtime is a
/// current-thread one.
fn home_here() -> Option<ThreadId> {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::CurrentThread) => Some(std::thread::current().id()),
        _ => None,
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
pub(crate) struct ConnPool {
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
    pub(crate) fn new(addr: String, cfg: PoolConfig) -> Self {
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
    pub(crate) fn idle(&self) -> usize {
        self.inner.idle_len()
    }

    /// A live idle connection, if the pool has one.
    fn take_idle(&self) -> Option<Box<Conn>> {
        let now = Instant::now();
        let mut cx = Context::from_waker(Waker::noop());
        let home = home_here();
        let idle = self.inner.queue(home);
        while let Some(mut c) = idle.pop() {
            // Polling with a no-op waker reads a pending EOF (the backend
            // closed the idle connection) without registering interest; the
            // real task polls again with its own waker before waiting. (A
            // queue can outlive its thread and pass to a new one: the home
            // check drops what the old thread left.)
            if c.home == home
                && now.duration_since(c.idle_since) < self.inner.cfg.idle_timeout
                && c.reusable(&mut cx)
            {
                return Some(c);
            }
        }
        None
    }

    async fn connect(&self) -> Result<Box<Conn>, BoxError> {
        let cfg = &self.inner.cfg;
        let stream =
            match tokio::time::timeout(cfg.connect_timeout, TcpStream::connect(&self.inner.addr))
                .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(format!("connect to {}: {e}", self.inner.addr).into()),
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
        let (tx, io) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await?;
        Ok(Box::new(Conn {
            tx,
            io,
            done: false,
            idle_since: Instant::now(),
            home: home_here(),
        }))
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
    /// read (and the connection driven) by whoever polls it.
    pub(crate) async fn send(
        &self,
        mut req: Request<Body>,
    ) -> Result<Response<PooledBody>, BoxError> {
        loop {
            let (mut c, reused) = match self.take_idle() {
                Some(c) => (c, true),
                // Boxed: the cold path's state stays out of every call's future.
                None => (Box::pin(self.connect()).await?, false),
            };
            let mut fut = std::pin::pin!(c.tx.try_send_request(req));
            let res = poll_fn(|cx| {
                // Drive the connection first: it writes the request and
                // reads the head, which the response future then yields
                // within the same poll.
                c.drive(cx);
                fut.as_mut().poll(cx)
            })
            .await;
            match res {
                Ok(res) => {
                    return Ok(res.map(|body| PooledBody {
                        body,
                        conn: Some(c),
                        pool: Arc::downgrade(&self.inner),
                    }))
                }
                Err(mut e) => match e.take_message() {
                    // Nothing was written on a connection the backend had
                    // already given up: safe to retry once on a new one.
                    Some(back) if reused => req = back,
                    _ => return Err(e.into_error().into()),
                },
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that drives its connection and hands it back to the
    /// pool when the body is complete.
    pub(crate) struct PooledBody {
        #[pin]
        body: Incoming,
        conn: Option<Box<Conn>>,
        pool: Weak<Inner>,
    }

    impl PinnedDrop for PooledBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if http_body::Body::is_end_stream(&*this.body) {
                release(this.conn.take(), this.pool, None);
            }
            // Otherwise the response was not read to the end: dropping the
            // connection closes it, which tells the backend the client left.
        }
    }
}

/// Puts a connection whose response is complete back in the pool. If the
/// connection needs more driving before it can take a request (rare: the
/// end of the body was seen before the connection finished its bookkeeping),
/// a small task finishes that, bounded by a timeout.
fn release(conn: Option<Box<Conn>>, pool: &Weak<Inner>, cx: Option<&mut Context<'_>>) {
    let (Some(mut c), Some(inner)) = (conn, pool.upgrade()) else {
        return;
    };
    let noop = &mut Context::from_waker(Waker::noop());
    if c.reusable(cx.unwrap_or(noop)) {
        ConnPool::put(&inner, c);
        return;
    }
    if c.done || tokio::runtime::Handle::try_current().is_err() {
        return;
    }
    tokio::spawn(async move {
        let ready = poll_fn(|cx| {
            if !c.drive(cx) {
                return Poll::Ready(false);
            }
            c.tx.poll_ready(cx).map(|r| r.is_ok())
        });
        if let Ok(true) = tokio::time::timeout(Duration::from_secs(5), ready).await {
            ConnPool::put(&inner, c);
        }
    });
}

impl http_body::Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.project();
        if let Some(c) = this.conn.as_mut() {
            c.drive(cx);
        }
        let res = this.body.poll_frame(cx);
        if let Poll::Ready(None) = res {
            release(this.conn.take(), this.pool, Some(cx));
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
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

    fn req() -> Request<Body> {
        Request::post("/mcp").body(Body::from("{}")).unwrap()
    }

    #[test]
    fn current_thread_runtimes_keep_their_own_connections() {
        // The backend on a runtime of its own, alive for the whole test.
        let backend_rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (addr, accepted) = backend_rt.block_on(backend());
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
                        let res = pool.send(req()).await.unwrap();
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
            let res = pool.send(req()).await.unwrap();
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
        let res = pool.send(req()).await.unwrap();
        drop(res);
        assert_eq!(pool.idle(), 0);
        let res = pool.send(req()).await.unwrap();
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
            let res = pool.send(req()).await.unwrap();
            let body = res.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"ok");
            // Wait until the backend has closed the connection now pooled.
            closed.recv().await.unwrap();
        }
    }
}
