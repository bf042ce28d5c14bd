//! Graceful shutdown: a stop signal every connection watches, and a count
//! of the connections still open on a thread.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use super::busy_poll;

/// The stop signal the threads share. Connections register their task's
/// waker once, and then only load a flag when polled (a `Notify` or a
/// `watch` future in a `select!` would do real work on every poll of every
/// connection).
#[derive(Default)]
pub(super) struct Stop {
    stopped: AtomicBool,
    waiters: Mutex<Waiters>,
}

#[derive(Default)]
struct Waiters {
    next: u64,
    wakers: HashMap<u64, Waker>,
}

impl Stop {
    pub(super) fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        let wakers: Vec<Waker> = self.lock().wakers.drain().map(|(_, w)| w).collect();
        for w in wakers {
            w.wake();
        }
    }

    fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    fn register(&self, w: &Waker) -> u64 {
        let mut g = self.lock();
        g.next += 1;
        let key = g.next;
        g.wakers.insert(key, w.clone());
        key
    }

    fn unregister(&self, key: u64) {
        self.lock().wakers.remove(&key);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiters> {
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Completes once stopped.
    pub(super) fn wait(self: &Arc<Self>) -> StopWait {
        StopWait(Registration::new(self.clone()))
    }
}

/// A task's interest in the stop: its waker registered on first poll (a
/// task keeps its waker), removed on drop; after that a poll only reads
/// the flag.
struct Registration {
    stop: Arc<Stop>,
    key: Option<u64>,
}

impl Registration {
    fn new(stop: Arc<Stop>) -> Self {
        Registration { stop, key: None }
    }

    fn stopped(&mut self, cx: &Context<'_>) -> bool {
        if self.key.is_none() {
            // Registered before the flag is read: a stop after this read
            // finds the waker.
            self.key = Some(self.stop.register(cx.waker()));
        }
        self.stop.is_stopped()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(k) = self.key {
            self.stop.unregister(k);
        }
    }
}

/// Completes once stopped.
pub(super) struct StopWait(Registration);

impl Future for StopWait {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.stopped(cx) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

pin_project_lite::pin_project! {
    /// A connection that starts its graceful shutdown when the stop comes.
    pub(super) struct Watched<C, G> {
        #[pin]
        conn: C,
        stop: Registration,
        shutdown: Option<G>,
    }
}

impl<C, G> Watched<C, G>
where
    C: Future,
    G: FnOnce(Pin<&mut C>),
{
    pub(super) fn new(conn: C, stop: Arc<Stop>, shutdown: G) -> Self {
        Watched {
            conn,
            stop: Registration::new(stop),
            shutdown: Some(shutdown),
        }
    }
}

impl<C, G> Future for Watched<C, G>
where
    C: Future,
    G: FnOnce(Pin<&mut C>),
{
    type Output = C::Output;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        busy_poll::note_activity();
        let mut this = self.project();
        if this.shutdown.is_some() && this.stop.stopped(cx) {
            if let Some(g) = this.shutdown.take() {
                g(this.conn.as_mut());
            }
        }
        this.conn.poll(cx)
    }
}

/// Connections alive on one thread, waited for at shutdown.
#[derive(Default)]
pub(super) struct Live {
    count: AtomicUsize,
    done: tokio::sync::Notify,
}

pub(super) struct LiveGuard(Arc<Live>);

impl Live {
    pub(super) fn enter(self: &Arc<Self>) -> LiveGuard {
        self.count.fetch_add(1, Ordering::SeqCst);
        LiveGuard(self.clone())
    }

    /// Connections open now.
    pub(super) fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    pub(super) async fn idle(&self) {
        loop {
            let notified = self.done.notified();
            if self.count.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.done.notify_waiters();
        }
    }
}
