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

/// A Redis, the backend, and a configuration file for replicas sharing
/// state through that Redis (`cluster` more `[cluster]` keys, `extra` more
/// tables); `None` when redis-server is missing (the test is skipped).
struct Shared {
    redis: RedisServer,
    backend: Served,
    dir: Scratch,
    file: String,
}

async fn shared(tag: &str, cluster: &str, extra: &str) -> Option<Shared> {
    let redis = RedisServer::start(tag)?;
    let backend = backend().await;
    let dir = Scratch::new(&format!("cluster-{tag}"));
    let keys = format!("redis_url = \"{}\"\n{cluster}", redis.url());
    let file = dir.file("gw.toml", &config(&backend, &keys, extra));
    Some(Shared {
        redis,
        backend,
        dir,
        file,
    })
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

/// Three replicas with the configuration in `file`.
async fn three(file: &str) -> Vec<GatewayProcess> {
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(replica(file, &[]).await);
    }
    replicas
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

/// Sends calls of session `sid` to `url` until it answers 404 (within 5 s
/// of `started`): how long an end on another replica takes to arrive.
async fn until_unknown(url: &str, sid: &str, started: Instant) {
    loop {
        let r = send("POST", url, Some(sid), &[], &burst(1, 1, 0))
            .await
            .unwrap();
        if r.status == 404 {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "still served");
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
    // Kept whole: Redis and the backend live as long as it does.
    let Some(setup) = shared("replicas", "", "").await else {
        return;
    };
    let file = setup.file.clone();
    let mut replicas = three(&file).await;
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
    replicas.extend(three(&file).await);
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
        until_unknown(url, &sid, started).await;
    }
    println!(
        "a DELETE on one replica was refused on the others after {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn limits_hold_across_replicas_and_a_dead_replicas_slots_come_back() {
    let limits =
        "[limits]\nprincipal_rate = { burst = 10, per_second = 0.01 }\nprincipal_sessions = 2\n";
    // Kept whole: Redis and the backend live as long as it does.
    let Some(setup) = shared("limits", "lease_secs = 2", limits).await else {
        return;
    };
    let file = setup.file.clone();
    let mut replicas = three(&file).await;
    let urls: Vec<String> = replicas.iter().map(|r| r.url.clone()).collect();
    // Two sessions on replica 0 fill the cap for every replica.
    let sid = initialize(&urls[0]).await.unwrap();
    let second = initialize(&urls[0]).await.unwrap();
    for url in &urls[1..] {
        let refused = initialize(url).await.unwrap_err();
        assert_eq!(refused.status, 429, "{:?}", refused.body);
    }
    // A session ended on another replica gives its slot back: the notice
    // reaches replica 0, which lets go of the slot it held.
    let del = send("DELETE", &urls[1], Some(&second), &[], "")
        .await
        .unwrap();
    assert_eq!(del.status, 204);
    let started = Instant::now();
    while initialize(&urls[2]).await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "slot never released"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "a session deleted elsewhere freed its slot after {:?}",
        started.elapsed()
    );
    assert_eq!(
        initialize(&urls[1]).await.unwrap_err().status,
        429,
        "the cap is full again"
    );
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
    // Kept whole: Redis and the backend live as long as it does.
    let Some(setup) = shared("resume", "", "").await else {
        return;
    };
    let file = setup.file.clone();
    let a = replica(&file, &[]).await;
    let b = replica(&file, &[]).await;
    resume_elsewhere(&a.url, &b.url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_call_resumed_elsewhere_ends_with_an_error_when_its_replica_dies() {
    let Some(setup) = shared("orphan", "", "").await else {
        return;
    };
    let a = replica(&setup.file, &[]).await;
    let b = replica(&setup.file, &[]).await;
    let sid = initialize(&a.url).await.unwrap();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = http::Request::post(&a.url)
        .header(JSON.0, JSON.1)
        .header(ACCEPT.0, ACCEPT.1)
        .header(V.0, V.1)
        .header("mcp-session-id", &sid)
        .body(Full::new(Bytes::from(burst(11, 100, 200))))
        .unwrap();
    let mut body = client.request(req).await.unwrap().into_body();
    let (last, _) = read_progress(&mut body, 2).await;
    drop(body);
    // The replica running the call dies while its client is away.
    drop(a);
    let started = Instant::now();
    let r = send(
        "GET",
        &b.url,
        Some(&sid),
        &[("accept", "text/event-stream"), ("last-event-id", &last)],
        "",
    )
    .await
    .unwrap();
    let answer = r.answer();
    assert_eq!(answer["id"], 11, "{answer}");
    assert_eq!(answer["error"]["code"], -32058, "{answer}");
    println!(
        "a resumed call whose replica died ended with -32058 after {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_single_gateway_resumes_from_its_own_store() {
    let backend = backend().await;
    let dir = Scratch::new("resume-memory");
    let file = dir.file(
        "gw.toml",
        &format!(
            "listen = \"127.0.0.1:0\"\naccess_log = false\n[sessions]\nresumption = true\n\
             [backend]\nurls = [\"http://{}/mcp\"]\n",
            backend.addr
        ),
    );
    let gw = replica(&file, &[]).await;
    resume_elsewhere(&gw.url, &gw.url).await;
}

/// A call with 30 progress events sent to `a`, its client gone after 5,
/// resumed with `Last-Event-ID` at `b`: every later event once, then the
/// result.
async fn resume_elsewhere(a: &str, b: &str) {
    let sid = initialize(a).await.unwrap();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = http::Request::post(a)
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
        b,
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
    let limits = "[limits]\nprincipal_rate = { burst = 100000, per_second = 100000.0 }\n";
    let metrics = format!("{limits}[observability]\nmetrics_path = \"/metrics\"\n");
    let Some(Shared {
        mut redis,
        backend,
        dir,
        file: open,
    }) = shared("outage", "timeout_ms = 300", &metrics).await
    else {
        return;
    };
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
    // The outage is counted where an operator looks.
    let scrape = send("GET", &a.url.replace("/mcp", "/metrics"), None, &[], "")
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&scrape.body);
    for name in [
        "mcp_gateway_redis_errors_total",
        "mcp_gateway_limit_undecided_total",
    ] {
        let value: f64 = text
            .lines()
            .find_map(|l| {
                l.strip_prefix(name)?
                    .split_whitespace()
                    .last()?
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("{name} missing from the scrape"));
        assert!(value > 0.0, "{name} = {value}");
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
    until_unknown(&a.url, &sid, started).await;
    println!(
        "a sealed id deleted on one replica was refused on the other after {:?}",
        started.elapsed()
    );
}

mod library {
    //! The shared stores on their own, with Redis's own counters as the
    //! witness of how many round trips a decision takes.

    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use mcp_gateway_core::session::{SessionId, SessionRecord, SessionStore};
    use mcp_gateway_tower::cluster::{
        FailMode, Redis, RedisConfig, RedisEventConfig, RedisEventStore, RedisLimiter,
        RedisSessionConfig, RedisSessionStore,
    };
    use mcp_gateway_tower::limit::{Check, CheckOp, LimitKey, LimitKind, Limiter, Quota};
    use mcp_gateway_tower::resume::{
        EventStore, EventStoreError, StoredEvent, StreamEnd, StreamKey,
    };

    use super::RedisServer;

    fn redis(server: &RedisServer, prefix: &str) -> Redis {
        let mut cfg = RedisConfig::new(server.url());
        cfg.key_prefix = prefix.into();
        Redis::connect(&cfg).unwrap()
    }

    fn key(kind: LimitKind) -> LimitKey {
        LimitKey {
            kind,
            subject: "ann".into(),
            tool: None,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_call_is_decided_in_one_round_trip_and_releases_ride_along() {
        let Some(server) = RedisServer::start("limiter") else {
            return;
        };
        let limiter = RedisLimiter::new(redis(&server, "lim:"), FailMode::FailClosed);
        let checks = || {
            vec![
                Check {
                    key: key(LimitKind::PrincipalRate),
                    op: CheckOp::Hit(Quota {
                        burst: 1000,
                        per_second: 1000.0,
                    }),
                },
                Check {
                    key: key(LimitKind::PrincipalInFlight),
                    op: CheckOp::Acquire(3),
                },
            ]
        };
        // Warm: the script is loaded once.
        drop(limiter.check_all(checks()).await.unwrap());
        let before = server.calls("evalsha");
        for _ in 0..200 {
            let slots = limiter.check_all(checks()).await.unwrap();
            assert_eq!(slots.len(), 1);
        }
        let decisions = server.calls("evalsha") - before;
        let stats = limiter.stats();
        println!(
            "200 calls: {decisions} scripts run by Redis, {} round trips of their own for releases",
            stats.release_trips
        );
        assert_eq!(decisions, 200, "one round trip per call");
        assert!(stats.release_trips <= 2, "{stats:?}");
        // The cap holds: three slots, a fourth refused, one back after a
        // release.
        let mut held = Vec::new();
        for _ in 0..3 {
            held.extend(limiter.check_all(checks()).await.unwrap());
        }
        let refused = limiter.check_all(checks()).await.unwrap_err();
        assert_eq!(refused.0, 1, "the in-flight check refused");
        held.pop();
        let started = Instant::now();
        while limiter.check_all(checks()).await.is_err() {
            assert!(started.elapsed() < Duration::from_secs(5));
            tokio::task::yield_now().await;
        }
        // A refused call spends nothing: the rate bucket is untouched.
        let strict = Check {
            key: key(LimitKind::PrincipalToolRate),
            op: CheckOp::Hit(Quota {
                burst: 1,
                per_second: 0.001,
            }),
        };
        let full = Check {
            key: key(LimitKind::BackendInFlight),
            op: CheckOp::Acquire(0),
        };
        assert!(limiter.check_all(vec![strict.clone(), full]).await.is_err());
        assert!(limiter.check_all(vec![strict.clone()]).await.is_ok());
        assert!(limiter.check_all(vec![strict]).await.is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sessions_are_read_once_per_replica_and_ended_everywhere() {
        let Some(server) = RedisServer::start("store") else {
            return;
        };
        let (ra, rb) = (redis(&server, "st:"), redis(&server, "st:"));
        let a = RedisSessionStore::new(ra.clone(), RedisSessionConfig::default());
        let b = RedisSessionStore::new(rb.clone(), RedisSessionConfig::default());
        // Both hear the notice channel before the test goes on.
        let started = Instant::now();
        while !(ra.in_sync() && rb.in_sync()) {
            assert!(started.elapsed() < Duration::from_secs(5));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let ended = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let seen = ended.clone();
        b.on_remote_end(Arc::new(move |id: &str| {
            seen.lock().unwrap().push(id.into())
        }));
        let rec = SessionRecord::new(
            SessionId::random(),
            0,
            Some(http::HeaderValue::from_static("up-1")),
        )
        .with_owner(Some("ann".into()));
        let id = a.insert(rec).await.unwrap().id().as_str().to_owned();
        // The lookup script is loaded (EVALSHA, NOSCRIPT, SCRIPT LOAD) once.
        assert!(b.get("unknown").await.is_none());
        let before = server.calls("evalsha");
        for _ in 0..50 {
            let r = b.get(&id).await.unwrap();
            assert_eq!(r.upstream_id(), Some("up-1"));
            assert_eq!(r.owner(), Some("ann"));
        }
        assert_eq!(
            server.calls("evalsha") - before,
            1,
            "read once, then cached"
        );
        assert!(a.remove(&id).await.is_some());
        let started = Instant::now();
        while b.get(&id).await.is_some() {
            assert!(started.elapsed() < Duration::from_secs(5), "still cached");
            tokio::task::yield_now().await;
        }
        assert_eq!(*ended.lock().unwrap(), std::slice::from_ref(&id));
        assert!(a.remove(&id).await.is_none(), "ended once");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn streams_are_kept_in_order_with_their_end() {
        let Some(server) = RedisServer::start("events") else {
            return;
        };
        let store = RedisEventStore::new(redis(&server, "ev:"), RedisEventConfig::default());
        let k = StreamKey::fresh(&SessionId::random(), false);
        let event = |seq: u64, end: Option<StreamEnd>| StoredEvent {
            seq,
            upstream_id: (seq == 1).then(|| Bytes::from_static(b"up-1")),
            wire: Bytes::from(format!("id: x.{seq}\ndata: {seq}\n\n")),
            end,
        };
        store.append(&k, event(0, None));
        for seq in 1..=3 {
            store.append(&k, event(seq, None));
        }
        // Waits for what is still on its way (the writer is asynchronous):
        // the header first, as a resumption does.
        assert_eq!(store.header(&k).await.unwrap(), event(0, None).wire);
        let mut got = Vec::new();
        while got.len() < 3 {
            let after = got.last().map_or(0, |e: &StoredEvent| e.seq);
            got.extend(store.read(&k, after, Duration::from_secs(2)).await.unwrap());
        }
        assert_eq!(got.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(got[0].upstream_id.as_deref(), Some(&b"up-1"[..]));
        assert_eq!(got[2].wire, event(3, None).wire);
        // A reader waiting for more wakes on the append.
        let reader = {
            let (store, k) = (store.clone(), k.clone());
            tokio::spawn(async move { store.read(&k, 3, Duration::from_secs(10)).await })
        };
        store.append(&k, event(4, Some(StreamEnd::Done)));
        let tail = reader.await.unwrap().unwrap();
        assert_eq!(tail.len(), 1);
        assert_eq!(tail[0].end, Some(StreamEnd::Done));
        let unknown = StreamKey::fresh(&SessionId::random(), true);
        assert_eq!(
            store.read(&unknown, 0, Duration::ZERO).await.unwrap_err(),
            EventStoreError::Unknown
        );
    }
}
