//! Answering a `GET` with one of the gateway's `Last-Event-ID`s from the
//! store.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http::header::{HeaderName, HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt;
use mcp_gateway_core::sse::KEEP_ALIVE;
use mcp_gateway_core::{ErrorKind, GatewayError, RequestId};
use tower_service::Service;

use super::body::{cut_event, record};
use super::{is_sse, EventStore, EventStoreError, ResumeConfig, StreamEnd, StreamKey};
use crate::body::{Body, BoxError};
use crate::error::error_response;

const LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");

/// Serves a resumption of stream `key` after position `after`.
pub(super) async fn resume<S>(
    inner: S,
    mut req: Request<Body>,
    store: Arc<dyn EventStore>,
    cfg: Arc<ResumeConfig>,
    key: StreamKey,
    after: u64,
) -> Result<Response<Body>, Infallible>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Send + 'static,
    S::Future: Send,
{
    if key.is_get() {
        return resume_get(inner, req, store, cfg, key, after).await;
    }
    let header = match store.header(&key).await {
        Ok(h) => h,
        Err(e) => return Ok(refusal(&e)),
    };
    let first = match store.read(&key, after, Duration::ZERO).await {
        Ok(first) => first,
        Err(e) => return Ok(refusal(&e)),
    };
    let call_id = RequestId::from_raw_json(&header);
    tracing::debug!(stream = %key.stream, after, "call stream resumed from the store");
    // The call's events come from the store; the request goes on to the
    // backend only if the backend paused the stream (SSE polling).
    req.headers_mut().remove(LAST_EVENT_ID);
    let tail = Tail {
        store,
        cfg,
        key,
        after,
        pending: Some(first),
        idle: Duration::ZERO,
        call_id,
        done: false,
        paused: None,
    };
    let (parts, _) = req.into_parts();
    let state = Resumed {
        tail,
        again: Some((inner, parts)),
        rest: None,
    };
    let stream = futures_util::stream::unfold(state, |mut r| async move {
        let chunk = r.next().await?;
        Some((Ok::<_, BoxError>(Frame::data(chunk)), r))
    })
    .boxed();
    let body = Body::new(http_body_util::StreamBody::new(stream));
    let mut res = Response::new(body);
    res.headers_mut()
        .insert(CONTENT_TYPE, super::sse_content_type());
    res.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(res)
}

/// A stored `GET` stream: what the client missed, then the backend's
/// stream from the last stored event on, under the same gateway stream.
async fn resume_get<S>(
    mut inner: S,
    mut req: Request<Body>,
    store: Arc<dyn EventStore>,
    cfg: Arc<ResumeConfig>,
    key: StreamKey,
    after: u64,
) -> Result<Response<Body>, Infallible>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
{
    let stored = store
        .read(&key, after.saturating_sub(1), Duration::ZERO)
        .await;
    let Ok(stored) = stored else {
        // Nothing to give back: a fresh stream from the backend.
        req.headers_mut().remove(LAST_EVENT_ID);
        let res = inner.call(req).await?;
        if !is_sse(&res) {
            return Ok(res);
        }
        let key = StreamKey {
            session: key.session.clone(),
            stream: StreamKey::fresh_stream(true),
        };
        return Ok(record(res, Bytes::new(), key, 0, (store, cfg), None));
    };
    let mut prefix = BytesMut::new();
    let mut last = after;
    let mut upstream = None;
    for e in &stored {
        if e.end.is_some() {
            continue;
        }
        if e.seq > after {
            prefix.extend_from_slice(&e.wire);
        }
        last = last.max(e.seq);
        if e.upstream_id.is_some() {
            upstream = e.upstream_id.clone();
        }
    }
    match upstream.and_then(|u| HeaderValue::from_bytes(&u).ok()) {
        Some(v) => {
            req.headers_mut().insert(LAST_EVENT_ID, v);
        }
        None => {
            req.headers_mut().remove(LAST_EVENT_ID);
        }
    }
    let res = inner.call(req).await?;
    if !is_sse(&res) {
        return Ok(res);
    }
    Ok(record(res, prefix.freeze(), key, last, (store, cfg), None))
}

/// The answer to a resumption that cannot be served.
fn refusal(e: &EventStoreError) -> Response<Body> {
    let err = match e {
        EventStoreError::Backend(cause) => {
            // The cause names the network behind the gateway: logged only.
            tracing::warn!(error = %cause, "event store unavailable");
            GatewayError::new(
                ErrorKind::StateUnavailable,
                "cannot resume the stream: the event store cannot be reached",
            )
        }
        _ => GatewayError::new(
            ErrorKind::CannotResume,
            format!("cannot resume the stream: {e}"),
        ),
    };
    let mut res = error_response(&err, None);
    if res.status() == StatusCode::SERVICE_UNAVAILABLE {
        res.headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    res
}

/// A resumed call stream: the stored events, then, if the backend paused
/// the stream, the rest from the backend (recorded like the first part).
struct Resumed<S> {
    tail: Tail,
    /// The service and the request to ask the backend with.
    again: Option<(S, http::request::Parts)>,
    /// The backend's continuation.
    rest: Option<Body>,
}

impl<S> Resumed<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
{
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            if let Some(rest) = &mut self.rest {
                return match rest.frame().await {
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) => Some(data),
                        Err(_) => continue,
                    },
                    _ => None,
                };
            }
            if let Some(chunk) = self.tail.next().await {
                if !chunk.is_empty() {
                    return Some(chunk);
                }
                continue;
            }
            let (seq, upstream_id) = self.tail.paused.take()?;
            let (mut inner, parts) = self.again.take()?;
            let mut req = Request::from_parts(parts, Body::empty());
            match HeaderValue::from_bytes(&upstream_id) {
                Ok(v) => {
                    req.headers_mut().insert(LAST_EVENT_ID, v);
                }
                Err(_) => return Some(self.tail.cut("the backend's event id is not a header")),
            }
            let Ok(res) = inner.call(req).await;
            if !is_sse(&res) {
                return Some(
                    self.tail
                        .cut("the backend did not resume the call's stream"),
                );
            }
            let t = &self.tail;
            let res = record(
                res,
                Bytes::new(),
                t.key.clone(),
                seq,
                (t.store.clone(), t.cfg.clone()),
                t.call_id.clone(),
            );
            self.rest = Some(res.into_body());
        }
    }
}

/// How long a tail waits for new events before it looks whether the call's
/// replica still runs (and sends a keep-alive every `keep_alive`).
const TAIL_WAIT: Duration = Duration::from_secs(1);

/// Follows a stored call stream to its end.
struct Tail {
    store: Arc<dyn EventStore>,
    cfg: Arc<ResumeConfig>,
    key: StreamKey,
    after: u64,
    pending: Option<Vec<super::StoredEvent>>,
    /// How long nothing has been appended.
    idle: Duration,
    call_id: Option<RequestId>,
    done: bool,
    /// The stream's end was a pause: its position and the backend's last
    /// event id.
    paused: Option<(u64, Bytes)>,
}

impl Tail {
    /// The next bytes for the client; `None` once the stream has ended.
    async fn next(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        loop {
            let events = match self.pending.take() {
                Some(e) => Ok(e),
                None => self.store.read(&self.key, self.after, TAIL_WAIT).await,
            };
            let events = match events {
                Ok(e) => e,
                Err(EventStoreError::Backend(cause)) => {
                    tracing::warn!(error = %cause, "event store unavailable");
                    self.done = true;
                    return Some(self.cut("the event store cannot be reached"));
                }
                Err(e) => {
                    self.done = true;
                    return Some(self.cut(&e.to_string()));
                }
            };
            if events.is_empty() {
                self.idle += TAIL_WAIT;
                let quiet_too_long = self.idle > self.cfg.drain_for + self.cfg.keep_alive;
                if quiet_too_long || !self.store.writer_alive(&self.key).await {
                    // Whoever was reading the call stopped without an end:
                    // the replica running it is gone.
                    self.done = true;
                    return Some(self.cut("the gateway running the call went away"));
                }
                if self.idle.as_millis() % self.cfg.keep_alive.as_millis().max(1)
                    < TAIL_WAIT.as_millis()
                {
                    return Some(Bytes::from_static(KEEP_ALIVE));
                }
                continue;
            }
            self.idle = Duration::ZERO;
            let mut out = BytesMut::new();
            for e in events {
                if e.seq != self.after + 1 {
                    self.done = true;
                    out.extend_from_slice(&self.cut("events of the stream were lost"));
                    return Some(out.freeze());
                }
                self.after = e.seq;
                out.extend_from_slice(&e.wire);
                if e.end.is_some() {
                    if e.end == Some(StreamEnd::Paused) {
                        self.paused = Some((e.seq, e.upstream_id.clone().unwrap_or_default()));
                    }
                    self.done = true;
                    break;
                }
            }
            if !out.is_empty() {
                return Some(out.freeze());
            }
            if self.done {
                return None;
            }
        }
    }

    fn cut(&self, why: &str) -> Bytes {
        match &self.call_id {
            Some(id) => cut_event(id, why).into(),
            None => Bytes::new(),
        }
    }
}
