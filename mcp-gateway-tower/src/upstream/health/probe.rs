//! The active probe. What it sends, so server owners can recognise it:
//!
//! - [`Probe::Ping`]: once, `initialize` with `clientInfo.name` =
//!   [`PROBE_CLIENT_NAME`], protocol version 2025-11-25 and no
//!   capabilities, then `notifications/initialized`; then on every probe a
//!   `ping` (id `"health-probe-N"`) on that session. A 404 for the probe
//!   session (the backend restarted) starts a new one within the same
//!   probe. A removed instance's probe session is ended with `DELETE`.
//! - [`Probe::Discover`]: a stateless 2026-07-28 `server/discover` with
//!   the same `clientInfo`.
//!
//! A probe passes when the answer is a 2xx carrying a JSON-RPC result
//! (as JSON or in an SSE stream) within the probe timeout.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use mcp_gateway_core::protocol::header_names;

use super::state::InstanceState;
use super::{ActiveHealth, Probe};
use crate::body::{Body, BoxFuture};
use crate::upstream::{own_request, INITIALIZED};
use mcp_gateway_core::Answer as Decided;

/// The `clientInfo.name` of the gateway's health probes.
pub const PROBE_CLIENT_NAME: &str = "mcp-gateway-health-probe";

/// The most of a probe answer that is read.
const MAX_ANSWER: usize = 1 << 20;

/// Is a backend instance alive? What the active probe of each instance
/// asks, every [`ActiveHealth::interval`], within its timeout. The
/// built-in probes are [`Probe::Ping`] and [`Probe::Discover`]; set one of
/// your own with [`ActiveHealth::custom`].
///
/// ```
/// use mcp_gateway_core::Answer;
/// use mcp_gateway_tower::upstream::health::{HealthProbe, ProbeTarget};
///
/// /// Alive when the MCP endpoint answers a GET at all (a 405 will do).
/// struct Answers;
///
/// impl HealthProbe for Answers {
///     fn probe<'a>(&'a self, instance: &'a ProbeTarget) -> Answer<'a, Result<(), String>> {
///         Answer::pending(async move {
///             let req = http::Request::get("/").body(Default::default()).unwrap();
///             let res = instance.send(req).await?;
///             if res.status().is_server_error() {
///                 return Err(format!("answered {}", res.status()));
///             }
///             Ok(())
///         })
///     }
/// }
/// ```
pub trait HealthProbe: Send + Sync + 'static {
    /// Probes the instance once; `Ok` when it is alive, else why not.
    fn probe<'a>(&'a self, instance: &'a ProbeTarget) -> Decided<'a, Result<(), String>>;
}

/// One instance as a [`HealthProbe`] reaches it: requests go to its MCP
/// URL with the backend's credentials (a request's own path is not used).
pub struct ProbeTarget {
    send: Box<dyn Fn(Request<Body>) -> Option<BoxFuture> + Send + Sync>,
    label: Arc<str>,
}

impl std::fmt::Debug for ProbeTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProbeTarget")
            .field("label", &self.label)
            .finish()
    }
}

impl ProbeTarget {
    /// Sends `req` to the instance. Errors only when the instance is gone
    /// from the configuration; a failed connection is a 502 response.
    pub async fn send(&self, req: Request<Body>) -> Result<Response<Body>, String> {
        let Ok(res) = self.call(req).ok_or(GONE)?.await;
        Ok(res)
    }

    /// How the instance is shown (its URL).
    pub fn label(&self) -> &str {
        &self.label
    }

    fn call(&self, req: Request<Body>) -> Option<BoxFuture> {
        (self.send)(req)
    }
}

/// Starts probing one instance every `cfg.interval`; `send` reaches it,
/// and returns `None` once the instance is gone (the task then ends).
pub(crate) fn spawn_probe<F>(
    state: Arc<InstanceState>,
    backend: Arc<str>,
    cfg: ActiveHealth,
    send: F,
) where
    F: Fn(Request<Body>) -> Option<BoxFuture> + Send + Sync + 'static,
{
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let target = ProbeTarget {
        send: Box::new(send),
        label: state.label().clone(),
    };
    rt.spawn(async move {
        let mut session: Option<HeaderValue> = None;
        let mut tick = tokio::time::interval(cfg.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if state.is_removed() {
                if let Some(sid) = session.take() {
                    if let Some(f) = target.call(request(http::Method::DELETE, Bytes::new(), Some(&sid))) {
                        let _ = tokio::time::timeout(cfg.timeout, f).await;
                    }
                }
                break;
            }
            let once = async {
                match &cfg.custom {
                    Some(custom) => custom.0.probe(&target).await,
                    None => probe_once(&target, cfg.probe, &mut session).await,
                }
            };
            let outcome = tokio::time::timeout(cfg.timeout, once)
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {:?}", cfg.timeout)));
            match outcome {
                Ok(()) => {
                    if state.probe_passed(cfg.healthy_threshold) {
                        tracing::info!(%backend, instance = %state.label(), "instance healthy again");
                    }
                }
                Err(e) if e == GONE => break,
                Err(e) => {
                    tracing::debug!(%backend, instance = %state.label(), error = %e, "health probe failed");
                    if state.probe_failed(cfg.unhealthy_threshold) {
                        tracing::warn!(%backend, instance = %state.label(), error = %e, "instance unhealthy: its probes fail");
                    }
                }
            }
        }
    });
}

/// What a probe says when the instance is gone.
const GONE: &str = "instance gone";

async fn probe_once(
    target: &ProbeTarget,
    probe: Probe,
    session: &mut Option<HeaderValue>,
) -> Result<(), String> {
    match probe {
        Probe::Discover => {
            let body = format!(
                r#"{{"jsonrpc":"2.0","id":"health-probe-{}","method":"server/discover","params":{{"_meta":{{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientInfo":{{"name":"{PROBE_CLIENT_NAME}","version":"{}"}},"io.modelcontextprotocol/clientCapabilities":{{}}}}}}}}"#,
                next_id(),
                env!("CARGO_PKG_VERSION")
            );
            let mut req = request(http::Method::POST, body.into(), None);
            let h = req.headers_mut();
            h.insert(
                header_names::MCP_PROTOCOL_VERSION,
                HeaderValue::from_static("2026-07-28"),
            );
            h.insert(
                http::HeaderName::from_static("mcp-method"),
                HeaderValue::from_static("server/discover"),
            );
            answer(target.call(req).ok_or(GONE)?.await)
                .await
                .map_err(String::from)
        }
        Probe::Ping => {
            if session.is_none() {
                *session = Some(initialize(target).await?);
            }
            match ping(target, session.as_ref()).await {
                Err(Answer::Forgotten) => {
                    *session = Some(initialize(target).await?);
                    ping(target, session.as_ref()).await.map_err(String::from)
                }
                r => r.map_err(String::from),
            }
        }
    }
}

fn next_id() -> u64 {
    static N: AtomicU64 = AtomicU64::new(1);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A probe request; on the probe session (an empty id: the backend issued
/// none) it names the probe's protocol version.
fn request(method: http::Method, body: Bytes, session: Option<&HeaderValue>) -> Request<Body> {
    let version = HeaderValue::from_static("2025-11-25");
    let on_session = session.filter(|s| !s.is_empty());
    own_request(method, body, on_session, on_session.map(|_| &version))
}

/// Starts a probe session; its id (empty when the backend issues none).
async fn initialize(target: &ProbeTarget) -> Result<HeaderValue, String> {
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":"health-probe-{}","method":"initialize","params":{{"protocolVersion":"2025-11-25","capabilities":{{}},"clientInfo":{{"name":"{PROBE_CLIENT_NAME}","version":"{}"}}}}}}"#,
        next_id(),
        env!("CARGO_PKG_VERSION")
    );
    let res = target
        .call(request(http::Method::POST, body.into(), None))
        .ok_or(GONE)?
        .await;
    let sid = res
        .as_ref()
        .ok()
        .and_then(|r| r.headers().get(&header_names::MCP_SESSION_ID).cloned())
        .unwrap_or_else(|| HeaderValue::from_static(""));
    answer(res).await.map_err(String::from)?;
    let res = target
        .call(request(
            http::Method::POST,
            Bytes::from_static(INITIALIZED),
            Some(&sid),
        ))
        .ok_or(GONE)?
        .await;
    let Ok(res) = res;
    if !res.status().is_success() {
        return Err(format!(
            "notifications/initialized answered {}",
            res.status()
        ));
    }
    Ok(sid)
}

async fn ping(target: &ProbeTarget, session: Option<&HeaderValue>) -> Result<(), Answer> {
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":"health-probe-{}","method":"ping"}}"#,
        next_id()
    );
    let fut = target
        .call(request(http::Method::POST, body.into(), session))
        .ok_or(Answer::Bad(GONE.into()))?;
    answer(fut.await).await
}

/// Why an answer did not pass.
enum Answer {
    /// 404: the backend forgot the probe session.
    Forgotten,
    Bad(String),
}

impl From<Answer> for String {
    fn from(a: Answer) -> String {
        match a {
            Answer::Forgotten => "the backend forgot the probe session".into(),
            Answer::Bad(s) => s,
        }
    }
}

/// Passes when `res` is a 2xx carrying a JSON-RPC result (for the
/// gateway's own requests: probes and failover's replayed setup).
pub(crate) async fn expect_result(res: Response<Body>) -> Result<serde_json::Value, String> {
    answer_value(Ok(res)).await.map_err(String::from)
}

/// Passes when `res` is a 2xx carrying a JSON-RPC result.
async fn answer(res: Result<Response<Body>, std::convert::Infallible>) -> Result<(), Answer> {
    answer_value(res).await.map(drop)
}

/// The JSON-RPC result `res` carries, when it is a 2xx carrying one.
async fn answer_value(
    res: Result<Response<Body>, std::convert::Infallible>,
) -> Result<serde_json::Value, Answer> {
    let Ok(res) = res;
    let status = res.status();
    if status == StatusCode::NOT_FOUND {
        return Err(Answer::Forgotten);
    }
    if !status.is_success() {
        return Err(Answer::Bad(format!("answered {status}")));
    }
    let sse = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let mut body = res.into_body();
    let mut text = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Answer::Bad(format!("answer broke: {e}")))?;
        if let Some(d) = frame.data_ref() {
            text.extend_from_slice(d);
        }
        if let Some(v) = result_in(&text, sse)? {
            return Ok(v);
        }
        if text.len() > MAX_ANSWER {
            return Err(Answer::Bad("answer too large".into()));
        }
    }
    result_in(&text, sse)?.ok_or_else(|| Answer::Bad("no JSON-RPC result in the answer".into()))
}

/// The JSON-RPC result `text` holds, if it holds one; a JSON-RPC error
/// fails.
fn result_in(text: &[u8], sse: bool) -> Result<Option<serde_json::Value>, Answer> {
    let check = |json: &[u8]| -> Result<Option<serde_json::Value>, Answer> {
        let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(json) else {
            return Ok(None);
        };
        if let Some(e) = v.get("error") {
            return Err(Answer::Bad(format!("answered with an error: {e}")));
        }
        Ok(v.get_mut("result").map(serde_json::Value::take))
    };
    if !sse {
        return check(text);
    }
    for line in text.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(data) = line.strip_prefix(b"data:") {
            if let Some(v) = check(data.trim_ascii_start())? {
                return Ok(Some(v));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_pass_errors_fail_priming_events_are_skipped() {
        assert!(matches!(
            result_in(br#"{"jsonrpc":"2.0","id":1,"result":{}}"#, false),
            Ok(Some(_))
        ));
        assert!(
            matches!(result_in(b"id: 0\ndata: \n\nid: 1\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"a\":1}}\n\n", true), Ok(Some(v)) if v["a"] == 1)
        );
        assert!(result_in(
            b"data: {\"jsonrpc\":\"2.0\",\"id\":1,\"error\":{\"code\":1,\"message\":\"x\"}}\n",
            true
        )
        .is_err());
        assert!(matches!(result_in(b"data: {\"jsonrpc\":", true), Ok(None)));
    }
}
