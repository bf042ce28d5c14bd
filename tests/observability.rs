//! Metrics and traces of the `mcp-gateway` binary against real peers: a
//! Prometheus scrape after a known workload (parsed by a Prometheus text
//! parser, with the Grafana dashboard's every metric in it), and spans
//! received by an OTLP/HTTP receiver built on the OpenTelemetry protocol
//! types, one trace from the client's header through the gateway into the
//! rmcp backend (which sees it in its `traceparent` header and in
//! `params._meta`).

#[path = "../examples/support/fixtures.rs"]
mod fixtures;
#[path = "support/net.rs"]
mod net;
#[path = "support/process.rs"]
mod process;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use net::{raw, Reply, ACCEPT, JSON, V};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use process::{GatewayProcess, Scratch};
use prost::Message;
use serde_json::{json, Value};

/// `demo-reader-key`, as in `examples/gateway.toml`.
const KEY: &str = "demo-reader-key";
const KEY_SHA256: &str = "cc551f29bff81915d8d2765567f3c5f73f4b9ebc70f37757eefe31734bde1421";

/// The `[backend]` (`db`, at `be`) and `[auth]` tables every test uses:
/// one API key, of tenant `acme`.
fn backend_toml(be: &net::Served) -> String {
    format!(
        "[backend]\nname = \"db\"\nurls = [\"http://{}/mcp\"]\n\
         [auth]\n[[auth.api_keys]]\nsha256 = \"{KEY_SHA256}\"\nsubject = \"reader-bot\"\n\
         tenant = \"acme\"\nroles = [\"reader\"]\n",
        be.addr
    )
}

async fn backend() -> net::Served {
    net::serve(axum::Router::new().route_service("/mcp", fixtures::service("obs"))).await
}

fn init(version: &str) -> String {
    json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":version,"capabilities":{},"clientInfo":{"name":"obs-test","version":"1"}}}).to_string()
}

fn call(id: u64, tool: &str, args: Value) -> String {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":tool,"arguments":args}})
        .to_string()
}

struct Client {
    url: String,
    sid: String,
    auth: String,
}

impl Client {
    async fn open(url: &str) -> Client {
        let auth = format!("Bearer {KEY}");
        let r = raw(
            "POST",
            url,
            &[ACCEPT, JSON, ("authorization", &auth)],
            &init("2025-11-25"),
        )
        .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let sid = r.headers["mcp-session-id"].to_str().unwrap().to_owned();
        let c = Client {
            url: url.to_owned(),
            sid,
            auth,
        };
        let n = raw(
            "POST",
            url,
            &[
                ACCEPT,
                JSON,
                V,
                ("mcp-session-id", &c.sid),
                ("authorization", &c.auth),
            ],
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        )
        .await;
        assert_eq!(n.status, 202);
        c
    }

    async fn send(&self, body: &str, extra: &[(&str, &str)]) -> Reply {
        let mut h = vec![
            ACCEPT,
            JSON,
            V,
            ("mcp-session-id", self.sid.as_str()),
            ("authorization", self.auth.as_str()),
        ];
        h.extend_from_slice(extra);
        raw("POST", &self.url, &h, body).await
    }

    /// Ends the session (`DELETE`).
    async fn end(&self) {
        let h = [
            V,
            ("mcp-session-id", self.sid.as_str()),
            ("authorization", self.auth.as_str()),
        ];
        let r = raw("DELETE", &self.url, &h, "").await;
        assert!(r.status == 200 || r.status == 204);
    }
}

/// `name{labels} value` rows of a scrape, parsed by `prometheus-parse`.
struct Scrape(Vec<prometheus_parse::Sample>);

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        let s = prometheus_parse::Scrape::parse(lines).expect("the exposition parses");
        Scrape(s.samples)
    }

    /// The sum of the values of `metric`'s series that have all of `labels`.
    fn value(&self, metric: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|s| s.metric == metric)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match &s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => *v,
                prometheus_parse::Value::Histogram(h) => {
                    h.iter().map(|b| b.count).fold(0.0, f64::max)
                }
                prometheus_parse::Value::Summary(_) => 0.0,
            })
            .sum()
    }

    fn names(&self) -> std::collections::BTreeSet<String> {
        self.0.iter().map(|s| s.metric.clone()).collect()
    }
}

async fn scrape(url: &str) -> (Scrape, String) {
    let r = raw("GET", url, &[], "").await;
    assert_eq!(r.status, 200);
    assert!(r.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = String::from_utf8(r.body.to_vec()).unwrap();
    (Scrape::parse(&text), text)
}

/// The metric names a dashboard's queries use.
fn dashboard_metrics(dashboard: &Value) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(e)) = m.get("expr") {
                    let mut e = e.clone();
                    // Label lists (`by (…)`) and matchers (`{…}`) name
                    // labels, not metrics.
                    for (open, close) in [("by (", ')'), ("{", '}')] {
                        while let Some(i) = e.find(open) {
                            let end = e[i..].find(close).map_or(e.len(), |j| i + j + 1);
                            e.replace_range(i..end, " ");
                        }
                    }
                    let mut rest = e.as_str();
                    while let Some(i) = rest.find("mcp_") {
                        let tail = &rest[i..];
                        let end = tail
                            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                            .unwrap_or(tail.len());
                        out.push(tail[..end].to_owned());
                        rest = &tail[end..];
                    }
                }
                m.values().for_each(|x| walk(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    walk(dashboard, &mut out);
    out.sort();
    out.dedup();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_after_a_known_workload_has_exactly_its_counts() {
    let be = backend().await;
    let dir = Scratch::new("obs-metrics");
    let audit = dir.0.join("audit.jsonl");
    let cfg = dir.file(
        "gw.toml",
        &format!(
            r#"listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
[observability]
metrics_path = "/metrics"
{}[policy]
default = "allow"
[[policy.rules]]
effect = "deny"
tools = ["show_auth"]
[limits]
principal_tool_rate = {{ burst = 3, per_second = 0.001 }}
cost_budget = {{ amount = 1000, window_secs = 86400 }}
token_budget = {{ amount = 1000000, window_secs = 86400 }}
[limits.tool_costs]
"echo" = 2
[audit]
sink = "jsonl"
[audit.jsonl]
path = "{}"
"#,
            backend_toml(&be),
            audit.display()
        ),
    );
    let mut gw = GatewayProcess::start(&["--config", &cfg]);
    let admin = gw
        .next_line()
        .strip_prefix("mcp-gateway admin on ")
        .unwrap()
        .to_owned();
    let c = Client::open(&gw.url).await;
    let mut id = 10;
    let mut next = || {
        id += 1;
        id
    };
    for _ in 0..3 {
        let r = c
            .send(&call(next(), "echo", json!({"text": "hi"})), &[])
            .await;
        assert_eq!(r.status, 200);
        assert!(r.answer()["result"].is_object());
    }
    for _ in 0..2 {
        let r = c.send(&call(next(), "whoami", json!({})), &[]).await;
        assert!(r.answer()["result"].is_object());
    }
    let burst = json!({"jsonrpc":"2.0","id":next(),"method":"tools/call","params":{"name":"progress_burst","arguments":{"count":3},"_meta":{"progressToken":"p1"}}});
    let r = c.send(&burst.to_string(), &[]).await;
    assert_eq!(r.status, 200);
    // One denial, one failing tool, one limit refusal (the 4th echo).
    let r = c.send(&call(next(), "show_auth", json!({})), &[]).await;
    assert!(r.answer()["error"].is_object(), "denied: {:?}", r.answer());
    let r = c
        .send(&call(next(), "test_error_handling", json!({})), &[])
        .await;
    assert_eq!(r.answer()["result"]["isError"], true);
    let r = c
        .send(&call(next(), "echo", json!({"text": "hi"})), &[])
        .await;
    assert!(r.answer()["error"].is_object(), "limited: {:?}", r.answer());

    let (s, text) = scrape(&format!("{admin}/metrics")).await;
    let op = "mcp_server_operation_duration_seconds_count";
    let echo = [
        ("mcp_method_name", "tools/call"),
        ("gen_ai_tool_name", "echo"),
    ];
    assert_eq!(
        s.value(op, &[echo[0], echo[1], ("mcp_gateway_outcome", "ok")]),
        3.0,
        "{text}"
    );
    assert_eq!(
        s.value(op, &[echo[0], echo[1], ("mcp_gateway_outcome", "limited")]),
        1.0
    );
    assert_eq!(s.value(op, &[("gen_ai_tool_name", "whoami")]), 2.0);
    assert_eq!(
        s.value(
            op,
            &[
                ("gen_ai_tool_name", "test_error_handling"),
                ("error_type", "tool_error")
            ]
        ),
        1.0
    );
    assert_eq!(
        s.value(
            op,
            &[
                ("mcp_method_name", "initialize"),
                ("mcp_gateway_backend", "db")
            ]
        ),
        1.0
    );
    // Client side: only what reached the backend.
    let client = "mcp_client_operation_duration_seconds_count";
    assert_eq!(s.value(client, &[("gen_ai_tool_name", "echo")]), 3.0);
    assert_eq!(s.value(client, &[("gen_ai_tool_name", "show_auth")]), 0.0);
    assert_eq!(
        s.value(
            "mcp_gateway_policy_denials_total",
            &[("gen_ai_tool_name", "show_auth")]
        ),
        1.0
    );
    assert_eq!(
        s.value(
            "mcp_gateway_limit_refusals_total",
            &[("mcp_gateway_limit", "principal_tool_rate")]
        ),
        1.0
    );
    // Cost attribution by tenant and tool.
    let acme_echo = [("mcp_gateway_tenant", "acme"), ("gen_ai_tool_name", "echo")];
    assert_eq!(s.value("mcp_gateway_calls_total", &acme_echo), 4.0);
    assert_eq!(s.value("mcp_gateway_cost_total", &acme_echo), 6.0);
    let tokens = s.value("mcp_gateway_tokens_total", &acme_echo);
    assert!(tokens > 0.0, "result tokens are charged: {tokens}");
    let acme = [("mcp_gateway_tenant", "acme")];
    let (acme_cost, acme_tokens) = (
        s.value("mcp_gateway_cost_total", &acme),
        s.value("mcp_gateway_tokens_total", &acme),
    );
    assert_eq!(
        s.value(
            "mcp_gateway_sessions_active",
            &[("mcp_gateway_backend", "db")]
        ),
        1.0
    );
    assert_eq!(
        s.value(
            "mcp_gateway_backend_healthy",
            &[("mcp_gateway_backend", "db")]
        ),
        1.0
    );
    assert!(s.value("mcp_gateway_upstream_time_to_first_byte_seconds_count", &[]) >= 6.0);
    assert!(s.value("mcp_gateway_upstream_connect_duration_seconds_count", &[]) >= 1.0);
    assert_eq!(s.value("mcp_gateway_audit_dropped_total", &[]), 0.0);
    assert_eq!(
        s.value(
            "mcp_gateway_progress_notifications_total",
            &[("gen_ai_tool_name", "progress_burst")]
        ),
        3.0
    );
    assert!(
        s.value(
            "mcp_gateway_sse_events_total",
            &[("mcp_gateway_backend", "db")]
        ) >= 4.0
    );

    // The session's end: its duration recorded, no session open.
    c.end().await;
    let (s2, _) = scrape(&format!("{admin}/metrics")).await;
    assert_eq!(
        s2.value(
            "mcp_server_session_duration_seconds_count",
            &[("mcp_gateway_backend", "db")]
        ),
        1.0
    );
    assert_eq!(s2.value("mcp_gateway_sessions_active", &[]), 0.0);
    // The `DELETE` (204, no body) ended as answered.
    assert_eq!(
        s2.value(
            op,
            &[("mcp_method_name", "DELETE"), ("mcp_gateway_outcome", "ok")]
        ),
        1.0
    );

    // The main listener's path serves the same exposition.
    let main = gw.url.replace("/mcp", "/metrics");
    let (s3, _) = scrape(&main).await;
    assert!(s3.value(op, &echo) >= 4.0);

    // Every metric the dashboard queries is in a real scrape.
    let dashboard: Value =
        serde_json::from_str(include_str!("../docs/grafana-dashboard.json")).unwrap();
    let names = s2.names();
    let used = dashboard_metrics(&dashboard);
    assert!(used.len() >= 8, "the dashboard queries {used:?}");
    for m in used {
        // The parser gathers a histogram's `_bucket` lines under its name.
        let base = m.strip_suffix("_bucket").unwrap_or(&m);
        assert!(
            names.contains(&m) || names.contains(base),
            "the dashboard queries {m}, which no scrape has"
        );
    }
    // The session's end record has its calls, errors, cost and tokens.
    let end = stop_and_read(&mut gw, &audit, |v| v["event"] == "session_end");
    assert_eq!(end.len(), 1, "{end:?}");
    assert_eq!(end[0]["tenant"], "acme");
    // Every tool's cost and tokens: the session's, as the tenant's series say.
    assert_eq!(end[0]["cost"].as_u64().map(|t| t as f64), Some(acme_cost));
    assert_eq!(
        end[0]["tokens"].as_u64().map(|t| t as f64),
        Some(acme_tokens)
    );
    assert!(end[0]["errors"].as_u64().unwrap() >= 3, "{}", end[0]);
}

/// Stops the gateway (its exporters flushed, its audit file closed) and
/// returns the audit records `keep` selects.
fn stop_and_read(
    gw: &mut GatewayProcess,
    audit: &std::path::Path,
    keep: impl Fn(&Value) -> bool,
) -> Vec<Value> {
    stop(gw);
    std::fs::read_to_string(audit)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v| keep(v))
        .collect()
}

fn stop(gw: &mut GatewayProcess) {
    gw.terminate();
    assert!(
        gw.wait_exit(Duration::from_secs(10)).is_some(),
        "the gateway stops, its exporters flushed"
    );
}

/// Spans an OTLP/HTTP receiver got.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<Span>>>, Arc<Mutex<Vec<String>>>);

async fn receiver() -> (net::Served, Received) {
    let got = Received::default();
    let keep = got.clone();
    let names = got.1.clone();
    let app = axum::Router::new()
        .route(
            "/v1/metrics",
            axum::routing::post(move |body: axum::body::Bytes| {
                let names = names.clone();
                async move {
                    let req = ExportMetricsServiceRequest::decode(body).expect("OTLP protobuf");
                    let mut names = names.lock().unwrap();
                    for rm in req.resource_metrics {
                        for sm in rm.scope_metrics {
                            names.extend(sm.metrics.into_iter().map(|m| m.name));
                        }
                    }
                    axum::http::StatusCode::OK
                }
            }),
        )
        .route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| {
                let keep = keep.clone();
                async move {
                    let req = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                    let mut spans = keep.0.lock().unwrap();
                    for rs in req.resource_spans {
                        for ss in rs.scope_spans {
                            spans.extend(ss.spans);
                        }
                    }
                    axum::http::StatusCode::OK
                }
            }),
        );
    (net::serve(app).await, got)
}

fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref())
        .and_then(|v| v.value.as_ref())
        .map(|v| match v {
            AnyValue::StringValue(s) => s.clone(),
            AnyValue::IntValue(i) => i.to_string(),
            other => format!("{other:?}"),
        })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_runs_from_the_client_through_the_gateway_into_the_backend() {
    let be = backend().await;
    let (otlp, spans) = receiver().await;
    let dir = Scratch::new("obs-traces");
    let audit = dir.0.join("audit.jsonl");
    let cfg = dir.file(
        "gw.toml",
        &format!(
            r#"listen = "127.0.0.1:0"
[observability.otlp]
endpoint = "http://{}"
batch_delay_ms = 100
metrics_interval_secs = 1
service_name = "gw-under-test"
{}[audit]
sink = "jsonl"
[audit.jsonl]
path = "{}"
"#,
            otlp.addr,
            backend_toml(&be),
            audit.display()
        ),
    );
    let mut gw = GatewayProcess::start(&["--config", &cfg]);
    let c = Client::open(&gw.url).await;

    // Trace context in the header.
    let (tid, parent) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let tp = format!("00-{tid}-{parent}-01");
    let r = c
        .send(
            &call(21, "show_trace", json!({})),
            &[("traceparent", tp.as_str()), ("baggage", "team=search")],
        )
        .await;
    let seen: Value =
        serde_json::from_str(r.answer()["result"]["content"][0]["text"].as_str().unwrap()).unwrap();
    let header = seen["header"]
        .as_str()
        .expect("the backend got a traceparent header");
    let meta = seen["meta"]
        .as_str()
        .expect("the backend got params._meta.traceparent");
    assert_eq!(header, meta, "header and _meta carry the same context");
    let parts: Vec<&str> = header.split('-').collect();
    assert_eq!(parts[1], tid, "the backend continues the client's trace");
    assert_ne!(
        parts[2], parent,
        "the backend's parent is the gateway's span"
    );
    assert_eq!(seen["baggage_header"], "team=search");
    assert_eq!(seen["baggage_meta"], "team=search");
    let backend_parent = parts[2].to_owned();

    // Trace context in params._meta only (where MCP clients put it).
    let (tid2, parent2) = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331");
    let body = json!({"jsonrpc":"2.0","id":22,"method":"tools/call","params":{"name":"show_trace","arguments":{},"_meta":{"traceparent":format!("00-{tid2}-{parent2}-01"),"progressToken":"p1"}}}).to_string();
    let r = c.send(&body, &[]).await;
    let seen2: Value =
        serde_json::from_str(r.answer()["result"]["content"][0]["text"].as_str().unwrap()).unwrap();
    assert_eq!(
        seen2["meta"].as_str().unwrap().split('-').nth(1),
        Some(tid2)
    );
    assert_eq!(
        seen2["header"].as_str().unwrap().split('-').nth(1),
        Some(tid2)
    );

    // rmcp clients of both eras through the traced gateway: every call works.
    for stateless in [false, true] {
        rmcp_echo(&gw.url, stateless).await;
    }

    // The receiver gets the spans: SERVER child of the client's span,
    // CLIENT child of the SERVER span, the CLIENT span the backend's parent.
    let deadline = Instant::now() + Duration::from_secs(20);
    let find = |tid: &str, kind: i32| {
        spans
            .0
            .lock()
            .unwrap()
            .iter()
            .find(|s| {
                hex(&s.trace_id) == tid && s.kind == kind && s.name == "tools/call show_trace"
            })
            .cloned()
    };
    const SERVER: i32 = 2;
    const CLIENT: i32 = 3;
    while (find(tid, SERVER).is_none()
        || find(tid, CLIENT).is_none()
        || find(tid2, CLIENT).is_none())
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got: Vec<(String, String, i32)> = spans
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|s| (s.name.clone(), hex(&s.trace_id), s.kind))
        .collect();
    let server =
        find(tid, SERVER).unwrap_or_else(|| panic!("the SERVER span arrives; got {got:?}"));
    let client_span = find(tid, CLIENT).expect("the CLIENT span arrives");
    assert_eq!(hex(&server.parent_span_id), parent);
    assert_eq!(client_span.parent_span_id, server.span_id);
    assert_eq!(hex(&client_span.span_id), backend_parent);
    let port = be.addr.port().to_string();
    for (span, key, want) in [
        (&server, "mcp.method.name", "tools/call"),
        (&server, "gen_ai.tool.name", "show_trace"),
        (&server, "gen_ai.operation.name", "execute_tool"),
        (&server, "mcp.session.id", c.sid.as_str()),
        (&server, "jsonrpc.request.id", "21"),
        (&server, "mcp.gateway.tenant", "acme"),
        (&server, "enduser.id", "reader-bot"),
        (&server, "mcp.gateway.backend", "db"),
        (&server, "mcp.protocol.version", "2025-11-25"),
        (&client_span, "mcp.method.name", "tools/call"),
        (&client_span, "gen_ai.tool.name", "show_trace"),
        (&client_span, "server.address", "127.0.0.1"),
        (&client_span, "server.port", port.as_str()),
    ] {
        assert_eq!(
            attr(span, key).as_deref(),
            Some(want),
            "{} {key}",
            span.name
        );
    }
    let server2 = find(tid2, SERVER).expect("the _meta-parented SERVER span");
    assert_eq!(hex(&server2.parent_span_id), parent2);

    // Metrics are pushed over OTLP too.
    let pushed = |name: &str| spans.1.lock().unwrap().iter().any(|n| n == name);
    while !pushed("mcp.server.operation.duration") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for name in [
        "mcp.server.operation.duration",
        "mcp.client.operation.duration",
        "mcp.gateway.calls",
    ] {
        assert!(pushed(name), "{name} was pushed over OTLP");
    }

    // The audit record carries the trace and span ids.
    let rec = stop_and_read(&mut gw, &audit, |v| v["id"] == "21");
    assert_eq!(rec.len(), 1, "{rec:?}");
    assert_eq!(rec[0]["trace_id"], tid);
    assert_eq!(rec[0]["span_id"], hex(&server.span_id));
}

async fn rmcp_echo(url: &str, stateless: bool) {
    use rmcp::model::*;
    use rmcp::service::{ClientLifecycleMode, ClientServiceExt};
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    use rmcp::transport::StreamableHttpClientTransport;
    use rmcp::ServiceExt;
    let mut headers = std::collections::HashMap::new();
    headers.insert(
        http::HeaderName::from_static("x-api-key"),
        http::HeaderValue::from_static(KEY),
    );
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(url.to_owned()).custom_headers(headers),
    );
    let info = ClientConfig::default();
    let client = if stateless {
        info.serve_with_lifecycle(
            transport,
            ClientLifecycleMode::Discover {
                preferred_versions: vec![ProtocolVersion::V_2026_07_28],
            },
        )
        .await
        .unwrap()
    } else {
        info.serve(transport).await.unwrap()
    };
    let tools = client.list_all_tools().await.unwrap();
    assert!(tools.iter().any(|t| t.name == "echo"));
    let p: CallToolRequestParams =
        serde_json::from_value(json!({"name": "echo", "arguments": {"text": "through"}})).unwrap();
    let r = client.call_tool(p).await.unwrap();
    assert_eq!(
        r.content[0].as_text().unwrap().text,
        "through",
        "stateless: {stateless}"
    );
    client.cancel().await.unwrap();
}

/// A gRPC OTLP receiver (the protocol's own service definition, served by
/// tonic) collecting spans.
async fn grpc_receiver() -> (std::net::SocketAddr, Received) {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
        TraceService, TraceServiceServer,
    };
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;

    struct Collector(Received);

    #[tonic::async_trait]
    impl TraceService for Collector {
        async fn export(
            &self,
            req: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            let mut spans = self.0 .0.lock().unwrap();
            for rs in req.into_inner().resource_spans {
                for ss in rs.scope_spans {
                    spans.extend(ss.spans);
                }
            }
            Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
        }
    }

    let got = Received::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = TraceServiceServer::new(Collector(got.clone()));
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream_incoming(listener))
            .await
            .unwrap();
    });
    (addr, got)
}

fn tokio_stream_incoming(
    l: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(l, |l| async move {
        let r = l.accept().await.map(|(s, _)| s);
        Some((r, l))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_over_grpc_too() {
    let be = backend().await;
    let (addr, spans) = grpc_receiver().await;
    let dir = Scratch::new("obs-grpc");
    let cfg = dir.file(
        "gw.toml",
        &format!(
            r#"listen = "127.0.0.1:0"
[observability.otlp]
endpoint = "http://{addr}"
protocol = "grpc"
metrics = false
batch_delay_ms = 100
headers = {{ "x-collector-key" = "k" }}
{}"#,
            backend_toml(&be)
        ),
    );
    let mut gw = GatewayProcess::start(&["--config", &cfg]);
    let c = Client::open(&gw.url).await;
    let tid = "5bf92f3577b34da6a3ce929d0e0e4737";
    let tp = format!("00-{tid}-10f067aa0ba902b7-01");
    let r = c
        .send(
            &call(5, "echo", json!({"text": "g"})),
            &[("traceparent", tp.as_str())],
        )
        .await;
    assert!(r.answer()["result"].is_object());
    let deadline = Instant::now() + Duration::from_secs(20);
    let found = || {
        spans
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|s| hex(&s.trace_id) == tid)
            .map(|s| (s.name.clone(), s.kind))
            .collect::<Vec<_>>()
    };
    while found().len() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut got = found();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("tools/call echo".to_owned(), 2),
            ("tools/call echo".to_owned(), 3)
        ]
    );
    stop(&mut gw);
}

/// The ClickHouse audit sink against a real server (`scripts/clickhouse.sh`
/// installs and starts one and sets `MCPGW_CLICKHOUSE_URL`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_records_reach_clickhouse() {
    let Ok(ch) = std::env::var("MCPGW_CLICKHOUSE_URL") else {
        eprintln!(
            "skipped: no ClickHouse server (MCPGW_CLICKHOUSE_URL unset); \
             `bash scripts/clickhouse.sh` installs one and runs this test"
        );
        return;
    };
    let table = format!("mcp_audit_{}", std::process::id());
    let sql = |q: String| {
        let ch = ch.clone();
        async move {
            let r = raw("POST", &format!("{ch}/"), &[], &q).await;
            assert_eq!(r.status, 200, "{q}: {}", String::from_utf8_lossy(&r.body));
            String::from_utf8(r.body.to_vec()).unwrap()
        }
    };
    sql(format!(
        "CREATE TABLE {table} (event String, time String, principal Nullable(String), \
         tenant Nullable(String), session Nullable(String), backend Nullable(String), \
         method Nullable(String), target Nullable(String), outcome String, \
         error_code Nullable(Int64), duration_us Nullable(UInt64), cost UInt64 DEFAULT 0, \
         tokens UInt64 DEFAULT 0, calls Nullable(UInt64), trace_id Nullable(String)) \
         ENGINE = MergeTree ORDER BY time"
    ))
    .await;
    let be = backend().await;
    let dir = Scratch::new("obs-clickhouse");
    let cfg = dir.file(
        "gw.toml",
        &format!(
            "listen = \"127.0.0.1:0\"\n{}[audit]\nsink = \"clickhouse\"\n\
             [audit.clickhouse]\nurl = \"{ch}\"\ntable = \"{table}\"\nflush_ms = 100\n",
            backend_toml(&be)
        ),
    );
    let mut gw = GatewayProcess::start(&["--config", &cfg]);
    let c = Client::open(&gw.url).await;
    for i in 0..3 {
        let r = c
            .send(&call(30 + i, "echo", json!({"text": "ch"})), &[])
            .await;
        assert!(r.answer()["result"].is_object());
    }
    c.end().await;
    // Inserted in batches while the gateway runs (flush_ms = 100): wait
    // for the session's end to arrive, without stopping the gateway.
    let deadline = Instant::now() + Duration::from_secs(20);
    let count = |q: String| async move { sql(q).await.trim().parse::<u64>().unwrap_or(0) };
    while count(format!(
        "SELECT count() FROM {table} WHERE event = 'session_end'"
    ))
    .await
        == 0
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rows = sql(format!(
        "SELECT event, method, target, tenant, outcome, calls FROM {table} \
         WHERE event != 'call' OR target = 'echo' ORDER BY time, event FORMAT JSONEachRow"
    ))
    .await;
    let rows: Vec<Value> = rows
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let echo: Vec<&Value> = rows.iter().filter(|r| r["target"] == "echo").collect();
    assert_eq!(echo.len(), 3, "{rows:?}");
    assert!(echo
        .iter()
        .all(|r| r["tenant"] == "acme" && r["outcome"] == "ok"));
    assert_eq!(
        rows.iter()
            .filter(|r| r["event"] == "session_start")
            .count(),
        1
    );
    let end: Vec<&Value> = rows
        .iter()
        .filter(|r| r["event"] == "session_end")
        .collect();
    assert_eq!(end.len(), 1, "{rows:?}");
    stop(&mut gw);
    sql(format!("DROP TABLE {table}")).await;
}
