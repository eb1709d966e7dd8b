//! What `herald-ingest`, `herald-gateway` and `herald-redis-bridge` share: where NATS and
//! MongoDB are, and how long each keeps events. Retention options shared with the standalone
//! `herald` ([`RetentionOptions`]: `--retention-age`, `--idempotency-window`, `--trim-interval`)
//! are defined once, in `herald-store`.

use std::time::Duration;

use herald_config::{ConfigError, Limit, Secret, units};
use herald_store::RetentionOptions;

/// The connection and JetStream options of the distributed services.
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
        default_value = "mongodb://127.0.0.1:27017/?directConnection=true",
        hide_env_values = true,
        value_parser = mongodb_uri
    )]
    pub mongodb_uri: Secret,
    /// MongoDB database holding the `events`, `idempotency` and `meta` collections.
    #[arg(
        long,
        env = "HERALD_MONGODB_DATABASE",
        value_name = "NAME",
        default_value = "herald"
    )]
    pub mongodb_database: String,
    /// JetStream stream name.
    #[arg(long, env = "HERALD_STREAM", value_name = "NAME", default_value = "HERALD", value_parser = stream_name)]
    pub stream: String,
    /// JetStream keeps events this long, or `off` (then only --stream-max-bytes limits it).
    #[arg(long, env = "HERALD_STREAM_MAX_AGE", value_name = "DURATION|off", default_value = "24h", value_parser = units::duration_limit)]
    pub stream_max_age: Limit<Duration>,
    /// JetStream keeps at most this much data, dropping the oldest events, or `off`.
    #[arg(long, env = "HERALD_STREAM_MAX_BYTES", value_name = "SIZE|off", default_value = "1GiB", value_parser = units::bytes_limit)]
    pub stream_max_bytes: Limit<u64>,
    /// Replicas of the stream (3 in a production NATS cluster; at most the number of servers).
    #[arg(long, env = "HERALD_STREAM_REPLICAS", value_name = "N", default_value_t = 1, value_parser = units::count(1..=5))]
    pub stream_replicas: usize,
    /// JetStream's duplicate window: a Nats-Msg-Id repeated within it is not stored again.
    /// Longer windows cost NATS memory; MongoDB's idempotency records cover the rest.
    #[arg(long, env = "HERALD_DUPLICATE_WINDOW", value_name = "DURATION", default_value = "2m", value_parser = units::positive_duration)]
    pub duplicate_window: Duration,
    /// Timeout of one NATS or MongoDB operation; past it a publish answers 503.
    #[arg(long, env = "HERALD_BACKEND_TIMEOUT", value_name = "DURATION", default_value = "5s", value_parser = units::positive_duration)]
    pub backend_timeout: Duration,
}

/// `--mongodb-uri`: a `mongodb://` or `mongodb+srv://` connection string.
fn mongodb_uri(s: &str) -> Result<Secret, String> {
    if s.starts_with("mongodb://") || s.starts_with("mongodb+srv://") {
        Ok(Secret::new(s))
    } else {
        Err("must start with mongodb:// or mongodb+srv://".into())
    }
}

/// `--stream`: a JetStream stream name.
fn stream_name(s: &str) -> Result<String, String> {
    if s.is_empty()
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err("must be letters, digits, `_` or `-`".into());
    }
    Ok(s.to_owned())
}

/// The resolved shared configuration.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// NATS URLs.
    pub nats_url: String,
    /// MongoDB connection string.
    pub mongodb_uri: Secret,
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
    /// Checks the options together and resolves them with the store's retention.
    pub fn resolve(self, retention: &RetentionOptions) -> Result<ClusterConfig, ConfigError> {
        if let Some(age) = self.stream_max_age.0
            && age < self.duplicate_window
        {
            return Err(ConfigError::new(
                "--stream-max-age",
                "must be at least --duplicate-window",
            ));
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
            retention_age: retention.retention_age.0,
            idempotency_window: retention.idempotency_window,
            trim_interval: retention.trim_interval,
            backend_timeout: self.backend_timeout,
        })
    }
}
