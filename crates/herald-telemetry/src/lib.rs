//! Telemetry every Herald service shares.
//!
//! - [`init`]: the `tracing` subscriber (human-readable or JSON lines on stderr, filtered by
//!   `RUST_LOG` syntax) and, when configured, OpenTelemetry trace export over OTLP ([`otel`]).
//!   [`Telemetry::shutdown`] flushes the spans still queued; services call it after draining.
//! - [`Metrics`]: the Prometheus registry and every metric Herald exports, passed to services as
//!   `Arc<Metrics>` so each test can have its own. Names follow OpenMetrics conventions and labels
//!   have low cardinality: never a topic name; their values are the enums of [`labels`].

pub mod labels;
mod metrics;
pub mod otel;

pub use labels::{
    BridgeDirection, BridgeOutcome, BusOp, CloseReason, Consumer, PublishOutcome, Rejection,
    SampleResult, StoreOp, Tier,
};
pub use metrics::Metrics;
pub use otel::{TracesMode, traces_enabled};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Level;
use tracing_subscriber::{EnvFilter, Layer, Registry, filter::filter_fn, fmt, prelude::*};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// What [`init`] installed; keep it until the service has drained, then [`Telemetry::shutdown`].
#[derive(Debug)]
#[must_use = "spans are flushed by Telemetry::shutdown"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports the spans still queued and stops the exporter (bounded by `OTEL_BSP_EXPORT_TIMEOUT`).
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        otel::set_enabled(false);
        // The SDK blocks on the batch task, which runs on this runtime: wait off its workers.
        let done = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "flushing spans failed"),
            Err(e) => tracing::warn!(error = %e, "flushing spans failed"),
        }
    }
}

/// Installs the global subscriber, writing logs to stderr (stdout carries only the `listening on`
/// line scripts read) and, when `traces` resolves to on, exporting Herald's spans over OTLP with
/// `service` as the default `service.name`. `filter` uses `RUST_LOG` syntax
/// (`info,herald_gateway=debug`) and applies to logs only: exported spans are Herald's own, at
/// INFO, plus WARN and ERROR events inside them. Call it inside the tokio runtime. Returns an
/// error if the filter does not parse, the OTLP settings are invalid, or a subscriber is already
/// installed.
pub fn init(
    filter: &str,
    format: LogFormat,
    traces: TracesMode,
    service: &str,
) -> Result<Telemetry, String> {
    let filter = EnvFilter::try_new(filter).map_err(|e| format!("invalid log filter: {e}"))?;
    let provider = if traces.resolve() {
        Some(otel::provider(service)?)
    } else {
        None
    };
    let mut layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> = Vec::new();
    if let Some(provider) = &provider {
        layers.push(
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("herald"))
                .with_location(false)
                .with_threads(false)
                .with_target(false)
                .with_tracked_inactivity(false)
                .with_filter(filter_fn(|m| {
                    m.target().starts_with("herald")
                        && *m.level()
                            <= if m.is_span() {
                                Level::INFO
                            } else {
                                Level::WARN
                            }
                }))
                .boxed(),
        );
    }
    layers.push(match format {
        LogFormat::Text => fmt::layer()
            .with_target(true)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
    });
    tracing_subscriber::registry()
        .with(layers)
        .try_init()
        .map_err(|e| e.to_string())?;
    otel::set_enabled(provider.is_some());
    Ok(Telemetry { provider })
}
