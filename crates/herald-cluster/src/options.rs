//! What `herald-ingest` and `herald-gateway` share: where NATS and MongoDB are, and how long
//! each keeps events. Every option has a `HERALD_*` variable; names shared with the standalone
//! `herald` (`--retention-age`, `--idempotency-window`) mean the same thing.

use std::time::Duration;

use herald_runtime::config::{Limit, parse_bytes_limit, parse_duration, parse_duration_limit};

/// The shared command-line options.
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterOptions {
    /// NATS server URL; several, comma-separated, for a cluster.
    #[arg(
        long,
        env = "HERALD_NATS_URL",
        value_name = "URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,
    /// MongoDB connection string.
    #[arg(
        long,
        env = "HERALD_MONGODB_URI",
        value_name = "URI",
        default_value = "mongodb://127.0.0.1:27017/?directConnection=true"
    )]
    pub mongodb_uri: String,
    /// MongoDB database holding the `events`, `idempotency` and `meta` collections.
    #[arg(
        long,
        env = "HERALD_MONGODB_DATABASE",
        value_name = "NAME",
        default_value = "herald"
    )]
    pub mongodb_database: String,
    /// JetStream stream name.
    #[arg(
        long,
        env = "HERALD_STREAM",
        value_name = "NAME",
        default_value = "HERALD"
    )]
    pub stream: String,
    /// JetStream keeps events this long, or `off` (then only --stream-max-bytes limits it).
    #[arg(long, env = "HERALD_STREAM_MAX_AGE", value_name = "DURATION|off", default_value = "24h", value_parser = parse_duration_limit)]
    pub stream_max_age: Limit<Duration>,
    /// JetStream keeps at most this much data, dropping the oldest events, or `off`.
    #[arg(long, env = "HERALD_STREAM_MAX_BYTES", value_name = "SIZE|off", default_value = "1GiB", value_parser = parse_bytes_limit)]
    pub stream_max_bytes: Limit<u64>,
    /// Replicas of the stream (3 in a production NATS cluster; at most the number of servers).
    #[arg(
        long,
        env = "HERALD_STREAM_REPLICAS",
        value_name = "N",
        default_value_t = 1
    )]
    pub stream_replicas: usize,
    /// JetStream's duplicate window: a Nats-Msg-Id repeated within it is not stored again.
    /// Longer windows cost NATS memory; MongoDB's idempotency records cover the rest.
    #[arg(long, env = "HERALD_DUPLICATE_WINDOW", value_name = "DURATION", default_value = "2m", value_parser = parse_duration)]
    pub duplicate_window: Duration,
    /// MongoDB keeps events this long (TTL index and periodic trim), or `off`.
    #[arg(long, env = "HERALD_RETENTION_AGE", value_name = "DURATION|off", default_value = "7days", value_parser = parse_duration_limit)]
    pub retention_age: Limit<Duration>,
    /// How long an Idempotency-Key answers with its first result (MongoDB records).
    #[arg(long, env = "HERALD_IDEMPOTENCY_WINDOW", value_name = "DURATION", default_value = "24h", value_parser = parse_duration)]
    pub idempotency_window: Duration,
    /// How often expired MongoDB events and idempotency records are removed.
    #[arg(long, env = "HERALD_TRIM_INTERVAL", value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub trim_interval: Duration,
    /// Timeout of one NATS or MongoDB operation; past it a publish answers 503.
    #[arg(long, env = "HERALD_BACKEND_TIMEOUT", value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub backend_timeout: Duration,
}

/// The resolved shared configuration.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// NATS URLs.
    pub nats_url: String,
    /// MongoDB connection string.
    pub mongodb_uri: String,
    /// MongoDB database.
    pub mongodb_database: String,
    /// The stream.
    pub stream: String,
    /// JetStream retention by age.
    pub stream_max_age: Option<Duration>,
    /// JetStream retention by size.
    pub stream_max_bytes: Option<u64>,
    /// Stream replicas.
    pub stream_replicas: usize,
    /// JetStream duplicate window.
    pub duplicate_window: Duration,
    /// MongoDB retention.
    pub retention_age: Option<Duration>,
    /// Idempotency window.
    pub idempotency_window: Duration,
    /// Trim interval.
    pub trim_interval: Duration,
    /// Backend operation timeout.
    pub backend_timeout: Duration,
}

impl ClusterOptions {
    /// Checks the options and resolves them.
    pub fn resolve(self) -> anyhow::Result<ClusterConfig> {
        if self.stream_replicas == 0 || self.stream_replicas > 5 {
            anyhow::bail!("--stream-replicas must be 1 to 5");
        }
        if self.stream.is_empty()
            || !self
                .stream
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            anyhow::bail!("--stream must be letters, digits, `_` or `-`");
        }
        if self.duplicate_window.is_zero() {
            anyhow::bail!("--duplicate-window must be above zero");
        }
        if let Some(age) = self.stream_max_age.0
            && age < self.duplicate_window
        {
            anyhow::bail!("--stream-max-age must be at least --duplicate-window");
        }
        if !(self.mongodb_uri.starts_with("mongodb://")
            || self.mongodb_uri.starts_with("mongodb+srv://"))
        {
            anyhow::bail!("--mongodb-uri must start with mongodb:// or mongodb+srv://");
        }
        Ok(ClusterConfig {
            nats_url: self.nats_url,
            mongodb_uri: self.mongodb_uri,
            mongodb_database: self.mongodb_database,
            stream: self.stream,
            stream_max_age: self.stream_max_age.0,
            stream_max_bytes: self.stream_max_bytes.0,
            stream_replicas: self.stream_replicas,
            duplicate_window: self.duplicate_window,
            retention_age: self.retention_age.0,
            idempotency_window: self.idempotency_window,
            trim_interval: self.trim_interval,
            backend_timeout: self.backend_timeout,
        })
    }
}
