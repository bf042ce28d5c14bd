//! [`Answer`]: what every extension trait of the gateway returns.
//!
//! `SessionStore`, `Limiter`, `Authenticator` and `CredentialProvider` all
//! answer the same way: with a value known at once (an in-memory table, a
//! token verified a moment ago, a static header) or with a future (a round
//! trip to Redis, a JWKS fetch, a token exchange). One shape for all of
//! them, with no second "fast path" method to implement: a layer that gets
//! [`Answer::Ready`] acts on it in the same poll, without boxing or
//! suspending anything, and awaits [`Answer::Pending`] otherwise.
//!
//! ```
//! use mcp_gateway_core::Answer;
//!
//! fn lookup(cached: Option<u32>) -> Answer<'static, u32> {
//!     match cached {
//!         Some(v) => Answer::ready(v),
//!         None => Answer::pending(async { 42 }),
//!     }
//! }
//! # futures_lite_block_on(async {
//! assert_eq!(lookup(Some(1)).now().ok(), Some(1));
//! assert_eq!(lookup(None).await, 42);
//! # });
//! # fn futures_lite_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     let waker = std::task::Waker::noop();
//! #     let mut cx = std::task::Context::from_waker(&waker);
//! #     let mut f = std::pin::pin!(f);
//! #     loop {
//! #         if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; }
//! #     }
//! # }
//! ```
//!
//! A pending answer must be lazy, as Rust futures are: the gateway may
//! drop one unpolled and ask again from a task of its own (when it must
//! outlive the borrowed arguments).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// A value known now, or a future of one.
pub enum Answer<'a, T> {
    /// The answer is already known.
    Ready(Option<T>),
    /// The answer needs waiting (I/O).
    Pending(Pin<Box<dyn Future<Output = T> + Send + 'a>>),
}

impl<'a, T> Answer<'a, T> {
    /// An immediate answer.
    pub fn ready(value: T) -> Self {
        Answer::Ready(Some(value))
    }

    /// An answer to wait for.
    pub fn pending(fut: impl Future<Output = T> + Send + 'a) -> Self {
        Answer::Pending(Box::pin(fut))
    }

    /// The value, if it is known now; the answer back otherwise.
    pub fn now(self) -> Result<T, Self> {
        match self {
            Answer::Ready(Some(v)) => Ok(v),
            other => Err(other),
        }
    }

    /// Whether the value is known now.
    pub fn is_ready(&self) -> bool {
        matches!(self, Answer::Ready(Some(_)))
    }
}

impl<T> std::fmt::Debug for Answer<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Answer::Ready(_) => "Answer::Ready",
            Answer::Pending(_) => "Answer::Pending",
        })
    }
}

// The value is never pinned: it is moved out whole on completion.
impl<T> Unpin for Answer<'_, T> {}

impl<T> Future for Answer<'_, T> {
    type Output = T;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        match self.get_mut() {
            Answer::Ready(v) => Poll::Ready(v.take().expect("Answer polled after completion")),
            Answer::Pending(f) => f.as_mut().poll(cx),
        }
    }
}
