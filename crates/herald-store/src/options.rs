//! How long events and idempotency keys are kept, and where the standalone node keeps them.

use std::{path::PathBuf, time::Duration};

use herald_config::{Limit, defaults, units};

/// Retention and idempotency settings shared by every store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// Events older than this are removed. `None` keeps them regardless of age.
    pub max_age: Option<Duration>,
    /// The oldest events are removed while the retained events weigh more than this (topic, type
    /// and data bytes). `None` keeps them regardless of size.
    pub max_bytes: Option<u64>,
    /// How long an idempotency key answers with its first result.
    pub idempotency_window: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self::new(&defaults(), &defaults())
    }
}

impl StoreOptions {
    /// The settings the options give.
    pub fn new(retention: &RetentionOptions, embedded: &EmbeddedOptions) -> Self {
        Self {
            max_age: retention.retention_age.0,
            max_bytes: embedded.retention_bytes.0,
            idempotency_window: retention.idempotency_window,
        }
    }
}

/// Retention options of every store (the embedded one, MongoDB).
#[derive(Debug, Clone, clap::Args)]
pub struct RetentionOptions {
    /// Events older than this are removed (MongoDB: TTL index and periodic trim), or `off`.
    #[arg(long, env = "HERALD_RETENTION_AGE", value_name = "DURATION|off", default_value = "7days", value_parser = units::duration_limit)]
    pub retention_age: Limit<Duration>,
    /// How long an Idempotency-Key answers with its first result.
    #[arg(long, env = "HERALD_IDEMPOTENCY_WINDOW", value_name = "DURATION", default_value = "24h", value_parser = units::positive_duration)]
    pub idempotency_window: Duration,
    /// How often expired events and idempotency records are removed.
    #[arg(long, env = "HERALD_TRIM_INTERVAL", value_name = "DURATION", default_value = "10s", value_parser = units::positive_duration)]
    pub trim_interval: Duration,
}

/// Which store the standalone node keeps events in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    /// Durable, on disk in the data directory (redb).
    Embedded,
    /// In memory: lost on exit. For tests and demos.
    Memory,
}

/// The standalone node's store.
#[derive(Debug, Clone, clap::Args)]
pub struct EmbeddedOptions {
    /// Store backend.
    #[arg(long, env = "HERALD_STORE", value_enum, default_value = "embedded")]
    pub store: StoreKind,
    /// Directory of the embedded store.
    #[arg(
        long,
        env = "HERALD_DATA_DIR",
        value_name = "DIR",
        default_value = "data"
    )]
    pub data_dir: PathBuf,
    /// Oldest events are removed past this much data, or `off`.
    #[arg(long, env = "HERALD_RETENTION_BYTES", value_name = "SIZE|off", default_value = "1GiB", value_parser = units::bytes_limit)]
    pub retention_bytes: Limit<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults() {
        let o = StoreOptions::default();
        assert_eq!(o.max_age, Some(Duration::from_secs(7 * 24 * 3600)));
        assert_eq!(o.max_bytes, Some(1 << 30));
        assert_eq!(o.idempotency_window, Duration::from_secs(24 * 3600));
    }
}
