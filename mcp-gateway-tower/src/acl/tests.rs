//! Tests of the ACL layer.

use super::*;
use crate::jsonrpc::JsonRpcLayer;
use tower::ServiceExt;

/// Allows only `get_*` tools, `greeting` prompts and `file:///public/*`.
fn policy(a: &Access<'_>) -> Decision {
    let ok = match a.target {
        Target::Tool(n) => n.starts_with("get_"),
        Target::Prompt(n) => n == "greeting",
        Target::Resource(u) | Target::ResourceTemplate(u) => u.starts_with("file:///public/"),
    };
    if ok {
        Decision::Allow
    } else {
        Decision::Deny(None)
    }
}

async fn send(body: &str) -> (u16, Value, bool) {
    let reached = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let r = reached.clone();
    let backend = tower::service_fn(move |_req: Request<Body>| {
        r.store(true, std::sync::atomic::Ordering::SeqCst);
        async {
            Ok::<_, Infallible>(Response::new(Body::from(
                r#"{"jsonrpc":"2.0","id":1,"result":{}}"#,
            )))
        }
    });
    let svc = JsonRpcLayer::default().layer(AclLayer::new(policy, "b").layer(backend));
    let req = Request::post("/mcp")
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-11-25")
        .body(Body::from(body.to_owned()))
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    let status = res.status().as_u16();
    let b = res.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&b).unwrap_or(Value::Null),
        reached.load(std::sync::atomic::Ordering::SeqCst),
    )
}

#[tokio::test]
async fn every_guarded_method_is_decided_before_forwarding() {
    for (body, allowed) in [
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_x"}}"#,
            true,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"rm_x"}}"#,
            false,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"greeting"}}"#,
            true,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"secrets"}}"#,
            false,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///public/a"}}"#,
            true,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///etc/passwd"}}"#,
            false,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"resources/subscribe","params":{"uri":"file:///public/a"}}"#,
            true,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"resources/subscribe","params":{"uri":"file:///etc/passwd"}}"#,
            false,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"resources/unsubscribe","params":{"uri":"file:///etc/passwd"}}"#,
            false,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"greeting"},"argument":{"name":"a","value":"x"}}}"#,
            true,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"secrets"},"argument":{"name":"a","value":"x"}}}"#,
            false,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/resource","uri":"file:///etc/{x}"},"argument":{"name":"x","value":"p"}}}"#,
            false,
        ),
        (r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#, true),
    ] {
        let (status, v, reached) = send(body).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(reached, allowed, "{body}");
        if !allowed {
            assert_eq!(v["error"]["code"], -32053, "{body}");
            assert_eq!(v["id"], 1, "{body}");
        }
    }
}

#[tokio::test]
async fn a_guarded_call_without_its_target_is_invalid_params() {
    let (_, v, reached) =
        send(r#"{"jsonrpc":"2.0","id":1,"method":"resources/subscribe","params":{}}"#).await;
    assert!(!reached);
    assert_eq!(v["error"]["code"], -32602);
    let (_, v, reached) =
        send(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}"#).await;
    assert!(!reached);
    assert_eq!(v["error"]["code"], -32602);
}
