//! Client-side timeouts of a connection served by hyper: how long a request
//! head may take (`client_header_secs`) and how long a connection may sit
//! with no request (`client_idle_secs`).
//!
//! hyper's own header timer starts when a connection falls idle, so it
//! would also close an idle keep-alive connection after the header
//! timeout. Here the two are apart: a watchdog per connection sleeps until
//! the nearest deadline of the connection's state.
//!
//! - A request in progress (from the call until its response body ends)
//!   has no client deadline: the upstream timeouts bound it.
//! - No request in progress: the connection closes `idle` after the last
//!   one ended (or after it opened) ...
//! - ... unless the bytes of a new HTTP/1 request head have begun to
//!   arrive (or the connection just opened): then the head must be
//!   complete `header` after its first byte (after the connection opened).
//!
//! The bookkeeping is a few relaxed atomics per request and one clock
//! reading per read that can start a head.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Milliseconds since the process's first use of this clock, plus one (0
/// means "not set").
fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64 + 1
}

/// The limits the watchdog enforces.
#[derive(Debug, Clone, Copy)]
pub(super) struct ClientTimeouts {
    pub(super) header: Option<Duration>,
    pub(super) idle: Option<Duration>,
}

impl ClientTimeouts {
    pub(super) fn any(&self) -> bool {
        self.header.is_some() || self.idle.is_some()
    }
}

/// One connection's state, shared by its IO, its service and its watchdog.
#[derive(Debug)]
pub(super) struct Activity {
    /// Requests in progress.
    busy: AtomicU32,
    /// When the last request ended, or the connection opened.
    idle_since: AtomicU64,
    /// When the first byte of the next request head came (HTTP/1), or the
    /// connection opened; 0: none since the last request.
    head_started: AtomicU64,
}

impl Activity {
    pub(super) fn new() -> Arc<Self> {
        let now = now_ms();
        Arc::new(Activity {
            busy: AtomicU32::new(0),
            idle_since: AtomicU64::new(now),
            head_started: AtomicU64::new(now),
        })
    }

    /// A request starts: no client deadline until it ends.
    pub(super) fn begin(self: &Arc<Self>) -> RequestGuard {
        self.busy.fetch_add(1, Ordering::Relaxed);
        self.head_started.store(0, Ordering::Relaxed);
        RequestGuard(self.clone())
    }

    fn read_some(&self) {
        if self.busy.load(Ordering::Relaxed) == 0 && self.head_started.load(Ordering::Relaxed) == 0
        {
            self.head_started.store(now_ms(), Ordering::Relaxed);
        }
    }

    /// When the connection must close, in `now_ms` terms; `None`: a
    /// request is in progress.
    fn deadline(&self, t: ClientTimeouts, http1: bool) -> Option<u64> {
        if self.busy.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let head = self.head_started.load(Ordering::Relaxed);
        if http1 && head != 0 {
            if let Some(h) = t.header {
                return Some(head + h.as_millis() as u64);
            }
        }
        t.idle
            .map(|i| self.idle_since.load(Ordering::Relaxed) + i.as_millis() as u64)
            .or(Some(u64::MAX))
    }
}

/// Held by a request from its call until its response body ends.
pub(super) struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.idle_since.store(now_ms(), Ordering::Relaxed);
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Completes when the connection has outlived its client deadline.
pub(super) async fn watchdog(act: Arc<Activity>, t: ClientTimeouts, http1: bool) {
    // While a request runs, look again after the longer of the limits.
    let recheck = t.header.max(t.idle).unwrap_or(Duration::from_secs(60));
    loop {
        match act.deadline(t, http1) {
            None => tokio::time::sleep(recheck).await,
            Some(u64::MAX) => tokio::time::sleep(recheck).await,
            Some(at) => {
                let now = now_ms();
                if now >= at {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(at - now)).await;
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// An IO that tells its [`Activity`] when bytes arrive.
    pub(super) struct Tracked<I> {
        #[pin]
        io: I,
        act: Arc<Activity>,
    }
}

impl<I> Tracked<I> {
    pub(super) fn new(io: I, act: Arc<Activity>) -> Self {
        Tracked { io, act }
    }
}

impl<I: AsyncRead> AsyncRead for Tracked<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let r = this.io.poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.act.read_some();
        }
        r
    }
}

impl<I: AsyncWrite> AsyncWrite for Tracked<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

pin_project_lite::pin_project! {
    /// A response body that ends its request's [`RequestGuard`] (if any)
    /// when it ends or is dropped.
    pub(super) struct GuardedBody<B> {
        #[pin]
        inner: B,
        guard: Option<RequestGuard>,
    }
}

impl<B> GuardedBody<B> {
    pub(super) fn new(inner: B, guard: Option<RequestGuard>) -> Self {
        GuardedBody { inner, guard }
    }
}

impl<B: http_body::Body> http_body::Body for GuardedBody<B> {
    type Data = B::Data;
    type Error = B::Error;
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let r = this.inner.poll_frame(cx);
        if matches!(r, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            this.guard.take();
        }
        r
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Runs `conn` until it ends or the watchdog fires (then it is dropped,
/// which closes the socket).
pub(super) async fn bounded<C: Future>(
    conn: C,
    act: Option<(Arc<Activity>, ClientTimeouts)>,
    http1: bool,
) {
    match act {
        None => {
            conn.await;
        }
        Some((act, t)) => {
            tokio::select! {
                _ = conn => {}
                () = watchdog(act, t, http1) => {
                    tracing::debug!("client connection timed out (header or idle)");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: ClientTimeouts = ClientTimeouts {
        header: Some(Duration::from_secs(30)),
        idle: Some(Duration::from_secs(120)),
    };

    #[test]
    fn deadlines_follow_the_connection_state() {
        let act = Activity::new();
        let opened = act.head_started.load(Ordering::Relaxed);
        // Fresh: the head must come within the header timeout.
        assert_eq!(act.deadline(T, true), Some(opened + 30_000));
        // HTTP/2 has no heads to time: idle only.
        assert_eq!(act.deadline(T, false), Some(opened + 120_000));
        let g = act.begin();
        assert_eq!(act.deadline(T, true), None, "a request in progress");
        drop(g);
        let ended = act.idle_since.load(Ordering::Relaxed);
        assert_eq!(
            act.deadline(T, true),
            Some(ended + 120_000),
            "idle keep-alive"
        );
        act.read_some();
        let head = act.head_started.load(Ordering::Relaxed);
        assert_eq!(
            act.deadline(T, true),
            Some(head + 30_000),
            "a head arriving"
        );
    }
}
