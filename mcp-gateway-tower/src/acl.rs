//! Tool-level authorization: which principal may use which tool, prompt
//! and resource, on which backend.
//!
//! [`AclLayer`] sits after the JSON-RPC layer (it reads the parsed
//! request, so on 2026-07-28 the header/body consistency check has already
//! run and a mismatched `Mcp-Name` header cannot smuggle a denied call). It
//! asks a [`ToolPolicy`] about every `tools/call`, `prompts/get`,
//! `resources/read`, `resources/subscribe` / `unsubscribe` and
//! `completion/complete`; a denial is answered by the gateway with a
//! JSON-RPC error (-32053) naming the target, and nothing is forwarded.
//!
//! List results (`tools/list`, `prompts/list`, `resources/list`,
//! `resources/templates/list`) are filtered so a principal never sees what
//! it may not use, in JSON responses and inside SSE streams alike; every
//! other member (`nextCursor` included) is kept.
//!
//! With [`ToolPins`] attached, the layer also pins tool definitions (see
//! [`crate::pinning`]).

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::StreamExt;
use http::header::{self, HeaderValue};
use http::{Request, Response};
use http_body::Frame;
use http_body_util::BodyExt;
use mcp_gateway_core::sse::{encode_event, SseScanner};
use mcp_gateway_core::{
    ErrorKind, GatewayError, McpRequest, Message, Method, Principal, RequestId,
};
use serde_json::Value;
use tower_layer::Layer;
use tower_service::Service;

use crate::body::{Body, BoxFuture};
use crate::error::error_response;
use crate::pinning::ToolPins;
use thread_local::ThreadLocal;

/// The backend a request went to, by name: in the response extensions for
/// layers outside the ACL (the audit log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendName(pub Arc<str>);

/// What a request wants to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// A tool, by name.
    Tool(&'a str),
    /// A prompt, by name.
    Prompt(&'a str),
    /// A resource, by URI.
    Resource(&'a str),
    /// A resource template, by URI template (in `resources/templates/list`).
    ResourceTemplate(&'a str),
}

impl Target<'_> {
    /// `"tool"`, `"prompt"`, `"resource"` or `"resourceTemplate"`.
    pub fn kind(&self) -> &'static str {
        match self {
            Target::Tool(_) => "tool",
            Target::Prompt(_) => "prompt",
            Target::Resource(_) => "resource",
            Target::ResourceTemplate(_) => "resourceTemplate",
        }
    }

    /// The name or URI.
    pub fn name(&self) -> &str {
        match self {
            Target::Tool(n)
            | Target::Prompt(n)
            | Target::Resource(n)
            | Target::ResourceTemplate(n) => n,
        }
    }
}

/// One question to a policy.
#[derive(Debug, Clone, Copy)]
pub struct Access<'a> {
    /// Who asks (`None`: no authentication layer, or anonymous allowed).
    pub principal: Option<&'a Principal>,
    /// The backend's name.
    pub backend: &'a str,
    /// The JSON-RPC method (`tools/call`, `tools/list`, …).
    pub method: &'a str,
    /// What is used or listed.
    pub target: Target<'a>,
}

/// A policy's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead.
    Allow,
    /// Refused; the reason (if any) is logged, not sent to the client.
    Deny(Option<String>),
}

impl Decision {
    /// Whether this is [`Decision::Allow`].
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow)
    }
}

/// Decides who may use what. Called on the request path for every guarded
/// call and for every item of a list result: keep it fast and
/// non-blocking (precompute; swap whole policies atomically).
pub trait ToolPolicy: Send + Sync + 'static {
    /// The decision for one access.
    fn check(&self, access: &Access<'_>) -> Decision;
}

impl<F> ToolPolicy for F
where
    F: Fn(&Access<'_>) -> Decision + Send + Sync + 'static,
{
    fn check(&self, access: &Access<'_>) -> Decision {
        self(access)
    }
}

impl<P: ToolPolicy + ?Sized> ToolPolicy for Arc<P> {
    fn check(&self, access: &Access<'_>) -> Decision {
        (**self).check(access)
    }
}

/// Largest JSON list response the layer buffers to filter (and largest
/// SSE event it rewrites). Larger ones are refused with 502, never passed
/// unfiltered.
const MAX_LIST_BYTES: usize = 16 << 20;

struct Shared {
    policy: Arc<dyn ToolPolicy>,
    backend: Arc<str>,
    /// Each thread's copy of `backend`, for the name every response
    /// carries: a count only that thread moves (the shared name's count
    /// would move between cores on every call).
    backend_here: ThreadLocal<Arc<str>>,
    pins: Option<Arc<ToolPins>>,
}

impl Shared {
    /// The backend's name for a response: this thread's copy.
    fn backend_name(&self) -> BackendName {
        BackendName(
            self.backend_here
                .get_or(|| Arc::from(&*self.backend))
                .clone(),
        )
    }
}

/// Builds [`Acl`] services.
#[derive(Clone)]
pub struct AclLayer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for AclLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AclLayer")
            .field("backend", &self.shared.backend)
            .finish()
    }
}

impl AclLayer {
    /// Guards the backend named `backend` with `policy`.
    pub fn new(policy: impl ToolPolicy, backend: impl Into<Arc<str>>) -> Self {
        Self::shared(Arc::new(policy), backend, None)
    }

    /// Like [`new`](Self::new) with a shared policy and optional pins.
    pub fn shared(
        policy: Arc<dyn ToolPolicy>,
        backend: impl Into<Arc<str>>,
        pins: Option<Arc<ToolPins>>,
    ) -> Self {
        AclLayer {
            shared: Arc::new(Shared {
                policy,
                backend: backend.into(),
                backend_here: ThreadLocal::new(),
                pins,
            }),
        }
    }

    /// Pins tool definitions with `pins`.
    pub fn with_pins(self, pins: Arc<ToolPins>) -> Self {
        let s = &self.shared;
        Self::shared(s.policy.clone(), s.backend.clone(), Some(pins))
    }
}

impl<S> Layer<S> for AclLayer {
    type Service = Acl<S>;
    fn layer(&self, inner: S) -> Acl<S> {
        Acl {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The authorization service. See the module docs.
#[derive(Clone)]
pub struct Acl<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Acl<S> {
    inner_accessors!();
}

impl<S> std::fmt::Debug for Acl<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acl").finish_non_exhaustive()
    }
}

/// Which list a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListKind {
    Tools,
    Prompts,
    Resources,
    Templates,
}

impl ListKind {
    fn of(m: &Method) -> Option<ListKind> {
        Some(match m {
            Method::ToolsList => ListKind::Tools,
            Method::PromptsList => ListKind::Prompts,
            Method::ResourcesList => ListKind::Resources,
            Method::ResourcesTemplatesList => ListKind::Templates,
            _ => return None,
        })
    }

    /// The result member holding the items, and the item member naming one.
    fn members(self) -> (&'static str, &'static str) {
        match self {
            ListKind::Tools => ("tools", "name"),
            ListKind::Prompts => ("prompts", "name"),
            ListKind::Resources => ("resources", "uri"),
            ListKind::Templates => ("resourceTemplates", "uriTemplate"),
        }
    }

    fn target(self, name: &str) -> Target<'_> {
        match self {
            ListKind::Tools => Target::Tool(name),
            ListKind::Prompts => Target::Prompt(name),
            ListKind::Resources => Target::Resource(name),
            ListKind::Templates => Target::ResourceTemplate(name),
        }
    }
}

/// The `params` members the guarded methods other than the three the
/// envelope parser already extracts need (cold path: subscribe and
/// completion are rare).
fn params_target(body: &Bytes, m: &Message) -> Option<(String, bool)> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let v = match (&v, m.id()) {
        (Value::Array(items), Some(id)) => items
            .iter()
            .find(|i| {
                i.get("id").map(|x| x.to_string().into_bytes()) == Some(id.as_bytes().to_vec())
            })?
            .clone(),
        _ => v,
    };
    let params = v.get("params")?;
    match m.method()? {
        Method::CompletionComplete => {
            let r = params.get("ref")?;
            match r.get("type")?.as_str()? {
                "ref/prompt" => Some((r.get("name")?.as_str()?.to_owned(), true)),
                _ => Some((r.get("uri")?.as_str()?.to_owned(), false)),
            }
        }
        _ => Some((params.get("uri")?.as_str()?.to_owned(), false)),
    }
}

impl Shared {
    fn access<'a>(
        &'a self,
        principal: Option<&'a Principal>,
        method: &'a str,
        target: Target<'a>,
    ) -> Access<'a> {
        Access {
            principal,
            backend: &self.backend,
            method,
            target,
        }
    }

    /// Checks one message; `Err` is the response to send instead.
    fn guard(
        &self,
        principal: Option<&Principal>,
        body: &Bytes,
        m: &Message,
    ) -> Result<(), GatewayError> {
        let Some(method) = m.method() else {
            return Ok(());
        };
        let owned;
        let target = match method {
            Method::ToolsCall => Target::Tool(required(m)?),
            Method::PromptsGet => Target::Prompt(required(m)?),
            Method::ResourcesRead => Target::Resource(required(m)?),
            Method::ResourcesSubscribe
            | Method::ResourcesUnsubscribe
            | Method::CompletionComplete => {
                owned = params_target(body, m).ok_or_else(|| {
                    GatewayError::new(
                        ErrorKind::InvalidParams,
                        format!("{} needs its target in params", method.as_str()),
                    )
                })?;
                match (method, owned.1) {
                    (Method::CompletionComplete, true) => Target::Prompt(&owned.0),
                    _ => Target::Resource(&owned.0),
                }
            }
            _ => return Ok(()),
        };
        if let (Target::Tool(name), Some(pins)) = (target, &self.pins) {
            if pins.is_blocked(&self.backend, name) {
                return Err(GatewayError::new(
                    ErrorKind::ToolChanged,
                    format!("tool '{name}' changed its definition since it was approved; ask an operator to review it"),
                )
                .with_data(&serde_json::json!({"type": "tool", "name": name, "reason": "definition changed"})));
            }
        }
        match self
            .policy
            .check(&self.access(principal, method.as_str(), target))
        {
            Decision::Allow => Ok(()),
            Decision::Deny(reason) => {
                tracing::info!(
                    principal = principal.map(|p| p.subject()),
                    backend = %self.backend,
                    kind = target.kind(),
                    name = target.name(),
                    reason = reason.as_deref(),
                    "access denied"
                );
                Err(GatewayError::new(
                    ErrorKind::Denied,
                    format!(
                        "{} '{}' is not allowed for this caller",
                        target.kind(),
                        target.name()
                    ),
                )
                .with_data(&serde_json::json!({"type": target.kind(), "name": target.name()})))
            }
        }
    }

    /// Removes what `principal` may not see from one JSON-RPC message (or
    /// a batch); true if anything changed.
    fn filter_message(
        &self,
        principal: Option<&Principal>,
        kind: ListKind,
        msg: &mut Value,
    ) -> bool {
        if let Value::Array(items) = msg {
            let mut changed = false;
            for m in items {
                changed |= self.filter_message(principal, kind, m);
            }
            return changed;
        }
        let (member, key) = kind.members();
        let Some(list) = msg
            .get_mut("result")
            .and_then(|r| r.get_mut(member))
            .and_then(Value::as_array_mut)
        else {
            return false;
        };
        let method = match kind {
            ListKind::Tools => "tools/list",
            ListKind::Prompts => "prompts/list",
            ListKind::Resources => "resources/list",
            ListKind::Templates => "resources/templates/list",
        };
        let before = list.len();
        let mut pin_changed = false;
        list.retain(|item| {
            let Some(name) = item.get(key).and_then(Value::as_str) else {
                // Unnamed items cannot be authorized: hide them.
                return false;
            };
            if kind == ListKind::Tools {
                if let Some(pins) = &self.pins {
                    let (visible, rewrote) = pins.observe(&self.backend, name, item);
                    pin_changed |= rewrote;
                    if !visible {
                        return false;
                    }
                }
            }
            self.policy
                .check(&self.access(principal, method, kind.target(name)))
                .is_allow()
        });
        list.len() != before || pin_changed
    }

    fn filter_bytes(
        &self,
        principal: Option<&Principal>,
        kind: ListKind,
        data: &[u8],
    ) -> Option<Vec<u8>> {
        let mut v: Value = serde_json::from_slice(data).ok()?;
        self.filter_message(principal, kind, &mut v)
            .then(|| serde_json::to_vec(&v).ok())
            .flatten()
    }
}

fn required(m: &Message) -> Result<&str, GatewayError> {
    m.target().ok_or_else(|| {
        GatewayError::new(
            ErrorKind::InvalidParams,
            format!(
                "{} needs params.name (or params.uri)",
                m.method().map_or("", Method::as_str)
            ),
        )
    })
}

impl<S> Service<Request<Body>> for Acl<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> BoxFuture {
        let shared = &self.shared;
        let principal = req.extensions().get::<Principal>().cloned();
        let mut list = None;
        if let Some(mcp) = req.extensions().get::<McpRequest>() {
            for m in mcp.envelope().messages() {
                if let Err(e) = shared.guard(principal.as_ref(), mcp.body(), m) {
                    let mut res = error_response(&e, m.id());
                    res.extensions_mut().insert(shared.backend_name());
                    return Box::pin(std::future::ready(Ok(res)));
                }
                if let Some(k) = m.method().and_then(ListKind::of) {
                    list = Some((k, m.id().cloned()));
                }
            }
        }
        // The service polled ready, as it is: no clone of the stack below
        // (see `Audit::call`).
        let name = shared.backend_name();
        // Only a list's answer needs the layer's state (to filter it): the
        // shared count is left alone on every other call.
        let list = list.map(|(kind, id)| (kind, id, shared.clone(), principal));
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut res = fut.await?;
            res.extensions_mut().insert(name);
            match list {
                Some((kind, id, shared, principal)) if res.status().is_success() => {
                    Ok(filter_response(shared, principal, kind, id, res).await)
                }
                _ => Ok(res),
            }
        })
    }
}

fn is_sse(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("text/event-stream"))
}

async fn filter_response(
    shared: Arc<Shared>,
    principal: Option<Principal>,
    kind: ListKind,
    id: Option<RequestId>,
    res: Response<Body>,
) -> Response<Body> {
    let (mut parts, body) = res.into_parts();
    if is_sse(&parts.headers) {
        parts.headers.remove(header::CONTENT_LENGTH);
        return Response::from_parts(parts, Body::new(filter_sse(shared, principal, kind, body)));
    }
    let bytes = match http_body_util::Limited::new(body, MAX_LIST_BYTES)
        .collect()
        .await
    {
        Ok(c) => c.to_bytes(),
        Err(e) => {
            let err = GatewayError::new(
                ErrorKind::UpstreamUnavailable,
                format!("Bad Gateway: the list response could not be read for filtering: {e}"),
            );
            return error_response(&err, id.as_ref());
        }
    };
    let out = match shared.filter_bytes(principal.as_ref(), kind, &bytes) {
        Some(v) => Bytes::from(v),
        None => bytes,
    };
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(out.len()));
    Response::from_parts(parts, Body::full(out))
}

/// An SSE body whose list results are filtered; every other event is
/// re-emitted with the same `event`, `id`, `retry` and data (comments,
/// which carry nothing for the client, are dropped).
fn filter_sse(
    shared: Arc<Shared>,
    principal: Option<Principal>,
    kind: ListKind,
    body: Body,
) -> http_body_util::StreamBody<
    impl futures_util::Stream<Item = Result<Frame<Bytes>, crate::BoxError>> + Send,
> {
    let state = (body, SseScanner::collecting(MAX_LIST_BYTES), false);
    let stream = futures_util::stream::unfold(state, move |(mut body, mut scanner, done)| {
        let shared = shared.clone();
        let principal = principal.clone();
        async move {
            if done {
                return None;
            }
            loop {
                match body.frame().await {
                    None => return None,
                    Some(Err(e)) => return Some((Err(e), (body, scanner, true))),
                    Some(Ok(frame)) => {
                        let Ok(data) = frame.into_data() else {
                            continue;
                        };
                        let mut out = Vec::new();
                        let mut oversized = false;
                        scanner.feed(&data, |ev| {
                            if ev.oversized {
                                oversized = true;
                                return;
                            }
                            if let Some(r) = ev.retry {
                                out.extend_from_slice(format!("retry: {r}\n").as_bytes());
                            }
                            let rewritten = shared.filter_bytes(principal.as_ref(), kind, ev.data);
                            let data = match &rewritten {
                                Some(v) => String::from_utf8_lossy(v),
                                None => String::from_utf8_lossy(ev.data),
                            };
                            encode_event(
                                &mut out,
                                ev.event
                                    .map(|e| std::str::from_utf8(e).unwrap_or("message")),
                                ev.id.map(|i| std::str::from_utf8(i).unwrap_or("")),
                                &data,
                            );
                        });
                        if oversized {
                            let e: crate::BoxError = "an SSE event of a list response exceeds 16 MiB; refusing to pass it unfiltered".into();
                            return Some((Err(e), (body, scanner, true)));
                        }
                        if !out.is_empty() {
                            return Some((
                                Ok(Frame::data(Bytes::from(out))),
                                (body, scanner, false),
                            ));
                        }
                    }
                }
            }
        }
    });
    http_body_util::StreamBody::new(stream.boxed())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jsonrpc::JsonRpcLayer;
    use tower::ServiceExt;

    /// Allows only `get_*` tools, `greeting` prompts and `file:///public/*`.
    fn policy(a: &Access<'_>) -> Decision {
        let ok = match a.target {
            Target::Tool(n) => n.starts_with("get_"),
            Target::Prompt(n) => n == "greeting",
            Target::Resource(u) | Target::ResourceTemplate(u) => u.starts_with("file:///public/"),
        };
        if ok {
            Decision::Allow
        } else {
            Decision::Deny(None)
        }
    }

    async fn send(body: &str) -> (u16, Value, bool) {
        let reached = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let r = reached.clone();
        let backend = tower::service_fn(move |_req: Request<Body>| {
            r.store(true, std::sync::atomic::Ordering::SeqCst);
            async {
                Ok::<_, Infallible>(Response::new(Body::from(
                    r#"{"jsonrpc":"2.0","id":1,"result":{}}"#,
                )))
            }
        });
        let svc = JsonRpcLayer::default().layer(AclLayer::new(policy, "b").layer(backend));
        let req = Request::post("/mcp")
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-11-25")
            .body(Body::from(body.to_owned()))
            .unwrap();
        let res = svc.oneshot(req).await.unwrap();
        let status = res.status().as_u16();
        let b = res.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&b).unwrap_or(Value::Null),
            reached.load(std::sync::atomic::Ordering::SeqCst),
        )
    }

    #[tokio::test]
    async fn every_guarded_method_is_decided_before_forwarding() {
        for (body, allowed) in [
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_x"}}"#,
                true,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"rm_x"}}"#,
                false,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"greeting"}}"#,
                true,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"secrets"}}"#,
                false,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///public/a"}}"#,
                true,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///etc/passwd"}}"#,
                false,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"resources/subscribe","params":{"uri":"file:///public/a"}}"#,
                true,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"resources/subscribe","params":{"uri":"file:///etc/passwd"}}"#,
                false,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"resources/unsubscribe","params":{"uri":"file:///etc/passwd"}}"#,
                false,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"greeting"},"argument":{"name":"a","value":"x"}}}"#,
                true,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"secrets"},"argument":{"name":"a","value":"x"}}}"#,
                false,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/resource","uri":"file:///etc/{x}"},"argument":{"name":"x","value":"p"}}}"#,
                false,
            ),
            (r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#, true),
        ] {
            let (status, v, reached) = send(body).await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(reached, allowed, "{body}");
            if !allowed {
                assert_eq!(v["error"]["code"], -32053, "{body}");
                assert_eq!(v["id"], 1, "{body}");
            }
        }
    }

    #[tokio::test]
    async fn a_guarded_call_without_its_target_is_invalid_params() {
        let (_, v, reached) =
            send(r#"{"jsonrpc":"2.0","id":1,"method":"resources/subscribe","params":{}}"#).await;
        assert!(!reached);
        assert_eq!(v["error"]["code"], -32602);
        let (_, v, reached) =
            send(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}"#).await;
        assert!(!reached);
        assert_eq!(v["error"]["code"], -32602);
    }
}
