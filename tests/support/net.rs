//! Helpers the integration tests share: servers on 127.0.0.1:0 that stop
//! when dropped, and a raw HTTP client for wire-level checks.
// Each test crate uses a different subset.
#![allow(dead_code)]

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// A server; stopped when dropped (listener closed, idle connections
/// closed, requests in progress finished), so no test leaves one behind.
pub struct Served {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Serves `app` on an ephemeral loopback port as the `mcp-gateway` binary
/// does (`mcp_gateway::serve`), on one listener of this runtime. The
/// HTTP/1.1 server is hyper, or the built-in one when `MCPGW_TEST_HTTP1`
/// is `builtin` (CI runs the integration tests with both).
pub async fn serve(app: axum::Router) -> Served {
    // reqwest (rmcp's client) is built without a TLS provider of its own
    // (the project uses ring, not aws-lc-rs): ring becomes the process
    // default before any test makes a client.
    let _ = rustls::crypto::ring::default_provider().install_default();
    use mcp_gateway::serve::{bind_per_core, serve_per_core_with, Http1Server, ServeOptions};
    let listeners = bind_per_core("127.0.0.1:0".parse().unwrap(), 1).unwrap();
    let addr = listeners[0].local_addr().unwrap();
    let http1 = match std::env::var("MCPGW_TEST_HTTP1").as_deref() {
        Ok("builtin") => Http1Server::Builtin,
        _ => Http1Server::Hyper,
    };
    let opts = ServeOptions::default().http1(http1);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let stopped = async {
        let _ = stopped.await;
    };
    tokio::spawn(async move {
        let _ = serve_per_core_with(listeners, app, stopped, opts).await;
    });
    Served {
        addr,
        stop: Some(stop),
    }
}

/// The `/mcp` URL of a server.
pub fn url(s: &Served) -> String {
    format!("http://{}/mcp", s.addr)
}

/// A whole HTTP response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// Reads `res` to the end.
    pub async fn read(res: http::Response<hyper::body::Incoming>) -> Reply {
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            headers,
            body,
        }
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value (`""` when absent).
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap_or("").to_owned())
            .unwrap_or_default()
    }

    /// The body as JSON (`Null` if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The JSON-RPC error code of a JSON body.
    pub fn error_code(&self) -> Option<i64> {
        self.json()["error"]["code"].as_i64()
    }

    /// The JSON-RPC messages of a JSON or SSE body.
    pub fn messages(&self) -> Vec<Value> {
        let text = String::from_utf8_lossy(&self.body);
        if text.trim_start().starts_with('{') {
            return vec![self.json()];
        }
        text.split("\n\n")
            .filter_map(|ev| {
                let data: Vec<&str> = ev
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(|d| d.strip_prefix(' ').unwrap_or(d))
                    .collect();
                serde_json::from_str(&data.join("\n")).ok()
            })
            .collect()
    }

    /// The message answering a request (the one with an id), JSON or SSE.
    pub fn answer(&self) -> Value {
        self.messages()
            .into_iter()
            .find(|m| m.get("id").is_some())
            .unwrap_or(Value::Null)
    }

    /// The `WWW-Authenticate` header.
    pub fn www(&self) -> String {
        self.headers
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    }
}

/// One request with `headers` and `body`, read to the end.
pub async fn raw(method: &str, url: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = client
        .request(
            req.body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
                .unwrap(),
        )
        .await
        .unwrap();
    Reply::read(res).await
}

/// `Content-Type: application/json`.
pub const JSON: (&str, &str) = ("content-type", "application/json");
/// The `Accept` every MCP POST sends.
pub const ACCEPT: (&str, &str) = ("accept", "application/json, text/event-stream");
/// `MCP-Protocol-Version: 2025-11-25`.
pub const V: (&str, &str) = ("mcp-protocol-version", "2025-11-25");

/// A raw session: `init` (an `initialize` body), then
/// `notifications/initialized`; its id.
pub async fn open_session(url: &str, init: &str) -> String {
    let r = raw("POST", url, &[JSON, ACCEPT], init).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let sid = r.headers["mcp-session-id"].to_str().unwrap().to_owned();
    let n = raw(
        "POST",
        url,
        &[JSON, ACCEPT, V, ("mcp-session-id", &sid)],
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
    )
    .await;
    assert_eq!(n.status, 202);
    sid
}
