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

#[tokio::test]
async fn refused_connection_is_502_with_json_rpc_error() {
    // Bind then drop a listener to get a port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let up =
        HttpUpstream::new(&format!("http://127.0.0.1:{port}/mcp"), Default::default()).unwrap();
    let res = up
        .oneshot(Request::post("/mcp").body(Body::from("{}")).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), 502);
    let v: serde_json::Value =
        serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(v["error"]["code"], -32050);
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
    let up = HttpUpstream::new(
        &format!("http://{addr}/mcp"),
        HttpUpstreamConfig {
            response_timeout: Duration::from_millis(200),
            ..Default::default()
        },
    )
    .unwrap();
    let res = up
        .oneshot(Request::post("/mcp").body(Body::from("{}")).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), 504);
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
    let up = HttpUpstream::new(
        "http://127.0.0.1:9/mcp",
        HttpUpstreamConfig {
            response_timeout: Duration::from_millis(100),
            ..Default::default()
        },
    )
    .unwrap()
    .with_credentials(Arc::new(Stuck), "stuck");
    let res = up
        .oneshot(Request::post("/mcp").body(Body::from("{}")).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), 504);
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
