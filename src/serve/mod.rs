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
//! Connections speak HTTP/1.1 or HTTP/2: over TLS the version is what
//! ALPN agreed; in clear text a connection that opens with the HTTP/2
//! preface is HTTP/2 (h2c, prior knowledge). hyper serves both by default;
//! `Http1Server::Builtin` serves clear-text HTTP/1.1 with the
//! `mcp-gateway-http1` server instead (a tuning knob, see
//! `docs/benchmarks.md`). With TLS and a client CA, the verified client
//! certificate reaches the layers as a
//! [`PeerCertificate`].
//!
//! Safe defaults for a gateway facing the internet: a 30 s header timeout
//! (also bounding the TLS handshake), a 120 s idle timeout, a cap on open
//! connections below the file-descriptor limit and one per client address,
//! a 30 s drain at shutdown, busy polling off. See [`ServeOptions`].
//!
//! Applications that embed the layers keep their own runtime; this module
//! is for running the gateway as a process.
//!
//! ```no_run
//! # async fn run(app: axum::Router) -> std::io::Result<()> {
//! use std::time::Duration;
//! use mcp_gateway::serve::{bind_per_core, serve_per_core_with, ServeOptions};
//!
//! let listeners = bind_per_core("127.0.0.1:8080".parse().unwrap(), 2)?;
//! let opts = ServeOptions::default().header_read_timeout(Some(Duration::from_secs(10)));
//! serve_per_core_with(listeners, app, async {
//!     let _ = tokio::signal::ctrl_c().await;
//! }, opts)
//! .await
//! # }
//! ```

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use mcp_gateway_http1::server::{serve_http1, Http1Config};
use mcp_gateway_tower::auth::PeerCertificate;

mod busy_poll;
pub mod conns;
mod idle;
mod shutdown;
#[cfg(test)]
mod tests;
pub mod tls;

use self::busy_poll::PollerGuard;
use self::conns::ConnLimits;
use self::idle::{Activity, ClientTimeouts, GuardedBody, RequestGuard};
use self::shutdown::{Live, Stop, Watched};
use mcp_gateway_tower::forwarded::TrustedProxies;

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
    /// activity before it sleeps (busy polling). Zero, the default, turns
    /// it off.
    ///
    /// A tuning knob for hosts dedicated to the gateway: a proxy is woken
    /// twice per call, and on virtual machines the wake-up of an idle core
    /// goes through the hypervisor, so polling for a few tens of
    /// microseconds cuts the added latency at low load a lot, for CPU time
    /// (up to one window after each burst of work). Under a CPU quota (a
    /// container's `cpu.max`) polling spends quota. A thread with more than
    /// two calls in flight stops polling at its first idle round: under
    /// load the next event is near anyway.
    pub busy_poll: Duration,
    /// How long a client may take to complete the TLS handshake and send a
    /// request's headers, counted from when the connection opens or from
    /// the first byte of a later request (`client_header_secs`). Default
    /// 30 s; `None` waits for ever (only behind a load balancer that
    /// enforces its own).
    ///
    /// Without it a client can hold a connection (a file descriptor) open
    /// by sending nothing, or a header a byte at a time.
    pub header_read_timeout: Option<Duration>,
    /// How long a connection may stay open with no request in progress
    /// (`client_idle_secs`): a keep-alive HTTP/1.1 connection between
    /// requests, an HTTP/2 connection with no stream. Default 120 s;
    /// `None`: no limit.
    pub idle_timeout: Option<Duration>,
    /// At shutdown, how long requests in progress may take to finish
    /// before the connections left are closed (`shutdown_secs`). Default
    /// 30 s; `None`: wait for all of them.
    pub shutdown_timeout: Option<Duration>,
    /// Client connections open at once, over all threads; past it the
    /// listeners stop accepting until one closes. 0, the default, sets it
    /// from the process's file-descriptor limit
    /// ([`conns::auto_max_connections`]).
    pub max_connections: usize,
    /// Client connections open at once from one address (trusted proxies
    /// excepted); past it a new one gets a `429` and is closed. Default
    /// 256; 0: no cap.
    pub max_connections_per_client: usize,
    /// Proxies whose connections are not held to the per-address cap.
    pub trusted_proxies: TrustedProxies,
    /// Which server speaks clear-text HTTP/1.1 (HTTP/2 and TLS are always
    /// hyper's). Default [`Http1Server::Hyper`].
    pub http1: Http1Server,
    /// Serve HTTPS with this rustls configuration (see [`tls`]); `None`,
    /// the default, serves clear text.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// The HTTP/1.1 server of [`serve_per_core_with`] (`http1_server =
/// "hyper"` or `"builtin"` in the configuration file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Http1Server {
    /// hyper's `http1` connection: the default, the server the whole
    /// ecosystem hardens.
    #[default]
    Hyper,
    /// [`mcp_gateway_http1::server::serve_http1`]: the service called from
    /// the connection's own task, no body channel; less CPU per call (see
    /// `docs/benchmarks.md`). Clear text only.
    Builtin,
}

impl std::str::FromStr for Http1Server {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "hyper" => Ok(Http1Server::Hyper),
            "builtin" => Ok(Http1Server::Builtin),
            _ => Err(format!("{s:?}: expected hyper or builtin")),
        }
    }
}

/// The default header timeout.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// The default idle timeout of a client connection.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// The default drain deadline at shutdown.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// The default cap on connections per client address.
pub const DEFAULT_MAX_CONNECTIONS_PER_CLIENT: usize = 256;

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            busy_poll: Duration::ZERO,
            header_read_timeout: Some(DEFAULT_HEADER_READ_TIMEOUT),
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            shutdown_timeout: Some(DEFAULT_SHUTDOWN_TIMEOUT),
            max_connections: 0,
            max_connections_per_client: DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
            trusted_proxies: TrustedProxies::default(),
            http1: Http1Server::default(),
            tls: None,
        }
    }
}

impl ServeOptions {
    /// Sets [`busy_poll`](Self::busy_poll).
    pub fn busy_poll(mut self, window: Duration) -> Self {
        self.busy_poll = window;
        self
    }

    /// Sets [`header_read_timeout`](Self::header_read_timeout).
    pub fn header_read_timeout(mut self, limit: Option<Duration>) -> Self {
        self.header_read_timeout = limit;
        self
    }

    /// Sets [`idle_timeout`](Self::idle_timeout).
    pub fn idle_timeout(mut self, limit: Option<Duration>) -> Self {
        self.idle_timeout = limit;
        self
    }

    /// Sets [`shutdown_timeout`](Self::shutdown_timeout).
    pub fn shutdown_timeout(mut self, limit: Option<Duration>) -> Self {
        self.shutdown_timeout = limit;
        self
    }

    /// Sets [`max_connections`](Self::max_connections) and
    /// [`max_connections_per_client`](Self::max_connections_per_client).
    pub fn max_connections(mut self, total: usize, per_client: usize) -> Self {
        self.max_connections = total;
        self.max_connections_per_client = per_client;
        self
    }

    /// Sets [`trusted_proxies`](Self::trusted_proxies).
    pub fn trusted_proxies(mut self, trusted: TrustedProxies) -> Self {
        self.trusted_proxies = trusted;
        self
    }

    fn client_timeouts(&self) -> ClientTimeouts {
        ClientTimeouts {
            header: self.header_read_timeout,
            idle: self.idle_timeout,
        }
    }

    /// Sets [`http1`](Self::http1).
    pub fn http1(mut self, server: Http1Server) -> Self {
        self.http1 = server;
        self
    }

    /// Sets [`tls`](Self::tls).
    pub fn tls(mut self, config: Option<Arc<rustls::ServerConfig>>) -> Self {
        self.tls = config;
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
    let max = match opts.max_connections {
        0 => conns::auto_max_connections(conns::raise_fd_limit()),
        n => n,
    };
    let limits = ConnLimits::new(
        max,
        opts.max_connections_per_client,
        opts.trusted_proxies.clone(),
    );
    let mut threads = Vec::new();
    for (i, l) in listeners.enumerate() {
        let app = app.clone();
        let stop = stop.clone();
        let opts = opts.clone();
        let limits = limits.clone();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<io::Result<()>>();
        std::thread::Builder::new()
            .name(format!("mcp-gateway-{}", i + 1))
            .spawn(move || {
                let res = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .and_then(|rt| rt.block_on(serve_listener(l, app, stop, opts, limits)));
                let _ = done_tx.send(res);
            })?;
        threads.push(done_rx);
    }
    let trigger = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        trigger.stop();
    });
    let res = serve_listener(first, app, stop, opts, limits).await;
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
    limits: Arc<ConnLimits>,
) -> io::Result<()> {
    let l = tokio::net::TcpListener::from_std(l)?;
    let live = Arc::new(Live::default());
    let _poller = PollerGuard::start(opts.busy_poll);
    let mut stopped = stop.wait();
    loop {
        // At the connection cap: no accept until one closes.
        let accepted = tokio::select! {
            a = async { limits.room().await; l.accept().await } => a,
            () = &mut stopped => break,
        };
        let (sock, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors and the like: the listener is fine,
                // so back off a little instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(slot) = limits.admit(peer.ip()) else {
            tracing::debug!(%peer, "too many connections from this address: refused");
            if opts.tls.is_none() {
                // Best effort, without waiting: the socket's buffer is empty.
                let _ = sock.try_write(conns::TOO_MANY_CONNECTIONS);
            }
            continue;
        };
        // Small request/response messages: never wait for Nagle.
        let _ = sock.set_nodelay(true);
        let app = app.clone();
        let stop = stop.clone();
        let guard = live.enter();
        let opts = opts.clone();
        tokio::spawn(async move {
            serve_connection(sock, peer, app, stop, opts).await;
            drop((guard, slot));
        });
    }
    drop(l);
    match opts.shutdown_timeout {
        None => live.idle().await,
        Some(limit) => {
            if tokio::time::timeout(limit, live.idle()).await.is_err() {
                tracing::warn!(
                    open = live.count(),
                    ?limit,
                    "shutdown deadline passed: closing the connections left"
                );
            }
        }
    }
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
    if let Some(tls) = opts.tls.clone() {
        return serve_tls_connection(sock, peer, app, stop, opts, tls).await;
    }
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
        let svc = tower::service_fn(move |req| call_router(&app, peer, None, None, req));
        let stopping = Arc::new(AtomicBool::new(false));
        let cfg = Http1Config {
            header_read_timeout: header_timeout,
            idle_timeout: opts.idle_timeout,
        };
        let conn = serve_http1(sock, svc, cfg, stopping.clone());
        // The connection checks the flag between requests; Watched polls
        // it right after setting it, so an idle one closes at once.
        Watched::new(conn, stop, move |_| stopping.store(true, Ordering::Release)).await;
        return;
    }
    let version = if http1 {
        Some(http::Version::HTTP_11)
    } else if n == H2_PREFACE.len() {
        Some(http::Version::HTTP_2)
    } else {
        // Part of the preface so far: let hyper-util's detection read on.
        None
    };
    serve_hyper(sock, version, peer, None, app, stop, opts.client_timeouts()).await;
}

/// A TLS connection: the handshake (bounded by the header timeout), the
/// verified client certificate if any, then HTTP/2 or HTTP/1.1 as ALPN
/// agreed, served by hyper.
async fn serve_tls_connection(
    sock: tokio::net::TcpStream,
    peer: SocketAddr,
    app: Router,
    stop: Arc<Stop>,
    opts: ServeOptions,
    tls: Arc<rustls::ServerConfig>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let handshake = async {
        match opts.header_read_timeout {
            Some(t) => tokio::time::timeout(t, acceptor.accept(sock))
                .await
                .unwrap_or_else(|_| {
                    Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "handshake timed out",
                    ))
                }),
            None => acceptor.accept(sock).await,
        }
    };
    let stream = tokio::select! {
        s = handshake => match s {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
        },
        () = stop.wait() => return,
    };
    let (_, conn) = stream.get_ref();
    let cert = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(tls::peer_certificate)
        .map(Arc::new);
    let version = match conn.alpn_protocol() {
        Some(b"h2") => Some(http::Version::HTTP_2),
        _ => Some(http::Version::HTTP_11),
    };
    serve_hyper(
        stream,
        version,
        peer,
        cert,
        app,
        stop,
        opts.client_timeouts(),
    )
    .await;
}

/// Serves one connection with hyper: HTTP/1.1, HTTP/2, or (`None`) either,
/// as the first bytes say. The client timeouts are the watchdog's (see
/// `idle`), not hyper's header timer, which would also close idle
/// keep-alive connections at the header timeout.
async fn serve_hyper<I>(
    io: I,
    version: Option<http::Version>,
    peer: SocketAddr,
    cert: Option<Arc<PeerCertificate>>,
    app: Router,
    stop: Arc<Stop>,
    timeouts: ClientTimeouts,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let act = timeouts.any().then(Activity::new);
    let io = TokioIo::new(idle::Tracked::new(
        io,
        act.clone().unwrap_or_else(Activity::new),
    ));
    let on_request = act.clone();
    let svc = hyper::service::service_fn(move |req| {
        call_router(&app, peer, cert.clone(), on_request.as_ref(), req)
    });
    let watch = act.map(|a| (a, timeouts));
    match version {
        Some(http::Version::HTTP_11) => {
            let http1 = hyper::server::conn::http1::Builder::new();
            let conn = http1.serve_connection(io, svc);
            idle::bounded(
                Watched::new(conn, stop, |c| c.graceful_shutdown()),
                watch,
                true,
            )
            .await;
        }
        Some(_) => {
            let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            http2.timer(TokioTimer::new());
            if let Some(t) = timeouts.header {
                // A peer that stops answering pings is gone: closed.
                http2.keep_alive_interval(Some(t)).keep_alive_timeout(t);
            }
            let conn = http2.serve_connection(io, svc);
            idle::bounded(
                Watched::new(conn, stop, |c| c.graceful_shutdown()),
                watch,
                false,
            )
            .await;
        }
        None => {
            let auto = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = auto.serve_connection(io, svc);
            // Either protocol: the idle rule only.
            // (Inline rather than through `idle::bounded`: with this
            // connection type the compiler cannot prove the spawned future
            // `Send` through a generic function.)
            let conn = Watched::new(conn, stop, |c| c.graceful_shutdown());
            match watch {
                None => {
                    let _ = conn.await;
                }
                Some((act, t)) => {
                    tokio::select! {
                        _ = conn => {}
                        () = idle::watchdog(act, t, false) => {}
                    }
                }
            }
        }
    }
}

/// Calls the router with `req`, whichever server read it. Every request
/// gets the client address (and, over mutual TLS, the verified client
/// certificate), as axum's `into_make_service_with_connect_info`
/// gives it; the router is always ready, so it is called without a
/// readiness wait. With a connection [`Activity`], the request counts as in
/// progress until its response body ends.
fn call_router<B>(
    app: &Router,
    peer: SocketAddr,
    cert: Option<Arc<PeerCertificate>>,
    act: Option<&Arc<Activity>>,
    req: http::Request<B>,
) -> Guarded<busy_poll::Counted<axum::routing::future::RouteFuture<std::convert::Infallible>>>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    let guard = act.map(Activity::begin);
    let mut req = req.map(axum::body::Body::new);
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo(peer));
    if let Some(cert) = cert {
        req.extensions_mut().insert((*cert).clone());
    }
    Guarded {
        inner: busy_poll::Counted::new(tower::Service::call(&mut app.clone(), req)),
        guard,
    }
}

pin_project_lite::pin_project! {
    /// A router call whose response body carries the request's
    /// [`RequestGuard`].
    struct Guarded<F> {
        #[pin]
        inner: F,
        guard: Option<RequestGuard>,
    }
}

impl<F, B> Future for Guarded<F>
where
    F: Future<Output = Result<http::Response<B>, std::convert::Infallible>>,
{
    type Output = Result<http::Response<GuardedBody<B>>, std::convert::Infallible>;
    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.project();
        match this.inner.poll(cx) {
            std::task::Poll::Ready(Ok(res)) => {
                let guard = this.guard.take();
                std::task::Poll::Ready(Ok(res.map(|b| GuardedBody::new(b, guard))))
            }
            std::task::Poll::Ready(Err(e)) => match e {},
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }
}
