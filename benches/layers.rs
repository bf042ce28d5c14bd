//! Criterion benchmarks of the layers themselves, in process, with no
//! network: what each stack costs per `tools/call` on top of a stub service
//! that answers at once. Isolates layer CPU from socket and scheduler
//! noise (the loopback benchmark measures the whole hop).
//!
//! `cargo bench --bench layers`
//!
//! - `jsonrpc`: the parser layer alone (the floor every stack pays);
//! - `jsonrpc+acl`: plus the rule policy and tool pinning (the principal
//!   set by a preceding `map_request`);
//! - `jwt+jsonrpc+acl`: plus JWT authentication (RS256, verified token
//!   cached by hash), i.e. the "full security stack" of the issue;
//! - `full`: plus the limit layer (rates, in-flight caps, token and cost
//!   budgets, none reached) and the audit layer writing JSON Lines to a
//!   temporary file: the "full stack" of the limits issue;
//! - `jwt+jsonrpc+acl+limit` and `audit+jwt+jsonrpc+acl`: each of the two
//!   alone, to see which costs what;
//! - `jwt_uncached`: one RS256 verification without the cache, for scale;
//! - `layers_telemetry/…`: what recording metrics and spans adds to a call
//!   (audit layer with no other sink, the parser, the instance set over
//!   the stub): `base`, `metrics` (the binary's meter provider with its
//!   Prometheus reader: server and client side, time to first byte),
//!   `metrics+traces` (plus SERVER and CLIENT spans through
//!   `tracing-opentelemetry` to an SDK tracer that samples every trace;
//!   trace context injected into the backend request's headers and
//!   `params._meta`);
//! - `layers_sse/…`: the security stack and the full stack on a call the
//!   backend answers with an event stream (a priming event, then the
//!   result), which the limit layer (tokens of the result) and the audit
//!   layer (progress, error code) read event by event as it passes;
//! - `sealed/…`: sealed session ids: `seal+open` (a session's route sealed
//!   into its id at `initialize`, opened again), `open` and `get` (what
//!   each request of a sealed session costs to find its route).

// criterion_group! generates undocumented items.
#![allow(missing_docs)]

use std::convert::Infallible;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use http_body_util::BodyExt;
use mcp_gateway_tower::acl::AclLayer;
use mcp_gateway_tower::audit::{
    AuditConfig, AuditLayer, AuditSink, JsonlConfig, JsonlSink, Overflow,
};
use mcp_gateway_tower::auth::{AuthConfig, AuthLayer};
use mcp_gateway_tower::jsonrpc::JsonRpcLayer;
use mcp_gateway_tower::limit::{InMemoryLimiter, LimitLayer};
use mcp_gateway_tower::pinning::{PinMode, ToolPins};
use mcp_gateway_tower::rules::{PolicyConfig, RulePolicy};
use mcp_gateway_tower::Body;
use tower::{Layer, Service, ServiceExt};

// The allocator the `gateway` example runs on.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "support/stack.rs"]
mod stack;
use stack::{bench_jwt, bench_token, generous_limits};

const CALL: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_weather","arguments":{"city":"Paris"}}}"#;
const RESULT: &str = r#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"18 degrees and sunny"}],"isError":false}}"#;
fn acl() -> AclLayer {
    let policy: PolicyConfig = serde_json::from_value(serde_json::json!({
        "rules": [
            {"effect": "allow", "roles": ["agent"], "tools": ["get_*", "search"]},
            {"effect": "allow", "tools": ["ping"]},
            {"effect": "deny", "tools": ["*delete*"]}
        ]
    }))
    .unwrap();
    AclLayer::new(RulePolicy::new(&policy), "bench")
        .with_pins(Arc::new(ToolPins::new(PinMode::Block)))
}

const JSON: &str = "application/json";
const SSE: &str = "text/event-stream";

/// The result as the loopback benchmark's stub streams it.
fn sse_result() -> &'static str {
    static S: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    S.get_or_init(|| format!("id: 0\ndata: \n\nevent: message\ndata: {RESULT}\n\n"))
}

/// A service answering every request at once with `body`.
fn stub(
    body: &'static str,
    content_type: &'static str,
) -> impl Service<
    http::Request<Body>,
    Response = http::Response<Body>,
    Error = Infallible,
    Future = impl Send,
> + Clone
       + Send {
    tower::service_fn(move |_req: http::Request<Body>| async move {
        let mut res = http::Response::new(Body::from(body));
        res.headers_mut()
            .insert("content-type", http::HeaderValue::from_static(content_type));
        Ok::<_, Infallible>(res)
    })
}

fn request(auth: Option<&str>) -> http::Request<Body> {
    let mut b = http::Request::post("/mcp")
        .header("host", "127.0.0.1")
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-11-25");
    if let Some(a) = auth {
        b = b.header("authorization", a);
    }
    b.body(Body::from(CALL)).unwrap()
}

async fn drive<S>(svc: S, req: http::Request<Body>)
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
{
    drive_expecting(svc, req, RESULT).await
}

async fn drive_expecting<S>(svc: S, req: http::Request<Body>, expected: &str)
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
{
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), expected.len());
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let bearer = format!("Bearer {}", bench_token());
    let jsonrpc = JsonRpcLayer::default().layer(stub(RESULT, JSON));
    // The ACL alone sees a principal an earlier layer put there.
    let agent = mcp_gateway_core::Principal::builder("bench-agent")
        .roles(["agent"])
        .build();
    let with_acl = tower::ServiceBuilder::new()
        .map_request(move |mut r: http::Request<Body>| {
            r.extensions_mut().insert(agent.clone());
            r
        })
        .layer(JsonRpcLayer::default())
        .layer(acl())
        .service(stub(RESULT, JSON));
    let full = AuthLayer::new(bench_jwt(), AuthConfig::default())
        .layer(JsonRpcLayer::default().layer(acl().layer(stub(RESULT, JSON))));
    let mut g = c.benchmark_group("layers");
    g.bench_function("jsonrpc", |b| {
        b.iter(|| rt.block_on(drive(jsonrpc.clone(), request(None))))
    });
    g.bench_function("jsonrpc+acl", |b| {
        b.iter(|| rt.block_on(drive(with_acl.clone(), request(None))))
    });
    g.bench_function("jwt+jsonrpc+acl", |b| {
        b.iter(|| rt.block_on(drive(full.clone(), request(Some(&bearer)))))
    });
    let dir = std::env::temp_dir().join(format!("mcpgw-bench-layers-{}", std::process::id()));
    let sink = Arc::new(
        JsonlSink::open(JsonlConfig {
            path: dir.join("audit.jsonl"),
            max_bytes: 64 << 20,
            keep: 2,
            buffer: 1 << 20,
            overflow: Overflow::Drop,
        })
        .unwrap(),
    );
    let limits = LimitLayer::new(generous_limits(), "bench", Arc::new(InMemoryLimiter::new()));
    let full = AuditLayer::new(sink.clone(), AuditConfig::default()).layer(
        AuthLayer::new(bench_jwt(), AuthConfig::default())
            .layer(JsonRpcLayer::default().layer(acl().layer(limits.layer(stub(RESULT, JSON))))),
    );
    let with_limits = AuthLayer::new(bench_jwt(), AuthConfig::default())
        .layer(JsonRpcLayer::default().layer(acl().layer(limits.layer(stub(RESULT, JSON)))));
    g.bench_function("jwt+jsonrpc+acl+limit", |b| {
        b.iter(|| rt.block_on(drive(with_limits.clone(), request(Some(&bearer)))))
    });
    let with_audit = AuditLayer::new(sink.clone(), AuditConfig::default()).layer(
        AuthLayer::new(bench_jwt(), AuthConfig::default())
            .layer(JsonRpcLayer::default().layer(acl().layer(stub(RESULT, JSON)))),
    );
    g.bench_function("audit+jwt+jsonrpc+acl", |b| {
        b.iter(|| rt.block_on(drive(with_audit.clone(), request(Some(&bearer)))))
    });
    g.bench_function("full", |b| {
        b.iter(|| rt.block_on(drive(full.clone(), request(Some(&bearer)))))
    });
    g.finish();
    let mut g = c.benchmark_group("layers_sse");
    let secure = AuthLayer::new(bench_jwt(), AuthConfig::default())
        .layer(JsonRpcLayer::default().layer(acl().layer(stub(sse_result(), SSE))));
    g.bench_function("jwt+jsonrpc+acl", |b| {
        b.iter(|| {
            rt.block_on(drive_expecting(
                secure.clone(),
                request(Some(&bearer)),
                sse_result(),
            ))
        })
    });
    let full = AuditLayer::new(sink.clone(), AuditConfig::default()).layer(
        AuthLayer::new(bench_jwt(), AuthConfig::default()).layer(
            JsonRpcLayer::default().layer(acl().layer(limits.layer(stub(sse_result(), SSE)))),
        ),
    );
    g.bench_function("full", |b| {
        b.iter(|| {
            rt.block_on(drive_expecting(
                full.clone(),
                request(Some(&bearer)),
                sse_result(),
            ))
        })
    });
    g.finish();
    telemetry(c, &rt);
    let mut g = c.benchmark_group("layers");
    let auth = bench_jwt();
    let raw = bench_token();
    g.bench_function("jwt_uncached", |b| {
        b.iter(|| rt.block_on(auth.verify(&raw)).unwrap())
    });
    g.finish();
    sink.close();
    assert_eq!(
        sink.dropped(),
        0,
        "the benchmark must not outrun the audit writer"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The telemetry group (see the module docs).
fn telemetry(c: &mut Criterion, rt: &tokio::runtime::Runtime) {
    use mcp_gateway_tower::audit::FanOut;
    use mcp_gateway_tower::telemetry::{Metrics, MetricsConfig, Telemetry};
    use mcp_gateway_tower::upstream::Upstreams;
    use opentelemetry::metrics::MeterProvider as _;
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::layer::SubscriberExt;

    let registry = prometheus::Registry::new();
    let meters = opentelemetry_sdk::metrics::SdkMeterProvider::builder()
        .with_reader(
            opentelemetry_prometheus::exporter()
                .with_registry(registry.clone())
                .build()
                .unwrap(),
        )
        .build();
    let metrics = Metrics::new(meters.meter("bench"), MetricsConfig::default());
    let stack = |t: Option<Telemetry>| {
        let mut up = Upstreams::new(vec![Upstreams::boxed(stub(RESULT, JSON))]);
        let mut audit = AuditLayer::new(Arc::new(FanOut(Vec::new())), AuditConfig::default());
        if let Some(t) = &t {
            if let Some(m) = &t.metrics {
                up = up.with_metrics(m.clone());
            }
            audit = audit.telemetry(t);
        }
        audit.layer(JsonRpcLayer::default().layer(up))
    };
    let base = stack(None);
    let with_metrics = stack(Some(Telemetry::default().metrics(metrics.clone())));
    let with_traces = stack(Some(
        Telemetry::default().metrics(metrics.clone()).traces(true),
    ));
    let server_only = {
        let up = Upstreams::new(vec![Upstreams::boxed(stub(RESULT, JSON))]);
        AuditLayer::new(Arc::new(FanOut(Vec::new())), AuditConfig::default())
            .telemetry(&Telemetry::default().metrics(metrics.clone()))
            .layer(JsonRpcLayer::default().layer(up))
    };
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let tracer = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(tracer.tracer("bench")));
    let mut g = c.benchmark_group("layers_telemetry");
    g.bench_function("base", |b| {
        b.iter(|| rt.block_on(drive(base.clone(), request(None))))
    });
    g.bench_function("metrics", |b| {
        b.iter(|| rt.block_on(drive(with_metrics.clone(), request(None))))
    });
    g.bench_function("metrics_server_side", |b| {
        b.iter(|| rt.block_on(drive(server_only.clone(), request(None))))
    });
    tracing::subscriber::with_default(subscriber, || {
        g.bench_function("metrics+traces", |b| {
            b.iter(|| rt.block_on(drive(with_traces.clone(), request(None))))
        });
    });
    g.finish();
    // The scrape holds what was recorded (unless a filter skipped the
    // group).
    let filtered = std::env::args().skip(1).any(|a| !a.starts_with('-'));
    assert!(
        filtered
            || prometheus::TextEncoder::new()
                .encode_to_string(&registry.gather())
                .unwrap()
                .contains("mcp_server_operation_duration_seconds_count")
    );
}

/// The sealed-id path: sealing a session's route into its id (once per
/// session) and opening it (once per request).
fn bench_sealed(c: &mut Criterion) {
    use mcp_gateway_core::session::{SessionId, SessionRecord, SessionStore};
    use mcp_gateway_tower::cluster::{SealKeys, SealedConfig, SealedSessionStore};
    let keys = SealKeys::parse("1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap();
    let store = SealedSessionStore::new(keys, SealedConfig::default(), None);
    let rec = SessionRecord::new(
        SessionId::random(),
        1,
        Some(http::HeaderValue::from_static(
            "3f2a9c1e-5b7d-4e8f-a1b2-c3d4e5f60718",
        )),
    )
    .with_protocol_version(Some(mcp_gateway_core::ProtocolVersion::V2025_11_25))
    .with_owner(Some("jwt:https://issuer.example/agent-42".into()));
    let id = store.seal(&rec).unwrap();
    let mut g = c.benchmark_group("sealed");
    g.bench_function("seal+open", |b| {
        b.iter(|| {
            let id = store.seal(&rec).unwrap();
            store.open(&id).unwrap()
        })
    });
    g.bench_function("open", |b| b.iter(|| store.open(&id).unwrap()));
    g.bench_function("get", |b| {
        b.iter(|| match store.get(&id) {
            mcp_gateway_core::Answer::Ready(Some(r)) => r,
            _ => unreachable!(),
        })
    });
    g.finish();
}

criterion_group!(benches, bench, bench_sealed);
criterion_main!(benches);
