//! Serving a gateway thread per core.
//!
//! A tokio multi-thread runtime hands a connection's work between its
//! workers: the request is read on one thread, the backend's answer often
//! lands on another, and every hand-off is a thread wake-up. On a loopback
//! hop those wake-ups cost more than everything the gateway does, so the
//! ready gateway runs one single-threaded runtime per core instead, each
//! with its own `SO_REUSEPORT` listener on the same address: the kernel
//! spreads connections over them, and a connection's whole life (client
//! side, upstream call, stream relay) stays on one thread. Shared state
//! (sessions, pools) is already `Send + Sync`, so nothing else changes.
//!
//! Each thread also busy-polls for a moment after its last activity
//! instead of going to sleep at once, and can cut off clients that are slow
//! to send their headers: see [`ServeOptions`].
//!
//! HTTP/1.1 connections are served by
//! [`mcp_gateway_tower::server::serve_http1`] (the router called from the
//! connection's own task, no body channel), HTTP/2 ones (prior knowledge)
//! by hyper; [`Http1Server::Hyper`] puts HTTP/1.1 on hyper too.
//!
//! Applications that embed the layers keep their own runtime; this module
//! is for running the gateway as a process.
//!
//! ```no_run
//! # async fn run(app: axum::Router) -> std::io::Result<()> {
//! use std::time::Duration;
//! use mcp_gateway_axum::serve::{bind_per_core, serve_per_core_with, ServeOptions};
//!
//! let listeners = bind_per_core("127.0.0.1:8080".parse().unwrap(), 2)?;
//! let opts = ServeOptions::default().header_read_timeout(Some(Duration::from_secs(30)));
//! serve_per_core_with(listeners, app, async {
//!     let _ = tokio::signal::ctrl_c().await;
//! }, opts)
//! .await
//! # }
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use mcp_gateway_tower::server::{serve_http1, Http1Config};

use crate::busy_poll::{self, PollerGuard};

/// Binds `threads` listeners to `addr` with `SO_REUSEPORT` (port 0 picks one
/// port for all of them). The first listener's address is the bound one.
pub fn bind_per_core(addr: SocketAddr, threads: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let mut out: Vec<std::net::TcpListener> = Vec::with_capacity(threads.max(1));
    let mut addr = addr;
    for _ in 0..threads.max(1) {
        let sock = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        sock.set_reuse_address(true)?;
        #[cfg(unix)]
        sock.set_reuse_port(true)?;
        sock.set_nonblocking(true)?;
        sock.bind(&addr.into())?;
        sock.listen(1024)?;
        let l: std::net::TcpListener = sock.into();
        // Later listeners join the port the first one got.
        addr = l.local_addr()?;
        out.push(l);
        if cfg!(not(unix)) {
            break;
        }
    }
    Ok(out)
}

/// How [`serve_per_core_with`] serves.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServeOptions {
    /// How long a serving thread keeps checking its sockets after its last
    /// activity before it sleeps (busy polling; see below). Zero turns it
    /// off. Default 50 µs.
    ///
    /// A proxy is woken twice per call, and on virtual machines a wake-up
    /// of an idle core goes through the hypervisor: measured on a 2-core
    /// VM, busy polling took the gateway's added p50 latency at one
    /// connection from 110–200 µs to 0–40 µs. The price is CPU time, up to
    /// one window after each burst of work; each polling round first offers
    /// the core to any other runnable thread. Under a CPU quota (a
    /// container's `cpu.max`) polling spends quota: there, or on machines
    /// where waking a thread is cheap (bare metal), zero may serve better.
    /// A thread with more than two calls in flight stops polling at its
    /// first idle round: under load the next event is near anyway, and
    /// polling would take the core from the peers the calls wait on.
    pub busy_poll: std::time::Duration,
    /// How long a client may take to send a request's headers, counted
    /// from when the connection opens or its previous response ended (so an
    /// idle keep-alive connection is closed after it too). `None`, the
    /// default, waits for ever.
    ///
    /// Set it where clients are not trusted: without it a client can hold
    /// a connection (a file descriptor) open by sending nothing, or a
    /// header a byte at a time. It costs a timer per request (about 1 500
    /// instructions, some 3 % of the gateway's work per call), which is why
    /// it is not on by default; deployments behind a load balancer that
    /// enforces its own have no need of it.
    pub header_read_timeout: Option<std::time::Duration>,
    /// Which server speaks HTTP/1 (HTTP/2 is always hyper's). Default
    /// [`Http1Server::Builtin`].
    pub http1: Http1Server,
}

/// The HTTP/1 server of [`serve_per_core_with`] (`"builtin"` or `"hyper"`
/// in the configuration file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(
    feature = "config",
    derive(serde::Deserialize),
    serde(rename_all = "lowercase")
)]
#[non_exhaustive]
pub enum Http1Server {
    /// [`mcp_gateway_tower::server::serve_http1`]: the service called from
    /// the connection's own task, no body channel; 1.5–1.7 µs less CPU per
    /// call than hyper's on the loopback benchmark.
    #[default]
    Builtin,
    /// hyper's `http1` connection.
    Hyper,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            busy_poll: std::time::Duration::from_micros(50),
            header_read_timeout: None,
            http1: Http1Server::default(),
        }
    }
}

impl ServeOptions {
    /// Sets [`busy_poll`](Self::busy_poll).
    pub fn busy_poll(mut self, window: std::time::Duration) -> Self {
        self.busy_poll = window;
        self
    }

    /// Sets [`header_read_timeout`](Self::header_read_timeout).
    pub fn header_read_timeout(mut self, limit: Option<std::time::Duration>) -> Self {
        self.header_read_timeout = limit;
        self
    }

    /// Sets [`http1`](Self::http1).
    pub fn http1(mut self, server: Http1Server) -> Self {
        self.http1 = server;
        self
    }
}

/// [`serve_per_core_with`] with the default [`ServeOptions`].
pub async fn serve_per_core<F>(
    listeners: Vec<std::net::TcpListener>,
    app: Router,
    shutdown: F,
) -> io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    serve_per_core_with(listeners, app, shutdown, ServeOptions::default()).await
}

/// Serves `app` on every listener: the first on the caller's runtime, each
/// other one on its own thread with a single-threaded runtime. Accepted
/// sockets get `TCP_NODELAY`; a connection speaks HTTP/1.1, or HTTP/2 when
/// it opens with the HTTP/2 preface (h2c, prior knowledge); requests carry
/// axum's `ConnectInfo<SocketAddr>` (the client address anonymous limits
/// key by). When `shutdown` completes, every listener stops accepting,
/// open requests finish, idle connections close, and the call returns once
/// all threads have.
///
/// Threads busy-poll as `opts` says; on the caller's runtime only when it
/// is single-threaded (as `#[tokio::main(flavor = "current_thread")]`).
pub async fn serve_per_core_with<F>(
    listeners: Vec<std::net::TcpListener>,
    app: Router,
    shutdown: F,
    opts: ServeOptions,
) -> io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let mut listeners = listeners.into_iter();
    let first = listeners
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no listener"))?;
    let stop = Arc::new(Stop::default());
    let mut threads = Vec::new();
    for (i, l) in listeners.enumerate() {
        let app = app.clone();
        let stop = stop.clone();
        let opts = opts.clone();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<io::Result<()>>();
        std::thread::Builder::new()
            .name(format!("mcp-gateway-{}", i + 1))
            .spawn(move || {
                let res = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .and_then(|rt| rt.block_on(serve_listener(l, app, stop, opts)));
                let _ = done_tx.send(res);
            })?;
        threads.push(done_rx);
    }
    let trigger = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        trigger.stop();
    });
    let res = serve_listener(first, app, stop, opts).await;
    for t in threads {
        if let Ok(Err(e)) = t.await {
            return Err(e);
        }
    }
    res
}

/// One thread's accept loop; returns when `stop` is set and every
/// connection it accepted has closed.
async fn serve_listener(
    l: std::net::TcpListener,
    app: Router,
    stop: Arc<Stop>,
    opts: ServeOptions,
) -> io::Result<()> {
    let l = tokio::net::TcpListener::from_std(l)?;
    let live = Arc::new(Live::default());
    let _poller = PollerGuard::start(opts.busy_poll);
    let mut stopped = stop.wait();
    loop {
        let accepted = tokio::select! {
            a = l.accept() => a,
            () = &mut stopped => break,
        };
        let (sock, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors and the like: the listener is fine,
                // so back off a little instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        // Small request/response messages: never wait for Nagle.
        let _ = sock.set_nodelay(true);
        let app = app.clone();
        let stop = stop.clone();
        let guard = live.enter();
        let opts = opts.clone();
        tokio::spawn(async move {
            serve_connection(sock, peer, app, stop, opts).await;
            drop(guard);
        });
    }
    drop(l);
    live.idle().await;
    Ok(())
}

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

async fn serve_connection(
    sock: tokio::net::TcpStream,
    peer: SocketAddr,
    app: Router,
    stop: Arc<Stop>,
    opts: ServeOptions,
) {
    let header_timeout = opts.header_read_timeout;
    // Which protocol: a look at the first bytes, without consuming them
    // (one `recv(MSG_PEEK)` per connection, where a rewinding reader would
    // sit in every read of the connection's life).
    let mut head = [0u8; H2_PREFACE.len()];
    let first_bytes = async {
        match header_timeout {
            Some(t) => tokio::time::timeout(t, sock.peek(&mut head)).await.ok(),
            None => Some(sock.peek(&mut head).await),
        }
    };
    let n = tokio::select! {
        n = first_bytes => match n {
            Some(Ok(n)) => n,
            // An error, or silent for longer than a header may take.
            _ => return,
        },
        // Connected but silent: nothing to finish.
        () = stop.wait() => return,
    };
    if n == 0 {
        return;
    }
    let http1 = head[..n] != H2_PREFACE[..n];
    if http1 && opts.http1 == Http1Server::Builtin {
        let svc = tower::service_fn(move |req| call_router(&app, peer, req));
        let stopping = Arc::new(AtomicBool::new(false));
        let cfg = Http1Config {
            header_read_timeout: header_timeout,
        };
        let conn = serve_http1(sock, svc, cfg, stopping.clone());
        // The connection checks the flag between requests; Watched polls
        // it right after setting it, so an idle one closes at once.
        Watched::new(conn, stop, move |_| stopping.store(true, Ordering::Release)).await;
        return;
    }
    let svc = hyper::service::service_fn(move |req| call_router(&app, peer, req));
    let io = TokioIo::new(sock);
    if http1 {
        let mut http1 = hyper::server::conn::http1::Builder::new();
        if let Some(t) = header_timeout {
            http1.timer(TokioTimer::new()).header_read_timeout(t);
        }
        let conn = http1.serve_connection(io, svc);
        let _ = Watched::new(conn, stop, |c| c.graceful_shutdown()).await;
    } else if n == H2_PREFACE.len() {
        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, svc);
        let _ = Watched::new(conn, stop, |c| c.graceful_shutdown()).await;
    } else {
        // Part of the preface so far: let hyper-util's detection read on.
        let mut auto = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        if let Some(t) = header_timeout {
            auto.http1().timer(TokioTimer::new()).header_read_timeout(t);
        }
        let conn = auto.serve_connection(io, svc);
        let _ = Watched::new(conn, stop, |c| c.graceful_shutdown()).await;
    }
}

/// Calls the router with `req`, whichever server read it. Every request
/// gets the client address, as axum's `into_make_service_with_connect_info`
/// gives it; the router is always ready, so it is called without a
/// readiness wait.
fn call_router<B>(
    app: &Router,
    peer: SocketAddr,
    req: http::Request<B>,
) -> busy_poll::Counted<axum::routing::future::RouteFuture<std::convert::Infallible>>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    let mut req = req.map(axum::body::Body::new);
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo(peer));
    busy_poll::Counted::new(tower::Service::call(&mut app.clone(), req))
}

/// The stop signal the threads share. Connections register their task's
/// waker once, and then only load a flag when polled (a `Notify` or a
/// `watch` future in a `select!` costs hundreds of instructions on every
/// poll of every connection).
#[derive(Default)]
struct Stop {
    stopped: AtomicBool,
    waiters: Mutex<Waiters>,
}

#[derive(Default)]
struct Waiters {
    next: u64,
    wakers: HashMap<u64, Waker>,
}

impl Stop {
    fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        let wakers: Vec<Waker> = self.lock().wakers.drain().map(|(_, w)| w).collect();
        for w in wakers {
            w.wake();
        }
    }

    fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    fn register(&self, w: &Waker) -> u64 {
        let mut g = self.lock();
        g.next += 1;
        let key = g.next;
        g.wakers.insert(key, w.clone());
        key
    }

    fn unregister(&self, key: u64) {
        self.lock().wakers.remove(&key);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiters> {
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Completes once stopped.
    fn wait(self: &Arc<Self>) -> StopWait {
        StopWait(Registration::new(self.clone()))
    }
}

/// A task's interest in the stop: its waker registered on first poll (a
/// task keeps its waker), removed on drop; after that a poll only reads
/// the flag.
struct Registration {
    stop: Arc<Stop>,
    key: Option<u64>,
}

impl Registration {
    fn new(stop: Arc<Stop>) -> Self {
        Registration { stop, key: None }
    }

    fn stopped(&mut self, cx: &Context<'_>) -> bool {
        if self.key.is_none() {
            // Registered before the flag is read: a stop after this read
            // finds the waker.
            self.key = Some(self.stop.register(cx.waker()));
        }
        self.stop.is_stopped()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(k) = self.key {
            self.stop.unregister(k);
        }
    }
}

/// Completes once stopped.
struct StopWait(Registration);

impl Future for StopWait {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.stopped(cx) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

pin_project_lite::pin_project! {
    /// A connection that starts its graceful shutdown when the stop comes.
    struct Watched<C, G> {
        #[pin]
        conn: C,
        stop: Registration,
        shutdown: Option<G>,
    }
}

impl<C, G> Watched<C, G>
where
    C: Future,
    G: FnOnce(Pin<&mut C>),
{
    fn new(conn: C, stop: Arc<Stop>, shutdown: G) -> Self {
        Watched {
            conn,
            stop: Registration::new(stop),
            shutdown: Some(shutdown),
        }
    }
}

impl<C, G> Future for Watched<C, G>
where
    C: Future,
    G: FnOnce(Pin<&mut C>),
{
    type Output = C::Output;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        busy_poll::note_activity();
        let mut this = self.project();
        if this.shutdown.is_some() && this.stop.stopped(cx) {
            if let Some(g) = this.shutdown.take() {
                g(this.conn.as_mut());
            }
        }
        this.conn.poll(cx)
    }
}

/// Connections alive on one thread, waited for at shutdown.
#[derive(Default)]
struct Live {
    count: AtomicUsize,
    done: tokio::sync::Notify,
}

struct LiveGuard(Arc<Live>);

impl Live {
    fn enter(self: &Arc<Self>) -> LiveGuard {
        self.count.fetch_add(1, Ordering::SeqCst);
        LiveGuard(self.clone())
    }

    async fn idle(&self) {
        loop {
            let notified = self.done.notified();
            if self.count.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.done.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn every_listener_serves_and_all_stop_on_shutdown() {
        let listeners = bind_per_core("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        let addr = listeners[0].local_addr().unwrap();
        assert!(listeners.iter().all(|l| l.local_addr().unwrap() == addr));
        let app = Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_per_core(listeners, app, async {
            let _ = rx.await;
        }));
        // Several connections: the kernel spreads them over both listeners.
        for _ in 0..8 {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut out = Vec::new();
            s.read_to_end(&mut out).await.unwrap();
            assert!(out.starts_with(b"HTTP/1.1 200"));
            assert!(out.ends_with(b"ok"));
        }
        tx.send(()).unwrap();
        server.await.unwrap().unwrap();
        // Nothing is left running on the caller's runtime: the busy poller
        // ended with the loop.
        let metrics = tokio::runtime::Handle::current().metrics();
        for _ in 0..1000 {
            if metrics.num_alive_tasks() == 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(metrics.num_alive_tasks(), 0);
    }

    /// What a test server hands back: its address, its stop, its task.
    type Serving = (
        SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<io::Result<()>>,
    );

    /// `app` served on `threads` threads, the first on this runtime.
    fn serving(threads: usize, app: Router, opts: ServeOptions) -> Serving {
        let listeners = bind_per_core("127.0.0.1:0".parse().unwrap(), threads).unwrap();
        let addr = listeners[0].local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let stopped = async {
            let _ = rx.await;
        };
        let server = tokio::spawn(serve_per_core_with(listeners, app, stopped, opts));
        (addr, tx, server)
    }

    /// A one-thread server on this runtime answering `/` with "ok".
    fn start_one(opts: ServeOptions) -> Serving {
        let app = Router::new().route("/", axum::routing::get(|| async { "ok" }));
        serving(1, app, opts)
    }

    /// Parks of this (current-thread) runtime while `n` requests go through
    /// a one-thread server on it that busy-polls for `window`.
    async fn parks_during_requests(window: std::time::Duration, n: usize) -> u64 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (addr, tx, server) = start_one(ServeOptions::default().busy_poll(window));
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let mut call = async |s: &mut tokio::net::TcpStream| {
            s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
                .await
                .unwrap();
            let n = s.read(&mut buf).await.unwrap();
            assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        };
        // The first call starts the poller; count from the second on.
        call(&mut s).await;
        let parks = || {
            tokio::runtime::Handle::current()
                .metrics()
                .worker_park_count(0)
        };
        let before = parks();
        for _ in 0..n {
            call(&mut s).await;
        }
        let during = parks() - before;
        drop(s);
        tx.send(()).unwrap();
        server.await.unwrap().unwrap();
        during
    }

    #[tokio::test(flavor = "current_thread")]
    async fn busy_polling_keeps_a_serving_thread_awake_between_requests() {
        // Off: the thread sleeps while each answer is on its way.
        assert!(parks_during_requests(std::time::Duration::ZERO, 20).await >= 20);
        // On (with a window far longer than the test): it never sleeps.
        let hour = std::time::Duration::from_secs(3600);
        assert_eq!(parks_during_requests(hour, 20).await, 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn slow_or_silent_clients_are_cut_off_at_the_header_timeout() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let limit = std::time::Duration::from_millis(200);
        let (addr, tx, server) =
            start_one(ServeOptions::default().header_read_timeout(Some(limit)));
        // Reads until the server closes the connection; how long that took.
        async fn closed_after(mut s: tokio::net::TcpStream) -> std::time::Duration {
            let t0 = std::time::Instant::now();
            let mut buf = [0u8; 256];
            let wait = async {
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            };
            tokio::time::timeout(std::time::Duration::from_secs(10), wait)
                .await
                .expect("the server must close the connection");
            t0.elapsed()
        }
        // Silent from the start.
        let silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert!(closed_after(silent).await >= limit);
        // Half a header, then nothing.
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n")
            .await
            .unwrap();
        assert!(closed_after(slow).await >= limit / 2);
        // A whole request is answered, and the idle connection then closes.
        let mut ok = tokio::net::TcpStream::connect(addr).await.unwrap();
        ok.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        let n = ok.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        closed_after(ok).await;
        tx.send(()).unwrap();
        server.await.unwrap().unwrap();
    }

    /// A server on two threads answering `/` with the client's address.
    fn start() -> Serving {
        let app = Router::new().route(
            "/",
            axum::routing::get(
                |axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>| async move {
                    peer.to_string()
                },
            ),
        );
        serving(2, app, ServeOptions::default())
    }

    #[tokio::test(flavor = "current_thread")]
    async fn http2_with_prior_knowledge_and_the_client_address() {
        use http_body_util::BodyExt;
        let (addr, tx, server) = start();
        let s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let local = s.local_addr().unwrap();
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
                .await
                .unwrap();
        let driver = tokio::spawn(conn);
        for _ in 0..3 {
            let req = http::Request::get(format!("http://{addr}/"))
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap();
            let res = send.send_request(req).await.unwrap();
            assert_eq!(res.version(), http::Version::HTTP_2);
            let body = res.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, local.to_string());
        }
        drop(send);
        let _ = driver.await;
        tx.send(()).unwrap();
        server.await.unwrap().unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn shutdown_closes_idle_and_silent_connections() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (addr, tx, server) = start();
        // One keep-alive connection that has had its answer, one that never
        // said anything.
        let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0; 1024];
        let n = idle.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        tx.send(()).unwrap();
        // Returns although neither client closes.
        server.await.unwrap().unwrap();
        assert_eq!(idle.read(&mut buf).await.unwrap(), 0);
        // Closed, or reset if the stop came before its accept.
        assert!(!matches!(silent.read(&mut buf).await, Ok(n) if n > 0));
        // And nothing listens any more.
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }
}
