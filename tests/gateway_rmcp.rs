//! End to end against real MCP peers: rmcp servers behind the gateway, the
//! rmcp client (and a raw HTTP client for wire-level checks) in front, all
//! on 127.0.0.1 with ephemeral ports, for 2025-11-25 and 2026-07-28.
// Sampling is deprecated in the 2026-07-28 revision but is part of 2025-11-25.
#![allow(deprecated)]

#[path = "../examples/support/fixtures.rs"]
mod fixtures;
#[path = "support/net.rs"]
mod net;
#[path = "support/rmcp_client.rs"]
mod rmcp_client;

use std::sync::atomic::Ordering;

use mcp_gateway_axum::McpGateway;
use mcp_gateway_tower::upstream::{HttpClient, HttpUpstreamConfig};
use rmcp::model::*;
use serde_json::{json, Value};

use net::{raw, serve, url, Served, ACCEPT, JSON, V};
use rmcp_client::*;

async fn backend(name: &str) -> Served {
    serve(axum::Router::new().nest_service("/mcp", fixtures::service(name))).await
}

async fn gateway(backends: &[&Served]) -> Served {
    gateway_with(backends, HttpClient::Auto).await
}

/// The gateway with the HTTP client `client` towards its backends.
async fn gateway_with(backends: &[&Served], client: HttpClient) -> Served {
    let mut b =
        McpGateway::builder().http_upstream_config(HttpUpstreamConfig::default().client(client));
    for s in backends {
        b = b.upstream_url(&format!("http://{}/mcp", s.addr)).unwrap();
    }
    serve(b.build().unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_era_client_and_server_work_through_the_gateway() {
    let b = backend("backend-a").await;
    let gw = gateway(&[&b]).await;
    session_era_round_trip(&url(&gw)).await;
}

/// The same through hyper's client towards the backend (the one `https://`
/// and HTTP/2 backends use) instead of the built-in HTTP/1.1 pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_era_works_through_the_hyper_upstream_client() {
    let b = backend("backend-a").await;
    let gw = gateway_with(&[&b], HttpClient::Hyper).await;
    session_era_round_trip(&url(&gw)).await;
}

/// Tools, server → client requests, the GET stream and progress under
/// load, through the gateway at `url`.
async fn session_era_round_trip(url: &str) {
    let (client, handler) = connect_session(url).await;

    let tools = client.list_all_tools().await.unwrap();
    assert!(tools.iter().any(|t| t.name == "echo"));
    assert_eq!(
        text_of(&call(&client, "echo", json!({"text": "héllo"})).await),
        "héllo"
    );

    // Server → client requests and their answers round-trip through the gateway.
    let r = call(&client, "test_sampling", json!({"prompt": "2+2?"})).await;
    assert_eq!(text_of(&r), "LLM response: echo:2+2?");
    let r = call(&client, "test_elicitation", json!({"message": "ok?"})).await;
    assert_eq!(
        text_of(&r),
        r#"User response: action=accept, content={"name":"yes please","response":"yes please"}"#
    );

    // The standalone GET stream delivers server-initiated notifications.
    assert_eq!(
        text_of(&call(&client, "notify_later", json!({})).await),
        "scheduled"
    );
    handler
        .wait_until("tools/list_changed on the GET stream", |h| {
            h.tool_list_changed.load(Ordering::SeqCst) >= 1
        })
        .await;

    progress_under_concurrency(&client, &handler).await;
    client.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stateless_2026_client_works_through_the_gateway() {
    let b = backend("backend-a").await;
    let gw = gateway(&[&b]).await;
    let (client, handler) = connect_stateless(&url(&gw)).await;
    assert_eq!(
        client.peer_info().map(|i| i.protocol_version.clone()),
        Some(ProtocolVersion::V_2026_07_28)
    );
    let tools = client.list_all_tools().await.unwrap();
    assert!(tools.iter().any(|t| t.name == "progress_burst"));
    assert_eq!(
        text_of(&call(&client, "echo", json!({"text": "stateless"})).await),
        "stateless"
    );
    progress_under_concurrency(&client, &handler).await;
    client.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_stick_to_their_instance_and_stay_separate() {
    let a = backend("instance-a").await;
    let b = backend("instance-b").await;
    let gw = gateway(&[&a, &b]).await;
    let (c1, _) = connect_session(&url(&gw)).await;
    let (c2, _) = connect_session(&url(&gw)).await;
    let n1 = text_of(&call(&c1, "whoami", json!({})).await);
    let n2 = text_of(&call(&c2, "whoami", json!({})).await);
    let mut names = [n1.clone(), n2.clone()];
    names.sort();
    assert_eq!(
        names,
        ["instance-a", "instance-b"],
        "round robin spreads new sessions"
    );
    for _ in 0..5 {
        assert_eq!(text_of(&call(&c1, "whoami", json!({})).await), n1);
        assert_eq!(text_of(&call(&c2, "whoami", json!({})).await), n2);
    }
    c1.cancel().await.unwrap();
    c2.cancel().await.unwrap();
}

// ---- wire-level checks with a raw HTTP client ----------------------------------

const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#;

async fn raw_session(gw: &str) -> String {
    net::open_session(gw, INIT).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_precedes_the_result_on_the_wire() {
    let b = backend("a").await;
    let gw = gateway(&[&b]).await;
    let u = url(&gw);
    let sid = raw_session(&u).await;
    let r = raw("POST", &u, &[JSON, ACCEPT, V, ("mcp-session-id", &sid)],
        r#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"progress_burst","arguments":{"count":30},"_meta":{"progressToken":"w"}}}"#).await;
    assert_eq!(r.headers["content-type"], "text/event-stream");
    let mut scanner = mcp_gateway_core::sse::SseScanner::collecting(1 << 20);
    let mut kinds = Vec::new();
    scanner.feed(&r.body, |e| {
        if let Ok(v) = serde_json::from_slice::<Value>(e.data) {
            kinds.push(if v.get("result").is_some() {
                "result".to_owned()
            } else {
                v["method"].as_str().unwrap_or("").to_owned()
            });
        }
    });
    let result_at = kinds
        .iter()
        .position(|k| k == "result")
        .expect("a result event");
    assert_eq!(result_at, kinds.len() - 1, "the result is the last event");
    assert_eq!(
        kinds[..result_at]
            .iter()
            .filter(|k| *k == "notifications/progress")
            .count(),
        30
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_ends_the_session_then_404() {
    let b = backend("a").await;
    let gw = gateway(&[&b]).await;
    let u = url(&gw);
    let sid = raw_session(&u).await;
    assert!(!sid.is_empty() && sid.len() >= 22);
    let list = r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#;
    let ok = raw(
        "POST",
        &u,
        &[JSON, ACCEPT, V, ("mcp-session-id", &sid)],
        list,
    )
    .await;
    assert_eq!(ok.status, 200);
    let del = raw("DELETE", &u, &[V, ("mcp-session-id", &sid)], "").await;
    assert!(del.status < 300, "DELETE answered {}", del.status);
    let gone = raw(
        "POST",
        &u,
        &[JSON, ACCEPT, V, ("mcp-session-id", &sid)],
        list,
    )
    .await;
    assert_eq!((gone.status, gone.error_code()), (404, Some(-32001)));
    assert_eq!(gone.json()["id"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_session_inputs_get_clear_errors() {
    let b = backend("a").await;
    let gw = gateway(&[&b]).await;
    let u = url(&gw);
    let list = r#"{"jsonrpc":"2.0","id":5,"method":"tools/list"}"#;
    let missing = raw("POST", &u, &[JSON, ACCEPT, V], list).await;
    assert_eq!((missing.status, missing.error_code()), (400, Some(-32000)));
    let unknown = raw(
        "POST",
        &u,
        &[JSON, ACCEPT, V, ("mcp-session-id", "not-a-session")],
        list,
    )
    .await;
    assert_eq!((unknown.status, unknown.error_code()), (404, Some(-32001)));
    let get_unknown = raw(
        "GET",
        &u,
        &[
            ("accept", "text/event-stream"),
            V,
            ("mcp-session-id", "nope"),
        ],
        "",
    )
    .await;
    assert_eq!(get_unknown.status, 404);
    // 2026-07-28: a header that disagrees with the body never reaches the backend.
    let call = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"text":"x"},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientInfo":{"name":"raw","version":"1"},"io.modelcontextprotocol/clientCapabilities":{}}}}"#;
    let mismatch = raw(
        "POST",
        &u,
        &[
            JSON,
            ACCEPT,
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "test_error_handling"),
        ],
        call,
    )
    .await;
    assert_eq!(
        (mismatch.status, mismatch.error_code()),
        (400, Some(-32020))
    );
    assert_eq!(mismatch.json()["id"], 7);
    let good = raw(
        "POST",
        &u,
        &[
            JSON,
            ACCEPT,
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "echo"),
        ],
        call,
    )
    .await;
    assert_eq!(good.status, 200, "{}", String::from_utf8_lossy(&good.body));
    // DNS rebinding.
    let evil = raw(
        "POST",
        &u,
        &[JSON, ACCEPT, ("host", "evil.example.com")],
        INIT,
    )
    .await;
    assert_eq!((evil.status, evil.error_code()), (403, Some(-32000)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_backend_is_a_502_not_a_hang() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let gw = serve(
        McpGateway::builder()
            .upstream_url(&format!("http://{dead}/mcp"))
            .unwrap()
            .build()
            .unwrap(),
    )
    .await;
    let r = raw("POST", &url(&gw), &[JSON, ACCEPT], INIT).await;
    assert_eq!((r.status, r.error_code()), (502, Some(-32050)));
    assert_eq!(r.json()["id"], 1);
}
