//! The SSE relay.
//!
//! Responses with `Content-Type: text/event-stream` (to `POST` and `GET`)
//! are relayed frame by frame, unchanged and never buffered to the end,
//! while an [`SseScanner`] sees every event and hands it to an [`OnSseEvent`]
//! hook (for later layers: ACL filtering, audit, token counting).
//!
//! - **Keep-alive**: when the upstream is silent for the configured interval
//!   and the stream sits between events, a `: keep-alive` comment is sent so
//!   idle proxies and clients do not cut the stream.
//! - **Idle timeout** (optional): a stream silent for longer is ended; the
//!   client may resume with `Last-Event-ID` (forwarded to the backend).
//! - **Client disconnect**: dropping the response body drops the upstream
//!   body, which closes the upstream stream; on 2026-07-28 that *is* the
//!   cancellation the spec defines.
//! - **Backpressure**: the relay pulls from the upstream only when the client
//!   side polls, so a slow client never makes the gateway buffer.
//!
//! JSON responses pass through untouched.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Request, Response};
use http_body::{Frame, SizeHint};
use mcp_gateway_core::jsonrpc::Text;
use mcp_gateway_core::sse::{SseEvent, SseScanner, KEEP_ALIVE};
use mcp_gateway_core::{McpRequest, Method, RequestId};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_layer::Layer;
use tower_service::Service;

use crate::body::{Body, BoxError};

/// What a hook knows about the stream an event belongs to.
#[derive(Debug, Clone, Default)]
pub struct StreamContext {
    /// The method of the request that opened the stream (`None` for `GET`).
    pub method: Option<Method>,
    /// The JSON-RPC id of that request.
    pub id: Option<RequestId>,
    /// `params.name` / `params.uri` of that request (shares the body buffer).
    pub target: Option<Text>,
}

/// A hook that sees every SSE event the relay passes on.
pub trait OnSseEvent: Clone + Send + Sync + 'static {
    /// Whether the hook needs event fields (turns on collect mode in the
    /// scanner; without it the relay copies nothing).
    fn wants_data(&self) -> bool {
        true
    }
    /// Called once per event, in stream order, before the client gets it.
    fn on_event(&self, ctx: &StreamContext, event: &SseEvent<'_>);
    /// Called once when the stream ends; `completed` is false when the
    /// client went away or the upstream broke.
    fn on_end(&self, _ctx: &StreamContext, _events: u64, _completed: bool) {}
}

/// No hook: the relay runs its scanner in boundary mode only.
impl OnSseEvent for () {
    fn wants_data(&self) -> bool {
        false
    }
    fn on_event(&self, _: &StreamContext, _: &SseEvent<'_>) {}
}

impl<F> OnSseEvent for F
where
    F: Fn(&StreamContext, &SseEvent<'_>) + Clone + Send + Sync + 'static,
{
    fn on_event(&self, ctx: &StreamContext, event: &SseEvent<'_>) {
        self(ctx, event)
    }
}

/// Settings of [`SseRelayLayer`].
#[derive(Debug, Clone, Copy)]
pub struct SseRelayConfig {
    /// Send a keep-alive comment after this much upstream silence.
    /// Default: 15 s. `None` disables keep-alives.
    pub keep_alive: Option<Duration>,
    /// End a stream after this much upstream silence. Default: none.
    pub idle_timeout: Option<Duration>,
    /// Largest event a hook is shown whole (collect mode). Larger events
    /// are still relayed; the hook sees them flagged `oversized`.
    /// Default: 16 MiB.
    pub max_event_bytes: usize,
}

impl Default for SseRelayConfig {
    fn default() -> Self {
        SseRelayConfig {
            keep_alive: Some(Duration::from_secs(15)),
            idle_timeout: None,
            max_event_bytes: 16 * 1024 * 1024,
        }
    }
}

/// Wraps SSE responses in a [`RelayBody`]. See the module docs.
#[derive(Debug, Clone)]
pub struct SseRelayLayer<H = ()> {
    cfg: SseRelayConfig,
    hook: H,
}

impl SseRelayLayer<()> {
    /// A relay with these settings and no hook.
    pub fn new(cfg: SseRelayConfig) -> Self {
        SseRelayLayer { cfg, hook: () }
    }
}

impl Default for SseRelayLayer<()> {
    fn default() -> Self {
        Self::new(SseRelayConfig::default())
    }
}

impl<H> SseRelayLayer<H> {
    /// Installs `hook`, called for every relayed event.
    pub fn on_event<H2: OnSseEvent>(self, hook: H2) -> SseRelayLayer<H2> {
        SseRelayLayer {
            cfg: self.cfg,
            hook,
        }
    }
}

impl<S, H: Clone> Layer<S> for SseRelayLayer<H> {
    type Service = SseRelay<S, H>;
    fn layer(&self, inner: S) -> SseRelay<S, H> {
        SseRelay {
            inner,
            cfg: self.cfg,
            hook: self.hook.clone(),
        }
    }
}

/// The service built by [`SseRelayLayer`].
#[derive(Debug, Clone)]
pub struct SseRelay<S, H = ()> {
    inner: S,
    cfg: SseRelayConfig,
    hook: H,
}

impl<S, H> SseRelay<S, H> {
    inner_accessors!();
}

impl<S, H> Service<Request<Body>> for SseRelay<S, H>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
    H: OnSseEvent,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture<S::Future, H>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let ctx = req.extensions().get::<McpRequest>().map(|m| {
            let msg = m.message();
            StreamContext {
                method: m.method().cloned(),
                id: msg.and_then(|m| m.id()).cloned(),
                target: msg.and_then(|m| m.target_text()).cloned(),
            }
        });
        ResponseFuture {
            future: self.inner.call(req),
            state: Some((self.cfg, self.hook.clone(), ctx.unwrap_or_default())),
        }
    }
}

pin_project! {
    /// Future of [`SseRelay`].
    pub struct ResponseFuture<F, H> {
        #[pin]
        future: F,
        state: Option<(SseRelayConfig, H, StreamContext)>,
    }
}

impl<F, H> Future for ResponseFuture<F, H>
where
    F: Future<Output = Result<Response<Body>, Infallible>>,
    H: OnSseEvent,
{
    type Output = Result<Response<Body>, Infallible>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(res) = std::task::ready!(this.future.poll(cx));
        let is_sse = res
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().starts_with("text/event-stream"));
        if !is_sse {
            return Poll::Ready(Ok(res));
        }
        let (cfg, hook, ctx) = this.state.take().expect("polled after completion");
        Poll::Ready(Ok(res.map(|b| Body::new(RelayBody::new(b, cfg, hook, ctx)))))
    }
}

pin_project! {
    /// A relayed SSE body: the upstream's frames, unchanged, plus keep-alive
    /// comments between events; see the module docs.
    pub struct RelayBody<H: OnSseEvent> {
        inner: Body,
        scanner: SseScanner,
        hook: H,
        ctx: Arc<StreamContext>,
        keep_alive: Option<Duration>,
        idle_timeout: Option<Duration>,
        timer: Option<Pin<Box<Sleep>>>,
        // Since when the stream has been quiet. The clock is read only when
        // the upstream goes quiet: a frame clears this, and the next poll
        // that finds nothing stamps it. A relayed event costs no clock read.
        quiet: Option<Quiet>,
        finished: bool,
    }

    impl<H: OnSseEvent> PinnedDrop for RelayBody<H> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if !*this.finished {
                // The client went away (or the body was dropped unread).
                this.hook.on_end(this.ctx, this.scanner.events_seen(), false);
            }
        }
    }
}

/// When a quiet stretch of a relayed stream started, for keep-alive and
/// idle timeout.
#[derive(Debug, Clone, Copy)]
struct Quiet {
    /// The upstream's last frame (or the start of the stream).
    upstream: Instant,
    /// The last bytes passed on to the client, keep-alives included.
    sent: Instant,
}

impl<H: OnSseEvent> RelayBody<H> {
    /// Wraps `inner`.
    pub fn new(inner: Body, cfg: SseRelayConfig, hook: H, ctx: StreamContext) -> Self {
        let scanner = if hook.wants_data() {
            SseScanner::collecting(cfg.max_event_bytes)
        } else {
            SseScanner::boundaries_only()
        };
        RelayBody {
            inner,
            scanner,
            hook,
            ctx: Arc::new(ctx),
            keep_alive: cfg.keep_alive,
            idle_timeout: cfg.idle_timeout,
            timer: None,
            quiet: None,
            finished: false,
        }
    }

    /// Events seen so far.
    pub fn events_seen(&self) -> u64 {
        self.scanner.events_seen()
    }
}

impl<H: OnSseEvent> http_body::Body for RelayBody<H> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if *this.finished {
            return Poll::Ready(None);
        }
        loop {
            match Pin::new(&mut *this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    *this.quiet = None;
                    if let Some(data) = frame.data_ref() {
                        let (hook, ctx) = (&*this.hook, &**this.ctx);
                        this.scanner.feed(data, |ev| hook.on_event(ctx, ev));
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Poll::Ready(Some(Err(e))) => {
                    *this.finished = true;
                    this.hook
                        .on_end(this.ctx, this.scanner.events_seen(), false);
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => {
                    *this.finished = true;
                    this.hook.on_end(this.ctx, this.scanner.events_seen(), true);
                    return Poll::Ready(None);
                }
                Poll::Pending => {}
            }
            // The upstream is silent: decide on keep-alive or idle timeout.
            if this.keep_alive.is_none() && this.idle_timeout.is_none() {
                return Poll::Pending;
            }
            let now = Instant::now();
            // Quiet since the last frame (or the start): both clocks start now.
            let quiet = this.quiet.get_or_insert(Quiet {
                upstream: now,
                sent: now,
            });
            if let Some(idle) = *this.idle_timeout {
                if now.duration_since(quiet.upstream) >= idle {
                    tracing::debug!(?idle, "SSE stream idle; ending it");
                    *this.finished = true;
                    this.hook.on_end(this.ctx, this.scanner.events_seen(), true);
                    return Poll::Ready(None);
                }
            }
            if let Some(every) = *this.keep_alive {
                if now.duration_since(quiet.sent) >= every && this.scanner.at_event_boundary() {
                    quiet.sent = now;
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(KEEP_ALIVE)))));
                }
            }
            let next = [
                this.keep_alive.map(|k| quiet.sent + k),
                this.idle_timeout.map(|i| quiet.upstream + i),
            ]
            .into_iter()
            .flatten()
            .min();
            let Some(deadline) = next else {
                return Poll::Pending;
            };
            // Mid-event at the keep-alive deadline: wait a little and retry,
            // since a comment cannot be inserted inside an event.
            let deadline = deadline.max(now + Duration::from_millis(10));
            match this.timer {
                Some(t) => t.as_mut().reset(deadline),
                None => *this.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            let timer = this.timer.as_mut().expect("set above");
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // The timer fired during registration: loop to act on it.
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished || (self.keep_alive.is_none() && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        if self.keep_alive.is_some() {
            // Keep-alives may add bytes: the exact size is unknown.
            SizeHint::new()
        } else {
            self.inner.size_hint()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::sync::atomic::{AtomicU64, Ordering};
    use tower::ServiceExt;

    fn sse_response(body: Body) -> Response<Body> {
        let mut r = Response::new(body);
        r.headers_mut()
            .insert(CONTENT_TYPE, "text/event-stream".parse().unwrap());
        r
    }

    #[tokio::test]
    async fn relays_bytes_unchanged_and_sees_every_event() {
        let wire = b"id: 0\ndata: \n\nevent: message\ndata: {\"a\":1}\n\ndata: x\r\n\r\n".to_vec();
        let w = wire.clone();
        let seen = Arc::new(AtomicU64::new(0));
        let s2 = seen.clone();
        let svc = SseRelayLayer::new(SseRelayConfig::default())
            .on_event(move |_: &StreamContext, _: &SseEvent<'_>| {
                s2.fetch_add(1, Ordering::Relaxed);
            })
            .layer(tower::service_fn(move |_req: Request<Body>| {
                let chunks: Vec<Result<Frame<Bytes>, BoxError>> = w
                    .chunks(5)
                    .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
                    .collect();
                let body = http_body_util::StreamBody::new(futures_util::stream::iter(chunks));
                async move { Ok::<_, Infallible>(sse_response(Body::new(body))) }
            }));
        let res = svc.oneshot(Request::new(Body::empty())).await.unwrap();
        let out = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&out[..], &wire[..]);
        assert_eq!(seen.load(Ordering::Relaxed), 3);
    }

    type FrameSender = tokio::sync::mpsc::Sender<Result<Frame<Bytes>, BoxError>>;

    /// A relay of a body whose frames the test sends.
    fn relay_of_sent_frames(cfg: SseRelayConfig) -> (FrameSender, RelayBody<()>) {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let body =
            http_body_util::StreamBody::new(futures_util::stream::unfold(rx, |mut rx| async {
                rx.recv().await.map(|f| (f, rx))
            }));
        let relay = RelayBody::new(Body::new(body), cfg, (), StreamContext::default());
        (tx, relay)
    }

    #[tokio::test(start_paused = true)]
    async fn keep_alive_only_between_events() {
        let (tx, mut relay) = relay_of_sent_frames(SseRelayConfig {
            keep_alive: Some(Duration::from_secs(1)),
            ..Default::default()
        });
        // Mid-event: no keep-alive may be inserted, however long the wait.
        tx.send(Ok(Frame::data(Bytes::from_static(b"data: half"))))
            .await
            .unwrap();
        let f = relay.frame().await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), "data: half");
        let waited = tokio::time::timeout(Duration::from_secs(5), relay.frame()).await;
        assert!(waited.is_err(), "a keep-alive was inserted inside an event");
        tx.send(Ok(Frame::data(Bytes::from_static(b"\n\n"))))
            .await
            .unwrap();
        assert_eq!(
            relay.frame().await.unwrap().unwrap().into_data().unwrap(),
            "\n\n"
        );
        // Between events: a keep-alive comes after the interval.
        let f = relay.frame().await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), KEEP_ALIVE);
        drop(tx);
        assert!(relay.frame().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_ends_stream() {
        let body = http_body_util::StreamBody::new(futures_util::stream::pending::<
            Result<Frame<Bytes>, BoxError>,
        >());
        let mut relay = RelayBody::new(
            Body::new(body),
            SseRelayConfig {
                keep_alive: None,
                idle_timeout: Some(Duration::from_secs(3)),
                ..Default::default()
            },
            (),
            StreamContext::default(),
        );
        assert!(relay.frame().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn every_frame_restarts_the_keep_alive_and_idle_clocks() {
        let (tx, mut relay) = relay_of_sent_frames(SseRelayConfig {
            keep_alive: Some(Duration::from_secs(2)),
            idle_timeout: Some(Duration::from_secs(3)),
            ..Default::default()
        });
        let start = Instant::now();
        let event = || Ok(Frame::data(Bytes::from_static(b"data: x\n\n")));
        // Quiet for 1.5 s (under both limits), then an event.
        let tx2 = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            tx2.send(event()).await.unwrap();
        });
        relay.frame().await.unwrap().unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(1500));
        // The keep-alive comes 2 s after that event, not 2 s after the start.
        let f = relay.frame().await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), KEEP_ALIVE);
        assert_eq!(start.elapsed(), Duration::from_millis(3500));
        // A keep-alive is not upstream activity: the stream ends 3 s after
        // the event, not 3 s after the keep-alive.
        assert!(relay.frame().await.is_none());
        assert_eq!(start.elapsed(), Duration::from_millis(4500));
        drop(tx);
    }

    #[tokio::test]
    async fn json_passes_untouched() {
        let svc = SseRelayLayer::default().layer(tower::service_fn(|_req: Request<Body>| async {
            let mut r = Response::new(Body::from("{\"x\":1}"));
            r.headers_mut()
                .insert(CONTENT_TYPE, "application/json".parse().unwrap());
            Ok::<_, Infallible>(r)
        }));
        let res = svc.oneshot(Request::new(Body::empty())).await.unwrap();
        assert_eq!(res.into_body().as_bytes().unwrap(), "{\"x\":1}");
    }
}
