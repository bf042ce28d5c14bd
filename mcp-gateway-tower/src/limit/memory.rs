//! [`InMemoryLimiter`]: the default [`Limiter`], sharded in process.

#[allow(unused_imports)]
use super::*;

const SHARDS: usize = 16;

/// A key's counters: a token bucket (rate keys), a slot count (in-flight
/// and session keys) and a budget window (budget keys). A key uses one of
/// the three; keeping them in one entry keeps one table and one lookup.
pub(crate) struct Entry {
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
pub(crate) struct ThreadCache {
    pub(crate) generation: u64,
    pub(crate) entries: HashMap<LimitKey, Arc<Handle>, Hasher>,
    /// The last entry this thread used of each kind, in front of the map.
    /// Why: one call checks up to seven keys, each of another kind, and
    /// the next call of the same caller checks the same seven; a compare
    /// (the subject's pointer first) then replaces hashing the subject and
    /// the tool and probing the map. A caller of another kind's key costs
    /// one compare more than the map alone.
    pub(crate) last: [Option<(LimitKey, Arc<Handle>)>; KINDS],
    /// Lookups since this thread last swept the shared table.
    pub(crate) ops: u32,
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
    pub(crate) shards: [Shard; SHARDS],
    /// Bumped by a sweep; a thread whose cache is older clears it.
    pub(crate) generation: AtomicU64,
    pub(crate) len: AtomicUsize,
    pub(crate) hasher: Hasher,
    pub(crate) local: ThreadLocal<RefCell<ThreadCache>>,
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
    pub(crate) fn sweep(&self) -> bool {
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
pub(crate) struct Handle(Arc<Entry>);

impl std::ops::Deref for Handle {
    type Target = Entry;
    fn deref(&self) -> &Entry {
        &self.0
    }
}

/// Gives a slot back when dropped: one atomic decrement, no lock.
pub(crate) struct SlotGuard(Arc<Handle>);

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.0.slots.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Limiter for InMemoryLimiter {
    fn hit(&self, key: &LimitKey, quota: &Quota) -> Answer<'_, Result<(), Duration>> {
        Answer::ready(self.with_entry(key, |e| self.hit_entry(e, quota)))
    }

    fn acquire(&self, key: &LimitKey, max: u32) -> Answer<'_, Option<Slot>> {
        let e = self.entry(key);
        let taken = e
            .slots
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                (v < max).then_some(v + 1)
            })
            .is_ok();
        Answer::ready(taken.then(|| Slot(SlotKind::Local(SlotGuard(e)))))
    }

    fn charge(
        &self,
        key: &LimitKey,
        budget: &Budget,
        amount: u64,
        must_fit: bool,
    ) -> Answer<'_, Result<(), Duration>> {
        Answer::ready(self.with_entry(key, |e| self.charge_entry(e, budget, amount, must_fit)))
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
