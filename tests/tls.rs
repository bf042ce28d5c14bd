//! TLS end to end, through the `mcp-gateway` binary: the rmcp client over
//! HTTPS (a CA made in the test) → the gateway with client certificates
//! required → an rmcp server over HTTPS with a CA of its own, spoken to
//! over HTTP/2 (ALPN). Also: a client certificate from another CA and no
//! certificate at all are refused; a backend whose certificate the gateway
//! cannot verify is a 502 naming the reason; `--check-config`.

#[path = "../examples/support/fixtures.rs"]
mod fixtures;
#[path = "support/pki.rs"]
mod pki;
#[path = "support/process.rs"]
mod process;
use process::GatewayProcess;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use hyper_util::rt::{TokioExecutor, TokioIo};
use pki::{Ca, TempDir};
use rmcp::model::CallToolRequestParams;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::ServiceExt;
use tower::Service;

/// A backend over HTTPS that notes the HTTP version of every request.
struct Backend {
    addr: SocketAddr,
    versions: Arc<Mutex<Vec<http::Version>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn https_backend(tls: Arc<rustls::ServerConfig>) -> Backend {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let versions = Arc::new(Mutex::new(Vec::new()));
    let app = axum::Router::new().nest_service("/mcp", fixtures::service("secure-backend"));
    let seen = versions.clone();
    let task = tokio::spawn(async move {
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let app = app.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(sock).await else {
                    return;
                };
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        seen.lock().unwrap().push(req.version());
                        app.clone().call(req.map(axum::body::Body::new))
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Backend {
        addr,
        versions,
        task,
    }
}

/// The `mcp-gateway` binary, stopped (by pid) when dropped.
struct Gateway {
    child: Child,
    url: String,
}

impl Gateway {
    fn start(args: &[&str]) -> Gateway {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mcp-gateway"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("mcp-gateway listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .to_owned();
        Gateway { child, url }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Setup {
    dir: TempDir,
    gateway_ca: Ca,
    client_ca: Ca,
    backend: Backend,
}

/// Writes the gateway's files; its configuration trusts `backend_ca` for
/// the backend.
async fn setup(backend_ca_trusted: bool) -> (Setup, std::path::PathBuf) {
    let dir = TempDir::new("tls");
    let gateway_ca = Ca::new("gateway CA");
    let client_ca = Ca::new("agents CA");
    let backend_ca = Ca::new("backend CA");
    let backend = https_backend(pki::server_config(
        &backend_ca.server(),
        &[b"h2", b"http/1.1"],
    ))
    .await;
    let (cert, key) = gateway_ca.server().write(&dir.0, "gateway");
    let agents = client_ca.write(&dir.0, "agents-ca.pem");
    let trusted = if backend_ca_trusted {
        backend_ca.write(&dir.0, "backend-ca.pem")
    } else {
        // Some other CA: the backend's certificate is not signed by it.
        Ca::new("unrelated CA").write(&dir.0, "backend-ca.pem")
    };
    let config = dir.0.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            r#"listen = "127.0.0.1:0"
threads = 1

[tls]
cert_file = "{}"
key_file = "{}"
client_ca_file = "{}"

[backend]
name = "secure"
urls = ["https://localhost:{}/mcp"]
ca_file = "backend-ca.pem"
"#,
            cert.display(),
            key.display(),
            agents.display(),
            backend.addr.port()
        ),
    )
    .unwrap();
    let _ = trusted;
    (
        Setup {
            dir,
            gateway_ca,
            client_ca,
            backend,
        },
        config,
    )
}

fn client(tls: rustls::ClientConfig) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .build()
        .unwrap()
}

/// An `initialize` POSTed to `url` with `http`.
async fn initialize(http: &reqwest::Client, url: &str) -> reqwest::Response {
    http.post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#)
        .send()
        .await
        .unwrap()
}

/// A client without TLS settings of its own (the gateway serves plain HTTP).
fn plain_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

#[tokio::test]
async fn rmcp_client_over_https_reaches_an_https_http2_backend_through_the_gateway() {
    let (s, config) = setup(true).await;
    let gw = Gateway::start(&["--config", config.to_str().unwrap()]);
    assert!(gw.url.starts_with("https://127.0.0.1:"), "{}", gw.url);

    // The agent's certificate, signed by the CA the gateway trusts.
    let agent = s
        .client_ca
        .client("billing-agent", "spiffe://acme.example/agent/billing");
    let http = client(pki::client_config(
        &s.gateway_ca,
        Some(&agent),
        &[b"h2", b"http/1.1"],
    ));
    let transport = StreamableHttpClientTransport::with_client(
        http,
        StreamableHttpClientTransportConfig::with_uri(gw.url.clone()),
    );
    let client = ().serve(transport).await.expect("initialize over HTTPS");
    let tools = client.list_all_tools().await.unwrap();
    assert!(tools.iter().any(|t| t.name == "echo"));
    let params: CallToolRequestParams = serde_json::from_value(
        serde_json::json!({"name": "echo", "arguments": {"text": "over TLS"}}),
    )
    .unwrap();
    let r = client.call_tool(params).await.unwrap();
    let text = serde_json::to_value(&r.content).unwrap()[0]["text"].clone();
    assert_eq!(text, "over TLS");
    client.cancel().await.unwrap();

    // The gateway spoke HTTP/2 to the backend: ALPN offered h2 and the
    // backend took it.
    let versions = s.backend.versions.lock().unwrap().clone();
    assert!(!versions.is_empty());
    assert!(
        versions.iter().all(|v| *v == http::Version::HTTP_2),
        "{versions:?}"
    );
}

/// Whether a POST to the gateway with this client TLS config gets any
/// HTTP answer (false: the handshake or the connection failed).
async fn answered(url: &str, tls: rustls::ClientConfig) -> Result<u16, String> {
    let res = client(tls)
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#)
        .send()
        .await;
    res.map(|r| r.status().as_u16()).map_err(|e| {
        let mut s = e.to_string();
        let mut c = std::error::Error::source(&e);
        while let Some(x) = c {
            s.push_str(&format!(": {x}"));
            c = x.source();
        }
        s
    })
}

#[tokio::test]
async fn client_certificates_from_another_ca_or_none_are_refused() {
    let (s, config) = setup(true).await;
    let gw = Gateway::start(&["--config", config.to_str().unwrap()]);
    let stranger = Ca::new("stranger CA").client("mallory", "spiffe://evil.example/x");
    let e = answered(
        &gw.url,
        pki::client_config(&s.gateway_ca, Some(&stranger), &[b"http/1.1"]),
    )
    .await
    .unwrap_err();
    assert!(!e.is_empty());
    let e = answered(
        &gw.url,
        pki::client_config(&s.gateway_ca, None, &[b"http/1.1"]),
    )
    .await
    .unwrap_err();
    assert!(!e.is_empty());
    // And with the right one, the same request is answered (400: a ping
    // without a session; what matters is that TLS let it through).
    let agent = s.client_ca.client("a", "spiffe://acme.example/agent/a");
    let status = answered(
        &gw.url,
        pki::client_config(&s.gateway_ca, Some(&agent), &[b"http/1.1"]),
    )
    .await
    .unwrap();
    assert!((200..500).contains(&status), "{status}");
}

#[tokio::test]
async fn a_backend_certificate_the_gateway_cannot_verify_is_a_502_logged_with_why() {
    let (s, config) = setup(false).await;
    let gw = GatewayProcess::start(&["--config", config.to_str().unwrap()]);
    let agent = s.client_ca.client("a", "spiffe://acme.example/agent/a");
    let http = client(pki::client_config(
        &s.gateway_ca,
        Some(&agent),
        &[b"http/1.1"],
    ));
    let res = initialize(&http, &gw.url).await;
    assert_eq!(res.status(), 502);
    let v: serde_json::Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
    assert_eq!(v["error"]["code"], -32050, "{v}");
    assert_eq!(v["id"], 1, "{v}");
    // The client learns which backend failed; the log says why.
    let msg = v["error"]["message"].as_str().unwrap();
    assert_eq!(msg, "Bad Gateway: backend secure is unreachable", "{msg}");
    assert!(gw.wait_for_log("UnknownIssuer"), "{}", gw.log());
    assert!(s.backend.versions.lock().unwrap().is_empty());
}

fn check_config(dir: &Path, text: &str) -> (bool, String) {
    let file = dir.join("check.toml");
    std::fs::write(&file, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mcp-gateway"))
        .args(["--check-config", "--config", file.to_str().unwrap()])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[tokio::test]
async fn check_config_accepts_a_good_file_and_names_what_is_wrong_in_a_bad_one() {
    let (s, config) = setup(true).await;
    let good = std::fs::read_to_string(&config).unwrap();
    let (ok, out) = check_config(&s.dir.0, &good);
    assert!(ok, "{out}");
    assert!(out.contains("configuration OK"), "{out}");

    // A key file that does not exist.
    let bad = good.replace("gateway.key", "missing.key");
    let (ok, out) = check_config(&s.dir.0, &bad);
    assert!(!ok);
    assert!(
        out.contains("key_file") && out.contains("missing.key"),
        "{out}"
    );

    // A backend CA file that does not exist: named with its key and line.
    let bad = good.replace("backend-ca.pem", "nope.pem");
    let (ok, out) = check_config(&s.dir.0, &bad);
    assert!(!ok);
    assert!(
        out.contains("backend.ca_file") && out.contains("nope.pem"),
        "{out}"
    );

    // A certificate file that holds no certificate.
    std::fs::write(s.dir.0.join("empty.pem"), "").unwrap();
    let bad = good.replace("agents-ca.pem", "empty.pem");
    let (ok, out) = check_config(&s.dir.0, &bad);
    assert!(!ok);
    assert!(
        out.contains("client_ca_file") && out.contains("no certificate"),
        "{out}"
    );
}

#[test]
fn help_and_version_explain_the_binary() {
    let out = Command::new(env!("CARGO_BIN_EXE_mcp-gateway"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "--upstream",
        "--path",
        "--config",
        "--check-config",
        "--allow-host",
        "--allow-origin",
        "--threads",
        "--busy-poll-us",
        "--header-timeout-secs",
        "--client-header-secs",
        "--client-idle-secs",
        "--upstream-connect-ms",
        "--upstream-first-byte-secs",
        "--upstream-idle-secs",
        "--session-idle-secs",
        "--session-max-secs",
        "--sse-keepalive-secs",
        "--shutdown-secs",
        "--trusted-proxy",
        "--cors-origin",
        "--max-connections",
        "--max-connections-per-client",
        "--no-access-log",
        "--http1-server",
        "--tls-cert",
        "--tls-key",
        "--client-ca",
    ] {
        assert!(help.contains(flag), "--help does not explain {flag}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_mcp-gateway"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("mcp-gateway 0."));
    // A bad flag names itself, exit code 2.
    let out = Command::new(env!("CARGO_BIN_EXE_mcp-gateway"))
        .args(["--upstream", "http://127.0.0.1:1/mcp", "--threads", "zero"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--threads"));
}

/// Writes a gateway configuration (plain HTTP towards the client) in
/// `dir` for a backend at `port`, with `backend_keys` in `[backend]`.
fn plain_config(dir: &Path, port: u16, backend_keys: &str) -> std::path::PathBuf {
    let config = dir.join("gateway-plain.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nthreads = 1\n\n[backend]\nurls = [\"https://localhost:{port}/mcp\"]\n{backend_keys}\n"
        ),
    )
    .unwrap();
    config
}

#[tokio::test]
async fn a_backend_that_wants_a_client_certificate_gets_the_configured_one() {
    let dir = TempDir::new("backend-mtls");
    let backend_ca = Ca::new("backend CA");
    let gateway_clients = Ca::new("gateway clients CA");
    let backend = https_backend(pki::server_config_mtls(
        &backend_ca.server(),
        &gateway_clients,
        &[b"h2", b"http/1.1"],
    ))
    .await;
    backend_ca.write(&dir.0, "backend-ca.pem");
    gateway_clients
        .client("gateway", "spiffe://acme.example/gateway")
        .write(&dir.0, "gateway-client");
    let raw_initialize = |url: String| async move {
        let res = initialize(&plain_client(), &url).await;
        let status = res.status().as_u16();
        (status, res.text().await.unwrap())
    };

    // With the client certificate: the backend answers.
    let with = plain_config(
        &dir.0,
        backend.addr.port(),
        "ca_file = \"backend-ca.pem\"\nclient_cert_file = \"gateway-client.crt\"\nclient_key_file = \"gateway-client.key\"",
    );
    let gw = Gateway::start(&["--config", with.to_str().unwrap()]);
    let (status, body) = raw_initialize(gw.url.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("secure-backend"), "{body}");
    drop(gw);

    // Without it: the backend refuses the handshake, a 502.
    let without = plain_config(&dir.0, backend.addr.port(), "ca_file = \"backend-ca.pem\"");
    let gw = Gateway::start(&["--config", without.to_str().unwrap()]);
    let (status, body) = raw_initialize(gw.url.clone()).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("-32050"), "{body}");
    // (With TLS 1.3 the client learns of the refusal only when it sends,
    // so the reason may read as a closed stream rather than the alert.)
}

#[tokio::test]
async fn insecure_skip_verify_reaches_a_backend_whose_certificate_is_not_trusted() {
    let (s, _) = setup(false).await;
    let config = plain_config(
        &s.dir.0,
        s.backend.addr.port(),
        "insecure_skip_verify = true",
    );
    let gw = Gateway::start(&["--config", config.to_str().unwrap()]);
    // A plain-HTTP gateway here: the client side needs no TLS.
    let res = initialize(&plain_client(), &gw.url).await;
    assert_eq!(res.status(), 200);
    assert!(!s.backend.versions.lock().unwrap().is_empty());
}
