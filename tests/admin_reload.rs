//! The `mcp-gateway` binary's operator side: the admin listener (health,
//! readiness, instances, drain, sessions, its token) and reloading the
//! configuration file (SIGHUP and `watch`) while sessions run.

#[path = "../examples/support/fixtures.rs"]
mod fixtures;
#[path = "support/net.rs"]
mod net;
#[path = "support/process.rs"]
mod process;

use std::time::{Duration, Instant};

use net::{raw, Reply, ACCEPT, JSON, V};
use process::{GatewayProcess, Scratch};
use serde_json::Value;

const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#;
const WHO: &str =
    r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"whoami","arguments":{}}}"#;
const TOKEN: &str = "admin-secret-token";

async fn backend(name: &str) -> net::Served {
    net::serve(axum::Router::new().route_service("/mcp", fixtures::service(name))).await
}

/// The admin listener's base URL, from the line after the listening one.
fn admin_base(gw: &mut GatewayProcess) -> String {
    gw.next_line()
        .strip_prefix("mcp-gateway admin on ")
        .unwrap()
        .to_owned()
}

fn config(urls: &[String], extra: &str) -> String {
    let urls: Vec<String> = urls.iter().map(|u| format!("{u:?}")).collect();
    format!(
        "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{extra}\n\
         [backend]\nname = \"db\"\nurls = [{}]\ndrain_timeout_secs = 1\n\
         [backend.health]\ninterval_secs = 1\n",
        urls.join(", ")
    )
}

fn u(s: &net::Served) -> String {
    format!("http://{}/mcp", s.addr)
}

/// Starts a session; returns its id and the instance's name.
async fn session(gw: &str) -> (String, String) {
    let r = raw("POST", gw, &[ACCEPT, JSON], INIT).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let sid = r.headers["mcp-session-id"].to_str().unwrap().to_owned();
    let name = who(gw, &sid).await;
    (sid, name)
}

async fn who(gw: &str, sid: &str) -> String {
    let r = raw("POST", gw, &[ACCEPT, JSON, V, ("mcp-session-id", sid)], WHO).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.answer()["result"]["content"][0]["text"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn admin(base: &str, method: &str, path: &str, token: Option<&str>) -> Reply {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = Vec::new();
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    raw(method, &format!("{base}{path}"), &headers, "").await
}

/// The instances as `/admin/backends` shows them: (url, condition).
async fn instances(base: &str) -> Vec<(String, String)> {
    let r = admin(base, "GET", "/admin/backends", None).await;
    r.json()["backends"][0]["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["url"].as_str().unwrap().to_owned(),
                i["condition"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

async fn eventually_instances<F: Fn(&[(String, String)]) -> bool>(base: &str, what: &str, f: F) {
    let t0 = Instant::now();
    loop {
        let now = instances(base).await;
        if f(&now) {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_reports_drains_and_guards_its_routes() {
    let (a, b) = (backend("alpha").await, backend("beta").await);
    let dir = Scratch::new("admin");
    let file = dir.file(
        "gw.toml",
        &config(
            &[u(&a), u(&b)],
            "admin_token_env = \"MCPGW_TEST_ADMIN_TOKEN\"",
        ),
    );
    let mut gw =
        GatewayProcess::start_with_env(&["--config", &file], &[("MCPGW_TEST_ADMIN_TOKEN", TOKEN)]);
    let base = admin_base(&mut gw);
    let g = gw.url.clone();

    // Probes stay open; everything else needs the token.
    let r = admin(&base, "GET", "/healthz", None).await;
    assert_eq!((r.status, r.json()["status"].as_str()), (200, Some("ok")));
    let r = admin(&base, "GET", "/readyz", None).await;
    assert_eq!((r.status, r.json()["ready"].as_bool()), (200, Some(true)));
    for (m, p) in [
        ("GET", "/admin/backends"),
        ("GET", "/admin/sessions"),
        ("POST", "/admin/backends/db/instances/0/drain"),
    ] {
        assert_eq!(admin(&base, m, p, None).await.status, 401, "{p}");
        assert_eq!(admin(&base, m, p, Some("wrong")).await.status, 401, "{p}");
    }

    let mut sids = Vec::new();
    for _ in 0..4 {
        sids.push(session(&g).await);
    }
    let r = admin(&base, "GET", "/admin/backends", Some(TOKEN)).await;
    assert_eq!(r.status, 200);
    let list = r.json()["backends"][0].clone();
    assert_eq!(list["name"], "db");
    let total: u64 = list["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            assert_eq!(i["condition"], "healthy");
            i["sessions"].as_u64().unwrap()
        })
        .sum();
    assert_eq!(total, 4);
    let r = admin(&base, "GET", "/admin/sessions", Some(TOKEN)).await;
    assert_eq!(r.json()["total"], 4);
    assert_eq!(r.json()["by_backend"]["db"], 4);
    assert!(
        !r.body
            .windows(sids[0].0.len())
            .any(|w| w == sids[0].0.as_bytes()),
        "no session id is shown"
    );

    // Drain instance 0: new sessions go to the other one only.
    let r = admin(
        &base,
        "POST",
        "/admin/backends/db/instances/0/drain",
        Some(TOKEN),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        (
            r.json()["changed"].as_bool(),
            r.json()["condition"].as_str()
        ),
        (Some(true), Some("draining"))
    );
    for _ in 0..4 {
        assert_eq!(session(&g).await.1, "beta");
    }
    let r = admin(
        &base,
        "POST",
        "/admin/backends/db/instances/0/undrain",
        Some(TOKEN),
    )
    .await;
    assert_eq!(r.json()["changed"].as_bool(), Some(true));
    assert_eq!(
        admin(
            &base,
            "POST",
            "/admin/backends/nope/instances/0/drain",
            Some(TOKEN)
        )
        .await
        .status,
        404
    );
    assert_eq!(
        admin(
            &base,
            "POST",
            "/admin/backends/db/instances/9/drain",
            Some(TOKEN)
        )
        .await
        .status,
        404
    );
    let _ = Value::Null;

    // Both instances dead: not ready.
    drop((a, b));
    let t0 = Instant::now();
    while admin(&base, "GET", "/readyz", None).await.status != 503 {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "readyz never went 503"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    gw.terminate();
    gw.wait_exit(Duration::from_secs(20))
        .expect("exits on SIGTERM");
}

#[test]
fn an_admin_listener_off_loopback_needs_a_token() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mcp-gateway"))
        .args([
            "--upstream",
            "http://127.0.0.1:9/mcp",
            "--admin-listen",
            "0.0.0.0:0",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a loopback address"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_retires_and_replaces_instances_and_a_broken_file_changes_nothing() {
    let (a, b, c) = (
        backend("alpha").await,
        backend("beta").await,
        backend("gamma").await,
    );
    let dir = Scratch::new("reload");
    let file = dir.file("gw.toml", &config(&[u(&a)], ""));
    let mut gw = GatewayProcess::start(&["--config", &file]);
    let base = admin_base(&mut gw);
    let g = gw.url.clone();
    let (s1, on) = session(&g).await;
    assert_eq!(on, "alpha");

    // Added.
    dir.file("gw.toml", &config(&[u(&a), u(&b)], ""));
    gw.signal("HUP");
    assert!(gw.wait_for_count("configuration reloaded", 1));
    eventually_instances(&base, "beta added", |i| {
        i.len() == 2 && i[1].0 == u(&b) && i[1].1 == "healthy"
    })
    .await;
    let mut names = Vec::new();
    for _ in 0..4 {
        names.push(session(&g).await.1);
    }
    assert!(names.iter().any(|n| n == "beta"), "{names:?}");

    // Removed: alpha drains, then goes; its session moves.
    dir.file("gw.toml", &config(&[u(&b)], ""));
    gw.signal("HUP");
    assert!(gw.wait_for_count("configuration reloaded", 2));
    eventually_instances(&base, "alpha removed", |i| i[0].1 == "removed").await;
    assert_eq!(who(&g, &s1).await, "beta");

    // Changed URL: beta drains, gamma comes.
    dir.file("gw.toml", &config(&[u(&c)], ""));
    gw.signal("HUP");
    assert!(gw.wait_for_count("configuration reloaded", 3));
    eventually_instances(&base, "gamma added, beta removed", |i| {
        i.len() == 3 && i[2].0 == u(&c) && i[2].1 == "healthy" && i[1].1 == "removed"
    })
    .await;
    assert_eq!(who(&g, &s1).await, "gamma");

    // A broken file changes nothing.
    let before = instances(&base).await;
    dir.file("gw.toml", "listen = \"127.0.0.1:0\"\n[backend]\nurls = [\n");
    gw.signal("HUP");
    assert!(gw.wait_for_log("configuration not reloaded"));
    assert_eq!(instances(&base).await, before);
    assert_eq!(who(&g, &s1).await, "gamma");
    gw.terminate();
    gw.wait_exit(Duration::from_secs(20))
        .expect("exits on SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_watch_a_changed_file_is_reloaded_without_a_signal() {
    let (a, b) = (backend("alpha").await, backend("beta").await);
    let dir = Scratch::new("watch");
    let file = dir.file("gw.toml", &config(&[u(&a)], "watch = true"));
    let mut gw = GatewayProcess::start(&["--config", &file]);
    let base = admin_base(&mut gw);
    dir.file("gw.toml", &config(&[u(&a), u(&b)], "watch = true"));
    assert!(gw.wait_for_log("trigger=\"file changed\""));
    eventually_instances(&base, "beta added", |i| i.len() == 2).await;
    gw.terminate();
    gw.wait_exit(Duration::from_secs(20))
        .expect("exits on SIGTERM");
}
