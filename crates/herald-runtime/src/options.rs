//! The options every Herald process takes, whatever it serves: its config file, its address,
//! logs, traces and drain; the admin listener of the distributed services; the topic of the
//! article's endpoints, which the publish and the stream side both serve.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use herald_config::units;
use herald_core::Topic;
use herald_telemetry::{LogFormat, TracesMode};

use crate::serve::ServeOptions;

/// Process-wide options, in every binary.
#[derive(Debug, Clone, clap::Args)]
pub struct ProcessOptions {
    /// TOML config file: each key is an option's name with underscores (`max_body = "1MiB"`).
    /// Flags and HERALD_* variables win over it; unknown keys are refused.
    #[arg(long, env = "HERALD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(
        long,
        env = "HERALD_LISTEN",
        value_name = "ADDR",
        default_value = "127.0.0.1:8080"
    )]
    pub listen: SocketAddr,
    /// A connection whose peer accepts no bytes for this long is closed.
    #[arg(long, env = "HERALD_WRITE_TIMEOUT", value_name = "DURATION", default_value = "30s", value_parser = units::positive_duration)]
    pub write_timeout: Duration,
    /// On SIGTERM/SIGINT, time allowed for streams to end and requests to finish.
    #[arg(long, env = "HERALD_DRAIN_DEADLINE", value_name = "DURATION", default_value = "25s", value_parser = units::positive_duration)]
    pub drain_deadline: Duration,
    /// Log filter, RUST_LOG syntax.
    #[arg(
        long,
        env = "HERALD_LOG",
        value_name = "FILTER",
        default_value = "info"
    )]
    pub log: String,
    /// Log format.
    #[arg(long, env = "HERALD_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Export spans over OTLP: `auto` when OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT is set, `otlp`,
    /// or `off`; the OTEL_* environment configures the rest (service name, sampler, headers).
    #[arg(long, env = "HERALD_TRACES", value_enum, default_value = "auto")]
    pub traces: TracesMode,
}

impl ProcessOptions {
    /// How the server is run and drained.
    pub fn serve(&self) -> ServeOptions {
        ServeOptions {
            write_timeout: self.write_timeout,
            drain_deadline: self.drain_deadline,
        }
    }
}

/// The admin listener of the distributed services (Kubernetes probes, Prometheus, preStop).
#[derive(Debug, Clone, clap::Args)]
pub struct AdminOptions {
    /// Serve /healthz, /readyz, /metrics and the preStop hook /prestop on this address instead of
    /// on --listen (on Kubernetes: the probes' and Prometheus' port, never behind the Ingress).
    #[arg(long, env = "HERALD_ADMIN_LISTEN", value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,
    /// How long GET /prestop (admin listener) waits, readiness already failing, before it answers
    /// and the kubelet sends SIGTERM: the time load balancers take to drop the endpoint.
    #[arg(long, env = "HERALD_PRESTOP_DELAY", value_name = "DURATION", default_value = "5s", value_parser = units::duration)]
    pub prestop_delay: Duration,
}

/// The original article's endpoints: `PUT /api/post-update` publishes on this topic and
/// `GET /api/updates` streams it.
#[derive(Debug, Clone, clap::Args)]
pub struct ArticleOptions {
    /// Topic behind the article's PUT /api/post-update and GET /api/updates.
    #[arg(
        long,
        env = "HERALD_COMPAT_TOPIC",
        value_name = "TOPIC",
        default_value = "updates",
        value_parser = Topic::new
    )]
    pub compat_topic: Topic,
}
