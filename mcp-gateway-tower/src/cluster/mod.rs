//! Several gateway replicas sharing their state, so that any replica serves
//! any request behind a load balancer that knows nothing of MCP.
//!
//! | state | shared by | module |
//! | --- | --- | --- |
//! | sessions | [`RedisSessionStore`] (records with a TTL, bound to their principal) or [`SealedSessionStore`] (the routing state sealed into the session id, no store) | `sessions`, `sealed` |
//! | limits | [`RedisLimiter`]: token buckets (GCRA), in-flight and session slots as leases, budgets; one script, one round trip per call | `limiter` |
//! | resumable streams | [`RedisEventStore`]: Redis Streams, bounded per stream, with a TTL | `events` |
//!
//! Redis is the engine: a single primary (Redis Cluster's sharding is not
//! supported: the scripts name keys they compute), reached
//! through the `redis` crate's connection manager (multiplexed, pipelined,
//! reconnecting by itself; chosen over `fred` for being the crate most
//! Rust services already run, with the manager and scripts we need and
//! nothing more). Every replica also listens on one pub/sub channel, so
//! what one replica ends (a `DELETE`, an expiry) the others drop from
//! their caches as soon as the notice arrives: one round trip.
//!
//! When Redis cannot be reached, nothing panics and nothing waits longer
//! than [`RedisConfig::timeout`]: the limiter fails open or closed as
//! configured ([`FailMode`]), sessions already cached keep working, new
//! sessions are refused (503, -32057), and everything recovers when Redis
//! is back, without a restart.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

mod events;
mod limiter;
mod record;
mod sealed;
mod sessions;

pub use self::events::{RedisEventConfig, RedisEventStore};
pub use self::limiter::{LimiterStats, RedisLimiter, DEFAULT_LEASE};
pub use self::sealed::{SealKeys, SealedConfig, SealedSessionStore};
pub use self::sessions::{RedisSessionConfig, RedisSessionStore};

/// How to reach Redis.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port/db`.
    /// Plain TCP: TLS to Redis (`rediss://`) is not built in; keep Redis on
    /// a private network or behind a TLS tunnel.
    pub url: String,
    /// Prefix of every key and channel the gateway uses, so that several
    /// gateways (or other applications) can share one Redis. Default:
    /// `mcpgw:`.
    pub key_prefix: String,
    /// How long one command may take before it counts as failed (connect
    /// included). Default: 1 s.
    pub timeout: Duration,
    /// Multiplexed connections; each thread keeps to one. Default: one per
    /// core, at least 2.
    pub pool_size: usize,
}

impl RedisConfig {
    /// Defaults for the server at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        RedisConfig {
            url: url.into(),
            key_prefix: "mcpgw:".into(),
            timeout: Duration::from_secs(1),
            pool_size: std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .clamp(2, 64),
        }
    }

    /// Whether the URL is one Redis can be reached at (its form only).
    pub fn check(&self) -> Result<(), String> {
        redis::Client::open(self.url.as_str())
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

/// What the limiter does when Redis cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailMode {
    /// Let calls through (limits are not enforced meanwhile). Default.
    #[default]
    FailOpen,
    /// Refuse calls (-32055) until Redis is back.
    FailClosed,
}

/// What one replica heard on the shared channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Notice {
    /// Session `id` ended on another replica.
    Ended(String),
    /// Session `id`'s record changed on another replica.
    Updated(String),
    /// Sealed session id with this nonce (hex) was revoked.
    Revoked(String),
    /// The channel was (re)joined: notices may have been missed while it
    /// was away, so what was cached may be stale.
    Resync,
}

type Listener = Box<dyn Fn(&Notice) + Send + Sync>;

/// Numbers threads for [`Redis::conn`].
static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);

struct Inner {
    client: redis::Client,
    conns: Vec<ConnectionManager>,
    prefix: String,
    timeout: Duration,
    /// This replica's id, to tell its own notices from the others'.
    replica: String,
    listeners: Mutex<Vec<Listener>>,
    /// Subscribed to the channel now.
    in_sync: AtomicBool,
    /// Notices heard so far (a cache skips storing what it read while a
    /// notice arrived).
    heard: AtomicU64,
    /// Commands that failed or timed out.
    failures: AtomicU64,
}

/// A handle on the Redis the replicas share: connections, key names, the
/// notice channel. Cheap to clone.
#[derive(Clone)]
pub struct Redis(Arc<Inner>);

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("prefix", &self.0.prefix)
            .field("in_sync", &self.in_sync())
            .finish_non_exhaustive()
    }
}

impl Redis {
    /// Connects lazily (the gateway starts even while Redis is down, and
    /// reconnects by itself) and starts listening for notices. Fails only
    /// for a malformed URL. Must be called within a Tokio runtime.
    pub fn connect(cfg: &RedisConfig) -> Result<Redis, redis::RedisError> {
        let client = redis::Client::open(cfg.url.as_str())?;
        let mcfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cfg.timeout))
            .set_response_timeout(Some(cfg.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        let conns = (0..cfg.pool_size.max(1))
            .map(|_| ConnectionManager::new_lazy_with_config(client.clone(), mcfg.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        let mut id = [0u8; 6];
        let _ = getrandom::fill(&mut id);
        let replica = id.iter().map(|b| format!("{b:02x}")).collect();
        let redis = Redis(Arc::new(Inner {
            client,
            conns,
            prefix: cfg.key_prefix.clone(),
            timeout: cfg.timeout,
            replica,
            listeners: Mutex::new(Vec::new()),
            in_sync: AtomicBool::new(false),
            heard: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }));
        tokio::spawn(listen(Arc::downgrade(&redis.0)));
        tokio::spawn(heartbeat(Arc::downgrade(&redis.0)));
        Ok(redis)
    }

    /// The key that exists while replica `replica` runs (renewed every
    /// [`HEARTBEAT`], lives three times that).
    pub(crate) fn alive_key(&self, replica: &str) -> String {
        self.key(&format!("replica:{replica}"))
    }

    /// This thread's connection: each serving thread keeps to one (whose
    /// driver then runs on that thread's runtime, so a round trip wakes no
    /// other thread); threads beyond the pool share.
    pub(crate) fn conn(&self) -> ConnectionManager {
        thread_local! {
            static SLOT: usize = NEXT_SLOT.fetch_add(1, Ordering::Relaxed);
        }
        let i = SLOT.with(|s| *s) % self.0.conns.len();
        self.0.conns[i].clone()
    }

    /// A connection of its own, for commands that block (a stream tail).
    pub(crate) async fn blocking_conn(
        &self,
    ) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        self.0.client.get_multiplexed_async_connection().await
    }

    /// `prefix` + `name`.
    pub(crate) fn key(&self, name: &str) -> String {
        let mut k = String::with_capacity(self.0.prefix.len() + name.len());
        k.push_str(&self.0.prefix);
        k.push_str(name);
        k
    }

    /// The notice channel.
    pub(crate) fn channel(&self) -> String {
        self.key("notices")
    }

    /// The notice `kind` (`e`, `u`, `r`) about `id`, as published.
    pub(crate) fn notice(&self, kind: char, id: &str) -> String {
        format!("{}|{kind}|{id}", self.0.replica)
    }

    /// This replica's id (random, per process).
    pub(crate) fn replica(&self) -> &str {
        &self.0.replica
    }

    /// The per-command timeout.
    pub(crate) fn timeout(&self) -> Duration {
        self.0.timeout
    }

    /// Runs `fut` (one command or script) within the timeout; a failure is
    /// counted and logged at most once per second.
    pub(crate) async fn run<T>(
        &self,
        what: &'static str,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, String> {
        let r = match tokio::time::timeout(self.0.timeout, fut).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {:?}", self.0.timeout),
        };
        let n = self.0.failures.fetch_add(1, Ordering::Relaxed);
        if n % 100 == 0 {
            tracing::warn!(op = what, error = %r, failures = n + 1, "redis command failed");
        }
        Err(r)
    }

    /// Whether this replica hears the notice channel now.
    pub fn in_sync(&self) -> bool {
        self.0.in_sync.load(Ordering::Acquire)
    }

    /// Notices heard so far.
    pub(crate) fn heard(&self) -> u64 {
        self.0.heard.load(Ordering::Acquire)
    }

    /// Commands that failed or timed out so far.
    pub fn failures(&self) -> u64 {
        self.0.failures.load(Ordering::Relaxed)
    }

    /// `PING`: whether Redis answers now.
    pub async fn ping(&self) -> bool {
        let mut c = self.conn();
        self.run("ping", redis::cmd("PING").query_async::<String>(&mut c))
            .await
            .is_ok()
    }

    /// Calls `f` with every notice from other replicas (and a
    /// [`Notice::Resync`] each time the channel is joined).
    pub(crate) fn listen(&self, f: impl Fn(&Notice) + Send + Sync + 'static) {
        self.0
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(f));
    }
}

impl Inner {
    fn dispatch(&self, n: &Notice) {
        self.heard.fetch_add(1, Ordering::AcqRel);
        for l in self
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            l(n);
        }
    }

    fn parse(&self, payload: &[u8]) -> Option<Notice> {
        let text = std::str::from_utf8(payload).ok()?;
        let mut parts = text.splitn(3, '|');
        let (from, kind, id) = (parts.next()?, parts.next()?, parts.next()?);
        if from == self.replica {
            return None;
        }
        let id = id.to_owned();
        match kind {
            "e" => Some(Notice::Ended(id)),
            "u" => Some(Notice::Updated(id)),
            "r" => Some(Notice::Revoked(id)),
            _ => None,
        }
    }
}

/// Keeps this replica subscribed to the notice channel, reconnecting with
/// backoff; stops when the handle is dropped.
async fn listen(weak: std::sync::Weak<Inner>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let (client, channel, timeout) = match weak.upgrade() {
            Some(inner) => (
                inner.client.clone(),
                format!("{}notices", inner.prefix),
                inner.timeout,
            ),
            None => return,
        };
        let ps = tokio::time::timeout(timeout, async {
            let mut ps = client.get_async_pubsub().await?;
            ps.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(ps)
        })
        .await;
        match ps {
            Ok(Ok(ps)) => {
                backoff = Duration::from_millis(100);
                if let Some(inner) = weak.upgrade() {
                    inner.in_sync.store(true, Ordering::Release);
                    inner.dispatch(&Notice::Resync);
                    tracing::info!("redis notice channel joined");
                }
                let mut messages = ps.into_on_message();
                loop {
                    // Wake now and then to notice the handle was dropped.
                    match tokio::time::timeout(Duration::from_secs(5), messages.next()).await {
                        Ok(Some(msg)) => {
                            let Some(inner) = weak.upgrade() else { return };
                            if let Some(n) = inner.parse(msg.get_payload_bytes()) {
                                inner.dispatch(&n);
                            }
                        }
                        Ok(None) => break,
                        Err(_) => {
                            if weak.strong_count() == 0 {
                                return;
                            }
                        }
                    }
                }
                if let Some(inner) = weak.upgrade() {
                    inner.in_sync.store(false, Ordering::Release);
                    tracing::warn!("redis notice channel lost: cached sessions go on, and are read again once it is back");
                }
            }
            _ => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// The hooks a shared session store calls with each session another
/// replica ended ([`SessionStore::on_remote_end`](mcp_gateway_core::session::SessionStore::on_remote_end)).
#[derive(Default)]
pub(crate) struct RemoteEnds(Mutex<Vec<mcp_gateway_core::session::RemoteEnd>>);

impl RemoteEnds {
    pub(crate) fn add(&self, hook: mcp_gateway_core::session::RemoteEnd) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(hook);
    }

    /// Tells every hook that session `id` ended elsewhere.
    pub(crate) fn ended(&self, id: &str) {
        let hooks = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for hook in hooks {
            hook(id);
        }
    }
}

/// How often a replica says it runs: what others wait at most, three
/// times over, before they take it for dead (a call stream it was
/// recording is then cut for the clients resuming it).
pub(crate) const HEARTBEAT: Duration = Duration::from_millis(300);

/// Keeps this replica's liveness key; stops when the handle is dropped.
async fn heartbeat(weak: std::sync::Weak<Inner>) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = weak.upgrade() else { return };
        let redis = Redis(inner);
        let mut c = redis.conn();
        let key = redis.alive_key(redis.replica());
        let ttl = (HEARTBEAT * 3).as_millis() as u64;
        let mut set = redis::cmd("SET");
        set.arg(&key).arg(1).arg("PX").arg(ttl);
        let _ = redis.run("heartbeat", set.query_async::<()>(&mut c)).await;
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
