//! stdio backends through the `mcp-gateway` binary: the rmcp fixture
//! server (`conformance_server --stdio`) as the child, the rmcp client in
//! front (2025-11-25 sessions and 2026-07-28 stateless calls), and the
//! process hygiene the gateway promises: a child per session stopped on
//! `DELETE`, none left after 200 sessions or after shutdown, a child
//! killed mid-call answered with -32050 naming its exit, its session 404
//! next, a shared child restarted. Legacy HTTP+SSE clients are served by
//! the same stack (raw wire checks here; the Python SDK's client in
//! `scripts/translation.sh`).
#![allow(deprecated)]

#[path = "support/net.rs"]
mod net;
#[path = "support/process.rs"]
mod process;
#[path = "support/rmcp_client.rs"]
mod rmcp_client;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use serde_json::{json, Value};

use net::{raw, ACCEPT, JSON, V};
use process::{GatewayProcess, Scratch};
use rmcp_client::*;

/// The rmcp fixture server binary (built beside the tests).
fn fixture() -> String {
    let exe = std::env::current_exe().unwrap();
    let dir: PathBuf = exe.parent().unwrap().parent().unwrap().join("examples");
    let bin = dir.join("conformance_server");
    assert!(
        bin.exists(),
        "{} is missing: run the tests with cargo test (it builds the examples)",
        bin.display()
    );
    bin.to_str().unwrap().to_owned()
}

fn stdio_gateway() -> GatewayProcess {
    let cmd = format!("{} --stdio", fixture());
    GatewayProcess::start(&["--listen", "127.0.0.1:0", "--stdio", &cmd])
}

fn config_gateway(scratch: &Scratch, backend: &str) -> GatewayProcess {
    // Many concurrent calls of one (anonymous) principal: no per-client cap.
    let file = scratch.file(
        "gateway.toml",
        &format!(
            "listen = \"127.0.0.1:0\"\n\n[limits]\nprincipal_in_flight = 0\nprincipal_sessions = 0\nprincipal_session_rate = {{ burst = 0, per_second = 1.0 }}\n\n[backend]\n{backend}\n"
        ),
    );
    GatewayProcess::start(&["--config", &file])
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let rest = &s[s.rfind(')').unwrap() + 2..];
            !rest.starts_with('Z')
        })
        .unwrap_or(false)
}

/// Waits (bounded) until `pid` has `n` children; their pids.
async fn wait_children(pid: u32, n: usize) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let c = process::children_of(pid);
        if c.len() == n || Instant::now() > deadline {
            assert_eq!(c.len(), n, "children of the gateway: {c:?}");
            return c;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn kill9(pid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
}

const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#;

async fn open_raw(url: &str) -> String {
    net::open_session(url, INIT).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stdio_server_serves_rmcp_clients_a_child_per_session() {
    let gw = stdio_gateway();
    let (client, handler) = connect_session(&gw.url).await;
    let tools = client.list_all_tools().await.unwrap();
    assert!(tools.iter().any(|t| t.name == "echo"), "tools listed");
    assert_eq!(
        text_of(&call(&client, "echo", json!({"text": "hi"})).await),
        "hi"
    );
    let s = text_of(&call(&client, "test_sampling", json!({"prompt": "2+2"})).await);
    assert!(s.contains("echo:2+2"), "sampling round trip: {s}");
    let e = text_of(&call(&client, "test_elicitation", json!({"message": "ok?"})).await);
    assert!(e.contains("accept"), "elicitation round trip: {e}");
    progress_under_concurrency(&client, &handler).await;
    wait_children(gw.pid(), 1).await;
    let (second, _) = connect_session(&gw.url).await;
    assert_eq!(
        text_of(&call(&second, "echo", json!({"text": "2"})).await),
        "2"
    );
    wait_children(gw.pid(), 2).await;
    // Closing a client sends DELETE: its child is stopped.
    client.cancel().await.unwrap();
    wait_children(gw.pid(), 1).await;
    second.cancel().await.unwrap();
    wait_children(gw.pid(), 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_2026_client_is_served_by_a_stdio_server_of_an_older_revision() {
    let gw = stdio_gateway();
    let (client, handler) = connect_stateless(&gw.url).await;
    let tools = client.list_all_tools().await.unwrap();
    assert!(tools.iter().any(|t| t.name == "echo"));
    assert_eq!(
        text_of(&call(&client, "echo", json!({"text": "s"})).await),
        "s"
    );
    progress_under_concurrency(&client, &handler).await;
    // One upstream session (one child) for the principal, however many calls.
    wait_children(gw.pid(), 1).await;

    // The server asks the client mid-call: a 2026-07-28 client gets
    // `input_required`, and its retry carries the answer to the server.
    let meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {"elicitation": {}},
        "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"}});
    let h = [
        JSON,
        ACCEPT,
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/call"),
        ("mcp-name", "test_elicitation"),
    ];
    let ask = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
        "params": {"name": "test_elicitation", "arguments": {"message": "name?"}, "_meta": meta}});
    let r = raw("POST", &gw.url, &h, &ask.to_string()).await;
    let first = r.answer();
    let result = &first["result"];
    assert_eq!(result["resultType"], "input_required", "{first}");
    let (key, req) = result["inputRequests"]
        .as_object()
        .unwrap()
        .iter()
        .next()
        .unwrap();
    assert_eq!(req["method"], "elicitation/create");
    let state = result["requestState"].as_str().unwrap();
    let retry = json!({"jsonrpc": "2.0", "id": 8, "method": "tools/call",
        "params": {"name": "test_elicitation", "arguments": {"message": "name?"},
            "inputResponses": {key: {"action": "accept", "content": {"response": "bob"}}},
            "requestState": state, "_meta": meta}});
    let r = raw("POST", &gw.url, &h, &retry.to_string()).await;
    let done = r.answer();
    assert_eq!(done["id"], 8);
    assert_eq!(done["result"]["resultType"], "complete");
    let text = done["result"]["content"][0]["text"].as_str().unwrap();
    assert!(text.contains("bob"), "{text}");
    // A forged or spent state is refused clearly.
    let r = raw("POST", &gw.url, &h, &retry.to_string()).await;
    assert_eq!(r.error_code(), Some(-32602), "{}", r.text());

    // `subscriptions/listen`: acknowledged first, then the server's list
    // changes, tagged with the subscription's id.
    let listen = json!({"jsonrpc": "2.0", "id": 30, "method": "subscriptions/listen",
        "params": {"notifications": {"toolsListChanged": true, "promptsListChanged": true}, "_meta": meta}});
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<Bytes>>();
    let req = http::Request::post(&gw.url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "subscriptions/listen")
        .body(http_body_util::Full::new(Bytes::from(listen.to_string())))
        .unwrap();
    let res = client.request(req).await.unwrap();
    let mut stream = LegacyStream {
        body: res.into_body(),
        buf: String::new(),
    };
    let ack: Value = serde_json::from_str(&stream.next().await.1).unwrap();
    assert_eq!(
        ack["method"], "notifications/subscriptions/acknowledged",
        "{ack}"
    );
    assert_eq!(ack["params"]["notifications"]["toolsListChanged"], true);
    assert_eq!(
        ack["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"],
        30
    );
    let notify = json!({"jsonrpc": "2.0", "id": 31, "method": "tools/call",
        "params": {"name": "notify_later", "arguments": {}, "_meta": meta}});
    let h = [
        JSON,
        ACCEPT,
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/call"),
        ("mcp-name", "notify_later"),
    ];
    let r = raw("POST", &gw.url, &h, &notify.to_string()).await;
    assert_eq!(r.answer()["result"]["content"][0]["text"], "scheduled");
    let changed: Value = serde_json::from_str(&stream.next().await.1).unwrap();
    assert_eq!(
        changed["method"], "notifications/tools/list_changed",
        "{changed}"
    );
    assert_eq!(
        changed["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"],
        30
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shared_child_carries_many_sessions_and_is_restarted_after_a_crash() {
    let scratch = Scratch::new("stdio-shared");
    let gw = config_gateway(
        &scratch,
        &format!(
            "command = [{:?}, \"--stdio\"]\nmode = \"shared\"\nrestart = {{ max_per_minute = 5 }}",
            fixture()
        ),
    );
    // Three clients at once, their request ids and progress tokens alike:
    // each answer and notification reaches its own session.
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(connect_session(&gw.url).await);
    }
    let runs = clients
        .iter()
        .map(|(c, h)| progress_under_concurrency(c, h));
    futures::future::join_all(runs).await;
    let kids = wait_children(gw.pid(), 1).await;
    let s = text_of(&call(&clients[1].0, "test_sampling", json!({"prompt": "x"})).await);
    assert!(s.contains("echo:x"), "{s}");
    kill9(kids[0]);
    assert!(gw.wait_for_log("backend process exited"));
    // The next call starts it again; the sessions go on.
    let again = wait_children_after(&clients[0].0, gw.pid()).await;
    assert_ne!(again, kids[0]);
    assert_eq!(
        text_of(&call(&clients[2].0, "echo", json!({"text": "on"})).await),
        "on"
    );
    assert!(gw.wait_for_log("restarting the shared backend process"));
}

/// Calls `echo` until the shared child is back; the new child's pid.
async fn wait_children_after(
    client: &rmcp::service::RunningService<rmcp::RoleClient, TestClient>,
    pid: u32,
) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let params = from(json!({"name": "echo", "arguments": {"text": "back"}}));
        if let Ok(r) = client.call_tool(params).await {
            assert_eq!(text_of(&r), "back");
            return wait_children(pid, 1).await[0];
        }
        assert!(
            Instant::now() < deadline,
            "the shared child never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_sessions_leave_no_child_and_the_cap_refuses_the_next() {
    let scratch = Scratch::new("stdio-200");
    let gw = config_gateway(
        &scratch,
        &format!("command = [{:?}, \"--stdio\"]", fixture()),
    );
    for _ in 0..200 {
        let sid = open_raw(&gw.url).await;
        let r = raw("DELETE", &gw.url, &[V, ("mcp-session-id", &sid)], "").await;
        assert!(r.status == 204 || r.status == 200, "{}", r.status);
    }
    wait_children(gw.pid(), 0).await;
    assert_eq!(gw.log().matches("started backend process").count(), 200);

    let scratch = Scratch::new("stdio-cap");
    drop(gw);
    let capped = config_gateway(
        &scratch,
        &format!(
            "command = [{:?}, \"--stdio\"]\nmax_processes = 2",
            fixture()
        ),
    );
    open_raw(&capped.url).await;
    open_raw(&capped.url).await;
    let r = raw("POST", &capped.url, &[JSON, ACCEPT], INIT).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.error_code(), Some(-32052));
    assert!(r.text().contains("max_processes"), "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_killed_mid_call_fails_the_call_with_its_exit_and_ends_the_session() {
    let gw = stdio_gateway();
    let sid = open_raw(&gw.url).await;
    let kid = wait_children(gw.pid(), 1).await[0];
    // A call streaming progress: in flight at the child once the first
    // notification is out.
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<Bytes>>();
    let body = r#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"progress_burst","arguments":{"count":3,"interval_ms":1000},"_meta":{"progressToken":"p"}}}"#;
    let req = http::Request::post(&gw.url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-11-25")
        .header("mcp-session-id", &sid)
        .body(http_body_util::Full::new(Bytes::from_static(
            body.as_bytes(),
        )))
        .unwrap();
    let res = client.request(req).await.unwrap();
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let mut stream = LegacyStream {
        body: res.into_body(),
        buf: String::new(),
    };
    let (_, first) = stream.next().await;
    assert!(first.contains("notifications/progress"), "{first}");
    let killed = Instant::now();
    kill9(kid);
    let last = stream.answer(5).await;
    eprintln!(
        "the call's error came {:?} after the kill",
        killed.elapsed()
    );
    assert_eq!(last["error"]["code"], -32050, "{last}");
    let msg = last["error"]["message"].as_str().unwrap();
    assert!(msg.contains("signal: 9"), "names the exit: {msg}");
    // The session died with its child: 404, and the client starts over.
    let r = raw(
        "POST",
        &gw.url,
        &[JSON, ACCEPT, V, ("mcp-session-id", &sid)],
        r#"{"jsonrpc":"2.0","id":6,"method":"tools/list"}"#,
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.text());
    wait_children(gw.pid(), 0).await;
    assert!(gw.log().contains("backend process exited"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_over_the_bound_stops_the_child_and_fails_its_call() {
    let scratch = Scratch::new("stdio-line");
    // A server that answers its first message with 5 000 bytes on one line.
    let gw = config_gateway(
        &scratch,
        r#"command = ["sh", "-c", "read l; head -c 5000 /dev/zero | tr -c a a; echo; sleep 60"]
max_line_bytes = 1024"#,
    );
    let r = raw("POST", &gw.url, &[JSON, ACCEPT], INIT).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.error_code(), Some(-32050));
    assert!(r.text().contains("over 1024 bytes"), "{}", r.text());
    wait_children(gw.pid(), 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_session_stops_its_child() {
    use mcp_gateway_core::session::InMemoryConfig;
    use mcp_gateway_tower::upstream::bridge::{Bridge, BridgeConfig, StdioCommand};
    let bridge = Bridge::stdio(
        "files",
        StdioCommand::new([fixture(), "--stdio".to_owned()]),
        BridgeConfig::default(),
    );
    let app = mcp_gateway_axum::McpGateway::builder()
        .upstream_service(bridge.clone())
        .session_config(InMemoryConfig {
            idle_timeout: Duration::from_millis(300),
            ..Default::default()
        })
        .sweep_interval(Duration::from_millis(50))
        .build()
        .unwrap();
    let served = net::serve(app).await;
    open_raw(&net::url(&served)).await;
    assert_eq!(bridge.live(), 1);
    // Idle past the timeout: the sweep ends the session, and its child.
    let deadline = Instant::now() + Duration::from_secs(20);
    while bridge.live() > 0 {
        assert!(
            Instant::now() < deadline,
            "the expired session's child lives on"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(bridge.sessions(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_stops_every_child_when_it_stops() {
    let mut gw = stdio_gateway();
    for _ in 0..3 {
        open_raw(&gw.url).await;
    }
    let kids = wait_children(gw.pid(), 3).await;
    gw.terminate();
    let status = gw
        .wait_exit(Duration::from_secs(30))
        .expect("the gateway exits");
    assert!(status.success(), "{status:?}");
    for k in kids {
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive(k) {
            assert!(Instant::now() < deadline, "child {k} outlived the gateway");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A legacy (2024-11-05) client on the wire: its stream, the endpoint
/// event, a POST answered 202 whose answer comes on the stream.
struct LegacyStream {
    body: hyper::body::Incoming,
    buf: String,
}

impl LegacyStream {
    async fn open(url: &str, auth: Option<&str>) -> Result<LegacyStream, u16> {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<Empty<Bytes>>();
        let mut req =
            http::Request::get(format!("{url}/sse")).header("accept", "text/event-stream");
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let res = client
            .request(req.body(Empty::new()).unwrap())
            .await
            .unwrap();
        if res.status() != 200 {
            return Err(res.status().as_u16());
        }
        Ok(LegacyStream {
            body: res.into_body(),
            buf: String::new(),
        })
    }

    /// The next event: (event name, data).
    async fn next(&mut self) -> (String, String) {
        loop {
            if let Some(i) = self.buf.find("\n\n") {
                let ev: String = self.buf.drain(..i + 2).collect();
                if ev.starts_with(':') {
                    continue;
                }
                let mut name = String::new();
                let mut data = String::new();
                for l in ev.lines() {
                    if let Some(v) = l.strip_prefix("event: ") {
                        name = v.into();
                    } else if let Some(v) = l.strip_prefix("data: ") {
                        data.push_str(v);
                    }
                }
                return (name, data);
            }
            let f = tokio::time::timeout(Duration::from_secs(20), self.body.frame())
                .await
                .expect("an event in time")
                .expect("the stream goes on")
                .unwrap();
            if let Ok(d) = f.into_data() {
                self.buf.push_str(&String::from_utf8_lossy(&d));
            }
        }
    }

    /// Waits (bounded) for the answer with `id`, skipping other messages.
    async fn answer(&mut self, id: i64) -> Value {
        let wait = async {
            loop {
                let (_, data) = self.next().await;
                let v: Value = serde_json::from_str(&data).unwrap();
                if v["id"] == id {
                    return v;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(20), wait)
            .await
            .unwrap_or_else(|_| panic!("no answer to {id} on the stream"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_legacy_endpoint_can_be_turned_off() {
    let cmd = format!("{} --stdio", fixture());
    let gw = GatewayProcess::start(&[
        "--listen",
        "127.0.0.1:0",
        "--no-legacy-sse",
        "--stdio",
        &cmd,
    ]);
    assert_eq!(LegacyStream::open(&gw.url, None).await.err(), Some(404));
    let on = stdio_gateway();
    let mut s = LegacyStream::open(&on.url, None).await.unwrap();
    assert_eq!(s.next().await.0, "endpoint");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_sse_clients_are_served_through_the_same_checks() {
    let scratch = Scratch::new("stdio-legacy");
    let file = scratch.file(
        "gateway.toml",
        &format!(
            r#"listen = "127.0.0.1:0"

[backend]
command = [{:?}, "--stdio"]

[auth]
resource = "http://127.0.0.1/mcp"

[[auth.api_keys]]
sha256 = "ac5bb3526d3be432ba19fb1fc0712d350c160bd2169cd24401c9fcaeaac2d860"
subject = "ops"

[[auth.api_keys]]
sha256 = "cc551f29bff81915d8d2765567f3c5f73f4b9ebc70f37757eefe31734bde1421"
subject = "reader-bot"
"#,
            fixture()
        ),
    );
    let gw = GatewayProcess::start(&["--config", &file]);
    // Unauthenticated: the stream is refused as the modern endpoint would be.
    assert_eq!(LegacyStream::open(&gw.url, None).await.err(), Some(401));
    let key = "Bearer demo-admin-key";
    let mut s = LegacyStream::open(&gw.url, Some(key)).await.unwrap();
    let (name, endpoint) = s.next().await;
    assert_eq!(name, "endpoint");
    assert!(
        endpoint.starts_with("/mcp/message?sessionId="),
        "{endpoint}"
    );
    let post = format!("{}{}", gw.url.trim_end_matches("/mcp"), endpoint);
    let auth = ("authorization", key);
    let init = INIT.replace("2025-11-25", "2024-11-05");
    let r = raw("POST", &post, &[JSON, auth], &init).await;
    assert_eq!(r.status, 202);
    let a = s.answer(1).await;
    assert!(a["result"]["serverInfo"].is_object(), "{a}");
    let r = raw(
        "POST",
        &post,
        &[JSON, auth],
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
    )
    .await;
    assert_eq!(r.status, 202);
    let r = raw(
        "POST",
        &post,
        &[JSON, auth],
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"progress_burst","arguments":{"count":5},"_meta":{"progressToken":"t"}}}"#,
    )
    .await;
    assert_eq!(r.status, 202);
    let mut progress = 0;
    let done = loop {
        let (_, data) = s.next().await;
        let v: Value = serde_json::from_str(&data).unwrap();
        if v["method"] == "notifications/progress" {
            progress += 1;
        } else if v["id"] == 2 {
            break v;
        }
    };
    assert_eq!(progress, 5, "every progress notification on the stream");
    assert_eq!(done["result"]["content"][0]["text"], "5");
    // A post without the credential is refused as the modern endpoint
    // would refuse it, and the refusal answers the request on the stream.
    let r = raw(
        "POST",
        &post,
        &[JSON],
        r#"{"jsonrpc":"2.0","id":3,"method":"tools/list"}"#,
    )
    .await;
    assert_eq!(r.status, 202);
    let refused = s.answer(3).await;
    assert_eq!(refused["error"]["code"], -32000, "{refused}");
    // So is another principal's: the session is the owner's alone.
    let r = raw(
        "POST",
        &post,
        &[JSON, ("authorization", "Bearer demo-reader-key")],
        r#"{"jsonrpc":"2.0","id":4,"method":"tools/list"}"#,
    )
    .await;
    assert_eq!(r.status, 202);
    let refused = s.answer(4).await;
    assert_eq!(refused["error"]["code"], -32001, "{refused}");
    // Every message went through the audit (access) log as a call.
    assert!(gw.wait_for_log(r#"method="tools/call" target_name="progress_burst""#));
    wait_children(gw.pid(), 1).await;
    // The client goes: its session ends and its child stops.
    drop(s);
    wait_children(gw.pid(), 0).await;
    assert!(gw.wait_for_log(r#"end_reason="deleted""#));
}
