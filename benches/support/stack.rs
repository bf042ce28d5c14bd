//! What the benchmarks share: the test token and verifier of the security
//! stack, and limits that are all on but never reached.
// Each bench uses a subset.
#![allow(dead_code)]

use mcp_gateway_tower::jwt::{Algorithm, JwtAuthenticator, JwtConfig, JwtKey};
use mcp_gateway_tower::limit::{Budget, LimitConfig, Quota};

pub const ISSUER: &str = "https://issuer.bench";
pub const AUDIENCE: &str = "http://gateway.bench/mcp";

/// A test key from `tests/keys/`.
pub fn test_key(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/keys/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// An RS256 token (test key `k1`, role `agent`, valid for an hour).
pub fn bench_token() -> String {
    use jsonwebtoken::{encode, EncodingKey, Header};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("k1".into());
    let claims = serde_json::json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "bench-agent",
        "roles": ["agent"], "scope": "mcp", "exp": now + 3600});
    encode(
        &h,
        &claims,
        &EncodingKey::from_rsa_pem(&test_key("rsa1.key.pem")).unwrap(),
    )
    .unwrap()
}

/// The verifier of [`bench_token`]'s tokens (verified tokens cached).
pub fn bench_jwt() -> JwtAuthenticator {
    JwtAuthenticator::with_keys(
        JwtConfig {
            issuers: vec![ISSUER.into()],
            audiences: vec![AUDIENCE.into()],
            algorithms: vec![Algorithm::RS256],
            ..Default::default()
        },
        vec![JwtKey::pem(Some("k1"), Algorithm::RS256, &test_key("rsa1.pub.pem")).unwrap()],
    )
}

/// Every limit on, none reached: the bench pays for the counting.
pub fn generous_limits() -> LimitConfig {
    let q = Quota {
        burst: 1_000_000_000,
        per_second: 1e9,
    };
    let budget = Budget {
        amount: u64::MAX / 2,
        window_secs: 3600,
    };
    LimitConfig {
        principal_rate: Some(q),
        principal_tool_rate: Some(q),
        backend_rate: Some(q),
        principal_sessions: Some(1_000_000),
        principal_session_rate: Some(q),
        backend_sessions: Some(1_000_000),
        principal_in_flight: Some(1_000_000),
        backend_in_flight: Some(1_000_000),
        token_budget: Some(budget),
        cost_budget: Some(budget),
        ..Default::default()
    }
}
