//! 2026-07-28 callers in front of a server that speaks an older revision
//! (every stdio and legacy SSE server today): the gateway keeps one
//! upstream session per principal, initialized on its behalf from the
//! request's `_meta`; answers `server/discover` from that session's
//! `InitializeResult`; adds what 2026-07-28 results carry (`resultType`,
//! and `ttlMs` / `cacheScope` on lists and reads); and turns the server's
//! own requests during a call (sampling, elicitation, roots) into an
//! `input_required` result, whose retry delivers the client's answers to
//! the server, which then finishes the call.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Response;
use mcp_gateway_core::{ErrorKind, GatewayError, RequestId};
use serde_json::{json, Map, Value};

use super::peer::CallStream;
use super::service::{gateway_error, json_response, sse_response, Inner, Session};
use super::wire::{self, Head, Kind};
use crate::body::{lock, Body};
use crate::error::error_response;

/// How long a call waits for the client's retry after `input_required`.
const PARKED_FOR: Duration = Duration::from_secs(300);

/// A call waiting for the client's answers (the `requestState` it was given).
pub(super) struct Parked {
    owner: Arc<str>,
    session: Arc<Session>,
    stream: CallStream,
    /// The `inputRequests` keys: the gateway's ids of the server's requests.
    keys: Vec<String>,
    method: Box<str>,
    pub(super) expires: Instant,
}

/// A 2026-07-28 request.
pub(super) async fn post(
    inner: Arc<Inner>,
    owner: Arc<str>,
    line: Bytes,
    head: Head,
    sse: bool,
) -> Response<Body> {
    if head.kind != Kind::Request {
        // No server-to-client requests reach 2026-07-28 clients, and
        // their cancellation is closing the stream: nothing to pass on.
        return super::service::accepted_response();
    }
    let id = Bytes::copy_from_slice(&line[head.id.clone().unwrap_or(0..0)]);
    let params: Value = super::service::params_of(&line)
        .and_then(|p| serde_json::from_slice(&p).ok())
        .unwrap_or(Value::Null);
    // The server speaks an older revision: what a 2026-07-28 server must
    // refuse, the gateway refuses for it.
    if let Err(e) = check(head.method(), &params) {
        return error_response(&e, RequestId::from_raw_json(&id).as_ref());
    }
    if let Some(state) = params.get("requestState").and_then(Value::as_str) {
        return resume(inner, owner, id, state, &params, sse).await;
    }
    let session = match principal_session(&inner, &owner, &params).await {
        Ok(s) => s,
        Err(e) => return error_response(&e, RequestId::from_raw_json(&id).as_ref()),
    };
    inner.touch(&session);
    if head.method() == "server/discover" {
        let result = discover_result(session.init_result.as_deref().unwrap_or(b"{}"));
        return json_response(wire::result_message(&id, &result));
    }
    if head.method() == "subscriptions/listen" {
        return listen(&inner, session, id, &params).await;
    }
    let peer = match inner.peer_of(&session).await {
        Ok(p) => p,
        Err(e) => return error_response(&e, RequestId::from_raw_json(&id).as_ref()),
    };
    // The server speaks an older revision: the 2026-07-28 `_meta` keys
    // would make it answer as if it spoke this one.
    let line = older_request(&line);
    let Some(head) = Head::parse(&line) else {
        return gateway_error(ErrorKind::InvalidRequest, "invalid request", Some(&id));
    };
    let mut stream = match peer.call(session.conn, line.clone(), &head).await {
        Ok(s) => s,
        Err(e) => return error_response(&e, RequestId::from_raw_json(&id).as_ref()),
    };
    stream.cancel_on_drop();
    let drive = Drive {
        inner,
        owner,
        session,
        stream: Some(stream),
        reply_id: id,
        method: head.method().into(),
        logs: wants_logs(&params),
    };
    drive.respond(sse).await
}

/// The methods of 2026-07-28 (what a caller of that revision may ask).
const METHODS: [&str; 10] = [
    "server/discover",
    "tools/list",
    "tools/call",
    "resources/list",
    "resources/read",
    "resources/templates/list",
    "prompts/list",
    "prompts/get",
    "completion/complete",
    "subscriptions/listen",
];

/// The checks of a 2026-07-28 server: a method of the revision, and the
/// `_meta` every request carries (its version the one the gateway speaks).
fn check(method: &str, params: &Value) -> Result<(), GatewayError> {
    if !METHODS.contains(&method) {
        return Err(GatewayError::new(
            ErrorKind::MethodNotFound,
            format!("Method not found: {method} (not a 2026-07-28 method)"),
        ));
    }
    let meta = params.get("_meta");
    let version = meta
        .and_then(|m| m.get("io.modelcontextprotocol/protocolVersion"))
        .and_then(Value::as_str);
    let caps = meta
        .and_then(|m| m.get("io.modelcontextprotocol/clientCapabilities"))
        .filter(|c| c.is_object());
    let mut missing = Vec::new();
    if version.is_none() {
        missing.push("io.modelcontextprotocol/protocolVersion");
    }
    if caps.is_none() {
        missing.push("io.modelcontextprotocol/clientCapabilities");
    }
    if !missing.is_empty() {
        return Err(GatewayError::new(
            ErrorKind::InvalidParams,
            format!(
                "Invalid params: request _meta is missing or has malformed required fields: {}",
                missing.join(", ")
            ),
        ));
    }
    match version {
        Some("2026-07-28") => Ok(()),
        other => Err(GatewayError::new(
            ErrorKind::UnsupportedVersion,
            "Unsupported protocol version",
        )
        .with_data(&json!({
            "requested": other,
            "supported": supported(),
        }))),
    }
}

/// The revisions the gateway serves.
fn supported() -> Vec<&'static str> {
    mcp_gateway_core::ProtocolVersion::ALL
        .iter()
        .map(|v| v.as_str())
        .collect()
}

/// The retry of a call that was answered `input_required`.
async fn resume(
    inner: Arc<Inner>,
    owner: Arc<str>,
    id: Bytes,
    state: &str,
    params: &Value,
    sse: bool,
) -> Response<Body> {
    let parked = {
        let mut p = lock(&inner.parked);
        match p.get(state) {
            Some(x) if x.owner == owner && x.expires > Instant::now() => p.remove(state),
            _ => None,
        }
    };
    let Some(parked) = parked else {
        return gateway_error(
            ErrorKind::InvalidParams,
            "invalid params: requestState is unknown, expired, or another caller's",
            Some(&id),
        );
    };
    let peer = parked.stream.peer().clone();
    let responses = params.get("inputResponses");
    for key in &parked.keys {
        let ask_id = format!("\"{key}\"");
        let answer = match responses.and_then(|r| r.get(key)) {
            Some(v) => wire::result_message(ask_id.as_bytes(), v.to_string().as_bytes()),
            None => wire::error_message(
                ask_id.as_bytes(),
                -32603,
                "the client's retry carried no answer to this request",
            ),
        };
        if let Some(h) = Head::parse(&answer) {
            let _ = peer.answer(parked.session.conn, answer, &h).await;
        }
    }
    inner.touch(&parked.session);
    let drive = Drive {
        inner,
        owner,
        session: parked.session,
        stream: Some(parked.stream),
        reply_id: id,
        method: parked.method,
        logs: wants_logs(params),
    };
    drive.respond(sse).await
}

/// The principal's upstream session, started on first use (and again
/// when its server ended).
async fn principal_session(
    inner: &Arc<Inner>,
    owner: &Arc<str>,
    params: &Value,
) -> Result<Arc<Session>, GatewayError> {
    let mut map = inner.principals.lock().await;
    if let Some(s) = map.get(owner) {
        if inner.peer_of(s).await.is_ok() {
            return Ok(s.clone());
        }
        map.remove(owner);
    }
    let meta = params.get("_meta");
    let caps = meta
        .and_then(|m| m.get("io.modelcontextprotocol/clientCapabilities"))
        .cloned()
        .unwrap_or_else(|| json!({}));
    let info = meta
        .and_then(|m| m.get("io.modelcontextprotocol/clientInfo"))
        .cloned()
        .unwrap_or_else(|| json!({"name": "mcp-gateway", "version": env!("CARGO_PKG_VERSION")}));
    let init = json!({
        "protocolVersion": "2025-11-25",
        "capabilities": caps,
        "clientInfo": info,
    });
    let s = inner.own_session(&Bytes::from(init.to_string())).await?;
    map.insert(owner.clone(), s.clone());
    Ok(s)
}

/// `line` without the 2026-07-28 `_meta` keys
/// (`io.modelcontextprotocol/protocolVersion`, `…/clientCapabilities`,
/// `…/clientInfo`): what an older server expects.
fn older_request(line: &Bytes) -> Bytes {
    let Ok(mut v) = serde_json::from_slice::<Value>(line) else {
        return line.clone();
    };
    let Some(params) = v.get_mut("params").and_then(Value::as_object_mut) else {
        return line.clone();
    };
    if let Some(meta) = params.get_mut("_meta").and_then(Value::as_object_mut) {
        meta.retain(|k, _| !k.starts_with("io.modelcontextprotocol/"));
        if meta.is_empty() {
            params.remove("_meta");
        }
    }
    Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
}

/// The `_meta` key naming the subscription a listen-stream message is for.
const SUBSCRIPTION_ID: &str = "io.modelcontextprotocol/subscriptionId";

/// `subscriptions/listen`: a stream of the principal's session's list
/// changes and resource updates, as the filter asks and the server can
/// (its capabilities), each tagged with the subscription's id (the
/// request's); the acknowledgement first. Resource subscriptions are made
/// at the server (`resources/subscribe`).
async fn listen(
    inner: &Arc<Inner>,
    session: Arc<Session>,
    id: Bytes,
    params: &Value,
) -> Response<Body> {
    let peer = match inner.peer_of(&session).await {
        Ok(p) => p,
        Err(e) => return error_response(&e, RequestId::from_raw_json(&id).as_ref()),
    };
    let init: Value = session
        .init_result
        .as_deref()
        .and_then(|r| serde_json::from_slice(r).ok())
        .unwrap_or(Value::Null);
    let caps = &init["capabilities"];
    let asked = &params["notifications"];
    let mut honored = Map::new();
    for (key, kind) in [
        ("toolsListChanged", "tools"),
        ("promptsListChanged", "prompts"),
        ("resourcesListChanged", "resources"),
    ] {
        if asked[key] == json!(true) && caps[kind]["listChanged"] == json!(true) {
            honored.insert(key.into(), json!(true));
        }
    }
    let uris: Vec<String> = match (
        asked["resourceSubscriptions"].as_array(),
        caps["resources"]["subscribe"] == json!(true),
    ) {
        (Some(list), true) => list
            .iter()
            .filter_map(|u| u.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    };
    let Some(rx) = peer.listen(session.conn) else {
        return error_response(&peer.gone_error(), RequestId::from_raw_json(&id).as_ref());
    };
    for uri in &uris {
        let p = json!({ "uri": uri }).to_string();
        if let Err(e) = peer
            .request_own("resources/subscribe", p.as_bytes(), inner.cfg.init_timeout)
            .await
        {
            tracing::warn!(backend = %inner.name, uri, error = %e.message(), "the backend refused a resource subscription");
        }
    }
    if !uris.is_empty() {
        honored.insert("resourceSubscriptions".into(), json!(uris));
    }
    let sub: Value = serde_json::from_slice(&id).unwrap_or(Value::Null);
    let ack = json!({"jsonrpc": "2.0", "method": "notifications/subscriptions/acknowledged",
        "params": {"notifications": Value::Object(honored.clone()), "_meta": {SUBSCRIPTION_ID: sub.clone()}}});
    let filter = Value::Object(honored);
    // The principal's session stays while it listens.
    session.busy.fetch_add(1, Ordering::Relaxed);
    let guard = Busy(session);
    let rest = futures_util::stream::unfold((rx, guard), move |(mut rx, guard)| {
        let (filter, sub) = (filter.clone(), sub.clone());
        async move {
            loop {
                let item = rx.recv().await?;
                if let Some(m) = tagged(&item.msg, &filter, &sub) {
                    return Some((m, (rx, guard)));
                }
            }
        }
    });
    sse_response(Some(Bytes::from(ack.to_string())), rest)
}

/// Holds a session busy (not swept) while it lives.
struct Busy(Arc<Session>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A listen stream's notification, if its filter takes it, tagged with
/// the subscription's id.
fn tagged(msg: &[u8], filter: &Value, sub: &Value) -> Option<Bytes> {
    let mut v: Value = serde_json::from_slice(msg).ok()?;
    let wanted = match v["method"].as_str()? {
        "notifications/tools/list_changed" => filter["toolsListChanged"] == json!(true),
        "notifications/prompts/list_changed" => filter["promptsListChanged"] == json!(true),
        "notifications/resources/list_changed" => filter["resourcesListChanged"] == json!(true),
        "notifications/resources/updated" => {
            let uri = v
                .pointer("/params/uri")
                .and_then(Value::as_str)
                .unwrap_or("");
            filter["resourceSubscriptions"]
                .as_array()
                .is_some_and(|l| l.iter().any(|u| u == uri))
        }
        _ => false,
    };
    if !wanted {
        return None;
    }
    let params = v
        .as_object_mut()?
        .entry("params")
        .or_insert_with(|| json!({}));
    let meta = params
        .as_object_mut()?
        .entry("_meta")
        .or_insert_with(|| json!({}));
    meta.as_object_mut()?
        .insert(SUBSCRIPTION_ID.into(), sub.clone());
    serde_json::to_vec(&v).ok().map(Bytes::from)
}

/// `server/discover`'s result, from the server's `InitializeResult`.
fn discover_result(init: &[u8]) -> Vec<u8> {
    let init: Value = serde_json::from_slice(init).unwrap_or(Value::Null);
    let mut out = Map::new();
    // The gateway speaks every revision to its clients, whatever the server's.
    out.insert("supportedVersions".into(), json!(supported()));
    out.insert(
        "capabilities".into(),
        init.get("capabilities")
            .cloned()
            .unwrap_or_else(|| json!({})),
    );
    if let Some(i) = init.get("instructions") {
        out.insert("instructions".into(), i.clone());
    }
    if let Some(s) = init.get("serverInfo") {
        out.insert(
            "_meta".into(),
            json!({ "io.modelcontextprotocol/serverInfo": s }),
        );
    }
    out.insert("resultType".into(), json!("complete"));
    out.insert("ttlMs".into(), json!(0));
    out.insert("cacheScope".into(), json!("private"));
    serde_json::to_vec(&Value::Object(out)).unwrap_or_default()
}

/// An `InitializeResult` answering a client that asked for `asked`: the
/// server's version, or the client's when it is older (both speak it).
pub(super) fn with_version(result: &Bytes, asked: Option<&str>) -> Bytes {
    let Some(asked) = asked else {
        return result.clone();
    };
    let Ok(mut v) = serde_json::from_slice::<Value>(result) else {
        return result.clone();
    };
    let theirs = v
        .get("protocolVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    if asked < theirs && mcp_gateway_core::ProtocolVersion::parse(asked).is_some() {
        v["protocolVersion"] = Value::String(asked.to_owned());
        return Bytes::from(v.to_string());
    }
    result.clone()
}

/// A final answer with what 2026-07-28 results carry.
fn complete(msg: &[u8], reply_id: &[u8], method: &str) -> Bytes {
    let Ok(mut v) = serde_json::from_slice::<Value>(msg) else {
        return Bytes::copy_from_slice(msg);
    };
    if let Ok(id) = serde_json::from_slice::<Value>(reply_id) {
        v["id"] = id;
    }
    if method == "resources/read" {
        // SEP-2164: an unknown resource is -32602 from 2026-07-28 on (the
        // older revisions' servers say -32002).
        if let Some(code) = v.pointer_mut("/error/code") {
            if code == -32002 {
                *code = json!(-32602);
            }
        }
    }
    if let Some(r) = v.get_mut("result").and_then(Value::as_object_mut) {
        r.entry("resultType").or_insert(json!("complete"));
        if method.ends_with("/list") || method == "resources/read" {
            r.entry("ttlMs").or_insert(json!(0));
            r.entry("cacheScope").or_insert(json!("private"));
        }
    }
    Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
}

/// One call seen through to its answer, or to an `input_required`.
struct Drive {
    inner: Arc<Inner>,
    owner: Arc<str>,
    session: Arc<Session>,
    stream: Option<CallStream>,
    reply_id: Bytes,
    method: Box<str>,
    /// The request set `_meta["io.modelcontextprotocol/logLevel"]`: only
    /// then do log messages reach it.
    logs: bool,
}

fn wants_logs(params: &Value) -> bool {
    params
        .pointer("/_meta/io.modelcontextprotocol~1logLevel")
        .is_some()
}

/// A message to pass on, or the last one.
enum Step {
    Pass(Bytes),
    Last(Bytes),
}

impl Drive {
    async fn step(&mut self) -> Option<Step> {
        let item = loop {
            let item = self.stream.as_mut()?.next().await?;
            if !self.logs
                && !item.last
                && Head::parse(&item.msg).is_some_and(|h| h.method() == "notifications/message")
            {
                continue;
            }
            break item;
        };
        if item.last {
            self.stream = None;
            return Some(Step::Last(complete(
                &item.msg,
                &self.reply_id,
                &self.method,
            )));
        }
        let Some(head) = Head::parse(&item.msg) else {
            return Some(Step::Pass(item.msg));
        };
        if head.kind != Kind::Request {
            return Some(Step::Pass(item.msg));
        }
        // The server asks the client something: the call waits, parked,
        // and the client is told what to answer.
        let key = head
            .id
            .clone()
            .and_then(|r| serde_json::from_slice::<String>(&item.msg[r]).ok())
            .unwrap_or_default();
        let ask: Value = serde_json::from_slice(&item.msg).unwrap_or(Value::Null);
        let mut request = Map::new();
        request.insert(
            "method".into(),
            ask.get("method").cloned().unwrap_or(Value::Null),
        );
        if let Some(p) = ask.get("params") {
            request.insert("params".into(), p.clone());
        }
        let token = mcp_gateway_core::session::SessionId::random()
            .as_str()
            .to_owned();
        let result = json!({
            "resultType": "input_required",
            "inputRequests": { key.clone(): Value::Object(request) },
            "requestState": token,
        });
        let stream = self.stream.take()?;
        lock(&self.inner.parked).insert(
            token,
            Parked {
                owner: self.owner.clone(),
                session: self.session.clone(),
                stream,
                keys: vec![key],
                method: self.method.clone(),
                expires: Instant::now() + PARKED_FOR,
            },
        );
        Some(Step::Last(wire::result_message(
            &self.reply_id,
            result.to_string().as_bytes(),
        )))
    }

    async fn respond(mut self, sse: bool) -> Response<Body> {
        self.session.busy.fetch_add(1, Ordering::Relaxed);
        let first = self.step().await;
        let first = match first {
            None => {
                self.session.busy.fetch_sub(1, Ordering::Relaxed);
                return gateway_error(
                    ErrorKind::Internal,
                    "a call with no answer",
                    Some(&self.reply_id),
                );
            }
            Some(Step::Last(m)) => {
                self.session.busy.fetch_sub(1, Ordering::Relaxed);
                return json_response(m);
            }
            Some(Step::Pass(m)) => m,
        };
        if !sse {
            loop {
                match self.step().await {
                    Some(Step::Last(m)) => {
                        self.session.busy.fetch_sub(1, Ordering::Relaxed);
                        return json_response(m);
                    }
                    Some(Step::Pass(_)) => continue,
                    None => {
                        self.session.busy.fetch_sub(1, Ordering::Relaxed);
                        return gateway_error(
                            ErrorKind::Internal,
                            "a call with no answer",
                            Some(&self.reply_id),
                        );
                    }
                }
            }
        }
        let rest = futures_util::stream::unfold(Some(self), |d| async move {
            let mut d = d?;
            match d.step().await {
                Some(Step::Pass(m)) => Some((m, Some(d))),
                Some(Step::Last(m)) => {
                    d.session.busy.fetch_sub(1, Ordering::Relaxed);
                    Some((m, None))
                }
                None => {
                    d.session.busy.fetch_sub(1, Ordering::Relaxed);
                    None
                }
            }
        });
        sse_response(Some(first), rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discover_comes_from_the_initialize_result() {
        let d = discover_result(
            br#"{"protocolVersion":"2025-06-18","capabilities":{"tools":{}},"serverInfo":{"name":"s","version":"1"},"instructions":"hi"}"#,
        );
        let v: Value = serde_json::from_slice(&d).unwrap();
        assert!(v["supportedVersions"]
            .as_array()
            .unwrap()
            .contains(&json!("2026-07-28")));
        assert_eq!(v["capabilities"], json!({"tools": {}}));
        assert_eq!(v["instructions"], "hi");
        assert_eq!(
            v["_meta"]["io.modelcontextprotocol/serverInfo"]["name"],
            "s"
        );
        assert_eq!(v["resultType"], "complete");
    }

    #[test]
    fn results_gain_what_2026_requires() {
        let m = complete(
            br#"{"jsonrpc":"2.0","id":1,"result":{"tools":[]}}"#,
            b"\"r\"",
            "tools/list",
        );
        let v: Value = serde_json::from_slice(&m).unwrap();
        assert_eq!(v["id"], "r");
        assert_eq!(v["result"]["resultType"], "complete");
        assert_eq!(v["result"]["cacheScope"], "private");
        let e = complete(
            br#"{"jsonrpc":"2.0","id":1,"error":{"code":1,"message":"x"}}"#,
            b"2",
            "tools/call",
        );
        let v: Value = serde_json::from_slice(&e).unwrap();
        assert_eq!(v["id"], 2);
        assert!(v.get("result").is_none());
    }

    #[test]
    fn listen_streams_take_what_they_asked_for_tagged() {
        let filter = json!({"toolsListChanged": true, "resourceSubscriptions": ["a://x"]});
        let sub = json!(9);
        let t = tagged(
            br#"{"jsonrpc":"2.0","method":"notifications/tools/list_changed"}"#,
            &filter,
            &sub,
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&t).unwrap();
        assert_eq!(v["params"]["_meta"][SUBSCRIPTION_ID], 9);
        assert!(tagged(
            br#"{"jsonrpc":"2.0","method":"notifications/prompts/list_changed"}"#,
            &filter,
            &sub
        )
        .is_none());
        let u = br#"{"jsonrpc":"2.0","method":"notifications/resources/updated","params":{"uri":"a://x"}}"#;
        assert!(tagged(u, &filter, &sub).is_some());
        let other = br#"{"jsonrpc":"2.0","method":"notifications/resources/updated","params":{"uri":"a://y"}}"#;
        assert!(tagged(other, &filter, &sub).is_none());
    }

    #[test]
    fn an_older_client_keeps_its_version() {
        let r = Bytes::from_static(br#"{"protocolVersion":"2025-11-25"}"#);
        let v: Value = serde_json::from_slice(&with_version(&r, Some("2025-03-26"))).unwrap();
        assert_eq!(v["protocolVersion"], "2025-03-26");
        assert_eq!(with_version(&r, None), r);
    }
}
