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
//! Applications that embed the layers keep their own runtime; this module
//! is for running the gateway as a process.
//!
//! ```no_run
//! # async fn run(app: axum::Router) -> std::io::Result<()> {
//! let listeners = mcp_gateway_axum::serve::bind_per_core("127.0.0.1:8080".parse().unwrap(), 2)?;
//! mcp_gateway_axum::serve::serve_per_core(listeners, app, async {
//!     let _ = tokio::signal::ctrl_c().await;
//! })
//! .await
//! # }
//! ```

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use axum::serve::ListenerExt;
use axum::Router;

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

/// Serves `app` on every listener: the first on the caller's runtime, each
/// other one on its own thread with a single-threaded runtime. Accepted
/// sockets get `TCP_NODELAY`; requests carry axum's
/// `ConnectInfo<SocketAddr>` (the client address anonymous limits key by). When `shutdown` completes, every listener
/// stops accepting, open requests finish, and the call returns once all
/// threads have.
pub async fn serve_per_core<F>(
    listeners: Vec<std::net::TcpListener>,
    app: Router,
    shutdown: F,
) -> io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut listeners = listeners.into_iter();
    let first = listeners
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no listener"))?;
    let mut threads = Vec::new();
    for (i, l) in listeners.enumerate() {
        let app = app.clone();
        let mut stop = stop_rx.clone();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<io::Result<()>>();
        std::thread::Builder::new()
            .name(format!("mcp-gateway-{}", i + 1))
            .spawn(move || {
                let res = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .and_then(|rt| {
                        rt.block_on(async move {
                            let l = tokio::net::TcpListener::from_std(l)?;
                            axum::serve(
                                l.tap_io(nodelay),
                                app.into_make_service_with_connect_info::<SocketAddr>(),
                            )
                            .with_graceful_shutdown(async move {
                                let _ = stop.wait_for(|s| *s).await;
                            })
                            .await
                        })
                    });
                let _ = done_tx.send(res);
            })?;
        threads.push(done_rx);
    }
    let first = tokio::net::TcpListener::from_std(first)?;
    let res = axum::serve(
        first.tap_io(nodelay),
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    })
    .await;
    for t in threads {
        if let Ok(Err(e)) = t.await {
            return Err(e);
        }
    }
    res
}

fn nodelay(s: &mut tokio::net::TcpStream) {
    // Small request/response messages: never wait for Nagle.
    let _ = s.set_nodelay(true);
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
    }
}
