//! Replicas sharing state through a real Redis: `mcp-gateway` processes
//! behind no load balancer at all, a client that sends each request of its
//! session to the next replica in turn, replicas and Redis killed and
//! restarted. The rmcp fixture server is the backend.
//!
//! Needs `redis-server` (`scripts/redis.sh` installs it); skipped with a
//! message when it is missing and the run does not require it.

#[path = "../examples/support/fixtures.rs"]
mod fixtures;
#[path = "support/net.rs"]
mod net;
#[path = "support/process.rs"]
mod process;
#[path = "support/redis.rs"]
mod redis_server;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

use net::{serve, Reply, Served, ACCEPT, JSON, V};
use process::{GatewayProcess, Scratch};
use redis_server::RedisServer;

const INIT: &str = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"round-robin","version":"1"}}}"#;
const INITIALIZED: &str = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
const SEAL_KEYS: &str = "7:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// The rmcp fixture server, in process.
async fn backend() -> Served {
    let app = axum::Router::new().nest_service("/mcp", fixtures::service("shared-backend"));
    serve(app).await
}

/// A gateway configuration over `backend` with `[cluster]` on `redis`.
fn config(backend: &Served, cluster: &str, extra: &str) -> String {
    format!(
        "listen = \"127.0.0.1:0\"\naccess_log = false\n{extra}\n\
         [backend]\nurls = [\"http://{}/mcp\"]\n\n[cluster]\n{cluster}\n",
        backend.addr
    )
}

/// Starts a replica with the configuration in `file`.
async fn replica(file: &str, env: &[(&str, &str)]) -> GatewayProcess {
    let (file, env): (String, Vec<(String, String)>) = (
        file.to_owned(),
        env.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    );
    tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        GatewayProcess::start_with_env(&["--config", &file], &env)
    })
    .await
    .unwrap()
}

/// One request, read to the end; `Err` when the replica cannot be reached
/// (or breaks the connection).
async fn send(
    method: &str,
    url: &str,
    sid: Option<&str>,
    extra: &[(&str, &str)],
    body: &str,
) -> Result<Reply, String> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = http::Request::builder()
        .method(method)
        .uri(url)
        .header(JSON.0, JSON.1)
        .header(ACCEPT.0, ACCEPT.1)
        .header(V.0, V.1);
    if let Some(sid) = sid {
        req = req.header("mcp-session-id", sid);
    }
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
        .unwrap();
    let res = tokio::time::timeout(Duration::from_secs(20), client.request(req))
        .await
        .map_err(|_| "no answer".to_owned())?
        .map_err(|e| e.to_string())?;
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body = tokio::time::timeout(Duration::from_secs(20), res.into_body().collect())
        .await
        .map_err(|_| "body never ended".to_owned())?
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// Starts a session on `url`; its id.
async fn initialize(url: &str) -> Result<String, Reply> {
    let r = send("POST", url, None, &[], INIT).await.unwrap();
    if r.status != 200 {
        return Err(r);
    }
    let sid = r.headers["mcp-session-id"].to_str().unwrap().to_owned();
    let ack = send("POST", url, Some(&sid), &[], INITIALIZED)
        .await
        .unwrap();
    assert_eq!(ack.status, 202, "{:?}", ack.body);
    Ok(sid)
}

/// A `progress_burst` call with progress token `id`.
fn burst(id: u64, count: u64, interval_ms: u64) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {
        "name": "progress_burst", "arguments": {"count": count, "interval_ms": interval_ms},
        "_meta": {"progressToken": id}}})
    .to_string()
}

/// A client session that sends each request to the next replica in turn,
/// and to the one after when a replica cannot be reached (as a client
/// behind a load balancer retries a dropped connection).
struct RoundRobin {
    urls: Vec<String>,
    next: usize,
    sid: String,
    /// Requests that found their replica dead and went to another.
    retried: usize,
}

impl RoundRobin {
    async fn call(&mut self, body: &str) -> Reply {
        for _ in 0..self.urls.len() {
            let url = self.urls[self.next % self.urls.len()].clone();
            self.next += 1;
            match send("POST", &url, Some(&self.sid), &[], body).await {
                Ok(r) => return r,
                Err(_) => self.retried += 1,
            }
        }
        panic!("no replica answered");
    }
}

/// Checks a `progress_burst` reply: the result and every progress step.
fn check_burst(r: &Reply, id: u64, count: u64) {
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let messages = r.messages();
    let steps: Vec<u64> = messages
        .iter()
        .filter(|m| m["method"] == "notifications/progress")
        .map(|m| {
            assert_eq!(m["params"]["progressToken"], id);
            m["params"]["progress"].as_f64().unwrap() as u64
        })
        .collect();
    assert_eq!(
        steps,
        (1..=count).collect::<Vec<_>>(),
        "progress of call {id}"
    );
    let answer = r.answer();
    assert_eq!(answer["id"], id);
    assert_eq!(
        answer["result"]["content"][0]["text"],
        count.to_string(),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn any_replica_serves_any_request_and_a_dead_one_loses_only_its_own() {
    let Some(redis) = RedisServer::start("replicas") else {
        return;
    };
    let backend = backend().await;
    let dir = Scratch::new("cluster-replicas");
    let file = dir.file(
        "gw.toml",
        &config(&backend, &format!("redis_url = \"{}\"", redis.url()), ""),
    );
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(replica(&file, &[]).await);
    }
    let urls: Vec<String> = replicas.iter().map(|r| r.url.clone()).collect();
    let sid = initialize(&urls[0]).await.unwrap();
    let mut client = RoundRobin {
        urls: urls.clone(),
        next: 1,
        sid: sid.clone(),
        retried: 0,
    };
    // Every request of the session on the next replica: all succeed, with
    // every progress notification.
    for id in 1..=30 {
        let r = client.call(&burst(id, 5, 0)).await;
        check_burst(&r, id, 5);
    }
    assert_eq!(client.retried, 0);
    // Concurrent calls of the same session, spread over the replicas.
    let mut tasks = Vec::new();
    for id in 31..=60u64 {
        let (url, sid) = (urls[id as usize % 3].clone(), sid.clone());
        tasks.push(tokio::spawn(async move {
            let r = send("POST", &url, Some(&sid), &[], &burst(id, 5, 0))
                .await
                .unwrap();
            check_burst(&r, id, 5);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // One replica dies (SIGKILL) while calls run: only requests sent to it
    // fail, and the client goes on through the others.
    let (kill_tx, kill_rx) = tokio::sync::oneshot::channel::<()>();
    let mut runner = RoundRobin {
        urls: urls.clone(),
        next: 0,
        sid: sid.clone(),
        retried: 0,
    };
    let calls = tokio::spawn(async move {
        let mut kill_tx = Some(kill_tx);
        for id in 100..160 {
            if id == 120 {
                if let Some(tx) = kill_tx.take() {
                    let _ = tx.send(());
                }
            }
            let r = runner.call(&burst(id, 3, 5)).await;
            check_burst(&r, id, 3);
        }
        runner.retried
    });
    kill_rx.await.unwrap();
    let dead = replicas.remove(1);
    drop(dead);
    let retried = calls.await.unwrap();
    println!("calls that found the dead replica and went to another: {retried}");
    // Every replica restarted: the session goes on.
    for r in replicas.drain(..) {
        r.terminate();
        drop(r);
    }
    for _ in 0..3 {
        replicas.push(replica(&file, &[]).await);
    }
    let mut client = RoundRobin {
        urls: replicas.iter().map(|r| r.url.clone()).collect(),
        next: 0,
        sid: sid.clone(),
        retried: 0,
    };
    for id in 200..215 {
        let r = client.call(&burst(id, 2, 0)).await;
        check_burst(&r, id, 2);
    }
    // DELETE on one replica: refused on the others, once the notice is
    // there (one round trip).
    let del = send("DELETE", &client.urls[0], Some(&sid), &[], "")
        .await
        .unwrap();
    assert_eq!(del.status, 204);
    let started = Instant::now();
    for url in &client.urls[1..] {
        loop {
            let r = send("POST", url, Some(&sid), &[], &burst(1, 1, 0))
                .await
                .unwrap();
            if r.status == 404 {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(5), "still served");
        }
    }
    println!(
        "a DELETE on one replica was refused on the others after {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn limits_hold_across_replicas_and_a_dead_replicas_slots_come_back() {
    let Some(redis) = RedisServer::start("limits") else {
        return;
    };
    let backend = backend().await;
    let dir = Scratch::new("cluster-limits");
    let file = dir.file(
        "gw.toml",
        &config(
            &backend,
            &format!("redis_url = \"{}\"\nlease_secs = 2", redis.url()),
            "[limits]\nprincipal_rate = { burst = 10, per_second = 0.01 }\nprincipal_sessions = 2\n",
        ),
    );
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(replica(&file, &[]).await);
    }
    let urls: Vec<String> = replicas.iter().map(|r| r.url.clone()).collect();
    // Two sessions on replica 0 fill the cap for every replica.
    let sid = initialize(&urls[0]).await.unwrap();
    let _second = initialize(&urls[0]).await.unwrap();
    for url in &urls[1..] {
        let refused = initialize(url).await.unwrap_err();
        assert_eq!(refused.status, 429, "{:?}", refused.body);
    }
    // 10 calls per principal (one bucket) across three replicas, not 30.
    let mut client = RoundRobin {
        urls: urls.clone(),
        next: 0,
        sid,
        retried: 0,
    };
    let mut admitted = 0;
    for id in 1..=30 {
        let r = client.call(&burst(id, 1, 0)).await;
        match r.answer()["error"]["code"].as_i64() {
            None => admitted += 1,
            Some(code) => assert_eq!(code, -32055),
        }
    }
    println!("calls admitted across 3 replicas with a bucket of 10: {admitted}");
    assert!((10..=11).contains(&admitted), "{admitted}");
    // Replica 0 dies holding both session slots: they come back when its
    // leases lapse, without it.
    drop(replicas.remove(0));
    let started = Instant::now();
    loop {
        if initialize(&urls[1]).await.is_ok() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the dead replica's session slots never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "session slots of a killed replica came back after {:?} (lease 2 s)",
        started.elapsed()
    );
}

/// Reads SSE events from `body` until `want` progress notifications came;
/// the last event id seen.
async fn read_progress(body: &mut hyper::body::Incoming, want: usize) -> (String, Vec<u64>) {
    let mut text = String::new();
    loop {
        let frame = body.frame().await.unwrap().unwrap();
        if let Ok(data) = frame.into_data() {
            text.push_str(&String::from_utf8_lossy(&data));
        }
        let complete = &text[..text.rfind("\n\n").map_or(0, |i| i + 2)];
        let mut last = String::new();
        let mut seen = Vec::new();
        for ev in complete.split("\n\n") {
            for line in ev.lines() {
                if let Some(id) = line.strip_prefix("id: ") {
                    last = id.to_owned();
                }
                if let Some(data) = line.strip_prefix("data: ") {
                    if let Ok(m) = serde_json::from_str::<Value>(data) {
                        if let Some(p) = m["params"]["progress"].as_f64() {
                            let p = p as u64;
                            seen.push(p);
                        }
                    }
                }
            }
        }
        if seen.len() >= want {
            return (last, seen);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_call_dropped_on_one_replica_is_resumed_on_another_exactly_once() {
    let Some(redis) = RedisServer::start("resume") else {
        return;
    };
    let backend = backend().await;
    let dir = Scratch::new("cluster-resume");
    let file = dir.file(
        "gw.toml",
        &config(&backend, &format!("redis_url = \"{}\"", redis.url()), ""),
    );
    let a = replica(&file, &[]).await;
    let b = replica(&file, &[]).await;
    let sid = initialize(&a.url).await.unwrap();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = http::Request::post(&a.url)
        .header(JSON.0, JSON.1)
        .header(ACCEPT.0, ACCEPT.1)
        .header(V.0, V.1)
        .header("mcp-session-id", &sid)
        .body(Full::new(Bytes::from(burst(9, 30, 20))))
        .unwrap();
    let res = client.request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let mut body = res.into_body();
    let (last, seen) = read_progress(&mut body, 5).await;
    assert!(!last.is_empty(), "events carry ids");
    let k = *seen.last().unwrap();
    // The client's connection goes; the call goes on at replica A.
    drop(body);
    drop(client);
    let r = send(
        "GET",
        &b.url,
        Some(&sid),
        &[("accept", "text/event-stream"), ("last-event-id", &last)],
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let messages = r.messages();
    let rest: Vec<u64> = messages
        .iter()
        .filter_map(|m| m["params"]["progress"].as_f64().map(|p| p as u64))
        .collect();
    assert_eq!(
        rest,
        ((k + 1)..=30).collect::<Vec<_>>(),
        "every later event, once"
    );
    let answer = r.answer();
    assert_eq!(answer["id"], 9);
    assert_eq!(answer["result"]["content"][0]["text"], "30");
    println!(
        "dropped after {} events on A, resumed on B with {} more and the result",
        seen.len(),
        rest.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_and_restarted_under_load() {
    let Some(mut redis) = RedisServer::start("outage") else {
        return;
    };
    let backend = backend().await;
    let dir = Scratch::new("cluster-outage");
    let limits = "[limits]\nprincipal_rate = { burst = 100000, per_second = 100000.0 }\n";
    let open = dir.file(
        "open.toml",
        &config(
            &backend,
            &format!("redis_url = \"{}\"\ntimeout_ms = 300", redis.url()),
            limits,
        ),
    );
    let closed = dir.file(
        "closed.toml",
        &config(
            &backend,
            &format!(
                "redis_url = \"{}\"\ntimeout_ms = 300\non_redis_error = \"fail_closed\"",
                redis.url()
            ),
            limits,
        ),
    );
    let a = replica(&open, &[]).await;
    let b = replica(&open, &[]).await;
    let c = replica(&closed, &[]).await;
    let sid = initialize(&a.url).await.unwrap();
    // The session is used everywhere before the outage.
    for (i, url) in [&a.url, &b.url, &c.url].into_iter().enumerate() {
        let r = send("POST", url, Some(&sid), &[], &burst(i as u64, 1, 0))
            .await
            .unwrap();
        check_burst(&r, i as u64, 1);
    }
    redis.kill();
    // fail_open replicas go on with the sessions they know; fail_closed
    // refuses calls; nobody can start a session (503, retry).
    for id in 10..20 {
        for url in [&a.url, &b.url] {
            let r = send("POST", url, Some(&sid), &[], &burst(id, 1, 0))
                .await
                .unwrap();
            check_burst(&r, id, 1);
        }
        let r = send("POST", &c.url, Some(&sid), &[], &burst(id, 1, 0))
            .await
            .unwrap();
        assert_eq!(r.answer()["error"]["code"], -32055, "fail_closed refuses");
    }
    let refused = initialize(&b.url).await.unwrap_err();
    assert_eq!(refused.status, 503);
    assert_eq!(refused.error_code(), Some(-32057));
    redis.restart();
    // Back without a gateway restart: new sessions, limits decided again.
    let started = Instant::now();
    let fresh = loop {
        if let Ok(s) = initialize(&b.url).await {
            break s;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "no recovery");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!(
        "sessions start again {:?} after Redis came back",
        started.elapsed()
    );
    for url in [&a.url, &b.url, &c.url] {
        loop {
            let r = send("POST", url, Some(&fresh), &[], &burst(50, 1, 0))
                .await
                .unwrap();
            let code = r.answer()["error"]["code"].as_i64();
            if r.status == 503 || code == Some(-32055) {
                // Not yet: this replica's connections are still coming
                // back (503), or fail_closed refuses until they are.
                assert!(started.elapsed() < Duration::from_secs(20), "no recovery");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            check_burst(&r, 50, 1);
            break;
        }
    }
    println!(
        "every replica serves again {:?} after Redis came back",
        started.elapsed()
    );
    let r = send("POST", &a.url, Some(&sid), &[], &burst(60, 1, 0))
        .await
        .unwrap();
    check_burst(&r, 60, 1);
    for p in [&a, &b, &c] {
        assert!(!p.log().contains("panicked"), "{}", p.log());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sealed_session_ids_need_no_store_and_deletes_reach_every_replica() {
    let backend = backend().await;
    let dir = Scratch::new("cluster-sealed");
    // Without Redis: any replica opens any session.
    let file = dir.file(
        "sealed.toml",
        &config(&backend, "session_ids = \"sealed\"", ""),
    );
    let env = [("MCP_GATEWAY_SEAL_KEYS", SEAL_KEYS)];
    let a = replica(&file, &env).await;
    let b = replica(&file, &env).await;
    let sid = initialize(&a.url).await.unwrap();
    assert!(sid.len() > 60, "the id carries the route: {sid}");
    let r = send("POST", &b.url, Some(&sid), &[], &burst(1, 2, 0))
        .await
        .unwrap();
    check_burst(&r, 1, 2);
    // A forged or altered id is unknown.
    let mut forged = sid.clone().into_bytes();
    let i = forged.len() / 2;
    forged[i] = if forged[i] == b'A' { b'B' } else { b'A' };
    let r = send(
        "POST",
        &b.url,
        Some(std::str::from_utf8(&forged).unwrap()),
        &[],
        &burst(2, 1, 0),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 404);
    drop((a, b));
    // With Redis: a DELETE on one replica revokes the id on all of them.
    let Some(redis) = RedisServer::start("sealed") else {
        return;
    };
    let file = dir.file(
        "sealed-redis.toml",
        &config(
            &backend,
            &format!("session_ids = \"sealed\"\nredis_url = \"{}\"", redis.url()),
            "",
        ),
    );
    let a = replica(&file, &env).await;
    let b = replica(&file, &env).await;
    let sid = initialize(&a.url).await.unwrap();
    let r = send("POST", &b.url, Some(&sid), &[], &burst(3, 1, 0))
        .await
        .unwrap();
    check_burst(&r, 3, 1);
    let del = send("DELETE", &b.url, Some(&sid), &[], "").await.unwrap();
    assert_eq!(del.status, 204);
    let started = Instant::now();
    loop {
        let r = send("POST", &a.url, Some(&sid), &[], &burst(4, 1, 0))
            .await
            .unwrap();
        if r.status == 404 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "still served");
    }
    println!(
        "a sealed id deleted on one replica was refused on the other after {:?}",
        started.elapsed()
    );
}
