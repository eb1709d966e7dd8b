//! The ingest service: where publishers send events.
//!
//! - [`publish`]: `POST /v1/topics/{topic}/events`, `POST /v1/events` (a batch, all or nothing)
//!   and the article's `PUT /api/post-update`, with validation, limits and idempotency keys.
//! - [`options`]: the ingest's options and the [`IngestConfig`] they resolve to.
//! - [`log`]: [`StoreLog`], the standalone node's [`EventLog`]: the durable store, then the
//!   in-process bus. (The trait, what a publish is committed to, lives in `herald-store`, below
//!   the services, so the distributed mode implements it without depending on this crate.)

pub mod log;
pub mod options;
pub mod publish;

use std::sync::Arc;

use axum::{
    Router,
    routing::{post, put},
};
use herald_store::EventLog;
use herald_telemetry::Metrics;

pub use log::StoreLog;
pub use options::{IngestConfig, IngestOptions};

/// Everything an ingest request needs.
#[derive(Debug)]
pub struct IngestState {
    pub(crate) config: IngestConfig,
    pub(crate) log: Arc<dyn EventLog>,
    pub(crate) metrics: Arc<Metrics>,
}

/// The ingest's part of the OpenAPI document ([`herald_runtime::openapi::document`]).
pub fn openapi() -> utoipa::openapi::OpenApi {
    #[derive(utoipa::OpenApi)]
    #[openapi(paths(publish::one, publish::batch, publish::compat))]
    struct Ingest;
    <Ingest as utoipa::OpenApi>::openapi()
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
