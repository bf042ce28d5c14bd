//! Tests of `server`.

use super::*;
use http_body_util::BodyExt;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use tokio::io::AsyncReadExt;

type Svc = tower::util::BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>;

/// Serves `svc` on 127.0.0.1:0 until the test's runtime ends.
async fn start(svc: Svc) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let stopping = Arc::new(AtomicBool::new(false));
            tokio::spawn(serve_http1(
                s,
                svc.clone(),
                Http1Config::default(),
                stopping,
            ));
        }
    });
    addr
}

#[test]
fn a_request_with_many_fields_keeps_them_all_in_order() {
    let mut text = String::from("POST /mcp HTTP/1.1\r\nhost: a\r\n");
    for i in 0..40 {
        text.push_str(&format!("x-f{i}: v{i}\r\n"));
    }
    text.push_str("MCP-Protocol-Version: 2025-11-25\r\ncontent-length: 0\r\n\r\n");
    let mut buf = BytesMut::from(text.as_bytes());
    let head = parse_request(&mut buf).unwrap().unwrap();
    let names: Vec<&str> = head.parts.headers.keys().map(|k| k.as_str()).collect();
    let mut expected = vec!["host".to_owned()];
    expected.extend((0..40).map(|i| format!("x-f{i}")));
    expected.extend(["mcp-protocol-version".into(), "content-length".into()]);
    assert_eq!(names, expected);
    for i in 0..40 {
        assert_eq!(
            head.parts.headers[format!("x-f{i}").as_str()],
            format!("v{i}")
        );
    }
    assert_eq!(head.parts.headers["mcp-protocol-version"], "2025-11-25");
    assert!(buf.is_empty());
}

/// Answers with the request's method, path and body (read whole).
fn echo() -> Svc {
    Svc::new(tower::service_fn(|req: Request<Body>| async move {
        let head = format!("{} {} ", req.method(), req.uri());
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => Bytes::from(format!("error: {e}")),
        };
        let mut out = head.into_bytes();
        out.extend_from_slice(&body);
        Ok(Response::new(Body::from(out)))
    }))
}

/// Writes `req`, then reads until the server closes the connection.
async fn exchange(addr: SocketAddr, req: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(req).await.unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

proptest::proptest! {
    #[test]
    fn any_bytes_parse_or_are_refused_without_panicking(
        data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048)
    ) {
        let mut buf = BytesMut::from(&data[..]);
        let _ = parse_request(&mut buf);
    }

    #[test]
    fn a_head_parses_the_same_however_it_arrives(split in 0usize..200) {
        const REQ: &[u8] =
            b"POST /mcp?x=1 HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\nx-a: b\r\nx-a: c\r\n\r\nhello";
        let head_len = REQ.len() - 5;
        let split = split.min(REQ.len());
        let mut buf = BytesMut::from(&REQ[..split]);
        let early = parse_request(&mut buf).unwrap();
        proptest::prop_assert_eq!(early.is_some(), split >= head_len);
        let head = match early {
            Some(h) => h,
            None => {
                buf.extend_from_slice(&REQ[split..]);
                parse_request(&mut buf).unwrap().expect("complete")
            }
        };
        proptest::prop_assert_eq!(&head.parts.method, &Method::POST);
        proptest::prop_assert_eq!(head.parts.uri.path(), "/mcp");
        proptest::prop_assert_eq!(head.parts.uri.query(), Some("x=1"));
        proptest::prop_assert_eq!(head.parts.headers.get_all("x-a").iter().count(), 2);
        proptest::prop_assert!(matches!(head.framing, Framing::Length(5)));
        proptest::prop_assert!(head.keep_alive);
    }
}

#[tokio::test]
async fn keeps_alive_and_answers_pipelined_requests_in_order() {
    let addr = start(echo()).await;
    let out = exchange(
        addr,
        b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\noneGET /b HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    let first = out.find("POST /a one").expect(&out);
    let second = out.find("GET /b ").expect(&out);
    assert!(first < second, "{out}");
    assert_eq!(out.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{out}");
    assert!(out.contains("content-length: 11\r\n"), "{out}");
    assert!(out.contains("\r\ndate: "), "{out}");
    assert!(
        out.ends_with("connection: close\r\ncontent-length: 7\r\n\r\nGET /b "),
        "{out}"
    );
}

#[tokio::test]
async fn streams_chunked_and_split_bodies_to_the_service() {
    let addr = start(echo()).await;
    // Chunked, with an extension and a trailer section.
    let out = exchange(
        addr,
        b"POST /c HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nt: 1\r\n\r\n",
    )
    .await;
    assert!(out.ends_with("POST /c abcde"), "{out}");
    // A Content-Length body that arrives in pieces after the head.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        b"POST /l HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\nconnection: close\r\n\r\n01",
    )
    .await
    .unwrap();
    for part in [&b"234"[..], b"56789"] {
        tokio::task::yield_now().await;
        s.write_all(part).await.unwrap();
    }
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    assert!(
        out.ends_with(b"POST /l 0123456789"),
        "{}",
        String::from_utf8_lossy(&out)
    );
}

#[tokio::test]
async fn expect_continue_is_answered_before_the_body_is_sent() {
    let addr = start(echo()).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /e HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\nexpect: 100-continue\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 25];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"ok").await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    assert!(out.starts_with(b"HTTP/1.1 200 OK\r\n"));
    assert!(out.ends_with(b"POST /e ok"));
}

#[tokio::test]
async fn bad_heads_and_framings_are_refused_with_a_json_rpc_error_and_a_close() {
    let addr = start(echo()).await;
    let big = format!("GET / HTTP/1.1\r\nx: {}\r\n\r\n", "a".repeat(MAX_HEAD));
    let many: String = (0..=MAX_FIELDS).map(|i| format!("f{i}: v\r\n")).collect();
    let many = format!("GET / HTTP/1.1\r\n{many}\r\n");
    let cases: [(&[u8], &str); 8] = [
        (b"GARBAGE\r\n\r\n", "400 Bad Request"),
        (b"GET / HTTP/1.1\r\nbad name: v\r\n\r\n", "400 Bad Request"),
        (
            b"POST / HTTP/1.1\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n",
            "400 Bad Request",
        ),
        (
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked, gzip\r\n\r\n",
            "400 Bad Request",
        ),
        (
            b"POST / HTTP/1.1\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\n",
            "400 Bad Request",
        ),
        (
            b"POST / HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n",
            "400 Bad Request",
        ),
        (big.as_bytes(), "431 Request Header Fields Too Large"),
        (many.as_bytes(), "431 Request Header Fields Too Large"),
    ];
    for (req, status) in cases {
        let out = exchange(addr, req).await;
        assert!(out.starts_with(&format!("HTTP/1.1 {status}\r\n")), "{out}");
        assert!(out.contains("connection: close\r\n"), "{out}");
        let body = &out[out.find("\r\n\r\n").unwrap() + 4..];
        let v: serde_json::Value = serde_json::from_str(body).expect(body);
        assert_eq!(v["error"]["code"], -32600, "{out}");
    }
    // The same malformed body framing mid-body: the service sees an
    // error, and the connection closes.
    let out = exchange(
        addr,
        b"POST /m HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
    )
    .await;
    assert!(
        out.contains("POST /m error: malformed chunked request body"),
        "{out}"
    );
}

/// A body of `frames` sent one at a time, each only after the test
/// allows it; counts its drops.
fn stream_service(gate: Arc<tokio::sync::Semaphore>, dropped: Arc<AtomicUsize>) -> Svc {
    struct Counted(Arc<AtomicUsize>);
    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    Svc::new(tower::service_fn(move |_req: Request<Body>| {
        let (gate, counted) = (gate.clone(), Counted(dropped.clone()));
        async move {
            let frames =
                futures_util::stream::unfold((0, gate, counted), |(i, gate, counted)| async move {
                    if i == 2 {
                        return None;
                    }
                    gate.acquire().await.unwrap().forget();
                    let f = Ok::<_, Infallible>(Frame::data(Bytes::from(format!("event {i}\n"))));
                    Some((f, (i + 1, gate, counted)))
                });
            Ok(Response::new(Body::new(http_body_util::StreamBody::new(
                frames,
            ))))
        }
    }))
}

async fn read_until(s: &mut TcpStream, seen: &mut Vec<u8>, want: &[u8]) {
    while !seen.windows(want.len()).any(|w| w == want) {
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before {:?}", String::from_utf8_lossy(want));
        seen.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test]
async fn an_unsized_body_is_chunked_frame_by_frame_and_dropped_when_the_client_leaves() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let dropped = Arc::new(AtomicUsize::new(0));
    let addr = start(stream_service(gate.clone(), dropped.clone())).await;
    // Each frame reaches the client before the next one exists.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /s HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    gate.add_permits(1);
    read_until(&mut s, &mut seen, b"transfer-encoding: chunked\r\n").await;
    read_until(&mut s, &mut seen, b"8\r\nevent 0\n\r\n").await;
    gate.add_permits(1);
    read_until(&mut s, &mut seen, b"8\r\nevent 1\n\r\n0\r\n\r\n").await;
    // The connection stays open for the next request.
    s.write_all(b"GET /s HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    seen.clear();
    gate.add_permits(1);
    read_until(&mut s, &mut seen, b"event 0\n").await;
    assert_eq!(dropped.load(Ordering::SeqCst), 1);
    // The client leaves mid-stream: the body is dropped without waiting
    // for its next frame.
    drop(s);
    for _ in 0..10_000 {
        if dropped.load(Ordering::SeqCst) == 2 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(
        dropped.load(Ordering::SeqCst),
        2,
        "the second stream's body was dropped"
    );
}

#[tokio::test]
async fn http10_gets_the_body_to_the_close_and_head_gets_no_body() {
    let gate = Arc::new(tokio::sync::Semaphore::new(2));
    let addr = start(stream_service(gate, Arc::default())).await;
    let out = exchange(addr, b"GET /s HTTP/1.0\r\n\r\n").await;
    assert!(out.contains("connection: close\r\n"), "{out}");
    assert!(!out.contains("transfer-encoding"), "{out}");
    assert!(out.ends_with("\r\n\r\nevent 0\nevent 1\n"), "{out}");
    let addr = start(echo()).await;
    let out = exchange(
        addr,
        b"HEAD /h HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(out.ends_with("content-length: 8\r\n\r\n"), "{out}");
}

#[tokio::test]
async fn a_body_larger_than_the_socket_takes_at_once_arrives_whole() {
    // 8 MiB: far more than a socket buffer, so the first write is
    // partial and the rest goes out as the client reads.
    let big = Bytes::from((0..8 << 20).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let body = big.clone();
    let svc = Svc::new(tower::service_fn(move |_req: Request<Body>| {
        let body = body.clone();
        async move { Ok(Response::new(Body::from(body))) }
    }));
    let addr = start(svc).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    // Let the server fill the socket before reading anything.
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let at = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(out.starts_with(b"HTTP/1.1 200 OK\r\n"));
    assert_eq!(out.len() - at, big.len());
    assert!(out[at..] == big[..], "the bytes arrive in order, none lost");
}

#[tokio::test]
async fn a_request_body_left_unread_closes_the_connection_after_the_answer() {
    let svc = Svc::new(tower::service_fn(|_req: Request<Body>| async {
        Ok(Response::new(Body::from("ignored")))
    }));
    let addr = start(svc).await;
    // The body has not all arrived, nobody reads it: the server
    // answers, then closes instead of reading the rest as a request.
    let out = exchange(
        addr,
        b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\npartial",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    assert!(out.ends_with("ignored"), "{out}");
}

#[tokio::test]
async fn a_client_that_leaves_cancels_the_call_in_progress() {
    let dropped = Arc::new(AtomicUsize::new(0));
    let d = dropped.clone();
    let svc = Svc::new(tower::service_fn(move |_req: Request<Body>| {
        struct Counted(Arc<AtomicUsize>);
        impl Drop for Counted {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let c = Counted(d.clone());
        async move {
            std::future::pending::<()>().await;
            drop(c);
            Ok(Response::new(Body::empty()))
        }
    }));
    let addr = start(svc).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    tokio::task::yield_now().await;
    drop(s);
    for _ in 0..10_000 {
        if dropped.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(dropped.load(Ordering::SeqCst), 1);
}
