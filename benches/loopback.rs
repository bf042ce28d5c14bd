//! End-to-end loopback benchmark.
//!
//! A fast hyper stub upstream (JSON and SSE replies), a hyper load client,
//! and `tools/call` sent directly to the stub and through the full gateway
//! stack (origin → JSON-RPC → session → SSE relay → pooled upstream), at 1
//! and 32 concurrent connections. Prints throughput, p50 / p99 latency, the
//! ratios, the gateway's added p50, the gateway CPU time per call (process
//! CPU of the gateway run minus the direct run, per call), and the resident
//! memory of 100 000 idle sessions created through the gateway.
//!
//! ```text
//! cargo bench --bench loopback            # MCPGW_BENCH_CALLS=N to change the call count
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mcp_gateway_axum::McpGateway;
use mcp_gateway_core::session::InMemoryConfig;

const RESULT: &str = r#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"18 degrees and sunny"}],"isError":false}}"#;
const CALL: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_weather","arguments":{"city":"Paris"}}}"#;
const INIT: &str = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"bench","version":"1"}}}"#;

/// The stub: JSON for `/json`, a priming event plus the result as SSE for `/sse`.
async fn stub(req: http::Request<Incoming>) -> Result<http::Response<Full<Bytes>>, Infallible> {
    let sse = req.uri().path() == "/sse";
    let _ = req.into_body().collect().await;
    let mut res = if sse {
        let mut r = http::Response::new(Full::new(Bytes::from(format!(
            "id: 0\ndata: \n\nevent: message\ndata: {RESULT}\n\n"
        ))));
        r.headers_mut()
            .insert("content-type", "text/event-stream".parse().unwrap());
        r
    } else {
        let mut r = http::Response::new(Full::new(Bytes::from_static(RESULT.as_bytes())));
        r.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        r
    };
    res.headers_mut()
        .insert("mcp-session-id", "stub-session".parse().unwrap());
    Ok(res)
}

async fn serve_stub() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                break;
            };
            let _ = sock.set_nodelay(true);
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(sock), hyper::service::service_fn(stub))
                    .await;
            });
        }
    });
    addr
}

async fn serve_gateway(upstream: String, max_sessions: usize) -> SocketAddr {
    let app = McpGateway::builder()
        .upstream_url(&upstream)
        .unwrap()
        .session_config(InMemoryConfig {
            max_sessions,
            ..Default::default()
        })
        .build()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

/// The same HTTP hop with no MCP layer: axum in front of the pooled
/// upstream client. Separates what the second hop costs from what the
/// layers cost.
async fn serve_bare_proxy(upstream: String) -> SocketAddr {
    use mcp_gateway_tower::upstream::{HttpUpstream, HttpUpstreamConfig};
    use mcp_gateway_tower::Body;
    let up = HttpUpstream::new(&upstream, HttpUpstreamConfig::default()).unwrap();
    let svc = tower::ServiceBuilder::new()
        .map_request(|r: http::Request<axum::body::Body>| r.map(Body::new))
        .service(up);
    let app = axum::Router::new().route_service("/mcp", svc);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    let mut c = hyper_util::client::legacy::connect::HttpConnector::new();
    c.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(c)
}

async fn post(
    c: &HttpClient,
    url: &str,
    session: Option<&str>,
    body: &'static str,
) -> (u16, Option<String>) {
    let mut req = http::Request::post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-11-25");
    if let Some(s) = session {
        req = req.header("mcp-session-id", s);
    }
    let res = c
        .request(
            req.body(Full::new(Bytes::from_static(body.as_bytes())))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = res.status().as_u16();
    let sid = res
        .headers()
        .get("mcp-session-id")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert!(
        body.windows(12).any(|w| w == b"18 degrees a")
            || status != 200
            || body.is_empty()
            || sid.is_some()
    );
    (status, sid)
}

fn cpu_seconds() -> f64 {
    // utime + stime of this process, in clock ticks (USER_HZ = 100 on Linux).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / 100.0
}

fn rss_mb() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

struct Run {
    rps: f64,
    p50: Duration,
    p99: Duration,
    cpu: f64,
    calls: usize,
}

/// `calls` tools/call requests over `conns` connections (each connection a
/// task with its own client, so every task keeps one connection busy).
async fn run(url: &str, gateway: bool, conns: usize, calls: usize) -> Run {
    let per = calls / conns;
    let cpu0 = cpu_seconds();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let url = url.to_owned();
        tasks.push(tokio::spawn(async move {
            let c = client();
            let sid = if gateway {
                let (s, sid) = post(&c, &url, None, INIT).await;
                assert_eq!(s, 200);
                sid
            } else {
                Some("stub-session".to_owned())
            };
            // Warm the connection.
            post(&c, &url, sid.as_deref(), CALL).await;
            let mut lat = Vec::with_capacity(per);
            for _ in 0..per {
                let t = Instant::now();
                let (s, _) = post(&c, &url, sid.as_deref(), CALL).await;
                lat.push(t.elapsed());
                assert_eq!(s, 200);
            }
            lat
        }));
    }
    let mut lat = Vec::with_capacity(calls);
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let wall = start.elapsed();
    let cpu = cpu_seconds() - cpu0;
    lat.sort_unstable();
    let q = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    Run {
        rps: lat.len() as f64 / wall.as_secs_f64(),
        p50: q(0.50),
        p99: q(0.99),
        cpu,
        calls: lat.len(),
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing and
    // expects a quick smoke run.
    let full = std::env::args().any(|a| a == "--bench");
    let calls: usize = std::env::var("MCPGW_BENCH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if full { 20_000 } else { 320 });
    let idle_sessions: usize = std::env::var("MCPGW_BENCH_SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if full { 100_000 } else { 1_000 });

    let stub = serve_stub().await;
    println!("mcp-gateway loopback benchmark: {calls} tools/call per scenario, 2-core machine, one process");
    println!(
        "{:<44} {:>10} {:>10} {:>10} {:>12}",
        "scenario", "req/s", "p50 µs", "p99 µs", "CPU µs/call"
    );
    for mode in ["json", "sse"] {
        let direct_url = format!("http://{stub}/{mode}");
        let gw = serve_gateway(direct_url.clone(), 1_000_000).await;
        let gw_url = format!("http://{gw}/mcp");
        let bare = serve_bare_proxy(direct_url.clone()).await;
        let bare_url = format!("http://{bare}/mcp");
        for conns in [1usize, 32] {
            let d = run(&direct_url, false, conns, calls).await;
            let b = run(&bare_url, false, conns, calls).await;
            let g = run(&gw_url, true, conns, calls).await;
            for (name, r) in [
                ("direct", &d),
                ("bare proxy (no layers)", &b),
                ("gateway", &g),
            ] {
                println!(
                    "{:<44} {:>10.0} {:>10.1} {:>10.1} {:>12.1}",
                    format!("{mode} {conns:>2} conn {name}"),
                    r.rps,
                    us(r.p50),
                    us(r.p99),
                    r.cpu / r.calls as f64 * 1e6
                );
            }
            println!(
                "{:<44} throughput ratio {:.2}, added p50 {:.1} µs, gateway CPU {:.1} µs/call",
                format!("{mode} {conns:>2} conn gateway/direct"),
                g.rps / d.rps,
                us(g.p50) - us(d.p50),
                (g.cpu - d.cpu) / g.calls as f64 * 1e6
            );
            println!(
                "{:<44} the layers alone: added p50 {:.1} µs, CPU {:.1} µs/call (gateway minus bare proxy)",
                format!("{mode} {conns:>2} conn layers"),
                us(g.p50) - us(b.p50),
                (g.cpu - b.cpu) / g.calls as f64 * 1e6
            );
        }
    }

    // Idle sessions: created through the gateway (initialize), then held.
    let gw = serve_gateway(format!("http://{stub}/json"), idle_sessions + 10).await;
    let url = format!("http://{gw}/mcp");
    let rss0 = rss_mb();
    let t = Instant::now();
    let conns = 32;
    let mut tasks = Vec::new();
    for i in 0..conns {
        let url = url.clone();
        let n = idle_sessions / conns + usize::from(i < idle_sessions % conns);
        tasks.push(tokio::spawn(async move {
            let c = client();
            for _ in 0..n {
                let (s, sid) = post(&c, &url, None, INIT).await;
                assert_eq!(s, 200);
                assert!(sid.is_some());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let rss1 = rss_mb();
    println!(
        "idle sessions: {idle_sessions} created through the gateway in {:.1} s; resident {:.1} MB (+{:.1} MB, {:.0} bytes/session)",
        t.elapsed().as_secs_f64(),
        rss1,
        rss1 - rss0,
        (rss1 - rss0) * 1024.0 * 1024.0 / idle_sessions as f64
    );
}
