//! The in-process limiter's clock: nanoseconds since a process-wide epoch,
//! read once for all the checks of one call.
//!
//! Why: admitting a call runs up to seven checks (three token buckets, two
//! budget windows, two slot counts), and every bucket and window wants the
//! time; governor's bucket reads it once more for its own state. Reading
//! the clock for each cost eight reads per call where one does (a system
//! call each where the clock has no vDSO). The checks of
//! one call run within a microsecond of each other, so one instant for all
//! of them is what a batched check would use anyway.

use std::cell::Cell;
use std::sync::OnceLock;
use std::time::Instant;

use governor::clock::Clock;
use governor::nanos::Nanos;

thread_local! {
    /// The reading the checks running on this thread share; 0 = none.
    static PINNED: Cell<u64> = const { Cell::new(0) };
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// A fresh reading: nanoseconds since the epoch, +1 (0 means "never").
fn read() -> u64 {
    epoch().elapsed().as_nanos() as u64 + 1
}

/// Nanoseconds since the epoch, +1 (0 means "never"): the pinned reading
/// while [`pinned`] runs on this thread, else a fresh one.
pub(super) fn now() -> u64 {
    match PINNED.with(Cell::get) {
        0 => read(),
        pinned => pinned,
    }
}

/// Runs `f` with this thread's clock pinned at one reading, so that every
/// check `f` makes sees the same instant. `f` must not wait (the pin
/// belongs to the thread, not to a task); a nested call keeps the outer
/// reading.
pub(super) fn pinned<R>(f: impl FnOnce() -> R) -> R {
    /// Puts the outer state back, even if `f` panics.
    struct Restore(u64);
    impl Drop for Restore {
        fn drop(&mut self) {
            PINNED.with(|p| p.set(self.0));
        }
    }
    let outer = PINNED.with(Cell::get);
    let _restore = Restore(outer);
    if outer == 0 {
        PINNED.with(|p| p.set(read()));
    }
    f()
}

/// The same clock, for governor's token buckets.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct LimiterClock;

impl Clock for LimiterClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from(now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pinned_clock_stands_still_and_moves_on_after() {
        let before = now();
        let (a, b, nested) = pinned(|| {
            let a = now();
            // Long enough for a fresh reading to differ.
            let t = Instant::now();
            while t.elapsed().as_micros() < 50 {}
            (a, now(), pinned(now))
        });
        assert!(a >= before);
        assert_eq!((a, nested), (b, b));
        assert!(now() > b, "the clock moves again once unpinned");
        assert_eq!(PINNED.with(Cell::get), 0);
    }
}
