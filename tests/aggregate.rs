//! Several different MCP servers behind one gateway endpoint (the
//! aggregate): rmcp servers with shared and paged names behind, the rmcp
//! client in front, for 2025-11-25 and 2026-07-28, in each prefix mode.
#![allow(deprecated)]

#[path = "../examples/support/fixtures.rs"]
mod fixtures;
#[path = "support/net.rs"]
mod net;
#[path = "support/rmcp_client.rs"]
mod rmcp_client;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use mcp_gateway_axum::{Aggregate, AggregateConfig, Backend, McpGateway, PrefixMode};
use rmcp::model::*;
use rmcp::service::RunningService;
use rmcp::RoleClient;
use serde_json::{json, Value};

use net::{raw, serve, url, Served, ACCEPT, JSON, V};
use rmcp_client::*;

fn fixture(name: &str) -> Backend {
    Backend::new(name).upstream_service(fixtures::service(name))
}

fn paged(name: &str, tools: usize, page: usize, with_echo: bool) -> Backend {
    Backend::new(name).upstream_service(fixtures::paged_service(fixtures::Paged::new(
        name, tools, page, with_echo,
    )))
}

/// The gateway over `backends`, its catalog listed first.
async fn gateway(backends: Vec<Backend>, prefix: PrefixMode) -> (Served, Aggregate) {
    let mut b = McpGateway::builder().aggregate_config(AggregateConfig::default().prefix(prefix));
    for be in backends {
        b = b.backend(be);
    }
    let (router, handles) = b.build_with_handles().unwrap();
    let agg = handles.aggregate.expect("an aggregate");
    agg.discover().await.expect("no conflict");
    (serve(router).await, agg)
}

/// The fixture server's tool names.
async fn fixture_tools() -> BTreeSet<String> {
    let direct = serve(axum::Router::new().nest_service("/mcp", fixtures::service("direct"))).await;
    let (client, _) = connect_session(&url(&direct)).await;
    let names = client
        .list_all_tools()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    client.cancel().await.unwrap();
    names
}

async fn tool_names(client: &RunningService<RoleClient, TestClient>) -> Vec<String> {
    client
        .list_all_tools()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name.to_string())
        .collect()
}

/// Every page of the merged tool list, followed by hand.
async fn pages(client: &RunningService<RoleClient, TestClient>) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let params: Option<PaginatedRequestParams> =
            cursor.as_ref().map(|c| from(json!({"cursor": c})));
        let page = client.list_tools(params).await.unwrap();
        out.push(page.tools.iter().map(|t| t.name.to_string()).collect());
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return out,
        }
        assert!(out.len() < 100, "the cursors loop");
    }
}

async fn call_err(client: &RunningService<RoleClient, TestClient>, name: &str) -> String {
    let params: CallToolRequestParams = from(json!({"name": name, "arguments": {}}));
    match client.call_tool(params).await {
        Ok(r) => panic!("{name} answered {r:?}"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_prefixes_every_name_and_routes_every_message() {
    let (gw, _agg) = gateway(
        vec![fixture("alpha"), paged("beta", 7, 3, true)],
        PrefixMode::Always,
    )
    .await;
    let (client, handler) = connect_session(&url(&gw)).await;

    // The merged list is exactly the union, page by page, each name prefixed.
    let mut want: BTreeSet<String> = fixture_tools()
        .await
        .into_iter()
        .map(|n| format!("alpha__{n}"))
        .collect();
    want.extend((0..7).map(|i| format!("beta__p_{i}")));
    want.extend(["beta__paged_echo".into(), "beta__echo".into()]);
    let pages = pages(&client).await;
    let seen: Vec<String> = pages.iter().flatten().cloned().collect();
    assert_eq!(seen.len(), want.len(), "nothing repeated: {pages:?}");
    assert_eq!(seen.into_iter().collect::<BTreeSet<_>>(), want);
    assert_eq!(
        pages.len(),
        4,
        "alpha in one page, beta's 9 tools in pages of 3"
    );
    assert_eq!(tool_names(&client).await.len(), want.len());

    // Calls go to the backend the prefix names, without the prefix.
    assert_eq!(
        text_of(&call(&client, "alpha__whoami", json!({})).await),
        "alpha"
    );
    assert_eq!(
        text_of(&call(&client, "alpha__echo", json!({"text": "a"})).await),
        "a"
    );
    assert_eq!(
        text_of(&call(&client, "beta__echo", json!({"text": "b"})).await),
        "beta:b"
    );
    assert_eq!(text_of(&call(&client, "beta__p_5", json!({})).await), "p_5");
    let e = call_err(&client, "echo").await;
    assert!(
        e.contains("-32602") || e.contains("Unknown tool: echo"),
        "{e}"
    );
    let e = call_err(&client, "gamma__echo").await;
    assert!(e.contains("gamma__echo"), "{e}");

    // Server-to-client requests reach the client and its answers the backend.
    let r = call(&client, "alpha__test_sampling", json!({"prompt": "2+2?"})).await;
    assert_eq!(text_of(&r), "LLM response: echo:2+2?");
    let r = call(
        &client,
        "alpha__test_elicitation",
        json!({"message": "ok?"}),
    )
    .await;
    assert_eq!(
        text_of(&r),
        r#"User response: action=accept, content={"name":"yes please","response":"yes please"}"#
    );

    // Resources: unique URIs unchanged, routed by URI or by template.
    let resources = client.list_all_resources().await.unwrap();
    let uris: BTreeSet<String> = resources.iter().map(|r| r.uri.to_string()).collect();
    assert_eq!(uris.len(), 3 + 7);
    assert!(uris.contains("test://static-text") && uris.contains("paged://r/6"));
    let read = |uri: &str| {
        let params: ReadResourceRequestParams = from(json!({"uri": uri}));
        let peer = client.peer().clone();
        async move { serde_json::to_value(peer.read_resource(params).await.unwrap()).unwrap() }
    };
    assert_eq!(
        read("paged://r/3").await["contents"][0]["text"],
        "beta has paged://r/3"
    );
    assert_eq!(
        read("paged://t/anything").await["contents"][0]["text"],
        "beta has paged://t/anything"
    );
    assert_eq!(
        read("test://template/42/data").await["contents"][0]["uri"],
        "test://template/42/data"
    );
    let templates = client.list_all_resource_templates().await.unwrap();
    assert_eq!(templates.len(), 2);

    // Prompts, prefixed like tools.
    let prompts = client.list_all_prompts().await.unwrap();
    assert!(prompts.iter().any(|p| p.name == "beta__paged_prompt"));
    let got = client
        .get_prompt(from(json!({"name": "beta__paged_prompt"})))
        .await
        .unwrap();
    assert_eq!(
        serde_json::to_value(&got).unwrap()["messages"][0]["content"]["text"],
        "prompt of beta"
    );

    // The merged GET stream delivers a backend's list_changed.
    assert_eq!(
        text_of(&call(&client, "alpha__notify_later", json!({})).await),
        "scheduled"
    );
    handler
        .wait_until("tools/list_changed on the merged GET stream", |h| {
            h.tool_list_changed.load(Ordering::SeqCst) >= 1
        })
        .await;

    // 50 concurrent calls with progress, spread over the backends: none lost.
    progress_spread(&client, &handler, &["alpha__progress_burst"]).await;
    client.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_prefixes_only_the_shared_names_and_rewrites_shared_uris() {
    let (gw, agg) = gateway(
        vec![
            fixture("alpha"),
            paged("beta", 5, 2, true),
            paged("gamma", 5, 4, true),
        ],
        PrefixMode::Conflicts,
    )
    .await;
    let (client, _) = connect_session(&url(&gw)).await;
    let names = tool_names(&client).await;
    let set: BTreeSet<&str> = names.iter().map(String::as_str).collect();
    assert_eq!(set.len(), names.len(), "nothing repeated");
    // `echo` is everyone's, p_* and paged_echo beta's and gamma's.
    for n in [
        "alpha__echo",
        "beta__echo",
        "gamma__echo",
        "beta__p_4",
        "gamma__p_0",
        "gamma__paged_echo",
    ] {
        assert!(set.contains(n), "{n} in {set:?}");
    }
    assert!(
        set.contains("whoami") && set.contains("test_sampling"),
        "{set:?}"
    );
    assert!(!set.contains("echo") && !set.contains("p_0"));
    assert_eq!(names.len(), fixture_tools().await.len() + 2 * (5 + 1 + 1));

    assert_eq!(text_of(&call(&client, "whoami", json!({})).await), "alpha");
    assert_eq!(
        text_of(&call(&client, "gamma__echo", json!({"text": "g"})).await),
        "gamma:g"
    );
    assert_eq!(text_of(&call(&client, "beta__p_1", json!({})).await), "p_1");
    let e = call_err(&client, "echo").await;
    assert!(e.contains("several backends"), "{e}");

    // Shared URIs are shown as mcpgw://{backend}/{uri} and read back.
    let resources = client.list_all_resources().await.unwrap();
    let uris: BTreeSet<String> = resources.iter().map(|r| r.uri.to_string()).collect();
    assert!(uris.contains("mcpgw://beta/paged://r/0"), "{uris:?}");
    assert!(uris.contains("mcpgw://gamma/paged://r/4"), "{uris:?}");
    assert!(uris.contains("test://static-text"));
    let params: ReadResourceRequestParams = from(json!({"uri": "mcpgw://gamma/paged://r/2"}));
    let read = serde_json::to_value(client.read_resource(params).await.unwrap()).unwrap();
    assert_eq!(read["contents"][0]["text"], "gamma has paged://r/2");
    assert_eq!(read["contents"][0]["uri"], "mcpgw://gamma/paged://r/2");
    assert_eq!(
        agg.resolve(mcp_gateway_tower::aggregate::Kind::Tool, "beta__paged_echo"),
        Some(("beta".into(), "paged_echo".into()))
    );
    client.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_refuses_shared_names_at_start_and_routes_unprefixed_names() {
    let b = McpGateway::builder()
        .aggregate_config(AggregateConfig::default().prefix(PrefixMode::Never))
        .backend(fixture("alpha"))
        .backend(paged("beta", 3, 2, true));
    let (_, handles) = b.build_with_handles().unwrap();
    let err = handles
        .aggregate
        .unwrap()
        .discover()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tool 'echo' is offered by backends alpha and beta"),
        "{err}"
    );

    let (gw, _) = gateway(
        vec![fixture("alpha"), paged("beta", 3, 2, false)],
        PrefixMode::Never,
    )
    .await;
    let (client, _) = connect_session(&url(&gw)).await;
    let names = tool_names(&client).await;
    assert!(names.contains(&"p_2".to_owned()) && names.contains(&"echo".to_owned()));
    assert_eq!(text_of(&call(&client, "p_2", json!({})).await), "p_2");
    assert_eq!(text_of(&call(&client, "whoami", json!({})).await), "alpha");
    client.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_to_client_requests_of_two_backends_never_collide() {
    let (gw, _) = gateway(vec![fixture("alpha"), fixture("beta")], PrefixMode::Always).await;
    let (client, handler) = connect_session(&url(&gw)).await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let peer = client.peer().clone();
        let tool = if i % 2 == 0 {
            "alpha__test_sampling"
        } else {
            "beta__test_sampling"
        };
        tasks.push(tokio::spawn(async move {
            let params: CallToolRequestParams =
                from(json!({"name": tool, "arguments": {"prompt": format!("q{i}")}}));
            (i, peer.call_tool(params).await.unwrap())
        }));
    }
    for t in tasks {
        let (i, r) = t.await.unwrap();
        assert_eq!(text_of(&r), format!("LLM response: echo:q{i}"));
    }
    // And 50 calls streaming progress, spread over both: none lost.
    progress_spread(
        &client,
        &handler,
        &["alpha__progress_burst", "beta__progress_burst"],
    )
    .await;
    client.cancel().await.unwrap();
}

/// A backend on a fixed address that can be stopped and started again
/// (a restart: it forgets every session).
struct Restartable {
    addr: SocketAddr,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Restartable {
    async fn start(addr: SocketAddr, name: &str) -> Self {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().nest_service("/mcp", fixtures::service(name));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Restartable {
            addr,
            task: Some(task),
        }
    }

    async fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }
}

impl Drop for Restartable {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_backend_is_initialized_again_and_the_others_never_notice() {
    let mut beta = Restartable::start("127.0.0.1:0".parse().unwrap(), "beta").await;
    let b = McpGateway::builder().backend(fixture("alpha")).backend(
        Backend::new("beta")
            .upstream_url(&format!("http://{}/mcp", beta.addr))
            .unwrap(),
    );
    let (router, _) = b.build_with_handles().unwrap();
    let gw = serve(router).await;
    let (client, _) = connect_session(&url(&gw)).await;
    assert_eq!(
        text_of(&call(&client, "beta__whoami", json!({})).await),
        "beta"
    );
    assert_eq!(
        text_of(&call(&client, "alpha__whoami", json!({})).await),
        "alpha"
    );

    beta.stop().await;
    let beta = Restartable::start(beta.addr, "beta").await;
    // The new process does not know the session: the gateway initializes
    // it again, replaying the client's initialize, and the call goes on.
    assert_eq!(
        text_of(&call(&client, "beta__echo", json!({"text": "again"})).await),
        "again"
    );
    assert_eq!(
        text_of(&call(&client, "alpha__echo", json!({"text": "still"})).await),
        "still"
    );
    assert_eq!(
        text_of(&call(&client, "beta__whoami", json!({})).await),
        "beta"
    );
    client.cancel().await.unwrap();
    drop(beta);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stateless_2026_clients_get_a_merged_discover_and_routed_calls() {
    let (gw, _) = gateway(
        vec![fixture("alpha"), paged("beta", 4, 3, true)],
        PrefixMode::Conflicts,
    )
    .await;
    let (client, handler) = connect_stateless(&url(&gw)).await;
    assert_eq!(
        client.peer_info().map(|i| i.protocol_version.clone()),
        Some(ProtocolVersion::V_2026_07_28)
    );
    let names = tool_names(&client).await;
    assert!(names.contains(&"beta__echo".to_owned()) && names.contains(&"p_3".to_owned()));
    assert_eq!(names.len(), fixture_tools().await.len() + 4 + 2);
    assert_eq!(
        text_of(&call(&client, "beta__echo", json!({"text": "s"})).await),
        "beta:s"
    );
    assert_eq!(
        text_of(&call(&client, "alpha__echo", json!({"text": "s"})).await),
        "s"
    );
    assert_eq!(text_of(&call(&client, "p_0", json!({})).await), "p_0");
    progress_spread(&client, &handler, &["progress_burst"]).await;
    client.cancel().await.unwrap();
}

/// A backend service that counts the `DELETE`s it gets.
fn counting(name: &str, deletes: Arc<AtomicUsize>) -> Backend {
    let inner = fixtures::service(name);
    let svc = tower::service_fn(move |req: http::Request<mcp_gateway_tower::Body>| {
        if req.method() == http::Method::DELETE {
            deletes.fetch_add(1, Ordering::SeqCst);
        }
        tower::ServiceExt::oneshot(inner.clone(), req)
    });
    Backend::new(name).upstream_service(svc)
}

const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initialize_merges_the_backends_and_delete_ends_every_backend_session() {
    let deletes = Arc::new(AtomicUsize::new(0));
    let b = McpGateway::builder()
        .backend(counting("alpha", deletes.clone()))
        .backend(paged("beta", 2, 2, false))
        .backend(counting("gamma", deletes.clone()));
    let (router, handles) = b.build_with_handles().unwrap();
    let agg = handles.aggregate.unwrap();
    let gw = serve(router).await;
    let u = url(&gw);
    let r = raw("POST", &u, &[JSON, ACCEPT], INIT).await;
    assert_eq!(r.status, 200);
    let init = r.answer();
    assert_eq!(init["result"]["serverInfo"]["name"], "mcp-gateway");
    let caps = &init["result"]["capabilities"];
    assert!(
        caps["logging"].is_object() && caps["completions"].is_object(),
        "{caps}"
    );
    assert_eq!(caps["tools"]["listChanged"], true);
    assert_eq!(caps["resources"]["subscribe"], true);
    assert!(
        init["result"]["instructions"]
            .as_str()
            .unwrap()
            .contains("[beta] beta lists in pages of 2"),
        "{init}"
    );
    let sid = r.headers["mcp-session-id"].to_str().unwrap().to_owned();
    assert_eq!(agg.sessions(), 1);

    // ping is the gateway's; a batch cannot be routed; unknown names -32602.
    let ping = raw(
        "POST",
        &u,
        &[JSON, ACCEPT, V, ("mcp-session-id", &sid)],
        r#"{"jsonrpc":"2.0","id":2,"method":"ping"}"#,
    )
    .await;
    assert_eq!(ping.answer()["result"], json!({}));
    let unknown = raw(
        "POST",
        &u,
        &[JSON, ACCEPT, V, ("mcp-session-id", &sid)],
        r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"nobody__x","arguments":{}}}"#,
    )
    .await;
    assert_eq!(unknown.answer()["error"]["code"], -32602, "{unknown:?}");
    assert!(unknown.answer()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("nobody__x"));
    let cursor = raw(
        "POST",
        &u,
        &[JSON, ACCEPT, V, ("mcp-session-id", &sid)],
        r#"{"jsonrpc":"2.0","id":4,"method":"tools/list","params":{"cursor":"forged"}}"#,
    )
    .await;
    assert_eq!(cursor.answer()["error"]["code"], -32602);

    let del = raw("DELETE", &u, &[V, ("mcp-session-id", &sid)], "").await;
    assert_eq!(del.status, 204);
    assert_eq!(
        deletes.load(Ordering::SeqCst),
        2,
        "alpha's and gamma's sessions ended"
    );
    assert_eq!(agg.sessions(), 0);
    let after = raw(
        "POST",
        &u,
        &[JSON, ACCEPT, V, ("mcp-session-id", &sid)],
        r#"{"jsonrpc":"2.0","id":5,"method":"ping"}"#,
    )
    .await;
    assert_eq!(after.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_cannot_initialize_is_left_out_unless_all_are_required() {
    // A port nobody listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let build = |require_all: bool| {
        McpGateway::builder()
            .aggregate_config(AggregateConfig::default().require_all(require_all))
            .backend(fixture("alpha"))
            .backend(
                Backend::new("down")
                    .upstream_url(&format!("http://{dead}/mcp"))
                    .unwrap(),
            )
            .build()
            .unwrap()
    };
    let gw = serve(build(false)).await;
    let (client, _) = connect_session(&url(&gw)).await;
    let names = tool_names(&client).await;
    assert_eq!(names.len(), fixture_tools().await.len());
    assert!(names.iter().all(|n| n.starts_with("alpha__")));
    let e = call_err(&client, "down__anything").await;
    assert!(e.contains("down"), "the error names the backend: {e}");
    client.cancel().await.unwrap();

    let strict = serve(build(true)).await;
    let r = raw("POST", &url(&strict), &[JSON, ACCEPT], INIT).await;
    assert_eq!(r.status, 502, "{r:?}");
    assert!(String::from_utf8_lossy(&r.body).contains("down"));
    let _: Value = r.json();
}

#[path = "support/process.rs"]
mod process;

fn config(alpha: &Served, beta: &Served, extra: &str) -> String {
    format!(
        "[backends.alpha]\nurls = [\"{}\"]\n\n[backends.beta]\nurls = [\"{}\"]\n\n{extra}",
        url(alpha),
        url(beta)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_backends_tables_with_per_backend_policy_and_limits() {
    let alpha = serve(axum::Router::new().nest_service("/mcp", fixtures::service("alpha"))).await;
    let beta = serve(axum::Router::new().nest_service(
        "/mcp",
        fixtures::paged_service(fixtures::Paged::new("beta", 4, 3, true)),
    ))
    .await;
    let dir = process::Scratch::new("aggregate-binary");
    let file = dir.file(
        "gateway.toml",
        &config(
            &alpha,
            &beta,
            r#"[aggregate]
prefix = "conflicts"

[policy]
default = "allow"

[[policy.rules]]
effect = "deny"
backends = ["beta"]
tools = ["p_1"]

[limits]
backend_rate = { burst = 3, per_second = 0.001 }
"#,
        ),
    );
    let gw = tokio::task::spawn_blocking(move || {
        process::GatewayProcess::start(&["--config", &file, "--listen", "127.0.0.1:0"])
    })
    .await
    .unwrap();
    let (client, _) = connect_session(&gw.url).await;
    let names = tool_names(&client).await;
    assert!(names.contains(&"beta__echo".to_owned()) && names.contains(&"alpha__echo".to_owned()));
    assert!(names.contains(&"p_0".to_owned()) && names.contains(&"whoami".to_owned()));
    assert!(
        !names.contains(&"p_1".to_owned()),
        "beta's p_1 is denied: {names:?}"
    );
    let e = call_err(&client, "p_1").await;
    assert!(e.contains("not allowed"), "{e}");
    // Each backend has its own backend rate: three calls to beta, then
    // refused; alpha still has its own three.
    for _ in 0..3 {
        assert_eq!(text_of(&call(&client, "p_0", json!({})).await), "p_0");
    }
    let e = call_err(&client, "p_2").await;
    assert!(e.contains("-32055") || e.contains("limit"), "{e}");
    for _ in 0..3 {
        assert_eq!(text_of(&call(&client, "whoami", json!({})).await), "alpha");
    }
    client.cancel().await.unwrap();
    assert!(
        gw.log().contains("aggregate"),
        "the startup summary names the aggregate"
    );
}

#[test]
fn the_binary_refuses_shared_names_with_prefix_never() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (alpha, beta) = rt.block_on(async {
        let a = serve(axum::Router::new().nest_service("/mcp", fixtures::service("alpha"))).await;
        let b = serve(axum::Router::new().nest_service(
            "/mcp",
            fixtures::paged_service(fixtures::Paged::new("beta", 2, 2, true)),
        ))
        .await;
        (a, b)
    });
    let dir = process::Scratch::new("aggregate-never");
    let file = dir.file(
        "gateway.toml",
        &config(&alpha, &beta, "[aggregate]\nprefix = \"never\"\n"),
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mcp-gateway"))
        .args(["--config", &file, "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tool 'echo' is offered by backends alpha and beta"),
        "{err}"
    );
    drop((alpha, beta));
}
