//! Telemetry: metrics and traces named by OpenTelemetry's MCP semantic
//! conventions (feature `otel`).
//!
//! The library records through the OpenTelemetry *API*; the application
//! installs the SDK and its exporters (the `mcp-gateway` binary: a
//! Prometheus scrape endpoint and OTLP over HTTP/protobuf or gRPC). With
//! no meter provider installed, recording is a no-op.
//!
//! - [`Metrics`]: server- and client-side operation durations, session
//!   durations, sessions open, calls in flight, connect and first-byte
//!   times, SSE events and progress relayed, refusals, denials, pin
//!   violations, dropped audit records, backend health and ejections, and
//!   calls, tokens and cost by tenant, tool and backend. Names:
//!   [`names`].
//! - Traces ([`Telemetry::traces`]): a SERVER span per request received
//!   (opened by the audit layer, ended when the response body ends), a
//!   CLIENT span per request sent to a backend; W3C trace context taken
//!   from the client's headers or `params._meta`, and injected into the
//!   backend request's headers and `params._meta`. The audit record
//!   carries the trace and span ids.

mod bound;
mod metrics;
pub mod names;
mod tally;
pub(crate) use self::metrics::{target_key, ClientKey};
pub use self::metrics::{Metrics, MetricsConfig, SseCounter, DURATION_BUCKETS, LATENCY_BUCKETS};
mod trace;
pub(crate) use self::trace::{
    client_span, end_client, end_server, on_parsed, server_span, ServerEnd,
};
pub use self::trace::{ServerSpan, SPAN_TARGET};

use std::sync::Arc;

/// What the gateway's layers record: metrics, spans, both or neither.
/// Handed to the audit layer ([`AuditLayer::telemetry`](crate::audit::AuditLayer::telemetry))
/// and the upstreams ([`Upstreams::with_metrics`](crate::upstream::Upstreams::with_metrics)).
#[derive(Debug, Clone, Default)]
pub struct Telemetry {
    /// The metrics, if recorded.
    pub metrics: Option<Arc<Metrics>>,
    /// Whether spans are made (a `tracing` subscriber with an OpenTelemetry
    /// layer on [`SPAN_TARGET`] must be installed for them to go anywhere).
    pub traces: bool,
}

impl Telemetry {
    /// Metrics recorded on `metrics`.
    pub fn metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Spans made.
    pub fn traces(mut self, on: bool) -> Self {
        self.traces = on;
        self
    }

    /// Whether anything is recorded.
    pub fn is_on(&self) -> bool {
        self.metrics.is_some() || self.traces
    }
}
