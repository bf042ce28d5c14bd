//! Busy polling: a serving thread that has just had work keeps checking its
//! sockets for a short while before it goes to sleep.
//!
//! Why: a proxy sits between two peers, so every call wakes it twice
//! (request in, response back). Waking a sleeping thread costs the waker a
//! scheduler pass and, when the other core has gone idle, an inter-processor
//! interrupt; in a virtual machine that interrupt is a trip through the
//! hypervisor. On small virtual machines those two wake-ups are most of
//! the gateway's added latency at one connection, far more than its own
//! code (`docs/benchmarks.md`). A thread that is still polling when the next packet lands
//! needs no wake-up at all.
//!
//! How: each serving thread (one single-threaded runtime per core) runs one
//! poller task. After any connection on the thread was polled, the poller
//! keeps yielding to the runtime, which, with nothing else to run, checks
//! its sockets without blocking (`epoll_wait` with a zero timeout) and runs
//! whatever became ready. Once the thread has had no activity for the
//! window, the poller waits (costing nothing) until a connection is polled
//! again, and the runtime sleeps as usual. Each round also offers the core
//! to any other runnable thread (`sched_yield`), so polling never keeps a
//! co-located process (the backend, a sidecar) off the core.
//!
//! A thread with more than two calls in flight does not poll on once a
//! round finds nothing to do: under that much load the next event is near,
//! and polling would only compete for the core with the peers the calls
//! wait on (see `MAX_IN_FLIGHT_TO_POLL`).
//!
//! The cost is CPU time: up to one window of polling after each burst of
//! work. That is why it is off by default, a knob for dedicated hosts.

use std::cell::Cell;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

thread_local! {
    /// Polls of connections on this thread so far.
    static ACTIVITY: Cell<u64> = const { Cell::new(0) };
    /// This thread's poller, while it waits for activity.
    static IDLE_POLLER: Cell<Option<Waker>> = const { Cell::new(None) };
    /// Calls started on this thread whose response head is not yet out.
    static IN_FLIGHT: Cell<usize> = const { Cell::new(0) };
}

fn in_flight() -> usize {
    IN_FLIGHT.with(Cell::get)
}

pin_project_lite::pin_project! {
    /// A call's future, counted in this thread's calls in flight until it
    /// completes or is dropped. (The count wraps rather than panics: on a
    /// multi-threaded runtime a call may end on another thread than it
    /// started on, but there no poller reads the count.)
    pub(crate) struct Counted<F> {
        #[pin]
        inner: F,
        counted: bool,
    }

    impl<F> PinnedDrop for Counted<F> {
        fn drop(this: Pin<&mut Self>) {
            if this.counted {
                IN_FLIGHT.with(|n| n.set(n.get().wrapping_sub(1)));
            }
        }
    }
}

impl<F> Counted<F> {
    /// Counts `inner` in until it completes.
    pub(crate) fn new(inner: F) -> Self {
        IN_FLIGHT.with(|n| n.set(n.get().wrapping_add(1)));
        Counted {
            inner,
            counted: true,
        }
    }
}

impl<F: Future> Future for Counted<F> {
    type Output = F::Output;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let out = this.inner.poll(cx);
        if out.is_ready() && *this.counted {
            *this.counted = false;
            IN_FLIGHT.with(|n| n.set(n.get().wrapping_sub(1)));
        }
        out
    }
}

/// Records that a connection on this thread was polled; wakes the thread's
/// idle poller. Called from inside the runtime, so the wake only queues the
/// poller (no system call).
#[inline]
pub(crate) fn note_activity() {
    ACTIVITY.with(|a| a.set(a.get().wrapping_add(1)));
    if let Some(w) = IDLE_POLLER.with(Cell::take) {
        w.wake();
    }
}

fn activity() -> u64 {
    ACTIVITY.with(Cell::get)
}

/// The polling window: open while the last activity is less than `len` ago.
#[derive(Debug, Clone, Copy)]
struct Window {
    len: Duration,
    last_active: Instant,
}

impl Window {
    fn new(len: Duration, now: Instant) -> Self {
        Window {
            len,
            last_active: now,
        }
    }

    /// Whether to poll on, given whether there was activity since the last
    /// round.
    fn keep_polling(&mut self, active: bool, now: Instant) -> bool {
        if active {
            self.last_active = now;
            return true;
        }
        now.saturating_duration_since(self.last_active) < self.len
    }
}

/// With more calls than this in flight on a thread, an idle round ends the
/// polling. Why: the next event is then never far off, and waking for it
/// overlaps the other calls' waits, so polling buys no latency; it only
/// takes the core from the backend and the clients the calls wait on (the
/// loopback benchmark showed it as CPU and throughput lost, with no
/// latency gained).
const MAX_IN_FLIGHT_TO_POLL: usize = 2;

/// The poller of one serving thread; runs until dropped (aborted). Must be
/// spawned on a current-thread runtime: activity is counted per thread.
pub(crate) async fn poll_while_busy(window: Duration) {
    let mut seen = activity();
    loop {
        // Idle: wait, without polling, until a connection is polled.
        poll_fn(|cx| {
            if activity() != seen {
                Poll::Ready(())
            } else {
                IDLE_POLLER.with(|p| p.set(Some(cx.waker().clone())));
                Poll::Pending
            }
        })
        .await;
        seen = activity();
        let mut open = Window::new(window, Instant::now());
        let mut active = true;
        loop {
            // A round that found nothing to do was pure polling: another
            // runnable thread on this core goes first. A round that did
            // work leaves the core to the scheduler's own judgement; under
            // load every round does work, and offering the core each time
            // only adds context switches (each one a trip through the
            // hypervisor on a VM) without freeing any time.
            if !active {
                if in_flight() > MAX_IN_FLIGHT_TO_POLL {
                    break;
                }
                std::thread::yield_now();
            }
            // The runtime runs what is ready and, with nothing else queued,
            // checks the sockets without blocking.
            tokio::task::yield_now().await;
            let now = activity();
            active = now != seen;
            if !open.keep_polling(active, Instant::now()) {
                break;
            }
            seen = now;
        }
    }
}

/// Aborts the poller when the serving loop it belongs to returns.
pub(crate) struct PollerGuard(tokio::task::JoinHandle<()>);

impl PollerGuard {
    /// Starts the poller on the current runtime when `window` is non-zero
    /// and the runtime is single-threaded (on a multi-threaded runtime a
    /// connection moves between threads, so per-thread activity means
    /// nothing there).
    pub(crate) fn start(window: Duration) -> Option<Self> {
        let single = tokio::runtime::Handle::current().runtime_flavor()
            == tokio::runtime::RuntimeFlavor::CurrentThread;
        (single && !window.is_zero()).then(|| PollerGuard(tokio::spawn(poll_while_busy(window))))
    }
}

impl Drop for PollerGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_stays_open_while_active_and_closes_after_its_length() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut w = Window::new(ms(10), t0);
        assert!(w.keep_polling(false, t0 + ms(9)));
        assert!(!w.keep_polling(false, t0 + ms(10)));
        // Activity moves the window on.
        assert!(w.keep_polling(true, t0 + ms(15)));
        assert!(w.keep_polling(false, t0 + ms(24)));
        assert!(!w.keep_polling(false, t0 + ms(26)));
        // A clock that does not move forward never closes it early.
        let mut w = Window::new(ms(10), t0 + ms(5));
        assert!(w.keep_polling(false, t0));
    }

    fn parks() -> u64 {
        tokio::runtime::Handle::current()
            .metrics()
            .worker_park_count(0)
    }

    #[tokio::test]
    async fn idle_poller_waits_for_activity_and_then_keeps_the_thread_awake() {
        let _guard = PollerGuard::start(Duration::from_secs(3600)).expect("current-thread runtime");
        // With no activity the poller waits: the runtime parks as usual.
        let before = parks();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(parks() > before, "an idle poller must let the thread sleep");
        // Activity starts polling: from then on the runtime only checks its
        // sockets without blocking, so sleeps no longer park the thread.
        note_activity();
        tokio::task::yield_now().await;
        let before = parks();
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(parks(), before, "a polling thread must not park");
    }

    #[tokio::test]
    async fn poller_goes_idle_once_the_window_has_passed() {
        let _guard = PollerGuard::start(Duration::from_millis(2)).expect("current-thread runtime");
        note_activity();
        tokio::task::yield_now().await;
        let before = parks();
        // Wait for the condition (the thread sleeps again), not for a time.
        for _ in 0..2000 {
            if parks() > before {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("the poller kept the thread awake after its window");
    }

    #[tokio::test]
    async fn a_thread_with_many_calls_in_flight_sleeps_instead_of_polling() {
        let _guard = PollerGuard::start(Duration::from_secs(3600)).expect("current-thread runtime");
        // Let the poller start and wait for activity.
        tokio::task::yield_now().await;
        let pending = || Box::pin(Counted::new(std::future::pending::<()>()));
        let calls: Vec<_> = (0..=MAX_IN_FLIGHT_TO_POLL).map(|_| pending()).collect();
        assert_eq!(in_flight(), MAX_IN_FLIGHT_TO_POLL + 1);
        note_activity();
        tokio::task::yield_now().await;
        let before = parks();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(parks() > before, "polling on with many calls in flight");
        // Dropped calls leave the count; with few in flight, polling holds.
        drop(calls);
        assert_eq!(in_flight(), 0);
        let one = pending();
        note_activity();
        tokio::task::yield_now().await;
        let before = parks();
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(
            parks(),
            before,
            "a thread with one call in flight must poll"
        );
        drop(one);
    }

    #[tokio::test]
    async fn a_completed_call_leaves_the_count_once() {
        let mut call = Box::pin(Counted::new(std::future::ready(7)));
        assert_eq!(in_flight(), 1);
        assert_eq!(call.as_mut().await, 7);
        assert_eq!(in_flight(), 0);
        drop(call);
        assert_eq!(in_flight(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_poller_on_a_multi_threaded_runtime_or_with_a_zero_window() {
        assert!(PollerGuard::start(Duration::from_micros(50)).is_none());
    }

    #[tokio::test]
    async fn zero_window_means_off() {
        assert!(PollerGuard::start(Duration::ZERO).is_none());
    }
}
