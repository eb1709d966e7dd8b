//! The ingest service: where publishers send events.
//!
//! - [`publish`]: `POST /v1/topics/{topic}/events`, `POST /v1/events` (a batch, all or nothing)
//!   and the article's `PUT /api/post-update`, with validation, limits and idempotency keys.
//! - [`auth`]: the authorization hook ([`Authorize`]) and its two built-in answers.
//! - [`log`]: [`EventLog`], what a publish is committed to. The standalone node's is
//!   [`StoreLog`]: the durable store, then the in-process bus.

pub mod auth;
pub mod log;
pub mod publish;

use std::sync::Arc;

use axum::{
    Router,
    routing::{post, put},
};
use herald_core::Topic;
use herald_telemetry::Metrics;

pub use auth::{AllowAll, Authorize, BearerToken};
pub use log::{EventLog, StoreLog};

/// The ingest service's settings.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// The largest request body accepted, in bytes (413 past it).
    pub max_body_bytes: usize,
    /// The most events in one batch (413 past it).
    pub max_batch: usize,
    /// The topic behind the article's `PUT /api/post-update`.
    pub compat_topic: Topic,
    /// Who may publish.
    pub auth: Arc<dyn Authorize>,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 64 * 1024,
            max_batch: 100,
            compat_topic: Topic::new("updates").expect("valid topic"),
            auth: Arc::new(AllowAll),
        }
    }
}

/// Everything an ingest request needs.
#[derive(Debug)]
pub struct IngestState {
    pub(crate) config: IngestConfig,
    pub(crate) log: Arc<dyn EventLog>,
    pub(crate) metrics: Arc<Metrics>,
}

/// The ingest routes.
pub fn router(config: IngestConfig, log: Arc<dyn EventLog>, metrics: Arc<Metrics>) -> Router {
    let state = Arc::new(IngestState {
        config,
        log,
        metrics,
    });
    Router::new()
        .route("/v1/topics/{topic}/events", post(publish::one))
        .route("/v1/events", post(publish::batch))
        .route("/api/post-update", put(publish::compat))
        .with_state(state)
}
