//! Tests of the JSON-RPC layer.

use super::*;
use tower::ServiceExt;

/// A header map of these (name, value) pairs, repeats kept.
fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut m = HeaderMap::new();
    for (k, v) in pairs {
        m.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            http::HeaderValue::from_str(v).unwrap(),
        );
    }
    m
}

#[test]
fn accept_ranges_for_post() {
    let check = |values: &[&str]| {
        let pairs: Vec<_> = values.iter().map(|v| ("accept", *v)).collect();
        accepts_json_and_sse(&headers(&pairs))
    };
    assert_eq!(
        check(&["application/json, text/event-stream"]),
        (true, true)
    );
    assert_eq!(
        check(&["application/json", "text/event-stream"]),
        (true, true)
    );
    assert_eq!(check(&["Application/JSON;q=0.9 , TEXT/*"]), (true, true));
    assert_eq!(check(&["*/*"]), (true, true));
    assert_eq!(check(&["application/*"]), (true, false));
    assert_eq!(check(&["text/event-stream"]), (false, true));
    assert_eq!(check(&["text/html, application/xml"]), (false, false));
    assert_eq!(check(&[]), (false, false));
}

fn svc() -> impl Service<Request<Body>, Response = Response<Body>, Error = Infallible> {
    JsonRpcLayer::default().layer(tower::service_fn(|req: Request<Body>| async move {
        let ok = req.extensions().get::<McpRequest>().is_some() || req.method() != HttpMethod::POST;
        assert!(ok, "POST reached the inner service without McpRequest");
        Ok::<_, Infallible>(Response::new(Body::empty()))
    }))
}

async fn code(req: Request<Body>) -> (u16, Option<i64>) {
    let res = svc().oneshot(req).await.unwrap();
    let status = res.status().as_u16();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let code = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["error"]["code"].as_i64());
    (status, code)
}

fn post(body: &str) -> http::request::Builder {
    let _ = body;
    Request::post("/mcp")
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
}

#[tokio::test]
async fn a_body_in_several_frames_is_read_whole_and_bounded() {
    let frames = |parts: Vec<Bytes>| {
        let frames = parts
            .into_iter()
            .map(|b| Ok::<_, Infallible>(http_body::Frame::data(b)));
        Body::new(http_body_util::StreamBody::new(futures_util::stream::iter(
            frames,
        )))
    };
    let echo = JsonRpcLayer::default().layer(tower::service_fn(|req: Request<Body>| async {
        let body = req.into_body().collect().await.unwrap().to_bytes();
        Ok::<_, Infallible>(Response::new(Body::from(body)))
    }));
    let msg = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    let (a, b) = msg.split_at(17);
    let parts = vec![
        Bytes::from_static(a.as_bytes()),
        Bytes::from_static(b.as_bytes()),
    ];
    let res = echo
        .clone()
        .oneshot(post("").body(frames(parts)).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, msg.as_bytes(), "downstream gets the same bytes");
    // A body not there yet when the request comes in: read when it is.
    let later = futures_util::stream::once(async move {
        tokio::task::yield_now().await;
        Ok::<_, Infallible>(http_body::Frame::data(Bytes::from_static(msg.as_bytes())))
    });
    let res = echo
        .oneshot(
            post("")
                .body(Body::new(http_body_util::StreamBody::new(later)))
                .unwrap(),
        )
        .await
        .unwrap();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        body,
        msg.as_bytes(),
        "a body that comes later is read whole"
    );
    // Over the limit across frames, with no Content-Length: 413.
    let mib = Bytes::from(vec![b' '; 1 << 20]);
    let r = post("").body(frames(vec![mib; 5])).unwrap();
    assert_eq!(code(r).await, (413, Some(-32600)));
}

#[tokio::test]
async fn good_request_passes() {
    let b = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    assert_eq!(
        code(post(b).body(Body::from(b)).unwrap()).await,
        (200, None)
    );
}

#[test]
fn accept_and_content_type_are_read_by_media_type() {
    // Accept ranges with parameters, whitespace, case and wildcards.
    for (accept, want) in [
        ("application/json, text/event-stream", (true, true)),
        (
            " Application/JSON ;q=0.9 ,\tTEXT/event-stream; q=1",
            (true, true),
        ),
        ("application/*,text/*", (true, true)),
        ("*/*;q=0.1", (true, true)),
        ("application/json", (true, false)),
        ("text/event-stream", (false, true)),
        ("application/jsonx, text/event-streams", (false, false)),
        ("", (false, false)),
    ] {
        assert_eq!(
            accepts_json_and_sse(&headers(&[("accept", accept)])),
            want,
            "{accept:?}"
        );
    }
    // Ranges spread over several Accept headers count together.
    let two = headers(&[
        ("accept", "application/json"),
        ("accept", "text/event-stream"),
    ]);
    assert_eq!(accepts_json_and_sse(&two), (true, true));
    assert!(accepts(
        &headers(&[("accept", "text/*")]),
        "text/event-stream"
    ));
    assert!(!accepts(
        &headers(&[("accept", "application/*")]),
        "text/event-stream"
    ));
    let ct =
        |v: &str| check_post_headers(&headers(&[("content-type", v), ("accept", "*/*")])).is_ok();
    assert!(ct("application/json"));
    assert!(ct("Application/Json ; charset=utf-8"));
    assert!(!ct("application/json-seq"));
    assert!(!ct("text/plain; x=application/json"));
}

#[tokio::test]
async fn bad_inputs_get_their_status_and_code() {
    let ping = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    // Content-Type
    let r = Request::post("/mcp")
        .header("content-type", "text/plain")
        .header("accept", "application/json, text/event-stream")
        .body(Body::from(ping))
        .unwrap();
    assert_eq!(code(r).await, (415, Some(-32600)));
    // Accept
    let r = Request::post("/mcp")
        .header("content-type", "application/json")
        .header("accept", "application/json")
        .body(Body::from(ping))
        .unwrap();
    assert_eq!(code(r).await, (406, Some(-32600)));
    // Malformed JSON
    assert_eq!(
        code(post("").body(Body::from("{oops")).unwrap()).await,
        (400, Some(-32700))
    );
    // Wrong JSON-RPC shape
    assert_eq!(
        code(
            post("")
                .body(Body::from(r#"{"jsonrpc":"2.0","id":1}"#))
                .unwrap()
        )
        .await,
        (400, Some(-32600))
    );
    // Batch on 2025-06-18+
    let batch = format!("[{ping}]");
    let r = post("")
        .header("mcp-protocol-version", "2025-06-18")
        .body(Body::from(batch.clone()))
        .unwrap();
    assert_eq!(code(r).await, (400, Some(-32600)));
    // ... but allowed on 2025-03-26
    let r = post("")
        .header("mcp-protocol-version", "2025-03-26")
        .body(Body::from(batch))
        .unwrap();
    assert_eq!(code(r).await, (200, None));
    // Unsupported version
    let r = post("")
        .header("mcp-protocol-version", "1999-01-01")
        .body(Body::from(ping))
        .unwrap();
    assert_eq!(code(r).await, (400, Some(-32022)));
    // Oversized body (declared and streamed)
    let big = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"ping","params":{{"x":"{}"}}}}"#,
        "a".repeat(5 << 20)
    );
    assert_eq!(
        code(post("").body(Body::from(big.clone())).unwrap()).await,
        (413, Some(-32600))
    );
    let r = post("")
        .header("content-length", "10")
        .body(Body::from(big))
        .unwrap();
    assert_eq!(code(r).await.0, 413);
    // Methods
    let r = Request::put("/mcp").body(Body::empty()).unwrap();
    assert_eq!(code(r).await, (405, Some(-32000)));
    let r = Request::get("/mcp")
        .header("accept", "application/json")
        .body(Body::empty())
        .unwrap();
    assert_eq!(code(r).await, (406, Some(-32600)));
    for m in ["GET", "DELETE"] {
        let r = Request::builder()
            .method(m)
            .uri("/mcp")
            .header("accept", "text/event-stream")
            .header("mcp-protocol-version", "2026-07-28")
            .body(Body::empty())
            .unwrap();
        assert_eq!(code(r).await, (405, Some(-32000)), "{m} on 2026-07-28");
    }
}

#[tokio::test]
async fn unsupported_version_answers_the_request_id() {
    let r = post("")
        .header("mcp-protocol-version", "v999.0.0")
        .body(Body::from(
            r#"{"jsonrpc":"2.0","id":301,"method":"tools/list","params":{}}"#,
        ))
        .unwrap();
    let res = svc().oneshot(r).await.unwrap();
    assert_eq!(res.status(), 400);
    let v: serde_json::Value =
        serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(v["id"], 301);
    assert_eq!(v["error"]["code"], -32022);
    assert!(v["error"]["data"]["supported"].as_array().unwrap().len() >= 4);
}

#[tokio::test]
async fn a_discover_in_an_unknown_version_is_the_backends_to_answer() {
    // The backend names the versions it supports, which the gateway's own
    // list might not match: the probe goes on, as a stateless request.
    let r = post("")
        .header("mcp-protocol-version", "v999.0.0")
        .body(Body::from(
            r#"{"jsonrpc":"2.0","id":301,"method":"server/discover","params":{}}"#,
        ))
        .unwrap();
    assert_eq!(code(r).await, (200, None));
}

const STATELESS_CALL: &str = r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"echo","arguments":{},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientInfo":{"name":"t","version":"1"},"io.modelcontextprotocol/clientCapabilities":{}}}}"#;

#[tokio::test]
async fn stateless_header_rules() {
    let ok = post("")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", "echo")
        .body(Body::from(STATELESS_CALL))
        .unwrap();
    assert_eq!(code(ok).await, (200, None));
    let mismatch = post("")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", "other")
        .body(Body::from(STATELESS_CALL))
        .unwrap();
    assert_eq!(code(mismatch).await, (400, Some(-32020)));
    let dup = post("")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", "echo")
        .header("mcp-name", "echo")
        .body(Body::from(STATELESS_CALL))
        .unwrap();
    assert_eq!(code(dup).await, (400, Some(-32020)));
    let no_version_header = post("")
        .header("mcp-method", "tools/call")
        .header("mcp-name", "echo")
        .body(Body::from(STATELESS_CALL))
        .unwrap();
    assert_eq!(code(no_version_header).await, (400, Some(-32020)));
    let b64 = post("")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", "=?base64?ZWNobw==?=")
        .body(Body::from(STATELESS_CALL))
        .unwrap();
    assert_eq!(code(b64).await, (200, None));
}
