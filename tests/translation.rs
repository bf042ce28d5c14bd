//! The rmcp client through the gateway to servers of every transport the
//! gateway translates: `@modelcontextprotocol/server-everything` over
//! stdio and over legacy HTTP+SSE (npm), and the Python SDK's legacy SSE
//! server (PyPI `mcp`). Listing, calls, 50 concurrent calls of 20 progress
//! notifications each (none lost), sampling and elicitation round trips,
//! `DELETE`; 2025-11-25 sessions and 2026-07-28 stateless calls.
//!
//! The peers come from the registries: `scripts/translation.sh` installs
//! them and runs these tests with `--ignored`, naming them in
//! `MCPGW_NODE`, `MCPGW_EVERYTHING` (server-everything's `dist/index.js`)
//! and `MCPGW_PYTHON` (an interpreter with `mcp`).
#![allow(deprecated)]

#[path = "support/net.rs"]
mod net;
#[path = "support/process.rs"]
mod process;
#[path = "support/rmcp_client.rs"]
mod rmcp_client;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use process::{GatewayProcess, Scratch};
use rmcp_client::*;

const PEERS: &str = "needs the npm and PyPI peers: run scripts/translation.sh";

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: {PEERS}"))
}

/// A peer server process, killed (by pid) when dropped.
struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cmd` and waits for a line of its output (stdout or stderr,
/// `on_stderr`) holding `needle`; that line.
fn start_peer(cmd: &mut Command, needle: &str, on_stderr: bool) -> (Peer, String) {
    if on_stderr {
        cmd.stderr(Stdio::piped()).stdout(Stdio::null());
    } else {
        cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
    }
    let mut child = cmd.spawn().expect("the peer starts");
    let out: Box<dyn std::io::Read + Send> = if on_stderr {
        Box::new(child.stderr.take().unwrap())
    } else {
        Box::new(child.stdout.take().unwrap())
    };
    let peer = Peer(child);
    let mut lines = BufReader::new(out).lines();
    loop {
        let line = lines.next().expect("the peer printed its address").unwrap();
        if line.contains(needle) {
            // Keep draining so the peer never blocks on a full pipe.
            std::thread::spawn(move || for _ in lines.by_ref() {});
            return (peer, line);
        }
    }
}

/// A free loopback port for a peer that only takes one by number.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn gateway(scratch: &Scratch, backend: &str) -> GatewayProcess {
    let file = scratch.file(
        "gateway.toml",
        &format!(
            "listen = \"127.0.0.1:0\"\n\n[limits]\nprincipal_in_flight = 0\n\n[backend]\n{backend}\n"
        ),
    );
    GatewayProcess::start(&["--config", &file])
}

/// The tool names of a server.
struct Profile {
    echo: (&'static str, Value, &'static str),
    progress: (&'static str, Value),
    sampling: (&'static str, Value),
    elicitation: (&'static str, Value, &'static str),
}

fn everything() -> Profile {
    Profile {
        echo: ("echo", json!({"message": "hi"}), "Echo: hi"),
        progress: (
            "trigger-long-running-operation",
            json!({"duration": 1, "steps": 20}),
        ),
        sampling: (
            "trigger-sampling-request",
            json!({"prompt": "2+2", "maxTokens": 10}),
        ),
        elicitation: ("trigger-elicitation-request", json!({}), "yes please"),
    }
}

fn pylegacy() -> Profile {
    Profile {
        echo: ("echo", json!({"text": "hi"}), "hi"),
        progress: ("progress", json!({"steps": 20})),
        sampling: ("sample", json!({"prompt": "2+2"})),
        elicitation: ("ask_name", json!({}), "hello yes please"),
    }
}

async fn exercise(url: &str, p: &Profile, stateless: bool) {
    let (client, handler) = if stateless {
        connect_stateless(url).await
    } else {
        connect_session(url).await
    };
    let tools = client.list_all_tools().await.unwrap();
    assert!(tools.iter().any(|t| t.name == p.echo.0), "tools listed");
    let t = text_of(&call(&client, p.echo.0, p.echo.1.clone()).await);
    assert!(t.contains(p.echo.2), "echo: {t}");
    progress_calls(
        &client,
        &handler,
        &[(p.progress.0, p.progress.1.clone())],
        20,
    )
    .await;
    let s =
        serde_json::to_string(&call(&client, p.sampling.0, p.sampling.1.clone()).await).unwrap();
    assert!(s.contains("echo:"), "sampling round trip: {s}");
    let e = serde_json::to_string(&call(&client, p.elicitation.0, p.elicitation.1.clone()).await)
        .unwrap();
    assert!(e.contains(p.elicitation.2), "elicitation round trip: {e}");
    client.cancel().await.unwrap();
}

async fn no_children_left(gw: &GatewayProcess) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !process::children_of(gw.pid()).is_empty() {
        assert!(std::time::Instant::now() < deadline, "children left");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs the npm and PyPI peers: run scripts/translation.sh"]
async fn server_everything_over_stdio() {
    let scratch = Scratch::new("tr-everything-stdio");
    let gw = gateway(
        &scratch,
        &format!(
            "command = [{:?}, {:?}, \"stdio\"]",
            env("MCPGW_NODE"),
            env("MCPGW_EVERYTHING")
        ),
    );
    exercise(&gw.url, &everything(), false).await;
    exercise(&gw.url, &everything(), true).await;
    // The stateless caller's upstream session lives on until idle; the
    // session's own child went with its DELETE.
    assert!(gw.log().contains("backend process stopped"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs the npm and PyPI peers: run scripts/translation.sh"]
async fn server_everything_over_legacy_sse() {
    let port = free_port();
    let (_peer, _) = start_peer(
        Command::new(env("MCPGW_NODE"))
            .args([env("MCPGW_EVERYTHING").as_str(), "sse"])
            .env("PORT", port.to_string()),
        "running on port",
        true,
    );
    let scratch = Scratch::new("tr-everything-sse");
    let gw = gateway(
        &scratch,
        &format!("urls = [\"http://127.0.0.1:{port}/sse\"]\ntransport = \"sse\""),
    );
    exercise(&gw.url, &everything(), false).await;
    exercise(&gw.url, &everything(), true).await;
    no_children_left(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs the npm and PyPI peers: run scripts/translation.sh"]
async fn python_legacy_sse_server() {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/peers/legacy_sse_server.py"
    );
    let (_peer, line) = start_peer(
        Command::new(env("MCPGW_PYTHON")).arg(script),
        "legacy sse server on",
        false,
    );
    let url = line.rsplit(' ').next().unwrap().to_owned();
    let scratch = Scratch::new("tr-python-sse");
    let gw = gateway(&scratch, &format!("urls = [{url:?}]\ntransport = \"sse\""));
    exercise(&gw.url, &pylegacy(), false).await;
    exercise(&gw.url, &pylegacy(), true).await;
}
