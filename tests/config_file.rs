//! The configuration example of `docs/configuration.md`
//! (`examples/gateway.toml`) loads, builds, and does what its comments say
//! against a real rmcp backend.

#[path = "../examples/support/fixtures.rs"]
mod fixtures;
#[path = "support/net.rs"]
mod net;

use std::path::Path;

use mcp_gateway::config::GatewayConfig;
use serde_json::Value;

use net::{raw, serve, url, ACCEPT, JSON};

/// A POST with the MCP content headers plus `headers`: status, headers and
/// the JSON-RPC messages of the (JSON or SSE) body.
async fn post(
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, http::HeaderMap, Vec<Value>) {
    let mut all = vec![JSON, ACCEPT];
    all.extend_from_slice(headers);
    let r = raw("POST", url, &all, body).await;
    let msgs = r.messages();
    (r.status, r.headers, msgs)
}

const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;
const LIST: &str = r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#;

async fn tools_for(gw: &str, key: &str) -> Vec<String> {
    let (s, h, _) = post(gw, &[("x-api-key", key)], INIT).await;
    assert_eq!(s, 200);
    let sid = h["mcp-session-id"].to_str().unwrap().to_owned();
    let (_, _, msgs) = post(
        gw,
        &[
            ("x-api-key", key),
            ("mcp-session-id", &sid),
            ("mcp-protocol-version", "2025-11-25"),
        ],
        LIST,
    )
    .await;
    let result = msgs.iter().find(|m| m.get("result").is_some()).unwrap();
    let mut names: Vec<String> = result["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_configuration_works() {
    let backend_server =
        serve(axum::Router::new().nest_service("/mcp", fixtures::service("demo"))).await;
    let backend = url(&backend_server);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let log = std::env::temp_dir().join(format!("mcpgw-config-audit-{}.jsonl", std::process::id()));
    let text = std::fs::read_to_string(dir.join("gateway.toml"))
        .unwrap()
        .replace("http://127.0.0.1:3001/mcp", &backend)
        .replace("audit/gateway.jsonl", log.to_str().unwrap());
    let cfg = GatewayConfig::parse(&text, &dir).expect("the README example is valid");
    let built = cfg.builder().unwrap();
    assert!(built.policy.is_some() && built.pins.is_some() && built.audit.is_some());
    let audit = built.audit.clone().unwrap();
    let gw_server = serve(built.builder.build().unwrap()).await;
    let gw = url(&gw_server);

    assert_eq!(
        tools_for(&gw, "demo-reader-key").await,
        ["echo", "test_simple_text", "whoami"]
    );
    assert!(tools_for(&gw, "demo-admin-key").await.len() > 10);
    let (s, h, _) = post(&gw, &[], INIT).await;
    assert_eq!(s, 401);
    assert!(h["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("http://127.0.0.1:8080/.well-known/oauth-protected-resource/mcp"));

    // The [audit] section: a JSON Lines file with the calls above.
    audit.flush();
    let lines = std::fs::read_to_string(&log).unwrap();
    let events: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(events
        .iter()
        .any(|e| e["event"] == "session_start" && e["principal"] == "reader-bot"));
    assert!(events
        .iter()
        .any(|e| e["method"] == "tools/list" && e["outcome"] == "ok"));
    assert!(events
        .iter()
        .any(|e| e["outcome"] == "rejected" && e["http_status"] == 401));
    let _ = std::fs::remove_file(&log);
}

#[test]
fn a_bad_file_is_refused_with_line_and_key() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let text = std::fs::read_to_string(dir.join("gateway.toml"))
        .unwrap()
        .replace("leeway_secs = 30", "leeway_secs = 30\nleway = 5");
    let e = GatewayConfig::parse(&text, &dir).unwrap_err();
    let line = text.lines().position(|l| l.starts_with("leway")).unwrap() + 1;
    assert_eq!(e.line, Some(line), "{e}");
    assert!(e.to_string().contains("unknown field `leway`"), "{e}");
}

#[test]
fn the_configuration_docs_show_the_example_file_verbatim() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/configuration.md")).unwrap();
    let file = std::fs::read_to_string(root.join("examples/gateway.toml")).unwrap();
    assert!(
        doc.contains(&format!("```toml\n{file}```")),
        "docs/configuration.md's example differs from examples/gateway.toml"
    );
}

/// Every key of the file format is documented in `docs/configuration.md`.
#[test]
fn every_key_is_documented() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/configuration.md")).unwrap();
    for key in [
        "listen",
        "path",
        "threads",
        "busy_poll_us",
        "header_read_timeout_secs",
        "http1_server",
        "trusted_proxies",
        "access_log",
        "upstream_connect_ms",
        "upstream_first_byte_secs",
        "upstream_idle_secs",
        "session_idle_secs",
        "session_max_secs",
        "sse_keepalive_secs",
        "client_header_secs",
        "client_idle_secs",
        "shutdown_secs",
        "max_sessions",
        "evict_idle_secs",
        "no_eviction",
        "per_client",
        "max_age_secs",
        "principal_session_rate",
        "allow_hosts",
        "allow_origins",
        "cert_file",
        "key_file",
        "client_ca_file",
        "name",
        "urls",
        "ca_file",
        "client_cert_file",
        "client_key_file",
        "admin_listen",
        "admin_token_env",
        "metrics_path",
        "table",
        "password_env",
        "batch_max",
        "flush_ms",
        "backlog",
        "principal_labels",
        "max_label_values",
        "endpoint",
        "sampling_ratio",
        "service_name",
        "resource_attributes",
        "metrics_interval_secs",
        "batch_delay_ms",
        "timeout_ms",
        "watch",
        "balance",
        "failover",
        "drain_timeout_secs",
        "interval_secs",
        "timeout_ms",
        "unhealthy_threshold",
        "healthy_threshold",
        "probe",
        "consecutive_failures",
        "base_ejection_secs",
        "max_ejection_secs",
        "insecure_skip_verify",
        "http2_prior_knowledge",
        "headers",
        "headers_from_env",
        "resource",
        "authorization_servers",
        "required_scopes",
        "allow_anonymous",
        "sha256",
        "subject",
        "tenant",
        "roles",
        "scopes",
        "issuers",
        "audiences",
        "algorithms",
        "leeway_secs",
        "jwks_url",
        "jwks_min_refresh_secs",
        "jwks_max_age_secs",
        "kid",
        "alg",
        "pem_file",
        "pem",
        "secret_env",
        "subject_claim",
        "roles_claim",
        "scopes_claim",
        "tenant_claim",
        "claims",
        "cache_ttl_secs",
        "default",
        "effect",
        "tools",
        "prompts",
        "resources",
        "mode",
        "sink",
        "arguments",
        "max_bytes",
        "keep",
        "overflow",
    ] {
        assert!(
            doc.contains(&format!("`{key}`")),
            "docs/configuration.md lacks `{key}`"
        );
    }
}
