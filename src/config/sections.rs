//! The tables of the file, as they deserialize.

#[allow(unused_imports)]
use super::*;

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
