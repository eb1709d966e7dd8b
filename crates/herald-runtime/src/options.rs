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
    /// A connection whose peer accepts no bytes for this long is closed (an HTTP/2 stream whose
    /// window stays shut this long is reset).
    #[arg(long, env = "HERALD_WRITE_TIMEOUT", value_name = "DURATION", default_value = "30s", value_parser = units::positive_duration)]
    pub write_timeout: Duration,
    /// A request head must arrive whole within this (from the connection's first byte or the end
    /// of its previous request, so it also ends idle keep-alive connections); else the
    /// connection is closed.
    #[arg(long, env = "HERALD_HEADER_TIMEOUT", value_name = "DURATION", default_value = "10s", value_parser = units::positive_duration)]
    pub header_timeout: Duration,
    /// A request body must arrive whole within this from its head; 408 otherwise.
    #[arg(long, env = "HERALD_BODY_TIMEOUT", value_name = "DURATION", default_value = "10s", value_parser = units::positive_duration)]
    pub body_timeout: Duration,
    /// Largest request head (request line and headers); 431 past it.
    #[arg(long, env = "HERALD_MAX_HEADER_SIZE", value_name = "SIZE", default_value = "16KiB", value_parser = units::positive_size)]
    pub max_header_size: usize,
    /// Most request headers; 431 past it.
    #[arg(long, env = "HERALD_MAX_HEADERS", value_name = "N", default_value_t = 64, value_parser = units::count(1..=1000))]
    pub max_headers: usize,
    /// Longest request target (path and query); 414 past it.
    #[arg(long, env = "HERALD_MAX_URL_LENGTH", value_name = "SIZE", default_value = "4KiB", value_parser = units::positive_size)]
    pub max_url_length: usize,
    /// Most open TCP connections on the listener (streams and requests alike); past it, new
    /// connections wait in the kernel's backlog until one closes.
    #[arg(long, env = "HERALD_MAX_TCP_CONNECTIONS", value_name = "N", default_value_t = 12_000, value_parser = units::at_least_one())]
    pub max_tcp_connections: usize,
    /// Serve HTTPS on --listen with this certificate chain (PEM, leaf first), and --tls-key.
    /// Both files are read again when either changes (checked every 10 s), for certificate
    /// rotation without a restart; a pair that does not load keeps the previous one served.
    #[arg(
        long,
        env = "HERALD_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(
        long,
        env = "HERALD_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// Serve HTTP/2 to TLS clients that offer it (ALPN `h2`): a browser then carries every stream
    /// of an origin over one connection, instead of at most six over HTTP/1.1.
    #[arg(long, env = "HERALD_HTTP2", value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub http2: bool,
    /// Also accept HTTP/2 without TLS (h2c, with prior knowledge) on --listen, for a load
    /// balancer that speaks it to Herald. Browsers never use h2c.
    #[arg(long, env = "HERALD_H2C", value_name = "BOOL", default_value_t = false, action = clap::ArgAction::Set)]
    pub h2c: bool,
    /// Most concurrent streams one HTTP/2 connection may have open; a client that opens more
    /// has the extra ones refused (RST_STREAM REFUSED_STREAM).
    #[arg(long, env = "HERALD_H2_MAX_STREAMS", value_name = "N", default_value_t = 100, value_parser = units::count(1..=10_000))]
    pub h2_max_streams: usize,
    /// An HTTP/2 connection is pinged after this long without a frame from the client, and
    /// closed if the ping is not answered within it.
    #[arg(long, env = "HERALD_H2_KEEPALIVE", value_name = "DURATION", default_value = "20s", value_parser = units::positive_duration)]
    pub h2_keepalive: Duration,
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
    /// Continue the trace of a request's `traceparent` header (its sampling decision included).
    /// Off by default: a header from the internet cannot force sampling; turn on where only your
    /// own services reach this listener.
    #[arg(long, env = "HERALD_TRUST_TRACEPARENT", value_name = "BOOL", default_value_t = false, action = clap::ArgAction::Set)]
    pub trust_traceparent: bool,
}

impl ProcessOptions {
    /// How the server is run and drained.
    pub fn serve(&self) -> ServeOptions {
        ServeOptions {
            write_timeout: self.write_timeout,
            drain_deadline: self.drain_deadline,
            header_timeout: self.header_timeout,
            body_timeout: self.body_timeout,
            max_header_size: self.max_header_size,
            max_headers: self.max_headers,
            max_url_length: self.max_url_length,
            max_tcp_connections: self.max_tcp_connections,
            trust_traceparent: self.trust_traceparent,
            tls: self
                .tls_cert
                .clone()
                .zip(self.tls_key.clone())
                .map(|(cert, key)| crate::tls::TlsFiles { cert, key }),
            http2: crate::connection::Http2Options {
                tls: self.http2,
                cleartext: self.h2c,
                max_streams: self.h2_max_streams,
                keepalive: self.h2_keepalive,
            },
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
