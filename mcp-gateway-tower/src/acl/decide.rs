//! Deciding a call, and filtering list results in JSON answers.

#[allow(unused_imports)]
use super::*;

/// Which list a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListKind {
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

    /// Checks one message; `Err` is the response to send instead. A
    /// request an aggregate routed is checked against its backend and the
    /// name it has there.
    fn guard(
        &self,
        principal: Option<&Principal>,
        body: &Bytes,
        m: &Message,
        routed: Option<&Routed>,
    ) -> Result<(), GatewayError> {
        let Some(method) = m.method() else {
            return Ok(());
        };
        let backend = routed.map_or(&self.backend, |r| r.backend());
        let owned;
        let target = match method {
            Method::ToolsCall => Target::Tool(own_target(m, routed)?),
            Method::PromptsGet => Target::Prompt(own_target(m, routed)?),
            Method::ResourcesRead => Target::Resource(own_target(m, routed)?),
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
            if pins.is_blocked(backend, name) {
                return Err(GatewayError::new(
                    ErrorKind::ToolChanged,
                    format!("tool '{name}' changed its definition since it was approved; ask an operator to review it"),
                )
                .with_data(&serde_json::json!({"type": "tool", "name": name, "reason": "definition changed"})));
            }
        }
        let access = Access {
            principal,
            backend,
            method: method.as_str(),
            target,
        };
        match self.policy.check(&access) {
            Decision::Allow => Ok(()),
            Decision::Deny(reason) => {
                tracing::info!(
                    principal = principal.map(|p| p.subject()),
                    backend = %backend,
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

    pub(crate) fn filter_bytes(
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

/// The target of `m`, as its backend names it when an aggregate routed it.
fn own_target<'a>(m: &'a Message, routed: Option<&'a Routed>) -> Result<&'a str, GatewayError> {
    let name = required(m)?;
    Ok(routed.map_or(name, Routed::name))
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
        let routed = req.extensions().get::<Routed>();
        if let Some(mcp) = req.extensions().get::<McpRequest>() {
            for m in mcp.envelope().messages() {
                if let Err(e) = shared.guard(principal.as_ref(), mcp.body(), m, routed) {
                    let mut res = error_response(&e, m.id());
                    res.extensions_mut().insert(match routed {
                        Some(r) => BackendName(r.backend().clone()),
                        None => shared.backend_name(),
                    });
                    return Box::pin(std::future::ready(Ok(res)));
                }
                if !shared.lists {
                    continue;
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
        let lists = shared.lists;
        Box::pin(async move {
            let mut res = fut.await?;
            // In front of an aggregate, the backend that answered named itself.
            if lists || res.extensions().get::<BackendName>().is_none() {
                res.extensions_mut().insert(name);
            }
            match list {
                Some((kind, id, shared, principal)) if res.status().is_success() => {
                    Ok(filter_response(shared, principal, kind, id, res).await)
                }
                _ => Ok(res),
            }
        })
    }
}
