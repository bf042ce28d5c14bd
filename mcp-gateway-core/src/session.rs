//! Gateway sessions: ids, records, and the [`SessionStore`] trait with its
//! in-memory implementation.
//!
//! The gateway mints its own session id for every session it proxies and
//! maps it to the backend instance and the backend's own session id. Clients
//! never see a backend's id, so a backend id cannot be replayed against
//! another instance, and a gateway id is useless anywhere but here.

use std::collections::HashMap;
use std::fmt;

use std::hash::BuildHasher;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use std::time::{Duration, Instant};

use base64::Engine;

use crate::answer::Answer;
use crate::protocol::ProtocolVersion;
pub use crate::setup::SessionSetup;

/// A gateway session id: 192 bits from the operating system's CSPRNG,
/// base64url-encoded (32 visible ASCII characters).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SessionId(Arc<str>);

impl SessionId {
    /// A fresh, unguessable id.
    ///
    /// # Panics
    /// If the operating system's random source fails, which leaves no safe
    /// way to mint an id.
    pub fn random() -> SessionId {
        let mut raw = [0u8; 24];
        getrandom::fill(&mut raw).expect("the OS random number generator failed");
        let s = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        SessionId(Arc::from(s))
    }

    /// Wraps an existing id (for stores that load records).
    pub fn from_string(s: impl Into<Arc<str>>) -> SessionId {
        SessionId(s.into())
    }

    /// The id text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Session ids are not credentials, but logs need not carry them whole.
        write!(f, "SessionId({}…)", &self.0[..self.0.len().min(6)])
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Milliseconds on a monotonic clock private to one store.
fn millis_since(epoch: Instant) -> u64 {
    epoch.elapsed().as_millis() as u64
}

/// What the gateway knows about one session.
#[derive(Debug)]
pub struct SessionRecord {
    id: SessionId,
    /// The id as a header value, built once: responses carry it.
    id_header: http::HeaderValue,
    instance: usize,
    /// Kept as a header value: it is read from one and sent as one on
    /// every request, so storing it ready avoids a conversion per request.
    upstream_id: Option<http::HeaderValue>,
    protocol_version: Option<ProtocolVersion>,
    owner: Option<Box<str>>,
    created: Instant,
    last_seen_ms: AtomicU64,
    evicted: std::sync::atomic::AtomicBool,
    setup: Option<Arc<SessionSetup>>,
    /// The gateway ended the backend session (a drained instance): the
    /// next request sets the session up again elsewhere.
    detached: bool,
}

impl SessionRecord {
    /// A record for session `id` on backend instance `instance`, whose
    /// backend session id is `upstream_id` (if the backend issued one).
    pub fn new(id: SessionId, instance: usize, upstream_id: Option<http::HeaderValue>) -> Self {
        let id_header =
            http::HeaderValue::from_str(id.as_str()).expect("session ids are visible ASCII");
        // A header value parsed by an HTTP stack may be a slice of the whole
        // header read buffer (kilobytes); a record lives for the session, so
        // it keeps a compact copy of just the id.
        let upstream_id =
            upstream_id.map(|v| http::HeaderValue::from_bytes(v.as_bytes()).unwrap_or(v));
        SessionRecord {
            id,
            id_header,
            instance,
            upstream_id,
            protocol_version: None,
            owner: None,
            created: Instant::now(),
            last_seen_ms: AtomicU64::new(0),
            evicted: std::sync::atomic::AtomicBool::new(false),
            setup: None,
            detached: false,
        }
    }

    /// Keeps the session's setup, so failover can replay it.
    pub fn with_setup(mut self, setup: Option<Arc<SessionSetup>>) -> Self {
        self.setup = setup;
        self
    }

    /// The same session moved to `instance`, where the backend's session
    /// id is `upstream_id`: id, owner, version, setup and age are kept.
    pub fn moved(&self, instance: usize, upstream_id: Option<http::HeaderValue>) -> Self {
        let mut rec = SessionRecord::new(self.id.clone(), instance, upstream_id)
            .with_protocol_version(self.protocol_version)
            .with_setup(self.setup.clone());
        rec.owner = self.owner.clone();
        rec.created = self.created;
        rec
    }

    /// The same session with its backend session ended by the gateway
    /// (its instance drained): see [`detached`](Self::detached).
    pub fn detach(&self) -> Self {
        let mut rec = self.moved(self.instance, None);
        rec.detached = true;
        rec
    }

    /// The same record as a new value (a store that keeps records
    /// elsewhere serialises one; the setup is shared, not copied).
    pub fn copy(&self) -> Self {
        let mut rec = self.moved(self.instance, self.upstream_id.clone());
        rec.detached = self.detached;
        rec
    }

    /// How long ago the session started.
    pub fn age(&self) -> Duration {
        self.created.elapsed()
    }

    /// The record of a session that started `age` ago (a store restoring a
    /// record it kept elsewhere).
    pub fn with_age(mut self, age: Duration) -> Self {
        self.created = Instant::now().checked_sub(age).unwrap_or(self.created);
        self
    }

    /// Marks the backend session as ended by the gateway (a store restoring
    /// a record it kept elsewhere); see [`detached`](Self::detached).
    pub fn with_detached(mut self, detached: bool) -> Self {
        self.detached = detached;
        self
    }

    /// The recorded setup (absent for sessions stored without one).
    pub fn setup(&self) -> Option<&Arc<SessionSetup>> {
        self.setup.as_ref()
    }

    /// Whether the gateway ended the backend session (its instance was
    /// drained): the next request must set the session up again.
    pub fn detached(&self) -> bool {
        self.detached
    }

    /// Records the protocol version the client asked for in `initialize`.
    pub fn with_protocol_version(mut self, v: Option<ProtocolVersion>) -> Self {
        self.protocol_version = v;
        self
    }

    /// Binds the session to a principal key; presented by anyone else, the
    /// id is unknown.
    pub fn with_owner(mut self, owner: Option<String>) -> Self {
        self.owner = owner.map(String::into_boxed_str);
        self
    }

    /// The gateway session id.
    pub fn id(&self) -> &SessionId {
        &self.id
    }
    /// The gateway session id, ready to send as `Mcp-Session-Id`.
    pub fn id_header(&self) -> &http::HeaderValue {
        &self.id_header
    }
    /// Index of the backend instance the session lives on.
    pub fn instance(&self) -> usize {
        self.instance
    }
    /// The backend's own session id.
    pub fn upstream_id(&self) -> Option<&str> {
        self.upstream_id.as_ref().and_then(|v| v.to_str().ok())
    }
    /// The backend's own session id, ready to send as `Mcp-Session-Id`.
    pub fn upstream_header(&self) -> Option<&http::HeaderValue> {
        self.upstream_id.as_ref()
    }
    /// The protocol version requested at `initialize`.
    pub fn protocol_version(&self) -> Option<ProtocolVersion> {
        self.protocol_version
    }
    /// The principal key the session is bound to.
    pub fn owner(&self) -> Option<&str> {
        self.owner.as_deref()
    }
    /// When the session started.
    pub fn created(&self) -> Instant {
        self.created
    }

    /// Whether the store evicted it to make room for a new session (rather
    /// than it expiring).
    pub fn evicted(&self) -> bool {
        self.evicted.load(Ordering::Relaxed)
    }

    /// Marks it evicted (stores that make room for new sessions).
    pub fn mark_evicted(&self) {
        self.evicted.store(true, Ordering::Relaxed);
    }
}

/// Why a record could not be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreError {
    /// The store holds its maximum number of sessions.
    Full {
        /// The configured maximum.
        max: usize,
    },
    /// The backing store failed (shared stores).
    Backend(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Full { max } => write!(f, "session table full ({max} sessions)"),
            StoreError::Backend(e) => write!(f, "session store failed: {e}"),
        }
    }
}

impl std::error::Error for StoreError {}

/// Where session records live. Object-safe; implement it for a shared store
/// (e.g. Redis) to run several gateway replicas. Every operation returns an
/// [`Answer`]: ready at once for in-memory stores (no allocation on the hot
/// path), pending for stores that do I/O.
pub trait SessionStore: Send + Sync + 'static {
    /// Stores a new record; fails when the store is full.
    fn insert(&self, record: SessionRecord) -> Answer<'_, Result<Arc<SessionRecord>, StoreError>>;

    /// The live record for `id`, marking it used now; `None` if unknown or
    /// idle past the timeout (an expired record is removed and handed to
    /// the next [`SessionStore::sweep`] so its backend session can be ended).
    fn get(&self, id: &str) -> Answer<'_, Option<Arc<SessionRecord>>>;

    /// Like [`get`](Self::get), telling an unknown session (`Ok(None)`)
    /// from a store that cannot answer now (`Err`): the session router then
    /// answers 503, so the client retries rather than starting over.
    /// Default: [`get`](Self::get), never failing.
    fn get_checked(&self, id: &str) -> Answer<'_, Result<Option<Arc<SessionRecord>>, StoreError>> {
        match self.get(id) {
            Answer::Ready(v) => Answer::Ready(v.map(Ok)),
            Answer::Pending(f) => Answer::pending(async move { Ok(f.await) }),
        }
    }

    /// Removes and returns the record for `id`.
    fn remove(&self, id: &str) -> Answer<'_, Option<Arc<SessionRecord>>>;

    /// Removes every record idle past the timeout and returns them, with the
    /// ones `get` found expired since the last sweep.
    fn sweep(&self) -> Answer<'_, Vec<Arc<SessionRecord>>>;

    /// Replaces the record of a stored session (same id) with `record`,
    /// after a failover or a drain moved it. `None` when the session is no
    /// longer stored (it ended meanwhile): the caller ends what it set up.
    fn update(&self, record: SessionRecord) -> Answer<'_, Option<Arc<SessionRecord>>>;

    /// Every live record (for drains and the admin endpoint; a snapshot,
    /// not kept consistent with later changes).
    fn records(&self) -> Answer<'_, Vec<Arc<SessionRecord>>>;

    /// Number of live records (approximate for shared stores).
    fn len(&self) -> usize;

    /// Whether records the store evicted to make room wait for the next
    /// [`sweep`](Self::sweep). The session router then sweeps at once, so
    /// an evicted session is ended at its backend and recorded now, not at
    /// the next periodic sweep. Default: false.
    fn has_evicted(&self) -> bool {
        false
    }

    /// True when no session is stored.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Asks to be told when a session ends somewhere else (another replica
    /// sharing this store deleted it or found it expired), so that what
    /// this process holds for it (limit slots) is let go. Stores that are
    /// not shared never call it. Default: never called.
    fn on_remote_end(&self, _hook: RemoteEnd) {}
}

/// Called with the id of a session that ended on another replica: see
/// [`SessionStore::on_remote_end`].
pub type RemoteEnd = Arc<dyn Fn(&str) + Send + Sync>;

/// Settings of [`InMemorySessionStore`].
#[derive(Debug, Clone)]
pub struct InMemoryConfig {
    /// Sessions idle longer than this expire. Default: 30 minutes.
    pub idle_timeout: Duration,
    /// Sessions older than this expire, busy or not. Default: 24 hours;
    /// `None`: no limit.
    pub max_age: Option<Duration>,
    /// At most this many sessions at once. Default: 100 000.
    pub max_sessions: usize,
    /// When the table is full, sessions idle for at least this long are
    /// evicted, least recently used first, to make room for a new one
    /// (in batches of 1/256 of the table); `None`: a full table refuses
    /// new sessions. Default: 60 s.
    pub evict_idle: Option<Duration>,
    /// Number of independently locked shards (rounded up to a power of
    /// two). Default: 64.
    pub shards: usize,
}

impl Default for InMemoryConfig {
    fn default() -> Self {
        InMemoryConfig {
            idle_timeout: Duration::from_secs(30 * 60),
            max_age: Some(Duration::from_secs(24 * 3600)),
            max_sessions: 100_000,
            evict_idle: Some(Duration::from_secs(60)),
            shards: 64,
        }
    }
}

/// Session ids come from the gateway's CSPRNG, and a client can only look
/// ids up, never add them, so a fast seeded hash (foldhash, a fresh seed
/// per map) is safe here; SipHash was a third of a lookup's cost.
type Shard = RwLock<HashMap<Arc<str>, Arc<SessionRecord>, foldhash::fast::RandomState>>;

/// A sharded in-memory [`SessionStore`]: each request takes one read lock
/// on one of N shards, so no lock is shared by every request.
pub struct InMemorySessionStore {
    shards: Box<[Shard]>,
    hasher: foldhash::fast::RandomState,
    count: AtomicU64,
    cfg: InMemoryConfig,
    epoch: Instant,
    expired: Mutex<Vec<Arc<SessionRecord>>>,
    /// When a scan for sessions to evict last found none (ms on `epoch`'s
    /// clock, plus one; 0: never): a full table of busy sessions is not
    /// scanned again for a second, so a flood of `initialize` cannot turn
    /// each refusal into a walk over the whole table.
    evict_failed_ms: AtomicU64,
    /// Evicted records are waiting in `expired`.
    evicted_waiting: std::sync::atomic::AtomicBool,
}

impl fmt::Debug for InMemorySessionStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InMemorySessionStore")
            .field("len", &self.len())
            .field("cfg", &self.cfg)
            .finish()
    }
}

impl Default for InMemorySessionStore {
    fn default() -> Self {
        Self::new(InMemoryConfig::default())
    }
}

impl InMemorySessionStore {
    /// A store with these settings.
    pub fn new(cfg: InMemoryConfig) -> Self {
        let n = cfg.shards.max(1).next_power_of_two();
        InMemorySessionStore {
            shards: (0..n).map(|_| RwLock::new(HashMap::default())).collect(),
            hasher: Default::default(),
            count: AtomicU64::new(0),
            cfg,
            epoch: Instant::now(),
            expired: Mutex::new(Vec::new()),
            evict_failed_ms: AtomicU64::new(0),
            evicted_waiting: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The settings.
    pub fn config(&self) -> &InMemoryConfig {
        &self.cfg
    }

    fn shard(&self, id: &str) -> &Shard {
        &self.shards[(self.hasher.hash_one(id) as usize) & (self.shards.len() - 1)]
    }

    fn idle_ms(&self) -> u64 {
        self.cfg.idle_timeout.as_millis() as u64
    }

    fn is_expired(&self, rec: &SessionRecord, now: u64) -> bool {
        now.saturating_sub(rec.last_seen_ms.load(Ordering::Relaxed)) > self.idle_ms()
            || self.cfg.max_age.is_some_and(|m| rec.created.elapsed() > m)
    }

    /// Makes room in a full table: evicts up to 1/256 of it, the sessions
    /// unused the longest, provided they have been idle for at least
    /// `evict_idle`. The evicted records are marked and handed to the next
    /// [`sweep`](SessionStore::sweep), which ends them at the backend and
    /// in the audit log. Returns how many went.
    fn evict(&self, now: u64) -> usize {
        let Some(min_idle) = self.cfg.evict_idle else {
            return 0;
        };
        let failed = self.evict_failed_ms.load(Ordering::Relaxed);
        if failed != 0 && now + 1 < failed + 1000 {
            return 0;
        }
        let min_idle = min_idle.as_millis() as u64;
        let batch = (self.cfg.max_sessions / 256).max(1);
        // The `batch` least recently seen candidates: a max-heap on last
        // use keeps the oldest.
        let mut oldest: std::collections::BinaryHeap<(u64, Arc<str>)> =
            std::collections::BinaryHeap::with_capacity(batch + 1);
        for shard in self.shards.iter() {
            for (k, r) in read(shard).iter() {
                let seen = r.last_seen_ms.load(Ordering::Relaxed);
                if now.saturating_sub(seen) < min_idle {
                    continue;
                }
                if oldest.len() < batch {
                    oldest.push((seen, k.clone()));
                } else if oldest.peek().is_some_and(|(s, _)| seen < *s) {
                    oldest.pop();
                    oldest.push((seen, k.clone()));
                }
            }
        }
        let mut gone = Vec::with_capacity(oldest.len());
        for (seen, id) in oldest {
            let mut map = write(self.shard(&id));
            // Used again since it was picked: it stays.
            if map
                .get(&id)
                .is_some_and(|r| r.last_seen_ms.load(Ordering::Relaxed) == seen)
            {
                if let Some(r) = map.remove(&id) {
                    self.count.fetch_sub(1, Ordering::AcqRel);
                    r.mark_evicted();
                    gone.push(r);
                }
            }
        }
        let n = gone.len();
        if n > 0 {
            self.evicted_waiting.store(true, Ordering::Release);
        }
        self.evict_failed_ms
            .store(if n == 0 { now + 1 } else { 0 }, Ordering::Relaxed);
        self.expired
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(gone);
        n
    }
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    // A panic while holding a shard lock cannot leave a HashMap half-updated
    // in a way that matters here; keep serving rather than poisoning forever.
    l.write().unwrap_or_else(|e| e.into_inner())
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

impl SessionStore for InMemorySessionStore {
    fn insert(&self, record: SessionRecord) -> Answer<'_, Result<Arc<SessionRecord>, StoreError>> {
        let max = self.cfg.max_sessions as u64;
        // Reserve a slot first so concurrent inserts cannot overshoot.
        if self.count.fetch_add(1, Ordering::AcqRel) >= max {
            self.count.fetch_sub(1, Ordering::AcqRel);
            // Full: idle sessions make room before a new one is refused.
            let made_room = self.evict(millis_since(self.epoch)) > 0;
            if !made_room || self.count.fetch_add(1, Ordering::AcqRel) >= max {
                if made_room {
                    self.count.fetch_sub(1, Ordering::AcqRel);
                }
                return Answer::ready(Err(StoreError::Full { max: max as usize }));
            }
        }
        record
            .last_seen_ms
            .store(millis_since(self.epoch), Ordering::Relaxed);
        let rec = Arc::new(record);
        let key: Arc<str> = rec.id.0.clone();
        if write(self.shard(&key)).insert(key, rec.clone()).is_some() {
            // Replaced an existing id (192-bit collision or a reused id from a
            // shared store): the slot was already counted.
            self.count.fetch_sub(1, Ordering::AcqRel);
        }
        Answer::ready(Ok(rec))
    }

    fn get(&self, id: &str) -> Answer<'_, Option<Arc<SessionRecord>>> {
        let now = millis_since(self.epoch);
        let found = read(self.shard(id)).get(id).cloned();
        let Some(rec) = found else {
            return Answer::ready(None);
        };
        if self.is_expired(&rec, now) {
            if let Some(gone) = write(self.shard(id)).remove(id) {
                self.count.fetch_sub(1, Ordering::AcqRel);
                self.expired
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(gone);
            }
            return Answer::ready(None);
        }
        rec.last_seen_ms.store(now, Ordering::Relaxed);
        Answer::ready(Some(rec))
    }

    fn remove(&self, id: &str) -> Answer<'_, Option<Arc<SessionRecord>>> {
        let gone = write(self.shard(id)).remove(id);
        if gone.is_some() {
            self.count.fetch_sub(1, Ordering::AcqRel);
        }
        Answer::ready(gone)
    }

    fn sweep(&self) -> Answer<'_, Vec<Arc<SessionRecord>>> {
        let now = millis_since(self.epoch);
        self.evicted_waiting.store(false, Ordering::Release);
        let mut out = std::mem::take(&mut *self.expired.lock().unwrap_or_else(|e| e.into_inner()));
        for shard in self.shards.iter() {
            // Check under the read lock first: most sweeps find nothing.
            if !read(shard).values().any(|r| self.is_expired(r, now)) {
                continue;
            }
            let mut map = write(shard);
            let before = map.len();
            map.retain(|_, r| {
                let keep = !self.is_expired(r, now);
                if !keep {
                    out.push(r.clone());
                }
                keep
            });
            self.count
                .fetch_sub((before - map.len()) as u64, Ordering::AcqRel);
        }
        Answer::ready(out)
    }

    fn update(&self, record: SessionRecord) -> Answer<'_, Option<Arc<SessionRecord>>> {
        let mut map = write(self.shard(record.id.as_str()));
        let Some(old) = map.get_mut(record.id.as_str()) else {
            return Answer::ready(None);
        };
        record
            .last_seen_ms
            .store(old.last_seen_ms.load(Ordering::Relaxed), Ordering::Relaxed);
        let rec = Arc::new(record);
        *old = rec.clone();
        Answer::ready(Some(rec))
    }

    fn records(&self) -> Answer<'_, Vec<Arc<SessionRecord>>> {
        let mut out = Vec::with_capacity(self.len());
        for shard in self.shards.iter() {
            out.extend(read(shard).values().cloned());
        }
        Answer::ready(out)
    }

    fn len(&self) -> usize {
        self.count.load(Ordering::Acquire) as usize
    }

    fn has_evicted(&self) -> bool {
        self.evicted_waiting.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::task::{Context, Poll};

    fn block<F: Future>(f: F) -> F::Output {
        // In-memory futures are always ready.
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut f = std::pin::pin!(f);
        match f.as_mut().poll(&mut cx) {
            Poll::Ready(v) => v,
            Poll::Pending => panic!("in-memory store future was pending"),
        }
    }

    #[test]
    fn ids_are_unique_visible_ascii_and_long() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let id = SessionId::random();
            assert!(id.as_str().len() >= 22, "≥128 bits");
            assert!(id.as_str().bytes().all(|b| (0x21..=0x7e).contains(&b)));
            assert!(seen.insert(id));
        }
    }

    #[test]
    fn insert_get_remove() {
        let store = InMemorySessionStore::default();
        let id = SessionId::random();
        block(store.insert(SessionRecord::new(
            id.clone(),
            2,
            Some(http::HeaderValue::from_static("up-1")),
        )))
        .unwrap();
        assert_eq!(store.len(), 1);
        let rec = block(store.get(id.as_str())).unwrap();
        assert_eq!(rec.instance(), 2);
        assert_eq!(rec.upstream_id(), Some("up-1"));
        assert!(block(store.get("nope")).is_none());
        assert!(block(store.remove(id.as_str())).is_some());
        assert!(block(store.get(id.as_str())).is_none());
        assert!(store.is_empty());
    }

    #[test]
    fn a_moved_session_keeps_its_id_owner_and_setup_and_is_listed() {
        let store = InMemorySessionStore::default();
        let setup = Arc::new(SessionSetup::new(bytes::Bytes::from_static(b"{}")));
        let rec = SessionRecord::new(
            SessionId::random(),
            0,
            Some(http::HeaderValue::from_static("a")),
        )
        .with_owner(Some("ann".into()))
        .with_setup(Some(setup.clone()));
        let id = rec.id().clone();
        let rec = block(store.insert(rec)).unwrap();
        let moved =
            block(store.update(rec.moved(1, Some(http::HeaderValue::from_static("b"))))).unwrap();
        assert_eq!(
            (moved.instance(), moved.upstream_id(), moved.owner()),
            (1, Some("b"), Some("ann"))
        );
        assert!(Arc::ptr_eq(moved.setup().unwrap(), &setup));
        assert_eq!(
            block(store.get(id.as_str())).unwrap().upstream_id(),
            Some("b")
        );
        let detached = block(store.update(moved.detach())).unwrap();
        assert!(detached.detached() && detached.upstream_id().is_none());
        assert_eq!(block(store.records()).len(), 1);
        assert_eq!(store.len(), 1);
        block(store.remove(id.as_str())).unwrap();
        assert!(block(store.update(rec.moved(2, None))).is_none());
        assert!(block(store.records()).is_empty());
    }

    #[test]
    fn record_does_not_keep_a_shared_header_buffer_alive() {
        // A header value that is a slice of a large read buffer, as an HTTP
        // stack produces: the record must own a copy of just the id.
        let buffer = bytes::Bytes::from(vec![b'x'; 8192]);
        let value = http::HeaderValue::from_maybe_shared(buffer.slice(100..132)).unwrap();
        let rec = SessionRecord::new(SessionId::random(), 0, Some(value));
        let stored = rec.upstream_header().unwrap().as_bytes().as_ptr_range();
        let big = buffer.as_ptr_range();
        assert!(
            stored.end <= big.start || stored.start >= big.end,
            "record points into the read buffer"
        );
        assert_eq!(rec.upstream_id(), Some("x".repeat(32).as_str()));
    }

    #[test]
    fn cap_is_enforced_and_freed() {
        let store = InMemorySessionStore::new(InMemoryConfig {
            max_sessions: 2,
            ..Default::default()
        });
        let a = SessionId::random();
        block(store.insert(SessionRecord::new(a.clone(), 0, None))).unwrap();
        block(store.insert(SessionRecord::new(SessionId::random(), 0, None))).unwrap();
        let err =
            block(store.insert(SessionRecord::new(SessionId::random(), 0, None))).unwrap_err();
        assert_eq!(err, StoreError::Full { max: 2 });
        block(store.remove(a.as_str()));
        block(store.insert(SessionRecord::new(SessionId::random(), 0, None))).unwrap();
        assert_eq!(store.len(), 2);
    }

    #[test]
    fn a_full_table_evicts_the_least_recently_used_idle_session() {
        let store = InMemorySessionStore::new(InMemoryConfig {
            max_sessions: 3,
            evict_idle: Some(Duration::ZERO),
            ..Default::default()
        });
        let ids: Vec<SessionId> = (0..3).map(|_| SessionId::random()).collect();
        for id in &ids {
            block(store.insert(SessionRecord::new(id.clone(), 0, None))).unwrap();
        }
        // The monotonic clock moves on; then 0 and 2 are used again.
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(3) {
            std::hint::spin_loop();
        }
        block(store.get(ids[0].as_str())).unwrap();
        block(store.get(ids[2].as_str())).unwrap();
        block(store.insert(SessionRecord::new(SessionId::random(), 0, None)))
            .expect("room is made");
        assert!(store.has_evicted());
        assert_eq!(store.len(), 3);
        assert!(block(store.get(ids[1].as_str())).is_none(), "1 was evicted");
        let swept = block(store.sweep());
        assert_eq!(swept.len(), 1);
        assert_eq!(swept[0].id(), &ids[1]);
        assert!(swept[0].evicted());
    }

    #[test]
    fn without_eviction_or_idle_sessions_a_full_table_refuses() {
        let store = InMemorySessionStore::new(InMemoryConfig {
            max_sessions: 1,
            evict_idle: Some(Duration::from_secs(60)),
            ..Default::default()
        });
        block(store.insert(SessionRecord::new(SessionId::random(), 0, None))).unwrap();
        let err =
            block(store.insert(SessionRecord::new(SessionId::random(), 0, None))).unwrap_err();
        assert_eq!(err, StoreError::Full { max: 1 });
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn sessions_past_their_maximum_age_expire_even_when_busy() {
        let store = InMemorySessionStore::new(InMemoryConfig {
            max_age: Some(Duration::from_millis(1)),
            ..Default::default()
        });
        let id = SessionId::random();
        block(store.insert(SessionRecord::new(id.clone(), 0, None))).unwrap();
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(3) {
            std::hint::spin_loop();
        }
        assert!(block(store.get(id.as_str())).is_none());
    }

    #[test]
    fn idle_sessions_expire_and_are_swept() {
        let store = InMemorySessionStore::new(InMemoryConfig {
            idle_timeout: Duration::from_millis(0),
            ..Default::default()
        });
        let a = SessionId::random();
        let b = SessionId::random();
        block(store.insert(SessionRecord::new(a.clone(), 0, None))).unwrap();
        block(store.insert(SessionRecord::new(b.clone(), 0, None))).unwrap();
        // Wait until the monotonic clock has moved past the (zero) timeout.
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(3) {
            std::hint::spin_loop();
        }
        assert!(block(store.get(a.as_str())).is_none(), "expired on lookup");
        let swept = block(store.sweep());
        let mut ids: Vec<_> = swept.iter().map(|r| r.id().clone()).collect();
        ids.sort_by(|x, y| x.as_str().cmp(y.as_str()));
        let mut want = vec![a, b];
        want.sort_by(|x, y| x.as_str().cmp(y.as_str()));
        assert_eq!(
            ids, want,
            "lazily expired and swept records are both reported"
        );
        assert!(store.is_empty());
    }
}
