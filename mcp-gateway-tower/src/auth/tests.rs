//! Tests of authentication.

use super::*;
use tower::ServiceExt;

fn echo_principal(
) -> impl Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future = impl Send> + Clone
{
    tower::service_fn(|req: Request<Body>| async move {
        let who = req
            .extensions()
            .get::<Principal>()
            .map_or("anonymous".to_owned(), |p| p.subject().to_owned());
        let leaked = req.headers().contains_key(header::AUTHORIZATION)
            || req.headers().contains_key(X_API_KEY);
        Ok::<_, Infallible>(Response::new(Body::from(format!("{who} leaked={leaked}"))))
    })
}

async fn send(layer: &AuthLayer, req: Request<Body>) -> (u16, String, Option<String>) {
    use http_body_util::BodyExt;
    let res = layer.layer(echo_principal()).oneshot(req).await.unwrap();
    let status = res.status().as_u16();
    let www = res
        .headers()
        .get(header::WWW_AUTHENTICATE)
        .map(|v| v.to_str().unwrap().to_owned());
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned(), www)
}

fn layer() -> AuthLayer {
    let keys = ApiKeys::new()
        .with_key("k-alice", Principal::builder("alice").build())
        .with_hash(
            &ApiKeys::hash("k-bob"),
            Principal::builder("bob").scopes(["mcp"]).build(),
        )
        .unwrap();
    AuthLayer::new(
        keys,
        AuthConfig {
            resource_metadata: Some(
                "http://127.0.0.1/.well-known/oauth-protected-resource/mcp".into(),
            ),
            ..Default::default()
        },
    )
}

#[tokio::test]
async fn api_keys_authenticate_and_never_travel_on() {
    let l = layer();
    let (s, body, _) = send(
        &l,
        Request::post("/mcp")
            .header("x-api-key", "k-alice")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!((s, body.as_str()), (200, "alice leaked=false"));
    let (s, body, _) = send(
        &l,
        Request::post("/mcp")
            .header("authorization", "Bearer k-bob")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!((s, body.as_str()), (200, "bob leaked=false"));
}

#[tokio::test]
async fn missing_and_wrong_credentials_are_401_with_a_challenge() {
    let l = layer();
    let (s, body, www) = send(&l, Request::post("/mcp").body(Body::empty()).unwrap()).await;
    assert_eq!(s, 401);
    assert!(body.contains("-32000"), "{body}");
    assert_eq!(
        www.unwrap(),
        "Bearer resource_metadata=\"http://127.0.0.1/.well-known/oauth-protected-resource/mcp\""
    );
    let (s, _, www) = send(
        &l,
        Request::post("/mcp")
            .header("x-api-key", "k-mallory")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(s, 401);
    assert!(www.unwrap().contains("error=\"invalid_token\""));
}

#[tokio::test]
async fn query_string_tokens_are_refused() {
    let l = layer();
    let (s, _, www) = send(
        &l,
        Request::post("/mcp?access_token=k-alice")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(s, 400);
    assert!(www.unwrap().contains("invalid_request"));
}

#[tokio::test]
async fn missing_scope_is_403_insufficient_scope() {
    let keys = ApiKeys::new()
        .with_key("k-alice", Principal::builder("alice").build())
        .with_key("k-bob", Principal::builder("bob").scopes(["mcp"]).build());
    let l = AuthLayer::new(
        keys,
        AuthConfig {
            required_scopes: vec!["mcp".into()],
            ..Default::default()
        },
    );
    let req = |k: &str| {
        Request::post("/mcp")
            .header("x-api-key", k)
            .body(Body::empty())
            .unwrap()
    };
    let (s, _, www) = send(&l, req("k-alice")).await;
    assert_eq!(s, 403);
    let www = www.unwrap();
    assert!(www.contains("error=\"insufficient_scope\""), "{www}");
    assert!(www.contains("scope=\"mcp\""), "{www}");
    assert_eq!(send(&l, req("k-bob")).await.0, 200);
}

#[tokio::test]
async fn client_certificates_name_the_principal() {
    let l = AuthLayer::new(
        AuthChain::new()
            .with(ClientCertAuthenticator::new().roles(["service"]))
            .with(ApiKeys::new()),
        AuthConfig::default(),
    );
    let mut req = Request::post("/mcp").body(Body::empty()).unwrap();
    req.extensions_mut().insert(PeerCertificate {
        der: Arc::from(&b"cert"[..]),
        common_name: Some("billing-agent".into()),
        sans: vec![],
    });
    let (s, body, _) = send(&l, req).await;
    assert_eq!((s, body.as_str()), (200, "billing-agent leaked=false"));
}

#[test]
fn bearer_tokens_and_jwt_shape() {
    let token = |v: &[u8]| {
        let mut req = Request::new(());
        req.headers_mut()
            .insert(header::AUTHORIZATION, HeaderValue::from_bytes(v).unwrap());
        let (parts, ()) = req.into_parts();
        bearer_token(&parts).map(str::to_owned)
    };
    assert_eq!(token(b"Bearer abc").as_deref(), Some("abc"));
    assert_eq!(token(b"bEaReR   abc \t").as_deref(), Some("abc"));
    assert_eq!(token(b"Bearer"), None);
    assert_eq!(token(b"Bearer    "), None);
    assert_eq!(token(b"Basic abc"), None);
    assert_eq!(token(b"Bearerx abc"), None);
    // Header values may carry obs-text; a token never does.
    assert_eq!(token(b"Bearer ab\xffc"), None);
    assert_eq!(token("Bearer ab\u{e9}".as_bytes()), None);
    let (parts, ()) = Request::new(()).into_parts();
    assert_eq!(bearer_token(&parts), None);

    assert!(looks_like_jwt("eyJh.eyJp.sig"));
    assert!(looks_like_jwt("eyJ.."));
    assert!(!looks_like_jwt("eyJh.eyJp"));
    assert!(!looks_like_jwt("eyJh.eyJp.sig.x"));
    assert!(!looks_like_jwt("abc.def.ghi"));
}

#[test]
fn hashes_and_constant_time_compare() {
    assert_eq!(
        ApiKeys::hash("abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert!(ApiKeys::new()
        .with_hash("zz", Principal::builder("x").build())
        .is_err());
    assert!(constant_time_eq(b"same", b"same"));
    assert!(!constant_time_eq(b"same", b"sane"));
    assert!(!constant_time_eq(b"same", b"sam"));
}
