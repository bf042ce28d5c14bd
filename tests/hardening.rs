//! Hardening and operability, through the `mcp-gateway` binary: floods that
//! must not lock other clients out, every timeout reached and answered as
//! documented, error answers that leak no address, `X-Forwarded-For` from
//! untrusted and trusted peers, CORS preflight, the access log and the
//! startup summary.

#[path = "../examples/support/fixtures.rs"]
mod fixtures;
#[path = "support/net.rs"]
mod net;
#[path = "support/process.rs"]
mod process;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use net::{raw, Reply, ACCEPT, JSON, V};
use process::{GatewayProcess, Scratch};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#;

fn echo_call(id: u32) -> String {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}})
        .to_string()
}

/// The rmcp fixture server on 127.0.0.1:0.
async fn fixture_backend() -> net::Served {
    net::serve(axum::Router::new().route_service("/mcp", fixtures::service("fixture"))).await
}

/// `initialize` as the client at `addr` (behind the trusted proxy that the
/// test process plays).
async fn init_as(gw: &str, addr: &str) -> Reply {
    raw("POST", gw, &[JSON, ACCEPT, ("x-forwarded-for", addr)], INIT).await
}

async fn call_in(gw: &str, sid: &str, addr: &str, id: u32) -> Reply {
    raw(
        "POST",
        gw,
        &[
            JSON,
            ACCEPT,
            V,
            ("mcp-session-id", sid),
            ("x-forwarded-for", addr),
        ],
        &echo_call(id),
    )
    .await
}

/// The binary in front of `upstream`, on 127.0.0.1:0, with `extra` flags.
fn gateway(upstream: &str, extra: &[&str]) -> GatewayProcess {
    let mut args = vec!["--listen", "127.0.0.1:0", "--upstream", upstream];
    args.extend_from_slice(extra);
    GatewayProcess::start(&args)
}

/// `echo` called in session `sid`.
async fn in_session(url: &str, sid: &str, id: u32) -> Reply {
    raw(
        "POST",
        url,
        &[JSON, ACCEPT, V, ("mcp-session-id", sid)],
        &echo_call(id),
    )
    .await
}

fn session_of(r: &Reply) -> String {
    r.headers["mcp-session-id"].to_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_flood_from_one_client_leaves_the_table_to_the_others() {
    let backend = fixture_backend().await;
    let dir = Scratch::new("flood");
    let cfg = dir.file(
        "g.toml",
        &format!(
            r#"
listen = "127.0.0.1:0"
trusted_proxies = ["127.0.0.1"]
[backend]
urls = ["{}"]
[limits]
principal_sessions = 40
principal_session_rate = {{ burst = 10000, per_second = 10000.0 }}
[sessions]
max_sessions = 100
"#,
            net::url(&backend)
        ),
    );
    let gw = GatewayProcess::start(&["--config", &cfg]);
    let url = gw.url.clone();
    // The flood: 2000 initialize from one client, 50 at a time.
    let flooder = {
        let url = url.clone();
        tokio::spawn(async move {
            let (mut ok, mut refused) = (0, 0);
            for _ in 0..40 {
                let batch: Vec<_> = (0..50)
                    .map(|_| {
                        let url = url.clone();
                        tokio::spawn(async move { init_as(&url, "203.0.113.1").await })
                    })
                    .collect();
                for r in batch {
                    let r = r.await.unwrap();
                    match r.status {
                        200 => ok += 1,
                        429 => {
                            assert_eq!(r.error_code(), Some(-32055));
                            assert!(r.headers.contains_key("retry-after"));
                            assert_eq!(r.json()["error"]["data"]["limit"], "principal_sessions");
                            refused += 1
                        }
                        s => panic!("flood answered {s}: {:?}", r.body),
                    }
                }
            }
            (ok, refused)
        })
    };
    // Meanwhile another client starts sessions and is answered.
    for i in 0..5 {
        let r = init_as(&url, "203.0.113.2").await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let sid = session_of(&r);
        let r = call_in(&url, &sid, "203.0.113.2", 10 + i).await;
        assert_eq!(
            r.answer()["result"]["content"][0]["text"],
            "hi",
            "{:?}",
            r.body
        );
    }
    let (ok, refused) = flooder.await.unwrap();
    assert_eq!(ok, 40, "the flooder holds its cap, no more");
    assert_eq!(refused, 2000 - 40);
    // And after the flood, still room for others.
    let r = init_as(&url, "203.0.113.3").await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn new_sessions_per_client_per_second_are_capped_with_retry_after() {
    let backend = fixture_backend().await;
    let gw = gateway(&net::url(&backend), &["--trusted-proxy", "127.0.0.1"]);
    // The default: a burst of 64, then 16 a second.
    let mut codes = Vec::new();
    for _ in 0..80 {
        codes.push(init_as(&gw.url, "198.51.100.7").await);
    }
    let refused: Vec<&Reply> = codes.iter().filter(|r| r.status == 429).collect();
    assert!(
        !refused.is_empty() && refused.len() <= 16,
        "{}",
        refused.len()
    );
    let r = refused[0];
    assert_eq!(r.json()["error"]["data"]["limit"], "principal_session_rate");
    assert!(
        r.headers["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    // Another client is not affected.
    assert_eq!(init_as(&gw.url, "198.51.100.8").await.status, 200);
}

#[tokio::test]
async fn a_full_table_evicts_the_oldest_idle_session_audited_before_refusing() {
    let backend = fixture_backend().await;
    let dir = Scratch::new("evict");
    let audit = dir.0.join("audit.jsonl");
    let cfg = dir.file(
        "g.toml",
        &format!(
            r#"
listen = "127.0.0.1:0"
[backend]
urls = ["{}"]
[sessions]
max_sessions = 5
evict_idle_secs = 0
[audit.jsonl]
path = "{}"
"#,
            net::url(&backend),
            audit.display()
        ),
    );
    let gw = GatewayProcess::start(&["--config", &cfg]);
    let mut sids = Vec::new();
    for _ in 0..5 {
        let r = raw("POST", &gw.url, &[JSON, ACCEPT], INIT).await;
        assert_eq!(r.status, 200);
        sids.push(session_of(&r));
    }
    // All but the first are used again: the first is the least recently used.
    for (i, sid) in sids.iter().enumerate().skip(1) {
        let r = in_session(&gw.url, sid, i as u32).await;
        assert_eq!(r.status, 200);
    }
    let r = raw("POST", &gw.url, &[JSON, ACCEPT], INIT).await;
    assert_eq!(r.status, 200, "room was made: {:?}", r.body);
    let r = in_session(&gw.url, &sids[0], 9).await;
    assert_eq!(r.status, 404, "the evicted session is gone");
    let r = in_session(&gw.url, &sids[1], 9).await;
    assert_eq!(r.status, 200, "the others live");
    // Audited as evicted, at once (not at the next periodic sweep).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(&audit).unwrap_or_default();
        let evicted = text.lines().any(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["event"] == "session_end"
                && v["end_reason"] == "evicted"
                && v["session"] == sids[0].as_str()
        });
        if evicted {
            break;
        }
        assert!(Instant::now() < deadline, "no eviction record: {text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Opens a connection and sends nothing.
async fn silent_connection(addr: SocketAddr) -> tokio::net::TcpStream {
    tokio::net::TcpStream::connect(addr).await.unwrap()
}

fn addr_of(url: &str) -> SocketAddr {
    url.trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn idle_connections_beyond_the_cap_wait_and_are_reclaimed_while_others_are_served() {
    let backend = fixture_backend().await;
    let gw = gateway(
        &net::url(&backend),
        &[
            "--max-connections",
            "100",
            "--max-connections-per-client",
            "0",
            "--client-header-secs",
            "1",
            "--threads",
            "1",
        ],
    );
    let addr = addr_of(&gw.url);
    // 600 sockets that never send a byte: 100 are taken, the rest wait in
    // the listen backlog.
    let mut idle = Vec::new();
    for _ in 0..600 {
        idle.push(silent_connection(addr).await);
    }
    // A real client still gets its session: the silent ones are closed at
    // the header timeout and the backlog drains.
    let start = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(30),
        raw("POST", &gw.url, &[JSON, ACCEPT], INIT),
    )
    .await
    .expect("served while the flood holds its sockets");
    assert_eq!(r.status, 200);
    assert!(start.elapsed() < Duration::from_secs(30));
    assert!(!gw.log().contains("Too many open files"));
    drop(idle);
}

#[tokio::test]
async fn one_address_cannot_hold_more_than_its_connections() {
    let backend = fixture_backend().await;
    let gw = gateway(
        &net::url(&backend),
        &["--max-connections-per-client", "10", "--threads", "1"],
    );
    let addr = addr_of(&gw.url);
    let mut held = Vec::new();
    for _ in 0..10 {
        held.push(silent_connection(addr).await);
    }
    // Wait until the gateway counted them all: the eleventh is refused.
    let deadline = Instant::now() + Duration::from_secs(20);
    let refusal = loop {
        let mut s = silent_connection(addr).await;
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut buf)).await;
        let text = String::from_utf8_lossy(&buf).into_owned();
        if text.starts_with("HTTP/1.1 429") {
            break text;
        }
        assert!(Instant::now() < deadline, "never refused: {text:?}");
    };
    assert!(refusal.contains("retry-after: 1"), "{refusal}");
    assert!(refusal.contains("-32055"), "{refusal}");
    // One goes, another may come.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            raw("POST", &gw.url, &[JSON, ACCEPT], INIT),
        )
        .await;
        if matches!(&r, Ok(r) if r.status == 200) {
            break;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A backend that accepts connections and never answers.
async fn silent_backend() -> (String, tokio::task::JoinHandle<()>) {
    let (url, task, _) = counting_silent_backend().await;
    (url, task)
}

/// A backend that accepts connections and never answers, counting the
/// connections it holds.
async fn counting_silent_backend() -> (
    String,
    tokio::task::JoinHandle<()>,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", l.local_addr().unwrap());
    let n = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = n.clone();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    (url, task, n)
}

/// A closed port.
fn refusing_backend() -> (String, u16) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    (format!("http://127.0.0.1:{port}/mcp"), port)
}

fn assert_leaks_nothing(r: &Reply, port: u16) {
    let text = String::from_utf8_lossy(&r.body).to_lowercase();
    for leak in [
        "127.0.0.1",
        &port.to_string(),
        "refused",
        "os error",
        "tcp",
        "connect",
    ] {
        assert!(!text.contains(leak), "the answer leaks {leak:?}: {text}");
    }
}

#[tokio::test]
async fn gateway_errors_name_the_backend_never_its_address() {
    let (url, port) = refusing_backend();
    let dir = Scratch::new("names");
    let cfg = dir.file(
        "g.toml",
        &format!("listen = \"127.0.0.1:0\"\n[backend]\nname = \"tickets\"\nurls = [\"{url}\"]\n"),
    );
    let gw = GatewayProcess::start(&["--config", &cfg]);
    let r = raw("POST", &gw.url, &[JSON, ACCEPT], INIT).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.error_code(), Some(-32050));
    assert_eq!(
        r.json()["error"]["message"],
        "Bad Gateway: backend tickets is unreachable"
    );
    assert_leaks_nothing(&r, port);
    // The operator's log has the cause.
    assert!(
        gw.wait_for_log(&format!("127.0.0.1:{port}")),
        "{}",
        gw.log()
    );

    let (silent, task) = silent_backend().await;
    let port = addr_of(&silent).port();
    let gw = gateway(&silent, &["--upstream-first-byte-secs", "1"]);
    let start = Instant::now();
    let r = raw("POST", &gw.url, &[JSON, ACCEPT], INIT).await;
    assert_eq!(r.status, 504);
    assert_eq!(r.error_code(), Some(-32051));
    assert!(start.elapsed() >= Duration::from_secs(1));
    assert!(start.elapsed() < Duration::from_secs(20));
    let msg = r.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(msg.contains("backend default"), "{msg}");
    assert_leaks_nothing(&r, port);
    task.abort();
}

#[tokio::test]
async fn a_backend_that_never_completes_the_connection_hits_the_connect_timeout() {
    // A listener whose accept queue is full and that never accepts: the
    // kernel drops further SYNs, so a connect hangs.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    sock.listen(0).unwrap();
    let addr: SocketAddr = sock.local_addr().unwrap().as_socket().unwrap();
    let mut fill = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) = tokio::time::timeout(
            Duration::from_millis(300),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            fill.push(s);
        }
    }
    let gw = gateway(
        &format!("http://{addr}/mcp"),
        &[
            "--upstream-connect-ms",
            "300",
            "--upstream-first-byte-secs",
            "60",
        ],
    );
    let start = Instant::now();
    let r = raw("POST", &gw.url, &[JSON, ACCEPT], INIT).await;
    assert!(matches!(r.status, 502 | 504), "{}", r.status);
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "answered at the connect timeout, not the first-byte one: {:?}",
        start.elapsed()
    );
    assert_leaks_nothing(&r, addr.port());
    drop(sock);
}

#[tokio::test]
async fn a_stream_that_goes_silent_ends_at_the_upstream_idle_timeout() {
    // The backend answers with an event stream: one event, then silence.
    let app = axum::Router::new().route(
        "/mcp",
        axum::routing::post(|| async {
            let first = futures_util::stream::once(async {
                Ok::<_, std::convert::Infallible>(bytes::Bytes::from_static(
                    b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progressToken\":1,\"progress\":1}}\n\n",
                ))
            });
            let body = axum::body::Body::from_stream(futures_util::StreamExt::chain(first, futures_util::stream::pending()));
            (
                [("content-type", "text/event-stream"), ("mcp-session-id", "up-1")],
                body,
            )
        }),
    );
    let backend = net::serve(app).await;
    let gw = gateway(
        &net::url(&backend),
        &["--upstream-idle-secs", "1", "--sse-keepalive-secs", "0"],
    );
    let mut s = tokio::net::TcpStream::connect(addr_of(&gw.url))
        .await
        .unwrap();
    let req = format!(
        "POST /mcp HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\naccept: application/json, text/event-stream\r\ncontent-length: {}\r\n\r\n{INIT}",
        addr_of(&gw.url),
        INIT.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let start = Instant::now();
    let mut got = Vec::new();
    // It ends with a JSON-RPC error for the request, and the response's
    // last chunk: the connection stays usable.
    let read = tokio::time::timeout(Duration::from_secs(20), async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
            if got.ends_with(b"0\r\n\r\n") {
                break;
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the stream must end, not hang");
    assert!(start.elapsed() >= Duration::from_secs(1));
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("notifications/progress"));
    assert!(
        text.contains(r#""id":1,"error":{"code":-32050"#),
        "the call gets its error: {text}"
    );
}

#[tokio::test]
async fn sessions_expire_when_idle_and_at_their_maximum_age() {
    let backend = fixture_backend().await;
    let gw = gateway(&net::url(&backend), &["--session-idle-secs", "1"]);
    let sid = session_of(&raw("POST", &gw.url, &[JSON, ACCEPT], INIT).await);
    // Unused for longer than the idle timeout.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let r = in_session(&gw.url, &sid, 2).await;
    assert_eq!(r.status, 404);

    let gw = gateway(&net::url(&backend), &["--session-max-secs", "2"]);
    let sid = session_of(&raw("POST", &gw.url, &[JSON, ACCEPT], INIT).await);
    let start = Instant::now();
    // Used all along, it still ends at its maximum age.
    loop {
        let r = in_session(&gw.url, &sid, 3).await;
        if r.status == 404 {
            break;
        }
        assert_eq!(r.status, 200);
        assert!(start.elapsed() < Duration::from_secs(20), "never expired");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(start.elapsed() >= Duration::from_millis(1500));
}

#[tokio::test]
async fn quiet_streams_get_keep_alive_comments() {
    let backend = fixture_backend().await;
    let gw = gateway(&net::url(&backend), &["--sse-keepalive-secs", "1"]);
    let sid = session_of(&raw("POST", &gw.url, &[JSON, ACCEPT], INIT).await);
    let mut s = tokio::net::TcpStream::connect(addr_of(&gw.url))
        .await
        .unwrap();
    let req = format!(
        "GET /mcp HTTP/1.1\r\nhost: {}\r\naccept: text/event-stream\r\nmcp-session-id: {sid}\r\nmcp-protocol-version: 2025-11-25\r\n\r\n",
        addr_of(&gw.url)
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut got = String::new();
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        let mut buf = [0u8; 1024];
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
            got.push_str(&String::from_utf8_lossy(&buf[..n]));
            if got.contains("\n:") || got.contains("\r\n:") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "{got}");
}

#[tokio::test]
async fn sigterm_drains_then_closes_what_is_left_at_the_shutdown_deadline() {
    let (silent, task, held) = counting_silent_backend().await;
    let mut gw = gateway(
        &silent,
        &["--upstream-first-byte-secs", "600", "--shutdown-secs", "1"],
    );
    let url = gw.url.clone();
    // A call that will not end by itself.
    let pending = tokio::spawn(async move { raw("POST", &url, &[JSON, ACCEPT], INIT).await });
    // The call reached the backend once the backend holds its connection.
    let deadline = Instant::now() + Duration::from_secs(20);
    while held.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the call never reached the backend"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let start = Instant::now();
    gw.terminate();
    let status = gw
        .wait_exit(Duration::from_secs(20))
        .expect("the gateway exits");
    assert!(status.success(), "{status:?}");
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    assert!(
        gw.log().contains("shutdown deadline passed"),
        "{}",
        gw.log()
    );
    pending.abort();
    task.abort();
}

/// A backend that answers every POST with the forwarding headers it got.
async fn echo_headers_backend() -> net::Served {
    let app = axum::Router::new().route(
        "/mcp",
        axum::routing::post(|h: http::HeaderMap| async move {
            let get = |n: &str| h.get(n).map(|v| v.to_str().unwrap().to_owned());
            let v = json!({"jsonrpc":"2.0","id":1,"result":{
                "protocolVersion":"2025-11-25","capabilities":{},"serverInfo":{"name":"echo","version":"1"},
                "xff": get("x-forwarded-for"), "forwarded": get("forwarded"), "realIp": get("x-real-ip")
            }});
            ([("content-type", "application/json")], v.to_string())
        }),
    );
    net::serve(app).await
}

#[tokio::test]
async fn x_forwarded_for_is_the_gateways_unless_the_peer_is_a_trusted_proxy() {
    let backend = echo_headers_backend().await;
    let forged = [
        JSON,
        ACCEPT,
        ("x-forwarded-for", "6.6.6.6"),
        ("x-real-ip", "6.6.6.6"),
        ("forwarded", "for=6.6.6.6"),
    ];
    // Untrusted: what the client wrote is dropped.
    let gw = gateway(&net::url(&backend), &[]);
    let r = raw("POST", &gw.url, &forged, INIT).await;
    let seen = &r.json()["result"];
    assert_eq!(seen["xff"], "127.0.0.1", "{seen}");
    assert_eq!(seen["forwarded"], Value::Null);
    assert_eq!(seen["realIp"], Value::Null);
    assert!(gw.wait_for_log("client=\"127.0.0.1\""), "{}", gw.log());
    // Trusted: the chain grows, and the client it names is the caller.
    let gw = GatewayProcess::start(&[
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &net::url(&backend),
        "--trusted-proxy",
        "127.0.0.0/8",
    ]);
    let r = raw("POST", &gw.url, &forged, INIT).await;
    let seen = &r.json()["result"];
    assert_eq!(seen["xff"], "6.6.6.6, 127.0.0.1", "{seen}");
    assert_eq!(seen["forwarded"], "for=6.6.6.6, for=127.0.0.1");
    assert!(gw.wait_for_log("client=\"6.6.6.6\""), "{}", gw.log());
}

#[tokio::test]
async fn cors_preflight_and_exposed_headers_for_configured_origins_only() {
    let backend = fixture_backend().await;
    let gw = gateway(
        &net::url(&backend),
        &["--cors-origin", "http://app.example:5173"],
    );
    let pre = |origin: &'static str| {
        let url = gw.url.clone();
        async move {
            raw(
                "OPTIONS",
                &url,
                &[
                    ("origin", origin),
                    ("access-control-request-method", "POST"),
                    (
                        "access-control-request-headers",
                        "authorization, content-type, mcp-session-id, mcp-protocol-version, last-event-id, mcp-method, mcp-name",
                    ),
                ],
                "",
            )
            .await
        }
    };
    let r = pre("http://app.example:5173").await;
    assert!(r.status == 200 || r.status == 204, "{}", r.status);
    let h = |n: &str| {
        r.headers
            .get(n)
            .map(|v| v.to_str().unwrap().to_lowercase())
            .unwrap_or_default()
    };
    assert_eq!(h("access-control-allow-origin"), "http://app.example:5173");
    for m in ["post", "get", "delete"] {
        assert!(
            h("access-control-allow-methods").contains(m),
            "{}",
            h("access-control-allow-methods")
        );
    }
    for n in [
        "authorization",
        "content-type",
        "mcp-session-id",
        "mcp-protocol-version",
        "last-event-id",
        "mcp-method",
        "mcp-name",
    ] {
        assert!(
            h("access-control-allow-headers").contains(n),
            "{n}: {}",
            h("access-control-allow-headers")
        );
    }
    // Another origin gets no grant.
    let r = pre("http://evil.example").await;
    assert!(r.headers.get("access-control-allow-origin").is_none());
    // The real request from the allowed origin passes the origin guard and
    // exposes the session id to the page.
    let r = raw(
        "POST",
        &gw.url,
        &[JSON, ACCEPT, ("origin", "http://app.example:5173")],
        INIT,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let expose = r.headers["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_lowercase();
    assert!(
        expose.contains("mcp-session-id") && expose.contains("mcp-protocol-version"),
        "{expose}"
    );
    // From another origin: still refused by the origin guard.
    let r = raw(
        "POST",
        &gw.url,
        &[JSON, ACCEPT, ("origin", "http://evil.example")],
        INIT,
    )
    .await;
    assert_eq!(r.status, 403);
}

#[tokio::test]
async fn one_access_line_per_request_and_a_startup_summary_without_secrets() {
    let backend = fixture_backend().await;
    let dir = Scratch::new("logs");
    let cfg = dir.file(
        "g.toml",
        &format!(
            "listen = \"127.0.0.1:0\"\n[backend]\nname = \"demo\"\nurls = [\"{}?token=q-secret\"]\ncredentials.headers = {{ Authorization = \"Bearer s3cret-value\" }}\n",
            net::url(&backend)
        ),
    );
    let gw = GatewayProcess::start(&["--config", &cfg, "--log-format", "json"]);
    // The log is read from the process's stderr by a thread of its own:
    // wait for the line rather than race the reader.
    assert!(gw.wait_for_log("effective configuration"), "{}", gw.log());
    let log = gw.log();
    assert!(
        log.contains("backend credentials") && log.contains("demo="),
        "{log}"
    );
    assert!(
        !log.contains("s3cret-value") && !log.contains("q-secret"),
        "{log}"
    );
    let r = raw("POST", &gw.url, &[JSON, ACCEPT], INIT).await;
    let sid = session_of(&r);
    in_session(&gw.url, &sid, 7).await;
    assert!(gw.wait_for_log("\"target_name\":\"echo\""), "{}", gw.log());
    let line: Value = gw
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["fields"]["target_name"] == "echo")
        .unwrap();
    let f = &line["fields"];
    assert_eq!(line["level"], "INFO");
    assert_eq!(f["message"], "mcp request");
    assert_eq!(f["method"], "tools/call");
    assert_eq!(f["session"], sid.as_str());
    assert_eq!(f["backend"], "demo");
    assert_eq!(f["status"], 200);
    assert!(f["duration_ms"].as_f64().is_some());
    // Not a terminal: no colour codes in the file.
    assert!(!gw.log().contains('\u{1b}'));
}
