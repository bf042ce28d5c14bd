//! [`ClickHouseSink`]: records inserted into a ClickHouse table over its
//! HTTP interface, as `JSONEachRow`, in batches, by a thread of its own.

#[allow(unused_imports)]
use super::*;

/// Settings of [`ClickHouseSink`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClickHouseConfig {
    /// The server's HTTP interface, e.g. `http://127.0.0.1:8123`.
    pub url: String,
    /// The table (its columns named as the record's fields; fields it
    /// lacks are skipped).
    pub table: String,
    /// The database. Default: the user's.
    #[serde(default)]
    pub database: Option<String>,
    /// The user (HTTP basic authentication). Default: none sent.
    #[serde(default)]
    pub user: Option<String>,
    /// The environment variable holding the user's password (the
    /// `mcp-gateway` binary reads it into `password`).
    #[serde(default)]
    pub password_env: Option<String>,
    /// The user's password (never read from a file).
    #[serde(skip)]
    pub password: Option<String>,
    /// Records per `INSERT` at most. Default 10 000.
    #[serde(default = "default_batch")]
    pub batch_max: usize,
    /// Records wait at most this long for their `INSERT`. Default 1 000 ms.
    #[serde(default = "default_flush_ms")]
    pub flush_ms: u64,
    /// Records buffered per serving thread before the writer takes them.
    /// Default 65 536.
    #[serde(default = "default_buffer")]
    pub buffer: usize,
    /// Records held while the server cannot take them (retried every
    /// second); past it, the oldest are dropped and counted. Default
    /// 1 000 000.
    #[serde(default = "default_backlog")]
    pub backlog: usize,
    /// What to do when the buffer is full. Default `drop`.
    #[serde(default)]
    pub overflow: Overflow,
    /// Time allowed for one `INSERT`. Default 10 000 ms.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_batch() -> usize {
    10_000
}
fn default_flush_ms() -> u64 {
    1000
}
fn default_buffer() -> usize {
    65_536
}
fn default_backlog() -> usize {
    1_000_000
}
fn default_timeout_ms() -> u64 {
    10_000
}

impl ClickHouseConfig {
    /// Inserts into `table` at `url`, with the defaults.
    pub fn new(url: impl Into<String>, table: impl Into<String>) -> Self {
        ClickHouseConfig {
            url: url.into(),
            table: table.into(),
            database: None,
            user: None,
            password_env: None,
            password: None,
            batch_max: default_batch(),
            flush_ms: default_flush_ms(),
            buffer: default_buffer(),
            backlog: default_backlog(),
            overflow: Overflow::Drop,
            timeout_ms: default_timeout_ms(),
        }
    }
}

/// An analytics store for the audit log: ClickHouse, over HTTP.
///
/// Never on the request path: records are serialised into the recording
/// thread's batch (as for [`JsonlSink`]) and a writer thread sends them as
/// `INSERT INTO <table> FORMAT JSONEachRow`, one request per
/// [`batch_max`](ClickHouseConfig::batch_max) records or per
/// [`flush_ms`](ClickHouseConfig::flush_ms), whichever comes first, with
/// `input_format_skip_unknown_fields=1` (a table may keep only the columns
/// it wants). A failed `INSERT` is kept and retried every second, up to
/// [`backlog`](ClickHouseConfig::backlog) records; past it the oldest
/// are dropped and counted in [`dropped`](AuditSink::dropped). A table
/// that fits every field is in `docs/observability.md`.
pub struct ClickHouseSink(Batched, Arc<AtomicU64>);

impl std::fmt::Debug for ClickHouseSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouseSink")
            .field("queued", &self.0.queued())
            .finish()
    }
}

impl ClickHouseSink {
    /// Starts the writer. Fails on a URL that is not `http://` (or
    /// `https://` with the `tls` feature).
    pub fn open(cfg: ClickHouseConfig) -> Result<Self, crate::BoxError> {
        let base: http::Uri = cfg.url.parse()?;
        match base.scheme_str() {
            Some("http") => {}
            #[cfg(feature = "tls")]
            Some("https") => {}
            _ => return Err(format!("{}: must be an http:// URL", cfg.url).into()),
        }
        let mut query = format!(
            "input_format_skip_unknown_fields=1&query={}",
            encode(&format!("INSERT INTO {} FORMAT JSONEachRow", cfg.table))
        );
        if let Some(db) = &cfg.database {
            query.push_str("&database=");
            query.push_str(&encode(db));
        }
        let path = base.path().trim_end_matches('/');
        let uri: http::Uri = format!(
            "{}://{}{path}/?{query}",
            base.scheme_str().unwrap_or("http"),
            base.authority().map_or("", |a| a.as_str())
        )
        .parse()?;
        let auth = cfg.user.as_ref().map(|u| {
            let pair = format!("{u}:{}", cfg.password.as_deref().unwrap_or(""));
            format!("Basic {}", base64_encode(pair.as_bytes()))
        });
        let lost = Arc::new(AtomicU64::new(0));
        let out = Inserts {
            uri,
            auth,
            pending: Vec::new(),
            rows: 0,
            since: None,
            failed_at: None,
            lost: lost.clone(),
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
            client: client()?,
            cfg: cfg.clone(),
        };
        let b = Batched::start(
            out,
            cfg.buffer,
            cfg.overflow,
            Duration::from_millis(10),
            "mcp-audit-clickhouse",
        )?;
        Ok(ClickHouseSink(b, lost))
    }

    /// Sends everything queued, stops the writer and waits for it.
    pub fn close(&self) {
        self.0.close()
    }
}

impl AuditSink for ClickHouseSink {
    fn record(&self, event: &AuditEventRef<'_>) {
        self.0.record(event)
    }
    fn saturated(&self) -> bool {
        self.0.saturated()
    }
    fn dropped(&self) -> u64 {
        self.0.dropped() + self.1.load(Ordering::Relaxed)
    }
    fn flush(&self) {
        self.0.flush()
    }
}

#[cfg(feature = "tls")]
type Connector = hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;
#[cfg(not(feature = "tls"))]
type Connector = hyper_util::client::legacy::connect::HttpConnector;

type Client = hyper_util::client::legacy::Client<Connector, http_body_util::Full<Bytes>>;

fn client() -> Result<Client, crate::BoxError> {
    let builder = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new());
    #[cfg(feature = "tls")]
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()?
        .https_or_http()
        .enable_http1()
        .build();
    #[cfg(not(feature = "tls"))]
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    Ok(builder.build(connector))
}

/// Percent-encodes a query value.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// The writer's side: rows gathered into `INSERT`s.
struct Inserts {
    cfg: ClickHouseConfig,
    uri: http::Uri,
    auth: Option<String>,
    /// Rows not yet inserted (whole lines).
    pending: Vec<u8>,
    rows: usize,
    /// When the oldest pending row came.
    since: Option<Instant>,
    /// The last failed `INSERT`, to wait a second before the next try.
    failed_at: Option<Instant>,
    lost: Arc<AtomicU64>,
    rt: tokio::runtime::Runtime,
    client: Client,
}

impl Inserts {
    /// Sends the pending rows; keeps them on failure.
    fn send(&mut self) {
        if self.rows == 0 {
            return;
        }
        let mut req =
            http::Request::post(self.uri.clone()).header(CONTENT_TYPE, "application/x-ndjson");
        if let Some(a) = &self.auth {
            req = req.header(http::header::AUTHORIZATION, a);
        }
        let body = Bytes::from(std::mem::take(&mut self.pending));
        let Ok(req) = req.body(http_body_util::Full::new(body.clone())) else {
            return;
        };
        let limit = Duration::from_millis(self.cfg.timeout_ms.max(1));
        let client = self.client.clone();
        let answer = self.rt.block_on(async move {
            let res = tokio::time::timeout(limit, client.request(req))
                .await
                .map_err(|_| "timed out".to_owned())?
                .map_err(|e| e.to_string())?;
            let status = res.status();
            let text = http_body_util::BodyExt::collect(res.into_body())
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            if status.is_success() {
                Ok(())
            } else {
                Err(format!(
                    "{status}: {}",
                    String::from_utf8_lossy(&text).trim()
                ))
            }
        });
        match answer {
            Ok(()) => {
                self.rows = 0;
                self.since = None;
                if self.failed_at.take().is_some() {
                    tracing::info!(table = %self.cfg.table, "audit inserts into ClickHouse resumed");
                }
            }
            Err(e) => {
                if self.failed_at.is_none() {
                    tracing::warn!(table = %self.cfg.table, error = %e, "audit insert into ClickHouse failed; kept and retried");
                }
                self.failed_at = Some(Instant::now());
                self.pending = body.to_vec();
                self.trim();
            }
        }
    }

    /// Drops the oldest rows past the backlog.
    fn trim(&mut self) {
        while self.rows > self.cfg.backlog.max(1) {
            let Some(end) = memchr::memchr(b'\n', &self.pending) else {
                break;
            };
            self.pending.drain(..=end);
            self.rows -= 1;
            self.lost.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Inserts {
    /// The writer stops (the sink closes): rows the server never took are
    /// said, not silently lost.
    fn drop(&mut self) {
        if self.rows > 0 {
            self.lost.fetch_add(self.rows as u64, Ordering::Relaxed);
            tracing::warn!(table = %self.cfg.table, rows = self.rows, "audit records not inserted into ClickHouse before the sink closed");
        }
    }
}

impl Lines for Inserts {
    fn write(&mut self, lines: &[u8]) {
        self.pending.extend_from_slice(lines);
        self.rows += memchr::memchr_iter(b'\n', lines).count();
        self.since.get_or_insert_with(Instant::now);
        if self.failed_at.is_some() {
            self.trim();
        }
    }

    fn flush(&mut self, now: bool) {
        if self.rows == 0 {
            return;
        }
        if let Some(t) = self.failed_at {
            // After a failure, one try a second (also for flushes).
            if t.elapsed() < Duration::from_secs(1) {
                return;
            }
        }
        let due = now
            || self.rows >= self.cfg.batch_max
            || self
                .since
                .is_some_and(|s| s.elapsed() >= Duration::from_millis(self.cfg.flush_ms));
        if due {
            self.send();
        }
    }
}
