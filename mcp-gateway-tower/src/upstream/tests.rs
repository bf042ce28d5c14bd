//! Tests of the upstream services.

use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Request};
use mcp_gateway_core::Principal;
use tower::ServiceExt;

use super::credentials::CredentialProvider;
use super::headers::strip_hop_by_hop;
use super::*;
use crate::body::Body;
use http_body_util::BodyExt;

#[test]
fn hop_by_hop_headers_and_those_connection_names_are_stripped() {
    let mut h = HeaderMap::new();
    h.insert(
        header::CONNECTION,
        HeaderValue::from_static("x-trace, Keep-Alive"),
    );
    h.insert("x-trace", HeaderValue::from_static("1"));
    h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
    h.insert("proxy-connection", HeaderValue::from_static("close"));
    h.insert(header::TE, HeaderValue::from_static("trailers"));
    h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
    h.insert(
        header::TRANSFER_ENCODING,
        HeaderValue::from_static("chunked"),
    );
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert("mcp-session-id", HeaderValue::from_static("abc"));
    strip_hop_by_hop(&mut h);
    let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
    left.sort_unstable();
    assert_eq!(left, ["content-type", "mcp-session-id"]);

    // Nothing hop-by-hop: the map is left as it was.
    let before = h.clone();
    strip_hop_by_hop(&mut h);
    assert_eq!(h, before);
}

/// Both HTTP clients: every behaviour below holds for the built-in pool
/// (`http://` by default) and for hyper (`https://`, HTTP/2, or chosen).
const CLIENTS: [HttpClient; 2] = [HttpClient::Auto, HttpClient::Hyper];

fn upstream(url: &str, client: HttpClient, cfg: HttpUpstreamConfig) -> HttpUpstream {
    let up = HttpUpstream::new(url, cfg.client(client)).unwrap();
    assert_eq!(up.uses_hyper(), client == HttpClient::Hyper, "{client:?}");
    up
}

async fn json_of(res: http::Response<Body>) -> serde_json::Value {
    serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap()
}

/// A hyper server on 127.0.0.1 answering with `answer`; its address.
async fn backend<F>(answer: F) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>)
where
    F: Fn(http::Request<hyper::body::Incoming>) -> http::Response<String>
        + Clone
        + Send
        + Sync
        + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let res = answer(req);
                    async move { Ok::<_, std::convert::Infallible>(res) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(sock), svc)
                .await;
            });
        }
    });
    (addr, task)
}

#[tokio::test]
async fn refused_connection_is_502_naming_the_backend_not_its_address() {
    // Bind then drop a listener to get a port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    for client in CLIENTS {
        let up = upstream(
            &format!("http://127.0.0.1:{port}/mcp"),
            client,
            Default::default(),
        )
        .named("weather");
        let res = up
            .oneshot(Request::post("/mcp").body(Body::from("{}")).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), 502, "{client:?}");
        // The cause, with the address, is for the log and the audit record.
        let detail = res.extensions().get::<UpstreamFailure>().unwrap().0.clone();
        assert!(
            detail.to_lowercase().contains("refused") && detail.contains(&port.to_string()),
            "{client:?}: {detail}"
        );
        let text = String::from_utf8(
            http_body_util::BodyExt::collect(res.into_body())
                .await
                .unwrap()
                .to_bytes()
                .to_vec(),
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["error"]["code"], -32050, "{client:?}");
        assert_eq!(
            v["error"]["message"], "Bad Gateway: backend weather is unreachable",
            "{client:?}"
        );
        for leak in ["127.0.0.1", &port.to_string(), "refused", "os error"] {
            assert!(
                !text.to_lowercase().contains(leak),
                "{client:?} leaks {leak}: {text}"
            );
        }
    }
}

#[tokio::test]
async fn silent_backend_is_504() {
    // Accepts connections, never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            conns.push(s);
        }
    });
    for client in CLIENTS {
        let up = upstream(
            &format!("http://{addr}/mcp"),
            client,
            HttpUpstreamConfig::default().response_timeout(Duration::from_millis(200)),
        );
        let res = up
            .oneshot(Request::post("/mcp").body(Body::from("{}")).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), 504, "{client:?}");
        let v = json_of(res).await;
        assert_eq!(v["error"]["code"], -32051, "{client:?}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains("backend default") && !msg.contains(&addr.port().to_string()),
            "{client:?}: {msg}"
        );
    }
    hold.abort();
}

#[tokio::test]
async fn a_credential_lookup_that_never_ends_is_504_within_the_response_timeout() {
    struct Stuck;
    impl CredentialProvider for Stuck {
        fn credentials<'a>(
            &'a self,
            _: Option<&'a Principal>,
            _: &'a str,
        ) -> mcp_gateway_core::Answer<'a, Result<HeaderMap, mcp_gateway_core::GatewayError>>
        {
            mcp_gateway_core::Answer::pending(std::future::pending())
        }
    }
    for client in CLIENTS {
        let up = upstream(
            "http://127.0.0.1:9/mcp",
            client,
            HttpUpstreamConfig::default().response_timeout(Duration::from_millis(100)),
        )
        .with_credentials(Arc::new(Stuck), "stuck");
        let res = up
            .oneshot(Request::post("/mcp").body(Body::from("{}")).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), 504, "{client:?}");
    }
}

#[tokio::test]
async fn a_redirect_is_a_502_that_is_not_followed() {
    let (addr, task) = backend(|_req| {
        http::Response::builder()
            .status(307)
            .header("location", "https://elsewhere.example/mcp")
            .body(String::new())
            .unwrap()
    })
    .await;
    for client in CLIENTS {
        let up = upstream(&format!("http://{addr}/mcp"), client, Default::default());
        let mut req = Request::post("/mcp").body(Body::from("{}")).unwrap();
        let body = bytes::Bytes::from_static(br#"{"jsonrpc":"2.0","id":5,"method":"ping"}"#);
        let envelope = mcp_gateway_core::Envelope::parse(body.clone()).unwrap();
        req.extensions_mut()
            .insert(mcp_gateway_core::McpRequest::new(
                body,
                envelope,
                mcp_gateway_core::ProtocolVersion::V2025_11_25,
                true,
            ));
        let res = up.oneshot(req).await.unwrap();
        assert_eq!(res.status(), 502, "{client:?}");
        let v = json_of(res).await;
        assert_eq!(v["error"]["code"], -32050, "{client:?}");
        assert_eq!(v["id"], 5, "{client:?}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains("redirect") && !msg.contains("elsewhere.example"),
            "{client:?}: {msg}"
        );
    }
    task.abort();
}

#[tokio::test]
async fn host_path_prefix_query_and_headers_are_rewritten_for_the_backend() {
    // The backend echoes what reached it.
    let (addr, task) = backend(|req| {
        let h = req.headers();
        let seen = serde_json::json!({
            "host": h.get("host").map(|v| v.to_str().unwrap()),
            "target": req.uri().path_and_query().map(|p| p.as_str()),
            "authorization": h.get("authorization").map(|v| v.to_str().unwrap()),
            "cookie": h.get("cookie").is_some(),
            "x-private": h.get("x-private").is_some(),
            "x-backend-key": h.get("x-backend-key").map(|v| v.to_str().unwrap()),
            "version": format!("{:?}", req.version()),
        });
        http::Response::builder()
            .header("content-type", "application/json")
            .header("connection", "keep-alive, x-hop")
            .header("x-hop", "1")
            .body(seen.to_string())
            .unwrap()
    })
    .await;
    for client in CLIENTS {
        for (url, incoming, target) in [
            ("/api/v1/mcp", "/mcp?tenant=a", "/api/v1/mcp?tenant=a"),
            ("/api/v1/mcp?key=k", "/mcp?tenant=a", "/api/v1/mcp?key=k"),
        ] {
            let up = upstream(&format!("http://{addr}{url}"), client, Default::default())
                .with_header(
                    HeaderName::from_static("x-backend-key"),
                    HeaderValue::from_static("secret"),
                );
            let req = Request::post(incoming)
                .header("host", "gateway.example")
                .header("authorization", "Bearer client-token")
                .header("cookie", "a=b")
                .header("connection", "x-private")
                .header("x-private", "1")
                .body(Body::from("{}"))
                .unwrap();
            let res = up.oneshot(req).await.unwrap();
            assert_eq!(res.status(), 200, "{client:?}");
            assert!(res.headers().get("x-hop").is_none(), "{client:?}");
            assert!(res.headers().get("connection").is_none(), "{client:?}");
            let v = json_of(res).await;
            assert_eq!(v["host"], addr.to_string(), "{client:?}");
            assert_eq!(v["target"], target, "{client:?}");
            assert_eq!(v["authorization"], serde_json::Value::Null, "{client:?}");
            assert_eq!(v["cookie"], false, "{client:?}");
            assert_eq!(v["x-private"], false, "{client:?}");
            assert_eq!(v["x-backend-key"], "secret", "{client:?}");
            assert_eq!(v["version"], "HTTP/1.1", "{client:?}");
        }
    }
    task.abort();
}

#[tokio::test]
async fn http2_with_prior_knowledge_reaches_an_h2c_backend() {
    let (addr, task) = backend(|req| http::Response::new(format!("{:?}", req.version()))).await;
    let up = HttpUpstream::new(
        &format!("http://{addr}/mcp"),
        HttpUpstreamConfig::default().http2_prior_knowledge(true),
    )
    .unwrap();
    assert!(up.uses_hyper());
    let res = up
        .oneshot(Request::post("/mcp").body(Body::from("{}")).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // The client's hop keeps its own version; the backend saw HTTP/2.
    assert_eq!(res.version(), http::Version::HTTP_11);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "HTTP/2.0");
    task.abort();
}

#[test]
fn urls_are_checked_and_ipv6_literals_kept_whole() {
    let up = HttpUpstream::new("http://[::1]:8080/mcp", Default::default()).unwrap();
    assert_eq!(up.authority(), "[::1]:8080");
    let up = HttpUpstream::new(
        "http://[::1]:8080/mcp",
        HttpUpstreamConfig::default().client(HttpClient::Hyper),
    )
    .unwrap();
    assert_eq!(
        up.target(&"/mcp?x=1".parse().unwrap()).to_string(),
        "http://[::1]:8080/mcp?x=1"
    );
    for (bad, why) in [
        ("ftp://h/mcp", "unsupported scheme"),
        ("127.0.0.1:9/mcp", "invalid URL"),
        ("/mcp", "needs a scheme"),
        ("http://user:pw@h/mcp", "credentials in the URL"),
        ("http://h /mcp", "invalid URL"),
    ] {
        let e = HttpUpstream::new(bad, Default::default()).unwrap_err();
        assert!(e.to_string().contains(why), "{bad}: {e}");
    }
}

#[test]
fn hop_by_hop_and_credentials_are_stripped() {
    let mut h = HeaderMap::new();
    h.insert(header::CONNECTION, "close, x-private".parse().unwrap());
    h.insert("x-private", "1".parse().unwrap());
    h.insert("keep-alive", "timeout=5".parse().unwrap());
    h.insert("mcp-session-id", "abc".parse().unwrap());
    strip_hop_by_hop(&mut h);
    assert!(h.get("x-private").is_none());
    assert!(h.get("keep-alive").is_none());
    assert!(h.get(header::CONNECTION).is_none());
    assert_eq!(h.get("mcp-session-id").unwrap(), "abc");
}

#[test]
fn target_keeps_client_query_only_when_url_has_none() {
    let up = HttpUpstream::new("http://127.0.0.1:9/mcp", Default::default()).unwrap();
    assert_eq!(
        up.target(&"/x?a=1".parse().unwrap()).to_string(),
        "/mcp?a=1"
    );
    let up = HttpUpstream::new("http://127.0.0.1:9/mcp?k=v", Default::default()).unwrap();
    assert_eq!(
        up.target(&"/x?a=1".parse().unwrap()).to_string(),
        "/mcp?k=v"
    );
}

#[cfg(feature = "tls")]
#[tokio::test]
async fn a_tls_handshake_that_never_ends_is_bounded_by_the_connect_timeout() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Accepts TCP, never says a TLS word.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            conns.push(s);
        }
    });
    let up = HttpUpstream::new(
        &format!("https://{addr}/mcp"),
        HttpUpstreamConfig::default()
            .connect_timeout(Duration::from_millis(200))
            .response_timeout(Duration::from_secs(60)),
    )
    .unwrap();
    let start = std::time::Instant::now();
    let res = up
        .oneshot(Request::post("/mcp").body(Body::from("{}")).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), 502);
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "bounded by the connect timeout, not the first-byte one"
    );
    let detail = res.extensions().get::<UpstreamFailure>().unwrap().0.clone();
    assert!(detail.contains("connect"), "{detail}");
    hold.abort();
}
