//! HTTP/1.1 serving of a tower service on one TCP connection: what
//! what the `mcp-gateway` binary runs for every HTTP/1 client when
//! `--http1-server builtin` is chosen.
//!
//! Why a server connection of our own: hyper's HTTP/1 dispatcher (a
//! request body channel, its own read and write buffers, a state machine
//! around the service) is a large share of a small MCP call; a connection
//! that reads the head, calls the service and writes the answer does less
//! (the figures are in `docs/benchmarks.md`). It is opt-in: hyper is the
//! default server, and serves HTTP/2 and TLS always.
//!
//! What it does, by RFC 9112:
//! - request heads parsed with httparse (as hyper does), bounded to 64 KiB
//!   and 100 fields (431 beyond), anything malformed answered with 400 and
//!   the connection closed;
//! - bodies framed by `Content-Length` (values must agree) or chunked
//!   `Transfer-Encoding` (it must be the final coding; with both fields,
//!   or on HTTP/1.0, the request is refused: a request smuggling vector);
//!   a body already in the read buffer is handed over whole, a larger one
//!   streams to the service one frame at a time, read only as the service
//!   asks for it; `Expect: 100-continue` is answered when the body is not
//!   there yet;
//! - responses with `Content-Length` when the body's size is known, else
//!   chunked (HTTP/1.1) or ended by the close (HTTP/1.0); none for `HEAD`,
//!   `1xx`, `204` and `304`; a `Date` when the service set none; each body
//!   frame written as it comes (an event stream is never held back), the
//!   first one with the head in one `writev`;
//! - keep-alive for HTTP/1.1 unless either side said `Connection: close`,
//!   pipelined requests answered in order, a connection closed after a
//!   response whose request body was not read to its end;
//! - the client watched while the service works and while a response
//!   streams: when it closes the connection the service's future and the
//!   response body are dropped, which is how a streamed call is cancelled;
//! - an optional header read timeout, and a graceful stop that lets the
//!   request in progress finish.
//!
//! A minimal accept loop around any tower service (the `mcp-gateway` binary
//! adds threads per core, busy polling, HTTP/2 and graceful shutdown):
//!
//! ```no_run
//! use std::convert::Infallible;
//! use std::sync::atomic::AtomicBool;
//! use std::sync::Arc;
//! use mcp_gateway_http1::server::{serve_http1, Http1Config};
//! use mcp_gateway_core::Body;
//!
//! # async fn run() -> std::io::Result<()> {
//! let svc = tower::service_fn(|_req: http::Request<Body>| async {
//!     Ok::<_, Infallible>(http::Response::new(Body::from("hello")))
//! });
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! loop {
//!     let (socket, _peer) = listener.accept().await?;
//!     let stopping = Arc::new(AtomicBool::new(false));
//!     tokio::spawn(serve_http1(socket, svc, Http1Config::default(), stopping));
//! }
//! # }
//! ```

use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, EXPECT, TRANSFER_ENCODING};
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower_service::Service;

use mcp_gateway_core::body::{Body, BoxError};

/// A mutex's guard, poisoned or not: the state behind it (a streamed
/// request body's hand-over) stays whole if a holder panics.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
use crate::framing::{
    add_content_length, ends_chunked, has_token, ChunkDecoder, Decoded, Spans, MAX_HEAD,
};

/// At most this many request header fields.
const MAX_FIELDS: usize = 100;
/// Read size: a typical request, head and body, in one read.
const READ_SIZE: usize = 8 * 1024;
/// While the service works, bytes of the next (pipelined) request are read
/// ahead up to this much; beyond it the client waits.
const MAX_READ_AHEAD: usize = MAX_HEAD + READ_SIZE;

/// Settings of [`serve_http1`].
#[derive(Debug, Clone, Default)]
pub struct Http1Config {
    /// Closes a connection whose request head has not fully arrived within
    /// this long, counted from when the connection opened or, on a
    /// kept-alive connection, from the first byte of the next request.
    /// `None`: no limit.
    pub header_read_timeout: Option<Duration>,
    /// Closes a kept-alive connection that sends no next request for this
    /// long after the previous response. `None`: no limit (then the header
    /// timeout counts from the previous response, as before a first byte).
    pub idle_timeout: Option<Duration>,
}

/// Serves HTTP/1.1 on `io` with `service` until the client closes the
/// connection, a request asks to close it, or `stopping` is set (checked
/// between requests; the request in progress finishes). Wake the task
/// after setting `stopping` so that an idle connection notices.
pub async fn serve_http1<S, B>(
    io: TcpStream,
    mut service: S,
    cfg: Http1Config,
    stopping: Arc<AtomicBool>,
) where
    S: Service<Request<Body>, Response = Response<B>, Error = Infallible>,
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let mut conn = Conn {
        io,
        rbuf: BytesMut::with_capacity(READ_SIZE),
        wbuf: Vec::with_capacity(512),
    };
    let mut first = true;
    loop {
        // Between requests: the idle limit, until the next one begins.
        if !first && conn.rbuf.is_empty() {
            if let Some(idle) = cfg.idle_timeout {
                let next = poll_fn(|cx| {
                    if stopping.load(Ordering::Acquire) {
                        return Poll::Ready(false);
                    }
                    conn.io.poll_read_ready(cx).map(|r| r.is_ok())
                });
                match tokio::time::timeout(idle, next).await {
                    Ok(true) => {}
                    // Stopping, a broken socket, or idle too long.
                    _ => return,
                }
            }
        }
        first = false;
        let head = match cfg.header_read_timeout {
            None => conn.read_head(&stopping).await,
            Some(t) => match tokio::time::timeout(t, conn.read_head(&stopping)).await {
                Ok(h) => h,
                Err(_) => return,
            },
        };
        let head = match head {
            Ok(Some(h)) => h,
            Ok(None) => return,
            Err(e) => {
                conn.refuse(e).await;
                return;
            }
        };
        let RequestHead {
            parts,
            framing,
            mut keep_alive,
            expect_continue,
        } = head;
        let head_only = parts.method == Method::HEAD;
        let version = parts.version;
        let (body, mut feed) = conn.request_body(framing);
        // The client waits for this before it sends a body not yet here.
        let continue_first = expect_continue && feed.is_some() && parts.version == Version::HTTP_11;
        if continue_first
            && conn
                .io
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .is_err()
        {
            return;
        }
        // Readiness first, as the tower contract asks (a router is always
        // ready: this costs it nothing).
        let Ok(()) = poll_fn(|cx| service.poll_ready(cx)).await;
        let call = service.call(Request::from_parts(parts, body));
        let Some(res) = conn.run_while_watching(call, &mut feed).await else {
            return;
        };
        let Ok(res) = res;
        let (parts, body) = res.into_parts();
        keep_alive &= !has_token(&parts.headers, "close") && !stopping.load(Ordering::Acquire);
        let done = conn
            .write_response(parts, body, version, head_only, keep_alive, &mut feed)
            .await;
        // A request body not read to its end leaves the connection in the
        // middle of a message: it cannot carry another.
        let body_read = feed.as_ref().is_none_or(Feed::finished);
        if !(done && keep_alive && body_read) || stopping.load(Ordering::Acquire) {
            return;
        }
    }
}

mod request;
use self::request::*;
mod conn;
use self::conn::*;
mod response;
use self::response::*;
mod body;
use self::body::*;

#[cfg(test)]
mod tests;
