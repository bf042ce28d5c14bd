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
use mcp_gateway_core::sse::KEEP_ALIVE;
use mcp_gateway_core::{ErrorKind, GatewayError, RequestId};
use tower_service::Service;

use super::body::{cut_event, record};
use super::{is_sse, EventStore, EventStoreError, ResumeConfig, StreamKey};
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
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
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
    // The request goes no further: the call's events come from the store.
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
    };
    let stream = futures_util::stream::unfold(tail, |mut t| async move {
        let chunk = t.next().await?;
        Some((Ok::<_, BoxError>(Frame::data(chunk)), t))
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
    let kind = match e {
        EventStoreError::Backend(_) => ErrorKind::StateUnavailable,
        _ => ErrorKind::CannotResume,
    };
    let mut res = error_response(
        &GatewayError::new(kind, format!("cannot resume the stream: {e}")),
        None,
    );
    if res.status() == StatusCode::SERVICE_UNAVAILABLE {
        res.headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    res
}

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
                None => {
                    self.store
                        .read(&self.key, self.after, self.cfg.keep_alive)
                        .await
                }
            };
            let events = match events {
                Ok(e) => e,
                Err(e) => {
                    self.done = true;
                    return Some(self.cut(&format!("{e}")));
                }
            };
            if events.is_empty() {
                self.idle += self.cfg.keep_alive;
                if self.idle > self.cfg.drain_for + self.cfg.keep_alive {
                    // Whoever was reading the call stopped without an end:
                    // the replica running it is gone.
                    self.done = true;
                    return Some(self.cut("the gateway running the call went away"));
                }
                return Some(Bytes::from_static(KEEP_ALIVE));
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
