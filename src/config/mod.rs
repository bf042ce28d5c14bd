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
    ArgumentsPolicy, AuditConfig, AuditSink, ClickHouseSink, JsonlConfig, JsonlSink, TracingSink,
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

use mcp_gateway_axum::{AggregateConfig, Backend, Cors, McpGateway, McpGatewayBuilder, PrefixMode};
use mcp_gateway_core::session::InMemoryConfig;
use mcp_gateway_tower::auth::ClientCertAuthenticator;
use mcp_gateway_tower::forwarded::TrustedProxies;
use mcp_gateway_tower::session::Failover;
use mcp_gateway_tower::sse::SseRelayConfig;
use mcp_gateway_tower::upstream::health::{
    ActiveHealth, Balance, HealthConfig, OutlierConfig, Probe,
};
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
    /// The former name of `[timeouts] client_header_secs`, still read
    /// (the `[timeouts]` key wins when both are set).
    pub header_read_timeout_secs: Option<u64>,
    /// Which server speaks clear-text HTTP/1.1: `"hyper"` (the default) or
    /// `"builtin"` ([`ServeOptions::http1`](crate::serve::ServeOptions::http1);
    /// `--http1-server` overrides).
    pub http1_server: Option<crate::serve::Http1Server>,
    /// Serve HTTPS; absent: clear text.
    pub tls: Option<TlsSection>,
    /// One INFO line per MCP message and session (the access log). Default
    /// true; `--no-access-log` turns it off.
    #[serde(default = "yes")]
    pub access_log: bool,
    /// Serve legacy HTTP+SSE clients (2024-11-05) at `{path}/sse` and
    /// `{path}/message`, through the same checks. Default true;
    /// `--no-legacy-sse` turns it off.
    #[serde(default = "yes")]
    pub legacy_sse: bool,
    /// Every timeout (flags of the same names override).
    #[serde(default)]
    pub timeouts: TimeoutsSection,
    /// The session table.
    #[serde(default)]
    pub sessions: SessionsSection,
    /// Caps on client connections.
    #[serde(default)]
    pub connections: ConnectionsSection,
    /// Browser clients on other origins; absent: no CORS.
    pub cors: Option<CorsSection>,
    /// Proxies (CIDRs or addresses) whose `X-Forwarded-For` names the
    /// client; everyone else's is dropped. Default: none.
    #[serde(default)]
    pub trusted_proxies: Vec<Spanned<String>>,
    /// Extra allowed `Host` values.
    #[serde(default)]
    pub allow_hosts: Vec<String>,
    /// Extra allowed `Origin` values.
    #[serde(default)]
    pub allow_origins: Vec<String>,
    /// The admin listener (`/healthz`, `/readyz`, `/admin/…`); absent:
    /// none. `--admin-listen` overrides.
    pub admin_listen: Option<Spanned<String>>,
    /// The environment variable holding the admin listener's bearer token;
    /// required when `admin_listen` is not a loopback address.
    pub admin_token_env: Option<String>,
    /// Reload the file when it changes (it is checked every second), as
    /// on SIGHUP. Default false.
    #[serde(default)]
    pub watch: bool,
    /// The backend (one; or several in `backends`).
    #[serde(default)]
    pub backend: BackendConfig,
    /// Several backends served as one (`[backends.NAME]`, the name their
    /// namespace), joined by `aggregate`.
    #[serde(default)]
    pub backends: std::collections::BTreeMap<String, BackendConfig>,
    /// How `backends` are joined.
    pub aggregate: Option<AggregateSection>,
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
    /// Replicas sharing state through Redis, or sealed session ids;
    /// absent: everything in process.
    pub cluster: Option<ClusterSection>,
    /// Metrics and traces; absent: metrics on (scraped on the admin
    /// listener), no export.
    #[serde(default)]
    pub observability: ObservabilitySection,
    /// What the running process records (set by the binary once its
    /// exporters are up; absent when checking a file).
    #[serde(skip)]
    pub telemetry: Option<mcp_gateway_tower::telemetry::Telemetry>,
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

fn yes() -> bool {
    true
}

fn default_path() -> String {
    "/mcp".into()
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
    /// The stdio and legacy SSE backends, to stop at shutdown.
    pub bridges: Vec<mcp_gateway_tower::upstream::bridge::Bridge>,
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

    pub(super) fn err<T>(
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

    /// Is `[backend]` a stdio (`command`) or legacy SSE (`transport =
    /// "sse"`) backend?
    pub fn backend_is_bridged(&self) -> bool {
        self.backend.command.is_some() || self.backend.transport == Some(BackendTransport::Sse)
    }

    /// The backend's instances as the file describes them: (URL, instance),
    /// each built with the backend's name, credentials and client
    /// settings. Nothing is started.
    pub fn backend_instances(
        &self,
    ) -> Result<Vec<(String, mcp_gateway_tower::upstream::UpstreamInstance)>, ConfigError> {
        let cfg = self.upstream_config()?;
        let creds: Option<Arc<dyn mcp_gateway_tower::credentials::CredentialProvider>> =
            match &self.backend.credentials {
                Some(c) => Some(Arc::new(self.credentials(c)?)),
                None => None,
            };
        let name: Arc<str> = self.backend.name.as_str().into();
        let mut out = Vec::new();
        for (i, u) in self.backend.urls.iter().enumerate() {
            match mcp_gateway_axum::http_instance(
                u.get_ref(),
                cfg.clone(),
                name.clone(),
                creds.clone(),
            ) {
                Ok(inst) => out.push((u.get_ref().clone(), inst)),
                Err(e) => {
                    return self.err(Some(u.span()), &format!("backend.urls[{i}]"), e.to_string())
                }
            }
        }
        if out.is_empty() {
            return self.err(None, "backend.urls", "at least one URL is needed");
        }
        Ok(out)
    }

    /// Health checks, balance and drain of the backend's instances.
    pub fn health_config(&self) -> Result<HealthConfig, ConfigError> {
        self.health_config_for(&self.backend, "backend")
    }

    /// [`health_config`](Self::health_config) of `be`, the table `key`.
    pub(super) fn health_config_for(
        &self,
        be: &BackendConfig,
        key: &str,
    ) -> Result<HealthConfig, ConfigError> {
        let (h, o) = (&be.health, &be.outlier);
        if h.active && (h.interval_secs == 0 || h.timeout_ms == 0) {
            return self.err(
                None,
                &format!("{key}.health"),
                "interval_secs and timeout_ms must be more than 0",
            );
        }
        if h.unhealthy_threshold == 0 || h.healthy_threshold == 0 {
            return self.err(
                None,
                &format!("{key}.health"),
                "thresholds must be at least 1",
            );
        }
        let active = h.active.then(|| {
            ActiveHealth::default()
                .interval(Duration::from_secs(h.interval_secs))
                .timeout(Duration::from_millis(h.timeout_ms))
                .thresholds(h.unhealthy_threshold, h.healthy_threshold)
                .probe(h.probe)
        });
        let mut outlier = OutlierConfig::default();
        outlier.consecutive_failures = o.consecutive_failures;
        outlier.base_ejection = Duration::from_secs(o.base_ejection_secs.max(1));
        outlier.max_ejection = Duration::from_secs(o.max_ejection_secs.max(o.base_ejection_secs));
        let mut cfg = HealthConfig::default()
            .active(active)
            .outlier(outlier)
            .balance(be.balance);
        if let Some(d) = be.drain_timeout_secs {
            cfg = cfg.drain_timeout(Duration::from_secs(d));
        }
        Ok(cfg)
    }

    /// What the backend's instances are built from, apart from their URLs:
    /// instances whose fingerprint changes on a reload are replaced.
    pub fn backend_fingerprint(&self) -> String {
        let be = &self.backend;
        let creds = be.credentials.as_ref().map(|c| {
            let headers: Vec<_> = c.headers.iter().map(|(k, v)| (k, v.get_ref())).collect();
            let env: Vec<_> = c
                .headers_from_env
                .iter()
                .map(|(k, v)| (k, v.get_ref()))
                .collect();
            format!("{headers:?} {env:?}")
        });
        let path = |v: &Option<Spanned<String>>| v.as_ref().map(|v| v.get_ref().clone());
        format!(
            "{} {creds:?} {:?} {:?} {:?} {} {} {:?} {:?} {:?} {:?}",
            be.name,
            path(&be.ca_file),
            path(&be.client_cert_file),
            path(&be.client_key_file),
            be.insecure_skip_verify,
            be.http2_prior_knowledge,
            be.upstream_connect_ms,
            be.upstream_first_byte_secs,
            be.upstream_idle_secs,
            (
                self.timeouts.upstream_connect_ms,
                self.timeouts.upstream_first_byte_secs,
                self.timeouts.upstream_idle_secs
            ),
        )
    }

    /// What the aggregate is built from (`[backends.NAME]`, `[aggregate]`):
    /// a reload that changes it needs a restart.
    pub fn aggregate_fingerprint(&self) -> String {
        let backends: Vec<String> = self
            .backends
            .iter()
            .map(|(n, b)| {
                let urls: Vec<&String> = b.urls.iter().map(|u| u.get_ref()).collect();
                format!(
                    "{n} {urls:?} {:?}",
                    b.credentials
                        .as_ref()
                        .map(|c| format!("{:?} {:?}", c.headers, c.headers_from_env))
                )
            })
            .collect();
        format!("{backends:?} {:?}", self.aggregate)
    }

    /// The admin listener's address, if one is set.
    pub fn admin_listen(&self) -> Result<Option<SocketAddr>, ConfigError> {
        match &self.admin_listen {
            None => Ok(None),
            Some(l) => match l.get_ref().parse() {
                Ok(a) => Ok(Some(a)),
                Err(e) => self.err(
                    Some(l.span()),
                    "admin_listen",
                    format!("not an address: {e}"),
                ),
            },
        }
    }

    /// The session table's settings (timeouts apart).
    pub(super) fn sessions_config(&self) -> InMemoryConfig {
        let mut cfg = InMemoryConfig::default();
        if let Some(n) = self.sessions.max_sessions {
            cfg.max_sessions = n;
        }
        if let Some(s) = self.sessions.evict_idle_secs {
            cfg.evict_idle = Some(Duration::from_secs(s));
        }
        if self.sessions.no_eviction {
            cfg.evict_idle = None;
        }
        cfg
    }

    /// `trusted_proxies`, parsed.
    pub fn trusted_proxies(&self) -> Result<TrustedProxies, ConfigError> {
        for (i, p) in self.trusted_proxies.iter().enumerate() {
            if let Err(e) = TrustedProxies::parse([p.get_ref()]) {
                return self.err(Some(p.span()), &format!("trusted_proxies[{i}]"), e);
            }
        }
        Ok(
            TrustedProxies::parse(self.trusted_proxies.iter().map(|p| p.get_ref()))
                .unwrap_or_default(),
        )
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
        let mut bridges = Vec::new();
        let mut b = McpGateway::builder()
            .path(&self.path)
            .backend_name(self.backend.name.as_str());
        if let Some(t) = &self.telemetry {
            b = b.telemetry(t.clone());
        }
        if !self.path.starts_with('/') {
            return self.err(None, "path", "must start with /");
        }
        if self.backends.is_empty() {
            if self.aggregate.is_some() {
                return self.err(None, "aggregate", "needs [backends.NAME] tables");
            }
            bridges = self.bridges(&self.backend, "backend", &self.backend.name)?;
            if self.backend.urls.is_empty() && bridges.is_empty() {
                return self.err(
                    None,
                    "backend.urls",
                    "at least one URL (or a stdio `command`) is needed",
                );
            }
            if bridges.is_empty() {
                b = b
                    .http_upstream_config(self.upstream_config()?)
                    .health(self.health_config()?)
                    .failover(self.backend.failover);
            } else {
                // A server's state dies with it: a session whose server
                // ended gets 404 and starts over (no probes either: a probe
                // would hold a server of its own).
                for br in &bridges {
                    b = b.upstream_service(br.clone());
                }
                b = b.failover(Failover::Error);
            }
        } else {
            if !self.backend.urls.is_empty() {
                return self.err(
                    None,
                    "backend",
                    "use one [backend] or several [backends.NAME], not both",
                );
            }
            b = self.backends(b, &mut bridges)?;
        }
        let sessions = self
            .timeouts
            .sessions(self.sessions_config())
            .or_else(|k| self.err(None, &format!("timeouts.{k}"), "must be more than 0"))?;
        b = b
            .session_config(sessions.clone())
            .sse_config(self.timeouts.sse(SseRelayConfig::default()))
            .trusted_proxies(self.trusted_proxies()?)
            .access_log(self.access_log)
            .legacy_sse(self.legacy_sse);
        if let Some(c) = &self.cors {
            let mut cors = Cors::new(c.allow_origins.iter().cloned());
            cors.max_age = c.max_age_secs.map(Duration::from_secs);
            b = b.cors(cors);
        }
        for (i, u) in self
            .backend
            .urls
            .iter()
            .enumerate()
            .filter(|_| self.backends.is_empty() && bridges.is_empty())
        {
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
        let shared = self.cluster(&sessions)?;
        if let Some(store) = shared.sessions {
            b = b.session_store(store);
        }
        if let Some(events) = shared.events {
            b = b.resumption(events, self.resume_config());
        }
        if let Some(l) = &self.limits {
            b = match shared.limiter {
                Some(limiter) => b.limits_with(l.clone(), limiter),
                None => b.limits(l.clone()),
            };
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
            bridges,
        })
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

mod build;
mod sections;
pub use self::sections::*;

#[cfg(test)]
mod tests;
