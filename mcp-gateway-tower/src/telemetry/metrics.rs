//! [`Metrics`]: the gateway's instruments, fed by the audit layer's
//! records (as an [`AuditSink`]), the upstreams and the SSE relay.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use mcp_gateway_core::session::SessionStore;
use mcp_gateway_core::ErrorKind;
use opentelemetry::metrics::{Counter, Histogram, Meter};

use super::bound::Bound;
use super::tally::{Count, Label, Tally, TallyKey};
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
    seen: RwLock<HashMap<Box<str>, Label, foldhash::fast::RandomState>>,
    other: Label,
}

impl Cap {
    fn new(max: usize) -> Self {
        Cap {
            max,
            seen: RwLock::default(),
            other: Label(OTHER.into()),
        }
    }

    fn label(&self, s: &str) -> Label {
        if let Some(v) = self.seen.read().unwrap_or_else(|e| e.into_inner()).get(s) {
            return v.clone();
        }
        let mut seen = self.seen.write().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = seen.get(s) {
            return v.clone();
        }
        if seen.len() >= self.max {
            return self.other.clone();
        }
        let v = Label(Arc::<str>::from(s));
        seen.insert(s.into(), v.clone());
        v
    }

    fn get(&self, s: &str) -> Value {
        self.label(s).value()
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
    server_op: Bound<TallyKey>,
    client_op: Bound<ClientKey>,
    server_session: Histogram<f64>,
    client_session: Histogram<f64>,
    connect: Histogram<f64>,
    ttfb: Bound<Label>,
    tally: Arc<Tally>,
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
        // Series per instrument: within the SDK's default cardinality
        // limit (2 000), past which it folds series into an overflow one.
        let series = 1_900;
        let tally = Arc::new(Tally::new(series));
        let tallied = [
            (
                CALLS,
                "Calls by tenant, tool, backend and outcome",
                Count::Calls,
            ),
            (COST, "Cost units charged", Count::Cost),
            (TOKENS, "Result tokens charged", Count::Tokens),
            (
                PROGRESS_NOTIFICATIONS,
                "Progress notifications relayed",
                Count::Progress,
            ),
        ]
        .map(|(name, desc, which)| {
            let t = tally.clone();
            meter
                .u64_observable_counter(name)
                .with_description(desc)
                .with_callback(move |o| {
                    for (attrs, n) in t.read(which) {
                        o.observe(n, &attrs);
                    }
                })
                .build()
        });
        let m = Arc::new(Metrics {
            server_op: Bound::new(
                hist(
                    SERVER_OPERATION_DURATION,
                    "MCP requests answered by the gateway (client to gateway)",
                    &DURATION_BUCKETS,
                ),
                series,
            ),
            client_op: Bound::new(
                hist(
                    CLIENT_OPERATION_DURATION,
                    "MCP requests the gateway sent to backends (gateway to backend)",
                    &DURATION_BUCKETS,
                ),
                series,
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
            ttfb: Bound::new(
                hist(
                    UPSTREAM_TTFB,
                    "From a request sent to a backend to its response head",
                    &LATENCY_BUCKETS,
                ),
                series,
            ),
            tally: tally.clone(),
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
        });
        for c in tallied {
            m.keep(c);
        }
        m
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

    /// Reports what `read` counts as the counter `name` (one of the
    /// gateway's own in [`names`](super::names), e.g. the shared state's
    /// errors), read at each collection.
    pub fn watch_counter(
        &self,
        name: &'static str,
        description: &'static str,
        read: impl Fn() -> u64 + Send + Sync + 'static,
    ) {
        let c = self
            .meter
            .u64_observable_counter(name)
            .with_description(description)
            .with_callback(move |o| o.observe(read(), &[]))
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

    /// The labels of a request about to be sent to backend `backend`.
    pub(crate) fn client_key(
        &self,
        backend: &str,
        method: Option<&'static str>,
        target: Option<(&'static str, &str)>,
    ) -> ClientKey {
        ClientKey {
            backend: self.backends.label(backend),
            method,
            target: target.map(|(k, t)| (k, self.tools.label(t))),
            error: None,
        }
    }

    /// A request sent to a backend was answered (`ttfb` after it was
    /// sent).
    pub(crate) fn client_head(&self, call: &ClientKey, ttfb: Duration) {
        self.ttfb.record(call.backend.clone(), seconds(ttfb), |b| {
            vec![KeyValue::new(BACKEND, b.value())]
        });
    }

    /// A request sent to a backend ended after `took`.
    pub(crate) fn client_call(&self, mut call: ClientKey, took: Duration, error: Option<&str>) {
        call.error = error.map(|e| self.errors.label(e));
        self.client_op
            .record(call, seconds(took), ClientKey::attributes);
    }

    fn call(&self, e: &AuditEventRef<'_>) {
        let mut code = itoa::Buffer::new();
        let code = e.error_code.map(|c| code.format(c));
        let error: Option<&str> = match (e.outcome, e.tool_error) {
            (Outcome::Ok, true) => Some("tool_error"),
            (Outcome::Ok, false) => None,
            (o, _) => Some(code.unwrap_or(o.as_str())),
        };
        // Each label looked up once, shared by the records below.
        let key = TallyKey {
            method: e.method.map(|m| self.methods.label(m)),
            target: e
                .method
                .and_then(target_key)
                .zip(e.target)
                .map(|(k, t)| (k, self.tools.label(t))),
            backend: e.backend.map(|b| self.backends.label(b)),
            outcome: e.outcome.as_str(),
            error: error.map(|x| self.errors.label(x)),
            rpc_status: error.and(code).map(|c| self.errors.label(c)),
            tenant: e.tenant.map(|t| self.tenants.label(t)),
            principal: e
                .principal
                .filter(|_| self.cfg.principal_labels)
                .map(|p| self.principals.label(p)),
            version: None,
        };
        if let Some(us) = e.duration_us {
            // Keyed without the tenant and principal (never histogram
            // labels), with the protocol version.
            let op = TallyKey {
                tenant: None,
                principal: None,
                version: e.protocol_version.map(|v| self.versions.label(v)),
                ..key.clone()
            };
            self.server_op
                .record(op, us as f64 / 1e6, TallyKey::histogram_attributes);
        }
        // Refusals and denials are rare: their attributes are made only
        // for them.
        match e.outcome {
            Outcome::Limited => {
                let limit = e.limit.unwrap_or(match e.error_code {
                    Some(c) if c == ErrorKind::TooManySessions.code() as i64 => "sessions",
                    _ => "rate",
                });
                let mut a = vec![KeyValue::new(LIMIT, self.methods.get(limit))];
                a.extend(
                    key.backend
                        .as_ref()
                        .map(|b| KeyValue::new(BACKEND, b.value())),
                );
                self.refusals.add(1, &a);
            }
            Outcome::Denied => {
                let a = key.call_attributes();
                if e.error_code == Some(ErrorKind::ToolChanged.code() as i64) {
                    self.pins.add(1, &a);
                } else {
                    self.denials.add(1, &a);
                }
            }
            _ => {}
        }
        // Cost attribution, counted in process (see `tally`).
        self.tally.add(key, e.cost, e.tokens, e.progress);
    }

    fn backend_value(&self, b: &str) -> Value {
        self.backends.get(b)
    }
}

/// The labels of a call sent to a backend.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ClientKey {
    backend: Label,
    method: Option<&'static str>,
    target: Option<(&'static str, Label)>,
    error: Option<Label>,
}

impl ClientKey {
    fn attributes(&self) -> Vec<KeyValue> {
        let mut a = vec![KeyValue::new(BACKEND, self.backend.value())];
        if let Some(m) = self.method {
            a.push(KeyValue::new(METHOD, m));
        }
        if let Some((k, t)) = &self.target {
            a.push(KeyValue::new(*k, t.value()));
        }
        if let Some(e) = &self.error {
            a.push(KeyValue::new(ERROR_TYPE, e.value()));
        }
        a
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::metrics::MeterProvider as _;
    use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
    use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};

    #[test]
    fn a_label_takes_at_most_its_cap_of_values() {
        let cap = Cap::new(2);
        assert_eq!(cap.get("a"), Value::from("a"));
        assert_eq!(cap.get("b"), Value::from("b"));
        assert_eq!(cap.get("c"), Value::from(OTHER));
        // Values seen before the cap was reached keep their own series.
        assert_eq!(cap.get("a"), Value::from("a"));
    }

    fn call<'a>(tool: &'a str, outcome: Outcome) -> AuditEventRef<'a> {
        AuditEventRef {
            event: EventKind::Call,
            method: Some("tools/call"),
            target: Some(tool),
            backend: Some("db"),
            tenant: Some("acme"),
            outcome,
            duration_us: Some(1500),
            cost: 2,
            ..Default::default()
        }
    }

    /// Calls counted per tool, past the cap as `_other`.
    #[test]
    fn the_sink_counts_calls_by_tool_and_tenant_within_the_cap() {
        let exporter = InMemoryMetricExporter::default();
        let provider = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(exporter.clone()).build())
            .build();
        let m = Metrics::new(
            provider.meter("test"),
            MetricsConfig::default().max_label_values(2),
        );
        for tool in ["echo", "echo", "whoami", "third", "fourth"] {
            m.record(&call(tool, Outcome::Ok));
        }
        m.record(&AuditEventRef {
            limit: Some("principal_rate"),
            ..call("echo", Outcome::Limited)
        });
        m.record(&AuditEventRef {
            error_code: Some(ErrorKind::ToolChanged.code() as i64),
            ..call("echo", Outcome::Denied)
        });
        m.record(&AuditEventRef {
            error_code: Some(ErrorKind::Denied.code() as i64),
            ..call("echo", Outcome::Denied)
        });
        provider.force_flush().unwrap();
        let all = exporter.get_finished_metrics().unwrap();
        let mut calls: Vec<(String, String, u64)> = Vec::new();
        let (mut refusals, mut pins, mut denials) = (0, 0, 0);
        for rm in &all {
            for sm in rm.scope_metrics() {
                for metric in sm.metrics() {
                    let AggregatedMetrics::U64(MetricData::Sum(sum)) = metric.data() else {
                        continue;
                    };
                    for p in sum.data_points() {
                        let get = |k: &str| {
                            p.attributes()
                                .find(|kv| kv.key.as_str() == k)
                                .map(|kv| kv.value.to_string())
                                .unwrap_or_default()
                        };
                        match metric.name() {
                            CALLS => calls.push((get(TOOL), get(OUTCOME), p.value())),
                            LIMIT_REFUSALS => refusals += p.value(),
                            PIN_VIOLATIONS => pins += p.value(),
                            POLICY_DENIALS => denials += p.value(),
                            _ => {}
                        }
                    }
                }
            }
        }
        calls.sort();
        assert_eq!(
            calls,
            vec![
                ("_other".into(), "ok".into(), 2),
                // Two error types: the pin's code and the policy's.
                ("echo".into(), "denied".into(), 1),
                ("echo".into(), "denied".into(), 1),
                ("echo".into(), "limited".into(), 1),
                ("echo".into(), "ok".into(), 2),
                ("whoami".into(), "ok".into(), 1),
            ]
        );
        assert_eq!((refusals, pins, denials), (1, 1, 1));
    }
}
