//! Building the gateway's parts from the tables: authentication, audit,
//! backend credentials and TLS.

#[allow(unused_imports)]
use super::*;
use mcp_gateway_tower::upstream::bridge::{Bridge, BridgeConfig, SseTarget, StdioCommand, Target};

impl GatewayConfig {
    pub(super) fn audit_sink(&self, a: &AuditSection) -> Result<Arc<dyn AuditSink>, ConfigError> {
        let kind = a
            .sink
            .as_ref()
            .map(|s| s.get_ref().as_str())
            .unwrap_or(if a.jsonl.is_some() {
                "jsonl"
            } else if a.clickhouse.is_some() {
                "clickhouse"
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
            "clickhouse" => {
                let Some(c) = &a.clickhouse else {
                    return self.err(
                        span,
                        "audit.sink",
                        "clickhouse needs an [audit.clickhouse] section with a url and a table",
                    );
                };
                let mut c = c.clone();
                if let Some(var) = &c.password_env {
                    match std::env::var(var) {
                        Ok(p) => c.password = Some(p),
                        Err(_) => {
                            return self.err(
                                None,
                                "audit.clickhouse.password_env",
                                format!("the environment variable {var} is not set"),
                            )
                        }
                    }
                }
                if !self.opening {
                    // Checking only: no writer thread; the URL is checked.
                    if let Err(e) = c.url.parse::<http::Uri>() {
                        return self.err(None, "audit.clickhouse.url", e.to_string());
                    }
                    return Ok(Arc::new(TracingSink));
                }
                match ClickHouseSink::open(c) {
                    Ok(s) => Ok(Arc::new(s)),
                    Err(e) => self.err(None, "audit.clickhouse.url", e.to_string()),
                }
            }
            other => self.err(
                span,
                "audit.sink",
                format!("unknown sink {other:?} (jsonl, clickhouse or tracing)"),
            ),
        }
    }

    pub(super) fn credentials(
        &self,
        c: &CredentialsSection,
    ) -> Result<StaticCredentials, ConfigError> {
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
    pub(super) fn path_of(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.base.join(p)
        }
    }

    /// The backend's HTTP client settings, TLS files checked.
    pub(super) fn upstream_config(&self) -> Result<HttpUpstreamConfig, ConfigError> {
        self.upstream_config_for(&self.backend, "backend")
    }

    /// [`upstream_config`](Self::upstream_config) of `be`, the table `table`.
    pub(super) fn upstream_config_for(
        &self,
        be: &BackendConfig,
        table: &str,
    ) -> Result<HttpUpstreamConfig, ConfigError> {
        let mut tls = TlsClientConfig::default().insecure_skip_verify(be.insecure_skip_verify);
        for (key, v) in [
            ("ca_file", &be.ca_file),
            ("client_cert_file", &be.client_cert_file),
            ("client_key_file", &be.client_key_file),
        ] {
            let Some(v) = v else { continue };
            let path = self.path_of(Path::new(v.get_ref()));
            if let Err(e) = std::fs::metadata(&path) {
                return self.err(
                    Some(v.span()),
                    &format!("{table}.{key}"),
                    format!("{}: {e}", path.display()),
                );
            }
            match key {
                "ca_file" => tls.ca_file = Some(path),
                "client_cert_file" => tls.client_cert_file = Some(path),
                _ => tls.client_key_file = Some(path),
            }
        }
        // The backend's own timeouts over `[timeouts]`.
        let own = TimeoutsSection {
            upstream_connect_ms: be.upstream_connect_ms,
            upstream_first_byte_secs: be.upstream_first_byte_secs,
            upstream_idle_secs: be.upstream_idle_secs,
            ..Default::default()
        };
        let base = HttpUpstreamConfig::default()
            .http2_prior_knowledge(be.http2_prior_knowledge)
            .tls(tls);
        match own.or(&self.timeouts).upstream(base) {
            Ok(mut cfg) => {
                if let Some(m) = self.telemetry.as_ref().and_then(|t| t.metrics.as_ref()) {
                    cfg.on_connect = Some(m.connect_observer(be.name.as_str().into()));
                }
                Ok(cfg)
            }
            Err(key) => self.err(None, &format!("timeouts.{key}"), "must be more than 0"),
        }
    }

    pub(super) fn auth(
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

    pub(super) fn jwt(
        &self,
        a: &AuthSection,
        j: &JwtSection,
    ) -> Result<JwtAuthenticator, ConfigError> {
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

/// What `[cluster]` (and `[sessions] resumption`) share: each absent when
/// it stays in process (or while a file is only checked).
#[derive(Default)]
pub(super) struct Shared {
    pub(super) sessions: Option<Arc<dyn mcp_gateway_core::session::SessionStore>>,
    pub(super) limiter: Option<Arc<dyn mcp_gateway_tower::limit::Limiter>>,
    pub(super) events: Option<Arc<dyn mcp_gateway_tower::resume::EventStore>>,
}

impl GatewayConfig {
    /// `[sessions] resumption` settings.
    pub(super) fn resume_config(&self) -> mcp_gateway_tower::resume::ResumeConfig {
        let mut cfg = mcp_gateway_tower::resume::ResumeConfig::default();
        if let Some(s) = self.sessions.resume_drain_secs {
            cfg.drain_for = Duration::from_secs(s);
        }
        cfg
    }

    /// The stores `[cluster]` names, connected (lazily) when the file is
    /// opened, only checked when it is parsed.
    pub(super) fn cluster(
        &self,
        sessions: &mcp_gateway_core::session::InMemoryConfig,
    ) -> Result<Shared, ConfigError> {
        use mcp_gateway_tower::cluster::{
            RedisConfig, RedisEventConfig, RedisEventStore, RedisLimiter, RedisSessionConfig,
            RedisSessionStore, SealKeys, SealedConfig, SealedSessionStore,
        };
        use mcp_gateway_tower::resume::InMemoryEventStore;
        let resume_memory = self.sessions.resumption == Some(true);
        let Some(c) = &self.cluster else {
            let mut shared = Shared::default();
            if resume_memory {
                shared.events = Some(Arc::new(InMemoryEventStore::default()));
            }
            return Ok(shared);
        };
        let redis_cfg = match &c.redis_url {
            Some(url) => {
                let mut r = RedisConfig::new(url.get_ref().clone());
                if let Err(e) = r.check() {
                    return self.err(Some(url.span()), "cluster.redis_url", e);
                }
                if let Some(p) = &c.key_prefix {
                    r.key_prefix = p.clone();
                }
                if let Some(ms) = c.timeout_ms {
                    if ms == 0 {
                        return self.err(None, "cluster.timeout_ms", "must be more than 0");
                    }
                    r.timeout = Duration::from_millis(ms);
                }
                if let Some(n) = c.pool_size {
                    if n == 0 {
                        return self.err(None, "cluster.pool_size", "must be at least 1");
                    }
                    r.pool_size = n;
                }
                Some(r)
            }
            None if c.session_ids == SessionIds::Store => {
                return self.err(
                    None,
                    "cluster.redis_url",
                    "is required with session_ids = \"store\" (or use session_ids = \"sealed\")",
                );
            }
            None => None,
        };
        let keys = match c.session_ids {
            SessionIds::Sealed => {
                let var = c
                    .seal_keys_env
                    .clone()
                    .unwrap_or_else(|| "MCP_GATEWAY_SEAL_KEYS".into());
                let spec = match std::env::var(&var) {
                    Ok(s) => s,
                    Err(_) => {
                        return self.err(
                            None,
                            "cluster.seal_keys_env",
                            format!("environment variable {var} is not set (kid:base64key,…; `openssl rand -base64 32` makes a key)"),
                        )
                    }
                };
                match SealKeys::parse(&spec) {
                    Ok(k) => Some(k),
                    Err(e) => {
                        return self.err(None, "cluster.seal_keys_env", format!("{var}: {e}"))
                    }
                }
            }
            SessionIds::Store => None,
        };
        if c.lease_secs == Some(0) {
            return self.err(None, "cluster.lease_secs", "must be more than 0");
        }
        if c.sealed_ttl_secs == Some(0) {
            return self.err(None, "cluster.sealed_ttl_secs", "must be more than 0");
        }
        if !self.opening {
            return Ok(Shared::default());
        }
        let redis = match &redis_cfg {
            Some(r) => match mcp_gateway_tower::cluster::Redis::connect(r) {
                Ok(r) => Some(r),
                Err(e) => return self.err(None, "cluster.redis_url", e.to_string()),
            },
            None => None,
        };
        let sessions: Arc<dyn mcp_gateway_core::session::SessionStore> = match keys {
            Some(keys) => {
                let mut sc = SealedConfig::default();
                if let Some(s) = c.sealed_ttl_secs {
                    sc.ttl = Duration::from_secs(s);
                }
                Arc::new(SealedSessionStore::new(keys, sc, redis.clone()))
            }
            None => {
                let redis = redis.clone().expect("checked above");
                let sc = RedisSessionConfig {
                    idle_timeout: sessions.idle_timeout,
                    max_age: sessions.max_age.unwrap_or(Duration::from_secs(24 * 3600)),
                    max_sessions: sessions.max_sessions,
                    ..RedisSessionConfig::default()
                };
                Arc::new(RedisSessionStore::new(redis, sc))
            }
        };
        let mut shared = Shared {
            sessions: Some(sessions),
            ..Shared::default()
        };
        if let Some(redis) = redis {
            let lease = c.lease_secs.map_or(
                mcp_gateway_tower::cluster::DEFAULT_LEASE,
                Duration::from_secs,
            );
            let limiter = RedisLimiter::with_lease(redis.clone(), c.on_redis_error, lease);
            let events = (self.sessions.resumption != Some(false))
                .then(|| RedisEventStore::new(redis.clone(), RedisEventConfig::default()));
            if let Some(m) = self.telemetry.as_ref().and_then(|t| t.metrics.as_ref()) {
                use mcp_gateway_tower::telemetry::names;
                let r = redis.clone();
                m.watch_counter(
                    names::REDIS_ERRORS,
                    "Redis commands that failed or timed out",
                    move || r.failures(),
                );
                let l = limiter.clone();
                m.watch_counter(
                    names::LIMIT_UNDECIDED,
                    "Limit decisions taken without Redis (on_redis_error)",
                    move || l.stats().failed,
                );
                if let Some(e) = events.clone() {
                    m.watch_counter(
                        names::RESUME_EVENTS_DROPPED,
                        "Stream events the shared event store could not keep",
                        move || e.dropped(),
                    );
                }
            }
            shared.limiter = Some(Arc::new(limiter));
            if let Some(e) = events {
                shared.events = Some(Arc::new(e));
            }
        } else if resume_memory {
            shared.events = Some(Arc::new(InMemoryEventStore::default()));
        }
        Ok(shared)
    }
}

impl GatewayConfig {
    /// The stdio or legacy SSE servers a backend table describes (none for
    /// a Streamable HTTP backend).
    pub(super) fn bridges(
        &self,
        be: &BackendConfig,
        table: &str,
        name: &str,
    ) -> Result<Vec<Bridge>, ConfigError> {
        let sse = be.transport == Some(BackendTransport::Sse);
        let stdio_keys = [
            ("env", !be.env.is_empty()),
            ("inherit_env", be.inherit_env),
            ("cwd", be.cwd.is_some()),
            ("max_line_bytes", be.max_line_bytes.is_some()),
        ];
        if be.command.is_none() {
            if let Some((k, _)) = stdio_keys.iter().find(|(_, set)| *set) {
                return self.err(
                    None,
                    &format!("{table}.{k}"),
                    "only for a stdio backend (`command`)",
                );
            }
            if !sse {
                for (k, set) in [
                    ("mode", be.mode.is_some()),
                    ("max_processes", be.max_processes.is_some()),
                    ("restart", be.restart.is_some()),
                ] {
                    if set {
                        return self.err(
                            None,
                            &format!("{table}.{k}"),
                            "only for a stdio (`command`) or legacy SSE (`transport = \"sse\"`) backend",
                        );
                    }
                }
                return Ok(Vec::new());
            }
        }
        if be.credentials.is_some() {
            return self.err(
                None,
                &format!("{table}.credentials"),
                "not applied to stdio or legacy SSE backends yet: give a stdio server its secrets through `env`",
            );
        }
        let mut cfg = BridgeConfig::default().mode(be.mode.unwrap_or_default());
        if let Some(n) = be.max_processes {
            if n == 0 {
                return self.err(
                    None,
                    &format!("{table}.max_processes"),
                    "must be more than 0",
                );
            }
            cfg = cfg.max_processes(n);
        }
        if let Some(r) = &be.restart {
            cfg = cfg.restart_per_minute(r.max_per_minute);
        }
        if let Some(n) = be.max_line_bytes {
            if n < 1024 {
                return self.err(
                    None,
                    &format!("{table}.max_line_bytes"),
                    "must be at least 1024",
                );
            }
            cfg = cfg.max_line_bytes(n);
        }
        if let Some(cmd) = &be.command {
            if !be.urls.is_empty() || sse {
                return self.err(
                    None,
                    &format!("{table}.command"),
                    "a stdio backend has a `command`, not `urls` or `transport`",
                );
            }
            if cmd.is_empty() || cmd[0].is_empty() {
                return self.err(
                    None,
                    &format!("{table}.command"),
                    "needs the program to run",
                );
            }
            let mut c = StdioCommand::new(cmd.iter().cloned()).inherit_env(be.inherit_env);
            for (k, v) in &be.env {
                c = c.env(k, v);
            }
            if let Some(d) = &be.cwd {
                c = c.cwd(self.path_of(Path::new(d)));
            }
            return Ok(vec![Bridge::stdio(name, c, cfg)]);
        }
        let http = self.upstream_config_for(be, table)?;
        let mut out = Vec::new();
        for (i, u) in be.urls.iter().enumerate() {
            if !u.get_ref().starts_with("http://") && !u.get_ref().starts_with("https://") {
                return self.err(
                    Some(u.span()),
                    &format!("{table}.urls[{i}]"),
                    "not an http:// or https:// URL",
                );
            }
            let mut t = SseTarget::new(u.get_ref().clone());
            t.http = http.clone();
            out.push(Bridge::new(name, Target::Sse(t), cfg.clone()));
        }
        Ok(out)
    }

    /// `[backends.NAME]` and `[aggregate]`: the named backends, served as
    /// one.
    pub(super) fn backends(
        &self,
        mut b: McpGatewayBuilder,
        started: &mut Vec<Bridge>,
    ) -> Result<McpGatewayBuilder, ConfigError> {
        for (name, be) in &self.backends {
            let table = format!("backends.{name}");
            if be.name != "default" && be.name != *name {
                return self.err(
                    None,
                    &format!("{table}.name"),
                    "the table's key is the backend's name: leave `name` out",
                );
            }
            let bridges = self.bridges(be, &table, name)?;
            if be.urls.is_empty() && bridges.is_empty() {
                return self.err(
                    None,
                    &format!("{table}.urls"),
                    "at least one URL (or a stdio `command`) is needed",
                );
            }
            if !bridges.is_empty() {
                let mut backend = Backend::new(name.as_str());
                for br in bridges {
                    started.push(br.clone());
                    backend = backend.upstream_service(br);
                }
                b = b.backend(backend);
                continue;
            }
            let mut named = BackendConfig {
                name: name.clone(),
                urls: Vec::new(),
                ..Default::default()
            };
            named.ca_file = be.ca_file.clone();
            named.client_cert_file = be.client_cert_file.clone();
            named.client_key_file = be.client_key_file.clone();
            named.insecure_skip_verify = be.insecure_skip_verify;
            named.http2_prior_knowledge = be.http2_prior_knowledge;
            named.upstream_connect_ms = be.upstream_connect_ms;
            named.upstream_first_byte_secs = be.upstream_first_byte_secs;
            named.upstream_idle_secs = be.upstream_idle_secs;
            let mut backend = Backend::new(name.as_str())
                .http_upstream_config(self.upstream_config_for(&named, &table)?)
                .health(self.health_config_for(be, &table)?);
            for (i, u) in be.urls.iter().enumerate() {
                backend = match backend.upstream_url(u.get_ref()) {
                    Ok(b) => b,
                    Err(e) => {
                        return self.err(
                            Some(u.span()),
                            &format!("{table}.urls[{i}]"),
                            e.to_string(),
                        )
                    }
                };
            }
            if let Some(c) = &be.credentials {
                backend = backend.credentials(Arc::new(self.credentials(c)?));
            }
            b = b.backend(backend);
        }
        let a = self.aggregate.clone().unwrap_or_default();
        let prefix = a.prefix.unwrap_or(if self.backends.len() > 1 {
            PrefixMode::Always
        } else {
            PrefixMode::Never
        });
        let mut cfg = AggregateConfig::default()
            .prefix(prefix)
            .require_all(a.require_all);
        if let Some(sep) = &a.separator {
            if sep.is_empty() {
                return self.err(None, "aggregate.separator", "must not be empty");
            }
            cfg = cfg.separator(sep.clone());
        }
        if let Some(ms) = a.init_timeout_ms {
            if ms == 0 {
                return self.err(None, "aggregate.init_timeout_ms", "must be more than 0");
            }
            cfg = cfg.init_timeout(Duration::from_millis(ms));
        }
        for name in self.backends.keys() {
            if name.contains(cfg.separator.as_str())
                || name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return self.err(
                    None,
                    &format!("backends.{name}"),
                    format!(
                        "a backend's name is its tools' namespace: letters, digits, '-' and '_', without the separator {:?}",
                        cfg.separator
                    ),
                );
            }
        }
        Ok(b.aggregate_config(cfg))
    }
}
