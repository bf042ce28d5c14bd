//! The tables of the file, as they deserialize.

#[allow(unused_imports)]
use super::*;

/// `[backend]`, and each `[backends.NAME]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// Its name (for policies, pins, credential providers). Default
    /// `default`; in `[backends.NAME]`, `NAME`.
    #[serde(default = "default_backend")]
    pub name: String,
    /// Instance URLs (several: instances of one backend).
    #[serde(default)]
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
    /// Overrides `[timeouts] upstream_connect_ms` for this backend.
    pub upstream_connect_ms: Option<u64>,
    /// Overrides `[timeouts] upstream_first_byte_secs` for this backend.
    pub upstream_first_byte_secs: Option<u64>,
    /// Overrides `[timeouts] upstream_idle_secs` for this backend.
    pub upstream_idle_secs: Option<u64>,
    /// Active health probes of each instance.
    #[serde(default)]
    pub health: HealthSection,
    /// Passive outlier detection.
    #[serde(default)]
    pub outlier: OutlierSection,
    /// How new sessions and stateless calls pick an instance:
    /// `"least_outstanding"` (default) or `"round_robin"`.
    #[serde(default)]
    pub balance: Balance,
    /// What a session does when its instance is lost: `"reinitialize"`
    /// (default: set up again elsewhere, unnoticed) or `"error"` (404).
    #[serde(default)]
    pub failover: Failover,
    /// Seconds a draining instance keeps its sessions before they move.
    /// Default 300.
    pub drain_timeout_secs: Option<u64>,
    /// How `urls` are spoken to: `"streamable_http"` (default) or `"sse"`
    /// (the legacy 2024-11-05 HTTP+SSE transport: each URL is the server's
    /// `GET` stream, e.g. `http://10.0.0.7:3000/sse`).
    pub transport: Option<BackendTransport>,
    /// A stdio server instead of `urls`: the program and its arguments,
    /// run without a shell.
    pub command: Option<Vec<String>>,
    /// stdio: variables set for the child, added to a cleared environment
    /// (keeping `PATH` and `HOME`) unless `inherit_env`.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// stdio: start the child from the gateway's environment. Default false.
    #[serde(default)]
    pub inherit_env: bool,
    /// stdio: the child's working directory.
    pub cwd: Option<String>,
    /// stdio / sse: `"per_session"` (default: a server per client session)
    /// or `"shared"` (one for all sessions, for stateless servers).
    pub mode: Option<mcp_gateway_tower::upstream::bridge::BridgeMode>,
    /// per_session: servers at once; new sessions beyond it get 503 /
    /// -32052. Default 64.
    pub max_processes: Option<usize>,
    /// shared: restarts after a crash, with backoff.
    pub restart: Option<RestartSection>,
    /// stdio: the longest line the child may write. Default 16 MiB.
    pub max_line_bytes: Option<usize>,
}

/// `transport` of a backend with `urls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendTransport {
    /// Streamable HTTP (2025-03-26 and later).
    StreamableHttp,
    /// Legacy HTTP+SSE (2024-11-05).
    Sse,
}

/// `restart = { max_per_minute = 5 }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartSection {
    /// Restarts allowed in any minute. Default 5.
    pub max_per_minute: u32,
}

/// `[backend.health]`: active probes (see `docs/resilience.md`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSection {
    /// Probe the instances. Default true.
    #[serde(default = "yes")]
    pub active: bool,
    /// Seconds between probes. Default 10.
    #[serde(default = "ten")]
    pub interval_secs: u64,
    /// Milliseconds a probe may take. Default 2000.
    #[serde(default = "two_thousand")]
    pub timeout_ms: u64,
    /// Failed probes in a row that mark an instance unhealthy. Default 2.
    #[serde(default = "two")]
    pub unhealthy_threshold: u32,
    /// Passed probes in a row that mark it healthy again. Default 2.
    #[serde(default = "two")]
    pub healthy_threshold: u32,
    /// `"ping"` (default: initialize once, then ping) or `"discover"`
    /// (2026-07-28 `server/discover`).
    #[serde(default = "ping")]
    pub probe: Probe,
}

impl Default for HealthSection {
    fn default() -> Self {
        HealthSection {
            active: true,
            interval_secs: 10,
            timeout_ms: 2000,
            unhealthy_threshold: 2,
            healthy_threshold: 2,
            probe: Probe::Ping,
        }
    }
}

/// `[backend.outlier]`: passive outlier detection.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierSection {
    /// Failures in a row (connect failures, 5xx, timeouts, broken
    /// streams) that eject an instance; 0 turns detection off. Default 3.
    #[serde(default = "three")]
    pub consecutive_failures: u32,
    /// Seconds of the first ejection; doubled for each one in a row.
    /// Default 5.
    #[serde(default = "five")]
    pub base_ejection_secs: u64,
    /// The longest ejection, seconds. Default 300.
    #[serde(default = "three_hundred")]
    pub max_ejection_secs: u64,
}

impl Default for OutlierSection {
    fn default() -> Self {
        OutlierSection {
            consecutive_failures: 3,
            base_ejection_secs: 5,
            max_ejection_secs: 300,
        }
    }
}

fn ten() -> u64 {
    10
}
fn two_thousand() -> u64 {
    2000
}
fn two() -> u32 {
    2
}
fn three() -> u32 {
    3
}
fn five() -> u64 {
    5
}
fn three_hundred() -> u64 {
    300
}
fn ping() -> Probe {
    Probe::Ping
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

/// `[aggregate]`: how several `[backends.NAME]` are served as one.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateSection {
    /// `"always"` (default with two or more backends: `db__query`),
    /// `"conflicts"` (only names two backends share), or `"never"` (two
    /// backends with one name refuse to start).
    pub prefix: Option<mcp_gateway_axum::PrefixMode>,
    /// Between the backend's name and its tool's. Default `__`.
    pub separator: Option<String>,
    /// A session starts only if every backend initializes. Default false.
    #[serde(default)]
    pub require_all: bool,
    /// Milliseconds the backends get to answer `initialize`. Default 10 000.
    pub init_timeout_ms: Option<u64>,
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
    /// `jsonl` (needs `[audit.jsonl]`), `clickhouse` (needs
    /// `[audit.clickhouse]`) or `tracing`. Default: `jsonl` when
    /// `[audit.jsonl]` is given, else `clickhouse` when
    /// `[audit.clickhouse]` is, else `tracing`.
    pub sink: Option<Spanned<String>>,
    /// `omit` (default), `hash`, or `{ redact = ["password", …] }`.
    #[serde(default)]
    pub arguments: ArgumentsPolicy,
    /// The JSON Lines file (`path` relative to the configuration file).
    pub jsonl: Option<JsonlConfig>,
    /// The ClickHouse table (`url`, `table`, …; `password_env` names the
    /// variable holding the password).
    pub clickhouse: Option<mcp_gateway_tower::audit::ClickHouseConfig>,
}

/// `[pinning]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinningSection {
    /// `off`, `log`, `hide` or `block`.
    pub mode: PinMode,
}

/// `[timeouts]`, and the command-line flags of the same names (a flag
/// overrides the key). Every timeout of the gateway, in one place; a
/// backend's table may override the three `upstream_*` ones. 0 turns off
/// the ones that can be off (`upstream_idle_secs`, `session_max_secs`,
/// `sse_keepalive_secs`, `client_header_secs`, `client_idle_secs`,
/// `shutdown_secs`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsSection {
    /// Milliseconds to connect to a backend, its TLS handshake included
    /// [default: 2000].
    #[arg(long, value_name = "MS")]
    pub upstream_connect_ms: Option<u64>,
    /// Seconds until a backend's response head; past it the call is a 504
    /// (-32051) [default: 30].
    #[arg(long, value_name = "SECONDS")]
    pub upstream_first_byte_secs: Option<u64>,
    /// Seconds a backend's open stream may send nothing before it ends
    /// with an error; progress notifications reset it [default: 300].
    #[arg(long, value_name = "SECONDS")]
    pub upstream_idle_secs: Option<u64>,
    /// Seconds a session may go unused before it expires [default: 1800].
    #[arg(long, value_name = "SECONDS")]
    pub session_idle_secs: Option<u64>,
    /// Seconds a session may live, used or not [default: 86400].
    #[arg(long, value_name = "SECONDS")]
    pub session_max_secs: Option<u64>,
    /// Seconds between keep-alive comments on a quiet SSE stream
    /// [default: 15].
    #[arg(long, value_name = "SECONDS")]
    pub sse_keepalive_secs: Option<u64>,
    /// Seconds a client may take for the TLS handshake and a request's
    /// headers [default: 30].
    #[arg(long, value_name = "SECONDS", visible_alias = "header-timeout-secs")]
    pub client_header_secs: Option<u64>,
    /// Seconds a client connection may stay open with no request in
    /// progress [default: 120].
    #[arg(long, value_name = "SECONDS")]
    pub client_idle_secs: Option<u64>,
    /// Seconds requests in progress get to finish after SIGTERM / SIGINT
    /// before the connections left are closed [default: 30].
    #[arg(long, value_name = "SECONDS")]
    pub shutdown_secs: Option<u64>,
}

/// `Some(0)` is off; `None` keeps the default.
fn off_or(v: Option<u64>, default: Option<Duration>) -> Option<Duration> {
    match v {
        None => default,
        Some(0) => None,
        Some(s) => Some(Duration::from_secs(s)),
    }
}

impl TimeoutsSection {
    /// Each value of `self`, else of `other`.
    pub fn or(&self, other: &TimeoutsSection) -> TimeoutsSection {
        TimeoutsSection {
            upstream_connect_ms: self.upstream_connect_ms.or(other.upstream_connect_ms),
            upstream_first_byte_secs: self
                .upstream_first_byte_secs
                .or(other.upstream_first_byte_secs),
            upstream_idle_secs: self.upstream_idle_secs.or(other.upstream_idle_secs),
            session_idle_secs: self.session_idle_secs.or(other.session_idle_secs),
            session_max_secs: self.session_max_secs.or(other.session_max_secs),
            sse_keepalive_secs: self.sse_keepalive_secs.or(other.sse_keepalive_secs),
            client_header_secs: self.client_header_secs.or(other.client_header_secs),
            client_idle_secs: self.client_idle_secs.or(other.client_idle_secs),
            shutdown_secs: self.shutdown_secs.or(other.shutdown_secs),
        }
    }

    /// The backend client's timeouts; `Err` names a key that cannot be 0.
    pub fn upstream(&self, cfg: HttpUpstreamConfig) -> Result<HttpUpstreamConfig, &'static str> {
        let mut cfg = cfg;
        match self.upstream_connect_ms {
            Some(0) => return Err("upstream_connect_ms"),
            Some(ms) => cfg = cfg.connect_timeout(Duration::from_millis(ms)),
            None => {}
        }
        match self.upstream_first_byte_secs {
            Some(0) => return Err("upstream_first_byte_secs"),
            Some(s) => cfg = cfg.response_timeout(Duration::from_secs(s)),
            None => {}
        }
        let idle = off_or(self.upstream_idle_secs, cfg.idle_timeout);
        Ok(cfg.idle_timeout(idle))
    }

    /// The session table's timeouts; `Err` names a key that cannot be 0.
    pub fn sessions(&self, cfg: InMemoryConfig) -> Result<InMemoryConfig, &'static str> {
        let mut cfg = cfg;
        match self.session_idle_secs {
            Some(0) => return Err("session_idle_secs"),
            Some(s) => cfg.idle_timeout = Duration::from_secs(s),
            None => {}
        }
        cfg.max_age = off_or(self.session_max_secs, cfg.max_age);
        Ok(cfg)
    }

    /// The SSE relay's keep-alive.
    pub fn sse(&self, cfg: SseRelayConfig) -> SseRelayConfig {
        let mut cfg = cfg;
        cfg.keep_alive = off_or(self.sse_keepalive_secs, cfg.keep_alive);
        cfg
    }

    /// The client-side timeouts of serving.
    pub fn serve(&self, opts: crate::serve::ServeOptions) -> crate::serve::ServeOptions {
        let header = off_or(self.client_header_secs, opts.header_read_timeout);
        let idle = off_or(self.client_idle_secs, opts.idle_timeout);
        let shutdown = off_or(self.shutdown_secs, opts.shutdown_timeout);
        opts.header_read_timeout(header)
            .idle_timeout(idle)
            .shutdown_timeout(shutdown)
    }
}

/// `[sessions]`: the session table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionsSection {
    /// Sessions at once [default: 100000].
    pub max_sessions: Option<usize>,
    /// When the table is full, sessions unused for at least this many
    /// seconds are evicted, least recently used first, before a new one is
    /// refused [default: 60]; 0 makes every session evictable.
    pub evict_idle_secs: Option<u64>,
    /// Never evict: a full table refuses new sessions. Default false.
    #[serde(default)]
    pub no_eviction: bool,
    /// The gateway numbers SSE events itself, keeps them, and answers
    /// `Last-Event-ID` (a call's stream is read on while its client is
    /// away). Default: false, or true with `[cluster] redis_url` (events
    /// kept in Redis, so a client resumes on any replica).
    pub resumption: Option<bool>,
    /// How long a call's stream is read on after its client went away
    /// [default: 300].
    pub resume_drain_secs: Option<u64>,
}

/// `[cluster]`: replicas sharing sessions, limits and resumable streams.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// `redis://[user:password@]host:port/db` (plain TCP). Required with
    /// `session_ids = "store"`; with `"sealed"` it shares revocations,
    /// limits and streams when given.
    pub redis_url: Option<Spanned<String>>,
    /// `"store"` (records in Redis, the default) or `"sealed"` (the
    /// routing state sealed into the session id).
    #[serde(default)]
    pub session_ids: SessionIds,
    /// Prefix of every Redis key and channel [default: "mcpgw:"].
    pub key_prefix: Option<String>,
    /// One Redis command's timeout, connect included [default: 1000].
    pub timeout_ms: Option<u64>,
    /// Multiplexed Redis connections, each serving thread keeping to one
    /// [default: one per core, at least 2].
    pub pool_size: Option<usize>,
    /// What `[limits]` do while Redis cannot be reached: `"fail_open"`
    /// (the default) or `"fail_closed"`.
    #[serde(default)]
    pub on_redis_error: mcp_gateway_tower::cluster::FailMode,
    /// How long a session or in-flight slot of a replica that died stays
    /// taken, seconds; live replicas renew theirs [default: 30].
    pub lease_secs: Option<u64>,
    /// The environment variable holding the sealing keys
    /// (`kid:base64key,…`, the first seals) [default:
    /// "MCP_GATEWAY_SEAL_KEYS"].
    pub seal_keys_env: Option<String>,
    /// How long a sealed session id is accepted [default: 3600].
    pub sealed_ttl_secs: Option<u64>,
}

/// `[cluster] session_ids`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionIds {
    /// Session records in Redis.
    #[default]
    Store,
    /// Routing state sealed into the id.
    Sealed,
}

/// `[connections]`: caps on open client connections (`--max-connections`,
/// `--max-connections-per-client` override).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionsSection {
    /// Client connections at once [default: 0, automatic: from the
    /// file-descriptor limit].
    pub max: Option<usize>,
    /// Client connections at once from one address, trusted proxies
    /// excepted [default: 256]; 0: no cap.
    pub per_client: Option<usize>,
}

/// `[cors]`: browser pages on other origins (`--cors-origin` adds).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsSection {
    /// Origins allowed to call the endpoint from a browser
    /// (`https://app.example`, `http://localhost:6274`).
    #[serde(default)]
    pub allow_origins: Vec<String>,
    /// Seconds a browser may cache a preflight answer [default: 600].
    pub max_age_secs: Option<u64>,
}

/// `[observability]`: metrics and traces.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObservabilitySection {
    /// Record metrics, served in the Prometheus text format at `/metrics`
    /// on the admin listener. Default true.
    #[serde(default = "yes")]
    pub metrics: bool,
    /// Also serve `/metrics` on the main listener, at this path (e.g.
    /// `"/metrics"`). Default: not on the main listener.
    pub metrics_path: Option<String>,
    /// Label the cost-attribution counters with the principal's subject
    /// (`enduser_id`). Default false (tenants are labelled).
    #[serde(default)]
    pub principal_labels: bool,
    /// Distinct values kept per label (tool, tenant, principal, …); later
    /// ones are counted as `_other`. Default 1000.
    #[serde(default = "thousand")]
    pub max_label_values: usize,
    /// Export over OTLP; absent: no export (metrics stay scrapeable).
    pub otlp: Option<OtlpSection>,
}

impl Default for ObservabilitySection {
    fn default() -> Self {
        ObservabilitySection {
            metrics: true,
            metrics_path: None,
            principal_labels: false,
            max_label_values: 1000,
            otlp: None,
        }
    }
}

fn thousand() -> usize {
    1000
}

/// How OTLP is carried.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum OtlpProtocol {
    /// Protobuf over HTTP (port 4318; `/v1/traces`, `/v1/metrics` are
    /// appended to the endpoint).
    #[default]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    /// gRPC (port 4317).
    #[serde(rename = "grpc")]
    Grpc,
}

/// `[observability.otlp]`: where traces (and metrics) are exported.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpSection {
    /// The collector, e.g. `http://127.0.0.1:4318` (HTTP) or
    /// `http://127.0.0.1:4317` (gRPC).
    pub endpoint: String,
    /// `"http/protobuf"` (default) or `"grpc"`.
    #[serde(default)]
    pub protocol: OtlpProtocol,
    /// Headers sent with each export (e.g. an API key).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Share of new traces sampled, 0.0 to 1.0 (a client's sampled flag is
    /// followed). Default 1.0.
    #[serde(default = "one_f")]
    pub sampling_ratio: f64,
    /// `service.name`. Default `mcp-gateway`.
    #[serde(default = "service_name")]
    pub service_name: String,
    /// More resource attributes (`deployment.environment`, …).
    #[serde(default)]
    pub resource_attributes: BTreeMap<String, String>,
    /// Export spans. Default true.
    #[serde(default = "yes")]
    pub traces: bool,
    /// Export metrics too. Default true.
    #[serde(default = "yes")]
    pub metrics: bool,
    /// How often metrics are pushed. Default 60.
    #[serde(default = "sixty")]
    pub metrics_interval_secs: u64,
    /// How long finished spans wait to be sent in a batch. Default 5000.
    #[serde(default = "five_thousand")]
    pub batch_delay_ms: u64,
    /// Time allowed for one export. Default 10000.
    #[serde(default = "ten_thousand")]
    pub timeout_ms: u64,
}

fn one_f() -> f64 {
    1.0
}
fn service_name() -> String {
    "mcp-gateway".into()
}
fn sixty() -> u64 {
    60
}
fn five_thousand() -> u64 {
    5000
}
fn ten_thousand() -> u64 {
    10_000
}
