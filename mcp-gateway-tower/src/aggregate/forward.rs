//! Sending to a backend: the request a backend gets, outside a session or
//! in a backend's part of one, with the re-initialization that keeps a
//! session whole when a backend forgets it.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use mcp_gateway_core::jsonrpc::Envelope;
use mcp_gateway_core::protocol::header_names;
use mcp_gateway_core::{ErrorKind, GatewayError, McpRequest, Principal, ProtocolVersion};
use serde_json::Value;

use super::service::Inner;
use super::session::{AggSession, Joined};
use super::stream::{collect, Rewriter};
use crate::body::{lock, Body};
use crate::error::error_response;
use crate::upstream::{own_request, Instance, NotSent};

/// What every request sent on the client's behalf copies from the
/// client's: the headers (no session id, no `Last-Event-ID`), the
/// principal, the protocol version.
#[derive(Clone)]
pub(crate) struct Outgoing {
    pub(crate) uri: Uri,
    pub(crate) headers: HeaderMap,
    pub(crate) principal: Option<Principal>,
    pub(crate) version: ProtocolVersion,
    pub(crate) from_header: bool,
}

impl Outgoing {
    pub(crate) fn of(parts: &http::request::Parts) -> Self {
        let mut parts = http::request::Parts::clone(parts);
        Self::take(&mut parts)
    }

    /// [`of`](Self::of), the headers moved out of `parts` (no copy).
    pub(crate) fn take(parts: &mut http::request::Parts) -> Self {
        let mut headers = std::mem::take(&mut parts.headers);
        headers.remove(&header_names::MCP_SESSION_ID);
        headers.remove(&header_names::LAST_EVENT_ID);
        headers.remove(header::CONTENT_LENGTH);
        let (version, from_header) = parts
            .extensions
            .get::<McpRequest>()
            .map_or((ProtocolVersion::DEFAULT_WITHOUT_HEADER, false), |m| {
                (m.protocol_version(), m.version_from_header())
            });
        Outgoing {
            uri: parts.uri.clone(),
            headers,
            principal: parts.extensions.get::<Principal>().cloned(),
            version,
            from_header,
        }
    }

    /// Requests for session `s` made without the client's request at hand
    /// (a call sent again after its backend's part was initialized again):
    /// the headers of the client's `initialize`.
    pub(crate) fn of_session(s: &AggSession) -> Self {
        Outgoing {
            uri: Uri::from_static("/"),
            headers: s.setup.headers.clone(),
            principal: s.setup.principal.clone(),
            version: ProtocolVersion::DEFAULT_WITHOUT_HEADER,
            from_header: false,
        }
    }

    /// The gateway's own requests (the catalog): no client.
    pub(crate) fn own(version: ProtocolVersion) -> Self {
        // The headers of the gateway's other requests of its own.
        let (parts, _) = own_request(Method::POST, Bytes::new(), None, None).into_parts();
        Outgoing {
            uri: Uri::from_static("/"),
            headers: parts.headers,
            principal: None,
            version,
            from_header: true,
        }
    }

    /// A `POST` of `body` to instance `instance`, in the backend session
    /// `joined` (if any); `parsed` is the body's envelope when the caller
    /// has it.
    pub(crate) fn post(
        &self,
        body: Bytes,
        joined: Option<&Joined>,
        instance: usize,
        parsed: Option<McpRequest>,
    ) -> Request<Body> {
        let mcp = parsed.or_else(|| {
            Envelope::parse(body.clone())
                .ok()
                .map(|env| McpRequest::new(body.clone(), env, self.version, self.from_header))
        });
        let mut req = self.request(Method::POST, Body::full(body), joined, instance);
        if let Some(m) = mcp {
            req.extensions_mut().insert(m);
        }
        req
    }

    /// A routed call: the client's parse and the route travel with the
    /// rewritten body (the backend's layers read the id, and the policy
    /// the route), with no second parse.
    pub(crate) fn post_routed(
        &self,
        body: Bytes,
        joined: Option<&Joined>,
        instance: usize,
        mcp: &McpRequest,
        routed: &super::Routed,
    ) -> Request<Body> {
        let mut req = self.request(Method::POST, Body::full(body), joined, instance);
        req.extensions_mut().insert(mcp.clone());
        req.extensions_mut().insert(routed.clone());
        req
    }

    /// A request without a body (`GET`, `DELETE`).
    pub(crate) fn request(
        &self,
        method: Method,
        body: Body,
        joined: Option<&Joined>,
        instance: usize,
    ) -> Request<Body> {
        let mut req = Request::new(body);
        *req.method_mut() = method;
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers.clone();
        if let Some(j) = joined {
            if let Some(sid) = &j.sid {
                req.headers_mut()
                    .insert(header_names::MCP_SESSION_ID, sid.clone());
            }
            if let Some(v) = &j.version {
                req.headers_mut()
                    .insert(header_names::MCP_PROTOCOL_VERSION, v.clone());
            }
        }
        req.extensions_mut().insert(Instance(instance));
        if let Some(p) = &self.principal {
            req.extensions_mut().insert(p.clone());
        }
        req
    }
}

fn unreachable(res: &Response<Body>) -> bool {
    res.extensions().get::<NotSent>().is_some()
}

/// A JSON-RPC error answered with `200` (the error is the backend's or
/// the routing's, the HTTP exchange went well).
pub(crate) fn rpc_error(
    id: Option<&mcp_gateway_core::RequestId>,
    kind: ErrorKind,
    message: String,
    data: Option<Value>,
) -> Response<Body> {
    let mut e = GatewayError::new(kind, message);
    if let Some(d) = data {
        e = e.with_data(&d);
    }
    let mut res = error_response(&e, id);
    *res.status_mut() = StatusCode::OK;
    res
}

impl Inner {
    /// Sends outside any session (stateless requests, the catalog): to an
    /// eligible instance, another if it cannot be connected to.
    pub(crate) async fn send_fresh(
        &self,
        m: usize,
        raw: bool,
        make: impl Fn(usize) -> Request<Body>,
    ) -> Response<Body> {
        let member = &self.members[m];
        let mut tried = Vec::new();
        loop {
            let Some(i) = member.instances.pick_except(&tried) else {
                let e = GatewayError::new(
                    ErrorKind::NoHealthyInstance,
                    format!("backend {} has no healthy instance", member.name),
                );
                return error_response(&e, None);
            };
            let req = make(i);
            let Ok(res) = if raw {
                tower_service::Service::call(&mut member.upstreams.clone(), req).await
            } else {
                member.stack.call(req).await
            };
            if unreachable(&res) && tried.len() + 1 < member.instances.len() {
                tried.push(i);
                continue;
            }
            return res;
        }
    }

    /// Sends in backend `m`'s part of session `s`, joining it first if it
    /// is not part yet; a backend that forgot the session (`404`), or an
    /// instance lost or out of reach, is initialized again and the request
    /// sent once more.
    pub(crate) async fn send_in(
        &self,
        s: &std::sync::Arc<AggSession>,
        m: usize,
        make: impl Fn(&Joined) -> Request<Body>,
    ) -> Response<Body> {
        let member = &self.members[m];
        let mut seen = None;
        for attempt in 0..2 {
            let joined = match (s.slots[m].current(), seen) {
                (Some(j), None) => j,
                // Rare: boxed, so the common path's future stays small.
                (cur, _) => {
                    match Box::pin(self.join(s, m, cur.map(|j| j.generation), true)).await {
                        Ok((j, _, _)) => j,
                        Err(res) => return res,
                    }
                }
            };
            if attempt == 0 && member.instances.is_lost(joined.instance) {
                tracing::info!(backend = %member.name, session = %s.id, "instance lost: the backend's part of the session is initialized on another");
                seen = Some(joined.generation);
                continue;
            }
            let Ok(res) = member.stack.call(make(&joined)).await;
            let forgot = res.status() == StatusCode::NOT_FOUND && joined.sid.is_some();
            if attempt == 0 && (forgot || unreachable(&res)) {
                tracing::info!(backend = %member.name, session = %s.id, forgot, "the backend's part of the session is initialized again");
                seen = Some(joined.generation);
                continue;
            }
            return res;
        }
        unreachable!("the loop returns on its second turn")
    }

    /// Initializes backend `m` for session `s` with the client's
    /// `initialize` (unless someone did since generation `seen`): returns
    /// its part, its `initialize` result (the whole message) and the
    /// events that came before it. `replay`: also send
    /// `notifications/initialized`, the log level and the subscriptions.
    pub(crate) async fn join(
        &self,
        s: &std::sync::Arc<AggSession>,
        m: usize,
        seen: Option<u64>,
        replay: bool,
    ) -> Result<(Joined, Value, Vec<Bytes>), Response<Body>> {
        let member = &self.members[m];
        let slot = &s.slots[m];
        let _one = slot.join.lock().await;
        tracing::debug!(backend = %member.name, session = %s.id, "joining");
        let old = slot.current();
        if let Some(cur) = &old {
            if seen != Some(cur.generation) {
                return Ok((cur.clone(), Value::Null, Vec::new()));
            }
        }
        let out = Outgoing {
            uri: Uri::from_static("/"),
            headers: s.setup.headers.clone(),
            principal: s.setup.principal.clone(),
            version: ProtocolVersion::DEFAULT_WITHOUT_HEADER,
            from_header: false,
        };
        let mut tried = Vec::new();
        let (res, instance) = loop {
            let Some(i) = member.instances.pick_except(&tried) else {
                let e = GatewayError::new(
                    ErrorKind::NoHealthyInstance,
                    format!("backend {} has no healthy instance", member.name),
                );
                return Err(error_response(&e, None));
            };
            let Ok(res) = member
                .stack
                .call(out.post(s.setup.init.clone(), None, i, None))
                .await;
            if unreachable(&res) && tried.len() + 1 < member.instances.len() {
                tried.push(i);
                continue;
            }
            break (res, i);
        };
        if !res.status().is_success() {
            tracing::debug!(backend = %member.name, session = %s.id, status = %res.status(), "join refused");
            return Err(res);
        }
        // A copy: the value shares the buffer the answer's head was read
        // into, which the session must not keep alive.
        let sid = res
            .headers()
            .get(&header_names::MCP_SESSION_ID)
            .and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok());
        let rw = Rewriter::new(self.me(), Some(s.clone()), m);
        let (answer, extra) = collect(res, Some(&rw)).await?;
        if answer.get("error").is_some() || answer.get("result").is_none() {
            let msg = answer
                .pointer("/error/message")
                .and_then(Value::as_str)
                .unwrap_or("no result");
            return Err(rpc_error(
                None,
                ErrorKind::UpstreamUnavailable,
                format!("backend {} refused initialize: {msg}", member.name),
                None,
            ));
        }
        let version = answer
            .pointer("/result/protocolVersion")
            .and_then(Value::as_str)
            .and_then(|v| HeaderValue::from_str(v).ok());
        let joined = Joined {
            instance,
            sid,
            version,
            generation: self.next_generation(),
        };
        if replay {
            self.replay(s, m, &out, &joined).await;
        }
        *lock(&slot.joined) = Some(joined.clone());
        if let Some(old) = old {
            if old.sid.is_some() && old.sid != joined.sid {
                let me = self.me();
                let out = out.clone();
                tokio::spawn(async move {
                    let req = out.request(Method::DELETE, Body::empty(), Some(&old), old.instance);
                    let _ = me.members[m].stack.call(req).await;
                });
            }
        }
        Ok((joined, answer, extra))
    }

    /// After a re-initialization: what the client had set up.
    async fn replay(&self, s: &AggSession, m: usize, out: &Outgoing, joined: &Joined) {
        let member = &self.members[m];
        let mut bodies = vec![Bytes::from_static(crate::upstream::INITIALIZED)];
        if let Some(level) = lock(&s.level).clone() {
            bodies.push(level);
        }
        let subs: Vec<String> = lock(&s.slots[m].subscriptions).iter().cloned().collect();
        for (k, uri) in subs.iter().enumerate() {
            let v = serde_json::json!({"jsonrpc": "2.0", "id": format!("mcpgw-replay-{k}"), "method": "resources/subscribe", "params": {"uri": uri}});
            bodies.push(Bytes::from(v.to_string()));
        }
        for b in bodies {
            let req = out.post(b, Some(joined), joined.instance, None);
            let Ok(res) = member.stack.call(req).await;
            let _ = http_body_util::BodyExt::collect(res.into_body()).await;
        }
    }
}
