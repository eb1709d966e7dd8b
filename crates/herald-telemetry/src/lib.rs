//! Telemetry every Herald service shares.
//!
//! - [`init_tracing`]: the `tracing` subscriber (human-readable or JSON lines), filtered by
//!   `RUST_LOG` syntax. OpenTelemetry export plugs in here later.
//! - [`Metrics`]: the Prometheus registry and every metric Herald exports, passed to services as
//!   `Arc<Metrics>` so each test can have its own. Names follow OpenMetrics conventions and labels
//!   have low cardinality: never a topic name.

mod metrics;

pub use metrics::{CloseReason, Metrics};

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber, writing to stderr (stdout carries only the `listening on` line
/// scripts read). `filter` uses `RUST_LOG` syntax (`info,herald_gateway=debug`). Returns an error
/// if the filter does not parse or a subscriber is already installed.
pub fn init_tracing(filter: &str, format: LogFormat) -> Result<(), String> {
    let filter = EnvFilter::try_new(filter).map_err(|e| format!("invalid log filter: {e}"))?;
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Text => registry
            .with(
                fmt::layer()
                    .with_target(true)
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    result.map_err(|e| e.to_string())
}
