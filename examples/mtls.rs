//! mTLS: a principal from the verified client certificate.
//!
//! axum serving over rustls with client certificates required; after the
//! handshake the server reads the verified leaf certificate (CN and SANs
//! with x509-parser), puts a `PeerCertificate` in every request's
//! extensions, and the gateway's `ClientCertAuthenticator` turns it into
//! the `Principal` that sessions, policies and the audit log see.
//!
//! ```text
//! cargo run --example mtls --features mtls-example                # serve; prints curl commands
//! cargo run --example mtls --features mtls-example -- --self-test # connect with and without a certificate, check, exit
//! ```
//!
//! A throw-away CA, server and client certificate are generated at start
//! (rcgen) and written to a temporary directory for curl.

#[path = "support/fixtures.rs"]
mod fixtures;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use mcp_gateway_axum::McpGateway;
use mcp_gateway_tower::auth::{AuthConfig, ClientCertAuthenticator, PeerCertificate};
use mcp_gateway_tower::rules::{PolicyConfig, RulePolicy};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use tokio_rustls::rustls::{self, pki_types};
use tower::ServiceExt;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const AGENT_ID: &str = "spiffe://acme.example/agent/billing";

struct Pki {
    ca: pki_types::CertificateDer<'static>,
    server: (pki_types::CertificateDer<'static>, KeyPair),
    client: (pki_types::CertificateDer<'static>, KeyPair),
    ca_pem: String,
    client_pem: (String, String),
}

fn pki() -> Result<Pki, BoxError> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "mcp-gateway demo CA");
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let ca_pem = ca_cert.pem();
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate()?;
    let server_cert =
        CertificateParams::new(vec!["localhost".to_owned()])?.signed_by(&server_key, &issuer)?;

    let mut client_params = CertificateParams::new(Vec::<String>::new())?;
    client_params
        .distinguished_name
        .push(DnType::CommonName, "billing-agent");
    client_params.subject_alt_names = vec![SanType::URI(AGENT_ID.try_into()?)];
    let client_key = KeyPair::generate()?;
    let client_cert = client_params.signed_by(&client_key, &issuer)?;
    let client_pem = (client_cert.pem(), client_key.serialize_pem());
    Ok(Pki {
        ca: ca_cert.der().clone(),
        server: (server_cert.der().clone(), server_key),
        client: (client_cert.der().clone(), client_key),
        ca_pem,
        client_pem,
    })
}

fn key_der(k: &KeyPair) -> pki_types::PrivateKeyDer<'static> {
    pki_types::PrivatePkcs8KeyDer::from(k.serialize_der()).into()
}

/// What the server learned from a verified certificate.
fn peer_certificate(der: &pki_types::CertificateDer<'_>) -> Option<PeerCertificate> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der.as_ref()).ok()?;
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .map(str::to_owned);
    let sans = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|g| match g {
                    GeneralName::URI(s) | GeneralName::DNSName(s) | GeneralName::RFC822Name(s) => {
                        Some(s.to_string())
                    }
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Some(PeerCertificate {
        der: Arc::from(der.as_ref()),
        common_name,
        sans,
    })
}

/// Serves `app` over TLS requiring client certificates signed by `ca`.
async fn serve_tls(pki: &Pki, app: axum::Router) -> Result<SocketAddr, BoxError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.clone())?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()?;
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![pki.server.0.clone()], key_der(&pki.server.1))?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let app = app.clone();
            tokio::spawn(async move {
                let tls = match acceptor.accept(tcp).await {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::info!(error = %e, "TLS handshake refused");
                        return;
                    }
                };
                // Verified by rustls against the CA before we get here.
                let peer = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(peer_certificate);
                let svc = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
                    if let Some(p) = &peer {
                        req.extensions_mut().insert(p.clone());
                    }
                    app.clone().oneshot(req.map(axum::body::Body::new))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

fn gateway() -> Result<axum::Router, BoxError> {
    let policy: PolicyConfig = serde_json::from_value(serde_json::json!({
        "rules": [{"effect": "allow", "subjects": ["spiffe://acme.example/agent/*"], "tools": ["whoami", "echo"]}]
    }))?;
    McpGateway::builder()
        .upstream_service(fixtures::service("mtls-demo"))
        .authenticator(
            Arc::new(ClientCertAuthenticator::new().tenant("acme")),
            AuthConfig::default(),
        )
        .policy(Arc::new(RulePolicy::new(&policy)))
        .build()
}

/// One HTTPS POST with (or without) the client certificate.
async fn post(
    pki: &Pki,
    addr: SocketAddr,
    with_cert: bool,
    session: Option<&str>,
    body: &str,
) -> Result<(u16, Option<String>, String), BoxError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.clone())?;
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let cfg = if with_cert {
        b.with_client_auth_cert(vec![pki.client.0.clone()], key_der(&pki.client.1))?
    } else {
        b.with_no_client_auth()
    };
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(pki_types::ServerName::try_from("localhost")?, tcp)
        .await?;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    let mut req = http::Request::post("/mcp")
        .header("host", format!("localhost:{}", addr.port()))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-11-25");
    if let Some(s) = session {
        req = req.header("mcp-session-id", s);
    }
    let res = tx
        .send_request(req.body(Full::new(Bytes::copy_from_slice(body.as_bytes())))?)
        .await?;
    let status = res.status().as_u16();
    let sid = res
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = String::from_utf8_lossy(&res.into_body().collect().await?.to_bytes()).into_owned();
    Ok((status, sid, text))
}

const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"mtls","version":"1"}}}"#;

async fn self_test(pki: &Pki, addr: SocketAddr) -> Result<(), BoxError> {
    let (status, sid, _) = post(pki, addr, true, None, INIT).await?;
    if status != 200 || sid.is_none() {
        return Err(format!("initialize with a certificate: HTTP {status}").into());
    }
    let sid = sid.as_deref();
    post(
        pki,
        addr,
        true,
        sid,
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
    )
    .await?;
    let (_, _, text) = post(
        pki,
        addr,
        true,
        sid,
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hello over mTLS"}}}"#,
    )
    .await?;
    if !text.contains("hello over mTLS") {
        return Err(format!("allowed tool failed: {text}").into());
    }
    let (_, _, text) = post(
        pki,
        addr,
        true,
        sid,
        r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"test_simple_text","arguments":{}}}"#,
    )
    .await?;
    if !text.contains("-32053") {
        return Err(format!("a tool outside the policy was not refused: {text}").into());
    }
    match post(pki, addr, false, None, INIT).await {
        Ok((s, _, _)) => return Err(format!("a client without a certificate got HTTP {s}").into()),
        Err(e) => println!("without a certificate: refused ({e})"),
    }
    println!("mTLS self-test passed: principal {AGENT_ID} from the certificate; allowed tool ran; other tool refused (-32053)");
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let pki = pki()?;
    let addr = serve_tls(&pki, gateway()?).await?;
    if std::env::args().any(|a| a == "--self-test") {
        return self_test(&pki, addr).await;
    }
    let dir = std::env::temp_dir().join(format!("mcp-gateway-mtls-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("ca.pem"), &pki.ca_pem)?;
    std::fs::write(dir.join("client.pem"), &pki.client_pem.0)?;
    std::fs::write(dir.join("client.key"), &pki.client_pem.1)?;
    let d = dir.display();
    println!("mTLS gateway at https://localhost:{}/mcp", addr.port());
    println!(
        "try: curl --cacert {d}/ca.pem --cert {d}/client.pem --key {d}/client.key https://localhost:{}/mcp \
-H 'content-type: application/json' -H 'accept: application/json, text/event-stream' -d '{INIT}'",
        addr.port()
    );
    let _ = tokio::signal::ctrl_c().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
