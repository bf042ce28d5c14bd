//! OTLP export (feature `otlp`): the metric reader and span processor
//! `[observability.otlp]` asks for, over HTTP/protobuf or gRPC.

use std::collections::HashMap;
use std::time::Duration;

use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::metrics::PeriodicReader;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor};

use crate::config::{OtlpProtocol, OtlpSection};

/// Pushes metrics every `metrics_interval_secs`.
pub(super) fn metric_reader(
    o: &OtlpSection,
) -> Result<PeriodicReader<opentelemetry_otlp::MetricExporter>, String> {
    let exporter = match o.protocol {
        OtlpProtocol::HttpProtobuf => over_http(
            opentelemetry_otlp::MetricExporter::builder().with_http(),
            o,
            "metrics",
        )
        .build(),
        OtlpProtocol::Grpc => over_grpc(
            opentelemetry_otlp::MetricExporter::builder().with_tonic(),
            o,
            "metrics",
        )?
        .build(),
    }
    .map_err(|e| format!("observability.otlp: metrics exporter: {e}"))?;
    Ok(PeriodicReader::builder(exporter)
        .with_interval(Duration::from_secs(o.metrics_interval_secs.max(1)))
        .build())
}

/// Sends finished spans in batches, at most `batch_delay_ms` late.
pub(super) fn span_processor(o: &OtlpSection) -> Result<BatchSpanProcessor, String> {
    let exporter = match o.protocol {
        OtlpProtocol::HttpProtobuf => over_http(
            opentelemetry_otlp::SpanExporter::builder().with_http(),
            o,
            "traces",
        )
        .build(),
        OtlpProtocol::Grpc => over_grpc(
            opentelemetry_otlp::SpanExporter::builder().with_tonic(),
            o,
            "traces",
        )?
        .build(),
    }
    .map_err(|e| format!("observability.otlp: span exporter: {e}"))?;
    Ok(BatchSpanProcessor::builder(exporter)
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_scheduled_delay(Duration::from_millis(o.batch_delay_ms.max(1)))
                .build(),
        )
        .build())
}

fn signal_url(o: &OtlpSection, signal: &str) -> String {
    match o.protocol {
        OtlpProtocol::HttpProtobuf => {
            format!("{}/v1/{signal}", o.endpoint.trim_end_matches('/'))
        }
        OtlpProtocol::Grpc => o.endpoint.clone(),
    }
}

fn metadata(
    headers: &std::collections::BTreeMap<String, String>,
) -> Result<tonic::metadata::MetadataMap, String> {
    let mut m = tonic::metadata::MetadataMap::new();
    for (k, v) in headers {
        let key = tonic::metadata::MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes())
            .map_err(|e| format!("observability.otlp.headers: {k}: {e}"))?;
        let val = v
            .parse()
            .map_err(|e| format!("observability.otlp.headers: {k}: {e}"))?;
        m.insert(key, val);
    }
    Ok(m)
}

/// An OTLP/HTTP exporter builder for `signal` (`traces`, `metrics`) set up
/// as `o` says.
fn over_http<B: WithExportConfig + WithHttpConfig>(b: B, o: &OtlpSection, signal: &str) -> B {
    b.with_endpoint(signal_url(o, signal))
        .with_timeout(timeout(o))
        .with_headers(headers(&o.headers))
}

/// An OTLP/gRPC exporter builder set up as `o` says; TLS towards an
/// `https://` collector, with the platform's roots.
fn over_grpc<B: WithExportConfig + WithTonicConfig>(
    b: B,
    o: &OtlpSection,
    signal: &str,
) -> Result<B, String> {
    let b = b
        .with_endpoint(signal_url(o, signal))
        .with_timeout(timeout(o))
        .with_metadata(metadata(&o.headers)?);
    Ok(if o.endpoint.starts_with("https://") {
        b.with_tls_config(tonic::transport::ClientTlsConfig::new().with_native_roots())
    } else {
        b
    })
}

fn timeout(o: &OtlpSection) -> Duration {
    Duration::from_millis(o.timeout_ms.max(1))
}

fn headers(h: &std::collections::BTreeMap<String, String>) -> HashMap<String, String> {
    h.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}
