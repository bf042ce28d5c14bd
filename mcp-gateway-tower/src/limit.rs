//! Limits and quotas: every call counted and capped.
//!
//! [`LimitLayer`] runs after authorization (only allowed calls count) and
//! before the session router. Who is limited: the request's
//! [`Principal`], or an anonymous principal keyed by the client's address
//! (axum's `ConnectInfo<SocketAddr>`) when there is none.
//!
//! | limit | key | when | refusal |
//! | --- | --- | --- | --- |
//! | rate (burst + sustained, token bucket) | principal; principal × tool; backend | each `tools/call` (and the methods in `count_methods`) | -32055 |
//! | concurrent sessions | principal; backend | `initialize`; released when the session ends (DELETE, expiry, backend loss) | `429` + `Retry-After`, -32055 |
//! | in-flight calls | principal; backend | each counted call; the permit lives in the response body until it ends or the client goes away | -32055 |
//! | token budget per window | principal | arguments before the call, the result as it streams through ([`TokenCounter`]) | -32055 |
//! | cost budget per window | principal | each `tools/call` costs what configuration says; refused before reaching the backend | -32055 |
//!
//! A refusal is answered by the gateway with JSON-RPC error -32055 whose
//! `data` names the limit (`limit`) and says when to retry
//! (`retryAfterMs`). Nothing is queued: a request over a limit is refused
//! at once.
//!
//! The counters live behind the [`Limiter`] trait, whose operations return
//! a [`LimitFuture`] (ready at once for the in-process [`InMemoryLimiter`]),
//! so a shared-store implementation for several replicas can be added
//! without touching the layer.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota as GovQuota, RateLimiter};
use http::header::{HeaderValue, RETRY_AFTER};
use http::{Request, Response};
use http_body::{Frame, SizeHint};
use mcp_gateway_core::protocol::header_names;
use mcp_gateway_core::session::{SessionRecord, StoreFuture};
use mcp_gateway_core::{
    ErrorKind, GatewayError, McpRequest, Message, Method, Principal, RequestId,
};
use serde::{Deserialize, Serialize};
use thread_local::ThreadLocal;
use tower_layer::Layer;
use tower_service::Service;

use crate::body::{take_ready, Body, BoxError, BoxFuture};
use crate::error::error_response;
use crate::rules::Glob;
use crate::session::{SessionEnd, SessionObserver};

mod clock;
use clock::LimiterClock;

/// The future the [`Limiter`] operations return: ready at once in
/// process, pending for a shared store.
pub type LimitFuture<'a, T> = StoreFuture<'a, T>;

/// Which limit decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitKind {
    /// Calls per principal.
    PrincipalRate,
    /// Calls per principal and tool.
    PrincipalToolRate,
    /// Calls per backend.
    BackendRate,
    /// Concurrent sessions per principal.
    PrincipalSessions,
    /// Concurrent sessions per backend.
    BackendSessions,
    /// Calls in flight per principal.
    PrincipalInFlight,
    /// Calls in flight per backend.
    BackendInFlight,
    /// Tokens per principal per window.
    TokenBudget,
    /// Cost per principal per window.
    CostBudget,
}

impl LimitKind {
    /// The name used in configuration, refusals and the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::PrincipalRate => "principal_rate",
            LimitKind::PrincipalToolRate => "principal_tool_rate",
            LimitKind::BackendRate => "backend_rate",
            LimitKind::PrincipalSessions => "principal_sessions",
            LimitKind::BackendSessions => "backend_sessions",
            LimitKind::PrincipalInFlight => "principal_in_flight",
            LimitKind::BackendInFlight => "backend_in_flight",
            LimitKind::TokenBudget => "token_budget",
            LimitKind::CostBudget => "cost_budget",
        }
    }
}

/// What a counter is about: the limit, and whose (a principal key, a
/// backend name, or a principal key and a tool).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LimitKey {
    /// The limit.
    pub kind: LimitKind,
    /// The principal key or backend name.
    pub subject: Arc<str>,
    /// The tool, for per-tool limits.
    pub tool: Option<Bytes>,
}

/// A token bucket: `burst` calls at once, refilled at `per_second`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    /// Calls allowed at once.
    pub burst: u32,
    /// Sustained calls per second (fractions allowed: 0.5 = one per 2 s).
    pub per_second: f64,
}

/// An amount per fixed window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// Units per window.
    pub amount: u64,
    /// Window length, seconds.
    pub window_secs: u64,
}

/// A held slot of a concurrency cap; released when dropped.
pub struct Slot(#[allow(dead_code)] SlotKind);

/// How a slot is given back: by dropping what it holds (never read).
#[allow(dead_code)]
enum SlotKind {
    /// The in-process limiter's own: no allocation (two per call, with a
    /// principal's and a backend's cap).
    Local(SlotGuard),
    /// Any other limiter's guard.
    Guard(Box<dyn Send + Sync>),
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Slot")
    }
}

impl Slot {
    /// A slot releasing through `guard`'s `Drop`.
    pub fn new(guard: impl Send + Sync + 'static) -> Self {
        Slot(SlotKind::Guard(Box::new(guard)))
    }
}

/// The counters behind [`LimitLayer`]. `Err(d)` means "refused; retry in
/// `d`".
pub trait Limiter: Send + Sync + 'static {
    /// Takes one unit from the token bucket of `key`.
    fn hit(&self, key: &LimitKey, quota: &Quota) -> LimitFuture<'_, Result<(), Duration>>;
    /// Takes one of at most `max` concurrent slots of `key`.
    fn acquire(&self, key: &LimitKey, max: u32) -> LimitFuture<'_, Option<Slot>>;
    /// Adds `amount` to `key`'s use in the current window. With
    /// `must_fit`, refuses (charging nothing) when the window's use would
    /// pass the budget; without, always charges (results already
    /// delivered are paid for).
    fn charge(
        &self,
        key: &LimitKey,
        budget: &Budget,
        amount: u64,
        must_fit: bool,
    ) -> LimitFuture<'_, Result<(), Duration>>;

    /// True when every future this limiter returns is ready at once (no
    /// I/O): the layer then charges streamed tokens inline instead of on a
    /// spawned task.
    fn is_local(&self) -> bool {
        false
    }
}

type Direct = RateLimiter<NotKeyed, InMemoryState, LimiterClock, NoOpMiddleware<Nanos>>;

const SHARDS: usize = 16;

/// A key's counters: a token bucket (rate keys), a slot count (in-flight
/// and session keys) and a budget window (budget keys). A key uses one of
/// the three; keeping them in one entry keeps one table and one lookup.
struct Entry {
    rate: OnceLock<Direct>,
    /// When the bucket was last drawn from (nanoseconds since the
    /// limiter's epoch, +1), to the second: updated only when a second
    /// has passed, so that callers on several threads mostly read it.
    last_hit: AtomicU64,
    /// How long the bucket takes to fill up again, nanoseconds.
    refill_ns: AtomicU64,
    slots: AtomicU32,
    window: Window,
}

impl Default for Entry {
    fn default() -> Self {
        Entry {
            rate: OnceLock::new(),
            last_hit: AtomicU64::new(0),
            refill_ns: AtomicU64::new(0),
            slots: AtomicU32::new(0),
            window: Window::default(),
        }
    }
}

/// A fixed budget window: when it started (nanoseconds since the limiter
/// was made) and how much of it is used, and its length. Atomics, so
/// callers of one key on several threads do not queue on a lock.
#[derive(Default)]
struct Window {
    start: AtomicU64,
    used: AtomicU64,
    len_ns: AtomicU64,
}

impl Entry {
    /// True when dropping the entry loses nothing: a fresh one would
    /// answer the same (bucket full, no slot held, window over).
    fn idle(&self, now: u64) -> bool {
        // `last_hit` may lag the last draw by up to its one-second
        // granularity: wait that much longer.
        let bucket_full = self.rate.get().is_none()
            || now.saturating_sub(self.last_hit.load(Ordering::Acquire))
                >= self.refill_ns.load(Ordering::Acquire) + LAST_HIT_GRAIN;
        let window_over = {
            let start = self.window.start.load(Ordering::Acquire);
            start == 0 || now.saturating_sub(start) >= self.window.len_ns.load(Ordering::Acquire)
        };
        bucket_full && window_over && self.slots.load(Ordering::Acquire) == 0
    }
}

type Hasher = foldhash::fast::RandomState;
type Shard = RwLock<HashMap<LimitKey, Arc<Entry>, Hasher>>;

/// One thread's copies of the entries it has used, so that the common
/// path takes no lock shared with other threads: a lookup in a map only
/// this thread touches, then atomics on the entry.
struct ThreadCache {
    generation: u64,
    entries: HashMap<LimitKey, Arc<Handle>, Hasher>,
    /// The last entry this thread used of each kind, in front of the map.
    /// Why: one call checks up to seven keys, each of another kind, and
    /// the next call of the same caller checks the same seven; a compare
    /// (the subject's pointer first) then replaces hashing the subject and
    /// the tool and probing the map. A caller of another kind's key costs
    /// one compare more than the map alone.
    last: [Option<(LimitKey, Arc<Handle>)>; KINDS],
    /// Lookups since this thread last swept the shared table.
    ops: u32,
}

/// How many [`LimitKind`]s there are.
const KINDS: usize = LimitKind::CostBudget as usize + 1;

impl ThreadCache {
    /// Forgets every entry (a sweep may have dropped them from the table).
    fn clear(&mut self, generation: u64) {
        self.entries.clear();
        self.last = Default::default();
        self.generation = generation;
    }
}

/// How fresh `Entry::last_hit` is kept, nanoseconds.
const LAST_HIT_GRAIN: u64 = 1_000_000_000;

/// Lookups a thread makes between sweeps of idle entries.
const SWEEP_EVERY: u32 = 1 << 16;
/// Entries kept without a sweep (a sweep runs sooner past this).
const SWEEP_ABOVE: usize = 4096;

/// The in-process limiter: a governor token bucket per rate key, atomic
/// slot counts and budget windows; lock-free on the common path.
///
/// Entries live in a sharded table; each thread keeps its own map of the
/// entries it used (so callers on several threads share only the
/// counters themselves, not a lock or a map). Idle entries — bucket full,
/// no slot held, window over, i.e. indistinguishable from new ones — are
/// swept now and then, so the table tracks the callers of the last few
/// minutes rather than every caller ever seen.
pub struct InMemoryLimiter {
    shards: [Shard; SHARDS],
    /// Bumped by a sweep; a thread whose cache is older clears it.
    generation: AtomicU64,
    len: AtomicUsize,
    hasher: Hasher,
    local: ThreadLocal<RefCell<ThreadCache>>,
}

impl std::fmt::Debug for InMemoryLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryLimiter")
            .field("entries", &self.len.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Default for InMemoryLimiter {
    fn default() -> Self {
        InMemoryLimiter {
            shards: Default::default(),
            generation: AtomicU64::new(0),
            len: AtomicUsize::new(0),
            hasher: Hasher::default(),
            local: ThreadLocal::new(),
        }
    }
}

impl InMemoryLimiter {
    /// An empty limiter.
    pub fn new() -> Self {
        Self::default()
    }

    /// Nanoseconds since the clock's epoch, +1 (0 means "never"); one
    /// reading for every check of a call (see [`clock`]).
    fn now(&self) -> u64 {
        clock::now()
    }

    fn shard(&self, key: &LimitKey) -> &Shard {
        &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }

    /// This thread's handle on the entry of `key`.
    fn entry(&self, key: &LimitKey) -> Arc<Handle> {
        self.with_entry(key, Arc::clone)
    }

    /// Runs `f` on the entry of `key` without taking a reference to it: an
    /// entry is shared by every thread, and a count taken and given back
    /// on each check would move its cache line between them. `f` must not
    /// call back into the limiter (the thread's cache is borrowed).
    fn with_entry<R>(&self, key: &LimitKey, f: impl FnOnce(&Arc<Handle>) -> R) -> R {
        let cell = self.local.get_or(|| {
            RefCell::new(ThreadCache {
                generation: self.generation.load(Ordering::Acquire),
                entries: HashMap::with_hasher(Hasher::default()),
                last: Default::default(),
                ops: 0,
            })
        });
        let mut cache = cell.borrow_mut();
        let generation = self.generation.load(Ordering::Acquire);
        if cache.generation != generation {
            cache.clear(generation);
        }
        cache.ops += 1;
        if cache.ops >= SWEEP_EVERY
            || (cache.ops % 1024 == 0 && self.len.load(Ordering::Relaxed) > SWEEP_ABOVE)
        {
            cache.ops = 0;
            if self.sweep() {
                cache.clear(self.generation.load(Ordering::Acquire));
            }
        }
        let kind = key.kind as usize;
        if let Some((k, e)) = &cache.last[kind] {
            if k == key {
                return f(e);
            }
        }
        let (k, e) = match cache.entries.get_key_value(key) {
            Some((k, e)) => (k.clone(), e.clone()),
            None => {
                let (k, e) = (owned(key), Arc::new(Handle(self.shared_entry(key))));
                cache.entries.insert(k.clone(), e.clone());
                (k, e)
            }
        };
        let r = f(&e);
        cache.last[kind] = Some((k, e));
        r
    }

    fn shared_entry(&self, key: &LimitKey) -> Arc<Entry> {
        let shard = self.shard(key);
        if let Some(e) = shard.read().unwrap_or_else(|e| e.into_inner()).get(key) {
            return e.clone();
        }
        let mut map = shard.write().unwrap_or_else(|e| e.into_inner());
        map.entry(owned(key))
            .or_insert_with(|| {
                self.len.fetch_add(1, Ordering::Relaxed);
                Arc::default()
            })
            .clone()
    }

    /// Drops idle entries (a held slot keeps its entry busy); true when
    /// any went, and the generation moves on so that every thread drops
    /// its cached copies.
    fn sweep(&self) -> bool {
        let now = self.now();
        let mut removed = 0;
        for shard in &self.shards {
            // A sweep never waits: a busy shard is swept next time.
            let Ok(mut map) = shard.try_write() else {
                continue;
            };
            map.retain(|_, e| {
                // Held by a cache or a slot: the cache copies go with the
                // generation; a held slot is not idle anyway.
                let keep = !e.idle(now);
                removed += usize::from(!keep);
                keep
            });
        }
        if removed > 0 {
            self.len.fetch_sub(removed, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        removed > 0
    }

    /// Slots currently held for `key` (for tests and metrics).
    pub fn held(&self, key: &LimitKey) -> u32 {
        self.shard(key)
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .map_or(0, |e| e.slots.load(Ordering::Acquire))
    }

    /// Keys with counters (for tests and metrics).
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// True when no key has counters.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `key` with a tool name of its own: a key that is kept must not keep
/// the request body its name was sliced from.
fn owned(key: &LimitKey) -> LimitKey {
    LimitKey {
        kind: key.kind,
        subject: key.subject.clone(),
        tool: key.tool.as_deref().map(Bytes::copy_from_slice),
    }
}

/// One thread's hold on a shared entry. Why: a slot keeps its entry
/// alive until it is given back, and counting that on the entry's own
/// reference count would move the count's cache line between threads
/// twice a slot; a thread's handle is counted where only that thread
/// (usually) looks.
struct Handle(Arc<Entry>);

impl std::ops::Deref for Handle {
    type Target = Entry;
    fn deref(&self) -> &Entry {
        &self.0
    }
}

/// Gives a slot back when dropped: one atomic decrement, no lock.
struct SlotGuard(Arc<Handle>);

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.0.slots.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Limiter for InMemoryLimiter {
    fn is_local(&self) -> bool {
        true
    }

    fn hit(&self, key: &LimitKey, quota: &Quota) -> LimitFuture<'_, Result<(), Duration>> {
        StoreFuture::ready(self.with_entry(key, |e| self.hit_entry(e, quota)))
    }

    fn acquire(&self, key: &LimitKey, max: u32) -> LimitFuture<'_, Option<Slot>> {
        let e = self.entry(key);
        let taken = e
            .slots
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                (v < max).then_some(v + 1)
            })
            .is_ok();
        StoreFuture::ready(taken.then(|| Slot(SlotKind::Local(SlotGuard(e)))))
    }

    fn charge(
        &self,
        key: &LimitKey,
        budget: &Budget,
        amount: u64,
        must_fit: bool,
    ) -> LimitFuture<'_, Result<(), Duration>> {
        StoreFuture::ready(self.with_entry(key, |e| self.charge_entry(e, budget, amount, must_fit)))
    }
}

impl InMemoryLimiter {
    fn hit_entry(&self, e: &Entry, quota: &Quota) -> Result<(), Duration> {
        let bucket = e.rate.get_or_init(|| {
            let burst = quota.burst.max(1);
            let per_second = quota.per_second.max(1e-6);
            let refill = Duration::from_secs_f64(f64::from(burst) / per_second);
            e.refill_ns
                .store(refill.as_nanos() as u64, Ordering::Release);
            let q = GovQuota::with_period(Duration::from_secs_f64(1.0 / per_second))
                .expect("a positive period")
                .allow_burst(NonZeroU32::new(burst).expect("at least 1"));
            RateLimiter::direct_with_clock(q, LimiterClock)
        });
        let now = self.now();
        // To the second: the sweep needs no finer, and a store on every
        // call would bounce the line between threads.
        if now.saturating_sub(e.last_hit.load(Ordering::Relaxed)) > LAST_HIT_GRAIN {
            e.last_hit.store(now, Ordering::Release);
        }
        bucket
            .check()
            .map_err(|nu| nu.wait_time_from(LimiterClock.now()))
    }

    fn charge_entry(
        &self,
        e: &Entry,
        budget: &Budget,
        amount: u64,
        must_fit: bool,
    ) -> Result<(), Duration> {
        let window = Duration::from_secs(budget.window_secs.max(1)).as_nanos() as u64;
        let now = self.now();
        let w = &e.window;
        if w.len_ns.load(Ordering::Relaxed) != window {
            w.len_ns.store(window, Ordering::Release);
        }
        let start = w.start.load(Ordering::Acquire);
        if start == 0 || now.saturating_sub(start) >= window {
            // Roll the window over; of racing callers one wins, the others
            // see the new window.
            if w.start
                .compare_exchange(start, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                w.used.store(0, Ordering::Release);
            }
        }
        let start = w.start.load(Ordering::Acquire);
        let left = Duration::from_nanos(window.saturating_sub(now.saturating_sub(start)));
        if !must_fit {
            w.used.fetch_add(amount, Ordering::AcqRel);
            return Ok(());
        }
        let fits = w
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                (u < budget.amount && u + amount <= budget.amount).then_some(u + amount)
            })
            .is_ok();
        if fits {
            Ok(())
        } else {
            Err(left)
        }
    }
}

/// Counts tokens in bytes of JSON.
pub trait TokenCounter: Send + Sync + 'static {
    /// Tokens in `bytes`.
    fn count(&self, bytes: &[u8]) -> u64;
}

/// The default approximation: one token per four bytes, rounded up. BPE
/// tokenizers of current models average close to four characters of
/// English or JSON per token; the approximation errs on neither side by
/// much and costs nothing. Swap in a real tokenizer through the trait when
/// budgets must match a model's billing.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApproxTokenCounter;

impl TokenCounter for ApproxTokenCounter {
    fn count(&self, bytes: &[u8]) -> u64 {
        (bytes.len() as u64).div_ceil(4)
    }
}

/// The limits, as configured. Every limit is optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    /// Calls per principal.
    pub principal_rate: Option<Quota>,
    /// Calls per principal and tool.
    pub principal_tool_rate: Option<Quota>,
    /// Calls per backend.
    pub backend_rate: Option<Quota>,
    /// Methods counted by the rate and in-flight limits besides
    /// `tools/call` (e.g. `["tools/list", "ping"]`).
    #[serde(default)]
    pub count_methods: Vec<String>,
    /// Concurrent sessions per principal.
    pub principal_sessions: Option<u32>,
    /// Concurrent sessions per backend.
    pub backend_sessions: Option<u32>,
    /// Calls in flight per principal.
    pub principal_in_flight: Option<u32>,
    /// Calls in flight per backend.
    pub backend_in_flight: Option<u32>,
    /// Tokens (arguments + results) per principal per window.
    pub token_budget: Option<Budget>,
    /// Cost per principal per window.
    pub cost_budget: Option<Budget>,
    /// Cost of a tool: the first pattern (glob) that matches its name.
    #[serde(default)]
    pub tool_costs: BTreeMap<String, u64>,
    /// Cost of a tool no pattern names. Default 1.
    #[serde(default = "one")]
    pub default_cost: u64,
    /// `Retry-After` for a refused session, seconds. Default 5.
    #[serde(default = "five")]
    pub session_retry_after_secs: u64,
}

fn one() -> u64 {
    1
}
fn five() -> u64 {
    5
}

/// The cost charged for a call: in the response extensions, for the audit
/// log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CostCharged(pub u64);

struct Shared {
    cfg: LimitConfig,
    backend: Arc<str>,
    limiter: Arc<dyn Limiter>,
    tokens: Arc<dyn TokenCounter>,
    /// `cfg.tool_costs`, compiled, in the same order.
    tool_costs: Vec<(Glob, u64)>,
    /// Session slots by gateway session id, released when it ends.
    sessions: Mutex<HashMap<String, Slots>>,
}

/// Builds [`Limit`] services; also the [`SessionObserver`] that frees
/// session slots (the builder registers it on the session layer).
#[derive(Clone)]
pub struct LimitLayer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for LimitLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LimitLayer")
            .field("cfg", &self.shared.cfg)
            .finish()
    }
}

fn compile_costs(cfg: &LimitConfig) -> Vec<(Glob, u64)> {
    cfg.tool_costs
        .iter()
        .map(|(p, c)| (Glob::new(p), *c))
        .collect()
}

impl LimitLayer {
    /// Limits for the backend named `backend`, counted by `limiter`.
    pub fn new(cfg: LimitConfig, backend: impl Into<Arc<str>>, limiter: Arc<dyn Limiter>) -> Self {
        LimitLayer {
            shared: Arc::new(Shared {
                tool_costs: compile_costs(&cfg),
                cfg,
                backend: backend.into(),
                limiter,
                tokens: Arc::new(ApproxTokenCounter),
                sessions: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Counts tokens with `counter` instead of the approximation.
    pub fn token_counter(self, counter: Arc<dyn TokenCounter>) -> Self {
        let s = &self.shared;
        LimitLayer {
            shared: Arc::new(Shared {
                cfg: s.cfg.clone(),
                backend: s.backend.clone(),
                limiter: s.limiter.clone(),
                tokens: counter,
                tool_costs: s.tool_costs.clone(),
                sessions: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The observer to register on the session layer
    /// ([`crate::session::SessionLayer::observe`]) so that session slots are
    /// released whenever a session ends.
    pub fn session_observer(&self) -> Arc<dyn SessionObserver> {
        Arc::new(SlotReleaser(self.shared.clone()))
    }

    /// Sessions holding slots (for tests and metrics).
    pub fn sessions_held(&self) -> usize {
        self.shared
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

struct SlotReleaser(Arc<Shared>);

impl SessionObserver for SlotReleaser {
    fn ended(&self, record: &SessionRecord, _why: SessionEnd) {
        self.0
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(record.id().as_str());
    }
}

impl<S> Layer<S> for LimitLayer {
    type Service = Limit<S>;
    fn layer(&self, inner: S) -> Limit<S> {
        Limit {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The limit service. See the module docs.
#[derive(Clone)]
pub struct Limit<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Limit<S> {
    inner_accessors!();
}

impl<S> std::fmt::Debug for Limit<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limit").finish_non_exhaustive()
    }
}

/// The client's address, in the request extensions. The axum builder
/// copies it from axum's `ConnectInfo<SocketAddr>` when the app is served
/// with connect info (as `mcp_gateway_axum::serve` does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

/// Who is limited: the principal's key, else `anon:<client ip>`, else
/// `anon`.
pub fn limit_subject<B>(req: &Request<B>) -> Arc<str> {
    if let Some(p) = req.extensions().get::<Principal>() {
        return p.key().clone();
    }
    match req.extensions().get::<ClientAddr>() {
        Some(a) => format!("anon:{}", a.0.ip()).into(),
        None => Arc::from("anon"),
    }
}

fn refusal(
    limit: LimitKind,
    retry: Duration,
    id: Option<&RequestId>,
    kind: ErrorKind,
) -> Response<Body> {
    // Rounded up: retrying after exactly this long must succeed.
    let ms = (retry.as_nanos().div_ceil(1_000_000) as u64).max(1);
    let e = GatewayError::new(
        kind,
        format!("limit {} reached; retry in {ms} ms", limit.as_str()),
    )
    .with_data(&serde_json::json!({"limit": limit.as_str(), "retryAfterMs": ms}));
    let mut res = error_response(&e, id);
    // For the audit log, outside this layer.
    res.extensions_mut().insert(limit);
    if kind == ErrorKind::TooManySessions {
        let secs = retry.as_secs_f64().ceil().max(1.0) as u64;
        res.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    res
}

/// The slots a call or a session holds: the first two (a principal's and
/// a backend's, all one message takes) in place, any more (a batch's) in
/// a vector. Saves an allocation per call.
#[derive(Default)]
struct Slots {
    first: [Option<Slot>; 2],
    more: Vec<Slot>,
}

impl Slots {
    fn push(&mut self, s: Slot) {
        match self.first.iter_mut().find(|f| f.is_none()) {
            Some(free) => *free = Some(s),
            None => self.more.push(s),
        }
    }

    fn append(&mut self, other: Slots) {
        for s in other.first.into_iter().flatten().chain(other.more) {
            self.push(s);
        }
    }

    fn is_empty(&self) -> bool {
        self.first.iter().all(Option::is_none) && self.more.is_empty()
    }

    /// Gives every slot back.
    fn release(&mut self) {
        *self = Slots::default();
    }
}

/// Permits and counters a call carries until its response body ends.
struct CallHold {
    slots: Slots,
    tokens: Option<(LimitKey, Budget)>,
}

impl Shared {
    fn counted(&self, m: &Message) -> bool {
        match m.method() {
            Some(Method::ToolsCall) => true,
            Some(other) => self.cfg.count_methods.iter().any(|c| c == other.as_str()),
            None => false,
        }
    }

    fn key(&self, kind: LimitKind, subject: &Arc<str>, tool: Option<Bytes>) -> LimitKey {
        LimitKey {
            kind,
            subject: subject.clone(),
            tool,
        }
    }

    /// The cost of a call of `tool` (its name as sent: the name is read as
    /// text only when some tool has a cost of its own).
    fn cost_of(&self, tool: &[u8]) -> u64 {
        if self.tool_costs.is_empty() {
            return self.cfg.default_cost;
        }
        let tool = std::str::from_utf8(tool).unwrap_or("");
        self.tool_costs
            .iter()
            .find(|(pat, _)| pat.matches(tool))
            .map_or(self.cfg.default_cost, |(_, c)| *c)
    }

    /// Checks one counted message; `Err` is the refusal. Returns the slots
    /// to hold and the cost charged.
    async fn admit(
        &self,
        who: &Arc<str>,
        m: &Message,
    ) -> Result<(Slots, u64), (LimitKind, Duration)> {
        // One key for the principal and one for the backend, whose kind
        // changes from check to check: fewer reference-count updates on the
        // shared names (every one a cache line bounced between threads).
        // The tool name shares the request body; the limiter copies it if
        // it keeps the key.
        let tool = (m.method() == Some(&Method::ToolsCall))
            .then(|| m.target_text().map(|t| t.as_bytes().clone()))
            .flatten();
        let mut mine = self.key(LimitKind::PrincipalToolRate, who, tool);
        // The backend's key only when a backend limit is set: its name is
        // shared by every thread, and a clone touches that shared count.
        let backend_limited =
            self.cfg.backend_rate.is_some() || self.cfg.backend_in_flight.is_some();
        let mut theirs =
            backend_limited.then(|| self.key(LimitKind::BackendRate, &self.backend, None));
        // Narrowest first: a call refused by its tool's limit does not
        // spend the principal's or the backend's allowance.
        if let (Some(q), true) = (self.cfg.principal_tool_rate, mine.tool.is_some()) {
            self.limiter
                .hit(&mine, &q)
                .await
                .map_err(|d| (LimitKind::PrincipalToolRate, d))?;
        }
        let tool = mine.tool.take();
        mine.kind = LimitKind::PrincipalRate;
        if let Some(q) = self.cfg.principal_rate {
            self.limiter
                .hit(&mine, &q)
                .await
                .map_err(|d| (LimitKind::PrincipalRate, d))?;
        }
        if let (Some(q), Some(k)) = (self.cfg.backend_rate, &theirs) {
            self.limiter
                .hit(k, &q)
                .await
                .map_err(|d| (LimitKind::BackendRate, d))?;
        }
        // At most two: the principal's and the backend's.
        let mut slots = Slots::default();
        mine.kind = LimitKind::PrincipalInFlight;
        if let Some(k) = &mut theirs {
            k.kind = LimitKind::BackendInFlight;
        }
        for (key, max) in [
            (Some(&mine), self.cfg.principal_in_flight),
            (theirs.as_ref(), self.cfg.backend_in_flight),
        ] {
            let (Some(key), Some(max)) = (key, max) else {
                continue;
            };
            match self.limiter.acquire(key, max).await {
                Some(s) => slots.push(s),
                // In-flight calls end in milliseconds to seconds: a short hint.
                None => return Err((key.kind, Duration::from_millis(100))),
            }
        }
        if let Some(b) = self.cfg.token_budget {
            mine.kind = LimitKind::TokenBudget;
            let args = m.arguments().map_or(0, |a| self.tokens.count(a));
            self.limiter
                .charge(&mine, &b, args, true)
                .await
                .map_err(|d| (LimitKind::TokenBudget, d))?;
        }
        let mut cost = 0;
        if let (Some(b), Some(t)) = (self.cfg.cost_budget, &tool) {
            mine.kind = LimitKind::CostBudget;
            cost = self.cost_of(t);
            self.limiter
                .charge(&mine, &b, cost, true)
                .await
                .map_err(|d| (LimitKind::CostBudget, d))?;
        }
        Ok((slots, cost))
    }
}

impl<S> Service<Request<Body>> for Limit<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> BoxFuture {
        let shared = self.shared.clone();
        let Some(mcp) = req.extensions().get::<McpRequest>().cloned() else {
            return Box::pin(self.inner.call(req));
        };
        let who = limit_subject(&req);
        if mcp.is_initialize() {
            let inner = take_ready(&mut self.inner);
            return Box::pin(async move { initialize(&shared, &who, &mcp, inner, req).await });
        }
        if shared.limiter.is_local() {
            // The in-process limiter answers at once: decide here, and
            // leave the future only the wait for the response (a smaller
            // future, no limiter states in it), calling the service polled
            // ready as it is (no clone of the stack below: see
            // `Audit::call`).
            match admit_all_now(&shared, &who, &mcp) {
                Some(Ok(None)) => return Box::pin(self.inner.call(req)),
                Some(Ok(Some(admitted))) => {
                    let fut = self.inner.call(req);
                    return Box::pin(async move {
                        let res = fut.await?;
                        Ok(hold(shared, who, res, admitted))
                    });
                }
                Some(Err(refused)) => return Box::pin(std::future::ready(Ok(refused))),
                // Not ready after all: the general path below.
                None => {}
            }
        }
        let mut inner = take_ready(&mut self.inner);
        Box::pin(async move {
            let admitted = match admit_all(&shared, &who, &mcp).await {
                Ok(None) => return inner.call(req).await,
                Ok(Some(a)) => a,
                Err(refused) => return Ok(refused),
            };
            let res = inner.call(req).await?;
            Ok(hold(shared, who, res, admitted))
        })
    }
}

/// What the admitted messages of a request took: slots and cost.
struct Admitted {
    slots: Slots,
    cost: u64,
}

/// Checks every counted message of `mcp`. `Ok(None)`: nothing counted;
/// `Err`: the refusal to answer with.
async fn admit_all(
    shared: &Shared,
    who: &Arc<str>,
    mcp: &McpRequest,
) -> Result<Option<Admitted>, Response<Body>> {
    let mut admitted = Admitted {
        slots: Slots::default(),
        cost: 0,
    };
    let mut counted = false;
    for m in mcp.envelope().messages() {
        if !shared.counted(m) {
            continue;
        }
        counted = true;
        match shared.admit(who, m).await {
            Ok((s, c)) => {
                // One message (the usual case): its slots as they are.
                if admitted.slots.is_empty() {
                    admitted.slots = s;
                } else {
                    admitted.slots.append(s);
                }
                admitted.cost += c;
            }
            Err((kind, retry)) => {
                return Err(refusal(kind, retry, m.id(), ErrorKind::Limited));
            }
        }
    }
    Ok(counted.then_some(admitted))
}

/// [`admit_all`] for a limiter whose answers are ready at once; `None` if
/// one was not.
fn admit_all_now(
    shared: &Shared,
    who: &Arc<str>,
    mcp: &McpRequest,
) -> Option<Result<Option<Admitted>, Response<Body>>> {
    // One clock reading for all the checks: they do not wait.
    clock::pinned(|| futures_util::FutureExt::now_or_never(admit_all(shared, who, mcp)))
}

/// The response of an admitted call: its cost noted for the audit log, its
/// body holding the slots and charging the result's tokens.
fn hold(shared: Arc<Shared>, who: Arc<str>, res: Response<Body>, a: Admitted) -> Response<Body> {
    let (mut parts, body) = res.into_parts();
    if a.cost > 0 {
        parts.extensions.insert(CostCharged(a.cost));
    }
    let tokens = shared
        .cfg
        .token_budget
        .map(|b| (shared.key(LimitKind::TokenBudget, &who, None), b));
    let hold = CallHold {
        slots: a.slots,
        tokens,
    };
    Response::from_parts(
        parts,
        Body::new(HeldBody {
            inner: body,
            hold,
            shared,
            pending: 0,
        }),
    )
}

async fn initialize<S>(
    shared: &Arc<Shared>,
    who: &Arc<str>,
    mcp: &McpRequest,
    mut inner: S,
    req: Request<Body>,
) -> Result<Response<Body>, Infallible>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
{
    let retry = Duration::from_secs(shared.cfg.session_retry_after_secs);
    let mut slots = Slots::default();
    for (kind, max, subject) in [
        (
            LimitKind::PrincipalSessions,
            shared.cfg.principal_sessions,
            who,
        ),
        (
            LimitKind::BackendSessions,
            shared.cfg.backend_sessions,
            &shared.backend,
        ),
    ] {
        let Some(max) = max else { continue };
        match shared
            .limiter
            .acquire(&shared.key(kind, subject, None), max)
            .await
        {
            Some(s) => slots.push(s),
            None => {
                return Ok(refusal(
                    kind,
                    retry,
                    mcp.first_id(),
                    ErrorKind::TooManySessions,
                ));
            }
        }
    }
    let res = inner.call(req).await?;
    if !slots.is_empty() && res.status().is_success() {
        if let Some(sid) = res
            .headers()
            .get(&header_names::MCP_SESSION_ID)
            .and_then(|v| v.to_str().ok())
        {
            shared
                .sessions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(sid.to_owned(), slots);
        }
    }
    // Otherwise no session started and the slots are released here.
    Ok(res)
}

/// Streamed tokens are charged in batches of this many (and at the end).
const TOKEN_BATCH: u64 = 1024;

pin_project_lite::pin_project! {
    /// A response body holding a call's permits until it ends or is
    /// dropped, and charging the result's tokens as they pass (in batches,
    /// and whatever is left when the body ends or is dropped). The end is
    /// acted on in the poll that sees it, before the server writes the last
    /// bytes: a client that has read the whole answer and calls again at
    /// once must find the permit free, and the budget charged.
    struct HeldBody {
        #[pin]
        inner: Body,
        hold: CallHold,
        shared: Arc<Shared>,
        pending: u64,
    }

    impl PinnedDrop for HeldBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            let n = std::mem::take(this.pending);
            charge_tokens(this.shared, &this.hold.tokens, n);
        }
    }
}

fn charge_tokens(shared: &Arc<Shared>, tokens: &Option<(LimitKey, Budget)>, n: u64) {
    let Some((key, budget)) = tokens else { return };
    if n == 0 {
        return;
    }
    if shared.limiter.is_local() {
        // A local limiter charges inside `charge`; the ready future only
        // carries the answer, not needed here.
        drop(shared.limiter.charge(key, budget, n, false));
    } else if tokio::runtime::Handle::try_current().is_ok() {
        // A shared store: charge without holding up the stream.
        let (shared, key, budget) = (shared.clone(), key.clone(), *budget);
        tokio::spawn(async move {
            let _ = shared.limiter.charge(&key, &budget, n, false).await;
        });
    }
}

impl http_body::Body for HeldBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let res = this.inner.as_mut().poll_frame(cx);
        let ended = match &res {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(_)) = (frame.data_ref(), &this.hold.tokens) {
                    *this.pending += this.shared.tokens.count(data);
                    if *this.pending >= TOKEN_BATCH {
                        let n = std::mem::take(this.pending);
                        charge_tokens(this.shared, &this.hold.tokens, n);
                    }
                }
                this.inner.is_end_stream()
            }
            Poll::Ready(_) => true,
            Poll::Pending => false,
        };
        if ended {
            let n = std::mem::take(this.pending);
            charge_tokens(this.shared, &this.hold.tokens, n);
            this.hold.slots.release();
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymous_callers_are_keyed_by_address() {
        let mut req = Request::new(());
        assert_eq!(&*limit_subject(&req), "anon");
        req.extensions_mut()
            .insert(ClientAddr("192.0.2.7:5555".parse().unwrap()));
        assert_eq!(&*limit_subject(&req), "anon:192.0.2.7");
        let p = Principal::builder("ann").build();
        req.extensions_mut().insert(p.clone());
        assert_eq!(limit_subject(&req), *p.key());
    }

    fn key(kind: LimitKind, subject: &str) -> LimitKey {
        LimitKey {
            kind,
            subject: subject.into(),
            tool: None,
        }
    }

    #[tokio::test]
    async fn permits_are_released_as_the_answer_ends_not_when_it_is_dropped() {
        use http_body_util::BodyExt;
        use tower::ServiceExt;
        let limiter = Arc::new(InMemoryLimiter::new());
        let cfg = LimitConfig {
            principal_in_flight: Some(1),
            backend_in_flight: Some(1),
            ..Default::default()
        };
        let svc = tower::ServiceBuilder::new()
            .layer(crate::jsonrpc::JsonRpcLayer::default())
            .layer(LimitLayer::new(cfg, "b", limiter.clone()))
            .service(crate::test_support::two_frame_event_stream());
        let req = crate::test_support::tools_call(1);
        let held = || {
            (
                limiter.held(&key(LimitKind::PrincipalInFlight, "anon")),
                limiter.held(&key(LimitKind::BackendInFlight, "b")),
            )
        };
        let mut body = svc.oneshot(req).await.unwrap().into_body();
        assert_eq!(held(), (1, 1), "held while the answer runs");
        body.frame().await.unwrap().unwrap();
        assert_eq!(held(), (1, 1), "held until the last frame");
        while let Some(f) = body.frame().await {
            f.unwrap();
        }
        // The body is still alive (a server drops it after writing the end).
        assert_eq!(held(), (0, 0), "released when the end was seen");
        drop(body);
        assert_eq!(held(), (0, 0));
    }

    fn block<T>(f: LimitFuture<'_, T>) -> T {
        futures_util::FutureExt::now_or_never(f).expect("the in-memory limiter is ready at once")
    }

    #[test]
    fn idle_entries_are_swept_and_thread_caches_follow() {
        let l = InMemoryLimiter::new();
        let rate = key(LimitKind::PrincipalRate, "ann");
        let q = Quota {
            burst: 1,
            per_second: 1000.0,
        };
        block(l.hit(&rate, &q)).unwrap();
        assert!(block(l.hit(&rate, &q)).is_err(), "burst of one");
        let busy = key(LimitKind::PrincipalInFlight, "ann");
        let slot = block(l.acquire(&busy, 1)).unwrap();
        assert_eq!(l.len(), 2);
        // The bucket refills in a millisecond; the held slot keeps its entry.
        let t0 = std::time::Instant::now();
        while !l.sweep() {
            assert!(t0.elapsed() < Duration::from_secs(5), "never idle");
            std::thread::yield_now();
        }
        assert_eq!(l.len(), 1);
        assert_eq!(l.held(&busy), 1);
        // This thread's cache was dropped with the generation: the count
        // it sees is the table's, so the cap still holds.
        assert!(block(l.acquire(&busy, 1)).is_none());
        drop(slot);
        assert!(l.sweep());
        assert!(l.is_empty());
        assert!(block(l.acquire(&busy, 1)).is_some(), "a new entry");
        assert!(block(l.hit(&rate, &q)).is_ok(), "a full bucket again");
    }

    #[test]
    fn kept_keys_do_not_keep_the_request_body() {
        let l = InMemoryLimiter::new();
        let body = Bytes::from(vec![b'x'; 4096]);
        let key = LimitKey {
            kind: LimitKind::PrincipalToolRate,
            subject: "ann".into(),
            tool: Some(body.slice(10..20)),
        };
        let q = Quota {
            burst: 5,
            per_second: 1.0,
        };
        block(l.hit(&key, &q)).unwrap();
        let range = body.as_ptr() as usize..body.as_ptr() as usize + body.len();
        for shard in &l.shards {
            for k in shard.read().unwrap().keys() {
                let p = k.tool.as_ref().unwrap().as_ptr() as usize;
                assert!(!range.contains(&p), "the stored key shares the body");
            }
        }
        let cell = l.local.get().unwrap().borrow();
        for k in cell.entries.keys() {
            let p = k.tool.as_ref().unwrap().as_ptr() as usize;
            assert!(!range.contains(&p), "the cached key shares the body");
        }
    }

    #[test]
    fn a_batchs_slots_beyond_the_first_two_are_all_held_and_given_back() {
        struct Counted(Arc<AtomicU32>);
        impl Drop for Counted {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let held = Arc::new(AtomicU32::new(0));
        let slot = || {
            held.fetch_add(1, Ordering::AcqRel);
            Slot::new(Counted(held.clone()))
        };
        let (mut a, mut b) = (Slots::default(), Slots::default());
        assert!(a.is_empty());
        a.push(slot());
        for _ in 0..3 {
            b.push(slot());
        }
        a.append(b);
        assert!(!a.is_empty());
        assert_eq!(held.load(Ordering::Acquire), 4);
        a.release();
        assert!(a.is_empty());
        assert_eq!(held.load(Ordering::Acquire), 0);
    }

    #[test]
    fn in_memory_slots_and_windows() {
        let l = InMemoryLimiter::new();
        let key = key(LimitKind::PrincipalInFlight, "a");
        let s1 = block(l.acquire(&key, 2)).unwrap();
        let s2 = block(l.acquire(&key, 2)).unwrap();
        assert!(block(l.acquire(&key, 2)).is_none());
        assert_eq!(l.held(&key), 2);
        drop(s1);
        assert_eq!(l.held(&key), 1);
        drop(s2);
        assert_eq!(l.held(&key), 0);
        let b = Budget {
            amount: 10,
            window_secs: 60,
        };
        assert!(block(l.charge(&key, &b, 6, true)).is_ok());
        assert!(
            block(l.charge(&key, &b, 5, true)).is_err(),
            "would pass the budget"
        );
        assert!(
            block(l.charge(&key, &b, 5, false)).is_ok(),
            "results are always paid"
        );
        let wait = block(l.charge(&key, &b, 1, true)).unwrap_err();
        assert!(wait <= Duration::from_secs(60) && wait > Duration::from_secs(50));
        assert_eq!(ApproxTokenCounter.count(b"12345"), 2);
    }
}
