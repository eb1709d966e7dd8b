//! OpenTelemetry trace export over OTLP, and the bridge between `tracing` spans and the W3C
//! [`TraceContext`] an event carries.
//!
//! Export is off by default. `--traces auto` (the default) turns it on when an OTLP endpoint is
//! configured (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`); `otlp`
//! turns it on (to `http://localhost:4318` unless configured); `off` keeps it off. Everything else
//! is the standard OpenTelemetry environment: `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
//! `OTEL_TRACES_SAMPLER(_ARG)`, `OTEL_BSP_*`, `OTEL_EXPORTER_OTLP_(TRACES_)HEADERS/TIMEOUT`.
//! `OTEL_SDK_DISABLED=true` and `OTEL_TRACES_EXPORTER=none` turn it off whatever the flag says.
//!
//! When export is off nothing is installed and [`traces_enabled`] is false, so the per-event
//! spans (which the code creates only when it is true and the event's trace is sampled) cost one
//! relaxed atomic load.

use std::sync::atomic::{AtomicBool, Ordering};

use herald_core::TraceContext;
use opentelemetry::{
    Context,
    trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState},
};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::{
    Resource,
    runtime::Tokio,
    trace::{
        BatchConfig, SdkTracerProvider, span_processor_with_async_runtime::BatchSpanProcessor,
    },
};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether trace export is on in this process.
#[inline]
pub fn traces_enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// `--traces`: whether spans are exported over OTLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum TracesMode {
    /// On when `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set.
    #[default]
    Auto,
    /// Never.
    Off,
    /// Always (OTLP over HTTP/protobuf; `http://localhost:4318` unless configured).
    Otlp,
}

impl TracesMode {
    /// Whether this mode, in this environment, exports.
    pub fn resolve(self) -> bool {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"))
        {
            return false;
        }
        match self {
            Self::Off => false,
            Self::Otlp => true,
            Self::Auto => {
                var("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
                    || var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
            }
        }
    }
}

/// Builds the tracer provider: OTLP over HTTP/protobuf, batched on the tokio runtime (call it
/// inside one), sampled as `OTEL_TRACES_SAMPLER` says (default: parent-based, always on).
pub(crate) fn provider(service: &str) -> Result<SdkTracerProvider, String> {
    let protocol = std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_default();
    if !matches!(protocol.as_str(), "" | "http/protobuf") {
        return Err(format!(
            "OTLP protocol {protocol:?} is not supported; Herald exports http/protobuf"
        ));
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .build()
        .map_err(|e| format!("OTLP exporter: {e}"))?;
    let processor = BatchSpanProcessor::builder(exporter, Tokio)
        .with_batch_config(BatchConfig::default())
        .build();
    let named = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.is_empty())
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|v| v.contains("service.name="));
    let mut resource = Resource::builder().with_attribute(opentelemetry::KeyValue::new(
        "service.version",
        env!("CARGO_PKG_VERSION"),
    ));
    if !named {
        resource = resource.with_service_name(service.to_owned());
    }
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource.build())
        .build())
}

pub(crate) fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// The trace context of `span`, when export is on and the span is in a trace.
pub fn trace_of(span: &Span) -> Option<TraceContext> {
    if !traces_enabled() {
        return None;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| TraceContext {
        trace_id: sc.trace_id().to_bytes(),
        span_id: sc.span_id().to_bytes(),
        flags: sc.trace_flags().to_u8(),
    })
}

/// The trace context of the current span.
pub fn current_trace() -> Option<TraceContext> {
    trace_of(&Span::current())
}

fn remote(tc: TraceContext) -> SpanContext {
    SpanContext::new(
        TraceId::from_bytes(tc.trace_id),
        SpanId::from_bytes(tc.span_id),
        TraceFlags::new(tc.flags),
        true,
        TraceState::default(),
    )
}

/// Makes `span` a child of `parent` (a span in another process or task). Call it before the span
/// is first entered.
pub fn set_parent(span: &Span, parent: TraceContext) {
    if traces_enabled() {
        let _ = span.set_parent(Context::new().with_remote_span_context(remote(parent)));
    }
}

/// Links `span` to `other` (the messaging conventions' link from a consumer to its producer).
pub fn add_link(span: &Span, other: TraceContext) {
    if traces_enabled() {
        span.add_link(remote(other));
    }
}

/// The parent a request continues: its `traceparent` header, when valid.
pub fn parent_from_headers(headers: &http::HeaderMap) -> Option<TraceContext> {
    headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(TraceContext::parse)
}

/// The one sampled trace an event's delivery continues, if export is on.
#[inline]
pub fn sampled(trace: Option<TraceContext>) -> Option<TraceContext> {
    trace.filter(|t| t.sampled() && traces_enabled())
}
