//! The binary's metrics and trace exporters (`[observability]`): the
//! OpenTelemetry SDK behind the library's `telemetry` module, with a
//! Prometheus registry for `/metrics` and OTLP export over HTTP/protobuf or
//! gRPC.
//!
//! Why OpenTelemetry's SDK for metrics, with its Prometheus exporter: one
//! set of instruments, named by the MCP semantic conventions, serves both
//! the scrape and OTLP; the exporter maps the names the standard way
//! (`mcp.server.operation.duration` in seconds becomes
//! `mcp_server_operation_duration_seconds`).

use std::sync::Arc;

use mcp_gateway_tower::telemetry::{Metrics, MetricsConfig, Telemetry, SPAN_TARGET};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;

use crate::config::{ObservabilitySection, OtlpSection};

#[cfg(feature = "otlp")]
mod otlp;

/// The running exporters, and what the gateway records into them.
pub struct Observability {
    /// Handed to the gateway builder.
    pub telemetry: Telemetry,
    /// Where the scrape reads from; `None` when metrics are off.
    registry: Option<prometheus::Registry>,
    meters: Option<SdkMeterProvider>,
    tracer: Option<SdkTracerProvider>,
    /// `[observability] metrics_path`.
    pub metrics_path: Option<String>,
}

impl std::fmt::Debug for Observability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observability")
            .field("metrics", &self.registry.is_some())
            .field("traces", &self.tracer.is_some())
            .finish()
    }
}

fn resource(o: Option<&OtlpSection>) -> Resource {
    let name = o.map_or("mcp-gateway".to_owned(), |o| o.service_name.clone());
    let attrs = o
        .map(|o| {
            o.resource_attributes
                .iter()
                .map(|(k, v)| KeyValue::new(k.clone(), Value::from(v.clone())))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    Resource::builder()
        .with_service_name(name)
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .with_attributes(attrs)
        .build()
}

impl Observability {
    /// Nothing recorded (`--check-config`, or `metrics = false` without
    /// OTLP).
    pub fn off() -> Self {
        Observability {
            telemetry: Telemetry::default(),
            registry: None,
            meters: None,
            tracer: None,
            metrics_path: None,
        }
    }

    /// Starts the exporters `section` asks for, and sets the global W3C
    /// trace-context and baggage propagator. Call inside the runtime (the
    /// gRPC exporter needs one).
    pub fn start(section: &ObservabilitySection) -> Result<Self, String> {
        // The exporters' HTTPS clients use the process's rustls provider:
        // ring, as everywhere in the gateway (a no-op when one is set).
        let _ = rustls::crypto::ring::default_provider().install_default();
        opentelemetry::global::set_text_map_propagator(
            opentelemetry::propagation::TextMapCompositePropagator::new(vec![
                Box::new(TraceContextPropagator::new()),
                Box::new(BaggagePropagator::new()),
            ]),
        );
        let otlp = section.otlp.as_ref();
        #[cfg(not(feature = "otlp"))]
        if otlp.is_some() {
            return Err(
                "observability.otlp: this mcp-gateway was built without the `otlp` feature".into(),
            );
        }
        if let Some(o) = otlp {
            if !(0.0..=1.0).contains(&o.sampling_ratio) {
                return Err("observability.otlp.sampling_ratio: must be between 0 and 1".into());
            }
            if !o.endpoint.starts_with("http://") && !o.endpoint.starts_with("https://") {
                return Err(format!(
                    "observability.otlp.endpoint: {:?} must be an http:// or https:// URL",
                    o.endpoint
                ));
            }
        }
        let mut out = Observability::off();
        out.metrics_path = section.metrics_path.clone();
        if section.metrics || otlp.is_some_and(|o| o.metrics) {
            let registry = prometheus::Registry::new();
            let mut b = SdkMeterProvider::builder().with_resource(resource(otlp));
            if section.metrics {
                let scrape = opentelemetry_prometheus::exporter()
                    .with_registry(registry.clone())
                    .scope_info_enabled(false)
                    .build()
                    .map_err(|e| format!("observability: prometheus exporter: {e}"))?;
                b = b.with_reader(scrape);
                out.registry = Some(registry);
            }
            #[cfg(feature = "otlp")]
            if let Some(o) = otlp.filter(|o| o.metrics) {
                b = b.with_reader(otlp::metric_reader(o)?);
            }
            let provider = b.build();
            let meter = opentelemetry::metrics::MeterProvider::meter(&provider, "mcp-gateway");
            let cfg = MetricsConfig::default()
                .principal_labels(section.principal_labels)
                .max_label_values(section.max_label_values);
            out.telemetry = out.telemetry.metrics(Metrics::new(meter, cfg));
            out.meters = Some(provider);
        }
        #[cfg(feature = "otlp")]
        if let Some(o) = otlp.filter(|o| o.traces) {
            let batch = otlp::span_processor(o)?;
            let provider = SdkTracerProvider::builder()
                .with_span_processor(batch)
                .with_sampler(opentelemetry_sdk::trace::Sampler::ParentBased(Box::new(
                    opentelemetry_sdk::trace::Sampler::TraceIdRatioBased(o.sampling_ratio),
                )))
                .with_resource(resource(Some(o)))
                .build();
            out.telemetry = out.telemetry.traces(true);
            out.tracer = Some(provider);
        }
        Ok(out)
    }

    /// The `tracing` layer that turns the gateway's spans into
    /// OpenTelemetry spans, when traces are exported.
    pub fn tracing_layer<S>(&self) -> Option<impl tracing_subscriber::Layer<S> + Send + Sync>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a> + Send + Sync,
    {
        use tracing_subscriber::Layer as _;
        let provider = self.tracer.as_ref()?;
        let layer = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("mcp-gateway"))
            .with_tracked_inactivity(false);
        let only_ours = tracing_subscriber::filter::Targets::new()
            .with_target(SPAN_TARGET, tracing::Level::INFO);
        Some(layer.with_filter(only_ours))
    }

    /// The Prometheus text exposition, when metrics are on.
    pub fn scrape(&self) -> Option<String> {
        let registry = self.registry.as_ref()?;
        let encoder = prometheus::TextEncoder::new();
        encoder.encode_to_string(&registry.gather()).ok()
    }

    /// A scrape handle for the admin listener and the main listener's
    /// `metrics_path`.
    pub fn scraper(self: &Arc<Self>) -> Option<Scraper> {
        self.registry.as_ref().map(|_| Scraper(self.clone()))
    }

    /// Sends what is buffered and stops the exporters (at shutdown).
    pub fn shutdown(&self) {
        if let Some(t) = &self.tracer {
            let _ = t.force_flush();
            let _ = t.shutdown();
        }
        if let Some(m) = &self.meters {
            let _ = m.force_flush();
            let _ = m.shutdown();
        }
    }
}

/// Serves the Prometheus exposition (`GET`).
#[derive(Clone, Debug)]
pub struct Scraper(Arc<Observability>);

/// The content type of the Prometheus text format.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

impl Scraper {
    /// The exposition as an HTTP response.
    pub fn response(&self) -> axum::response::Response {
        use axum::response::IntoResponse;
        match self.0.scrape() {
            Some(text) => ([(http::header::CONTENT_TYPE, PROMETHEUS_TEXT)], text).into_response(),
            None => http::StatusCode::NOT_FOUND.into_response(),
        }
    }

    /// A router serving the exposition at `path`.
    pub fn router(&self, path: &str) -> axum::Router {
        let me = self.clone();
        axum::Router::new().route(
            path,
            axum::routing::get(move || {
                let me = me.clone();
                async move { me.response() }
            }),
        )
    }
}
