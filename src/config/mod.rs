//! The gateway's configuration file (TOML). `docs/configuration.md` lists
//! every key.
//!
//! Every option of authentication, authorization, pinning and backend
//! credentials is reachable from it. A bad file is refused before the
//! gateway starts, with the line and the key: unknown keys are errors, not
//! silently ignored. In short:
//!
//! ```toml
//! listen = "127.0.0.1:8080"
//! path = "/mcp"
//!
//! [backend]
//! name = "weather"
//! urls = ["http://127.0.0.1:3001/mcp"]
//! credentials.headers = { Authorization = "Bearer backend-token" }
//!
//! [auth]
//! resource = "http://127.0.0.1:8080/mcp"
//! authorization_servers = ["https://idp.example.com"]
//!
//! [[auth.api_keys]]
//! sha256 = "0c9a2f…"          # sha256 of the key, hex
//! subject = "ci-bot"
//! roles = ["reader"]
//!
//! [policy]
//! default = "deny"
//! [[policy.rules]]
//! effect = "allow"
//! roles = ["reader"]
//! tools = ["get_*"]
//!
//! [pinning]
//! mode = "block"
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use mcp_gateway_core::Principal;
use mcp_gateway_tower::audit::{
    ArgumentsPolicy, AuditConfig, AuditSink, JsonlConfig, JsonlSink, TracingSink,
};
use mcp_gateway_tower::auth::{ApiKeys, AuthChain, AuthConfig};
use mcp_gateway_tower::credentials::StaticCredentials;
use mcp_gateway_tower::jwt::{
    Algorithm, ClaimMapping, HttpJwksFetcher, JwksCache, JwtAuthenticator, JwtConfig, JwtKey,
};
use mcp_gateway_tower::limit::LimitConfig;
use mcp_gateway_tower::origin::OriginPolicy;
use mcp_gateway_tower::pinning::{PinMode, ToolPins};
use mcp_gateway_tower::rules::{PolicyConfig, RulePolicy};
use serde::Deserialize;
use toml::Spanned;

use mcp_gateway_axum::{McpGateway, McpGatewayBuilder};
use mcp_gateway_tower::auth::ClientCertAuthenticator;
use mcp_gateway_tower::upstream::{HttpUpstreamConfig, TlsClientConfig};

/// A configuration error: where (line, key) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, when read from one.
    pub file: Option<PathBuf>,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// The key, dotted (`auth.jwt.keys[0].alg`), when known.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.line) {
            (Some(file), Some(line)) => write!(f, "{}:{line}: ", file.display())?,
            (Some(file), None) => write!(f, "{}: ", file.display())?,
            (None, Some(line)) => write!(f, "line {line}: ")?,
            (None, None) => {}
        }
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Address to listen on (`--listen` overrides). Default `127.0.0.1:8080`.
    pub listen: Option<Spanned<String>>,
    /// MCP endpoint path. Default `/mcp`.
    #[serde(default = "default_path")]
    pub path: String,
    /// Serving threads. Default: one per core.
    pub threads: Option<usize>,
    /// Busy polling window of each serving thread, in microseconds
    /// ([`ServeOptions::busy_poll`](crate::serve::ServeOptions::busy_poll));
    /// 0, the default, turns it off.
    pub busy_poll_us: Option<u64>,
    /// Seconds a client may take to finish the TLS handshake and send a
    /// request's headers (also the idle limit of a keep-alive connection;
    /// [`ServeOptions::header_read_timeout`](crate::serve::ServeOptions::header_read_timeout)).
    /// Default 30; 0: no limit.
    pub header_read_timeout_secs: Option<u64>,
    /// Which server speaks clear-text HTTP/1.1: `"hyper"` (the default) or
    /// `"builtin"` ([`ServeOptions::http1`](crate::serve::ServeOptions::http1);
    /// `--http1-server` overrides).
    pub http1_server: Option<crate::serve::Http1Server>,
    /// Serve HTTPS; absent: clear text.
    pub tls: Option<TlsSection>,
    /// Extra allowed `Host` values.
    #[serde(default)]
    pub allow_hosts: Vec<String>,
    /// Extra allowed `Origin` values.
    #[serde(default)]
    pub allow_origins: Vec<String>,
    /// The backend.
    pub backend: BackendConfig,
    /// Authentication; absent: none (anonymous).
    pub auth: Option<AuthSection>,
    /// Authorization rules; absent: everything allowed.
    pub policy: Option<PolicyConfig>,
    /// Tool pinning; absent: off.
    pub pinning: Option<PinningSection>,
    /// Limits and quotas; absent: none.
    pub limits: Option<LimitConfig>,
    /// The audit log; absent: none.
    pub audit: Option<AuditSection>,
    #[serde(skip)]
    base: PathBuf,
    #[serde(skip)]
    text: String,
    #[serde(skip)]
    file: Option<PathBuf>,
    /// False while `parse` checks the file: sinks are not opened then.
    #[serde(skip)]
    opening: bool,
}

fn default_path() -> String {
    "/mcp".into()
}

/// `[backend]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// Its name (for policies, pins, credential providers). Default `default`.
    #[serde(default = "default_backend")]
    pub name: String,
    /// Instance URLs (several: instances of one backend).
    pub urls: Vec<Spanned<String>>,
    /// Credentials added to every upstream request.
    pub credentials: Option<CredentialsSection>,
    /// `https://` backends: PEM file of the CAs that sign the backend's
    /// certificate (only these are then trusted); default: the platform's
    /// roots.
    pub ca_file: Option<Spanned<String>>,
    /// PEM client certificate chain for backends that ask for one (mTLS).
    pub client_cert_file: Option<Spanned<String>>,
    /// PEM key of `client_cert_file`.
    pub client_key_file: Option<Spanned<String>>,
    /// Accept any certificate from the backend (test benches only; logged
    /// as a warning). Default false.
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// Speak HTTP/2 without TLS (h2c, prior knowledge) to `http://` URLs.
    /// Default false (`https://` backends get HTTP/2 by ALPN).
    #[serde(default)]
    pub http2_prior_knowledge: bool,
}

/// `[tls]`: serving HTTPS (`--tls-cert`, `--tls-key`, `--client-ca`
/// override).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// PEM certificate chain of the gateway.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// PEM CAs of client certificates: when set, every client must present
    /// one they signed, and its identity becomes the caller's principal
    /// when no API key or token names one.
    pub client_ca_file: Option<PathBuf>,
}

fn default_backend() -> String {
    "default".into()
}

/// `[backend.credentials]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialsSection {
    /// Header name → value.
    #[serde(default)]
    pub headers: BTreeMap<String, Spanned<String>>,
    /// Header name → environment variable holding the value (keeps secrets
    /// out of the file).
    #[serde(default)]
    pub headers_from_env: BTreeMap<String, Spanned<String>>,
}

/// `[auth]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// This endpoint's public URL: the RFC 9728 `resource` and the default
    /// JWT audience.
    pub resource: Option<String>,
    /// Authorization servers named in the metadata.
    #[serde(default)]
    pub authorization_servers: Vec<String>,
    /// Scopes every request needs.
    #[serde(default)]
    pub required_scopes: Vec<String>,
    /// Let requests without a credential through (no principal).
    #[serde(default)]
    pub allow_anonymous: bool,
    /// API keys.
    #[serde(default)]
    pub api_keys: Vec<ApiKeyEntry>,
    /// JWT bearer tokens.
    pub jwt: Option<JwtSection>,
}

/// `[[auth.api_keys]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyEntry {
    /// SHA-256 of the key, hex (`printf %s KEY | sha256sum`).
    pub sha256: Spanned<String>,
    /// The principal's subject.
    pub subject: String,
    /// Tenant.
    pub tenant: Option<String>,
    /// Roles.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Scopes.
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// `[auth.jwt]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtSection {
    /// Accepted issuers.
    #[serde(default)]
    pub issuers: Vec<String>,
    /// Accepted audiences; default: `[auth.resource]`.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Accepted algorithms (`RS256`, `ES256`, `EdDSA`, `HS256`, …).
    pub algorithms: Spanned<Vec<String>>,
    /// Clock-skew leeway, seconds (at most 300). Default 30.
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
    /// A JWKS URL (`http://`).
    pub jwks_url: Option<Spanned<String>>,
    /// Least time between refetches on an unknown `kid`. Default 30 s.
    #[serde(default = "default_min_refresh")]
    pub jwks_min_refresh_secs: u64,
    /// Refetch when the set is older than this. Default 600 s.
    #[serde(default = "default_max_age")]
    pub jwks_max_age_secs: u64,
    /// Static keys.
    #[serde(default)]
    pub keys: Vec<JwtKeyEntry>,
    /// Subject claim. Default `sub`.
    pub subject_claim: Option<String>,
    /// Roles claim. Default `roles`.
    pub roles_claim: Option<String>,
    /// Scopes claim. Default `scope`.
    pub scopes_claim: Option<String>,
    /// Tenant claim.
    pub tenant_claim: Option<String>,
    /// Other claims copied into the principal.
    #[serde(default)]
    pub claims: Vec<String>,
    /// Longest a verified token stays cached (never past its `exp`).
    /// Default 300 s; 0 turns the cache off.
    #[serde(default = "default_cache_ttl")]
    pub cache_ttl_secs: u64,
}

fn default_cache_ttl() -> u64 {
    300
}

fn default_leeway() -> u64 {
    30
}
fn default_min_refresh() -> u64 {
    30
}
fn default_max_age() -> u64 {
    600
}

/// `[[auth.jwt.keys]]`: exactly one of `pem_file`, `pem`, `secret_env`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtKeyEntry {
    /// Key id (`kid`).
    pub kid: Option<String>,
    /// The one algorithm this key verifies.
    pub alg: Spanned<String>,
    /// A PEM public key file, relative to the configuration file.
    pub pem_file: Option<Spanned<String>>,
    /// A PEM public key inline.
    pub pem: Option<Spanned<String>>,
    /// An environment variable holding an HMAC secret.
    pub secret_env: Option<Spanned<String>>,
}

/// `[audit]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSection {
    /// `jsonl` (needs `[audit.jsonl]`) or `tracing`. Default: `jsonl`
    /// when `[audit.jsonl]` is given, else `tracing`.
    pub sink: Option<Spanned<String>>,
    /// `omit` (default), `hash`, or `{ redact = ["password", …] }`.
    #[serde(default)]
    pub arguments: ArgumentsPolicy,
    /// The JSON Lines file (`path` relative to the configuration file).
    pub jsonl: Option<JsonlConfig>,
}

/// `[pinning]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinningSection {
    /// `off`, `log`, `hide` or `block`.
    pub mode: PinMode,
}

/// What [`GatewayConfig::builder`] made, with the handles an operator
/// needs at run time.
pub struct Built {
    /// The gateway builder, ready to `build()`.
    pub builder: McpGatewayBuilder,
    /// The rule policy, to [`RulePolicy::replace`] on reload.
    pub policy: Option<Arc<RulePolicy>>,
    /// The pins, to accept changed tools.
    pub pins: Option<Arc<ToolPins>>,
    /// The audit sink, to flush at shutdown.
    pub audit: Option<Arc<dyn AuditSink>>,
}

impl fmt::Debug for Built {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Built").finish_non_exhaustive()
    }
}

impl GatewayConfig {
    /// Reads and checks a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: Some(path.to_owned()),
            line: None,
            key: None,
            message: format!("cannot read: {e}"),
        })?;
        let base = path.parent().map(Path::to_owned).unwrap_or_default();
        Self::parse(&text, &base)
            .map_err(|mut e| {
                e.file = Some(path.to_owned());
                e
            })
            .map(|mut c| {
                c.file = Some(path.to_owned());
                c
            })
    }

    /// Parses `text`; relative paths in it are relative to `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Self, ConfigError> {
        let mut cfg: GatewayConfig = toml::from_str(text).map_err(|e| {
            let at = e.span().map(|s| s.start);
            ConfigError {
                file: None,
                line: at.map(|o| line_of(text, o)),
                key: at.and_then(|o| key_at(text, o)),
                message: e.message().to_owned(),
            }
        })?;
        cfg.base = base.to_owned();
        cfg.text = text.to_owned();
        // Build once to check every value now, not at first request.
        cfg.builder()?;
        cfg.opening = true;
        Ok(cfg)
    }

    fn err<T>(
        &self,
        span: Option<std::ops::Range<usize>>,
        key: &str,
        msg: impl Into<String>,
    ) -> Result<T, ConfigError> {
        Err(ConfigError {
            file: self.file.clone(),
            line: span.map(|s| line_of(&self.text, s.start)),
            key: Some(key.to_owned()),
            message: msg.into(),
        })
    }

    /// The listen address, if the file sets one.
    pub fn listen(&self) -> Result<Option<SocketAddr>, ConfigError> {
        match &self.listen {
            None => Ok(None),
            Some(l) => match l.get_ref().parse() {
                Ok(a) => Ok(Some(a)),
                Err(e) => self.err(Some(l.span()), "listen", format!("not an address: {e}")),
            },
        }
    }

    /// The gateway this file describes.
    pub fn builder(&self) -> Result<Built, ConfigError> {
        let mut b = McpGateway::builder()
            .path(&self.path)
            .backend_name(self.backend.name.as_str());
        if !self.path.starts_with('/') {
            return self.err(None, "path", "must start with /");
        }
        if self.backend.urls.is_empty() {
            return self.err(None, "backend.urls", "at least one URL is needed");
        }
        b = b.http_upstream_config(self.upstream_config()?);
        for (i, u) in self.backend.urls.iter().enumerate() {
            b = match b.upstream_url(u.get_ref()) {
                Ok(b) => b,
                Err(e) => {
                    return self.err(Some(u.span()), &format!("backend.urls[{i}]"), e.to_string())
                }
            };
        }
        if let Some(c) = &self.backend.credentials {
            b = b.credentials(Arc::new(self.credentials(c)?));
        }
        let listen = self.listen()?;
        let mut origin = match listen {
            Some(a) if !a.ip().is_loopback() => OriginPolicy::same_origin(),
            _ => OriginPolicy::loopback(),
        };
        if !self.allow_hosts.is_empty() {
            origin = origin.allow_hosts(&self.allow_hosts);
        }
        if !self.allow_origins.is_empty() {
            origin = origin.allow_origins(&self.allow_origins);
        }
        b = b.origin_policy(origin);
        let client_certs = self
            .tls
            .as_ref()
            .is_some_and(|t| t.client_ca_file.is_some());
        match &self.auth {
            Some(a) => b = self.auth(a, b, client_certs)?,
            None if client_certs => {
                b = b.authenticator(
                    Arc::new(ClientCertAuthenticator::new()),
                    AuthConfig::default(),
                )
            }
            None => {}
        }
        let policy = self.policy.as_ref().map(|p| Arc::new(RulePolicy::new(p)));
        if let Some(p) = &policy {
            b = b.policy(p.clone());
        }
        let pins = self
            .pinning
            .as_ref()
            .filter(|p| p.mode != PinMode::Off)
            .map(|p| Arc::new(ToolPins::new(p.mode)));
        if let Some(p) = &pins {
            b = b.pins(p.clone());
        }
        if let Some(l) = &self.limits {
            b = b.limits(l.clone());
        }
        let audit = match &self.audit {
            Some(a) => Some(self.audit_sink(a)?),
            None => None,
        };
        if let (Some(sink), Some(a)) = (&audit, &self.audit) {
            b = b.audit(
                sink.clone(),
                AuditConfig {
                    arguments: a.arguments.clone(),
                },
            );
        }
        Ok(Built {
            builder: b,
            policy,
            pins,
            audit,
        })
    }

    fn audit_sink(&self, a: &AuditSection) -> Result<Arc<dyn AuditSink>, ConfigError> {
        let kind = a
            .sink
            .as_ref()
            .map(|s| s.get_ref().as_str())
            .unwrap_or(if a.jsonl.is_some() {
                "jsonl"
            } else {
                "tracing"
            });
        let span = a.sink.as_ref().map(|s| s.span());
        match kind {
            "tracing" => Ok(Arc::new(TracingSink)),
            "jsonl" => {
                let Some(j) = &a.jsonl else {
                    return self.err(
                        span,
                        "audit.sink",
                        "jsonl needs an [audit.jsonl] section with a path",
                    );
                };
                let mut j = j.clone();
                j.path = self.base.join(&j.path);
                if self.opening {
                    match JsonlSink::open(j.clone()) {
                        Ok(s) => Ok(Arc::new(s)),
                        Err(e) => self.err(
                            None,
                            "audit.jsonl.path",
                            format!("cannot open {}: {e}", j.path.display()),
                        ),
                    }
                } else {
                    // Checking only: do not create files.
                    Ok(Arc::new(TracingSink))
                }
            }
            other => self.err(
                span,
                "audit.sink",
                format!("unknown sink {other:?} (jsonl or tracing)"),
            ),
        }
    }

    fn credentials(&self, c: &CredentialsSection) -> Result<StaticCredentials, ConfigError> {
        let mut creds = StaticCredentials::new();
        let mut add = |name: &str, value: &str, span, key: String| -> Result<(), ConfigError> {
            let n = HeaderName::from_bytes(name.as_bytes());
            let v = HeaderValue::from_str(value);
            match (n, v) {
                (Ok(n), Ok(v)) => {
                    creds = std::mem::take(&mut creds).with(n, v);
                    Ok(())
                }
                _ => self.err(Some(span), &key, "not a valid header name and value"),
            }
        };
        for (name, v) in &c.headers {
            add(
                name,
                v.get_ref(),
                v.span(),
                format!("backend.credentials.headers.{name}"),
            )?;
        }
        for (name, var) in &c.headers_from_env {
            let key = format!("backend.credentials.headers_from_env.{name}");
            let Ok(value) = std::env::var(var.get_ref()) else {
                return self.err(
                    Some(var.span()),
                    &key,
                    format!("environment variable {} is not set", var.get_ref()),
                );
            };
            add(name, &value, var.span(), key)?;
        }
        Ok(creds)
    }

    /// The serving TLS configuration `[tls]` describes, if any; errors name
    /// the key and the file.
    pub fn server_tls(&self) -> Result<Option<Arc<rustls::ServerConfig>>, ConfigError> {
        let Some(t) = &self.tls else {
            return Ok(None);
        };
        let (cert, key) = match (&t.cert_file, &t.key_file) {
            (Some(c), Some(k)) => (self.path_of(c), self.path_of(k)),
            (None, _) => return self.err(None, "tls.cert_file", "needed to serve HTTPS"),
            (_, None) => return self.err(None, "tls.key_file", "needed to serve HTTPS"),
        };
        let ca = t.client_ca_file.as_ref().map(|c| self.path_of(c));
        crate::serve::tls::server_config(&cert, &key, ca.as_deref())
            .map(Some)
            .map_err(|e| ConfigError {
                file: self.file.clone(),
                line: None,
                key: Some("tls".into()),
                message: e,
            })
    }

    /// `p`, relative to the file's folder when not absolute.
    fn path_of(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.base.join(p)
        }
    }

    /// The backend's HTTP client settings, TLS files checked.
    fn upstream_config(&self) -> Result<HttpUpstreamConfig, ConfigError> {
        let be = &self.backend;
        let mut tls = TlsClientConfig::default().insecure_skip_verify(be.insecure_skip_verify);
        for (key, v) in [
            ("backend.ca_file", &be.ca_file),
            ("backend.client_cert_file", &be.client_cert_file),
            ("backend.client_key_file", &be.client_key_file),
        ] {
            let Some(v) = v else { continue };
            let path = self.path_of(Path::new(v.get_ref()));
            if let Err(e) = std::fs::metadata(&path) {
                return self.err(Some(v.span()), key, format!("{}: {e}", path.display()));
            }
            match key {
                "backend.ca_file" => tls.ca_file = Some(path),
                "backend.client_cert_file" => tls.client_cert_file = Some(path),
                _ => tls.client_key_file = Some(path),
            }
        }
        Ok(HttpUpstreamConfig::default()
            .http2_prior_knowledge(be.http2_prior_knowledge)
            .tls(tls))
    }

    fn auth(
        &self,
        a: &AuthSection,
        mut b: McpGatewayBuilder,
        client_certs: bool,
    ) -> Result<McpGatewayBuilder, ConfigError> {
        let mut chain = AuthChain::new();
        if let Some(j) = &a.jwt {
            chain = chain.with(self.jwt(a, j)?);
        }
        if !a.api_keys.is_empty() {
            let mut keys = ApiKeys::new();
            for (i, k) in a.api_keys.iter().enumerate() {
                let mut p = Principal::builder(k.subject.clone())
                    .auth_method("api_key")
                    .roles(k.roles.iter().cloned())
                    .scopes(k.scopes.iter().cloned());
                if let Some(t) = &k.tenant {
                    p = p.tenant(t.clone());
                }
                keys = match keys.with_hash(k.sha256.get_ref(), p.build()) {
                    Ok(keys) => keys,
                    Err(e) => {
                        return self.err(
                            Some(k.sha256.span()),
                            &format!("auth.api_keys[{i}].sha256"),
                            e,
                        )
                    }
                };
            }
            chain = chain.with(keys);
        }
        if client_certs {
            // Tokens and keys name the caller when present; the verified
            // certificate otherwise.
            chain = chain.with(ClientCertAuthenticator::new());
        }
        if a.jwt.is_none() && a.api_keys.is_empty() && !a.allow_anonymous && !client_certs {
            return self.err(
                None,
                "auth",
                "configure api_keys or jwt (or allow_anonymous, or tls.client_ca_file)",
            );
        }
        if let Some(r) = &a.resource {
            b = b.protected_resource(r, &a.authorization_servers, &a.required_scopes);
        }
        Ok(b.authenticator(
            Arc::new(chain),
            AuthConfig {
                resource_metadata: None,
                required_scopes: a.required_scopes.clone(),
                allow_anonymous: a.allow_anonymous,
            },
        ))
    }

    fn jwt(&self, a: &AuthSection, j: &JwtSection) -> Result<JwtAuthenticator, ConfigError> {
        let mut algorithms = Vec::new();
        for name in j.algorithms.get_ref() {
            match name.parse::<Algorithm>() {
                Ok(alg) => algorithms.push(alg),
                Err(_) => {
                    return self.err(
                        Some(j.algorithms.span()),
                        "auth.jwt.algorithms",
                        format!("unknown algorithm {name:?}"),
                    )
                }
            }
        }
        if algorithms.is_empty() {
            return self.err(
                Some(j.algorithms.span()),
                "auth.jwt.algorithms",
                "name at least one algorithm",
            );
        }
        if j.leeway_secs > 300 {
            return self.err(None, "auth.jwt.leeway_secs", "at most 300 seconds");
        }
        let mut keys = Vec::new();
        for (i, k) in j.keys.iter().enumerate() {
            let key = format!("auth.jwt.keys[{i}]");
            let Ok(alg) = k.alg.get_ref().parse::<Algorithm>() else {
                return self.err(
                    Some(k.alg.span()),
                    &format!("{key}.alg"),
                    format!("unknown algorithm {:?}", k.alg.get_ref()),
                );
            };
            if !algorithms.contains(&alg) {
                return self.err(
                    Some(k.alg.span()),
                    &format!("{key}.alg"),
                    "not in auth.jwt.algorithms",
                );
            }
            let made = match (&k.pem_file, &k.pem, &k.secret_env) {
                (Some(f), None, None) => {
                    let path = self.base.join(f.get_ref());
                    match std::fs::read(&path) {
                        Ok(pem) => {
                            JwtKey::pem(k.kid.as_deref(), alg, &pem).map_err(|e| (f.span(), e))
                        }
                        Err(e) => Err((f.span(), format!("cannot read {}: {e}", path.display()))),
                    }
                }
                (None, Some(p), None) => JwtKey::pem(k.kid.as_deref(), alg, p.get_ref().as_bytes())
                    .map_err(|e| (p.span(), e)),
                (None, None, Some(var)) => match std::env::var(var.get_ref()) {
                    Ok(secret) => JwtKey::hmac(k.kid.as_deref(), alg, secret.as_bytes())
                        .map_err(|e| (var.span(), e)),
                    Err(_) => Err((
                        var.span(),
                        format!("environment variable {} is not set", var.get_ref()),
                    )),
                },
                _ => Err((
                    k.alg.span(),
                    "give exactly one of pem_file, pem, secret_env".to_owned(),
                )),
            };
            match made {
                Ok(k) => keys.push(k),
                Err((span, e)) => return self.err(Some(span), &key, e),
            }
        }
        let jwks = match &j.jwks_url {
            None => None,
            Some(u) => match HttpJwksFetcher::new(u.get_ref()) {
                Ok(f) => Some(JwksCache::new(
                    f,
                    Duration::from_secs(j.jwks_min_refresh_secs),
                    Duration::from_secs(j.jwks_max_age_secs),
                )),
                Err(e) => return self.err(Some(u.span()), "auth.jwt.jwks_url", e),
            },
        };
        if keys.is_empty() && jwks.is_none() {
            return self.err(None, "auth.jwt", "configure keys or jwks_url");
        }
        let defaults = ClaimMapping::default();
        let audiences = if j.audiences.is_empty() {
            a.resource.iter().cloned().collect()
        } else {
            j.audiences.clone()
        };
        let cfg = JwtConfig {
            issuers: j.issuers.clone(),
            audiences,
            algorithms,
            leeway: Duration::from_secs(j.leeway_secs),
            claims: ClaimMapping {
                subject: j.subject_claim.clone().unwrap_or(defaults.subject),
                roles: j.roles_claim.clone().unwrap_or(defaults.roles),
                scopes: j.scopes_claim.clone().unwrap_or(defaults.scopes),
                tenant: j.tenant_claim.clone(),
                extra: j.claims.clone(),
            },
            cache_ttl: Duration::from_secs(j.cache_ttl_secs),
            ..Default::default()
        };
        Ok(JwtAuthenticator::new(cfg, keys, jwks))
    }
}

/// The dotted key of the `key = value` line holding `offset`, qualified
/// by the table header above it (`[auth.jwt]`, `[[policy.rules]]`).
fn key_at(text: &str, offset: usize) -> Option<String> {
    let start = text[..offset.min(text.len())]
        .rfind('\n')
        .map_or(0, |i| i + 1);
    let line = text[start..].lines().next().unwrap_or("");
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"'))?;
    let table = text[..start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|h| h.trim_matches(|c| c == '[' || c == ']').trim().to_owned());
    Some(match table {
        Some(t) if !t.is_empty() => format!("{t}.{key}"),
        _ => key.to_owned(),
    })
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests;
