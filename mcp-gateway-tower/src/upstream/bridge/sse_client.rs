//! The legacy HTTP+SSE transport (2024-11-05) towards a backend: `GET` the
//! backend's SSE URL, learn the `POST` endpoint from its `endpoint` event,
//! post each message there; everything the server says arrives on the
//! stream and is matched to its call by id.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, ACCEPT, CONTENT_TYPE};
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use mcp_gateway_core::sse::SseScanner;
use mcp_gateway_core::{ErrorKind, GatewayError};

use super::peer::{Peer, PeerIo, PeerLimits};
use crate::body::Body;
use crate::upstream::{HttpUpstream, HttpUpstreamConfig};

/// A legacy SSE backend: its stream's URL and the HTTP client settings.
#[derive(Debug, Clone)]
pub struct SseTarget {
    /// The `GET` URL of the backend's SSE stream (`http://host:port/sse`).
    pub url: String,
    /// Client settings (timeouts, TLS) for the stream and the posts.
    pub http: HttpUpstreamConfig,
}

impl SseTarget {
    /// The backend at `url` with default client settings.
    pub fn new(url: impl Into<String>) -> Self {
        SseTarget {
            url: url.into(),
            http: HttpUpstreamConfig::default(),
        }
    }
}

/// The largest event the backend may send.
const MAX_EVENT: usize = 16 * 1024 * 1024;

fn unreachable(backend: &str) -> GatewayError {
    GatewayError::new(
        ErrorKind::UpstreamUnavailable,
        format!("Bad Gateway: backend {backend} is unreachable"),
    )
}

/// Opens the backend's stream and waits (at most `wait`) for its endpoint.
pub(crate) async fn connect(
    backend: Arc<str>,
    target: &SseTarget,
    limits: PeerLimits,
    wait: Duration,
) -> Result<Arc<Peer>, GatewayError> {
    let stream_cfg = target.http.clone().idle_timeout(None);
    let get = HttpUpstream::new(&target.url, stream_cfg).map_err(|e| {
        tracing::error!(backend = %backend, error = %e, "invalid legacy SSE URL");
        unreachable(&backend)
    })?;
    let mut req = Request::new(Body::empty());
    *req.method_mut() = Method::GET;
    *req.uri_mut() = "/".parse().expect("a valid URI");
    req.headers_mut()
        .insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
    let res = match get.send(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    if res.status() != StatusCode::OK {
        tracing::warn!(backend = %backend, status = %res.status(), "the legacy SSE backend refused its stream");
        return Err(unreachable(&backend));
    }
    let mut body = res.into_body();
    let mut scanner = SseScanner::collecting(MAX_EVENT);
    let mut pending: Vec<(Option<Vec<u8>>, Bytes)> = Vec::new();
    // The endpoint comes first.
    let endpoint = tokio::time::timeout(wait, async {
        loop {
            let frame = body.frame().await?.ok()?;
            let Ok(chunk) = frame.into_data() else {
                continue;
            };
            scanner.feed(&chunk, |ev| {
                pending.push((
                    ev.event.map(<[u8]>::to_vec),
                    Bytes::copy_from_slice(ev.data),
                ));
            });
            if let Some(i) = pending
                .iter()
                .position(|(e, _)| e.as_deref() == Some(b"endpoint".as_slice()))
            {
                let (_, data) = pending.remove(i);
                return Some(data);
            }
        }
    })
    .await
    .ok()
    .flatten();
    let Some(endpoint) = endpoint else {
        tracing::warn!(backend = %backend, "the legacy SSE backend sent no endpoint event");
        return Err(unreachable(&backend));
    };
    let endpoint = resolve(&target.url, &String::from_utf8_lossy(&endpoint)).ok_or_else(|| {
        tracing::warn!(backend = %backend, "the legacy SSE backend's endpoint is not a URL");
        unreachable(&backend)
    })?;
    let post = HttpUpstream::new(&endpoint, target.http.clone()).map_err(|e| {
        tracing::warn!(backend = %backend, error = %e, "the legacy SSE backend's endpoint is not usable");
        unreachable(&backend)
    })?;
    let (peer, io) = Peer::new(backend.clone(), limits);
    tracing::info!(backend = %backend, endpoint, "connected to the legacy SSE backend");
    let PeerIo { out, stop } = io;
    tokio::spawn(post_lines(peer.clone(), post, out, stop.clone()));
    tokio::spawn(read_stream(peer.clone(), body, scanner, pending, stop));
    Ok(peer)
}

/// `endpoint` (absolute, or relative to the stream's URL) as a URL.
fn resolve(base: &str, endpoint: &str) -> Option<String> {
    let endpoint = endpoint.trim();
    if endpoint.starts_with("http://") || endpoint.starts_with("https://") {
        return Some(endpoint.to_owned());
    }
    let uri: http::Uri = base.parse().ok()?;
    let origin = format!("{}://{}", uri.scheme_str()?, uri.authority()?);
    if endpoint.starts_with('/') {
        return Some(format!("{origin}{endpoint}"));
    }
    let path = uri.path();
    let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
    Some(format!("{origin}{dir}{endpoint}"))
}

async fn post_lines(
    peer: Arc<Peer>,
    post: HttpUpstream,
    mut out: tokio::sync::mpsc::Receiver<Bytes>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let line = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => return,
            l = out.recv() => match l { Some(l) => l, None => return },
        };
        let mut req = Request::new(Body::full(line));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = "/".parse().expect("a valid URI");
        req.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let res = match post.send(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        let status = res.status();
        // Drain the (small) answer so the connection is reused.
        let _ = res.into_body().collect().await;
        if !status.is_success() {
            tracing::warn!(backend = %peer.backend(), %status, "the legacy SSE backend refused a message");
            if status == StatusCode::NOT_FOUND || status.is_server_error() {
                // Its session is gone: so is the connection.
                peer.ended(&format!("its endpoint answered {status}"));
                peer.stop();
                return;
            }
        }
    }
}

async fn read_stream(
    peer: Arc<Peer>,
    mut body: Body,
    mut scanner: SseScanner,
    first: Vec<(Option<Vec<u8>>, Bytes)>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    for (event, data) in first {
        if event.is_none() || event.as_deref() == Some(b"message".as_slice()) {
            peer.inbound(data).await;
        }
    }
    let why = loop {
        let frame = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break "stopped".to_owned(),
            f = body.frame() => f,
        };
        let chunk = match frame {
            None => break "its SSE stream ended".to_owned(),
            Some(Err(_)) => break "its SSE stream broke".to_owned(),
            Some(Ok(f)) => match f.into_data() {
                Ok(c) => c,
                Err(_) => continue,
            },
        };
        let mut events = Vec::new();
        scanner.feed(&chunk, |ev| {
            if ev.event.is_none() || ev.event == Some(b"message".as_slice()) {
                events.push(Bytes::copy_from_slice(ev.data));
            }
        });
        for e in events {
            peer.inbound(e).await;
        }
    };
    if why != "stopped" {
        tracing::warn!(backend = %peer.backend(), reason = %why, "legacy SSE backend connection ended");
    }
    peer.ended(&why);
}

#[cfg(test)]
mod tests {
    use super::resolve;

    #[test]
    fn resolves_endpoints() {
        assert_eq!(
            resolve("http://h:1/a/sse", "/messages/?session_id=x").unwrap(),
            "http://h:1/messages/?session_id=x"
        );
        assert_eq!(
            resolve("http://h:1/a/sse", "message?sessionId=1").unwrap(),
            "http://h:1/a/message?sessionId=1"
        );
        assert_eq!(
            resolve("http://h:1/sse", "http://o:2/m").unwrap(),
            "http://o:2/m"
        );
    }
}
