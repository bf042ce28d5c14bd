//! Tests of `client`.

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
        on_connect: None,
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
