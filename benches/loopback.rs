//! End-to-end loopback benchmark.
//!
//! Three kinds of process, as in a deployment: a fast hyper stub upstream
//! (JSON and SSE replies), the server under test, and this process as the
//! load client. `tools/call` goes directly to the stub, through a TCP relay
//! (bytes copied, no HTTP), through a bare proxy (the same HTTP hop with no
//! MCP layer), through the gateway (origin → JSON-RPC → session → SSE relay
//! → pooled upstream), the gateway with the security stack, and the full
//! stack (plus limits and the audit log), at 1 and 32 concurrent
//! connections. Prints throughput, p50 / p99 latency, the CPU time the
//! server *process* spent per call (its threads' on-CPU time from
//! `/proc/<pid>/task/*/schedstat`, to the nanosecond), the differences
//! between scenarios, and the gateway process's resident memory holding
//! 100 000 idle sessions.
//!
//! Each scenario runs `MCPGW_BENCH_REPS` rounds (default 5; three times
//! as many at 32 connections, whose runs are short) of
//! `MCPGW_BENCH_CALLS` calls (default 20 000); a round runs every server in
//! turn, forward on even rounds and backward on odd ones. Figures are
//! medians; differences are medians of the per-round differences, so the
//! machine's drift cancels out of them.
//!
//! ```text
//! cargo bench --bench loopback
//! # one server alone, for a profiler (prints its pid):
//! MCPGW_BENCH_PROFILE=full MCPGW_BENCH_MODE=sse MCPGW_BENCH_CONNS=32 cargo bench --bench loopback
//! # paired comparison of some servers (differences against the first):
//! MCPGW_BENCH_COMPARE=secure,full MCPGW_BENCH_MODE=json cargo bench --bench loopback
//! # instructions, steady whatever the machine does: the server under test
//! # runs under a wrapper (stopped with SIGTERM, so it writes its output)
//! # (busy polling off, or its polling rounds are counted too)
//! MCPGW_BENCH_WRAP="valgrind --tool=callgrind" MCPGW_BENCH_BUSY_POLL_US=0 MCPGW_BENCH_PROFILE=gateway cargo bench --bench loopback
//! ```
//!
//! Roles: `stub`, `direct` (a second stub, in comparisons), `relay`,
//! `bare`, `gateway` (the builder's defaults, per-client caps included),
//! `nocaps` (the same without them: `MCPGW_BENCH_COMPARE=nocaps,gateway`
//! measures what the caps cost), `logged` (`gateway` with the binary's
//! access log, formatted at INFO into a sink), `secure`, `limits`, `audit`,
//! `full`, and `state-memory`, `state-redis`, `state-sealed` (limits
//! counted on every call, with sessions and limits in process, in Redis as
//! `[cluster]` keeps them, or sealed ids:
//! `MCPGW_BENCH_COMPARE=state-memory,state-redis,state-sealed` starts a
//! `redis-server` of its own and reports its CPU per call too). Every role
//! serves as the `mcp-gateway` binary does by default (hyper's HTTP/1.1
//! server, a 30 s header timeout, no busy polling); `<role>+builtin` serves
//! it with the tuning knobs instead: the built-in HTTP/1.1 server and 50 µs
//! of busy polling (`MCPGW_BENCH_COMPARE=gateway,gateway+builtin`). The full
//! run measures both side by side.
//! `aggregate` serves three backends (the stub thrice) as one, names
//! prefixed: `MCPGW_BENCH_COMPARE=gateway,aggregate` measures routing by
//! name, `MCPGW_BENCH_AGGREGATE=1` runs only the aggregate's figures (a
//! routed call beside one backend, a whole merged `tools/list`, memory
//! per session).
//! `stdio` and `stdio-shared` serve the stub as a stdio server (this
//! binary, `--role stdio-stub`: the same answers on stdin / stdout), a
//! child per session or one for all:
//! `MCPGW_BENCH_COMPARE=gateway,stdio,stdio-shared` sets them beside the
//! stub over HTTP.
//! `MCPGW_BENCH_THREADS=N` changes the servers' threads (default one per
//! core), `MCPGW_BENCH_BUSY_POLL_US=N` their busy-polling window,
//! `MCPGW_BENCH_HTTP1=builtin` serves HTTP/1 with the built-in server, and
//! `MCPGW_BENCH_AUDIT=null` gives the audit layer a sink that drops every
//! record (to tell the layer from the file writer).
//!
//! The same binary plays every part: `--role <role>` starts a server that
//! prints its address on stdout.

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use mcp_gateway_axum::McpGateway;
use mcp_gateway_core::session::InMemoryConfig;

// The servers under test run on the allocator the `mcp-gateway` binary uses.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "../tests/support/redis.rs"]
mod redis_server;
#[path = "support/stack.rs"]
mod stack;
use stack::bench_token;

const RESULT: &str = r#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"18 degrees and sunny"}],"isError":false}}"#;
const CALL: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_weather","arguments":{"city":"Paris"}}}"#;
const INIT: &str = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"bench","version":"1"}}}"#;
/// [`CALL`] through the aggregate of three backends (`b0`, `b1`, `b2`):
/// routed by its prefix to `b1`, which gets `get_weather`.
const CALL_ROUTED: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"b1__get_weather","arguments":{"city":"Paris"}}}"#;
const LIST: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}}"#;
/// The stub's tool list: one page.
const LIST_RESULT: &str = r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"get_weather","description":"18 degrees and sunny, always","inputSchema":{"type":"object","properties":{"city":{"type":"string"}}}},{"name":"search","description":"Finds things","inputSchema":{"type":"object"}}]}}"#;

/// The stub: JSON for `/json`, a priming event plus the result as SSE for `/sse`.
async fn stub(req: http::Request<Incoming>) -> Result<http::Response<Full<Bytes>>, Infallible> {
    let sse = req.uri().path() == "/sse";
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let list = body.windows(12).any(|w| w == b"\"tools/list\"");
    let mut res = if list {
        let mut r = http::Response::new(Full::new(Bytes::from_static(LIST_RESULT.as_bytes())));
        r.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        r
    } else if sse {
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

async fn listen() -> (tokio::net::TcpListener, SocketAddr) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

async fn serve_stub() {
    let (listener, addr) = listen().await;
    println!("{addr}");
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
}

/// The gateway as the builder makes it by default (with the per-client
/// caps); `caps = false` without them (the `nocaps` role: the baseline the
/// caps' cost is measured against, and the idle-sessions measurement, where
/// one client opens every session).
async fn serve_gateway(upstream: String, max_sessions: usize, caps: bool, logged: bool) {
    if logged {
        // As the binary logs: INFO, text lines, no colour; to /dev/null so
        // that what is measured is the formatting, not a terminal.
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
            .with_ansi(false)
            .with_writer(std::io::sink)
            .init();
    }
    let mut b = McpGateway::builder()
        .access_log(logged)
        .upstream_url(&upstream)
        .unwrap()
        .session_config(InMemoryConfig {
            max_sessions,
            ..Default::default()
        });
    if caps {
        // The per-client caps as they are by default on the hot path (64
        // calls in flight); the session caps, which only `initialize`
        // meets, opened wide: the load client is one address opening
        // every round's sessions.
        b = b.limits(wide_session_caps());
    } else {
        b = b.without_limits();
    }
    serve_app(b.build().unwrap()).await;
}

/// The stub as a stdio server (`--role stdio-stub`): one JSON-RPC message
/// a line on stdin, the same answers as the HTTP stub on stdout, each with
/// its request's id.
fn serve_stdio_stub() {
    use std::io::Write;
    let stdin = std::io::stdin();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let result = &RESULT[RESULT.find(",\"result\"").unwrap()..];
    let list = &LIST_RESULT[LIST_RESULT.find(",\"result\"").unwrap()..];
    let init = r#","result":{"protocolVersion":"2025-11-25","capabilities":{"tools":{}},"serverInfo":{"name":"stdio-stub","version":"1"}}}"#;
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let v: serde_json::Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(_) => continue,
        };
        let Some(id) = v.get("id") else { continue };
        let tail = match v["method"].as_str() {
            Some("initialize") => init,
            Some("tools/list") => list,
            _ => result,
        };
        let _ = writeln!(out, "{{\"jsonrpc\":\"2.0\",\"id\":{id}{tail}");
        let _ = out.flush();
    }
}

/// The gateway in front of the stdio stub (this binary, `--role
/// stdio-stub`): a child per session, or one shared by all (`shared`).
async fn serve_stdio(max_sessions: usize, shared: bool) {
    use mcp_gateway_tower::upstream::bridge::{Bridge, BridgeConfig, BridgeMode, StdioCommand};
    let exe = std::env::current_exe().unwrap();
    let cmd = StdioCommand::new([exe.to_str().unwrap(), "--role", "stdio-stub"]);
    let mode = if shared {
        BridgeMode::Shared
    } else {
        BridgeMode::PerSession
    };
    let bridge = Bridge::stdio(
        "stub",
        cmd,
        BridgeConfig::default().mode(mode).max_processes(4096),
    );
    let b = McpGateway::builder()
        .upstream_service(bridge)
        .session_config(InMemoryConfig {
            max_sessions,
            ..Default::default()
        })
        .limits(wide_session_caps());
    serve_app(b.build().unwrap()).await;
}

/// The gateway over three backends (`b0`, `b1`, `b2`, each the stub),
/// names prefixed (`aggregate.prefix = "always"`), with the default
/// per-client caps: what routing by name costs beside `gateway`.
async fn serve_aggregate(upstream: String, max_sessions: usize, caps: bool) {
    use mcp_gateway_axum::{AggregateConfig, Backend};
    let mut b = McpGateway::builder()
        .aggregate_config(AggregateConfig::default())
        .session_config(InMemoryConfig {
            max_sessions,
            ..Default::default()
        });
    b = if caps {
        b.limits(wide_session_caps())
    } else {
        b.without_limits()
    };
    for name in ["b0", "b1", "b2"] {
        b = b.backend(Backend::new(name).upstream_url(&upstream).unwrap());
    }
    serve_app(b.build().unwrap()).await;
}

/// Set by a `<role>+builtin` server: the built-in HTTP/1 server and busy
/// polling.
static TUNED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// Serves `app` the way the `mcp-gateway` binary does, printing the address.
async fn serve_app(app: axum::Router) {
    use mcp_gateway::serve;
    let tuned = TUNED.get() == Some(&true);
    // MCPGW_BENCH_THREADS=N overrides one serving thread per core.
    let threads = std::env::var("MCPGW_BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    // MCPGW_BENCH_BUSY_POLL_US=N overrides the busy-polling window (0:
    // off), as `mcp-gateway --busy-poll-us` does.
    let mut opts = serve::ServeOptions::default();
    if tuned {
        opts = opts
            .http1(serve::Http1Server::Builtin)
            .busy_poll(std::time::Duration::from_micros(50));
    }
    if let Some(us) = std::env::var("MCPGW_BENCH_BUSY_POLL_US")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        opts = opts.busy_poll(std::time::Duration::from_micros(us));
    }
    // MCPGW_BENCH_HTTP1=builtin: the built-in HTTP/1 server, as
    // `mcp-gateway --http1-server builtin`.
    if std::env::var("MCPGW_BENCH_HTTP1").as_deref() == Ok("builtin") {
        opts = opts.http1(serve::Http1Server::Builtin);
    }
    let listeners = serve::bind_per_core("127.0.0.1:0".parse().unwrap(), threads).unwrap();
    println!("{}", listeners[0].local_addr().unwrap());
    let _ = serve::serve_per_core_with(listeners, app, std::future::pending(), opts).await;
}

/// The security stack plus limits (every limit on, none reached) and the
/// audit layer writing JSON Lines to a temporary file.
async fn serve_full_gateway(upstream: String, limits: bool, audit: bool) {
    serve_app(secure_builder(upstream, limits, audit).build().unwrap()).await;
}

/// The gateway with the security stack: JWT (RS256, verified tokens
/// cached), a rule policy, and tool pinning.
async fn serve_secure_gateway(upstream: String) {
    serve_app(secure_builder(upstream, false, false).build().unwrap()).await;
}

fn secure_builder(
    upstream: String,
    limits: bool,
    audit: bool,
) -> mcp_gateway_axum::McpGatewayBuilder {
    use mcp_gateway_tower::auth::AuthConfig;
    use mcp_gateway_tower::pinning::{PinMode, ToolPins};
    use mcp_gateway_tower::rules::{PolicyConfig, RulePolicy};
    use std::sync::Arc;
    let jwt = stack::bench_jwt();
    let policy: PolicyConfig = serde_json::from_value(serde_json::json!({
        "rules": [
            {"effect": "allow", "roles": ["agent"], "tools": ["get_*", "search"]},
            {"effect": "deny", "tools": ["*delete*"]}
        ]
    }))
    .unwrap();
    let mut b = McpGateway::builder()
        .upstream_url(&upstream)
        .unwrap()
        .authenticator(Arc::new(jwt), AuthConfig::default())
        .policy(Arc::new(RulePolicy::new(&policy)))
        .pins(Arc::new(ToolPins::new(PinMode::Block)));
    use mcp_gateway_tower::audit::{AuditConfig, JsonlConfig, JsonlSink, Overflow};
    if audit && std::env::var("MCPGW_BENCH_AUDIT").as_deref() == Ok("null") {
        // Diagnosis: the audit layer with a sink that drops every record.
        struct Null;
        impl mcp_gateway_tower::audit::AuditSink for Null {
            fn record(&self, _: &mcp_gateway_tower::audit::AuditEventRef<'_>) {}
        }
        b = b.audit(Arc::new(Null), AuditConfig::default());
    } else if audit {
        let dir = std::env::temp_dir().join(format!("mcpgw-bench-{}", std::process::id()));
        let sink = JsonlSink::open(JsonlConfig {
            path: dir.join("audit.jsonl"),
            max_bytes: 64 << 20,
            keep: 2,
            buffer: 1 << 20,
            overflow: Overflow::Drop,
        })
        .unwrap();
        b = b.audit(Arc::new(sink), AuditConfig::default());
    }
    if !limits {
        // The default per-client caps, with the session caps opened wide as
        // in `serve_gateway`: one principal opens every round's sessions.
        return b.limits(wide_session_caps());
    }
    b.limits(stack::generous_limits())
}

/// Sessions and limits kept as `store` says, with limits counted on every
/// call (a rate and a cap on calls in flight, neither reached): `memory`
/// (in process), `redis` (the session store, the limiter and resumable
/// streams in the Redis `MCPGW_BENCH_REDIS` names, as `[cluster]` does),
/// `sealed` (sealed session ids, the limiter in process).
async fn serve_shared_state(upstream: String, store: &str) {
    use mcp_gateway_tower::cluster::{
        FailMode, Redis, RedisConfig, RedisEventConfig, RedisEventStore, RedisLimiter,
        RedisSessionConfig, RedisSessionStore, SealKeys, SealedConfig, SealedSessionStore,
    };
    use mcp_gateway_tower::limit::{LimitConfig, Quota};
    use std::sync::Arc;
    let wide = Quota {
        burst: 1_000_000_000,
        per_second: 1e9,
    };
    let limits = LimitConfig {
        principal_rate: Some(wide),
        principal_in_flight: Some(1_000_000),
        ..wide_session_caps()
    };
    let mut b = McpGateway::builder().upstream_url(&upstream).unwrap();
    match store {
        "memory" => b = b.limits(limits),
        "redis" => {
            let url = std::env::var("MCPGW_BENCH_REDIS").expect("MCPGW_BENCH_REDIS");
            let redis = Redis::connect(&RedisConfig::new(url)).unwrap();
            b = b
                .session_store(Arc::new(RedisSessionStore::new(
                    redis.clone(),
                    RedisSessionConfig::default(),
                )))
                .limits_with(
                    limits,
                    Arc::new(RedisLimiter::new(redis.clone(), FailMode::FailOpen)),
                )
                .resumption(
                    Arc::new(RedisEventStore::new(redis, RedisEventConfig::default())),
                    Default::default(),
                );
        }
        "sealed" => {
            let keys = SealKeys::parse("1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap();
            b = b
                .session_store(Arc::new(SealedSessionStore::new(
                    keys,
                    SealedConfig::default(),
                    None,
                )))
                .limits(limits);
        }
        other => panic!("unknown store {other}"),
    }
    serve_app(b.build().unwrap()).await;
}

/// No limit but the per-client caps' default on calls in flight.
fn wide_session_caps() -> mcp_gateway_tower::limit::LimitConfig {
    let wide = mcp_gateway_tower::limit::Quota {
        burst: 1_000_000_000,
        per_second: 1e9,
    };
    mcp_gateway_tower::limit::LimitConfig {
        principal_sessions: Some(1_000_000_000),
        principal_session_rate: Some(wide),
        ..Default::default()
    }
}

/// The same HTTP hop with no MCP layer: axum in front of the pooled
/// upstream client. Separates what the second hop costs from what the
/// layers cost.
async fn serve_bare_proxy(upstream: String) {
    use mcp_gateway_tower::upstream::{HttpUpstream, HttpUpstreamConfig};
    use mcp_gateway_tower::Body;
    let up = HttpUpstream::new(&upstream, HttpUpstreamConfig::default()).unwrap();
    let svc = tower::ServiceBuilder::new()
        .map_request(|r: http::Request<axum::body::Body>| r.map(Body::new))
        .service(up);
    let app = axum::Router::new().route_service("/mcp", svc);
    serve_app(app).await;
}

/// The floor of any proxy: a TCP relay copying bytes both ways, no HTTP.
async fn serve_tcp_relay(upstream: String) {
    let target: SocketAddr = upstream
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let (listener, addr) = listen().await;
    println!("{addr}");
    while let Ok((mut sock, _)) = listener.accept().await {
        let _ = sock.set_nodelay(true);
        tokio::spawn(async move {
            let mut up = tokio::net::TcpStream::connect(target).await.unwrap();
            let _ = up.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut sock, &mut up).await;
        });
    }
}

/// A server process of this benchmark; killed when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
    /// Started under `MCPGW_BENCH_WRAP`: stopped with SIGTERM, so the
    /// wrapper (a profiler) can write its output.
    wrapped: bool,
}

impl Server {
    fn start(args: &[&str]) -> Server {
        let exe = std::env::current_exe().unwrap();
        // MCPGW_BENCH_WRAP="valgrind --tool=callgrind": servers under test
        // (not the stub) run under that command.
        let wrap = std::env::var("MCPGW_BENCH_WRAP")
            .ok()
            .filter(|_| !args.contains(&"stub"));
        let mut cmd = match &wrap {
            Some(w) => {
                let mut words = w.split_whitespace();
                let mut c = Command::new(words.next().expect("MCPGW_BENCH_WRAP is empty"));
                c.args(words).arg(exe);
                c
            }
            None => Command::new(exe),
        };
        let mut child = cmd.args(args).stdout(Stdio::piped()).spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        Server {
            child,
            addr: line.trim().parse().unwrap(),
            wrapped: wrap.is_some(),
        }
    }

    fn proc_file(&self, name: &str) -> String {
        std::fs::read_to_string(format!("/proc/{}/{name}", self.child.id())).unwrap_or_default()
    }

    /// Time the process's threads have spent on a CPU, in seconds, to the
    /// nanosecond (`/proc/<pid>/task/*/schedstat`; the ticks of `stat`
    /// are 10 ms, which over a short run is a microsecond per call).
    fn on_cpu_seconds(&self) -> f64 {
        on_cpu_seconds(self.child.id())
    }

    /// (utime, stime) of the process, in seconds (USER_HZ = 100 on Linux).
    fn cpu_seconds(&self) -> (f64, f64) {
        let stat = self.proc_file("stat");
        let after = stat.rsplit(')').next().unwrap_or("");
        let f: Vec<&str> = after.split_whitespace().collect();
        let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        (t(11) / 100.0, t(12) / 100.0)
    }

    fn rss_mb(&self) -> f64 {
        self.proc_file("status")
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.wrapped {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
        } else {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        // The full-stack server's audit log.
        let _ = std::fs::remove_dir_all(
            std::env::temp_dir().join(format!("mcpgw-bench-{}", self.child.id())),
        );
    }
}

/// One client connection (HTTP/1.1, keep-alive, TCP_NODELAY).
async fn connect(addr: SocketAddr) -> SendRequest<Full<Bytes>> {
    let sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    sock.set_nodelay(true).unwrap();
    let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(sock))
        .await
        .unwrap();
    tokio::spawn(conn);
    tx
}

async fn post(
    tx: &mut SendRequest<Full<Bytes>>,
    path: &str,
    session: Option<&str>,
    auth: Option<&str>,
    body: &'static str,
) -> (u16, Option<String>) {
    let (status, sid, _) =
        post_body(tx, path, session, auth, Bytes::from_static(body.as_bytes())).await;
    (status, sid)
}

/// [`post`], with the answer's body.
async fn post_body(
    tx: &mut SendRequest<Full<Bytes>>,
    path: &str,
    session: Option<&str>,
    auth: Option<&str>,
    body: Bytes,
) -> (u16, Option<String>, Bytes) {
    let mut req = http::Request::post(path)
        .header("host", "127.0.0.1")
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-11-25");
    if let Some(s) = session {
        req = req.header("mcp-session-id", s);
    }
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    tx.ready().await.unwrap();
    let res = tx
        .send_request(req.body(Full::new(body)).unwrap())
        .await
        .unwrap();
    let status = res.status().as_u16();
    let sid = res
        .headers()
        .get("mcp-session-id")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert!(
        body.windows(12).any(|w| w == b"18 degrees a") || status != 200 || sid.is_some(),
        "unexpected answer {status}: {}",
        String::from_utf8_lossy(&body)
    );
    (status, sid, body)
}

struct Run {
    rps: f64,
    p50: Duration,
    p99: Duration,
    /// CPU seconds of the server under test per call.
    cpu_per_call: f64,
    /// The kernel's share of it (system time), per call.
    sys_per_call: f64,
    /// CPU seconds of the Redis it shares state through per call (the
    /// `state-redis` role).
    redis_per_call: f64,
}

/// The median of each figure over repeated runs.
fn median(runs: &[Run]) -> Run {
    let mid = |get: &dyn Fn(&Run) -> f64| mid_f64(runs.iter().map(get).collect());
    Run {
        rps: mid(&|r| r.rps),
        p50: Duration::from_secs_f64(mid(&|r| r.p50.as_secs_f64())),
        p99: Duration::from_secs_f64(mid(&|r| r.p99.as_secs_f64())),
        cpu_per_call: mid(&|r| r.cpu_per_call),
        sys_per_call: mid(&|r| r.sys_per_call),
        redis_per_call: mid(&|r| r.redis_per_call),
    }
}

/// The median of `v`.
fn mid_f64(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

/// `calls` tools/call requests over `conns` connections to `server`, each
/// connection a task with one call in flight.
async fn run(
    server: &Server,
    path: &str,
    gateway: bool,
    auth: Option<&str>,
    conns: usize,
    calls: usize,
) -> Run {
    run_with(server, path, gateway, auth, conns, calls, CALL).await
}

/// [`run`] with `call` as the request.
async fn run_with(
    server: &Server,
    path: &str,
    gateway: bool,
    auth: Option<&str>,
    conns: usize,
    calls: usize,
    call: &'static str,
) -> Run {
    let auth = auth.map(str::to_owned);
    let per = calls / conns;
    let mut setup = Vec::new();
    for _ in 0..conns {
        let mut tx = connect(server.addr).await;
        let sid = if gateway {
            let (s, sid) = post(&mut tx, path, None, auth.as_deref(), INIT).await;
            assert_eq!(s, 200);
            sid
        } else {
            Some("stub-session".to_owned())
        };
        // Warm the connection (and the server's upstream pool).
        post(&mut tx, path, sid.as_deref(), auth.as_deref(), call).await;
        setup.push((tx, sid));
    }
    let cpu0 = server.cpu_seconds();
    let on0 = server.on_cpu_seconds();
    let redis0 = REDIS_PID.get().map_or(0.0, |p| on_cpu_seconds(*p));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (mut tx, sid) in setup {
        let path = path.to_owned();
        let auth = auth.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per);
            for _ in 0..per {
                let t = Instant::now();
                let (s, _) = post(&mut tx, &path, sid.as_deref(), auth.as_deref(), call).await;
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
    let cpu1 = server.cpu_seconds();
    let on1 = server.on_cpu_seconds();
    let redis1 = REDIS_PID.get().map_or(0.0, |p| on_cpu_seconds(*p));
    let (user, sys) = (cpu1.0 - cpu0.0, cpu1.1 - cpu0.1);
    // The precise total where the kernel offers it, the ticks otherwise.
    let total = if on1 > on0 { on1 - on0 } else { user + sys };
    lat.sort_unstable();
    let q = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    Run {
        rps: lat.len() as f64 / wall.as_secs_f64(),
        p50: q(0.50),
        p99: q(0.99),
        cpu_per_call: total / lat.len() as f64,
        // The kernel's share, from the ticks, applied to the precise total.
        sys_per_call: if user + sys > 0.0 {
            total * sys / (user + sys)
        } else {
            0.0
        } / lat.len() as f64,
        redis_per_call: (redis1 - redis0) / lat.len() as f64,
    }
}

/// Time process `pid`'s threads have spent on a CPU, in seconds, to the
/// nanosecond (`/proc/<pid>/task/*/schedstat`).
fn on_cpu_seconds(pid: u32) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .sum::<f64>()
        / 1e9
}

/// The Redis the `state-redis` role shares its state through, started
/// by the load client when `MCPGW_BENCH_REDIS` does not name one.
static REDIS_PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn server_role(args: &[String]) -> bool {
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let Some(mut role) = arg("--role") else {
        return false;
    };
    if role == "stdio-stub" {
        serve_stdio_stub();
        return true;
    }
    if let Some(base) = role.strip_suffix("+builtin") {
        role = base.to_owned();
        let _ = TUNED.set(true);
    }
    let upstream = arg("--upstream").unwrap_or_default();
    let max_sessions = arg("--max-sessions")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    // The servers under test run as the `mcp-gateway` binary does: one
    // single-threaded runtime per core (`mcp_gateway::serve`).
    let rt = if role != "stub" {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    };
    rt.block_on(async move {
        match role.as_str() {
            "stub" => serve_stub().await,
            "gateway" => serve_gateway(upstream, max_sessions, true, false).await,
            "aggregate" => serve_aggregate(upstream, max_sessions, true).await,
            "aggregate-nocaps" => serve_aggregate(upstream, max_sessions, false).await,
            "stdio" => serve_stdio(max_sessions, false).await,
            "stdio-shared" => serve_stdio(max_sessions, true).await,
            "nocaps" => serve_gateway(upstream, max_sessions, false, false).await,
            "logged" => serve_gateway(upstream, max_sessions, true, true).await,
            "bare" => serve_bare_proxy(upstream).await,
            "relay" => serve_tcp_relay(upstream).await,
            "secure" => serve_secure_gateway(upstream).await,
            "full" => serve_full_gateway(upstream, true, true).await,
            "limits" => serve_full_gateway(upstream, true, false).await,
            "audit" => serve_full_gateway(upstream, false, true).await,
            "state-memory" | "state-redis" | "state-sealed" => {
                serve_shared_state(upstream, &role["state-".len()..]).await
            }
            other => panic!("unknown role {other}"),
        }
    });
    true
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if server_role(&args) {
        return;
    }
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing and
    // expects a quick smoke run.
    let full = args.iter().any(|a| a == "--bench");
    let calls: usize = std::env::var("MCPGW_BENCH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if full { 20_000 } else { 320 });
    let reps: usize = std::env::var("MCPGW_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if full { 5 } else { 1 });
    let idle_sessions: usize = std::env::var("MCPGW_BENCH_SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if full { 100_000 } else { 1_000 });
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(client_main(calls, reps, idle_sessions));
}

/// The order of the servers in round `rep`: forward on even rounds,
/// backward on odd ones.
fn round_order(n: usize, rep: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    if rep % 2 == 1 {
        v.reverse();
    }
    v
}

/// One role's server, with how the load client talks to it.
struct Target {
    name: String,
    server: Server,
    path: String,
    gateway: bool,
    auth: Option<String>,
    /// The `tools/call` it is sent.
    call: &'static str,
}

impl Target {
    fn start(stub: &Server, bearer: &str, role: &str, mode: &str) -> Target {
        let direct = format!("/{mode}");
        if role == "direct" {
            // The stub itself: a second stub process, so it is measured
            // like any other server.
            let server = Server::start(&["--role", "stub"]);
            return Target {
                name: role.into(),
                server,
                path: direct,
                gateway: false,
                auth: None,
                call: CALL,
            };
        }
        let upstream = format!("http://{}{direct}", stub.addr);
        let server = Server::start(&["--role", role, "--upstream", &upstream]);
        let name = role;
        let role = role.strip_suffix("+builtin").unwrap_or(role);
        Target {
            name: name.into(),
            server,
            path: if role == "relay" {
                direct
            } else {
                "/mcp".into()
            },
            gateway: role != "bare" && role != "relay",
            auth: matches!(role, "secure" | "full" | "limits" | "audit").then(|| bearer.to_owned()),
            call: if role == "aggregate" {
                CALL_ROUTED
            } else {
                CALL
            },
        }
    }

    async fn run(&self, conns: usize, calls: usize) -> Run {
        run_with(
            &self.server,
            &self.path,
            self.gateway,
            self.auth.as_deref(),
            conns,
            calls,
            self.call,
        )
        .await
    }
}

async fn compare(
    stub: &Server,
    bearer: &str,
    roles: &str,
    mode: &str,
    conns: usize,
    calls: usize,
    reps: usize,
) {
    let targets: Vec<Target> = roles
        .split(',')
        .map(|r| Target::start(stub, bearer, r.trim(), mode))
        .collect();
    let mut runs: Vec<Vec<Run>> = targets.iter().map(|_| Vec::new()).collect();
    for rep in 0..reps {
        // Forward, then backward: a server's place in the round (right
        // after which other, with the client how warm) cancels out.
        for i in round_order(targets.len(), rep) {
            runs[i].push(targets[i].run(conns, calls).await);
        }
    }
    let mid = mid_f64;
    for (i, t) in targets.iter().enumerate() {
        let cpu = mid(runs[i].iter().map(|r| r.cpu_per_call * 1e6).collect());
        let p50 = mid(runs[i].iter().map(|r| us(r.p50)).collect());
        let rps = mid(runs[i].iter().map(|r| r.rps).collect());
        let d_cpu = mid(runs[i]
            .iter()
            .zip(&runs[0])
            .map(|(a, b)| (a.cpu_per_call - b.cpu_per_call) * 1e6)
            .collect());
        let d_p50 = mid(runs[i]
            .iter()
            .zip(&runs[0])
            .map(|(a, b)| us(a.p50) - us(b.p50))
            .collect());
        let ratio = mid(runs[i]
            .iter()
            .zip(&runs[0])
            .map(|(a, b)| a.rps / b.rps)
            .collect());
        let redis = mid(runs[i].iter().map(|r| r.redis_per_call * 1e6).collect());
        let redis = if t.name.starts_with("state-redis") {
            format!(" (+ redis-server {redis:.1} µs/call)")
        } else {
            String::new()
        };
        println!(
            "{mode} {conns} conns {:<12} {rps:>8.0} req/s  p50 {p50:>7.1} µs  CPU {cpu:>5.1} µs/call{redis} | vs {}: p50 {d_p50:+.1} µs, CPU {d_cpu:+.1} µs/call, throughput ×{ratio:.2}",
            t.name, targets[0].name
        );
    }
}

async fn client_main(calls: usize, reps: usize, idle_sessions: usize) {
    let stub = Server::start(&["--role", "stub"]);
    let bearer = format!("Bearer {}", bench_token());
    println!(
        "mcp-gateway loopback benchmark: {calls} tools/call per run, {reps} interleaved runs per scenario at 1 connection and {} at 32 (medians); stub, server under test and load client in three processes on this {}-core machine",
        reps * 3,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:<40} {:>9} {:>9} {:>9} {:>19} {:>8}",
        "scenario", "req/s", "p50 µs", "p99 µs", "server CPU µs/call", "(kernel)"
    );
    // The diagnosis modes below: JSON (MCPGW_BENCH_MODE=sse for SSE) at 32
    // connections (MCPGW_BENCH_CONNS=N for another count).
    let conns: usize = std::env::var("MCPGW_BENCH_CONNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32);
    let mode = std::env::var("MCPGW_BENCH_MODE").unwrap_or_else(|_| "json".into());
    // Paired comparison: MCPGW_BENCH_COMPARE=<role>,<role>[,...] runs the
    // roles in turn, MCPGW_BENCH_REPS times, and prints the median of each
    // figure and of the paired differences against the first role (the
    // machine's drift cancels in a pair; it does not across a median).
    if let Ok(roles) = std::env::var("MCPGW_BENCH_COMPARE") {
        // The state-redis role shares its state through a Redis of its own
        // unless MCPGW_BENCH_REDIS names one.
        let _redis = if roles.contains("state-redis") && std::env::var("MCPGW_BENCH_REDIS").is_err()
        {
            let r = redis_server::RedisServer::start_volatile("bench")
                .expect("the state-redis role needs redis-server (scripts/redis.sh installs it)");
            std::env::set_var("MCPGW_BENCH_REDIS", r.url());
            let _ = REDIS_PID.set(r.pid());
            Some(r)
        } else {
            None
        };
        compare(&stub, &bearer, &roles, &mode, conns, calls, reps).await;
        return;
    }
    // MCPGW_BENCH_AGGREGATE=1: only the aggregate's figures.
    if std::env::var("MCPGW_BENCH_AGGREGATE").is_ok() {
        aggregate_section(&stub, calls, reps, (idle_sessions / 10).max(100)).await;
        return;
    }
    // Profiling aid: MCPGW_BENCH_PROFILE=<role> runs only that server,
    // printing its pid first (attach `perf record -p` or `strace -c -f -p`).
    if let Ok(role) = std::env::var("MCPGW_BENCH_PROFILE") {
        let t = Target::start(&stub, &bearer, &role, &mode);
        println!("profiling {role}: pid {}", t.server.child.id());
        let r = t.run(conns, calls).await;
        println!(
            "{role} {mode} {conns} conns: {:.0} req/s, p50 {:.1} µs, CPU {:.1} µs/call",
            r.rps,
            us(r.p50),
            r.cpu_per_call * 1e6
        );
        return;
    }
    for mode in ["json", "sse"] {
        let upstream = format!("http://{}/{mode}", stub.addr);
        let direct_path = format!("/{mode}");
        let gw = Server::start(&["--role", "gateway", "--upstream", &upstream]);
        let tuned = Server::start(&["--role", "gateway+builtin", "--upstream", &upstream]);
        let bare = Server::start(&["--role", "bare", "--upstream", &upstream]);
        let relay = Server::start(&["--role", "relay", "--upstream", &upstream]);
        let secure = Server::start(&["--role", "secure", "--upstream", &upstream]);
        let full = Server::start(&["--role", "full", "--upstream", &upstream]);
        for conns in [1usize, 32] {
            // Interleaved repetitions, medians per figure: the machine's
            // drift hits every server alike, and one noisy run moves nothing.
            let servers: [(&Server, &str, bool, Option<&str>); 7] = [
                (&stub, &direct_path, false, None),
                (&relay, &direct_path, false, None),
                (&bare, "/mcp", false, None),
                (&gw, "/mcp", true, None),
                (&secure, "/mcp", true, Some(&bearer)),
                (&full, "/mcp", true, Some(&bearer)),
                (&tuned, "/mcp", true, None),
            ];
            let mut all: Vec<Vec<Run>> = (0..servers.len()).map(|_| Vec::new()).collect();
            // A 32-connection run takes a third of a second, short enough
            // for the host's hiccups to move one server's figure and not
            // its neighbour's: three times the rounds, for steadier medians.
            let rounds = if conns == 1 { reps } else { reps * 3 };
            for rep in 0..rounds {
                for i in round_order(servers.len(), rep) {
                    let (server, path, gateway, auth) = servers[i];
                    all[i].push(run(server, path, gateway, auth, conns, calls).await);
                }
            }
            // Differences are medians of the per-round differences (a
            // pair ran back to back, so the machine's drift cancels).
            let diff = |x: usize, y: usize, f: &dyn Fn(&Run) -> f64| {
                mid_f64(
                    all[x]
                        .iter()
                        .zip(&all[y])
                        .map(|(a, b)| f(a) - f(b))
                        .collect(),
                )
            };
            let ratio = |x: usize, y: usize| {
                mid_f64(
                    all[x]
                        .iter()
                        .zip(&all[y])
                        .map(|(a, b)| a.rps / b.rps)
                        .collect(),
                )
            };
            let p50 = |r: &Run| us(r.p50);
            let cpu = |r: &Run| r.cpu_per_call * 1e6;
            let (d, t, b, g, s, f, k) = (0, 1, 2, 3, 4, 5, 6);
            for (name, i) in [
                ("direct (stub)", d),
                ("TCP relay (no HTTP)", t),
                ("bare proxy (no layers)", b),
                ("gateway (passthrough)", g),
                ("gateway + JWT + ACL + pins", s),
                ("full stack (+ limits + audit)", f),
                ("gateway, built-in HTTP/1 + busy poll", k),
            ] {
                let r = median(&all[i]);
                println!(
                    "{:<40} {:>9.0} {:>9.1} {:>9.1} {:>19.1} {:>8.1}",
                    format!("{mode} {conns:>2} conn {name}"),
                    r.rps,
                    us(r.p50),
                    us(r.p99),
                    r.cpu_per_call * 1e6,
                    r.sys_per_call * 1e6
                );
            }
            println!(
                "{:<40} throughput ratio {:.2}, added p50 {:.1} µs, gateway CPU {:.1} µs/call",
                format!("{mode} {conns:>2} conn gateway vs direct"),
                ratio(g, d),
                diff(g, d, &p50),
                median(&all[g]).cpu_per_call * 1e6
            );
            println!(
                "{:<40} added p50 {:.1} µs, CPU {:.1} µs/call (default server minus built-in + busy poll)",
                format!("{mode} {conns:>2} conn safe defaults"),
                diff(g, k, &p50),
                diff(g, k, &cpu)
            );
            println!(
                "{:<40} added p50 {:.1} µs, CPU {:.1} µs/call (gateway minus bare proxy)",
                format!("{mode} {conns:>2} conn the layers alone"),
                diff(g, b, &p50),
                diff(g, b, &cpu)
            );
            println!(
                "{:<40} added p50 {:.1} µs, CPU {:.1} µs/call (security stack minus passthrough)",
                format!("{mode} {conns:>2} conn JWT + ACL"),
                diff(s, g, &p50),
                diff(s, g, &cpu)
            );
            println!(
                "{:<40} added p50 {:.1} µs, CPU {:.1} µs/call (full minus security stack); full/passthrough throughput {:.2}",
                format!("{mode} {conns:>2} conn limits + audit"),
                diff(f, s, &p50),
                diff(f, s, &cpu),
                ratio(f, g)
            );
        }
    }

    aggregate_section(&stub, calls, reps, (idle_sessions / 10).max(100)).await;

    // Idle sessions: created through a fresh gateway process (initialize),
    // then held; the figure is that process's resident memory.
    let max = (idle_sessions + 10).to_string();
    let upstream = format!("http://{}/json", stub.addr);
    let gw = Server::start(&[
        "--role",
        "nocaps",
        "--upstream",
        &upstream,
        "--max-sessions",
        &max,
    ]);
    let rss0 = gw.rss_mb();
    let t = Instant::now();
    let conns = 32;
    let mut tasks = Vec::new();
    for i in 0..conns {
        let n = idle_sessions / conns + usize::from(i < idle_sessions % conns);
        let mut tx = connect(gw.addr).await;
        tasks.push(tokio::spawn(async move {
            for _ in 0..n {
                let (s, sid) = post(&mut tx, "/mcp", None, None, INIT).await;
                assert_eq!(s, 200);
                assert!(sid.is_some());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let rss1 = gw.rss_mb();
    println!(
        "idle sessions: {idle_sessions} created through the gateway in {:.1} s; gateway resident {:.1} MB (+{:.1} MB since start, {:.0} bytes/session)",
        t.elapsed().as_secs_f64(),
        rss1,
        rss1 - rss0,
        (rss1 - rss0) * 1024.0 * 1024.0 / idle_sessions as f64
    );
}

/// Several backends behind one endpoint: a routed `tools/call` beside the
/// single-backend gateway (paired rounds at 32 connections), the whole
/// merged `tools/list` of three backends (three pages, the client following
/// the gateway's cursors) beside one backend's list, and the memory a
/// session with three backends holds.
async fn aggregate_section(stub: &Server, calls: usize, reps: usize, sessions: usize) {
    for mode in ["json", "sse"] {
        let upstream = format!("http://{}/{mode}", stub.addr);
        let gw = Server::start(&["--role", "gateway", "--upstream", &upstream]);
        let agg = Server::start(&["--role", "aggregate", "--upstream", &upstream]);
        let (mut g, mut a) = (Vec::new(), Vec::new());
        for rep in 0..reps * 3 {
            for i in round_order(2, rep) {
                if i == 0 {
                    g.push(run_with(&gw, "/mcp", true, None, 32, calls, CALL).await);
                } else {
                    a.push(run_with(&agg, "/mcp", true, None, 32, calls, CALL_ROUTED).await);
                }
            }
        }
        let d_cpu = mid_f64(
            g.iter()
                .zip(&a)
                .map(|(g, a)| (a.cpu_per_call - g.cpu_per_call) * 1e6)
                .collect(),
        );
        let d_p50 = mid_f64(
            g.iter()
                .zip(&a)
                .map(|(g, a)| us(a.p50) - us(g.p50))
                .collect(),
        );
        for (name, runs) in [("gateway, one backend", &g), ("aggregate of 3, routed", &a)] {
            let r = median(runs);
            println!(
                "{:<40} {:>9.0} {:>9.1} {:>9.1} {:>19.1} {:>8.1}",
                format!("{mode} 32 conn {name}"),
                r.rps,
                us(r.p50),
                us(r.p99),
                r.cpu_per_call * 1e6,
                r.sys_per_call * 1e6
            );
        }
        println!(
            "{:<40} added p50 {d_p50:.1} µs, CPU {d_cpu:.1} µs/call (routing by name: aggregate minus gateway)",
            format!("{mode} 32 conn routing by name")
        );
    }
    let upstream = format!("http://{}/json", stub.addr);
    let gw = Server::start(&["--role", "gateway", "--upstream", &upstream]);
    let agg = Server::start(&["--role", "aggregate", "--upstream", &upstream]);
    let walks = (calls / 10).max(50);
    let (one, one_pages) = list_walk(&gw, walks).await;
    let (all, all_pages) = list_walk(&agg, walks).await;
    println!(
        "tools/list: one backend {:.1} µs CPU per list ({one_pages} page); aggregate of 3 {:.1} µs CPU per whole list ({all_pages} pages, {:.1} µs per page)",
        one * 1e6,
        all * 1e6,
        all * 1e6 / all_pages as f64
    );
    drop((gw, agg));
    // Memory: the same number of sessions through one backend and through
    // the aggregate of three (neither with limits, as the idle-sessions
    // figure), opened by one client connection; the difference is what the
    // aggregate holds per session.
    let max = (sessions + 10).to_string();
    let mut grew = Vec::new();
    for role in ["nocaps", "aggregate-nocaps"] {
        let s = Server::start(&[
            "--role",
            role,
            "--upstream",
            &upstream,
            "--max-sessions",
            &max,
        ]);
        let rss0 = s.rss_mb();
        let mut tx = connect(s.addr).await;
        for _ in 0..sessions {
            let (st, sid) = post(&mut tx, "/mcp", None, None, INIT).await;
            assert_eq!(st, 200);
            assert!(sid.is_some());
        }
        grew.push((s.rss_mb() - rss0) * 1024.0 * 1024.0 / sessions as f64);
    }
    println!(
        "sessions: {sessions} through one backend {:.0} bytes/session; through the aggregate of 3 {:.0} bytes/session (+{:.0})",
        grew[0],
        grew[1],
        grew[1] - grew[0]
    );
}

/// `walks` whole `tools/list`s on one connection, following `nextCursor`:
/// the server's CPU seconds per whole list, and the pages of one.
async fn list_walk(server: &Server, walks: usize) -> (f64, usize) {
    let mut tx = connect(server.addr).await;
    let (_, sid) = post(&mut tx, "/mcp", None, None, INIT).await;
    let sid = sid.expect("a session");
    let pages = walk_once(&mut tx, &sid).await;
    let on0 = server.on_cpu_seconds();
    for _ in 0..walks {
        walk_once(&mut tx, &sid).await;
    }
    ((server.on_cpu_seconds() - on0) / walks as f64, pages)
}

/// One whole `tools/list`, page by page: the number of pages.
async fn walk_once(tx: &mut SendRequest<Full<Bytes>>, sid: &str) -> usize {
    let mut pages = 0;
    let mut body = Bytes::from_static(LIST.as_bytes());
    loop {
        let (s, _, answer) = post_body(tx, "/mcp", Some(sid), None, body).await;
        assert_eq!(s, 200);
        pages += 1;
        let v: serde_json::Value = serde_json::from_slice(&answer).unwrap();
        match v["result"]["nextCursor"].as_str() {
            Some(c) => {
                body = Bytes::from(
                    serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"cursor": c}})
                        .to_string(),
                )
            }
            None => return pages,
        }
    }
}
