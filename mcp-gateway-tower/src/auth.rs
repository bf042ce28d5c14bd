//! Authentication: who is calling.
//!
//! [`AuthLayer`] asks an [`Authenticator`] to turn the request's credential
//! into a [`Principal`], puts it in the request extensions (its key is
//! the [`SessionOwner`](crate::session::SessionOwner) of the sessions it
//! starts), and removes the credential headers so they never travel
//! further. It behaves as an OAuth 2.1 resource server:
//!
//! - no credential, or one that does not verify: `401` with
//!   `WWW-Authenticate: Bearer resource_metadata="…"` (RFC 9728) and the
//!   scopes the endpoint needs;
//! - a valid credential without a required scope: `403` with
//!   `error="insufficient_scope"`;
//! - a token in the query string (`access_token=`, `api_key=`, …): `400`
//!   `error="invalid_request"`, since query strings end up in logs.
//!
//! Authenticators compose with [`AuthChain`]: the first that recognises the
//! credential decides. Built in: [`ApiKeys`] (hashed keys), and with the
//! `jwt` feature [`crate::jwt::JwtAuthenticator`]. A principal from a
//! verified client certificate comes from [`ClientCertAuthenticator`].

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Request, Response};
use mcp_gateway_core::{ErrorKind, GatewayError, Principal};
use sha2::{Digest, Sha256};
use tower_layer::Layer;
use tower_service::Service;

use crate::body::{take_ready, Body, BoxFuture};
use crate::error::error_response;

/// What an authenticator made of a request.
#[derive(Debug, Clone)]
pub enum AuthOutcome {
    /// The credential verified: this is the caller.
    Authenticated(Principal),
    /// This authenticator does not handle the credential (or there is
    /// none for it): ask the next one.
    NotMine,
    /// The credential is this authenticator's kind and does not verify.
    Rejected(AuthFailure),
}

/// Why a credential was refused. The description goes to the client in
/// `WWW-Authenticate` (keep secrets out of it) and to the logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthFailure {
    /// A short reason: "expired token", "bad signature", …
    pub description: String,
}

impl AuthFailure {
    /// A failure with `description`.
    pub fn new(description: impl Into<String>) -> Self {
        AuthFailure {
            description: description.into(),
        }
    }
}

/// The future an [`Authenticator`] returns.
pub type AuthFuture<'a> = Pin<Box<dyn Future<Output = AuthOutcome> + Send + 'a>>;

/// Turns a request's credential into a [`Principal`].
///
/// Implement it for your own scheme; it sees the request head only (the
/// body is not read yet, so a refusal costs nothing).
pub trait Authenticator: Send + Sync + 'static {
    /// Decides on the request head.
    fn authenticate<'a>(&'a self, parts: &'a Parts) -> AuthFuture<'a>;

    /// Decides at once, without a future, when that needs no waiting (a
    /// credential seen lately, or none of this authenticator's kind);
    /// `None` sends the request to [`authenticate`](Self::authenticate).
    /// Must agree with it. The default always says `None`.
    ///
    /// Why: most calls carry a token verified a moment ago, and answering
    /// them here spares the layer a boxed future and a suspended state.
    fn authenticate_now(&self, parts: &Parts) -> Option<AuthOutcome> {
        let _ = parts;
        None
    }

    /// Header names holding credentials this authenticator reads; the
    /// layer removes them before the request goes on. `Authorization`
    /// is always removed.
    fn credential_headers(&self) -> Vec<HeaderName> {
        Vec::new()
    }
}

impl<A: Authenticator + ?Sized> Authenticator for Arc<A> {
    fn authenticate<'a>(&'a self, parts: &'a Parts) -> AuthFuture<'a> {
        (**self).authenticate(parts)
    }
    fn authenticate_now(&self, parts: &Parts) -> Option<AuthOutcome> {
        (**self).authenticate_now(parts)
    }
    fn credential_headers(&self) -> Vec<HeaderName> {
        (**self).credential_headers()
    }
}

/// Several authenticators; the first that does not say
/// [`AuthOutcome::NotMine`] decides.
#[derive(Default, Clone)]
pub struct AuthChain {
    links: Vec<Arc<dyn Authenticator>>,
}

impl std::fmt::Debug for AuthChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthChain")
            .field("links", &self.links.len())
            .finish()
    }
}

impl AuthChain {
    /// An empty chain (every request is `NotMine`).
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends an authenticator.
    pub fn with(mut self, a: impl Authenticator) -> Self {
        self.links.push(Arc::new(a));
        self
    }

    /// Appends a shared authenticator.
    pub fn with_shared(mut self, a: Arc<dyn Authenticator>) -> Self {
        self.links.push(a);
        self
    }
}

impl Authenticator for AuthChain {
    fn authenticate<'a>(&'a self, parts: &'a Parts) -> AuthFuture<'a> {
        Box::pin(async move {
            for a in &self.links {
                match a.authenticate(parts).await {
                    AuthOutcome::NotMine => continue,
                    decided => return decided,
                }
            }
            AuthOutcome::NotMine
        })
    }

    fn authenticate_now(&self, parts: &Parts) -> Option<AuthOutcome> {
        for a in &self.links {
            match a.authenticate_now(parts)? {
                AuthOutcome::NotMine => continue,
                decided => return Some(decided),
            }
        }
        Some(AuthOutcome::NotMine)
    }

    fn credential_headers(&self) -> Vec<HeaderName> {
        self.links
            .iter()
            .flat_map(|a| a.credential_headers())
            .collect()
    }
}

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
    fn authenticate<'a>(&'a self, parts: &'a Parts) -> AuthFuture<'a> {
        let out = self.authenticate_now(parts);
        Box::pin(std::future::ready(out.unwrap_or(AuthOutcome::NotMine)))
    }

    /// Always decides at once: a key is a lookup.
    fn authenticate_now(&self, parts: &Parts) -> Option<AuthOutcome> {
        Some(match self.presented(parts) {
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

/// The verified client certificate of a TLS connection, as the server put
/// it in the request extensions (DER of the leaf certificate, plus the
/// subject and SAN values the server extracted after verification).
#[derive(Debug, Clone)]
pub struct PeerCertificate {
    /// The leaf certificate, DER.
    pub der: Arc<[u8]>,
    /// The subject common name, if any.
    pub common_name: Option<String>,
    /// DNS / URI / email subject alternative names.
    pub sans: Vec<String>,
}

/// A principal from a client certificate the TLS stack already verified
/// (mTLS). The server must put a [`PeerCertificate`] in the request
/// extensions; requests without one are `NotMine`. The subject is the
/// first SAN, else the common name; the certificate's SHA-256 fingerprint
/// is kept as the claim `x5t#S256`.
#[derive(Debug, Clone, Default)]
pub struct ClientCertAuthenticator {
    tenant: Option<String>,
    roles: Vec<String>,
}

impl ClientCertAuthenticator {
    /// Principals with no tenant and no roles.
    pub fn new() -> Self {
        Self::default()
    }

    /// Gives every certificate principal this tenant.
    pub fn tenant(mut self, t: impl Into<String>) -> Self {
        self.tenant = Some(t.into());
        self
    }

    /// Gives every certificate principal these roles.
    pub fn roles<I: IntoIterator<Item = S>, S: Into<String>>(mut self, r: I) -> Self {
        self.roles = r.into_iter().map(Into::into).collect();
        self
    }
}

impl Authenticator for ClientCertAuthenticator {
    fn authenticate<'a>(&'a self, parts: &'a Parts) -> AuthFuture<'a> {
        let out = self.authenticate_now(parts);
        Box::pin(std::future::ready(out.unwrap_or(AuthOutcome::NotMine)))
    }

    /// Always decides at once: the certificate was verified by TLS.
    fn authenticate_now(&self, parts: &Parts) -> Option<AuthOutcome> {
        Some(match parts.extensions.get::<PeerCertificate>() {
            None => AuthOutcome::NotMine,
            Some(cert) => match cert.sans.first().or(cert.common_name.as_ref()) {
                None => AuthOutcome::Rejected(AuthFailure::new("client certificate names nobody")),
                Some(subject) => {
                    let mut b = Principal::builder(subject.clone())
                        .auth_method("mtls")
                        .roles(self.roles.iter().cloned())
                        .claim("x5t#S256", hex(&Sha256::digest(&cert.der)));
                    if let Some(t) = &self.tenant {
                        b = b.tenant(t.clone());
                    }
                    AuthOutcome::Authenticated(b.build())
                }
            },
        })
    }
}

/// Settings of [`AuthLayer`].
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// The absolute URL of this server's RFC 9728 metadata document, sent
    /// in `WWW-Authenticate` so clients can find the authorization server.
    pub resource_metadata: Option<String>,
    /// Scopes every request must carry (403 `insufficient_scope` without).
    pub required_scopes: Vec<String>,
    /// Let requests without any credential through with no principal
    /// (sessions are then shared by all anonymous callers). Off by default.
    pub allow_anonymous: bool,
}

/// Query parameters that carry credentials; refused (RFC 9700 / OAuth 2.1).
const QUERY_CREDENTIALS: [&str; 4] = ["access_token", "api_key", "apikey", "token"];

fn query_has_credential(query: &str) -> bool {
    query.split('&').any(|kv| {
        let k = kv.split('=').next().unwrap_or("");
        QUERY_CREDENTIALS.iter().any(|c| k.eq_ignore_ascii_case(c))
    })
}

/// Builds [`Auth`] services.
#[derive(Clone)]
pub struct AuthLayer {
    shared: Arc<Shared>,
}

struct Shared {
    authenticator: Arc<dyn Authenticator>,
    cfg: AuthConfig,
    strip: Vec<HeaderName>,
    challenge: HeaderValue,
}

impl std::fmt::Debug for AuthLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthLayer")
            .field("cfg", &self.shared.cfg)
            .finish()
    }
}

impl AuthLayer {
    /// Authenticates with `authenticator`.
    pub fn new(authenticator: impl Authenticator, cfg: AuthConfig) -> Self {
        Self::shared(Arc::new(authenticator), cfg)
    }

    /// Authenticates with a shared authenticator.
    pub fn shared(authenticator: Arc<dyn Authenticator>, cfg: AuthConfig) -> Self {
        let mut strip = authenticator.credential_headers();
        strip.push(header::AUTHORIZATION);
        let challenge = challenge(&cfg, None, None);
        AuthLayer {
            shared: Arc::new(Shared {
                authenticator,
                cfg,
                strip,
                challenge,
            }),
        }
    }
}

/// `Bearer resource_metadata="…", scope="…"[, error="…", error_description="…"]`.
fn challenge(cfg: &AuthConfig, error: Option<&str>, description: Option<&str>) -> HeaderValue {
    let mut parts = Vec::new();
    if let Some(m) = &cfg.resource_metadata {
        parts.push(format!("resource_metadata=\"{}\"", quote_safe(m)));
    }
    if !cfg.required_scopes.is_empty() {
        parts.push(format!(
            "scope=\"{}\"",
            quote_safe(&cfg.required_scopes.join(" "))
        ));
    }
    if let Some(e) = error {
        parts.push(format!("error=\"{e}\""));
    }
    if let Some(d) = description {
        parts.push(format!("error_description=\"{}\"", quote_safe(d)));
    }
    let v = if parts.is_empty() {
        "Bearer".to_owned()
    } else {
        format!("Bearer {}", parts.join(", "))
    };
    HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static("Bearer"))
}

/// Keeps a value inside a quoted-string: no quotes, backslashes or
/// control characters (RFC 6750 limits error_description to printable
/// ASCII without `"` and `\`).
fn quote_safe(s: &str) -> String {
    s.chars()
        .filter(|c| (' '..='~').contains(c) && *c != '"' && *c != '\\')
        .collect()
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The authentication service. See the module docs.
#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Auth<S> {
    inner_accessors!();
}

impl<S> std::fmt::Debug for Auth<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").finish_non_exhaustive()
    }
}

fn refuse(kind: ErrorKind, msg: String, challenge: HeaderValue) -> Response<Body> {
    let mut res = error_response(&GatewayError::new(kind, msg), None);
    res.headers_mut()
        .insert(header::WWW_AUTHENTICATE, challenge);
    res
}

impl<S, B> Service<Request<B>> for Auth<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let shared = &self.shared;
        let (parts, body) = req.into_parts();
        if parts.uri.query().is_some_and(query_has_credential) {
            return Box::pin(std::future::ready(Ok(refuse(
                ErrorKind::InvalidRequest,
                "credentials in the query string are not accepted; send Authorization: Bearer"
                    .into(),
                challenge(
                    &shared.cfg,
                    Some("invalid_request"),
                    Some("credentials in the query string are not accepted"),
                ),
            ))));
        }
        if let Some(outcome) = shared.authenticator.authenticate_now(&parts) {
            // Decided at once: no future holds the request while it waits.
            return match admit(shared, parts, outcome) {
                Ok((parts, principal)) => {
                    // The service polled ready, as it is: no clone of the
                    // stack below (see `Audit::call`).
                    let fut = self.inner.call(Request::from_parts(parts, body));
                    Box::pin(async move { fut.await.map(|res| with_principal(res, principal)) })
                }
                Err(refused) => Box::pin(std::future::ready(Ok(refused))),
            };
        }
        let mut inner = take_ready(&mut self.inner);
        let shared = shared.clone();
        Box::pin(async move {
            let outcome = shared.authenticator.authenticate(&parts).await;
            match admit(&shared, parts, outcome) {
                Ok((parts, principal)) => inner
                    .call(Request::from_parts(parts, body))
                    .await
                    .map(|res| with_principal(res, principal)),
                Err(refused) => Ok(refused),
            }
        })
    }
}

/// Acts on what the authenticator said: the request's head, made ready to
/// go on (the principal in its extensions, the credentials removed), and
/// the principal; or the refusal to answer with.
#[allow(clippy::result_large_err)]
fn admit(
    shared: &Shared,
    mut parts: Parts,
    outcome: AuthOutcome,
) -> Result<(Parts, Option<Principal>), Response<Body>> {
    let principal = match outcome {
        AuthOutcome::Authenticated(p) => Some(p),
        AuthOutcome::NotMine if shared.cfg.allow_anonymous => None,
        AuthOutcome::NotMine => {
            return Err(refuse(
                ErrorKind::Unauthorized,
                "Unauthorized: a credential is required".into(),
                shared.challenge.clone(),
            ))
        }
        AuthOutcome::Rejected(f) => {
            tracing::info!(reason = %f.description, "credential refused");
            return Err(refuse(
                ErrorKind::Unauthorized,
                format!("Unauthorized: {}", f.description),
                challenge(&shared.cfg, Some("invalid_token"), Some(&f.description)),
            ));
        }
    };
    if let Some(p) = &principal {
        if let Some(missing) = shared.cfg.required_scopes.iter().find(|s| !p.has_scope(s)) {
            return Err(refuse(
                ErrorKind::InsufficientScope,
                format!("Forbidden: the token lacks the scope {missing}"),
                challenge(
                    &shared.cfg,
                    Some("insufficient_scope"),
                    Some(&format!("the scope {missing} is required")),
                ),
            ));
        }
        // Its key is also the owner of the sessions it starts.
        parts.extensions.insert(p.clone());
    }
    for h in &shared.strip {
        parts.headers.remove(h);
    }
    parts.headers.remove(header::COOKIE);
    Ok((parts, principal))
}

/// `res` with the caller's principal, for layers outside this one (the
/// audit log).
fn with_principal(mut res: Response<Body>, principal: Option<Principal>) -> Response<Body> {
    if let Some(p) = principal {
        res.extensions_mut().insert(p);
    }
    res
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in s.as_bytes().chunks(2).enumerate() {
        let d = |c: u8| (c as char).to_digit(16);
        out[i] = (d(pair[0])? * 16 + d(pair[1])?) as u8;
    }
    Some(out)
}

/// Compares without an early exit, so timing says nothing about where two
/// secrets differ.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Serves the RFC 9728 protected-resource metadata document.
#[derive(Debug, Clone)]
pub struct ProtectedResourceMetadata {
    body: bytes::Bytes,
}

impl ProtectedResourceMetadata {
    /// Metadata naming `resource` (this MCP endpoint's absolute URL), the
    /// authorization servers that issue tokens for it, and its scopes.
    pub fn new(resource: &str, authorization_servers: &[String], scopes: &[String]) -> Self {
        let doc = serde_json::json!({
            "resource": resource,
            "authorization_servers": authorization_servers,
            "scopes_supported": scopes,
            "bearer_methods_supported": ["header"],
        });
        ProtectedResourceMetadata {
            body: serde_json::to_vec(&doc).unwrap_or_default().into(),
        }
    }
}

impl<B> Service<Request<B>> for ProtectedResourceMetadata {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: Request<B>) -> Self::Future {
        let mut res = Response::new(Body::full(self.body.clone()));
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        std::future::ready(Ok(res))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    fn echo_principal(
    ) -> impl Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future = impl Send>
           + Clone {
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
}
