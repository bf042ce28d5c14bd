//! Limits and the audit log, end to end: every limit is reached (and the
//! documented error seen) and recovers; every audit outcome is recorded
//! with its fields; a JSON Lines file written under load has one line per
//! call; rmcp clients of both eras work through the full stack.
// Sampling is deprecated in the 2026-07-28 revision but is part of 2025-11-25.
#![allow(deprecated)]

#[path = "../examples/support/fixtures.rs"]
mod fixtures;
#[path = "support/net.rs"]
mod net;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::response::IntoResponse;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mcp_gateway_axum::McpGateway;
use mcp_gateway_core::session::InMemoryConfig;
use mcp_gateway_core::Principal;
use mcp_gateway_tower::audit::{
    ArgumentsPolicy, AuditConfig, AuditEvent, AuditSink, ChannelSink, JsonlConfig, JsonlSink,
    Overflow,
};
use mcp_gateway_tower::auth::{ApiKeys, AuthConfig};
use mcp_gateway_tower::limit::{Budget, LimitConfig, Quota};
use mcp_gateway_tower::rules::{PolicyConfig, RulePolicy};
use serde_json::{json, Value};

use net::{serve, url, Reply, Served};
use tokio::sync::mpsc::Receiver;

/// A stub backend: `hold` streams a progress notification and then waits
/// for `release` before its result; other tools answer at once; `forget`
/// makes it answer 404 to every session request (a backend that lost its
/// sessions); it counts the `tools/call` it receives.
#[derive(Clone, Default)]
struct Stub {
    release: Arc<tokio::sync::Notify>,
    forget: Arc<AtomicBool>,
    calls: Arc<AtomicUsize>,
    sessions: Arc<AtomicUsize>,
}

async fn stub_backend(stub: Stub) -> Served {
    let handler = move |method: http::Method, headers: http::HeaderMap, body: Bytes| {
        let stub = stub.clone();
        async move {
            if headers.contains_key("mcp-session-id") && stub.forget.load(Ordering::SeqCst) {
                return http::StatusCode::NOT_FOUND.into_response();
            }
            if method == http::Method::DELETE {
                return http::StatusCode::OK.into_response();
            }
            let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let id = req["id"].clone();
            let json = |v: Value| {
                let mut r = ([("content-type", "application/json")], v.to_string()).into_response();
                let n = stub.sessions.fetch_add(1, Ordering::SeqCst);
                r.headers_mut()
                    .insert("mcp-session-id", format!("stub-{n}").parse().unwrap());
                r
            };
            match req["method"].as_str() {
                Some("initialize") => json(json!({"jsonrpc": "2.0", "id": id, "result": {
                    "protocolVersion": "2025-11-25", "capabilities": {"tools": {}},
                    "serverInfo": {"name": "stub", "version": "1"}}})),
                Some("tools/call") => {
                    stub.calls.fetch_add(1, Ordering::SeqCst);
                    if req["params"]["name"] == "hold" {
                        let release = stub.release.clone();
                        let stream = async_stream(id, release);
                        return (
                            [("content-type", "text/event-stream")],
                            axum::body::Body::from_stream(stream),
                        )
                            .into_response();
                    }
                    json(json!({"jsonrpc": "2.0", "id": id, "result": {
                        "content": [{"type": "text", "text": format!("done {}", req["params"]["arguments"])}]}}))
                }
                _ => http::StatusCode::ACCEPTED.into_response(),
            }
        }
    };
    serve(axum::Router::new().route("/mcp", axum::routing::any(handler))).await
}

/// Priming event, one progress notification, then (after `release`) the result.
fn async_stream(
    id: Value,
    release: Arc<tokio::sync::Notify>,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
    let first = format!(
        "id: 1\ndata: \n\nevent: message\ndata: {}\n\n",
        json!({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": 1, "progress": 1}})
    );
    let last = format!(
        "event: message\ndata: {}\n\n",
        json!({"jsonrpc": "2.0", "id": id, "result": {"content": [{"type": "text", "text": "held"}]}})
    );
    futures::stream::unfold(0u8, move |state| {
        let (first, last, release) = (first.clone(), last.clone(), release.clone());
        async move {
            match state {
                0 => Some((Ok(Bytes::from(first)), 1)),
                1 => {
                    release.notified().await;
                    Some((Ok(Bytes::from(last)), 2))
                }
                _ => None,
            }
        }
    })
}

fn keys() -> ApiKeys {
    ApiKeys::new()
        .with_key(
            "k-ann",
            Principal::builder("ann")
                .tenant("acme")
                .roles(["agent"])
                .build(),
        )
        .with_key("k-bob", Principal::builder("bob").roles(["agent"]).build())
}

fn policy() -> Arc<RulePolicy> {
    let cfg: PolicyConfig = serde_json::from_value(json!({
        "rules": [{"effect": "allow", "roles": ["agent"], "tools": ["*"]},
                  {"effect": "deny", "tools": ["forbidden"]}]
    }))
    .unwrap();
    Arc::new(RulePolicy::new(&cfg))
}

/// The full stack in front of `upstream`, with `limits` and a channel sink.
async fn gateway(upstream: &str, limits: LimitConfig) -> (Served, Receiver<AuditEvent>) {
    let (sink, rx) = ChannelSink::new(10_000, Overflow::Drop);
    let app = McpGateway::builder()
        .upstream_url(upstream)
        .unwrap()
        .backend_name("stub")
        .session_config(InMemoryConfig {
            idle_timeout: Duration::from_millis(300),
            ..Default::default()
        })
        .sweep_interval(Duration::from_millis(50))
        .authenticator(Arc::new(keys()), AuthConfig::default())
        .policy(policy())
        .limits(limits)
        .audit(
            Arc::new(sink),
            AuditConfig {
                arguments: ArgumentsPolicy::Redact(vec!["secret".into()]),
            },
        )
        .build()
        .unwrap();
    (serve(app).await, rx)
}

fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn open(u: &str, key: &str, sid: Option<&str>, body: &str) -> http::Response<Incoming> {
    let mut req = http::Request::post(u)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-11-25")
        .header("x-api-key", key);
    if let Some(s) = sid {
        req = req.header("mcp-session-id", s);
    }
    client()
        .request(
            req.body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
                .unwrap(),
        )
        .await
        .unwrap()
}

async fn post(u: &str, key: &str, sid: Option<&str>, body: &str) -> Reply {
    Reply::read(open(u, key, sid, body).await).await
}

/// Ends a session with `DELETE`; it must succeed.
async fn delete(u: &str, key: &str, sid: &str) {
    let r = net::raw(
        "DELETE",
        u,
        &[
            ("mcp-session-id", sid),
            ("mcp-protocol-version", "2025-11-25"),
            ("x-api-key", key),
        ],
        "",
    )
    .await;
    assert!((200..300).contains(&r.status), "DELETE: {}", r.status);
}

const INIT: &str = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;

fn call(id: u32, tool: &str, args: Value) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": tool, "arguments": args}}).to_string()
}

/// Whether the call `id` to `tool` got a result (not an error).
async fn answered(u: &str, key: &str, sid: Option<&str>, id: u32, tool: &str, args: Value) -> bool {
    post(u, key, sid, &call(id, tool, args)).await.answer()["result"].is_object()
}

async fn session(u: &str, key: &str) -> String {
    let r = post(u, key, None, INIT).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.headers["mcp-session-id"].to_str().unwrap().to_owned()
}

fn limited(r: &Reply, limit: &str) -> u64 {
    let v = r.answer();
    assert_eq!(v["error"]["code"], -32055, "{v}");
    assert_eq!(v["error"]["data"]["limit"], limit, "{v}");
    let ms = v["error"]["data"]["retryAfterMs"].as_u64().unwrap();
    assert!(ms > 0);
    ms
}

/// Waits (bounded) until `f` holds.
async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_refuse_with_retry_after_and_recover() {
    let stub = Stub::default();
    let b = stub_backend(stub.clone()).await;
    let (gw, _rx) = gateway(
        &url(&b),
        LimitConfig {
            principal_rate: Some(Quota {
                burst: 3,
                per_second: 20.0,
            }),
            principal_tool_rate: Some(Quota {
                burst: 2,
                per_second: 20.0,
            }),
            default_cost: 0,
            ..Default::default()
        },
    )
    .await;
    let u = url(&gw);
    let sid = session(&u, "k-ann").await;
    let s = Some(sid.as_str());
    // Per tool: two of `a`, the third is refused; `b` still has room.
    assert!(answered(&u, "k-ann", s, 1, "a", json!({})).await);
    assert!(answered(&u, "k-ann", s, 2, "a", json!({})).await);
    let r = post(&u, "k-ann", s, &call(3, "a", json!({}))).await;
    assert_eq!(r.status, 200);
    limited(&r, "principal_tool_rate");
    assert!(answered(&u, "k-ann", s, 4, "b", json!({})).await);
    // Per principal: the burst of 3 is spent (the refused call did not reach the backend).
    let calls_before = stub.calls.load(Ordering::SeqCst);
    let r = post(&u, "k-ann", s, &call(5, "c", json!({}))).await;
    let wait = limited(&r, "principal_rate");
    assert_eq!(
        stub.calls.load(Ordering::SeqCst),
        calls_before,
        "refused before the backend"
    );
    // Lists and pings are not counted.
    for i in 0..10 {
        let r = post(
            &u,
            "k-ann",
            s,
            &format!(r#"{{"jsonrpc":"2.0","id":{},"method":"ping"}}"#, 100 + i),
        )
        .await;
        assert!(r.status < 300, "ping {i}: {}", r.status);
    }
    // Another principal has its own bucket.
    let sid_bob = session(&u, "k-bob").await;
    assert!(answered(&u, "k-bob", Some(&sid_bob), 6, "a", json!({})).await);
    // After the advertised wait, calls go through again.
    tokio::time::sleep(Duration::from_millis(wait)).await;
    assert!(answered(&u, "k-ann", s, 7, "c", json!({})).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_rate_counts_every_caller() {
    let b = stub_backend(Stub::default()).await;
    let (gw, _rx) = gateway(
        &url(&b),
        LimitConfig {
            backend_rate: Some(Quota {
                burst: 2,
                per_second: 20.0,
            }),
            ..Default::default()
        },
    )
    .await;
    let u = url(&gw);
    let (sa, sb) = (session(&u, "k-ann").await, session(&u, "k-bob").await);
    assert!(answered(&u, "k-ann", Some(&sa), 1, "x", json!({})).await);
    assert!(answered(&u, "k-bob", Some(&sb), 2, "x", json!({})).await);
    let r = post(&u, "k-bob", Some(&sb), &call(3, "x", json!({}))).await;
    let wait = limited(&r, "backend_rate");
    tokio::time::sleep(Duration::from_millis(wait)).await;
    assert!(answered(&u, "k-ann", Some(&sa), 4, "x", json!({})).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_caps_are_429_and_every_ending_releases_the_slot() {
    let stub = Stub::default();
    let b = stub_backend(stub.clone()).await;
    let (gw, _rx) = gateway(
        &url(&b),
        LimitConfig {
            principal_sessions: Some(1),
            session_retry_after_secs: 3,
            ..Default::default()
        },
    )
    .await;
    let u = url(&gw);
    let first = session(&u, "k-ann").await;
    let r = post(&u, "k-ann", None, INIT).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.headers["retry-after"], "3");
    assert_eq!(limited(&r, "principal_sessions"), 3000);
    // Another principal is not affected.
    session(&u, "k-bob").await;

    // 1. DELETE releases.
    delete(&u, "k-ann", &first).await;
    let second = session(&u, "k-ann").await;

    // 2. The backend losing the session releases.
    stub.forget.store(true, Ordering::SeqCst);
    let r = post(&u, "k-ann", Some(&second), &call(1, "x", json!({}))).await;
    assert_eq!(r.status, 404);
    stub.forget.store(false, Ordering::SeqCst);
    let third = session(&u, "k-ann").await;
    let _ = third;

    // 3. Expiry releases (idle timeout 300 ms, swept every 50 ms).
    eventually("the idle session to expire and free its slot", || async {
        post(&u, "k-ann", None, INIT).await.status == 200
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_permits_live_in_the_stream() {
    let stub = Stub::default();
    let b = stub_backend(stub.clone()).await;
    let (gw, _rx) = gateway(
        &url(&b),
        LimitConfig {
            principal_in_flight: Some(1),
            ..Default::default()
        },
    )
    .await;
    let u = url(&gw);
    let sid = session(&u, "k-ann").await;
    let s = Some(sid.as_str());

    // A streaming call holds the permit while its stream is open…
    let held = open(&u, "k-ann", s, &call(1, "hold", json!({}))).await;
    let mut body = held.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.data_ref().is_some());
    let r = post(&u, "k-ann", s, &call(2, "x", json!({}))).await;
    limited(&r, "principal_in_flight");
    // …and releases it when the stream ends.
    stub.release.notify_one();
    let rest = body.collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&rest).contains("held"));
    assert!(answered(&u, "k-ann", s, 3, "x", json!({})).await);

    // A client that goes away mid-stream releases it too.
    let held = open(&u, "k-ann", s, &call(4, "hold", json!({}))).await;
    let mut body = held.into_body();
    body.frame().await.unwrap().unwrap();
    limited(
        &post(&u, "k-ann", s, &call(5, "x", json!({}))).await,
        "principal_in_flight",
    );
    drop(body);
    eventually("the dropped stream to release its permit", || {
        answered(&u, "k-ann", s, 6, "x", json!({}))
    })
    .await;
    stub.release.notify_waiters();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_and_cost_budgets_refuse_before_the_backend_and_renew_per_window() {
    let stub = Stub::default();
    let b = stub_backend(stub.clone()).await;
    let mut costs = std::collections::BTreeMap::new();
    costs.insert("pricey".to_owned(), 3);
    let (gw, _rx) = gateway(
        &url(&b),
        LimitConfig {
            cost_budget: Some(Budget {
                amount: 7,
                window_secs: 1,
            }),
            tool_costs: costs,
            default_cost: 0,
            token_budget: Some(Budget {
                amount: 200,
                window_secs: 1,
            }),
            ..Default::default()
        },
    )
    .await;
    let u = url(&gw);
    let sid = session(&u, "k-ann").await;
    let s = Some(sid.as_str());
    // Cost: 3 + 3 fits in 7, a third does not; refused before the backend.
    assert!(answered(&u, "k-ann", s, 1, "pricey", json!({})).await);
    assert!(answered(&u, "k-ann", s, 2, "pricey", json!({})).await);
    let before = stub.calls.load(Ordering::SeqCst);
    let wait = limited(
        &post(&u, "k-ann", s, &call(3, "pricey", json!({}))).await,
        "cost_budget",
    );
    assert_eq!(stub.calls.load(Ordering::SeqCst), before);
    assert!(wait <= 1000);
    tokio::time::sleep(Duration::from_millis(wait)).await;
    // (Sessions idle out after 300 ms in these tests: start a fresh one.)
    let sid = session(&u, "k-ann").await;
    let s = Some(sid.as_str());
    let r = post(&u, "k-ann", s, &call(4, "pricey", json!({}))).await;
    assert!(r.answer()["result"].is_object(), "{}", r.answer());

    // Tokens: arguments of ~400 bytes are ~100 tokens, and the stub echoes
    // them back in its result, which is charged as it streams through.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let sid = session(&u, "k-ann").await;
    let s = Some(sid.as_str());
    let big = json!({"text": "x".repeat(400)});
    assert!(answered(&u, "k-ann", s, 5, "free", big.clone()).await);
    let wait = limited(
        &post(&u, "k-ann", s, &call(6, "free", big.clone())).await,
        "token_budget",
    );
    tokio::time::sleep(Duration::from_millis(wait)).await;
    let sid = session(&u, "k-ann").await;
    let r = post(&u, "k-ann", Some(&sid), &call(7, "free", big)).await;
    assert!(r.answer()["result"].is_object(), "{}", r.answer());
}

async fn next_call(rx: &mut Receiver<AuditEvent>) -> AuditEvent {
    loop {
        let e = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("an audit event")
            .expect("the sink is open");
        if e.event == "call" {
            return e;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_outcome_is_recorded_with_its_fields() {
    let stub = Stub::default();
    let b = stub_backend(stub.clone()).await;
    let (gw, mut rx) = gateway(
        &url(&b),
        LimitConfig {
            principal_tool_rate: Some(Quota {
                burst: 2,
                per_second: 0.01,
            }),
            tool_costs: [("costly".to_owned(), 4)].into_iter().collect(),
            cost_budget: Some(Budget {
                amount: 100,
                window_secs: 60,
            }),
            ..Default::default()
        },
    )
    .await;
    let u = url(&gw);
    let sid = session(&u, "k-ann").await;
    let start = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(start.event, "session_start");
    assert_eq!(start.principal.as_deref(), Some("ann"));
    assert_eq!(start.tenant.as_deref(), Some("acme"));
    assert_eq!(start.backend.as_deref(), Some("stub"));
    assert_eq!(start.protocol_version.as_deref(), Some("2025-11-25"));
    assert_eq!(start.session.as_deref(), Some(sid.as_str()));
    let init = next_call(&mut rx).await;
    assert_eq!(
        (init.method.as_deref(), init.outcome.as_ref()),
        (Some("initialize"), "ok")
    );
    let s = Some(sid.as_str());

    // ok, with arguments redacted and the cost charged.
    post(
        &u,
        "k-ann",
        s,
        &call(11, "costly", json!({"city": "Paris", "secret": "pw"})),
    )
    .await;
    let e = next_call(&mut rx).await;
    assert_eq!(e.outcome, "ok");
    assert_eq!(e.method.as_deref(), Some("tools/call"));
    assert_eq!(e.target.as_deref(), Some("costly"));
    assert_eq!(e.id.as_deref(), Some("11"));
    assert_eq!(e.session.as_deref(), Some(sid.as_str()));
    assert_eq!(e.principal.as_deref(), Some("ann"));
    assert_eq!(e.backend.as_deref(), Some("stub"));
    assert_eq!(e.cost, 4);
    assert_eq!(e.http_status, Some(200));
    assert!(e.bytes_in > 50 && e.bytes_out > 20, "{e:?}");
    assert!(e.duration_us.unwrap() >= e.ttfb_us.unwrap());
    assert_eq!(
        e.arguments.as_deref(),
        Some(r#"{"city":"Paris","secret":"[redacted]"}"#)
    );

    // limited (the tool's burst of 2 is spent)
    post(&u, "k-ann", s, &call(111, "costly", json!({}))).await;
    assert_eq!(next_call(&mut rx).await.outcome, "ok");
    post(&u, "k-ann", s, &call(12, "costly", json!({}))).await;
    let e = next_call(&mut rx).await;
    assert_eq!(
        (e.outcome.as_ref(), e.limit.as_deref(), e.error_code),
        ("limited", Some("principal_tool_rate"), Some(-32055))
    );

    // denied
    post(&u, "k-ann", s, &call(13, "forbidden", json!({}))).await;
    let e = next_call(&mut rx).await;
    assert_eq!(
        (e.outcome.as_ref(), e.error_code, e.target.as_deref()),
        ("denied", Some(-32053), Some("forbidden"))
    );

    // rejected: no credential
    let r = post(&u, "", None, INIT).await;
    assert_eq!(r.status, 401);
    let e = next_call(&mut rx).await;
    assert_eq!(
        (e.outcome.as_ref(), e.http_status, e.principal.as_deref()),
        ("rejected", Some(401), None)
    );

    // client gone: the stream is dropped before its end.
    let held = open(&u, "k-ann", s, &call(14, "hold", json!({}))).await;
    let mut body = held.into_body();
    body.frame().await.unwrap().unwrap();
    assert!(rx.try_recv().is_err(), "no record while the stream is open");
    drop(body);
    let e = next_call(&mut rx).await;
    assert_eq!(
        (e.outcome.as_ref(), e.target.as_deref()),
        ("client_gone", Some("hold"))
    );
    assert_eq!(e.progress, 1);
    stub.release.notify_waiters();

    // A streamed call's record comes after its last event, with its real duration.
    let t0 = Instant::now();
    let held = open(&u, "k-ann", s, &call(16, "hold", json!({}))).await;
    let mut body = held.into_body();
    body.frame().await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await; // the stream stays open a while
    if let Ok(e) = rx.try_recv() {
        panic!("no record before the last event, got {e:?}");
    }
    stub.release.notify_one();
    let rest = body.collect().await.unwrap().to_bytes();
    let streamed = t0.elapsed();
    assert!(String::from_utf8_lossy(&rest).contains("held"));
    let e = next_call(&mut rx).await;
    assert_eq!(
        (e.outcome.as_ref(), e.id.as_deref(), e.progress),
        ("ok", Some("16"), 1)
    );
    assert!(e.duration_us.unwrap() >= 50_000, "{e:?}");
    assert!(Duration::from_micros(e.duration_us.unwrap()) <= streamed);

    // error: a JSON-RPC error from the backend (rmcp fixtures: unknown tool).
    let fx = serve(axum::Router::new().nest_service("/mcp", fixtures::service("fx"))).await;
    let (gw2, mut rx2) = gateway(&url(&fx), LimitConfig::default()).await;
    let u2 = url(&gw2);
    let sid2 = session(&u2, "k-bob").await;
    post(
        &u2,
        "k-bob",
        Some(&sid2),
        &call(21, "no_such_tool", json!({})),
    )
    .await;
    let e = next_call(&mut rx2).await; // initialize
    assert_eq!(e.method.as_deref(), Some("initialize"));
    let e = next_call(&mut rx2).await;
    assert_eq!((e.outcome.as_ref(), e.error_code), ("error", Some(-32602)));

    // upstream failure: the backend is gone.
    drop(b);
    eventually("the dead backend to be reported", || async {
        post(&u, "k-ann", s, &call(17, "x", json!({}))).await.status == 502
    })
    .await;
    let e = loop {
        let e = next_call(&mut rx).await;
        if e.outcome != "ok" && e.id.as_deref() == Some("17") {
            break e;
        }
    };
    assert_eq!(
        (e.outcome.as_ref(), e.error_code, e.http_status),
        ("upstream_failure", Some(-32050), Some(502))
    );
}

/// The next `session_end` record (other records before it are skipped).
async fn next_session_end(rx: &mut Receiver<AuditEvent>) -> AuditEvent {
    loop {
        let e = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        if e.event == "session_end" {
            return e;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_end_records_the_totals() {
    let b = stub_backend(Stub::default()).await;
    let (gw, mut rx) = gateway(
        &url(&b),
        LimitConfig {
            default_cost: 2,
            cost_budget: Some(Budget {
                amount: 100,
                window_secs: 60,
            }),
            ..Default::default()
        },
    )
    .await;
    let u = url(&gw);
    let sid = session(&u, "k-ann").await;
    for i in 0..3 {
        post(&u, "k-ann", Some(&sid), &call(i, "x", json!({}))).await;
    }
    post(&u, "k-ann", Some(&sid), &call(9, "forbidden", json!({}))).await;
    delete(&u, "k-ann", &sid).await;
    let end = next_session_end(&mut rx).await;
    assert_eq!(end.session.as_deref(), Some(sid.as_str()));
    assert_eq!(end.principal.as_deref(), Some("ann"));
    assert_eq!(end.end_reason.map(|r| r.as_str()), Some("deleted"));
    // initialize + 3 calls + 1 denied (the DELETE itself is recorded after the end).
    assert_eq!(end.calls, Some(5));
    assert_eq!(end.errors, Some(1));
    assert_eq!(end.cost, 6);
    assert!(end.bytes_out > 0 && end.duration_us.is_some());
}

/// Starts a session, opens a call whose stream stays open until the stub is
/// released (its first frame read), then ends the session on another
/// connection. Returns the session id and the open stream.
async fn held_call_then_delete(u: &str, id: u32) -> (String, Incoming) {
    let sid = session(u, "k-ann").await;
    let held = open(u, "k-ann", Some(&sid), &call(id, "hold", json!({}))).await;
    let mut body = held.into_body();
    body.frame().await.unwrap().unwrap();
    delete(u, "k-ann", &sid).await;
    (sid, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_end_waits_for_the_calls_still_under_way() {
    let stub = Stub::default();
    let b = stub_backend(stub.clone()).await;
    let (gw, mut rx) = gateway(&url(&b), LimitConfig::default()).await;
    let u = url(&gw);
    let (sid, mut body) = held_call_then_delete(&u, 41).await;
    // The end is signalled before the DELETE is answered.
    while let Ok(e) = rx.try_recv() {
        assert_ne!(e.event, "session_end", "ended before its call: {e:?}");
    }
    // The call finishes: its record, then the session's end counting it.
    stub.release.notify_one();
    while body.frame().await.is_some() {}
    let call_record = loop {
        let e = next_call(&mut rx).await;
        if e.id.as_deref() == Some("41") {
            break e;
        }
    };
    assert_eq!(call_record.outcome, "ok");
    let end = next_session_end(&mut rx).await;
    assert_eq!(end.session.as_deref(), Some(sid.as_str()));
    assert_eq!(end.end_reason.map(|r| r.as_str()), Some("deleted"));
    // initialize + the held call.
    assert_eq!(end.calls, Some(2));
    assert!(end.bytes_out >= call_record.bytes_out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_abandoned_after_its_session_ended_still_lets_the_end_be_recorded() {
    let b = stub_backend(Stub::default()).await;
    let (gw, mut rx) = gateway(&url(&b), LimitConfig::default()).await;
    let u = url(&gw);
    let (sid, body) = held_call_then_delete(&u, 42).await;
    // The client leaves; the stream is never released by the backend.
    drop(body);
    let end = next_session_end(&mut rx).await;
    assert_eq!(end.session.as_deref(), Some(sid.as_str()));
    assert_eq!(end.calls, Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_gets_a_record_per_message_each_with_the_session() {
    let b = stub_backend(Stub::default()).await;
    let (gw, mut rx) = gateway(&url(&b), LimitConfig::default()).await;
    let u = url(&gw);
    let sid = session(&u, "k-ann").await;
    // Batches are allowed up to 2025-03-26.
    let batch = format!(
        "[{},{}]",
        call(31, "x", json!({})),
        call(32, "y", json!({}))
    );
    let r = net::raw(
        "POST",
        &u,
        &[
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
            ("mcp-session-id", &sid),
            ("mcp-protocol-version", "2025-03-26"),
            ("x-api-key", "k-ann"),
        ],
        &batch,
    )
    .await;
    assert!(r.status < 300, "batch: {}", r.status);
    let e = next_call(&mut rx).await;
    assert_eq!(e.method.as_deref(), Some("initialize"));
    for (id, tool) in [("31", "x"), ("32", "y")] {
        let e = next_call(&mut rx).await;
        assert_eq!(
            (e.id.as_deref(), e.target.as_deref(), e.session.as_deref()),
            (Some(id), Some(tool), Some(sid.as_str())),
            "{e:?}"
        );
    }
    delete(&u, "k-ann", &sid).await;
    let end = next_session_end(&mut rx).await;
    // initialize + the batch's two calls.
    assert_eq!(end.calls, Some(3));
    assert_eq!(end.session.as_deref(), Some(sid.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jsonl_file_written_under_load_has_one_line_per_call() {
    let b = stub_backend(Stub::default()).await;
    let dir = std::env::temp_dir().join(format!("mcpgw-jsonl-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("audit.jsonl");
    let sink = Arc::new(
        JsonlSink::open(JsonlConfig {
            path: path.clone(),
            max_bytes: 256 << 10,
            keep: 50,
            buffer: 100_000,
            overflow: Overflow::Drop,
        })
        .unwrap(),
    );
    let app = McpGateway::builder()
        .upstream_url(&url(&b))
        .unwrap()
        .authenticator(Arc::new(keys()), AuthConfig::default())
        .limits(LimitConfig::default())
        .audit(sink.clone(), AuditConfig::default())
        .build()
        .unwrap();
    let gw = serve(app).await;
    let u = url(&gw);
    let (tasks, per) = (20u32, 50u32);
    let mut handles = Vec::new();
    for t in 0..tasks {
        let u = u.clone();
        handles.push(tokio::spawn(async move {
            let sid = session(&u, "k-ann").await;
            for i in 0..per {
                let r = post(
                    &u,
                    "k-ann",
                    Some(&sid),
                    &call(t * 1000 + i, "x", json!({"n": i})),
                )
                .await;
                assert!(r.answer()["result"].is_object());
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    sink.flush();
    assert_eq!(sink.dropped(), 0);
    let mut ids = Vec::new();
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        files += 1;
        for line in std::fs::read_to_string(entry.unwrap().path())
            .unwrap()
            .lines()
        {
            let e: AuditEvent = serde_json::from_str(line).expect("every line parses");
            if e.method.as_deref() == Some("tools/call") {
                assert_eq!(e.outcome, "ok");
                ids.push(e.id.unwrap().parse::<u32>().unwrap());
            }
        }
    }
    ids.sort_unstable();
    let mut want: Vec<u32> = (0..tasks)
        .flat_map(|t| (0..per).map(move |i| t * 1000 + i))
        .collect();
    want.sort_unstable();
    assert_eq!(ids, want, "exactly one line per call");
    assert!(files > 1, "the file rotated under load");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuse_overflow_answers_503_instead_of_losing_records() {
    let b = stub_backend(Stub::default()).await;
    // A channel of one record that nobody reads.
    let (sink, _rx) = ChannelSink::new(1, Overflow::Refuse);
    let sink = Arc::new(sink);
    let app = McpGateway::builder()
        .upstream_url(&url(&b))
        .unwrap()
        .authenticator(Arc::new(keys()), AuthConfig::default())
        .audit(sink.clone(), AuditConfig::default())
        .build()
        .unwrap();
    let gw = serve(app).await;
    let u = url(&gw);
    assert_eq!(post(&u, "k-ann", None, INIT).await.status, 200);
    // The session_start and initialize records fill the channel.
    let r = post(&u, "k-ann", None, INIT).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.answer()["error"]["code"], -32056);
    assert!(sink.saturated());
}

async fn rmcp_through_full_stack(stateless: bool) {
    use rmcp::model::*;
    use rmcp::service::{ClientLifecycleMode, ClientServiceExt};
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    use rmcp::transport::StreamableHttpClientTransport;
    use rmcp::ServiceExt;
    let fx = serve(axum::Router::new().nest_service("/mcp", fixtures::service("fx"))).await;
    let (gw, mut rx) = gateway(
        &url(&fx),
        LimitConfig {
            principal_tool_rate: Some(Quota {
                burst: 2,
                per_second: 0.01,
            }),
            ..Default::default()
        },
    )
    .await;
    let mut headers = std::collections::HashMap::new();
    headers.insert(
        http::HeaderName::from_static("x-api-key"),
        http::HeaderValue::from_static("k-ann"),
    );
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(url(&gw)).custom_headers(headers),
    );
    let info = ClientInfo::default();
    let client = if stateless {
        info.serve_with_lifecycle(
            transport,
            ClientLifecycleMode::Discover {
                preferred_versions: vec![ProtocolVersion::V_2026_07_28],
            },
        )
        .await
        .unwrap()
    } else {
        info.serve(transport).await.unwrap()
    };
    let echo = |t: &str| -> CallToolRequestParams {
        serde_json::from_value(json!({"name": "echo", "arguments": {"text": t}})).unwrap()
    };
    client.call_tool(echo("one")).await.unwrap();
    client.call_tool(echo("two")).await.unwrap();
    let e = client.call_tool(echo("three")).await.unwrap_err();
    let text = format!("{e:?}");
    assert!(
        text.contains("-32055") && text.contains("principal_tool_rate"),
        "{text}"
    );
    let mut outcomes = Vec::new();
    while outcomes.len() < 3 {
        let e = next_call(&mut rx).await;
        if e.method.as_deref() == Some("tools/call") {
            assert_eq!(e.principal.as_deref(), Some("ann"));
            assert_eq!(e.target.as_deref(), Some("echo"));
            outcomes.push(e.outcome.as_str());
        }
    }
    // Records are emitted when each response body is released, which the
    // client may do in any order.
    outcomes.sort();
    assert_eq!(outcomes, ["limited", "ok", "ok"]);
    client.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rmcp_session_era_through_limits_and_audit() {
    rmcp_through_full_stack(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rmcp_stateless_2026_through_limits_and_audit() {
    rmcp_through_full_stack(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_caps_count_every_caller_and_release() {
    let stub = Stub::default();
    let b = stub_backend(stub.clone()).await;
    let (gw, _rx) = gateway(
        &url(&b),
        LimitConfig {
            backend_sessions: Some(2),
            backend_in_flight: Some(1),
            ..Default::default()
        },
    )
    .await;
    let u = url(&gw);
    let sa = session(&u, "k-ann").await;
    let sb = session(&u, "k-bob").await;
    let r = post(&u, "k-bob", None, INIT).await;
    assert_eq!(r.status, 429);
    limited(&r, "backend_sessions");
    // In flight on the backend: ann's stream blocks bob's call.
    let held = open(&u, "k-ann", Some(&sa), &call(1, "hold", json!({}))).await;
    let mut body = held.into_body();
    body.frame().await.unwrap().unwrap();
    limited(
        &post(&u, "k-bob", Some(&sb), &call(2, "x", json!({}))).await,
        "backend_in_flight",
    );
    stub.release.notify_one();
    body.collect().await.unwrap();
    assert!(answered(&u, "k-bob", Some(&sb), 3, "x", json!({})).await);
    // Ending a session frees a backend slot for anyone.
    delete(&u, "k-ann", &sa).await;
    session(&u, "k-bob").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_callers_are_limited_by_their_address() {
    let b = stub_backend(Stub::default()).await;
    let (sink, mut rx) = ChannelSink::new(100, Overflow::Drop);
    let app = McpGateway::builder()
        .upstream_url(&url(&b))
        .unwrap()
        .limits(LimitConfig {
            principal_rate: Some(Quota {
                burst: 1,
                per_second: 0.01,
            }),
            ..Default::default()
        })
        .audit(Arc::new(sink), AuditConfig::default())
        .build()
        .unwrap();
    let gw = serve(app).await;
    let u = url(&gw);
    let sid = session(&u, "").await;
    assert!(answered(&u, "", Some(&sid), 1, "x", json!({})).await);
    limited(
        &post(&u, "", Some(&sid), &call(2, "x", json!({}))).await,
        "principal_rate",
    );
    let mut outcomes = Vec::new();
    while outcomes.len() < 2 {
        let e = next_call(&mut rx).await;
        if e.method.as_deref() == Some("tools/call") {
            assert_eq!(e.principal, None);
            outcomes.push(e.outcome.as_str());
        }
    }
    outcomes.sort();
    assert_eq!(outcomes, ["limited", "ok"]);
}
