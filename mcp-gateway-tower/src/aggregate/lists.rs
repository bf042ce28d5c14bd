//! Answers merged from every backend: the lists with their cursors,
//! `initialize` and `server/discover`, `logging/setLevel`,
//! `subscriptions/listen`; and the catalog of every backend's names.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::header::HeaderValue;
use http::{Method as HttpMethod, Response};
use mcp_gateway_core::protocol::header_names;
use mcp_gateway_core::{ErrorKind, McpRequest, ProtocolVersion};
use serde_json::{json, Map, Value};

use super::forward::{rpc_error, Outgoing};
use super::names::{Cursor, Kind};
use super::service::Inner;
use super::session::{AggSession, Joined};
use super::stream::{collect, is_sse, merge, Rewriter};
use super::PrefixMode;
use crate::body::{lock, Body, BoxError};

/// Pages one backend's list may have when the gateway lists it whole.
const MAX_PAGES: usize = 1000;

fn id_text(mcp: &McpRequest) -> String {
    mcp.first_id()
        .and_then(|i| std::str::from_utf8(i.as_bytes()).ok())
        .unwrap_or("null")
        .to_owned()
}

fn request_body(id: &str, method: &str, params: &Value) -> Bytes {
    Bytes::from(format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"{method}","params":{params}}}"#
    ))
}

fn ok(mcp: &McpRequest, result: Value, extra: Vec<Bytes>, sse: bool) -> Response<Body> {
    super::service::ok_result(mcp.first_id(), result, extra, sse)
}

/// Merges capability objects: a key is present if any has it; booleans
/// are or-ed, objects merged.
pub(crate) fn merge_caps(into: &mut Value, from: &Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                match a.get_mut(k) {
                    Some(existing) => merge_caps(existing, v),
                    None => {
                        a.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (Value::Bool(a), Value::Bool(b)) => *a |= *b,
        _ => {}
    }
}

impl Inner {
    /// The merged `initialize` result.
    pub(crate) fn merge_initialize(
        &self,
        answers: &[(usize, Value)],
        failed: &[(usize, String)],
    ) -> Value {
        let mut caps = json!({});
        let mut version: Option<String> = None;
        let mut instructions = Vec::new();
        for (m, a) in answers {
            let r = &a["result"];
            if let Some(v) = r.get("protocolVersion").and_then(Value::as_str) {
                if version.as_deref().is_none_or(|cur| v < cur) {
                    version = Some(v.to_owned());
                }
            }
            if let Some(c) = r.get("capabilities") {
                merge_caps(&mut caps, c);
            }
            if let Some(i) = r.get("instructions").and_then(Value::as_str) {
                instructions.push(format!("[{}] {i}", self.members[*m].name));
            }
        }
        if !failed.is_empty() {
            let names: Vec<&str> = failed
                .iter()
                .map(|(m, _)| &*self.members[*m].name)
                .collect();
            tracing::debug!(backends = ?names, "left out of the session");
        }
        let mut out = json!({
            "protocolVersion": version.unwrap_or_else(|| "2025-11-25".into()),
            "capabilities": caps,
            "serverInfo": {"name": "mcp-gateway", "version": env!("CARGO_PKG_VERSION")},
        });
        if !instructions.is_empty() {
            out["instructions"] = Value::String(instructions.join("\n\n"));
        }
        out
    }

    /// One page of the merged list of `kind`.
    pub(crate) async fn list(
        &self,
        kind: Kind,
        session: Option<Arc<AggSession>>,
        out: &Outgoing,
        mcp: &McpRequest,
    ) -> Response<Body> {
        let id = id_text(mcp);
        let Ok(v) = serde_json::from_slice::<Value>(mcp.body()) else {
            return rpc_error(mcp.first_id(), ErrorKind::Parse, "Parse error".into(), None);
        };
        let params = match v.get("params") {
            Some(Value::Object(p)) => p.clone(),
            _ => Map::new(),
        };
        let n = self.members.len();
        let mut cur = match params.get("cursor") {
            None | Some(Value::Null) => Cursor {
                member: 0,
                inner: None,
            },
            Some(Value::String(c)) => match Cursor::decode(c, n) {
                Some(c) => c,
                None => {
                    return rpc_error(
                        mcp.first_id(),
                        ErrorKind::InvalidParams,
                        format!("Invalid cursor: {c}"),
                        None,
                    )
                }
            },
            Some(_) => {
                return rpc_error(
                    mcp.first_id(),
                    ErrorKind::InvalidParams,
                    "Invalid cursor: not a string".into(),
                    None,
                )
            }
        };
        let (array, key) = kind.members();
        let mut extra_all = Vec::new();
        let mut sse = false;
        for _ in 0..n * MAX_PAGES {
            let m = cur.member;
            let next_member = (m + 1 < n).then(|| Cursor {
                member: m + 1,
                inner: None,
            });
            let mut p = params.clone();
            match &cur.inner {
                Some(c) => {
                    p.insert("cursor".into(), Value::String(c.clone()));
                }
                None => {
                    p.remove("cursor");
                }
            }
            let body = request_body(&id, kind.list_method(), &Value::Object(p));
            let res = self.send(session.as_ref(), m, out, body, None).await;
            let rw = Rewriter::new(self.me(), session.clone(), m);
            sse |= is_sse(res.headers());
            let page = if res.status().is_success() {
                collect(res, Some(&rw)).await.ok()
            } else {
                None
            };
            let Some((answer, extra)) = page else {
                tracing::warn!(backend = %self.members[m].name, list = kind.list_method(), "a backend's list could not be read: its entries are left out");
                match next_member {
                    Some(c) => {
                        cur = c;
                        continue;
                    }
                    None => break,
                }
            };
            extra_all.extend(extra);
            let Some(Value::Object(mut result)) = answer.get("result").cloned() else {
                // Not offered there (-32601), or refused: nothing to list.
                if let Some(e) = answer.get("error") {
                    tracing::debug!(backend = %self.members[m].name, error = %e, list = kind.list_method(), "no list from this backend");
                }
                match next_member {
                    Some(c) => {
                        cur = c;
                        continue;
                    }
                    None => break,
                }
            };
            let mut items = match result.remove(array) {
                Some(Value::Array(items)) => items,
                _ => Vec::new(),
            };
            self.naming.catalog.add(
                m,
                kind,
                items
                    .iter()
                    .filter_map(|i| i.get(key).and_then(Value::as_str)),
            );
            if self.cfg.prefix == PrefixMode::Never {
                if let Some(report) = self.conflict_report() {
                    tracing::error!(conflicts = %report, "backends expose the same names while aggregate.prefix = \"never\": the shared names are refused until one is renamed");
                }
            }
            for item in &mut items {
                let Some(name) = item.get(key).and_then(Value::as_str) else {
                    continue;
                };
                let client = self.naming.client_name(kind, m, name);
                if client != name {
                    let client = client.into_owned();
                    item[key] = Value::String(client);
                }
            }
            let next = match result.get("nextCursor").and_then(Value::as_str) {
                Some(c) if !c.is_empty() => Some(Cursor {
                    member: m,
                    inner: Some(c.to_owned()),
                }),
                _ => next_member,
            };
            if items.is_empty() {
                if let Some(c) = next {
                    cur = c;
                    continue;
                }
            }
            result.insert(array.into(), Value::Array(items));
            match next {
                Some(c) => {
                    result.insert("nextCursor".into(), Value::String(c.encode()));
                }
                None => {
                    result.remove("nextCursor");
                }
            }
            if self.cfg.private_lists && result.contains_key("cacheScope") {
                result.insert("cacheScope".into(), Value::String("private".into()));
            }
            return ok(mcp, Value::Object(result), extra_all, sse);
        }
        ok(mcp, json!({ array: [] }), extra_all, sse)
    }

    /// `logging/setLevel`: to every backend of the session; kept for the
    /// backends that join later.
    pub(crate) async fn set_level(
        &self,
        session: Option<Arc<AggSession>>,
        out: &Outgoing,
        mcp: &McpRequest,
    ) -> Response<Body> {
        let Some(s) = session else {
            return rpc_error(
                mcp.first_id(),
                ErrorKind::MethodNotFound,
                "Method not found: logging/setLevel".into(),
                None,
            );
        };
        *lock(&s.level) = Some(mcp.body().clone());
        let all = s.joined().into_iter().map(|(m, _)| {
            let s = s.clone();
            async move {
                let res = self
                    .send(Some(&s), m, out, mcp.body().clone(), Some(mcp.clone()))
                    .await;
                let rw = Rewriter::new(self.me(), Some(s.clone()), m);
                let sse = is_sse(res.headers());
                match res.status().is_success() {
                    true => collect(res, Some(&rw)).await.ok().map(|(a, e)| (a, e, sse)),
                    false => None,
                }
            }
        });
        let mut extra = Vec::new();
        let mut first_error = None;
        let mut any = false;
        let mut sse = false;
        for (answer, ev, was_sse) in futures_util::future::join_all(all)
            .await
            .into_iter()
            .flatten()
        {
            extra.extend(ev);
            sse |= was_sse;
            if answer.get("result").is_some() {
                any = true;
            } else if first_error.is_none() {
                first_error = answer.get("error").cloned();
            }
        }
        if any || first_error.is_none() {
            return ok(mcp, json!({}), extra, sse);
        }
        let msg = first_error
            .as_ref()
            .and_then(|e| e.get("message"))
            .and_then(Value::as_str)
            .unwrap_or("refused")
            .to_owned();
        rpc_error(mcp.first_id(), ErrorKind::InvalidParams, msg, None)
    }

    /// `server/discover` (2026-07-28): versions every backend supports,
    /// capabilities any has.
    pub(crate) async fn discover_merged(&self, out: &Outgoing, mcp: &McpRequest) -> Response<Body> {
        let all = (0..self.members.len()).map(|m| async move {
            let res = self
                .send(None, m, out, mcp.body().clone(), Some(mcp.clone()))
                .await;
            let sse = is_sse(res.headers());
            if !res.status().is_success() {
                return Err(res);
            }
            let (parts, body) = res.into_parts();
            match collect(Response::from_parts(parts.clone(), body), None).await {
                Ok((a, _)) if a.get("result").is_some() => Ok((m, a, sse)),
                Ok((a, _)) => Err(Response::from_parts(parts, Body::full(a.to_string()))),
                Err(res) => Err(res),
            }
        });
        let mut answers = Vec::new();
        let mut refused = None;
        for r in futures_util::future::join_all(all).await {
            match r {
                Ok(a) => answers.push(a),
                Err(res) => {
                    refused.get_or_insert(res);
                }
            }
        }
        let sse = answers.iter().any(|(_, _, s)| *s);
        if answers.is_empty() {
            // Every backend refused: the request's own fault (a version
            // none supports, missing `_meta`) is answered as they did.
            return refused.unwrap_or_else(|| {
                rpc_error(
                    mcp.first_id(),
                    ErrorKind::UpstreamUnavailable,
                    "Bad Gateway: no backend answered server/discover".into(),
                    None,
                )
            });
        }
        let mut versions: Option<Vec<String>> = None;
        let mut caps = json!({});
        let mut instructions = Vec::new();
        let mut ttl: Option<u64> = None;
        let mut private = self.cfg.private_lists;
        let mut result_type = None;
        for (m, a, _) in &answers {
            let r = &a["result"];
            let vs: Vec<String> = r
                .get("supportedVersions")
                .and_then(Value::as_array)
                .map(|v| {
                    v.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            versions = Some(match versions {
                None => vs,
                Some(cur) => cur.into_iter().filter(|v| vs.contains(v)).collect(),
            });
            if let Some(c) = r.get("capabilities") {
                merge_caps(&mut caps, c);
            }
            if let Some(i) = r.get("instructions").and_then(Value::as_str) {
                instructions.push(format!("[{}] {i}", self.members[*m].name));
            }
            if let Some(t) = r.get("ttlMs").and_then(Value::as_u64) {
                ttl = Some(ttl.map_or(t, |x| x.min(t)));
            }
            private |= r.get("cacheScope").and_then(Value::as_str) == Some("private");
            if result_type.is_none() {
                result_type = r.get("resultType").cloned();
            }
        }
        let server_info = json!({"name": "mcp-gateway", "version": env!("CARGO_PKG_VERSION")});
        let mut result = json!({
            "supportedVersions": versions.unwrap_or_default(),
            "capabilities": caps,
            "serverInfo": server_info,
            "_meta": {"io.modelcontextprotocol/serverInfo": server_info},
        });
        if !instructions.is_empty() {
            result["instructions"] = Value::String(instructions.join("\n\n"));
        }
        if let Some(t) = ttl {
            result["ttlMs"] = json!(t);
            result["cacheScope"] = json!(if private { "private" } else { "public" });
        }
        if let Some(rt) = result_type {
            result["resultType"] = rt;
        }
        ok(mcp, result, Vec::new(), sse)
    }

    /// `subscriptions/listen` (2026-07-28): every backend's stream, merged.
    pub(crate) async fn listen(
        &self,
        session: Option<Arc<AggSession>>,
        out: &Outgoing,
        mcp: &McpRequest,
    ) -> Response<Body> {
        let all = (0..self.members.len()).map(|m| {
            let session = session.clone();
            async move {
                let res = self
                    .send(
                        session.as_ref(),
                        m,
                        out,
                        mcp.body().clone(),
                        Some(mcp.clone()),
                    )
                    .await;
                (m, res)
            }
        });
        let hold = Arc::new(Mutex::new(None));
        let mut streams = Vec::new();
        let mut head = None;
        let mut answer = None;
        for (m, res) in futures_util::future::join_all(all).await {
            if res.status().is_success() && is_sse(res.headers()) {
                let (p, body) = res.into_parts();
                head.get_or_insert(p);
                let mut rw = Rewriter::new(self.me(), session.clone(), m);
                rw.hold = Some(hold.clone());
                streams.push((rw, body));
            } else if res.status().is_success() {
                if let Ok((a, _)) = collect(res, None).await {
                    if a.get("result").is_some() || answer.is_none() {
                        answer = Some(a);
                    }
                }
            }
        }
        let Some(mut head) = head else {
            return match answer {
                Some(a) => {
                    let mut res = Response::new(Body::full(a.to_string()));
                    res.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                    res
                }
                None => rpc_error(
                    mcp.first_id(),
                    ErrorKind::UpstreamUnavailable,
                    "Bad Gateway: no backend accepted subscriptions/listen".into(),
                    None,
                ),
            };
        };
        head.headers.remove(http::header::CONTENT_LENGTH);
        head.headers.remove(&header_names::MCP_SESSION_ID);
        Response::from_parts(head, merge(streams, Some(hold)))
    }

    /// Lists backend `m` whole (its tools, prompts, resources and
    /// templates) into the catalog, in a session of the gateway's own
    /// (ended after), or statelessly (2026-07-28) if it has no sessions.
    pub(crate) async fn catalog_of(&self, m: usize) -> Result<(), BoxError> {
        let member = &self.members[m];
        let Some(i) = member.instances.pick() else {
            return Err(format!("backend {} has no healthy instance", member.name).into());
        };
        let out = Outgoing::own(ProtocolVersion::V2025_11_25);
        let init = Bytes::from(
            json!({"jsonrpc": "2.0", "id": "mcpgw-catalog", "method": "initialize", "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {"roots": {"listChanged": true}, "sampling": {}, "elicitation": {}},
                "clientInfo": {"name": "mcp-gateway", "version": env!("CARGO_PKG_VERSION")},
            }})
            .to_string(),
        );
        let res = self.raw(m, out.post(init, None, i, None)).await;
        let status = res.status();
        let sid = res.headers().get(&header_names::MCP_SESSION_ID).cloned();
        let answer = match status.is_success() {
            true => collect(res, None).await.ok().map(|(a, _)| a),
            false => None,
        };
        match answer {
            Some(a) if a.get("result").is_some() => {
                let version = a
                    .pointer("/result/protocolVersion")
                    .and_then(Value::as_str)
                    .and_then(|v| HeaderValue::from_str(v).ok());
                let joined = Joined {
                    instance: i,
                    sid,
                    version,
                    generation: 0,
                };
                let note = Bytes::from_static(crate::upstream::INITIALIZED);
                let _ = self.raw(m, out.post(note, Some(&joined), i, None)).await;
                let caps = a
                    .pointer("/result/capabilities")
                    .cloned()
                    .unwrap_or_default();
                let r = self.list_kinds(m, &out, Some(&joined), &caps, None).await;
                if joined.sid.is_some() {
                    let req = out.request(HttpMethod::DELETE, Body::empty(), Some(&joined), i);
                    let _ = self.raw(m, req).await;
                }
                r
            }
            _ => {
                // A server of the stateless revision only.
                let mut out = Outgoing::own(ProtocolVersion::V2026_07_28);
                out.headers.insert(
                    header_names::MCP_PROTOCOL_VERSION,
                    HeaderValue::from_static("2026-07-28"),
                );
                let meta = json!({
                    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                    "io.modelcontextprotocol/clientCapabilities": {},
                    "io.modelcontextprotocol/clientInfo": {"name": "mcp-gateway", "version": env!("CARGO_PKG_VERSION")},
                });
                let caps = json!({"tools": {}, "prompts": {}, "resources": {}});
                self.list_kinds(m, &out, None, &caps, Some(meta)).await
            }
        }
    }

    async fn raw(&self, m: usize, req: http::Request<Body>) -> Response<Body> {
        let Ok(res) =
            tower_service::Service::call(&mut self.members[m].upstreams.clone(), req).await;
        res
    }

    /// Lists every kind `caps` offers, whole, into the catalog.
    async fn list_kinds(
        &self,
        m: usize,
        out: &Outgoing,
        joined: Option<&Joined>,
        caps: &Value,
        meta: Option<Value>,
    ) -> Result<(), BoxError> {
        let mut first_err = None;
        for kind in Kind::ALL {
            if caps.get(kind.capability()).is_none() {
                continue;
            }
            match self.list_whole(m, out, joined, kind, meta.as_ref()).await {
                Ok(names) => self.naming.catalog.replace(m, kind, names),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    async fn list_whole(
        &self,
        m: usize,
        out: &Outgoing,
        joined: Option<&Joined>,
        kind: Kind,
        meta: Option<&Value>,
    ) -> Result<HashSet<Arc<str>>, BoxError> {
        let member = &self.members[m];
        let instance = joined.map(|j| j.instance);
        let (array, key) = kind.members();
        let mut names = HashSet::new();
        let mut cursor: Option<String> = None;
        for page in 0..MAX_PAGES {
            let mut params = json!({});
            if let Some(c) = &cursor {
                params["cursor"] = Value::String(c.clone());
            }
            if let Some(meta) = meta {
                params["_meta"] = meta.clone();
            }
            let body = request_body(
                &format!("\"mcpgw-list-{page}\""),
                kind.list_method(),
                &params,
            );
            let mut o = out.clone();
            if meta.is_some() {
                o.headers.insert(
                    header_names::MCP_METHOD,
                    HeaderValue::from_static(kind.list_method()),
                );
            }
            let res = match instance {
                Some(i) => {
                    let req = o.post(body, joined, i, None);
                    let Ok(res) =
                        tower_service::Service::call(&mut member.upstreams.clone(), req).await;
                    res
                }
                None => {
                    self.send_fresh(m, true, |i| o.post(body.clone(), None, i, None))
                        .await
                }
            };
            if !res.status().is_success() {
                return Err(format!("{} answered {}", kind.list_method(), res.status()).into());
            }
            let (answer, _) = collect(res, None)
                .await
                .map_err(|_| BoxError::from("unreadable list"))?;
            let Some(result) = answer.get("result") else {
                return Err(format!("{} refused", kind.list_method()).into());
            };
            if let Some(items) = result.get(array).and_then(Value::as_array) {
                names.extend(
                    items
                        .iter()
                        .filter_map(|i| i.get(key).and_then(Value::as_str))
                        .map(Arc::from),
                );
            }
            match result.get("nextCursor").and_then(Value::as_str) {
                Some(c) if !c.is_empty() => cursor = Some(c.to_owned()),
                _ => return Ok(names),
            }
        }
        Ok(names)
    }

    /// After `list_changed` from backend `m`: lists those kinds again, in
    /// the client's session at that backend if there is one.
    pub(crate) async fn refresh(
        &self,
        session: Option<&Arc<AggSession>>,
        m: usize,
        kinds: &'static [Kind],
    ) {
        let joined = session.and_then(|s| s.slots[m].current());
        let Some(j) = joined else {
            if let Err(e) = self.catalog_of(m).await {
                tracing::warn!(backend = %self.members[m].name, error = %e, "catalog refresh failed");
            }
            return;
        };
        let s = session.expect("joined implies a session");
        let out = Outgoing {
            uri: http::Uri::from_static("/"),
            headers: s.setup.headers.clone(),
            principal: s.setup.principal.clone(),
            version: ProtocolVersion::DEFAULT_WITHOUT_HEADER,
            from_header: false,
        };
        for kind in kinds {
            match self.list_whole(m, &out, Some(&j), *kind, None).await {
                Ok(names) => self.naming.catalog.replace(m, *kind, names),
                Err(e) => {
                    tracing::debug!(backend = %self.members[m].name, error = %e, "catalog refresh failed")
                }
            }
        }
        if self.cfg.prefix == PrefixMode::Never {
            if let Some(report) = self.conflict_report() {
                tracing::error!(conflicts = %report, "backends expose the same names while aggregate.prefix = \"never\"");
            }
        }
    }

    /// A refresh of backend `m`'s whole catalog in the background (one at
    /// a time per backend).
    pub(crate) fn refresh_later(&self, m: usize) {
        if !lock(&self.refreshing).insert(m) {
            return;
        }
        let me = self.me();
        tokio::spawn(async move {
            if let Err(e) = me.catalog_of(m).await {
                tracing::debug!(backend = %me.members[m].name, error = %e, "catalog refresh failed");
            }
            lock(&me.refreshing).remove(&m);
        });
    }

    /// Every name two backends share, as one line.
    pub(crate) fn conflict_report(&self) -> Option<String> {
        let mut lines = Vec::new();
        for kind in Kind::ALL {
            for (name, ms) in self.naming.catalog.conflicts(kind) {
                let names: Vec<&str> = ms.iter().map(|m| &*self.members[*m].name).collect();
                let what = match kind {
                    Kind::Tool => "tool",
                    Kind::Prompt => "prompt",
                    Kind::Resource => "resource",
                    Kind::Template => "resource template",
                };
                lines.push(format!(
                    "{what} '{name}' is offered by backends {}",
                    names.join(" and ")
                ));
            }
        }
        (!lines.is_empty()).then(|| lines.join("; "))
    }
}
