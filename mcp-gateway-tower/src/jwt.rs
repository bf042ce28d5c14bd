//! JWT bearer tokens (`jwt` feature): static keys or a JWKS URL.
//!
//! What is checked, in order: the token is a JWS whose `alg` is on the
//! explicit allow list (`none` cannot be: it is not an algorithm here); a
//! key is found by `kid` (or, without a `kid`, by algorithm) and the key's
//! own algorithm must equal the header's, so an RSA public key can never be
//! used as an HMAC secret; the signature; `exp` (required) and `nbf` with a
//! bounded leeway; `iss`; `aud` (the RFC 8707 resource of this server).
//!
//! JWKS: fetched at first use, refetched when a token names an unknown
//! `kid` (key rotation; at most once per `min_refresh`) and when the set is
//! older than `max_age`. A failed refresh keeps the keys already known.
//!
//! Verified tokens are cached by SHA-256 of the token until they expire (or
//! `cache_ttl` passes), so a client reusing its token costs one hash and a
//! map lookup per call.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use http::request::Parts;
use jsonwebtoken::jwk::JwkSet;
pub use jsonwebtoken::Algorithm;
use jsonwebtoken::{DecodingKey, Validation};
use mcp_gateway_core::Principal;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::cell::RefCell;
use thread_local::ThreadLocal;

use crate::auth::{
    bearer_bytes, bearer_token, looks_like_jwt, AuthFailure, AuthFuture, AuthOutcome, Authenticator,
};

/// Leeway beyond which clock skew is not forgiven.
pub const MAX_LEEWAY: Duration = Duration::from_secs(300);

/// Where claims are read from (dotted paths reach into objects, e.g.
/// `realm_access.roles`).
#[derive(Debug, Clone)]
pub struct ClaimMapping {
    /// Subject claim. Default `sub`.
    pub subject: String,
    /// Roles: an array of strings or a space-separated string. Default `roles`.
    pub roles: String,
    /// Scopes: a space-separated string or an array. Default `scope`
    /// (`scp` is read too when `scope` is absent).
    pub scopes: String,
    /// Tenant claim, if tenants are used (e.g. `tid`).
    pub tenant: Option<String>,
    /// Other claims copied into the principal (as text).
    pub extra: Vec<String>,
}

impl Default for ClaimMapping {
    fn default() -> Self {
        ClaimMapping {
            subject: "sub".into(),
            roles: "roles".into(),
            scopes: "scope".into(),
            tenant: None,
            extra: Vec::new(),
        }
    }
}

/// What a token must satisfy.
#[derive(Debug, Clone)]
pub struct JwtConfig {
    /// Accepted issuers (`iss`); empty accepts any (not recommended).
    pub issuers: Vec<String>,
    /// Accepted audiences (`aud`): this server's resource URL. Empty
    /// accepts any (not recommended: tokens for other services would pass).
    pub audiences: Vec<String>,
    /// Algorithms accepted at all. Each key also pins its own.
    pub algorithms: Vec<Algorithm>,
    /// Clock-skew leeway for `exp` / `nbf`; capped at [`MAX_LEEWAY`].
    pub leeway: Duration,
    /// Claim mapping.
    pub claims: ClaimMapping,
    /// Longest a verified token stays cached (never past its `exp`).
    pub cache_ttl: Duration,
    /// Most cached tokens.
    pub cache_capacity: usize,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            issuers: Vec::new(),
            audiences: Vec::new(),
            algorithms: vec![Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA],
            leeway: Duration::from_secs(30),
            claims: ClaimMapping::default(),
            cache_ttl: Duration::from_secs(300),
            cache_capacity: 100_000,
        }
    }
}

/// One verification key with the one algorithm it may verify.
#[derive(Clone)]
pub struct JwtKey {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish()
    }
}

type KeyResult = Result<JwtKey, String>;

impl JwtKey {
    /// An HMAC secret (HS256 / HS384 / HS512).
    pub fn hmac(kid: Option<&str>, alg: Algorithm, secret: &[u8]) -> KeyResult {
        if !matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
            return Err(format!("{alg:?} is not an HMAC algorithm"));
        }
        Ok(Self::new(kid, alg, DecodingKey::from_secret(secret)))
    }

    /// A public key in PEM (RSA, EC or Ed25519, matching `alg`).
    pub fn pem(kid: Option<&str>, alg: Algorithm, pem: &[u8]) -> KeyResult {
        use Algorithm::*;
        let key = match alg {
            RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => DecodingKey::from_rsa_pem(pem),
            ES256 | ES384 => DecodingKey::from_ec_pem(pem),
            EdDSA => DecodingKey::from_ed_pem(pem),
            HS256 | HS384 | HS512 => {
                return Err("HMAC keys are secrets, not PEM public keys".into())
            }
        }
        .map_err(|e| format!("bad {alg:?} PEM key: {e}"))?;
        Ok(Self::new(kid, alg, key))
    }

    fn new(kid: Option<&str>, alg: Algorithm, key: DecodingKey) -> JwtKey {
        JwtKey {
            kid: kid.map(str::to_owned),
            alg,
            key,
        }
    }

    /// The keys of a JWKS document that carry an algorithm this
    /// authenticator can use (a key without `alg` gets the one its type
    /// implies for RSA/EC/OKP only when unambiguous).
    pub fn from_jwks(set: &JwkSet) -> Vec<JwtKey> {
        use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve};
        set.keys
            .iter()
            .filter_map(|jwk| {
                let alg = match jwk.common.key_algorithm {
                    Some(a) => a.to_string().parse::<Algorithm>().ok()?,
                    None => match &jwk.algorithm {
                        AlgorithmParameters::RSA(_) => Algorithm::RS256,
                        AlgorithmParameters::EllipticCurve(p) => match p.curve {
                            EllipticCurve::P256 => Algorithm::ES256,
                            EllipticCurve::P384 => Algorithm::ES384,
                            _ => return None,
                        },
                        AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
                        // Symmetric keys are never published in a JWKS.
                        AlgorithmParameters::OctetKey(_) => return None,
                    },
                };
                if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
                    return None;
                }
                let key = DecodingKey::from_jwk(jwk).ok()?;
                Some(JwtKey::new(jwk.common.key_id.as_deref(), alg, key))
            })
            .collect()
    }
}

/// The future a [`JwksFetcher`] returns.
pub type FetchFuture = Pin<Box<dyn Future<Output = Result<JwkSet, String>> + Send>>;

/// Fetches a JWKS document. The built-in [`HttpJwksFetcher`] speaks plain
/// `http://`; for `https://` implement this with the HTTP client of your
/// application (reqwest, hyper-rustls, …).
pub trait JwksFetcher: Send + Sync + 'static {
    /// Fetches the current key set.
    fn fetch(&self) -> FetchFuture;
}

/// Fetches a JWKS over plain HTTP (an identity provider's sidecar, a test).
#[derive(Debug, Clone)]
pub struct HttpJwksFetcher {
    url: http::Uri,
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Empty<bytes::Bytes>,
    >,
}

impl HttpJwksFetcher {
    /// A fetcher for `url` (`http://…`).
    pub fn new(url: &str) -> Result<Self, String> {
        let url: http::Uri = url.parse().map_err(|e| format!("JWKS URL: {e}"))?;
        if url.scheme_str() != Some("http") {
            return Err(
                "the built-in JWKS fetcher speaks http:// only; pass your own JwksFetcher for https://"
                    .into(),
            );
        }
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        Ok(HttpJwksFetcher { url, client })
    }
}

impl JwksFetcher for HttpJwksFetcher {
    fn fetch(&self) -> FetchFuture {
        use http_body_util::BodyExt;
        let client = self.client.clone();
        let url = self.url.clone();
        Box::pin(async move {
            let res = tokio::time::timeout(Duration::from_secs(10), client.get(url.clone()))
                .await
                .map_err(|_| format!("JWKS {url}: timed out"))?
                .map_err(|e| format!("JWKS {url}: {e}"))?;
            if !res.status().is_success() {
                return Err(format!("JWKS {url}: HTTP {}", res.status()));
            }
            let body = http_body_util::Limited::new(res.into_body(), 1 << 20)
                .collect()
                .await
                .map_err(|e| format!("JWKS {url}: {e}"))?
                .to_bytes();
            serde_json::from_slice(&body).map_err(|e| format!("JWKS {url}: {e}"))
        })
    }
}

/// A JWKS kept fresh. See the module docs for when it refetches.
pub struct JwksCache {
    fetcher: Box<dyn JwksFetcher>,
    keys: ArcSwap<Vec<JwtKey>>,
    last_fetch: Mutex<Option<Instant>>,
    refreshing: tokio::sync::Mutex<()>,
    min_refresh: Duration,
    max_age: Duration,
}

impl std::fmt::Debug for JwksCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksCache")
            .field("keys", &self.keys.load().len())
            .finish()
    }
}

impl JwksCache {
    /// A cache over `fetcher`: refetch at most every `min_refresh` on an
    /// unknown `kid`, and whenever the set is older than `max_age`.
    pub fn new(fetcher: impl JwksFetcher, min_refresh: Duration, max_age: Duration) -> Self {
        JwksCache {
            fetcher: Box::new(fetcher),
            keys: ArcSwap::from_pointee(Vec::new()),
            last_fetch: Mutex::new(None),
            refreshing: tokio::sync::Mutex::new(()),
            min_refresh,
            max_age,
        }
    }

    fn age(&self) -> Option<Duration> {
        self.last_fetch
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map(|t| t.elapsed())
    }

    /// Refetches unless another task just did (single flight) or the last
    /// fetch is more recent than `at_most_every`.
    async fn refresh(&self, at_most_every: Duration) {
        let _guard = self.refreshing.lock().await;
        if self.age().is_some_and(|a| a < at_most_every) {
            return;
        }
        *self.last_fetch.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        match self.fetcher.fetch().await {
            Ok(set) => {
                let keys = JwtKey::from_jwks(&set);
                tracing::info!(keys = keys.len(), "JWKS refreshed");
                self.keys.store(Arc::new(keys));
            }
            Err(e) => tracing::warn!(error = %e, "JWKS refresh failed; keeping the known keys"),
        }
    }
}

/// Verifies JWT bearer tokens. See the module docs.
pub struct JwtAuthenticator {
    cfg: JwtConfig,
    keys: Vec<JwtKey>,
    jwks: Option<JwksCache>,
    cache: TokenCache,
    recent: ThreadLocal<RefCell<Recent>>,
}

impl std::fmt::Debug for JwtAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtAuthenticator")
            .field("issuers", &self.cfg.issuers)
            .field("audiences", &self.cfg.audiences)
            .field("algorithms", &self.cfg.algorithms)
            .finish()
    }
}

impl JwtAuthenticator {
    /// Verifies with fixed keys.
    pub fn with_keys(cfg: JwtConfig, keys: Vec<JwtKey>) -> Self {
        Self::new(cfg, keys, None)
    }

    /// Verifies with the keys of a JWKS.
    pub fn with_jwks(cfg: JwtConfig, jwks: JwksCache) -> Self {
        Self::new(cfg, Vec::new(), Some(jwks))
    }

    /// Verifies with fixed keys first, then the keys of a JWKS.
    pub fn new(mut cfg: JwtConfig, keys: Vec<JwtKey>, jwks: Option<JwksCache>) -> Self {
        cfg.leeway = cfg.leeway.min(MAX_LEEWAY);
        let cache = TokenCache::new(cfg.cache_capacity);
        JwtAuthenticator {
            cfg,
            keys,
            jwks,
            cache,
            recent: ThreadLocal::new(),
        }
    }

    fn pick<'k>(keys: &'k [JwtKey], kid: Option<&str>, alg: Algorithm) -> Option<&'k JwtKey> {
        match kid {
            Some(kid) => keys.iter().find(|k| k.kid.as_deref() == Some(kid)),
            None => keys.iter().find(|k| k.alg == alg),
        }
    }

    /// Verifies `token` and maps its claims; no cache.
    pub async fn verify(&self, token: &str) -> Result<(Principal, u64), AuthFailure> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| AuthFailure::new("malformed token or algorithm not allowed"))?;
        if !self.cfg.algorithms.contains(&header.alg) {
            return Err(AuthFailure::new(format!(
                "algorithm {:?} not allowed",
                header.alg
            )));
        }
        let kid = header.kid.as_deref();
        let mut key = Self::pick(&self.keys, kid, header.alg).cloned();
        if let (None, Some(jwks)) = (&key, &self.jwks) {
            if jwks.age().is_none_or(|a| a > jwks.max_age) {
                jwks.refresh(Duration::ZERO).await;
            }
            key = Self::pick(&jwks.keys.load(), kid, header.alg).cloned();
            if key.is_none() {
                // Perhaps the issuer rotated its keys.
                jwks.refresh(jwks.min_refresh).await;
                key = Self::pick(&jwks.keys.load(), kid, header.alg).cloned();
            }
        }
        let key = key.ok_or_else(|| AuthFailure::new("no key for this token"))?;
        if key.alg != header.alg {
            return Err(AuthFailure::new(
                "the token's algorithm does not match its key",
            ));
        }
        let mut v = Validation::new(key.alg);
        v.leeway = self.cfg.leeway.as_secs();
        v.validate_exp = true;
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp"]);
        if self.cfg.issuers.is_empty() {
            v.iss = None;
        } else {
            v.set_issuer(&self.cfg.issuers);
        }
        if self.cfg.audiences.is_empty() {
            v.validate_aud = false;
        } else {
            v.set_audience(&self.cfg.audiences);
        }
        let data = jsonwebtoken::decode::<Value>(token, &key.key, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            AuthFailure::new(match e.kind() {
                K::ExpiredSignature => "token expired",
                K::ImmatureSignature => "token not yet valid",
                K::InvalidIssuer => "wrong issuer",
                K::InvalidAudience => "wrong audience",
                K::InvalidSignature => "bad signature",
                K::MissingRequiredClaim(_) => "token lacks a required claim",
                K::InvalidAlgorithm => "the token's algorithm does not match its key",
                _ => "invalid token",
            })
        })?;
        let claims = data.claims;
        let exp = claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
        Ok((self.principal(&claims)?, exp))
    }

    fn principal(&self, claims: &Value) -> Result<Principal, AuthFailure> {
        let m = &self.cfg.claims;
        let sub = lookup(claims, &m.subject)
            .and_then(as_text)
            .ok_or_else(|| AuthFailure::new("token has no subject"))?;
        let mut b = Principal::builder(sub).auth_method("jwt");
        if let Some(t) = m
            .tenant
            .as_deref()
            .and_then(|t| lookup(claims, t))
            .and_then(as_text)
        {
            b = b.tenant(t);
        }
        b = b.roles(lookup(claims, &m.roles).map(as_list).unwrap_or_default());
        let scopes = lookup(claims, &m.scopes)
            .or_else(|| {
                (m.scopes == "scope")
                    .then(|| lookup(claims, "scp"))
                    .flatten()
            })
            .map(as_list)
            .unwrap_or_default();
        b = b.scopes(scopes);
        for name in &m.extra {
            if let Some(v) = lookup(claims, name) {
                b = b.claim(name.clone(), as_text(v).unwrap_or_else(|| v.to_string()));
            }
        }
        Ok(b.build())
    }
}

fn lookup<'v>(v: &'v Value, path: &str) -> Option<&'v Value> {
    path.split('.').try_fold(v, |v, k| v.get(k))
}

fn as_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn as_list(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => s.split_whitespace().map(str::to_owned).collect(),
        Value::Array(a) => a.iter().filter_map(as_text).collect(),
        _ => Vec::new(),
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Authenticator for JwtAuthenticator {
    fn authenticate_now(&self, parts: &Parts) -> Option<AuthOutcome> {
        let Some(raw) = bearer_bytes(parts) else {
            return Some(AuthOutcome::NotMine);
        };
        // A token found here was verified, so checked, before: the bytes
        // as sent are enough.
        let p = self.recent.get_or_default().borrow_mut().get(raw)?;
        Some(AuthOutcome::Authenticated(p))
    }

    fn authenticate<'a>(&'a self, parts: &'a Parts) -> AuthFuture<'a> {
        Box::pin(async move {
            // What `authenticate_now` answers (the thread's cache is not
            // held across an await: the task may resume on another
            // thread, with another cache).
            if let Some(decided) = self.authenticate_now(parts) {
                return decided;
            }
            let Some(token) = bearer_token(parts).filter(|t| looks_like_jwt(t)) else {
                return AuthOutcome::NotMine;
            };
            let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
            if let Some((p, until)) = self.cache.get(&hash) {
                self.recent
                    .get_or_default()
                    .borrow_mut()
                    .put(token, &p, until);
                return AuthOutcome::Authenticated(p);
            }
            match self.verify(token).await {
                Ok((p, exp)) => {
                    // Cache until exp (with no leeway) or the TTL, whichever is first.
                    let left = Duration::from_secs(exp.saturating_sub(now_secs()));
                    let ttl = left.min(self.cfg.cache_ttl);
                    if !ttl.is_zero() {
                        self.cache.put(hash, p.clone(), ttl);
                        self.recent.get_or_default().borrow_mut().put(
                            token,
                            &p,
                            Instant::now() + ttl,
                        );
                    }
                    AuthOutcome::Authenticated(p)
                }
                Err(f) => AuthOutcome::Rejected(f),
            }
        })
    }
}

const SHARDS: usize = 16;

/// Token hash → (principal, valid until).
type Shard = Mutex<HashMap<[u8; 32], (Principal, Instant)>>;

/// Verified tokens by hash, sharded so concurrent requests rarely meet.
struct TokenCache {
    shards: Vec<Shard>,
    per_shard: usize,
}

impl TokenCache {
    fn new(capacity: usize) -> Self {
        TokenCache {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: (capacity / SHARDS).max(1),
        }
    }

    fn shard(&self, h: &[u8; 32]) -> &Shard {
        &self.shards[h[0] as usize % SHARDS]
    }

    fn get(&self, h: &[u8; 32]) -> Option<(Principal, Instant)> {
        let mut m = self.shard(h).lock().unwrap_or_else(|e| e.into_inner());
        match m.get(h) {
            Some((p, until)) if Instant::now() < *until => Some((p.clone(), *until)),
            Some(_) => {
                m.remove(h);
                None
            }
            None => None,
        }
    }

    fn put(&self, h: [u8; 32], p: Principal, ttl: Duration) {
        if ttl.is_zero() {
            return;
        }
        let mut m = self.shard(&h).lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= self.per_shard {
            let now = Instant::now();
            m.retain(|_, (_, until)| *until > now);
            if m.len() >= self.per_shard {
                // Still full of live tokens: start over rather than grow.
                m.clear();
            }
        }
        m.insert(h, (p, Instant::now() + ttl));
    }
}

/// Tokens a thread verified or found lately, by the token itself: no
/// SHA-256 to compute and no lock or counter shared with other threads
/// (the principal is a detached copy). Small: the shared cache behind it
/// holds the rest.
///
/// Looked up by a tag of the token's end, then compared whole: hashing
/// a whole token (hundreds of bytes) cost more than the rest of the
/// lookup. The end is a signature, as good as random; tokens whose tags
/// collide only miss here (the shared cache, by SHA-256, still finds them),
/// and an entry gets in only by verifying, so a crafted collision buys an
/// attacker nothing.
#[derive(Default)]
struct Recent {
    map: HashMap<u64, Remembered, foldhash::fast::RandomState>,
}

/// A token of [`Recent`], its principal, and until when it is good.
struct Remembered {
    token: Box<[u8]>,
    principal: Principal,
    until: Instant,
}

/// Tokens each thread keeps in [`Recent`].
const RECENT: usize = 256;

/// [`Recent`]'s tag of `token`: its length and last 16 bytes.
fn tag(token: &[u8]) -> u64 {
    let tail = &token[token.len().saturating_sub(16)..];
    let mut t = token.len() as u64;
    for chunk in tail.chunks(8) {
        let mut w = [0u8; 8];
        w[..chunk.len()].copy_from_slice(chunk);
        t = t.rotate_left(29) ^ u64::from_le_bytes(w);
    }
    t
}

impl Recent {
    fn get(&mut self, token: &[u8]) -> Option<Principal> {
        let tag = tag(token);
        let r = self.map.get(&tag)?;
        if *r.token != *token {
            return None;
        }
        if Instant::now() < r.until {
            return Some(r.principal.clone());
        }
        self.map.remove(&tag);
        None
    }

    fn put(&mut self, token: &str, p: &Principal, until: Instant) {
        if self.map.len() >= RECENT {
            let now = Instant::now();
            self.map.retain(|_, r| r.until > now);
            if self.map.len() >= RECENT {
                self.map.clear();
            }
        }
        let token = token.as_bytes();
        self.map.insert(
            tag(token),
            Remembered {
                token: token.into(),
                principal: p.detached(),
                until,
            },
        );
    }
}

#[cfg(test)]
mod tests {
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
            auth.authenticate_now(&head(None)),
            Some(AuthOutcome::NotMine)
        ));
        let good_head = head(Some(&format!("Bearer {good}")));
        // Not seen yet: it needs verifying.
        assert!(auth.authenticate_now(&good_head).is_none());
        assert!(matches!(
            auth.authenticate(&good_head).await,
            AuthOutcome::Authenticated(_)
        ));
        match auth.authenticate_now(&good_head) {
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
            assert!(auth.authenticate_now(&bad_head).is_none());
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
}
