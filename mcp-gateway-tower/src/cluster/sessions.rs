//! [`RedisSessionStore`]: session records in Redis, cached by each replica
//! and dropped from every cache when a notice says the session ended or
//! changed.
//!
//! Keys: `{prefix}s:{id}` holds a record (`{end of life}|{json}`), and
//! the sorted set `{prefix}sx` holds every live session by the time it
//! expires if unused. Each operation is one script, so one round trip:
//! - `get` (on a cache miss): checks the deadline, moves it on (idle
//!   timeout, capped by the maximum age) and returns the record;
//! - a cached session's deadline is moved on in the background at most
//!   every `idle_timeout / 8`, never on the request's path;
//! - while Redis is away, cached sessions go on; a session this replica
//!   never saw gets 503 (-32057, retry), not 404; when the notice channel
//!   is joined again the cache starts over (notices may have been missed);
//! - `remove` and the sweep delete the record and publish the end, so
//!   every replica drops it from its cache;
//! - the sweep claims expired sessions atomically: each is ended (audit,
//!   limits, the backend session) by exactly one replica.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use mcp_gateway_core::session::{RemoteEnd, SessionRecord, SessionStore, StoreError};
use mcp_gateway_core::Answer;
use redis::Script;

use super::{record, unix_ms, Notice, Redis, RemoteEnds};

/// Settings of a [`RedisSessionStore`].
#[derive(Debug, Clone)]
pub struct RedisSessionConfig {
    /// Sessions unused this long expire. Default: 30 minutes.
    pub idle_timeout: Duration,
    /// Sessions older than this expire, busy or not. Default: 24 hours.
    pub max_age: Duration,
    /// At most this many sessions across the replicas (0: no cap).
    /// Default: 100 000.
    pub max_sessions: usize,
    /// Records each replica keeps in its cache. Default: 100 000.
    pub cache_size: usize,
}

impl Default for RedisSessionConfig {
    fn default() -> Self {
        RedisSessionConfig {
            idle_timeout: Duration::from_secs(30 * 60),
            max_age: Duration::from_secs(24 * 3600),
            max_sessions: 100_000,
            cache_size: 100_000,
        }
    }
}

/// How long past its deadline a record's key lives, so that the sweep can
/// still read what it ends.
const GRACE_MS: u64 = 10 * 60 * 1000;

const SHARDS: usize = 16;

struct Cached {
    rec: Arc<SessionRecord>,
    /// When its deadline was last moved on, ms on the store's clock.
    touched: AtomicU64,
}

type Shard = RwLock<HashMap<Arc<str>, Cached, foldhash::fast::RandomState>>;

struct Scripts {
    insert: Script,
    get: Script,
    remove: Script,
    update: Script,
    sweep: Script,
}

fn scripts() -> Scripts {
    Scripts {
        // KEYS: record, index. ARGV: value, px, deadline, max, id.
        insert: Script::new(
            r"if tonumber(ARGV[4]) > 0 and redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[4]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[5])
return 1",
        ),
        // KEYS: record, index. ARGV: now, idle, id, grace. Returns the
        // record with its deadline moved on, or nil.
        get: Script::new(
            r"local d = redis.call('ZSCORE', KEYS[2], ARGV[3])
if not d or tonumber(d) <= tonumber(ARGV[1]) then return false end
local v = redis.call('GET', KEYS[1])
if not v then redis.call('ZREM', KEYS[2], ARGV[3]) return false end
local eol = tonumber(string.match(v, '^(%d+)|')) or 0
local nd = math.min(tonumber(ARGV[1]) + tonumber(ARGV[2]), eol)
redis.call('ZADD', KEYS[2], 'XX', nd, ARGV[3])
redis.call('PEXPIRE', KEYS[1], math.max(1, nd - tonumber(ARGV[1]) + tonumber(ARGV[4])))
return v",
        ),
        // KEYS: record, index, channel. ARGV: id, notice.
        remove: Script::new(
            r"local v = redis.call('GET', KEYS[1])
local z = redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[1])
if z == 1 then redis.call('PUBLISH', KEYS[3], ARGV[2]) end
if z == 1 then return v end
return false",
        ),
        // KEYS: record, index, channel. ARGV: id, value, notice, now.
        update: Script::new(
            r"local d = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not d or tonumber(d) <= tonumber(ARGV[4]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
redis.call('PUBLISH', KEYS[3], ARGV[3])
return 1",
        ),
        // KEYS: index, channel. ARGV: now, batch, record key prefix,
        // notice prefix. Returns id, record, id, record, ... and the count
        // left as the last element.
        sweep: Script::new(
            r"local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, id in ipairs(ids) do
  local k = ARGV[3] .. id
  local v = redis.call('GET', k)
  redis.call('DEL', k)
  redis.call('ZREM', KEYS[1], id)
  redis.call('PUBLISH', KEYS[2], ARGV[4] .. id)
  if v then
    table.insert(out, id)
    table.insert(out, v)
  end
end
table.insert(out, tostring(redis.call('ZCARD', KEYS[1])))
return out",
        ),
    }
}

struct Inner {
    redis: Redis,
    cfg: RedisSessionConfig,
    scripts: Scripts,
    shards: Box<[Shard]>,
    hasher: foldhash::fast::RandomState,
    cached: AtomicUsize,
    /// Sessions across the replicas, as last counted (plus local changes).
    count: AtomicUsize,
    epoch: Instant,
    remote_end: RemoteEnds,
    index: String,
    channel: String,
}

/// Session records shared by replicas through Redis. See the module docs.
#[derive(Clone)]
pub struct RedisSessionStore(Arc<Inner>);

impl std::fmt::Debug for RedisSessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSessionStore")
            .field("cfg", &self.0.cfg)
            .field("cached", &self.0.cached.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl RedisSessionStore {
    /// A store on `redis`.
    pub fn new(redis: Redis, cfg: RedisSessionConfig) -> Self {
        let inner = Arc::new(Inner {
            index: redis.key("sx"),
            channel: redis.channel(),
            redis: redis.clone(),
            cfg,
            scripts: scripts(),
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            hasher: foldhash::fast::RandomState::default(),
            cached: AtomicUsize::new(0),
            count: AtomicUsize::new(0),
            epoch: Instant::now(),
            remote_end: RemoteEnds::default(),
        });
        let weak = Arc::downgrade(&inner);
        redis.listen(move |n| {
            let Some(inner) = weak.upgrade() else { return };
            match n {
                Notice::Ended(id) => {
                    inner.forget(id);
                    inner.remote_end.ended(id);
                }
                Notice::Updated(id) => inner.forget(id),
                Notice::Resync => inner.forget_all(),
                Notice::Revoked(_) => {}
            }
        });
        RedisSessionStore(inner)
    }

    /// Records this replica has cached.
    pub fn cached(&self) -> usize {
        self.0.cached.load(Ordering::Relaxed)
    }
}

impl Inner {
    fn shard(&self, id: &str) -> &Shard {
        &self.shards[self.hasher.hash_one(id) as usize % SHARDS]
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn forget(&self, id: &str) {
        let mut s = self.shard(id).write().unwrap_or_else(|e| e.into_inner());
        if s.remove(id).is_some() {
            self.cached.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn forget_all(&self) {
        for s in self.shards.iter() {
            let mut s = s.write().unwrap_or_else(|e| e.into_inner());
            self.cached.fetch_sub(s.len(), Ordering::Relaxed);
            s.clear();
        }
    }

    fn cache(&self, rec: Arc<SessionRecord>) {
        if self.cached.load(Ordering::Relaxed) >= self.cfg.cache_size {
            // Full: start this shard over (records come back on use).
            let mut s = self
                .shard(rec.id().as_str())
                .write()
                .unwrap_or_else(|e| e.into_inner());
            self.cached.fetch_sub(s.len(), Ordering::Relaxed);
            s.clear();
        }
        let id: Arc<str> = rec.id().as_str().into();
        let mut s = self.shard(&id).write().unwrap_or_else(|e| e.into_inner());
        let fresh = Cached {
            rec,
            touched: AtomicU64::new(self.now()),
        };
        if s.insert(id, fresh).is_none() {
            self.cached.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The cached record, if the cache may be trusted; moves its deadline
    /// on in the background when due.
    fn cached(self: &Arc<Self>, id: &str) -> Option<Arc<SessionRecord>> {
        let s = self.shard(id).read().unwrap_or_else(|e| e.into_inner());
        let c = s.get(id)?;
        let now = self.now();
        let every = (self.cfg.idle_timeout.as_millis() as u64 / 8).clamp(1000, 60_000);
        let touched = c.touched.load(Ordering::Relaxed);
        if now.saturating_sub(touched) >= every
            && c.touched
                .compare_exchange(touched, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            let (inner, id) = (self.clone(), id.to_owned());
            tokio::spawn(async move {
                if let Ok(None) = inner.fetch(&id).await {
                    // Gone meanwhile (the notice may still be on its way).
                    inner.forget(&id);
                }
            });
        }
        Some(c.rec.clone())
    }

    /// Reads the record from Redis, moving its deadline on.
    async fn fetch(&self, id: &str) -> Result<Option<SessionRecord>, String> {
        let mut c = self.redis.conn();
        let key = self.redis.key(&format!("s:{id}"));
        let mut inv = self.scripts.get.prepare_invoke();
        inv.key(&key)
            .key(&self.index)
            .arg(unix_ms())
            .arg(self.cfg.idle_timeout.as_millis() as u64)
            .arg(id)
            .arg(GRACE_MS);
        let v: Option<Vec<u8>> = self
            .redis
            .run("session get", inv.invoke_async(&mut c))
            .await?;
        Ok(v.and_then(|v| record::decode(id, &v, unix_ms())))
    }
}

impl SessionStore for RedisSessionStore {
    fn insert(&self, record: SessionRecord) -> Answer<'_, Result<Arc<SessionRecord>, StoreError>> {
        let inner = &self.0;
        Answer::pending(async move {
            let now = unix_ms();
            let eol = now + inner.cfg.max_age.as_millis() as u64;
            let deadline = (now + inner.cfg.idle_timeout.as_millis() as u64).min(eol);
            let id = record.id().as_str().to_owned();
            let value = record::encode(&record, now, eol);
            let mut c = inner.redis.conn();
            let key = inner.redis.key(&format!("s:{id}"));
            let mut inv = inner.scripts.insert.prepare_invoke();
            inv.key(&key)
                .key(&inner.index)
                .arg(value)
                .arg(deadline - now + GRACE_MS)
                .arg(deadline)
                .arg(inner.cfg.max_sessions)
                .arg(&id);
            match inner
                .redis
                .run("session insert", inv.invoke_async::<i64>(&mut c))
                .await
            {
                Ok(1) => {
                    inner.count.fetch_add(1, Ordering::Relaxed);
                    let rec = Arc::new(record);
                    inner.cache(rec.clone());
                    Ok(rec)
                }
                Ok(_) => Err(StoreError::Full {
                    max: inner.cfg.max_sessions,
                }),
                Err(e) => Err(StoreError::Backend(e)),
            }
        })
    }

    fn get(&self, id: &str) -> Answer<'_, Option<Arc<SessionRecord>>> {
        match self.get_checked(id) {
            Answer::Ready(v) => Answer::Ready(v.map(|r| r.ok().flatten())),
            Answer::Pending(f) => Answer::pending(async move { f.await.ok().flatten() }),
        }
    }

    fn get_checked(&self, id: &str) -> Answer<'_, Result<Option<Arc<SessionRecord>>, StoreError>> {
        // A cached session is served while Redis is away too: only what
        // was never seen here needs Redis.
        if let Some(rec) = self.0.cached(id) {
            return Answer::ready(Ok(Some(rec)));
        }
        let id = id.to_owned();
        let inner = &self.0;
        Answer::pending(async move {
            let heard = inner.redis.heard();
            let Some(rec) = inner.fetch(&id).await.map_err(StoreError::Backend)? else {
                return Ok(None);
            };
            let rec = Arc::new(rec);
            // A notice heard meanwhile may be about this very session:
            // use what was read, but do not keep it.
            if inner.redis.in_sync() && inner.redis.heard() == heard {
                inner.cache(rec.clone());
            }
            Ok(Some(rec))
        })
    }

    fn remove(&self, id: &str) -> Answer<'_, Option<Arc<SessionRecord>>> {
        let inner = &self.0;
        inner.forget(id);
        let id = id.to_owned();
        Answer::pending(async move {
            let mut c = inner.redis.conn();
            let key = inner.redis.key(&format!("s:{id}"));
            let mut inv = inner.scripts.remove.prepare_invoke();
            inv.key(&key)
                .key(&inner.index)
                .key(&inner.channel)
                .arg(&id)
                .arg(inner.redis.notice('e', &id));
            let v: Option<Vec<u8>> = inner
                .redis
                .run("session remove", inv.invoke_async(&mut c))
                .await
                .ok()?;
            let _ = inner
                .count
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
            record::decode(&id, &v?, unix_ms()).map(Arc::new)
        })
    }

    fn sweep(&self) -> Answer<'_, Vec<Arc<SessionRecord>>> {
        let inner = &self.0;
        Answer::pending(async move {
            let mut out = Vec::new();
            let prefix = inner.redis.key("s:");
            loop {
                let mut c = inner.redis.conn();
                let mut inv = inner.scripts.sweep.prepare_invoke();
                inv.key(&inner.index)
                    .key(&inner.channel)
                    .arg(unix_ms())
                    .arg(100)
                    .arg(&prefix)
                    .arg(inner.redis.notice('e', ""));
                let Ok(mut v) = inner
                    .redis
                    .run("session sweep", inv.invoke_async::<Vec<String>>(&mut c))
                    .await
                else {
                    break;
                };
                let left = v.pop().and_then(|n| n.parse().ok()).unwrap_or(0);
                inner.count.store(left, Ordering::Relaxed);
                let found = v.len() / 2;
                let now = unix_ms();
                for pair in v.chunks_exact(2) {
                    inner.forget(&pair[0]);
                    if let Some(rec) = record::decode(&pair[0], pair[1].as_bytes(), now) {
                        out.push(Arc::new(rec));
                    }
                }
                if found < 100 {
                    break;
                }
            }
            out
        })
    }

    fn update(&self, record: SessionRecord) -> Answer<'_, Option<Arc<SessionRecord>>> {
        let inner = &self.0;
        Answer::pending(async move {
            let id = record.id().as_str().to_owned();
            let now = unix_ms();
            let eol = now + inner.cfg.max_age.saturating_sub(record.age()).as_millis() as u64;
            let value = record::encode(&record, now, eol);
            let mut c = inner.redis.conn();
            let key = inner.redis.key(&format!("s:{id}"));
            let mut inv = inner.scripts.update.prepare_invoke();
            inv.key(&key)
                .key(&inner.index)
                .key(&inner.channel)
                .arg(&id)
                .arg(value)
                .arg(inner.redis.notice('u', &id))
                .arg(now);
            match inner
                .redis
                .run("session update", inv.invoke_async::<i64>(&mut c))
                .await
            {
                Ok(1) => {
                    let rec = Arc::new(record);
                    inner.cache(rec.clone());
                    Some(rec)
                }
                _ => {
                    inner.forget(&id);
                    None
                }
            }
        })
    }

    fn records(&self) -> Answer<'_, Vec<Arc<SessionRecord>>> {
        let inner = &self.0;
        Answer::pending(async move {
            let mut c = inner.redis.conn();
            let Ok(ids) = inner
                .redis
                .run(
                    "session list",
                    redis::cmd("ZRANGE")
                        .arg(&inner.index)
                        .arg(0)
                        .arg(-1)
                        .query_async::<Vec<String>>(&mut c),
                )
                .await
            else {
                return Vec::new();
            };
            let mut out = Vec::new();
            let now = unix_ms();
            for chunk in ids.chunks(500) {
                let keys: Vec<String> = chunk
                    .iter()
                    .map(|id| inner.redis.key(&format!("s:{id}")))
                    .collect();
                let Ok(values) = inner
                    .redis
                    .run(
                        "session list",
                        redis::cmd("MGET")
                            .arg(&keys)
                            .query_async::<Vec<Option<Vec<u8>>>>(&mut c),
                    )
                    .await
                else {
                    break;
                };
                for (id, v) in chunk.iter().zip(values) {
                    if let Some(rec) = v.and_then(|v| record::decode(id, &v, now)) {
                        out.push(Arc::new(rec));
                    }
                }
            }
            out
        })
    }

    fn len(&self) -> usize {
        self.0.count.load(Ordering::Relaxed)
    }

    fn on_remote_end(&self, hook: RemoteEnd) {
        self.0.remote_end.add(hook);
    }
}
