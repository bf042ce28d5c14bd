//! Resilience with real peers: rmcp fixture servers as backend instances
//! that die, hang, fail, restart and drain; the rmcp client and raw HTTP in
//! front. Detection and failover times are printed, never asserted.

#[path = "../examples/support/fixtures.rs"]
mod fixtures;
#[path = "support/net.rs"]
mod net;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mcp_gateway_axum::{GatewayHandles, McpGateway};
use mcp_gateway_tower::upstream::health::{ActiveHealth, Condition, HealthConfig, OutlierConfig};
use mcp_gateway_tower::upstream::HttpUpstreamConfig;
use rmcp::model::CallToolResult;
use rmcp::service::RunningService;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{RoleClient, ServiceExt};
use serde_json::{json, Value};
use tokio::net::TcpListener;

use net::{raw, serve, url, Served, ACCEPT, JSON, V};

type Client = RunningService<RoleClient, ()>;

/// When a request started, and how it ended.
type Outcome = (Instant, Result<(), String>);

const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#;

/// An rmcp fixture server that can be killed: its listener and every open
/// connection dropped at once, as when its process dies. It counts the
/// DELETEs and the MCP methods it receives.
struct Backend {
    addr: SocketAddr,
    tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    deletes: Arc<AtomicUsize>,
    methods: Arc<Mutex<Vec<String>>>,
    /// Set: every new request hangs (the process is wedged).
    stall: Arc<std::sync::atomic::AtomicBool>,
}

impl Backend {
    async fn start(name: &str) -> Backend {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Backend::on(l, name)
    }

    fn on(l: TcpListener, name: &str) -> Backend {
        let addr = l.local_addr().unwrap();
        let deletes = Arc::new(AtomicUsize::new(0));
        let methods = Arc::new(Mutex::new(Vec::new()));
        let stall = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (d, m, st) = (deletes.clone(), methods.clone(), stall.clone());
        let fixture = fixtures::service(name);
        let svc = tower::service_fn(move |req: http::Request<axum::body::Body>| {
            let (d, m, fixture) = (d.clone(), m.clone(), fixture.clone());
            let stalled = st.load(Ordering::SeqCst);
            async move {
                if stalled {
                    std::future::pending::<()>().await;
                }
                if req.method() == http::Method::DELETE {
                    d.fetch_add(1, Ordering::SeqCst);
                }
                let (parts, body) = req.into_parts();
                let bytes = http_body_util::BodyExt::collect(body)
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
                    if let Some(method) = v["method"].as_str() {
                        m.lock().unwrap().push(method.to_owned());
                    }
                }
                let req = http::Request::from_parts(parts, axum::body::Body::from(bytes));
                tower::ServiceExt::oneshot(fixture, req).await
            }
        });
        let app = axum::Router::new().route_service("/mcp", svc);
        let tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let t = tasks.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = l.accept().await else {
                    break;
                };
                let app = app.clone();
                let conn = tokio::spawn(async move {
                    let svc = hyper_util::service::TowerToHyperService::new(app);
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(sock), svc)
                    .await;
                });
                t.lock().unwrap().push(conn.abort_handle());
            }
        });
        tasks.lock().unwrap().push(accept.abort_handle());
        Backend {
            addr,
            tasks,
            deletes,
            methods,
            stall,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }

    /// Dies: no more connections, the open ones closed.
    fn kill(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    fn seen(&self, method: &str) -> usize {
        self.methods
            .lock()
            .unwrap()
            .iter()
            .filter(|m| *m == method)
            .count()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Fast probes (every 100 ms, one failure or success flips health).
fn fast_health() -> HealthConfig {
    HealthConfig::default().active(Some(
        ActiveHealth::default()
            .interval(Duration::from_millis(100))
            .timeout(Duration::from_millis(300))
            .thresholds(1, 1),
    ))
}

async fn gateway(urls: &[String], health: HealthConfig) -> (Served, GatewayHandles) {
    let mut b = McpGateway::builder().health(health).http_upstream_config(
        HttpUpstreamConfig::default().response_timeout(Duration::from_millis(800)),
    );
    for u in urls {
        b = b.upstream_url(u).unwrap();
    }
    let (router, handles) = b.build_with_handles().unwrap();
    (serve(router).await, handles)
}

async fn client(gw: &Served) -> Client {
    ().serve(StreamableHttpClientTransport::from_uri(url(gw)))
        .await
        .expect("initialize through the gateway")
}

fn text_of(r: &CallToolResult) -> String {
    serde_json::to_value(r).unwrap()["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

async fn call(c: &Client, name: &str, args: Value) -> Result<CallToolResult, String> {
    c.call_tool(serde_json::from_value(json!({"name": name, "arguments": args})).unwrap())
        .await
        .map_err(|e| format!("{e:?}"))
}

async fn whoami(c: &Client) -> String {
    text_of(&call(c, "whoami", json!({})).await.expect("whoami"))
}

/// Waits for `cond`, checking every 20 ms, for at most `limit`.
async fn eventually<F: FnMut() -> bool>(what: &str, limit: Duration, mut cond: F) -> Duration {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    t0.elapsed()
}

/// One instance dies under load: the calls in flight on it get the
/// documented error (-32050) and nothing else does; its sessions continue
/// on the other instance with the same session id; new sessions work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_instance_fails_only_its_calls_in_flight_and_its_sessions_move() {
    let (alpha, beta) = (Backend::start("alpha").await, Backend::start("beta").await);
    let (gw, handles) = gateway(&[alpha.url(), beta.url()], fast_health()).await;
    let mut sessions = Vec::new();
    for _ in 0..6 {
        let c = client(&gw).await;
        let name = whoami(&c).await;
        sessions.push((c, name));
    }
    let on_alpha = sessions.iter().filter(|(_, n)| n == "alpha").count();
    assert!(
        (2..=4).contains(&on_alpha),
        "new sessions spread over both instances"
    );
    let sessions = Arc::new(sessions);
    // A long call on every session of alpha, in flight when it dies.
    let mut in_flight = Vec::new();
    for i in 0..sessions.len() {
        if sessions[i].1 != "alpha" {
            continue;
        }
        let s = sessions.clone();
        in_flight.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let r = call(&s[i].0, "wait", json!({"ms": 20_000})).await;
            (r, t0)
        }));
    }
    let alpha_state = handles.instances.state(0).unwrap();
    let calls_before = alpha.seen("tools/call");
    eventually(
        "the long calls to reach alpha",
        Duration::from_secs(10),
        || alpha.seen("tools/call") >= calls_before + in_flight.len(),
    )
    .await;

    // A steady load of new sessions and calls across the kill.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let outcomes: Arc<Mutex<Vec<Outcome>>> = Arc::default();
    let mut load = Vec::new();
    for _ in 0..3 {
        let (stop, outcomes, g) = (stop.clone(), outcomes.clone(), url(&gw));
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let t = Instant::now();
                let c = match ().serve(StreamableHttpClientTransport::from_uri(g.clone())).await {
                    Ok(c) => c,
                    Err(e) => {
                        outcomes
                            .lock()
                            .unwrap()
                            .push((t, Err(format!("initialize: {e:?}"))));
                        continue;
                    }
                };
                outcomes.lock().unwrap().push((t, Ok(())));
                for _ in 0..3 {
                    let t = Instant::now();
                    let r = call(&c, "whoami", json!({})).await.map(drop);
                    outcomes.lock().unwrap().push((t, r));
                }
                let _ = c.cancel().await;
            }
        }));
    }
    eventually("load before the kill", Duration::from_secs(10), || {
        outcomes.lock().unwrap().len() >= 20
    })
    .await;

    let killed = Instant::now();
    alpha.kill();
    let mut errors = 0;
    for t in in_flight {
        let (r, _) = t.await.unwrap();
        let e = r.expect_err("a call in flight on the dead instance fails");
        assert!(e.contains("-32050"), "the documented error: {e}");
        errors += 1;
    }
    let cut = killed.elapsed();
    let detected = eventually("alpha to be out", Duration::from_secs(10), || {
        alpha_state.condition() != Condition::Healthy
    })
    .await;

    // Every session continues, those of alpha on beta, same session ids.
    let t0 = Instant::now();
    for (c, _) in sessions.iter() {
        assert_eq!(whoami(c).await, "beta");
    }
    let failover = t0.elapsed();
    // New sessions all land on the live instance.
    for _ in 0..4 {
        let c = client(&gw).await;
        assert_eq!(whoami(&c).await, "beta");
        c.cancel().await.unwrap();
    }
    assert_eq!(errors, on_alpha, "client-visible errors = calls in flight");
    let after = outcomes.lock().unwrap().len();
    eventually("load after the kill", Duration::from_secs(10), || {
        outcomes.lock().unwrap().len() >= after + 20
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    for t in load {
        t.await.unwrap();
    }
    let outcomes = std::mem::take(&mut *outcomes.lock().unwrap());
    let late_failures: Vec<_> = outcomes
        .iter()
        .filter(|(t, r)| r.is_err() && *t > killed)
        .collect();
    assert!(
        late_failures.is_empty(),
        "only requests in flight at the kill may fail: {late_failures:?}"
    );
    let in_flight_failures = outcomes.iter().filter(|(_, r)| r.is_err()).count();
    let served_after = outcomes
        .iter()
        .filter(|(t, r)| r.is_ok() && *t > killed)
        .count();
    eprintln!(
        "load: {} requests, {in_flight_failures} failed (all in flight at the kill), {served_after} served after it",
        outcomes.len()
    );
    assert!(alpha_state.failovers() as usize >= on_alpha);
    eprintln!(
        "calls in flight cut {cut:?} after the kill; alpha out of rotation {detected:?} later; \
         {on_alpha} sessions moved in {failover:?}"
    );
    let sessions = Arc::try_unwrap(sessions).ok().unwrap();
    for (c, _) in sessions {
        c.cancel().await.unwrap();
    }
}

/// An instance that wedges (accepts, never answers) fails its probes: the
/// call in flight on it ends with -32050 at once instead of hanging, and
/// its session continues elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wedged_instance_is_found_by_its_probes_and_its_calls_are_cut() {
    let (alpha, beta) = (Backend::start("alpha").await, Backend::start("beta").await);
    let (gw, handles) = gateway(&[alpha.url(), beta.url()], fast_health()).await;
    let c = loop {
        let c = client(&gw).await;
        if whoami(&c).await == "alpha" {
            break Arc::new(c);
        }
        c.cancel().await.unwrap();
    };
    let before = alpha.seen("tools/call");
    let c2 = c.clone();
    let long = tokio::spawn(async move { call(&c2, "wait", json!({"ms": 20_000})).await });
    eventually("the call to reach alpha", Duration::from_secs(10), || {
        alpha.seen("tools/call") > before
    })
    .await;
    let wedged = Instant::now();
    alpha.stall.store(true, Ordering::SeqCst);
    let e = long.await.unwrap().expect_err("the call is cut");
    assert!(e.contains("-32050"), "{e}");
    let cut = wedged.elapsed();
    assert_eq!(
        handles.instances.state(0).unwrap().condition(),
        Condition::Unhealthy
    );
    assert_eq!(whoami(&c).await, "beta");
    eprintln!("a wedged instance's call was cut {cut:?} after it wedged");
    Arc::try_unwrap(c).ok().unwrap().cancel().await.unwrap();
}

/// A drained instance gets no new session; its sessions stay until the
/// deadline, then their backend sessions get DELETE and they move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_instance_keeps_its_sessions_until_the_deadline_then_they_move() {
    let (alpha, beta) = (Backend::start("alpha").await, Backend::start("beta").await);
    let health = HealthConfig::default().drain_timeout(Duration::from_secs(1));
    let (gw, handles) = gateway(&[alpha.url(), beta.url()], health).await;
    let mut sessions = Vec::new();
    for _ in 0..4 {
        let c = client(&gw).await;
        let name = whoami(&c).await;
        sessions.push((c, name));
    }
    let on_alpha = sessions.iter().filter(|(_, n)| n == "alpha").count();
    assert!(on_alpha > 0);
    assert!(handles.instances.drain(0));
    assert_eq!(
        handles.instances.state(0).unwrap().condition(),
        Condition::Draining
    );
    for _ in 0..4 {
        let c = client(&gw).await;
        assert_eq!(
            whoami(&c).await,
            "beta",
            "no new session on a draining instance"
        );
        c.cancel().await.unwrap();
    }
    // Before the deadline the sessions stay where they are.
    for (c, name) in &sessions {
        assert_eq!(&whoami(c).await, name);
    }
    let deletes_before = alpha.deletes.load(Ordering::SeqCst);
    eventually(
        "alpha's sessions to be ended",
        Duration::from_secs(10),
        || alpha.deletes.load(Ordering::SeqCst) >= deletes_before + on_alpha,
    )
    .await;
    for (c, _) in &sessions {
        assert_eq!(whoami(c).await, "beta");
    }
    assert_eq!(
        handles.instances.state(0).unwrap().failovers() as usize,
        on_alpha
    );
    // Undrained, it takes sessions again.
    assert!(handles.instances.undrain(0));
    let mut seen_alpha = false;
    for _ in 0..4 {
        let c = client(&gw).await;
        seen_alpha |= whoami(&c).await == "alpha";
        c.cancel().await.unwrap();
    }
    assert!(seen_alpha);
    for (c, _) in sessions {
        c.cancel().await.unwrap();
    }
}

/// A backend that restarts and forgets its sessions: the next request is
/// answered after a transparent re-initialize that replays the recorded
/// setup (`initialize`, `notifications/initialized`, the log level, the
/// subscriptions); the client notices nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_backend_is_set_up_again_with_the_recorded_setup() {
    use mcp_gateway_tower::audit::{AuditConfig, ChannelSink, Overflow};
    let first = Backend::start("first").await;
    let addr = first.addr;
    let (sink, mut audit) = ChannelSink::new(1000, Overflow::Drop);
    let (router, handles) = McpGateway::builder()
        .upstream_url(&first.url())
        .unwrap()
        .backend_name("files")
        .audit(Arc::new(sink), AuditConfig::default())
        .build_with_handles()
        .unwrap();
    let gw = serve(router).await;
    let u = url(&gw);
    let init = raw("POST", &u, &[ACCEPT, JSON], INIT).await;
    assert_eq!(init.status, 200);
    let sid = init.headers["mcp-session-id"].to_str().unwrap().to_owned();
    let s = ("mcp-session-id", sid.as_str());
    let note = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
    assert_eq!(
        raw("POST", &u, &[ACCEPT, JSON, V, s], note).await.status,
        202
    );
    let level =
        r#"{"jsonrpc":"2.0","id":2,"method":"logging/setLevel","params":{"level":"debug"}}"#;
    assert_eq!(
        raw("POST", &u, &[ACCEPT, JSON, V, s], level).await.status,
        200
    );
    let sub = r#"{"jsonrpc":"2.0","id":3,"method":"resources/subscribe","params":{"uri":"test://static-text"}}"#;
    assert_eq!(
        raw("POST", &u, &[ACCEPT, JSON, V, s], sub).await.status,
        200
    );

    // The backend dies and a new process takes its port.
    drop(first);
    let l = loop {
        match TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let second = Backend::on(l, "second");
    let who = r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"whoami","arguments":{}}}"#;
    let r = raw("POST", &u, &[ACCEPT, JSON, V, s], who).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.answer()["result"]["content"][0]["text"], "second");
    for m in [
        "initialize",
        "notifications/initialized",
        "logging/setLevel",
        "resources/subscribe",
    ] {
        assert_eq!(second.seen(m), 1, "{m} reached the new process once");
    }
    // Once answered 404 (unknown session), once after the setup.
    assert_eq!(second.seen("tools/call"), 2);
    assert_eq!(handles.instances.state(0).unwrap().failovers(), 1);
    // The move is in the audit log, with the session, from, to and why.
    let moved = loop {
        let e = audit.recv().await.unwrap();
        if e.event.as_str() == "failover" {
            break e;
        }
    };
    assert_eq!(moved.session.as_deref(), Some(sid.as_str()));
    assert_eq!(moved.backend.as_deref(), Some("files"));
    assert_eq!(
        moved.detail.as_deref(),
        Some("from instance 0 to instance 0: backend_forgot")
    );
    // The session id did not change and keeps working.
    let r = raw("POST", &u, &[ACCEPT, JSON, V, s], who).await;
    assert_eq!(r.answer()["result"]["content"][0]["text"], "second");
    assert_eq!(second.seen("initialize"), 1);
}

/// A session whose only instance is gone, with failover = "error": 404,
/// as the specification allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_failover_error_a_lost_instance_means_404() {
    let alpha = Backend::start("alpha").await;
    let beta = Backend::start("beta").await;
    let (router, handles) = McpGateway::builder()
        .upstream_url(&alpha.url())
        .unwrap()
        .upstream_url(&beta.url())
        .unwrap()
        .failover(mcp_gateway_tower::session::Failover::Error)
        .build_with_handles()
        .unwrap();
    let gw = serve(router).await;
    let u = url(&gw);
    let init = raw("POST", &u, &[ACCEPT, JSON], INIT).await;
    let sid = init.headers["mcp-session-id"].to_str().unwrap().to_owned();
    let s = ("mcp-session-id", sid.as_str());
    let on = handles.sessions.records().await[0].instance();
    handles.instances.state(on).unwrap();
    // Take its instance out: drain with a zero deadline is immediate loss
    // for its sessions once the deadline task runs.
    let who = r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"whoami","arguments":{}}}"#;
    if on == 0 {
        alpha.kill();
    } else {
        beta.kill();
    }
    let r = raw("POST", &u, &[ACCEPT, JSON, V, s], who).await;
    assert_eq!(r.status, 502, "the unreachable instance is reported");
    // Once it is out of rotation, the session is gone.
    for _ in 0..3 {
        raw("POST", &u, &[ACCEPT, JSON, V, s], who).await;
    }
    let r = raw("POST", &u, &[ACCEPT, JSON, V, s], who).await;
    assert_eq!(r.status, 404, "{}", String::from_utf8_lossy(&r.body));
}

/// A TCP server that accepts and never answers.
async fn silent() -> (String, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let u = format!("http://{}/mcp", l.local_addr().unwrap());
    let t = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    (u, t)
}

/// A TCP server that resets every connection.
async fn resetting() -> (String, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let u = format!("http://{}/mcp", l.local_addr().unwrap());
    let t = tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let s = s.into_std().unwrap();
            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
            drop(s);
        }
    });
    (u, t)
}

/// A backend that answers 500 to everything.
async fn failing() -> Served {
    serve(axum::Router::new().route(
        "/mcp",
        axum::routing::any(|| async { (http::StatusCode::INTERNAL_SERVER_ERROR, "broken") }),
    ))
    .await
}

/// Three broken instances (silent, 500, reset): each call gets its error
/// within its bound, each instance is ejected after the configured
/// failures, and then the answer is an immediate 503 with `Retry-After`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_instances_are_ejected_and_then_refused_at_once() {
    let (silent_url, _s) = silent().await;
    let (reset_url, _r) = resetting().await;
    let five_hundred = failing().await;
    let outlier = {
        let mut o = OutlierConfig::default();
        o.consecutive_failures = 2;
        o.base_ejection = Duration::from_secs(30);
        o
    };
    for (what, u, first) in [
        ("silent", silent_url, 504),
        ("500", url(&five_hundred), 500),
        ("reset", reset_url, 502),
    ] {
        let (gw, handles) = gateway(&[u], HealthConfig::default().outlier(outlier)).await;
        let g = url(&gw);
        for _ in 0..2 {
            let t0 = Instant::now();
            let r = raw("POST", &g, &[ACCEPT, JSON], INIT).await;
            assert_eq!(r.status, first, "{what}");
            eprintln!("{what}: answered {} in {:?}", r.status, t0.elapsed());
        }
        assert_eq!(
            handles.instances.state(0).unwrap().condition(),
            Condition::Ejected,
            "{what}"
        );
        let t0 = Instant::now();
        let r = raw("POST", &g, &[ACCEPT, JSON], INIT).await;
        assert_eq!(r.status, 503, "{what}");
        assert!(r.headers.contains_key("retry-after"), "{what}");
        assert_eq!(r.error_code(), Some(-32050), "{what}");
        let msg = r.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(
            msg.contains("default"),
            "the answer names the backend: {msg}"
        );
        eprintln!("{what}: ejected, then refused in {:?}", t0.elapsed());
    }
}

/// A new session never sees an instance that refuses connections: the
/// `initialize` goes to another one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_never_reached_an_instance_is_sent_to_another() {
    let alpha = Backend::start("alpha").await;
    let beta = Backend::start("beta").await;
    let (gw, handles) = gateway(&[alpha.url(), beta.url()], HealthConfig::default()).await;
    alpha.kill();
    for _ in 0..6 {
        let c = client(&gw).await;
        assert_eq!(whoami(&c).await, "beta");
        c.cancel().await.unwrap();
    }
    assert_eq!(
        handles.instances.state(0).unwrap().condition(),
        Condition::Ejected
    );
}

/// A `HealthProbe` of the embedder's own decides health: here, a switch
/// per instance (reached through the probe target's label).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_probe_of_ones_own_decides_which_instances_take_sessions() {
    use mcp_gateway_core::Answer;
    use mcp_gateway_tower::upstream::health::{HealthProbe, ProbeTarget};

    struct Switch(String, Arc<std::sync::atomic::AtomicBool>);
    impl HealthProbe for Switch {
        fn probe<'a>(&'a self, instance: &'a ProbeTarget) -> Answer<'a, Result<(), String>> {
            let down = instance.label() == self.0 && self.1.load(Ordering::SeqCst);
            Answer::pending(async move {
                // It still reaches the instance, as a probe would.
                let req = http::Request::get("/").body(Default::default()).unwrap();
                instance.send(req).await?;
                if down {
                    Err("switched off".into())
                } else {
                    Ok(())
                }
            })
        }
    }

    let (alpha, beta) = (Backend::start("alpha").await, Backend::start("beta").await);
    let off = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let health = HealthConfig::default().active(Some(
        ActiveHealth::default()
            .interval(Duration::from_millis(50))
            .thresholds(1, 1)
            .custom(Arc::new(Switch(alpha.url(), off.clone()))),
    ));
    let (gw, handles) = gateway(&[alpha.url(), beta.url()], health).await;
    let _ = client(&gw).await; // starts the probes
    let alpha_state = handles.instances.state(0).unwrap();
    off.store(true, Ordering::SeqCst);
    eventually("alpha switched off", Duration::from_secs(10), || {
        alpha_state.condition() == Condition::Unhealthy
    })
    .await;
    for _ in 0..4 {
        let c = client(&gw).await;
        assert_eq!(whoami(&c).await, "beta");
        c.cancel().await.unwrap();
    }
    off.store(false, Ordering::SeqCst);
    eventually("alpha back", Duration::from_secs(10), || {
        alpha_state.condition() == Condition::Healthy
    })
    .await;
}
