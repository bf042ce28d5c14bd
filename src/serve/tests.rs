//! Tests of serving per core.

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
async fn slow_or_silent_clients_are_cut_off_at_the_header_timeout_idle_ones_at_the_idle_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let header = std::time::Duration::from_millis(200);
    let idle = std::time::Duration::from_millis(600);
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
    for server in [Http1Server::Hyper, Http1Server::Builtin] {
        let (addr, tx, task) = start_one(
            ServeOptions::default()
                .http1(server)
                .header_read_timeout(Some(header))
                .idle_timeout(Some(idle)),
        );
        // Silent from the start.
        let silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let t = closed_after(silent).await;
        assert!(t >= header && t < idle, "{server:?}: {t:?}");
        // Half a header, then nothing.
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n")
            .await
            .unwrap();
        let t = closed_after(slow).await;
        assert!(t >= header / 2 && t < idle, "{server:?}: {t:?}");
        // A whole request is answered; the kept-alive connection then
        // outlives the header timeout and closes at the idle timeout.
        let mut ok = tokio::net::TcpStream::connect(addr).await.unwrap();
        ok.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        let n = ok.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        let t = closed_after(ok).await;
        assert!(t >= idle, "{server:?}: idle connection closed after {t:?}");
        tx.send(()).unwrap();
        task.await.unwrap().unwrap();
    }
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
