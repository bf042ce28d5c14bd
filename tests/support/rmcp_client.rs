//! The rmcp client the integration tests drive: it answers sampling and
//! elicitation, counts progress and list changes, and waits for them.
// Sampling is deprecated in the 2026-07-28 revision but is part of 2025-11-25.
#![allow(deprecated, dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::model::*;
use rmcp::service::{NotificationContext, RequestContext, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{ClientHandler, ErrorData as McpError, RoleClient, ServiceExt};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

pub fn from<T: DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("test JSON matches the rmcp model")
}

/// A client that answers sampling and elicitation and records notifications.
#[derive(Clone, Default)]
pub struct TestClient {
    pub progress: Arc<Mutex<HashMap<String, Vec<f64>>>>,
    pub progress_total: Arc<AtomicUsize>,
    pub tool_list_changed: Arc<AtomicUsize>,
    pub changed: Arc<tokio::sync::Notify>,
}

impl ClientHandler for TestClient {
    async fn create_message(
        &self,
        params: CreateMessageRequestParams,
        _ctx: RequestContext<RoleClient>,
    ) -> Result<CreateMessageResult, McpError> {
        let asked = serde_json::to_value(&params.messages).unwrap()[0]["content"]["text"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        Ok(from(
            json!({"role": "assistant", "model": "test-model", "stopReason": "endTurn",
            "content": {"type": "text", "text": format!("echo:{asked}")}}),
        ))
    }

    async fn create_elicitation(
        &self,
        _request: ElicitRequestParams,
        _ctx: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, McpError> {
        Ok(from(
            json!({"action": "accept", "content": {"response": "yes please", "name": "yes please"}}),
        ))
    }

    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _ctx: NotificationContext<RoleClient>,
    ) {
        let token = match serde_json::to_value(&params.progress_token).unwrap() {
            Value::String(s) => s,
            v => v.to_string(),
        };
        self.progress
            .lock()
            .unwrap()
            .entry(token)
            .or_default()
            .push(params.progress);
        self.progress_total.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    async fn on_tool_list_changed(&self, _ctx: NotificationContext<RoleClient>) {
        self.tool_list_changed.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    fn get_info(&self) -> ClientConfig {
        from(json!({"protocolVersion": "2025-11-25",
            "capabilities": {"sampling": {}, "elicitation": {"form": {}}},
            "clientInfo": {"name": "mcp-gateway-tests", "version": "0.1.0"}}))
    }
}

impl TestClient {
    /// Waits (bounded) until `cond` holds, re-checking on every notification.
    pub async fn wait_until(&self, what: &str, cond: impl Fn(&Self) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let notified = self.changed.notified();
            if cond(self) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                assert!(cond(self), "timed out waiting for {what}");
                return;
            }
        }
    }
}

pub async fn connect_session(url: &str) -> (RunningService<RoleClient, TestClient>, TestClient) {
    // reqwest is built without a TLS provider of its own.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let handler = TestClient::default();
    let client = handler
        .clone()
        .serve(StreamableHttpClientTransport::from_uri(url.to_owned()))
        .await
        .expect("initialize through the gateway");
    (client, handler)
}

pub async fn connect_stateless(url: &str) -> (RunningService<RoleClient, TestClient>, TestClient) {
    use rmcp::service::{ClientLifecycleMode, ClientServiceExt};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let handler = TestClient::default();
    let client = handler
        .clone()
        .serve_with_lifecycle(
            StreamableHttpClientTransport::from_uri(url.to_owned()),
            ClientLifecycleMode::Discover {
                preferred_versions: vec![ProtocolVersion::V_2026_07_28],
            },
        )
        .await
        .expect("server/discover through the gateway");
    (client, handler)
}

pub fn text_of(r: &CallToolResult) -> String {
    serde_json::to_value(r).unwrap()["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

pub async fn call(
    client: &RunningService<RoleClient, TestClient>,
    name: &str,
    args: Value,
) -> CallToolResult {
    client
        .call_tool(from(json!({"name": name, "arguments": args})))
        .await
        .unwrap_or_else(|e| panic!("tools/call {name}: {e}"))
}

/// 50 concurrent calls, each streaming 20 progress notifications: every
/// notification arrives, in order, none lost.
pub async fn progress_under_concurrency(
    client: &RunningService<RoleClient, TestClient>,
    handler: &TestClient,
) {
    progress_spread(client, handler, &["progress_burst"]).await
}

/// [`progress_under_concurrency`], the calls spread over the tools `tools`
/// (each a `progress_burst`), in turn.
pub async fn progress_spread(
    client: &RunningService<RoleClient, TestClient>,
    handler: &TestClient,
    tools: &[&str],
) {
    const EACH: usize = 20;
    let calls: Vec<(&str, Value)> = tools.iter().map(|t| (*t, json!({"count": EACH}))).collect();
    for r in progress_calls(client, handler, &calls, EACH).await {
        assert_eq!(text_of(&r), EACH.to_string());
    }
}

/// 50 concurrent calls, spread over `calls` (tool, arguments) in turn, each
/// with its own progress token and reporting `each` progress notifications
/// (1 to `each`): every notification arrives, none twice. The results.
pub async fn progress_calls(
    client: &RunningService<RoleClient, TestClient>,
    handler: &TestClient,
    calls: &[(&str, Value)],
    each: usize,
) -> Vec<CallToolResult> {
    const CALLS: usize = 50;
    let mut tasks = Vec::new();
    for i in 0..CALLS {
        let peer = client.peer().clone();
        let (tool, args) = &calls[i % calls.len()];
        let params: CallToolRequestParams = from(json!({"name": tool,
            "arguments": args, "_meta": {"progressToken": format!("tok-{i}")}}));
        tasks.push(tokio::spawn(async move {
            peer.call_tool(params).await.unwrap()
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_ne!(r.is_error, Some(true), "{r:?}");
        results.push(r);
    }
    handler
        .wait_until("every progress notification", |h| {
            h.progress_total.load(Ordering::SeqCst) >= CALLS * each
        })
        .await;
    let progress = handler.progress.lock().unwrap();
    assert_eq!(progress.len(), CALLS, "one progress token per call");
    for (token, seen) in progress.iter() {
        let mut sorted = seen.clone();
        sorted.sort_by(f64::total_cmp);
        let want: Vec<f64> = (1..=each).map(|i| i as f64).collect();
        assert_eq!(
            sorted, want,
            "progress of {token}: lost or duplicated notifications"
        );
    }
    assert_eq!(handler.progress_total.load(Ordering::SeqCst), CALLS * each);
    results
}
