//! API keys ([`ApiKeys`]), and reading a bearer token.

#[allow(unused_imports)]
use super::*;

/// The bearer token of `Authorization: Bearer …`, if any.
pub fn bearer_token(parts: &Parts) -> Option<&str> {
    // A header value holds no control characters but tab, so ASCII here
    // is what `HeaderValue::to_str` takes (which goes byte by byte; these
    // checks go a word at a time, and tokens run to hundreds of bytes).
    bearer_bytes(parts)
        .filter(|t| t.is_ascii())
        .and_then(|t| std::str::from_utf8(t).ok())
}

/// The token of `Authorization: Bearer …` as sent, trimmed but with its
/// characters unchecked: enough to look up a token verified before (which
/// was checked then) without a pass over its bytes.
pub(crate) fn bearer_bytes(parts: &Parts) -> Option<&[u8]> {
    let v = parts.headers.get(header::AUTHORIZATION)?.as_bytes();
    let space = memchr::memchr(b' ', v)?;
    if !v[..space].eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    Some(v[space + 1..].trim_ascii()).filter(|t| !t.is_empty())
}

/// Whether `token` has the shape of a JWS compact serialisation.
pub fn looks_like_jwt(token: &str) -> bool {
    token.starts_with("eyJ") && memchr::memchr_iter(b'.', token.as_bytes()).count() == 2
}

/// API keys, stored as SHA-256 hashes; each maps to a principal.
///
/// A key is read from `X-API-Key`, or from `Authorization: Bearer …` when
/// the token is not shaped like a JWT (so API keys and JWTs can share the
/// `Authorization` header in one chain). The presented key is hashed and
/// looked up; the stored and computed hashes are then compared in
/// constant time. Plain keys are never kept.
#[derive(Default, Clone)]
pub struct ApiKeys {
    keys: HashMap<[u8; 32], Principal>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeys")
            .field("keys", &self.keys.len())
            .finish()
    }
}

/// The header API keys are read from besides `Authorization`.
pub const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

impl ApiKeys {
    /// No keys.
    pub fn new() -> Self {
        Self::default()
    }

    /// SHA-256 of `key`, hex: what to store in configuration.
    pub fn hash(key: &str) -> String {
        hex(&Sha256::digest(key.as_bytes()))
    }

    /// Adds a key given in plain text (hashed at once).
    pub fn with_key(mut self, key: &str, principal: Principal) -> Self {
        self.keys
            .insert(Sha256::digest(key.as_bytes()).into(), principal);
        self
    }

    /// Adds a key given as its SHA-256 hex hash.
    pub fn with_hash(mut self, sha256_hex: &str, principal: Principal) -> Result<Self, String> {
        let h = unhex32(sha256_hex).ok_or("an API key hash is 64 hex digits (SHA-256)")?;
        self.keys.insert(h, principal);
        Ok(self)
    }

    fn presented<'a>(&self, parts: &'a Parts) -> Option<&'a str> {
        if let Some(v) = parts.headers.get(X_API_KEY) {
            return v.to_str().ok();
        }
        bearer_token(parts).filter(|t| !looks_like_jwt(t))
    }

    fn lookup(&self, key: &str) -> Option<&Principal> {
        let h: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        self.keys
            .get_key_value(&h)
            .filter(|(stored, _)| constant_time_eq(&stored[..], &h[..]))
            .map(|(_, p)| p)
    }
}

impl Authenticator for ApiKeys {
    /// Always decides at once: a key is a lookup.
    fn authenticate<'a>(&'a self, parts: &'a Parts) -> Answer<'a, AuthOutcome> {
        Answer::ready(match self.presented(parts) {
            None => AuthOutcome::NotMine,
            Some(k) => match self.lookup(k) {
                Some(p) => AuthOutcome::Authenticated(p.clone()),
                None => AuthOutcome::Rejected(AuthFailure::new("unknown API key")),
            },
        })
    }

    fn credential_headers(&self) -> Vec<HeaderName> {
        vec![X_API_KEY]
    }
}
