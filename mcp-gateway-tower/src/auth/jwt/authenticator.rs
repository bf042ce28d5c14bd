//! [`JwtAuthenticator`]: verifying a bearer JWT and mapping its claims to a principal.

#[allow(unused_imports)]
use super::*;

/// Verifies JWT bearer tokens. See the module docs.
pub struct JwtAuthenticator {
    pub(crate) cfg: JwtConfig,
    pub(crate) keys: Vec<JwtKey>,
    pub(crate) jwks: Option<JwksCache>,
    pub(crate) cache: TokenCache,
    pub(crate) recent: ThreadLocal<RefCell<Recent>>,
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

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Authenticator for JwtAuthenticator {
    fn authenticate<'a>(&'a self, parts: &'a Parts) -> Answer<'a, AuthOutcome> {
        let Some(raw) = bearer_bytes(parts) else {
            return Answer::ready(AuthOutcome::NotMine);
        };
        // A token found here was verified, so checked, before: the bytes
        // as sent are enough, and the layer decides without waiting.
        if let Some(p) = self.recent.get_or_default().borrow_mut().get(raw) {
            return Answer::ready(AuthOutcome::Authenticated(p));
        }
        Answer::pending(async move {
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
