//! [`Metrics`]: the gateway's instruments, fed by the audit layer's
//! records (as an [`AuditSink`]), the upstreams and the SSE relay.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use mcp_gateway_core::session::SessionStore;
use mcp_gateway_core::ErrorKind;
use opentelemetry::metrics::{Counter, Histogram, Meter};
use opentelemetry::{KeyValue, Value};

use super::names::*;
use crate::audit::{AuditEventRef, AuditSink, EventKind, Outcome};
use crate::sse::{OnSseEvent, StreamContext};
use crate::upstream::Instances;

/// Bucket bounds (seconds) of the duration histograms: those the MCP
/// semantic conventions recommend.
pub const DURATION_BUCKETS: [f64; 15] = [
    0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 300.0,
];

/// Bucket bounds (seconds) of connect and time-to-first-byte histograms:
/// finer, as a healthy hop takes well under a millisecond.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Which labels the metrics carry beyond the conventions' own, and how
/// many distinct values each may take.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MetricsConfig {
    /// Label the cost-attribution counters (`mcp.gateway.calls`, `.cost`,
    /// `.tokens`) with the principal's subject (`enduser.id`). Default:
    /// off (tenants are labelled; subjects can be many).
    pub principal_labels: bool,
    /// Distinct values kept per label (tool, prompt, method, tenant,
    /// principal, error type); later ones are counted as `_other`.
    /// Default: 1000.
    pub max_label_values: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            principal_labels: false,
            max_label_values: 1000,
        }
    }
}

impl MetricsConfig {
    /// Sets [`principal_labels`](Self::principal_labels).
    pub fn principal_labels(mut self, on: bool) -> Self {
        self.principal_labels = on;
        self
    }

    /// Sets [`max_label_values`](Self::max_label_values).
    pub fn max_label_values(mut self, n: usize) -> Self {
        self.max_label_values = n;
        self
    }
}

/// The distinct values of one label, up to a cap: a client choosing tool
/// names (or methods, or tenants) cannot grow the series without bound.
/// Values are shared (`Arc<str>`): a label costs no allocation per call.
struct Cap {
    max: usize,
    seen: RwLock<HashMap<Box<str>, Value, foldhash::fast::RandomState>>,
}

impl Cap {
    fn new(max: usize) -> Self {
        Cap {
            max,
            seen: RwLock::default(),
        }
    }

    fn get(&self, s: &str) -> Value {
        if let Some(v) = self.seen.read().unwrap_or_else(|e| e.into_inner()).get(s) {
            return v.clone();
        }
        let mut seen = self.seen.write().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = seen.get(s) {
            return v.clone();
        }
        if seen.len() >= self.max {
            return Value::from(OTHER);
        }
        let v = Value::from(Arc::<str>::from(s));
        seen.insert(s.into(), v.clone());
        v
    }
}

/// The gateway's metrics, recorded through an OpenTelemetry [`Meter`]
/// (the application installs the meter provider and its exporters:
/// Prometheus, OTLP, …). Named by the MCP semantic conventions
/// ([`names`](super::names)).
///
/// It is fed by:
/// - the audit layer, as one of its sinks ([`AuditSink`]): each call's
///   server-side duration, outcome and cost, refusals, denials, session
///   durations, failovers;
/// - the upstreams ([`Upstreams::with_metrics`](crate::upstream::Upstreams::with_metrics)):
///   each call's client-side duration and time to first byte;
/// - the HTTP client ([`Metrics::connect_observer`]): connect times;
/// - the SSE relay ([`Metrics::sse_counter`]): events relayed;
/// - callbacks at collection ([`Metrics::watch_instances`],
///   [`Metrics::watch_sessions`], [`Metrics::watch_audit`]): health,
///   ejections and calls in flight per instance, open sessions, dropped
///   audit records. These cost nothing per call.
pub struct Metrics {
    meter: Meter,
    cfg: MetricsConfig,
    server_op: Histogram<f64>,
    client_op: Histogram<f64>,
    server_session: Histogram<f64>,
    client_session: Histogram<f64>,
    connect: Histogram<f64>,
    ttfb: Histogram<f64>,
    calls: Counter<u64>,
    cost: Counter<u64>,
    tokens: Counter<u64>,
    progress: Counter<u64>,
    sse_events: Counter<u64>,
    refusals: Counter<u64>,
    denials: Counter<u64>,
    pins: Counter<u64>,
    failovers: Counter<u64>,
    tools: Cap,
    methods: Cap,
    tenants: Cap,
    principals: Cap,
    errors: Cap,
    versions: Cap,
    backends: Cap,
    /// Observable instruments, kept alive (their callbacks run at each
    /// collection).
    watched: Mutex<Vec<Box<dyn std::any::Any + Send + Sync>>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

impl Metrics {
    /// The instruments, created on `meter`.
    pub fn new(meter: Meter, cfg: MetricsConfig) -> Arc<Self> {
        let hist = |name: &'static str, desc: &'static str, b: &[f64]| {
            meter
                .f64_histogram(name)
                .with_unit("s")
                .with_description(desc)
                .with_boundaries(b.to_vec())
                .build()
        };
        let count = |name: &'static str, desc: &'static str, unit: &'static str| {
            let c = meter.u64_counter(name).with_description(desc);
            if unit.is_empty() {
                c
            } else {
                c.with_unit(unit)
            }
            .build()
        };
        let max = cfg.max_label_values.max(1);
        Arc::new(Metrics {
            server_op: hist(
                SERVER_OPERATION_DURATION,
                "MCP requests answered by the gateway (client to gateway)",
                &DURATION_BUCKETS,
            ),
            client_op: hist(
                CLIENT_OPERATION_DURATION,
                "MCP requests the gateway sent to backends (gateway to backend)",
                &DURATION_BUCKETS,
            ),
            server_session: hist(
                SERVER_SESSION_DURATION,
                "Client sessions with the gateway",
                &DURATION_BUCKETS,
            ),
            client_session: hist(
                CLIENT_SESSION_DURATION,
                "The gateway's sessions with backends",
                &DURATION_BUCKETS,
            ),
            connect: hist(
                UPSTREAM_CONNECT_DURATION,
                "Connection set-up to a backend (TCP, and TLS for https)",
                &LATENCY_BUCKETS,
            ),
            ttfb: hist(
                UPSTREAM_TTFB,
                "From a request sent to a backend to its response head",
                &LATENCY_BUCKETS,
            ),
            calls: count(CALLS, "Calls by tenant, tool, backend and outcome", ""),
            cost: count(COST, "Cost units charged", ""),
            tokens: count(TOKENS, "Result tokens charged", ""),
            progress: count(PROGRESS_NOTIFICATIONS, "Progress notifications relayed", ""),
            sse_events: count(SSE_EVENTS, "SSE events relayed to clients", ""),
            refusals: count(LIMIT_REFUSALS, "Calls refused by a limit", ""),
            denials: count(POLICY_DENIALS, "Calls refused by the tool policy", ""),
            pins: count(
                PIN_VIOLATIONS,
                "Calls refused because a pinned tool changed",
                "",
            ),
            failovers: count(FAILOVERS, "Sessions moved to another instance", ""),
            tools: Cap::new(max),
            methods: Cap::new(max.min(256)),
            tenants: Cap::new(max),
            principals: Cap::new(max),
            errors: Cap::new(max.min(256)),
            versions: Cap::new(64),
            backends: Cap::new(max),
            watched: Mutex::new(Vec::new()),
            meter,
            cfg,
        })
    }

    /// The settings.
    pub fn config(&self) -> &MetricsConfig {
        &self.cfg
    }

    fn keep(&self, instrument: impl std::any::Any + Send + Sync) {
        self.watched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(instrument));
    }

    /// Reports the health, ejections and calls in flight of `instances`
    /// at each collection.
    pub fn watch_instances(&self, instances: Instances) {
        let inst: Arc<dyn Fn() -> InstanceRows + Send + Sync> = Arc::new(move || {
            let backend = Value::from(instances.backend().clone());
            instances
                .list()
                .into_iter()
                .filter(|i| !i.state.is_removed())
                .map(|i| {
                    let attrs = [
                        KeyValue::new(BACKEND, backend.clone()),
                        KeyValue::new(INSTANCE, Value::from(i.key.clone())),
                    ];
                    (attrs, i.state)
                })
                .collect()
        });
        let healthy = self
            .meter
            .u64_observable_gauge(BACKEND_HEALTHY)
            .with_description("1 when a backend instance takes new sessions, else 0")
            .with_callback({
                let inst = inst.clone();
                move |o| {
                    for (attrs, s) in inst() {
                        o.observe(u64::from(s.is_eligible()), &attrs);
                    }
                }
            })
            .build();
        let ejections = self
            .meter
            .u64_observable_counter(BACKEND_EJECTIONS)
            .with_description("Ejections of a backend instance")
            .with_callback({
                let inst = inst.clone();
                move |o| {
                    for (attrs, s) in inst() {
                        o.observe(s.ejections(), &attrs);
                    }
                }
            })
            .build();
        let in_flight = self
            .meter
            .u64_observable_gauge(CALLS_IN_FLIGHT)
            .with_description("Calls in flight at a backend instance")
            .with_callback(move |o| {
                for (attrs, s) in inst() {
                    o.observe(s.outstanding() as u64, &attrs);
                }
            })
            .build();
        self.keep(healthy);
        self.keep(ejections);
        self.keep(in_flight);
    }

    /// Reports the sessions open in `store` (of backend `backend`) at each
    /// collection.
    pub fn watch_sessions(&self, backend: Arc<str>, store: Arc<dyn SessionStore>) {
        let g = self
            .meter
            .u64_observable_gauge(SESSIONS_ACTIVE)
            .with_description("Sessions open")
            .with_callback(move |o| {
                o.observe(
                    store.len() as u64,
                    &[KeyValue::new(BACKEND, Value::from(backend.clone()))],
                )
            })
            .build();
        self.keep(g);
    }

    /// Reports the records `sink` dropped at each collection.
    pub fn watch_audit(&self, sink: Arc<dyn AuditSink>) {
        let c = self
            .meter
            .u64_observable_counter(AUDIT_DROPPED)
            .with_description("Audit records dropped by a full sink")
            .with_callback(move |o| o.observe(sink.dropped(), &[]))
            .build();
        self.keep(c);
    }

    /// What the HTTP client calls with each connection set-up's duration,
    /// for backend `backend`.
    pub fn connect_observer(
        self: &Arc<Self>,
        backend: Arc<str>,
    ) -> crate::upstream::ConnectObserver {
        let m = self.clone();
        let backend = Value::from(backend);
        crate::upstream::ConnectObserver::new(move |took: Duration, ok: bool| {
            let mut attrs = vec![KeyValue::new(BACKEND, backend.clone())];
            if !ok {
                attrs.push(KeyValue::new(ERROR_TYPE, "connect_failed"));
            }
            m.connect.record(seconds(took), &attrs);
        })
    }

    /// An SSE relay hook that counts the events relayed for backend
    /// `backend` (it asks for no event data: the relay copies nothing).
    pub fn sse_counter(self: &Arc<Self>, backend: Arc<str>) -> SseCounter {
        SseCounter(Some((self.clone(), Value::from(backend))))
    }

    /// A request sent to a backend was answered (`ttfb` after it was
    /// sent) or failed before its head.
    pub(crate) fn client_head(&self, backend: &Value, ttfb: Duration) {
        self.ttfb
            .record(seconds(ttfb), &[KeyValue::new(BACKEND, backend.clone())]);
    }

    /// A request sent to a backend ended after `took`.
    pub(crate) fn client_call(&self, call: &ClientCall, took: Duration, error: Option<&str>) {
        let mut attrs = Vec::with_capacity(6);
        attrs.push(KeyValue::new(BACKEND, call.backend.clone()));
        attrs.push(KeyValue::new(NETWORK_TRANSPORT, "tcp"));
        if let Some(m) = &call.method {
            attrs.push(KeyValue::new(METHOD, self.methods.get(m)));
        }
        if let Some((key, t)) = &call.target {
            attrs.push(KeyValue::new(*key, self.tools.get(t.as_str())));
        }
        if let Some(e) = error {
            attrs.push(KeyValue::new(ERROR_TYPE, self.errors.get(e)));
        }
        self.client_op.record(seconds(took), &attrs);
    }

    fn call(&self, e: &AuditEventRef<'_>) {
        let backend = e
            .backend
            .map(|b| KeyValue::new(BACKEND, self.backend_value(b)));
        let target = e.method.and_then(|m| target_key(m)).zip(e.target);
        let error: Option<std::borrow::Cow<'_, str>> = if e.tool_error && e.outcome == Outcome::Ok {
            Some("tool_error".into())
        } else if e.outcome == Outcome::Ok {
            None
        } else {
            Some(match e.error_code {
                Some(c) => itoa::Buffer::new().format(c).to_owned().into(),
                None => e.outcome.as_str().into(),
            })
        };
        let mut attrs = Vec::with_capacity(9);
        if let Some(m) = e.method {
            attrs.push(KeyValue::new(METHOD, self.methods.get(m)));
        }
        if let Some((key, t)) = target {
            attrs.push(KeyValue::new(key, self.tools.get(t)));
        }
        if let Some(b) = &backend {
            attrs.push(b.clone());
        }
        attrs.push(KeyValue::new(OUTCOME, e.outcome.as_str()));
        if let Some(err) = &error {
            let v = self.errors.get(err);
            if let Some(c) = e.error_code {
                attrs.push(KeyValue::new(
                    RPC_STATUS,
                    self.errors.get(itoa::Buffer::new().format(c)),
                ));
            }
            attrs.push(KeyValue::new(ERROR_TYPE, v));
        }
        let cost_attrs_from = attrs.len();
        if let Some(v) = e.protocol_version {
            attrs.push(KeyValue::new(PROTOCOL_VERSION, self.versions.get(v)));
        }
        attrs.push(KeyValue::new(NETWORK_TRANSPORT, "tcp"));
        if let Some(us) = e.duration_us {
            self.server_op.record(us as f64 / 1e6, &attrs);
        }
        // Cost attribution: method, target, backend, outcome, tenant
        // (and principal).
        attrs.truncate(cost_attrs_from);
        if let Some(t) = e.tenant {
            attrs.push(KeyValue::new(TENANT, self.tenants.get(t)));
        }
        if self.cfg.principal_labels {
            if let Some(p) = e.principal {
                attrs.push(KeyValue::new(PRINCIPAL, self.principals.get(p)));
            }
        }
        self.calls.add(1, &attrs);
        if e.cost > 0 || e.tokens > 0 || e.progress > 0 {
            // Without the outcome and error labels.
            attrs.retain(|kv| {
                kv.key.as_str() != OUTCOME
                    && kv.key.as_str() != ERROR_TYPE
                    && kv.key.as_str() != RPC_STATUS
            });
            if e.cost > 0 {
                self.cost.add(e.cost, &attrs);
            }
            if e.tokens > 0 {
                self.tokens.add(e.tokens, &attrs);
            }
            if e.progress > 0 {
                self.progress.add(e.progress, &attrs);
            }
        }
        match e.outcome {
            Outcome::Limited => {
                let limit = e.limit.unwrap_or(match e.error_code {
                    Some(c) if c == ErrorKind::TooManySessions.code() as i64 => "sessions",
                    _ => "rate",
                });
                let mut a = vec![KeyValue::new(LIMIT, self.methods.get(limit))];
                a.extend(backend);
                self.refusals.add(1, &a);
            }
            Outcome::Denied => {
                let mut a = Vec::with_capacity(3);
                if let Some(m) = e.method {
                    a.push(KeyValue::new(METHOD, self.methods.get(m)));
                }
                if let Some((key, t)) = target {
                    a.push(KeyValue::new(key, self.tools.get(t)));
                }
                a.extend(backend);
                if e.error_code == Some(ErrorKind::ToolChanged.code() as i64) {
                    self.pins.add(1, &a);
                } else {
                    self.denials.add(1, &a);
                }
            }
            _ => {}
        }
    }

    fn backend_value(&self, b: &str) -> Value {
        self.backends.get(b)
    }
}

/// What a client-side record knows of a call sent to a backend.
pub(crate) struct ClientCall {
    pub(crate) backend: Value,
    pub(crate) method: Option<&'static str>,
    pub(crate) target: Option<(&'static str, mcp_gateway_core::jsonrpc::Text)>,
}

/// The label key of a method's target, for those whose target is a
/// bounded name (tools, prompts): resource URIs are not labels.
pub(crate) fn target_key(method: &str) -> Option<&'static str> {
    match method {
        "tools/call" => Some(TOOL),
        "prompts/get" => Some(PROMPT),
        _ => None,
    }
}

type InstanceRows = Vec<([KeyValue; 2], Arc<crate::upstream::health::InstanceState>)>;

impl AuditSink for Metrics {
    fn record(&self, e: &AuditEventRef<'_>) {
        match e.event {
            EventKind::Call => self.call(e),
            EventKind::SessionStart => {}
            EventKind::SessionEnd => {
                let Some(us) = e.duration_us else { return };
                let mut attrs = Vec::with_capacity(3);
                if let Some(b) = e.backend {
                    attrs.push(KeyValue::new(BACKEND, self.backend_value(b)));
                }
                if let Some(v) = e.protocol_version {
                    attrs.push(KeyValue::new(PROTOCOL_VERSION, self.versions.get(v)));
                }
                if let Some(r) = e.end_reason {
                    attrs.push(KeyValue::new(END_REASON, r.as_str()));
                }
                let s = us as f64 / 1e6;
                self.server_session.record(s, &attrs);
                self.client_session.record(s, &attrs);
            }
            EventKind::Failover => {
                let attrs: Vec<KeyValue> = e
                    .backend
                    .map(|b| KeyValue::new(BACKEND, self.backend_value(b)))
                    .into_iter()
                    .collect();
                self.failovers.add(1, &attrs);
            }
        }
    }
}

/// The SSE relay hook of [`Metrics::sse_counter`]; `SseCounter::default()`
/// counts nothing.
#[derive(Clone, Default)]
pub struct SseCounter(Option<(Arc<Metrics>, Value)>);

impl std::fmt::Debug for SseCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SseCounter")
            .field(&self.0.is_some())
            .finish()
    }
}

impl OnSseEvent for SseCounter {
    fn wants_data(&self) -> bool {
        false
    }
    fn on_event(&self, _: &StreamContext, _: &mcp_gateway_core::sse::SseEvent<'_>) {}
    fn on_end(&self, _: &StreamContext, events: u64, _completed: bool) {
        if let (Some((m, backend)), true) = (&self.0, events > 0) {
            m.sse_events
                .add(events, &[KeyValue::new(BACKEND, backend.clone())]);
        }
    }
}
