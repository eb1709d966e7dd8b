//! How long events and idempotency keys are kept.

use std::time::Duration;

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
        Self {
            max_age: Some(Duration::from_secs(7 * 24 * 3600)),
            max_bytes: Some(1 << 30),
            idempotency_window: Duration::from_secs(24 * 3600),
        }
    }
}
