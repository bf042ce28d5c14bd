//! Tests of JWT authentication.

use super::*;

#[tokio::test]
async fn a_token_verified_lately_is_decided_at_once_and_no_other() {
    let auth = JwtAuthenticator::with_keys(
        JwtConfig {
            algorithms: vec![Algorithm::HS256],
            ..Default::default()
        },
        vec![JwtKey::hmac(Some("h1"), Algorithm::HS256, b"s3cret").unwrap()],
    );
    let claims = serde_json::json!({"sub": "svc", "exp": now_secs() + 60});
    let good = token(Algorithm::HS256, "h1", b"s3cret", claims.clone());
    let bad = token(Algorithm::HS256, "h1", b"wrong", claims);
    let head = |auth: Option<&str>| {
        let mut req = http::Request::new(());
        if let Some(a) = auth {
            req.headers_mut()
                .insert(http::header::AUTHORIZATION, a.parse().unwrap());
        }
        req.into_parts().0
    };
    // No bearer token: not this authenticator's, at once.
    assert!(matches!(
        auth.authenticate(&head(None)).now().ok(),
        Some(AuthOutcome::NotMine)
    ));
    let good_head = head(Some(&format!("Bearer {good}")));
    // Not seen yet: it needs verifying.
    assert!(!auth.authenticate(&good_head).is_ready());
    assert!(matches!(
        auth.authenticate(&good_head).await,
        AuthOutcome::Authenticated(_)
    ));
    match auth.authenticate(&good_head).now().ok() {
        Some(AuthOutcome::Authenticated(p)) => assert_eq!(p.subject(), "svc"),
        other => panic!("expected the cached principal, got {other:?}"),
    }
    // A bad token is never decided at once, however often it is sent.
    let bad_head = head(Some(&format!("Bearer {bad}")));
    for _ in 0..2 {
        assert!(matches!(
            auth.authenticate(&bad_head).await,
            AuthOutcome::Rejected(_)
        ));
        assert!(!auth.authenticate(&bad_head).is_ready());
    }
}

#[test]
fn recent_tokens_are_told_apart_whole_not_by_their_tag() {
    let mut r = Recent::default();
    let later = Instant::now() + Duration::from_secs(60);
    // Same length, same last 16 bytes: the same tag.
    let (a, b) = ("a.b.0123456789abcdefXYZ", "x.y.0123456789abcdefXYZ");
    assert_eq!(tag(a.as_bytes()), tag(b.as_bytes()));
    let who = |r: &mut Recent, t: &str| r.get(t.as_bytes()).map(|p| p.subject().to_owned());
    let ann = Principal::builder("ann").build();
    r.put(a, &ann, later);
    assert_eq!(who(&mut r, a).as_deref(), Some("ann"));
    assert_eq!(who(&mut r, b), None, "another token with the same tag");
    r.put(b, &Principal::builder("bob").build(), later);
    assert_eq!(who(&mut r, b).as_deref(), Some("bob"));
    assert_eq!(who(&mut r, a), None, "displaced: the shared cache finds it");
    // Short tokens and expired ones.
    r.put("e", &ann, Instant::now());
    assert!(r.get(b"e").is_none());
    assert!(r.get(b"").is_none());
}
use jsonwebtoken::{encode, EncodingKey, Header};

fn token(alg: Algorithm, kid: &str, secret: &[u8], claims: serde_json::Value) -> String {
    let mut h = Header::new(alg);
    h.kid = Some(kid.into());
    encode(&h, &claims, &EncodingKey::from_secret(secret)).unwrap()
}

#[tokio::test]
async fn hmac_keys_verify_their_own_algorithm_only() {
    let auth = JwtAuthenticator::with_keys(
        JwtConfig {
            algorithms: vec![Algorithm::HS256, Algorithm::HS512],
            claims: ClaimMapping {
                roles: "realm.roles".into(),
                extra: vec!["email".into()],
                ..Default::default()
            },
            ..Default::default()
        },
        vec![JwtKey::hmac(Some("h1"), Algorithm::HS256, b"s3cret").unwrap()],
    );
    let exp = now_secs() + 60;
    let claims = serde_json::json!({"sub": "svc", "exp": exp, "realm": {"roles": ["a", "b"]},
                                    "scp": ["x", "y"], "email": "svc@example.com"});
    let (p, _) = auth
        .verify(&token(Algorithm::HS256, "h1", b"s3cret", claims.clone()))
        .await
        .unwrap();
    assert_eq!(p.roles(), ["a", "b"], "dotted claim path");
    assert_eq!(p.scopes(), ["x", "y"], "scp when scope is absent");
    assert_eq!(p.claim("email"), Some("svc@example.com"));
    // Same key id, another algorithm of the allow list: refused.
    let e = auth
        .verify(&token(Algorithm::HS512, "h1", b"s3cret", claims.clone()))
        .await
        .unwrap_err();
    assert_eq!(
        e.description,
        "the token's algorithm does not match its key"
    );
    let e = auth
        .verify(&token(Algorithm::HS256, "h1", b"wrong", claims))
        .await
        .unwrap_err();
    assert_eq!(e.description, "bad signature");
    assert!(JwtKey::hmac(None, Algorithm::RS256, b"x").is_err());
}

fn bearer(token: &str) -> Parts {
    let (parts, ()) = http::Request::post("/mcp")
        .header("authorization", format!("Bearer {token}"))
        .body(())
        .unwrap()
        .into_parts();
    parts
}

fn principal(auth: &JwtAuthenticator, parts: &Parts) -> Option<Principal> {
    let out = futures_util::FutureExt::now_or_never(auth.authenticate(parts))
        .expect("HMAC verification needs no I/O");
    match out {
        AuthOutcome::Authenticated(p) => Some(p),
        _ => None,
    }
}

#[test]
fn cached_tokens_serve_every_thread_and_expire_with_the_token() {
    let auth = Arc::new(JwtAuthenticator::with_keys(
        JwtConfig {
            algorithms: vec![Algorithm::HS256],
            leeway: Duration::ZERO,
            ..Default::default()
        },
        vec![JwtKey::hmac(Some("h1"), Algorithm::HS256, b"s3cret").unwrap()],
    ));
    let exp = now_secs() + 2;
    let t = token(
        Algorithm::HS256,
        "h1",
        b"s3cret",
        serde_json::json!({"sub": "svc", "exp": exp}),
    );
    let parts = bearer(&t);
    let first = principal(&auth, &parts).expect("verified");
    // This thread's cache answers now, with an equal, detached copy.
    let again = principal(&auth, &parts).expect("cached");
    assert_eq!(first, again);
    assert!(!Arc::ptr_eq(first.key(), again.key()));
    // Another thread finds it in the shared cache.
    let (a, p) = (auth.clone(), t.clone());
    let other = std::thread::spawn(move || principal(&a, &bearer(&p)))
        .join()
        .unwrap();
    assert_eq!(other.as_ref(), Some(&first));
    // Once the token expires, no cache answers for it any more.
    let t0 = Instant::now();
    while principal(&auth, &parts).is_some() {
        assert!(t0.elapsed() < Duration::from_secs(10), "cached past exp");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(now_secs() >= exp, "refused before it expired");
}

#[test]
fn leeway_is_capped() {
    let auth = JwtAuthenticator::with_keys(
        JwtConfig {
            leeway: Duration::from_secs(86_400),
            ..Default::default()
        },
        vec![],
    );
    assert_eq!(auth.cfg.leeway, MAX_LEEWAY);
}
