//! The admin listener: a separate address (loopback unless set otherwise)
//! for operators and orchestrators. JSON answers; session ids never leave
//! it.
//!
//! | route | answers |
//! | --- | --- |
//! | `GET /healthz` | 200 while the process runs |
//! | `GET /readyz` | 200 when the backend has a healthy instance, else 503 |
//! | `GET /admin/backends` | each instance: URL, condition, sessions, in flight, ejections, failovers |
//! | `POST /admin/backends/{name}/instances/{n}/drain` | drains instance `n` (no new sessions; its sessions move at the drain deadline) |
//! | `POST /admin/backends/{name}/instances/{n}/undrain` | ends the drain |
//! | `GET /admin/sessions` | session counts per backend and per principal |
//!
//! With a token (`admin_token_env`), every `/admin/…` route needs
//! `Authorization: Bearer <token>`; `/healthz` and `/readyz` say nothing
//! secret and stay open to probes.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use mcp_gateway_axum::GatewayHandles;
use serde_json::{json, Value};

/// What the admin routes read and change.
pub struct Admin {
    handles: GatewayHandles,
    token: Option<String>,
    metrics: Option<crate::observability::Scraper>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("handles", &self.handles)
            .field("token", &self.token.as_ref().map(|_| "…"))
            .finish()
    }
}

impl Admin {
    /// The admin routes over `handles`; `token`, when set, guards `/admin/…`.
    pub fn new(handles: GatewayHandles, token: Option<String>) -> Self {
        Admin {
            handles,
            token,
            metrics: None,
        }
    }

    /// Serves the Prometheus exposition at `/metrics` (behind the token,
    /// when one is set: scrapers send it as a bearer token).
    pub fn metrics(mut self, scraper: Option<crate::observability::Scraper>) -> Self {
        self.metrics = scraper;
        self
    }

    /// The router.
    pub fn router(self) -> Router {
        Router::new()
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/admin/backends", get(backends))
            .route("/admin/backends/{name}/instances/{n}/drain", post(drain))
            .route(
                "/admin/backends/{name}/instances/{n}/undrain",
                post(undrain),
            )
            .route("/admin/sessions", get(sessions))
            .route("/metrics", get(metrics))
            .with_state(Arc::new(self))
    }

    /// `None` when the request may go on, else the refusal.
    fn refused(&self, headers: &HeaderMap) -> Option<Response> {
        let token = self.token.as_ref()?;
        let sent = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        (!same(sent.as_bytes(), token.as_bytes())).then(|| {
            answer(
                StatusCode::UNAUTHORIZED,
                json!({"error": "a bearer token is required"}),
            )
        })
    }
}

/// Compares without stopping at the first difference.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn answer(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn metrics(State(a): State<Arc<Admin>>, headers: HeaderMap) -> Response {
    if let Some(r) = a.refused(&headers) {
        return r;
    }
    match &a.metrics {
        Some(m) => m.response(),
        None => answer(
            StatusCode::NOT_FOUND,
            json!({"error": "metrics are off ([observability] metrics = false)"}),
        ),
    }
}

async fn healthz() -> Response {
    answer(StatusCode::OK, json!({"status": "ok"}))
}

async fn readyz(State(a): State<Arc<Admin>>) -> Response {
    let i = &a.handles.instances;
    let healthy = i.list().iter().filter(|x| x.state.is_eligible()).count();
    let status = if healthy > 0 {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    answer(
        status,
        json!({"ready": healthy > 0, "backends": {i.backend().as_ref(): {"healthy_instances": healthy}}}),
    )
}

async fn backends(State(a): State<Arc<Admin>>, headers: HeaderMap) -> Response {
    if let Some(r) = a.refused(&headers) {
        return r;
    }
    let mut per_instance: BTreeMap<usize, usize> = BTreeMap::new();
    for rec in a.handles.sessions.records().await {
        *per_instance.entry(rec.instance()).or_default() += 1;
    }
    let i = &a.handles.instances;
    let list: Vec<Value> = i
        .list()
        .into_iter()
        .map(|x| {
            let s = &x.state;
            json!({
                "index": x.index,
                "url": shown_url(&x.key),
                "condition": s.condition().as_str(),
                "healthy": s.is_healthy(),
                "draining_secs": s.draining_for().map(|d| d.as_secs()),
                "sessions": per_instance.get(&x.index).copied().unwrap_or(0),
                "in_flight": s.outstanding(),
                "ejections": s.ejections(),
                "failovers": s.failovers(),
            })
        })
        .collect();
    answer(
        StatusCode::OK,
        json!({"backends": [{"name": i.backend().as_ref(), "instances": list}]}),
    )
}

/// A backend URL as logs and the admin routes show it: no query (it may
/// carry a token).
pub(crate) fn shown_url(u: &str) -> &str {
    u.split('?').next().unwrap_or(u)
}

async fn drain(
    State(a): State<Arc<Admin>>,
    Path((name, n)): Path<(String, usize)>,
    headers: HeaderMap,
) -> Response {
    change(&a, &headers, &name, n, true)
}

async fn undrain(
    State(a): State<Arc<Admin>>,
    Path((name, n)): Path<(String, usize)>,
    headers: HeaderMap,
) -> Response {
    change(&a, &headers, &name, n, false)
}

fn change(a: &Admin, headers: &HeaderMap, name: &str, n: usize, drain: bool) -> Response {
    if let Some(r) = a.refused(headers) {
        return r;
    }
    let i = &a.handles.instances;
    if name != i.backend().as_ref() {
        return answer(
            StatusCode::NOT_FOUND,
            json!({"error": format!("no backend named {name}")}),
        );
    }
    let Some(state) = i.state(n) else {
        return answer(
            StatusCode::NOT_FOUND,
            json!({"error": format!("backend {name} has no instance {n}")}),
        );
    };
    let changed = if drain { i.drain(n) } else { i.undrain(n) };
    answer(
        StatusCode::OK,
        json!({
            "backend": name,
            "instance": n,
            "changed": changed,
            "condition": state.condition().as_str(),
            "drain_timeout_secs": i.drain_timeout().as_secs(),
        }),
    )
}

async fn sessions(State(a): State<Arc<Admin>>, headers: HeaderMap) -> Response {
    if let Some(r) = a.refused(&headers) {
        return r;
    }
    let records = a.handles.sessions.records().await;
    let mut by_principal: BTreeMap<String, usize> = BTreeMap::new();
    for rec in &records {
        *by_principal
            .entry(rec.owner().unwrap_or("(none)").to_owned())
            .or_default() += 1;
    }
    let backend = a.handles.instances.backend().as_ref().to_owned();
    answer(
        StatusCode::OK,
        json!({
            "total": records.len(),
            "by_backend": {backend: records.len()},
            "by_principal": by_principal,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"ab", b"abc"));
    }
}
