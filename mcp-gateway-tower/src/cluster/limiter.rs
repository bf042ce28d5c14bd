//! [`RedisLimiter`]: the limits of every replica counted in one place.
//!
//! A call's checks are decided by one script (one round trip), atomically:
//! when one is refused, none is spent. Time is Redis's (`TIME`), so the
//! replicas' clocks do not matter.
//! - rate: GCRA on one key per bucket (the theoretical arrival time);
//! - in-flight and session caps: a sorted set of leases per key, each
//!   expiring `lease` after it was last renewed; the replica holding a
//!   slot renews it in the background and releases it when the slot is
//!   dropped (the release rides along with the next decision, or goes on
//!   its own within 5 ms when none comes), so a dead replica's slots come
//!   back by themselves;
//! - budgets: a counter per fixed window.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mcp_gateway_core::Answer;
use redis::Script;
use tokio::sync::Notify;

use super::{FailMode, Redis};
use crate::limit::{Budget, Check, CheckOp, LimitKey, Limiter, Quota, Slot, IN_FLIGHT_RETRY};

/// What a [`RedisLimiter`] has done, for logs and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimiterStats {
    /// Decisions taken by Redis.
    pub decided: u64,
    /// Decisions taken without Redis (unreachable): let through with
    /// `fail_open`, refused with `fail_closed`.
    pub failed: u64,
    /// Slots held by this replica now.
    pub leases: u64,
    /// Round trips made only to release slots (no decision came within
    /// 5 ms to take them along).
    pub release_trips: u64,
}

/// How long a slot lives without renewal, by default.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// KEYS: one counter key per check. ARGV: lease ms, the number `r` of
/// slots released since the last decision, `r` (key, member) pairs (taken
/// back first: a release rides along with the next decision instead of a
/// round trip of its own), then per check: op (`h` hit, `a` acquire, `c`
/// charge), three numbers, and a member:
/// - `h`: emission interval (ms), burst, -, -
/// - `a`: max, -, -, member
/// - `c`: budget amount, window ms, amount, -
///
/// Returns `{-1}` when every check passes (and spends them), else
/// `{index, retry ms}` of the first refused one (and spends nothing).
const CHECK_ALL: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
local released = tonumber(ARGV[2])
for j = 0, released - 1 do
  redis.call('ZREM', ARGV[3 + 2 * j], ARGV[4 + 2 * j])
end
local first = 3 + 2 * released
local plan = {}
for i = 1, #KEYS do
  local base = first + (i - 1) * 5
  local op = ARGV[base]
  local a, b, c, m = tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3]), ARGV[base + 4]
  local k = KEYS[i]
  if op == 'h' then
    local tat = tonumber(redis.call('GET', k) or '0')
    if tat < now then tat = now end
    local new_tat = tat + a
    local allow_at = new_tat - a * b
    if allow_at > now then return {i - 1, math.ceil(allow_at - now)} end
    plan[i] = new_tat
  elseif op == 'a' then
    redis.call('ZREMRANGEBYSCORE', k, '-inf', now)
    if redis.call('ZCARD', k) >= a then return {i - 1, 100} end
  else
    local w = math.floor(now / b)
    local wk = k .. ':' .. w
    local used = tonumber(redis.call('GET', wk) or '0')
    if used + c > a then return {i - 1, (w + 1) * b - now} end
    plan[i] = wk
  end
end
for i = 1, #KEYS do
  local base = first + (i - 1) * 5
  local op = ARGV[base]
  local k = KEYS[i]
  if op == 'h' then
    redis.call('SET', k, plan[i], 'PX', math.max(1, math.ceil(plan[i] - now)))
  elseif op == 'a' then
    redis.call('ZADD', k, now + lease, ARGV[base + 4])
    redis.call('PEXPIRE', k, lease * 2)
  else
    redis.call('INCRBY', plan[i], tonumber(ARGV[base + 3]))
    redis.call('PEXPIRE', plan[i], tonumber(ARGV[base + 2]))
  end
end
return {-1}
";

/// ARGV: lease ms, then key, member pairs. Moves each lease on; returns
/// 1 per lease still held, 0 per lease gone (released elsewhere).
const RENEW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
local out = {}
for i = 2, #ARGV, 2 do
  local held = redis.call('ZADD', ARGV[i], 'XX', 'CH', now + lease, ARGV[i + 1])
  if redis.call('ZSCORE', ARGV[i], ARGV[i + 1]) then
    redis.call('PEXPIRE', ARGV[i], lease * 2)
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
";

/// KEYS: the budget's key. ARGV: amount, window ms. Charges the current
/// window, whatever it holds.
const CHARGE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local wk = KEYS[1] .. ':' .. math.floor(now / tonumber(ARGV[2]))
local v = redis.call('INCRBY', wk, tonumber(ARGV[1]))
redis.call('PEXPIRE', wk, tonumber(ARGV[2]))
return v
";

struct Inner {
    redis: Redis,
    fail: FailMode,
    lease: Duration,
    check_all: Script,
    renew: Script,
    charge: Script,
    /// Slots held here: lease id → (key, member).
    leases: Mutex<HashMap<u64, (String, String)>>,
    next_lease: AtomicU64,
    /// Released slots waiting to be removed from Redis.
    released: Mutex<Vec<(String, String)>>,
    release_now: Arc<Notify>,
    decided: AtomicU64,
    failed: AtomicU64,
    release_trips: AtomicU64,
}

/// Limits shared by replicas through Redis. See the module docs.
#[derive(Clone)]
pub struct RedisLimiter(Arc<Inner>);

impl std::fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("fail", &self.0.fail)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// Drops a lease: queued for removal, and no longer renewed.
struct Lease {
    id: u64,
    inner: Arc<Inner>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let held = self
            .inner
            .leases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
        if let Some(km) = held {
            let mut q = self
                .inner
                .released
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            // Bounded: if Redis is away for long, the oldest releases go
            // (those leases expire by themselves).
            if q.len() >= 100_000 {
                q.remove(0);
            }
            q.push(km);
            drop(q);
            self.inner.release_now.notify_one();
        }
    }
}

impl Inner {
    /// Releases that could not be sent, queued again (bounded: the
    /// leases expire anyway).
    fn put_back(&self, batch: Vec<(String, String)>) {
        if batch.is_empty() {
            return;
        }
        let mut q = self.released.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() < 100_000 {
            q.extend(batch);
        }
    }
}

impl RedisLimiter {
    /// A limiter on `redis`; `fail` says what happens while it cannot be
    /// reached. Starts the tasks that renew and release slots (so must be
    /// called within a Tokio runtime).
    pub fn new(redis: Redis, fail: FailMode) -> Self {
        Self::with_lease(redis, fail, DEFAULT_LEASE)
    }

    /// [`new`](Self::new) with slots that live `lease` without renewal
    /// (renewed every third of it): how long a dead replica's slots stay
    /// taken.
    pub fn with_lease(redis: Redis, fail: FailMode, lease: Duration) -> Self {
        let lease = lease.max(Duration::from_millis(300));
        let inner = Arc::new(Inner {
            redis,
            fail,
            lease,
            check_all: Script::new(CHECK_ALL),
            renew: Script::new(RENEW),
            charge: Script::new(CHARGE),
            leases: Mutex::new(HashMap::new()),
            next_lease: AtomicU64::new(0),
            released: Mutex::new(Vec::new()),
            release_now: Arc::new(Notify::new()),
            decided: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            release_trips: AtomicU64::new(0),
        });
        tokio::spawn(release_loop(Arc::downgrade(&inner)));
        tokio::spawn(renew_loop(Arc::downgrade(&inner)));
        RedisLimiter(inner)
    }

    /// What it has done so far.
    pub fn stats(&self) -> LimiterStats {
        LimiterStats {
            decided: self.0.decided.load(Ordering::Relaxed),
            failed: self.0.failed.load(Ordering::Relaxed),
            leases: self
                .0
                .leases
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .len() as u64,
            release_trips: self.0.release_trips.load(Ordering::Relaxed),
        }
    }

    fn key(&self, k: &LimitKey) -> String {
        let mut s = self.0.redis.key("l:");
        s.push_str(k.kind.as_str());
        s.push(':');
        s.push_str(&k.subject);
        if let Some(t) = &k.tool {
            s.push(':');
            s.push_str(&String::from_utf8_lossy(t));
        }
        s
    }

    async fn decide(&self, checks: Vec<Check>) -> Result<Vec<Slot>, (usize, Duration)> {
        let inner = &self.0;
        let mut inv = inner.check_all.prepare_invoke();
        inv.arg(inner.lease.as_millis() as u64);
        // Slots released since the last decision go back in this one.
        let released: Vec<(String, String)> = {
            let mut q = inner.released.lock().unwrap_or_else(|e| e.into_inner());
            let n = q.len().min(64);
            q.drain(..n).collect()
        };
        inv.arg(released.len());
        for (k, m) in &released {
            inv.arg(k).arg(m);
        }
        let mut members = Vec::new();
        for c in &checks {
            let key = self.key(&c.key);
            inv.key(&key);
            match c.op {
                CheckOp::Hit(q) => {
                    let interval = 1000.0 / q.per_second.max(1e-9);
                    inv.arg("h")
                        .arg(interval)
                        .arg(q.burst.max(1))
                        .arg(0)
                        .arg("");
                }
                CheckOp::Acquire(max) => {
                    let id = inner.next_lease.fetch_add(1, Ordering::Relaxed);
                    let member = format!("{}:{id}", inner.redis.replica());
                    inv.arg("a").arg(max).arg(0).arg(0).arg(&member);
                    members.push((id, key, member));
                }
                CheckOp::Charge(b, amount) => {
                    inv.arg("c")
                        .arg(b.amount)
                        .arg(b.window_secs.max(1) * 1000)
                        .arg(amount)
                        .arg("");
                }
            }
        }
        let mut c = inner.redis.conn();
        match inner
            .redis
            .run("limit", inv.invoke_async::<Vec<i64>>(&mut c))
            .await
        {
            Ok(v) if v.first() == Some(&-1) => {
                inner.decided.fetch_add(1, Ordering::Relaxed);
                let mut leases = inner.leases.lock().unwrap_or_else(|e| e.into_inner());
                Ok(members
                    .into_iter()
                    .map(|(id, key, member)| {
                        leases.insert(id, (key, member));
                        Slot::new(Lease {
                            id,
                            inner: inner.clone(),
                        })
                    })
                    .collect())
            }
            Ok(v) => {
                inner.decided.fetch_add(1, Ordering::Relaxed);
                let i = v.first().copied().unwrap_or(0).max(0) as usize;
                let ms = v.get(1).copied().unwrap_or(100).max(1) as u64;
                let retry = match checks.get(i).map(|c| c.op) {
                    Some(CheckOp::Acquire(_)) => IN_FLIGHT_RETRY,
                    _ => Duration::from_millis(ms),
                };
                Err((i, retry))
            }
            Err(_) => {
                inner.put_back(released);
                inner.failed.fetch_add(1, Ordering::Relaxed);
                match inner.fail {
                    FailMode::FailOpen => Ok(Vec::new()),
                    FailMode::FailClosed => Err((0, Duration::from_secs(1))),
                }
            }
        }
    }
}

impl Limiter for RedisLimiter {
    fn hit(&self, key: &LimitKey, quota: &Quota) -> Answer<'_, Result<(), Duration>> {
        let check = Check {
            key: key.clone(),
            op: CheckOp::Hit(*quota),
        };
        Answer::pending(async move { self.decide(vec![check]).await.map(drop).map_err(|e| e.1) })
    }

    fn acquire(&self, key: &LimitKey, max: u32) -> Answer<'_, Option<Slot>> {
        let check = Check {
            key: key.clone(),
            op: CheckOp::Acquire(max),
        };
        let fail_open = self.0.fail == FailMode::FailOpen;
        Answer::pending(async move {
            match self.decide(vec![check]).await {
                Ok(mut slots) => match slots.pop() {
                    Some(s) => Some(s),
                    // Redis unreachable, failing open: an empty slot.
                    None if fail_open => Some(Slot::new(())),
                    None => None,
                },
                Err(_) => None,
            }
        })
    }

    fn charge(
        &self,
        key: &LimitKey,
        budget: &Budget,
        amount: u64,
        must_fit: bool,
    ) -> Answer<'_, Result<(), Duration>> {
        if !must_fit {
            // Always charged (results already delivered): no decision.
            let (k, inner) = (self.key(key), self.0.clone());
            let window = budget.window_secs.max(1) * 1000;
            return Answer::pending(async move {
                let mut inv = inner.charge.prepare_invoke();
                inv.key(k).arg(amount).arg(window);
                let mut c = inner.redis.conn();
                let _ = inner
                    .redis
                    .run("limit charge", inv.invoke_async::<i64>(&mut c))
                    .await;
                Ok(())
            });
        }
        let check = Check {
            key: key.clone(),
            op: CheckOp::Charge(*budget, amount),
        };
        Answer::pending(async move { self.decide(vec![check]).await.map(drop).map_err(|e| e.1) })
    }

    fn batches(&self) -> bool {
        true
    }

    fn check_all(&self, checks: Vec<Check>) -> Answer<'_, Result<Vec<Slot>, (usize, Duration)>> {
        Answer::pending(self.decide(checks))
    }
}

/// Removes released slots from Redis, in batches.
async fn release_loop(weak: std::sync::Weak<Inner>) {
    loop {
        let Some(inner) = weak.upgrade() else { return };
        if !inner
            .released
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
        {
            // The next decision usually takes them along: only what is
            // still queued a moment later goes in a round trip of its own.
            drop(inner);
            tokio::time::sleep(RELEASE_AFTER).await;
            let Some(again) = weak.upgrade() else { return };
            release_queued(&again).await;
            continue;
        }
        let notified = inner.release_now.clone().notified_owned();
        drop(inner);
        // Wakes for a release, or now and then to see the limiter went.
        let _ = tokio::time::timeout(Duration::from_secs(5), notified).await;
    }
}

/// How long a released slot waits for a decision to take it along.
const RELEASE_AFTER: Duration = Duration::from_millis(5);

/// Sends what is queued for release, in batches.
async fn release_queued(inner: &Inner) {
    loop {
        let batch: Vec<(String, String)> = {
            let mut q = inner.released.lock().unwrap_or_else(|e| e.into_inner());
            let n = q.len().min(512);
            q.drain(..n).collect()
        };
        if batch.is_empty() {
            return;
        }
        let mut pipe = redis::pipe();
        for (k, m) in &batch {
            pipe.cmd("ZREM").arg(k).arg(m).ignore();
        }
        let mut c = inner.redis.conn();
        inner.release_trips.fetch_add(1, Ordering::Relaxed);
        if inner
            .redis
            .run("limit release", pipe.query_async::<()>(&mut c))
            .await
            .is_err()
        {
            // Put them back for the next try (the leases expire anyway).
            inner.put_back(batch);
            tokio::time::sleep(Duration::from_millis(500)).await;
            return;
        }
    }
}

/// Renews the slots this replica holds, every third of a lease.
async fn renew_loop(weak: std::sync::Weak<Inner>) {
    let Some(lease) = weak.upgrade().map(|i| i.lease) else {
        return;
    };
    let mut tick = tokio::time::interval(lease / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(inner) = weak.upgrade() else { return };
        let held: Vec<(u64, String, String)> = inner
            .leases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(id, (k, m))| (*id, k.clone(), m.clone()))
            .collect();
        for chunk in held.chunks(500) {
            let mut inv = inner.renew.prepare_invoke();
            inv.arg(lease.as_millis() as u64);
            for (_, k, m) in chunk {
                inv.arg(k).arg(m);
            }
            let mut c = inner.redis.conn();
            let Ok(alive) = inner
                .redis
                .run("limit renew", inv.invoke_async::<Vec<i64>>(&mut c))
                .await
            else {
                break;
            };
            // A lease gone from Redis (it expired while Redis was away, or
            // was flushed) is not renewed again.
            let mut leases = inner.leases.lock().unwrap_or_else(|e| e.into_inner());
            for ((id, _, _), alive) in chunk.iter().zip(alive) {
                if alive == 0 {
                    leases.remove(id);
                }
            }
        }
    }
}
