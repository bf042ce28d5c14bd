//! The `mcp-gateway` command line: flags, and running the gateway they
//! describe.
//!
//! The flags and the configuration file map onto one gateway: with
//! `--config`, the file describes it and the serving flags given beside it
//! override the file's keys of the same meaning.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use mcp_gateway_axum::GatewayHandles;
use mcp_gateway_axum::McpGateway;
use mcp_gateway_tower::audit::AuditSink;
use mcp_gateway_tower::auth::{AuthConfig, ClientCertAuthenticator};
use mcp_gateway_tower::origin::OriginPolicy;
use mcp_gateway_tower::upstream::health::{ActiveHealth, HealthConfig};

use crate::admin::{shown_url, Admin};
use crate::reload::Reloader;

use crate::config::{CorsSection, GatewayConfig, ObservabilitySection, TimeoutsSection};
use crate::observability::Observability;
use crate::serve::{self, Http1Server, ServeOptions};
use mcp_gateway_axum::Cors;
use mcp_gateway_core::session::InMemoryConfig;
use mcp_gateway_tower::forwarded::TrustedProxies;
use mcp_gateway_tower::sse::SseRelayConfig;
use mcp_gateway_tower::upstream::bridge::{Bridge, BridgeConfig, StdioCommand};
use mcp_gateway_tower::upstream::HttpUpstreamConfig;

/// A production gateway for the Model Context Protocol (MCP): one endpoint
/// in front of Streamable HTTP MCP servers, with sessions, SSE relay,
/// authentication, tool policies, limits and an audit log.
///
/// Run it with `--upstream URL` (every flag below), or describe the whole
/// gateway in a TOML file with `--config FILE` (docs/configuration.md).
#[derive(Debug, Clone, Parser)]
#[command(name = "mcp-gateway", version, about, long_about = None)]
pub struct Cli {
    /// Address to listen on [default: 127.0.0.1:8080]. With --config,
    /// overrides the file's `listen`.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// A backend instance URL (http:// or https://). Repeat it for several
    /// instances of one backend: new sessions are spread over them and a
    /// session stays on the instance it started on. Not with --config.
    #[arg(
        long = "upstream",
        value_name = "URL",
        required_unless_present_any = ["config", "stdio"]
    )]
    pub upstreams: Vec<String>,

    /// A stdio MCP server to serve on --listen: the command line, split as
    /// a shell would split it (quotes, backslashes) but run without a
    /// shell, e.g. `--stdio "npx -y @modelcontextprotocol/server-everything"`.
    /// One child per client session. Not with --upstream or --config.
    #[arg(long, value_name = "COMMAND", conflicts_with_all = ["config", "upstreams"])]
    pub stdio: Option<String>,

    /// The MCP endpoint path. With --config, the file's `path` is used.
    #[arg(long, value_name = "PATH", default_value = "/mcp", value_parser = endpoint_path)]
    pub path: String,

    /// The TOML configuration file describing the whole gateway (backend,
    /// auth, policy, limits, audit, TLS).
    #[arg(long, value_name = "FILE", conflicts_with = "upstreams")]
    pub config: Option<PathBuf>,

    /// Validate the --config file (keys, values, certificate and key files)
    /// and exit: 0 when it is good, 2 with the line and key when not.
    #[arg(long)]
    pub check_config: bool,

    /// An extra allowed `Host` value (HOST or HOST:PORT); repeatable. Bound
    /// to a loopback address the gateway accepts only loopback hosts and
    /// origins (DNS-rebinding protection); elsewhere a browser `Origin`
    /// must match the `Host`.
    #[arg(long = "allow-host", value_name = "HOST[:PORT]")]
    pub allow_hosts: Vec<String>,

    /// An extra allowed `Origin` value (scheme://host, with :port when not the
    /// scheme's default); repeatable.
    #[arg(long = "allow-origin", value_name = "ORIGIN")]
    pub allow_origins: Vec<String>,

    /// Serving threads, each with its own single-threaded runtime on a
    /// shared SO_REUSEPORT port. Default: one per core (or the file's
    /// `threads`).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub threads: Option<u32>,

    /// Busy polling window in microseconds: how long a serving thread keeps
    /// checking its sockets after its last activity before it sleeps. CPU
    /// time traded for latency on dedicated hosts. Default 0 (off).
    #[arg(long, value_name = "MICROSECONDS")]
    pub busy_poll_us: Option<u64>,

    /// The timeouts (also `[timeouts]` in the file, which these override).
    #[command(flatten)]
    pub timeouts: TimeoutsSection,

    /// A proxy (address or CIDR) whose X-Forwarded-For names the client;
    /// repeatable. Everyone else's X-Forwarded-For and Forwarded are
    /// dropped, and the gateway appends the address it saw.
    #[arg(long = "trusted-proxy", value_name = "CIDR")]
    pub trusted_proxies: Vec<String>,

    /// A browser origin allowed to call the endpoint (CORS, preflight
    /// included; also allowed by the origin guard); repeatable.
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    pub cors_origins: Vec<String>,

    /// Client connections open at once [default: from the file-descriptor
    /// limit]. Past it the gateway stops accepting until one closes.
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,

    /// Client connections open at once from one address (trusted proxies
    /// excepted) [default: 256; 0: no cap]. Past it: 429 and closed.
    #[arg(long, value_name = "N")]
    pub max_connections_per_client: Option<usize>,

    /// The clear-text HTTP/1.1 server: hyper (default) or builtin (less CPU
    /// per call; see docs/benchmarks.md). TLS and HTTP/2 are always hyper's.
    #[arg(long, value_name = "SERVER")]
    pub http1_server: Option<Http1Server>,

    /// Serve HTTPS with this PEM certificate chain (needs --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Ask every client for a certificate and verify it against the CAs in
    /// this PEM file (mutual TLS; needs --tls-cert). The certificate's
    /// identity becomes the caller's principal when no key or token names one.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub client_ca: Option<PathBuf>,

    /// No access log (one INFO line per MCP message, on by default; it costs
    /// CPU per call, see docs/benchmarks.md). Also `access_log = false`.
    #[arg(long)]
    pub no_access_log: bool,

    /// Do not serve legacy HTTP+SSE clients (2024-11-05: `GET {path}/sse`
    /// and `POST {path}/message`, on by default). Also `legacy_sse = false`.
    #[arg(long)]
    pub no_legacy_sse: bool,

    /// Serve the admin routes (`/healthz`, `/readyz`, `/admin/…`) on this
    /// address. Also `admin_listen`. Off unless set.
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,

    /// The environment variable holding the admin routes' bearer token
    /// (required for a non-loopback --admin-listen). Also `admin_token_env`.
    #[arg(long, value_name = "VAR")]
    pub admin_token_env: Option<String>,

    /// Log format on stderr: text or json. Colour only on a terminal.
    #[arg(long, value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,

    /// The running exporters (set by `run_with`).
    #[arg(skip)]
    observability: Option<Arc<Observability>>,
}

fn endpoint_path(p: &str) -> Result<String, String> {
    if p.starts_with('/') {
        Ok(p.to_owned())
    } else {
        Err("must start with /".into())
    }
}

/// Why the gateway did not run: the message, and the process exit code (2
/// for a bad command line or file, 1 for a failure at run time).
#[derive(Debug)]
pub struct Failure {
    /// What to print.
    pub message: String,
    /// The exit code.
    pub code: u8,
}

fn bad(message: impl std::fmt::Display) -> Failure {
    Failure {
        message: message.to_string(),
        code: 2,
    }
}

/// Everything a run needs, from the flags and the file.
struct Plan {
    app: axum::Router,
    listen: SocketAddr,
    threads: usize,
    path: String,
    opts: ServeOptions,
    audit: Option<Arc<dyn AuditSink>>,
    reloader: Option<(Arc<Reloader>, bool)>,
    admin: Option<(SocketAddr, Admin)>,
    summary: Summary,
    /// Several named backends: their names are listed before serving.
    aggregate: Option<mcp_gateway_axum::Aggregate>,
    /// stdio and legacy SSE backends: stopped at shutdown.
    bridges: Vec<Bridge>,
}

/// What startup logs about the gateway it runs: enough for an operator to
/// see what is on, never a secret (no keys, tokens, credential values or
/// URL queries).
#[derive(Debug, Default)]
struct Summary {
    backends: Vec<String>,
    features: Vec<&'static str>,
    timeouts: TimeoutsSection,
}

impl Summary {
    fn log(&self, opts: &ServeOptions) {
        let t = &self.timeouts;
        let up = t.upstream(HttpUpstreamConfig::default()).ok();
        let sessions = t.sessions(InMemoryConfig::default()).ok();
        let sse = t.sse(SseRelayConfig::default());
        let secs =
            |d: Option<Duration>| d.map_or("off".to_owned(), |d| format!("{}s", d.as_secs()));
        let timeouts = format!(
            "upstream_connect={} upstream_first_byte={} upstream_idle={} session_idle={} \
             session_max={} sse_keepalive={} client_header={} client_idle={} shutdown={}",
            up.as_ref().map_or("?".into(), |u| format!(
                "{}ms",
                u.connect_timeout.as_millis()
            )),
            secs(up.as_ref().map(|u| u.response_timeout)),
            secs(up.as_ref().and_then(|u| u.idle_timeout)),
            secs(sessions.as_ref().map(|s| s.idle_timeout)),
            secs(sessions.as_ref().and_then(|s| s.max_age)),
            secs(sse.keep_alive),
            secs(opts.header_read_timeout),
            secs(opts.idle_timeout),
            secs(opts.shutdown_timeout),
        );
        let fd_limit = crate::serve::conns::raise_fd_limit();
        let max_conns = match opts.max_connections {
            0 => format!(
                "auto ({})",
                crate::serve::conns::auto_max_connections(fd_limit)
            ),
            n => n.to_string(),
        };
        tracing::info!(
            backends = %self.backends.join(", "),
            features = %self.features.join(", "),
            %timeouts,
            max_connections = %max_conns,
            max_connections_per_client = opts.max_connections_per_client,
            "effective configuration"
        );
        if let Some(n) = fd_limit {
            if n < 4096 {
                tracing::warn!(
                    fd_limit = n,
                    "the open-file limit is low for a gateway; raise it (ulimit -n, LimitNOFILE)"
                );
            }
        }
    }
}

impl Cli {
    /// Runs the gateway until SIGINT / SIGTERM (or, with `--check-config`,
    /// checks the file). Prints `mcp-gateway listening on URL` on stdout
    /// once the port is bound.
    pub async fn run(self) -> Result<(), Failure> {
        let obs = self.start_observability()?;
        self.run_with(Arc::new(obs)).await
    }

    /// The `[observability]` section of the configuration file (the
    /// defaults without one): what [`Observability::start`] needs before
    /// logging is set up. A file that does not load gives the defaults;
    /// [`run_with`](Self::run_with) reports its error.
    ///
    /// The Prometheus scrape is kept only where it can be read: on the
    /// admin listener or at `metrics_path`; without either, metrics cost
    /// nothing per call (OTLP metrics are pushed regardless).
    pub fn observability_section(&self) -> ObservabilitySection {
        let file = self
            .config
            .as_deref()
            .and_then(|f| GatewayConfig::load(f).ok());
        let admin =
            self.admin_listen.is_some() || file.as_ref().is_some_and(|c| c.admin_listen.is_some());
        let mut section = file.map(|c| c.observability).unwrap_or_default();
        if !admin && section.metrics_path.is_none() {
            section.metrics = false;
        }
        section
    }

    /// Starts the exporters the configuration asks for (none for
    /// `--check-config`).
    pub fn start_observability(&self) -> Result<Observability, Failure> {
        if self.check_config {
            return Ok(Observability::off());
        }
        Observability::start(&self.observability_section()).map_err(bad)
    }

    /// [`run`](Self::run) with exporters already started (the binary's
    /// `main` starts them before logging, to add the trace layer). They
    /// are flushed and stopped when the gateway stops.
    pub async fn run_with(mut self, obs: Arc<Observability>) -> Result<(), Failure> {
        self.observability = Some(obs.clone());
        let r = self.serve().await;
        // Off the runtime's thread: the gRPC exporter's last export needs
        // this (current-thread) runtime to run while shutdown waits for it.
        let _ = tokio::task::spawn_blocking(move || obs.shutdown()).await;
        r
    }

    async fn serve(self) -> Result<(), Failure> {
        self.validate()?;
        let plan = self.plan()?;
        if self.check_config {
            println!(
                "configuration OK: {}",
                self.config
                    .as_deref()
                    .map_or("".into(), |p| p.display().to_string())
            );
            return Ok(());
        }
        if let Some(agg) = &plan.aggregate {
            // Every backend's names, before the first client: shared names
            // refuse to start with `prefix = "never"`.
            agg.discover().await.map_err(|e| Failure {
                message: format!("aggregate: {e}"),
                code: 1,
            })?;
        }
        let listeners = serve::bind_per_core(plan.listen, plan.threads).map_err(|e| Failure {
            message: format!("--listen {}: {e}", plan.listen),
            code: 1,
        })?;
        let addr = listeners[0]
            .local_addr()
            .expect("a bound socket has an address");
        if let Some((reloader, watch)) = plan.reloader {
            reloader.spawn(watch);
        }
        let scheme = if plan.opts.tls.is_some() {
            "https"
        } else {
            "http"
        };
        plan.summary.log(&plan.opts);
        tracing::info!(%addr, path = %plan.path, threads = listeners.len(), tls = plan.opts.tls.is_some(),
            http1 = ?plan.opts.http1, busy_poll = ?plan.opts.busy_poll, "mcp-gateway listening");
        let mut admin_line = None;
        if let Some((admin_addr, admin)) = plan.admin {
            let l = tokio::net::TcpListener::bind(admin_addr)
                .await
                .map_err(|e| Failure {
                    message: format!("admin_listen {admin_addr}: {e}"),
                    code: 1,
                })?;
            let bound = l.local_addr().unwrap_or(admin_addr);
            tracing::info!(addr = %bound, "admin listener");
            admin_line = Some(format!("mcp-gateway admin on http://{bound}"));
            let router = admin.router();
            tokio::spawn(async move {
                if let Err(e) = axum::serve(l, router).await {
                    tracing::error!(error = %e, "admin listener failed");
                }
            });
        }
        println!("mcp-gateway listening on {scheme}://{addr}{}", plan.path);
        if let Some(line) = admin_line {
            println!("{line}");
        }
        let served =
            serve::serve_per_core_with(listeners, plan.app, shutdown_signal(), plan.opts).await;
        // Every server the gateway started stops with it.
        if !plan.bridges.is_empty() {
            tracing::info!(
                backends = plan.bridges.len(),
                "stopping the backend processes and streams"
            );
        }
        for b in &plan.bridges {
            b.shutdown().await;
        }
        if let Some(sink) = plan.audit {
            // Every record of the requests that just finished reaches the disk.
            sink.flush();
            if sink.dropped() > 0 {
                tracing::warn!(
                    dropped = sink.dropped(),
                    "audit records were dropped (sink full)"
                );
            }
        }
        served.map_err(|e| Failure {
            message: format!("server error: {e}"),
            code: 1,
        })
    }

    /// What clap's declarations cannot say.
    fn validate(&self) -> Result<(), Failure> {
        if self.check_config && self.config.is_none() {
            return Err(bad("--check-config needs --config FILE"));
        }
        Ok(())
    }

    fn plan(&self) -> Result<Plan, Failure> {
        match &self.config {
            Some(file) => self.plan_from_file(file),
            None => self.plan_from_flags(),
        }
    }

    /// The timeouts: flags first, then the file's `[timeouts]` (and its
    /// former `header_read_timeout_secs`), then the defaults.
    fn timeouts(&self, file: Option<&GatewayConfig>) -> TimeoutsSection {
        match file {
            None => self.timeouts.clone(),
            Some(f) => {
                let legacy = TimeoutsSection {
                    client_header_secs: f.header_read_timeout_secs,
                    ..Default::default()
                };
                self.timeouts.or(&f.timeouts.or(&legacy))
            }
        }
    }

    /// The serving options: flags first, then the file's keys, then the
    /// defaults.
    fn serve_options(&self, file: Option<&GatewayConfig>) -> Result<ServeOptions, Failure> {
        let mut opts = self.timeouts(file).serve(ServeOptions::default());
        if let Some(us) = self.busy_poll_us.or(file.and_then(|f| f.busy_poll_us)) {
            opts = opts.busy_poll(Duration::from_micros(us));
        }
        if let Some(h) = self.http1_server.or(file.and_then(|f| f.http1_server)) {
            opts = opts.http1(h);
        }
        let max = self
            .max_connections
            .or(file.and_then(|f| f.connections.max))
            .unwrap_or(opts.max_connections);
        let per_client = self
            .max_connections_per_client
            .or(file.and_then(|f| f.connections.per_client))
            .unwrap_or(opts.max_connections_per_client);
        let trusted = match file {
            Some(f) => f.trusted_proxies().map_err(bad)?,
            None => TrustedProxies::parse(&self.trusted_proxies)
                .map_err(|e| bad(format!("--trusted-proxy {e}")))?,
        };
        Ok(opts
            .max_connections(max, per_client)
            .trusted_proxies(trusted))
    }

    fn threads(&self, file: Option<usize>) -> usize {
        self.threads
            .map(|n| n as usize)
            .or(file.filter(|n| *n > 0))
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// `--listen`, or the default.
    fn listen(&self) -> SocketAddr {
        self.listen.unwrap_or_else(default_listen)
    }

    fn plan_from_file(&self, file: &Path) -> Result<Plan, Failure> {
        // The file as written, with the flags that override it folded in
        // before it is checked and built.
        let mut cfg = GatewayConfig::load(file).map_err(bad)?;
        self.fold_flags(&mut cfg);
        let tls = cfg.server_tls().map_err(bad)?;
        let built = cfg.builder().map_err(bad)?;
        let listen = cfg.listen().map_err(bad)?.unwrap_or_else(default_listen);
        let (app, handles) = built.builder.build_with_handles().map_err(bad)?;
        let aggregate = handles.aggregate.clone();
        let app = match (
            &cfg.observability.metrics_path,
            self.observability.as_ref().and_then(|o| o.scraper()),
        ) {
            (Some(path), Some(s)) if path.starts_with('/') && *path != cfg.path => {
                app.merge(s.router(path))
            }
            (Some(path), _) => {
                return Err(bad(format!(
                    "observability.metrics_path {path:?}: must start with / and differ from the MCP path, with metrics on"
                )))
            }
            _ => app,
        };
        let me = self.clone();
        let reloader = Reloader::new(
            file.to_owned(),
            &cfg,
            Box::new(move |c| me.fold_flags(c)),
            built.policy.clone(),
            handles.instances.clone(),
        );
        let admin_addr = self.admin_listen.or(cfg.admin_listen().map_err(bad)?);
        let admin = self.admin(
            admin_addr,
            self.admin_token_env
                .as_deref()
                .or(cfg.admin_token_env.as_deref()),
            handles,
        )?;
        let mut features = Vec::new();
        if cfg.access_log {
            features.push("access log");
        }
        if let Some(a) = &cfg.auth {
            if !a.api_keys.is_empty() {
                features.push("api keys");
            }
            if a.jwt.is_some() {
                features.push("jwt");
            }
            if a.allow_anonymous {
                features.push("anonymous allowed");
            }
        }
        if cfg.tls.as_ref().is_some_and(|t| t.client_ca_file.is_some()) {
            features.push("client certificates");
        }
        for (on, name) in [
            (cfg.policy.is_some(), "policy"),
            (cfg.pinning.is_some(), "pinning"),
            (cfg.limits.is_some(), "limits"),
            (cfg.audit.is_some(), "audit"),
            (cfg.cors.is_some(), "cors"),
            (!cfg.trusted_proxies.is_empty(), "trusted proxies"),
            (
                cfg.backend.credentials.is_some()
                    || cfg.backends.values().any(|b| b.credentials.is_some()),
                "backend credentials",
            ),
        ] {
            if on {
                features.push(name);
            }
        }
        if let Some(c) = &cfg.cluster {
            features.push(match (c.session_ids, c.redis_url.is_some()) {
                (crate::config::SessionIds::Store, _) => {
                    "cluster (sessions, limits, streams in redis)"
                }
                (crate::config::SessionIds::Sealed, true) => {
                    "cluster (sealed session ids; revocations, limits, streams in redis)"
                }
                (crate::config::SessionIds::Sealed, false) => "sealed session ids",
            });
        } else if cfg.sessions.resumption == Some(true) {
            features.push("resumable streams");
        }
        features.push("per-client caps");
        if !cfg.backends.is_empty() {
            features.push("aggregate");
        }
        let summary = Summary {
            backends: cfg
                .backend
                .urls
                .iter()
                .map(|u| format!("{}={}", cfg.backend.name, shown_url(u.get_ref())))
                .chain(cfg.backends.iter().flat_map(|(name, b)| {
                    b.urls
                        .iter()
                        .map(move |u| format!("{name}={}", shown_url(u.get_ref())))
                }))
                .collect(),
            features,
            timeouts: cfg.timeouts.clone(),
        };
        Ok(Plan {
            summary,
            app,
            listen,
            threads: self.threads(cfg.threads),
            path: cfg.path.clone(),
            opts: self.serve_options(Some(&cfg))?.tls(tls),
            audit: built.audit,
            bridges: built.bridges,
            reloader: Some((Arc::new(reloader), cfg.watch)),
            admin,
            aggregate,
        })
    }

    /// Folds the flags that override the file into it.
    fn fold_flags(&self, cfg: &mut GatewayConfig) {
        cfg.telemetry = self.observability.as_ref().map(|o| o.telemetry.clone());
        if self.tls_cert.is_some() || self.client_ca.is_some() {
            let t = cfg.tls.get_or_insert_with(Default::default);
            if let Some(c) = &self.tls_cert {
                t.cert_file = Some(c.clone());
            }
            if let Some(k) = &self.tls_key {
                t.key_file = Some(k.clone());
            }
            if let Some(ca) = &self.client_ca {
                t.client_ca_file = Some(ca.clone());
            }
        }
        if let Some(l) = self.listen {
            // The origin guard follows the address actually listened on.
            cfg.listen = Some(toml::Spanned::new(0..0, l.to_string()));
        }
        cfg.allow_hosts.extend(self.allow_hosts.iter().cloned());
        cfg.allow_origins.extend(self.allow_origins.iter().cloned());
        cfg.timeouts = self.timeouts(Some(cfg));
        if self.no_access_log {
            cfg.access_log = false;
        }
        if self.no_legacy_sse {
            cfg.legacy_sse = false;
        }
        cfg.trusted_proxies.extend(
            self.trusted_proxies
                .iter()
                .map(|p| toml::Spanned::new(0..0, p.clone())),
        );
        if !self.cors_origins.is_empty() {
            cfg.cors
                .get_or_insert_with(CorsSection::default)
                .allow_origins
                .extend(self.cors_origins.iter().cloned());
        }
    }

    /// The admin listener, if one is asked for: a non-loopback address
    /// needs a token.
    fn admin(
        &self,
        addr: Option<SocketAddr>,
        token_env: Option<&str>,
        handles: GatewayHandles,
    ) -> Result<Option<(SocketAddr, Admin)>, Failure> {
        let Some(addr) = addr else {
            return Ok(None);
        };
        let token = match token_env {
            None => None,
            Some(var) => match std::env::var(var) {
                Ok(t) if !t.is_empty() => Some(t),
                _ => {
                    return Err(bad(format!(
                        "admin_token_env: the environment variable {var} is not set"
                    )))
                }
            },
        };
        if token.is_none() && !addr.ip().is_loopback() {
            return Err(bad(format!(
                "admin_listen {addr} is not a loopback address: set admin_token_env (--admin-token-env) to guard it with a token"
            )));
        }
        let scraper = self.observability.as_ref().and_then(|o| o.scraper());
        Ok(Some((addr, Admin::new(handles, token).metrics(scraper))))
    }

    fn plan_from_flags(&self) -> Result<Plan, Failure> {
        let mut origin = if self.listen().ip().is_loopback() {
            OriginPolicy::loopback()
        } else {
            OriginPolicy::same_origin()
        };
        if !self.allow_hosts.is_empty() {
            origin = origin.allow_hosts(&self.allow_hosts);
        }
        if !self.allow_origins.is_empty() {
            origin = origin.allow_origins(&self.allow_origins);
        }
        let timeouts = self.timeouts(None);
        let upstream = timeouts
            .upstream(HttpUpstreamConfig::default())
            .map_err(|k| bad(format!("--{}: must be more than 0", k.replace('_', "-"))))?;
        let sessions = timeouts
            .sessions(InMemoryConfig::default())
            .map_err(|k| bad(format!("--{}: must be more than 0", k.replace('_', "-"))))?;
        let trusted = TrustedProxies::parse(&self.trusted_proxies)
            .map_err(|e| bad(format!("--trusted-proxy {e}")))?;
        let mut builder = McpGateway::builder();
        if let Some(o) = &self.observability {
            builder = builder.telemetry(o.telemetry.clone());
        }
        let mut builder = builder
            .path(&self.path)
            .origin_policy(origin)
            .http_upstream_config(upstream)
            .session_config(sessions)
            .sse_config(timeouts.sse(SseRelayConfig::default()))
            .trusted_proxies(trusted)
            .access_log(!self.no_access_log)
            .legacy_sse(!self.no_legacy_sse);
        if !self.cors_origins.is_empty() {
            builder = builder.cors(Cors::new(self.cors_origins.iter().cloned()));
        }
        for u in &self.upstreams {
            builder = builder
                .upstream_url(u)
                .map_err(|e| bad(format!("--upstream {u}: {e}")))?;
        }
        let mut bridges = Vec::new();
        if let Some(line) = &self.stdio {
            let cmd = StdioCommand::parse(line).map_err(|e| bad(format!("--stdio: {e}")))?;
            let br = Bridge::stdio("default", cmd.inherit_env(true), BridgeConfig::default());
            builder = builder
                .upstream_service(br.clone())
                .failover(mcp_gateway_tower::session::Failover::Error);
            bridges.push(br);
        }
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(
                serve::tls::server_config(cert, key, self.client_ca.as_deref())
                    .map_err(|e| bad(format!("--tls-cert / --tls-key / --client-ca: {e}")))?,
            ),
            _ => None,
        };
        if self.client_ca.is_some() {
            builder = builder.authenticator(
                Arc::new(ClientCertAuthenticator::new()),
                AuthConfig::default(),
            );
        }
        // Probes are for HTTP backends (a probe of a stdio backend would
        // hold a child of its own).
        let builder = if bridges.is_empty() {
            builder.health(HealthConfig::default().active(Some(ActiveHealth::default())))
        } else {
            builder
        };
        let (app, handles) = builder.build_with_handles().map_err(bad)?;
        let admin = self.admin(self.admin_listen, self.admin_token_env.as_deref(), handles)?;
        let mut features = vec!["per-client caps"];
        if !self.no_access_log {
            features.push("access log");
        }
        if self.client_ca.is_some() {
            features.push("client certificates");
        }
        if !self.cors_origins.is_empty() {
            features.push("cors");
        }
        if !self.trusted_proxies.is_empty() {
            features.push("trusted proxies");
        }
        let summary = Summary {
            backends: self
                .upstreams
                .iter()
                .map(|u| format!("default={}", shown_url(u)))
                .collect(),
            features,
            timeouts,
        };
        Ok(Plan {
            summary,
            app,
            listen: self.listen(),
            threads: self.threads(None),
            path: self.path.clone(),
            opts: self.serve_options(None)?.tls(tls),
            audit: None,
            bridges,
            reloader: None,
            admin,
            aggregate: None,
        })
    }
}

fn default_listen() -> SocketAddr {
    "127.0.0.1:8080".parse().expect("a valid address")
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("mcp-gateway").chain(args.iter().copied()))
    }

    #[test]
    fn errors_name_the_flag() {
        let e = parse(&[]).unwrap_err().to_string();
        assert!(e.contains("--upstream"), "{e}");
        let e = parse(&["--upstream", "http://x/mcp", "--threads", "0"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--threads"), "{e}");
        let e = parse(&["--upstream", "http://x/mcp", "--path", "mcp"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--path") && e.contains("must start with /"),
            "{e}"
        );
        let e = parse(&["--upstream", "http://x/mcp", "--tls-cert", "c.pem"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--tls-key"), "{e}");
        let e = parse(&["--upstream", "http://x/mcp", "--http1-server", "nginx"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--http1-server") && e.contains("nginx"), "{e}");
        let e = parse(&["--config", "g.toml", "--upstream", "http://x/mcp"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--config") && e.contains("--upstream"), "{e}");
        let e = parse(&["--check-config", "--upstream", "http://x/mcp"])
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(
            e.message.contains("--config") && e.code == 2,
            "{}",
            e.message
        );
    }

    #[test]
    fn every_flag_of_the_gateway_example_still_parses() {
        let c = parse(&[
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "http://127.0.0.1:1/mcp",
            "--upstream",
            "http://127.0.0.1:2/mcp",
            "--path",
            "/x",
            "--allow-host",
            "gw.example",
            "--allow-origin",
            "https://app.example",
            "--threads",
            "2",
            "--busy-poll-us",
            "50",
            "--header-timeout-secs",
            "10",
            "--http1-server",
            "builtin",
        ])
        .unwrap();
        assert_eq!(c.upstreams.len(), 2);
        let opts = c.serve_options(None).unwrap();
        assert_eq!(opts.busy_poll, Duration::from_micros(50));
        assert_eq!(opts.header_read_timeout, Some(Duration::from_secs(10)));
        assert_eq!(opts.http1, Http1Server::Builtin);
        assert_eq!(c.threads(None), 2);
    }

    #[test]
    fn the_defaults_are_safe_ones() {
        let c = parse(&["--upstream", "http://127.0.0.1:1/mcp"]).unwrap();
        let opts = c.serve_options(None).unwrap();
        assert_eq!(opts.busy_poll, Duration::ZERO);
        assert_eq!(opts.header_read_timeout, Some(Duration::from_secs(30)));
        assert_eq!(opts.http1, Http1Server::Hyper);
        assert!(opts.tls.is_none());
        let c = parse(&[
            "--upstream",
            "http://127.0.0.1:1/mcp",
            "--header-timeout-secs",
            "0",
        ])
        .unwrap();
        assert_eq!(c.serve_options(None).unwrap().header_read_timeout, None);
    }
}
