//! [`InstanceState`]: one backend instance's health, load and drain.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

use super::OutlierConfig;

/// Milliseconds since the first call in this process (a monotonic clock
/// shared by every instance).
pub(crate) fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    // Plus one: 0 stays free to mean "never".
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// Where an instance stands, most serious first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// Taken out of the configuration: no traffic; its sessions moved.
    Removed,
    /// Its active probes fail.
    Unhealthy,
    /// Passive detection ejected it for a while.
    Ejected,
    /// It takes no new sessions; its sessions move at the drain deadline.
    Draining,
    /// It takes new sessions and calls.
    Healthy,
}

impl Condition {
    /// `"removed"`, `"unhealthy"`, `"ejected"`, `"draining"` or `"healthy"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::Removed => "removed",
            Condition::Unhealthy => "unhealthy",
            Condition::Ejected => "ejected",
            Condition::Draining => "draining",
            Condition::Healthy => "healthy",
        }
    }
}

/// One backend instance's health, load and drain state. Everything is an
/// atomic: the request path reads and counts without a lock.
#[derive(Debug)]
pub struct InstanceState {
    label: Arc<str>,
    healthy: AtomicBool,
    probe_failures: AtomicU32,
    probe_successes: AtomicU32,
    draining_since_ms: AtomicU64,
    drain_done: AtomicBool,
    removed: AtomicBool,
    retiring: AtomicBool,
    outstanding: AtomicUsize,
    consecutive_failures: AtomicU32,
    ejection_streak: AtomicU32,
    ejected_until_ms: AtomicU64,
    ejections: AtomicU64,
    failovers: AtomicU64,
    /// Counts the losses; calls in flight watch it move ([`LossWatch`]).
    losses: AtomicU64,
    waiters: Mutex<Waiters>,
}

impl InstanceState {
    /// A healthy instance shown as `label` (its URL, or a name).
    pub fn new(label: impl Into<Arc<str>>) -> Self {
        InstanceState {
            label: label.into(),
            healthy: AtomicBool::new(true),
            probe_failures: AtomicU32::new(0),
            probe_successes: AtomicU32::new(0),
            draining_since_ms: AtomicU64::new(0),
            drain_done: AtomicBool::new(false),
            removed: AtomicBool::new(false),
            retiring: AtomicBool::new(false),
            outstanding: AtomicUsize::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejection_streak: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            ejections: AtomicU64::new(0),
            failovers: AtomicU64::new(0),
            losses: AtomicU64::new(0),
            waiters: Mutex::default(),
        }
    }

    /// How the instance is shown (its URL, or a name).
    pub fn label(&self) -> &Arc<str> {
        &self.label
    }

    /// Where it stands now.
    pub fn condition(&self) -> Condition {
        let until = self.ejected_until_ms.load(Ordering::Acquire);
        if self.removed.load(Ordering::Acquire) {
            Condition::Removed
        } else if !self.healthy.load(Ordering::Acquire) {
            Condition::Unhealthy
        } else if until != 0 && until > now_ms() {
            Condition::Ejected
        } else if self.draining_since_ms.load(Ordering::Acquire) != 0 {
            Condition::Draining
        } else {
            Condition::Healthy
        }
    }

    /// Whether it takes new sessions and stateless calls.
    pub fn is_eligible(&self) -> bool {
        self.condition() == Condition::Healthy
    }

    /// Whether its sessions must move before their next request: it is
    /// unhealthy, ejected or removed. (A draining instance keeps its
    /// sessions until the drain deadline.)
    pub fn is_lost(&self) -> bool {
        matches!(
            self.condition(),
            Condition::Removed | Condition::Unhealthy | Condition::Ejected
        )
    }

    /// Requests in flight on it (a streamed call counts until its stream
    /// ends).
    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// Times passive detection ejected it.
    pub fn ejections(&self) -> u64 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// Sessions moved off it by failover or drain.
    pub fn failovers(&self) -> u64 {
        self.failovers.load(Ordering::Relaxed)
    }

    /// Whether its active probes pass (true when it is not probed).
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// Since when it drains, if it does.
    pub fn draining_for(&self) -> Option<Duration> {
        match self.draining_since_ms.load(Ordering::Acquire) {
            0 => None,
            since => Some(Duration::from_millis(now_ms().saturating_sub(since))),
        }
    }

    /// Stops new sessions going to it. Returns false if it already drained.
    pub fn drain(&self) -> bool {
        let started = self
            .draining_since_ms
            .compare_exchange(0, now_ms(), Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if started {
            self.drain_done.store(false, Ordering::Release);
        }
        started
    }

    /// Takes new sessions again. Returns false if it was not draining.
    pub fn undrain(&self) -> bool {
        self.drain_done.store(false, Ordering::Release);
        self.draining_since_ms.swap(0, Ordering::AcqRel) != 0
    }

    /// Claims the migration of its sessions once its drain deadline has
    /// passed (true once per drain).
    pub(crate) fn claim_drain_deadline(&self, timeout: Duration) -> bool {
        self.draining_for().is_some_and(|d| d >= timeout)
            && !self.drain_done.swap(true, Ordering::AcqRel)
    }

    /// Drains it, and removes it once its sessions have moved (at the
    /// drain deadline).
    pub(crate) fn retire(&self) {
        self.retiring.store(true, Ordering::Release);
        self.drain();
    }

    /// Whether it is on its way out of the configuration.
    pub fn is_retiring(&self) -> bool {
        self.retiring.load(Ordering::Acquire)
    }

    /// Takes it out for good: no more traffic, its calls are cut.
    pub(crate) fn remove(&self) {
        self.removed.store(true, Ordering::Release);
        self.lose();
    }

    /// Whether it was removed from the configuration.
    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }

    /// How many times the instance was lost so far (a call notes it when
    /// it starts, and ends when it moves).
    pub(crate) fn losses(&self) -> u64 {
        self.losses.load(Ordering::Acquire)
    }

    /// Cuts every call in flight: they end with an error now.
    fn lose(&self) {
        self.losses.fetch_add(1, Ordering::AcqRel);
        let wakers: Vec<Waker> = self
            .waiters()
            .slots
            .iter_mut()
            .filter_map(Option::take)
            .collect();
        for w in wakers {
            w.wake();
        }
    }

    fn waiters(&self) -> std::sync::MutexGuard<'_, Waiters> {
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn call_started(&self) {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn call_ended(&self) {
        self.outstanding.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn failed_over(&self) {
        self.failovers.fetch_add(1, Ordering::Relaxed);
    }

    /// A real call succeeded.
    pub(crate) fn passive_success(&self, cfg: &OutlierConfig) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
        // A streak of ejections ends once the instance has served well
        // for a base ejection's length after its last one.
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        if until != 0 && now_ms() > until + cfg.base_ejection.as_millis() as u64 {
            self.ejection_streak.store(0, Ordering::Relaxed);
        }
    }

    /// A real call failed; ejects the instance at the threshold. Returns
    /// the ejection's length when this failure ejected it.
    pub(crate) fn passive_failure(&self, cfg: &OutlierConfig) -> Option<Duration> {
        if cfg.consecutive_failures == 0 {
            return None;
        }
        let until = self.ejected_until_ms.load(Ordering::Acquire);
        if until != 0 && until > now_ms() {
            return None;
        }
        let n = self.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
        if n < cfg.consecutive_failures {
            return None;
        }
        self.consecutive_failures.store(0, Ordering::Release);
        let streak = self.ejection_streak.fetch_add(1, Ordering::AcqRel).min(16);
        let length = cfg
            .base_ejection
            .saturating_mul(1 << streak)
            .min(cfg.max_ejection);
        self.ejected_until_ms
            .store(now_ms() + length.as_millis() as u64, Ordering::Release);
        self.ejections.fetch_add(1, Ordering::Relaxed);
        self.lose();
        Some(length)
    }

    /// An active probe passed. Returns true when this made it healthy.
    pub(crate) fn probe_passed(&self, healthy_threshold: u32) -> bool {
        self.probe_failures.store(0, Ordering::Relaxed);
        let n = self.probe_successes.fetch_add(1, Ordering::AcqRel) + 1;
        if n >= healthy_threshold && !self.healthy.swap(true, Ordering::AcqRel) {
            // Ejection is for instances that fail calls; a recovered one
            // starts afresh.
            self.ejected_until_ms.store(0, Ordering::Release);
            return true;
        }
        false
    }

    /// An active probe failed. Returns true when this made it unhealthy.
    pub(crate) fn probe_failed(&self, unhealthy_threshold: u32) -> bool {
        self.probe_successes.store(0, Ordering::Relaxed);
        let n = self.probe_failures.fetch_add(1, Ordering::AcqRel) + 1;
        if n >= unhealthy_threshold && self.healthy.swap(false, Ordering::AcqRel) {
            self.lose();
            return true;
        }
        false
    }
}

/// The wakers of the calls in flight on an instance, each in a slot of its
/// call's [`LossWatch`] (free slots are reused).
#[derive(Debug, Default)]
struct Waiters {
    slots: Vec<Option<Waker>>,
    free: Vec<usize>,
}

/// Watches, for one call, whether its instance is lost after the call
/// started. Registers the call's waker once (again only when the waker
/// changes) and leaves on drop: two short locks per call, no allocation.
#[derive(Debug)]
pub(crate) struct LossWatch {
    state: Arc<InstanceState>,
    seen: u64,
    slot: Option<usize>,
    waker: Option<Waker>,
}

impl LossWatch {
    /// Starts watching `state`'s instance.
    pub(crate) fn new(state: Arc<InstanceState>) -> Self {
        LossWatch {
            seen: state.losses(),
            state,
            slot: None,
            waker: None,
        }
    }

    /// Ready once the instance was lost after the call started; else
    /// Pending, with `cx`'s waker woken at the loss.
    pub(crate) fn poll_lost(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.state.losses() != self.seen {
            return Poll::Ready(());
        }
        if self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            return Poll::Pending;
        }
        let waker = cx.waker().clone();
        {
            let mut w = self.state.waiters();
            let i = match self.slot {
                Some(i) => i,
                None => match w.free.pop() {
                    Some(i) => i,
                    None => {
                        w.slots.push(None);
                        w.slots.len() - 1
                    }
                },
            };
            w.slots[i] = Some(waker.clone());
            self.slot = Some(i);
        }
        self.waker = Some(waker);
        // A loss between the first look and the registration.
        if self.state.losses() != self.seen {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl Drop for LossWatch {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            let mut w = self.state.waiters();
            w.slots[i] = None;
            w.free.push(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_failures_eject_for_a_doubling_time_and_cut_calls() {
        let cfg = OutlierConfig {
            consecutive_failures: 2,
            base_ejection: Duration::from_secs(5),
            max_ejection: Duration::from_secs(12),
        };
        let s = InstanceState::new("a");
        let seen = s.losses();
        assert_eq!(s.passive_failure(&cfg), None);
        assert!(s.is_eligible());
        assert_eq!(s.passive_failure(&cfg), Some(Duration::from_secs(5)));
        assert_eq!(s.losses(), seen + 1, "calls in flight are cut");
        assert_eq!(s.condition(), Condition::Ejected);
        assert!(s.is_lost() && !s.is_eligible());
        // Still ejected: more failures neither count nor extend it.
        assert_eq!(s.passive_failure(&cfg), None);
        s.ejected_until_ms.store(1, Ordering::Release);
        assert_eq!(s.passive_failure(&cfg), None);
        assert_eq!(s.passive_failure(&cfg), Some(Duration::from_secs(10)));
        s.ejected_until_ms.store(1, Ordering::Release);
        s.passive_failure(&cfg);
        assert_eq!(s.passive_failure(&cfg), Some(Duration::from_secs(12)));
        assert_eq!(s.ejections(), 3);
    }

    #[test]
    fn probes_flip_health_at_their_thresholds_and_drain_is_claimed_once() {
        let s = InstanceState::new("a");
        assert!(!s.probe_failed(2));
        assert!(s.probe_failed(2));
        assert_eq!(s.condition(), Condition::Unhealthy);
        assert!(!s.probe_passed(2));
        assert!(s.probe_passed(2));
        assert!(s.is_eligible());
        assert!(s.drain());
        assert!(!s.drain());
        assert_eq!(s.condition(), Condition::Draining);
        assert!(!s.is_lost() && !s.is_eligible());
        assert!(s.claim_drain_deadline(Duration::ZERO));
        assert!(!s.claim_drain_deadline(Duration::ZERO));
        assert!(s.undrain());
        assert!(s.is_eligible());
        s.remove();
        assert_eq!(s.condition(), Condition::Removed);
    }
}
