//! The gateway: where browsers connect.
//!
//! - [`hub`]: one live feed in, a bounded queue per subscriber out, in strict sequence order; its
//!   registry is where a slow subscriber is marked lagged and skipped, its sequencer where gaps
//!   are filled.
//! - [`stream`]: `GET /v1/stream` and the article's `GET /api/updates`: an SSE connection that
//!   resumes from a Last-Event-ID (verdict, replay, then live with no gap or duplicate at the
//!   seam), catches up in place when it falls behind, sends heartbeats and ends on drain.
//! - [`replay`]: the one replay and catch-up path: window pages and store pages, sent alike.
//! - [`history`]: `GET /v1/topics/{topic}/events`, the same events as JSON.
//! - [`window`]: the last events the hub delivered, kept encoded, so resumes and catch-ups inside
//!   it are served from memory.
//! - [`bounds`]: one store-bounds read shared by all the connections that wait for it, so a
//!   reconnect storm is not a storm of store reads.
//! - [`options`]: the gateway's options and the [`GatewayConfig`] they resolve to.
//! - [`demo`]: the demo page at `/`, and the original article's client at `/article`.
//! - [`lag`]: browser-observed delivery latency, reported by pages to `POST /v1/telemetry/lag`,
//!   and the helper script `/herald-lag.js`.
//! - [`client`]: `/herald.js`, Herald's browser client (`clients/herald-js`).
//!
//! [`Gateway::start`] wires a store (for replay) and a bus (for live events) into a router.

pub mod bounds;
pub mod client;
pub mod demo;
pub mod history;
pub mod hub;
pub mod lag;
pub mod options;
pub mod replay;
pub mod stream;
pub mod window;

use std::sync::{Arc, atomic::AtomicUsize};

use anyhow::Context;
use axum::{
    Router,
    routing::{get, post},
};
use herald_bus::Bus;
use herald_runtime::DrainWatch;
use herald_store::History;
use herald_telemetry::Metrics;

pub use hub::{Hub, HubConfig};

/// The gateway's part of the OpenAPI document ([`herald_runtime::openapi::document`]): streams,
/// history, the pages, the lag reports and the token cookie.
pub fn openapi() -> utoipa::openapi::OpenApi {
    #[derive(utoipa::OpenApi)]
    #[openapi(paths(
        stream::v1,
        stream::compat,
        history::list,
        demo::page,
        demo::article,
        lag::report,
        lag::script,
        client::script
    ))]
    struct Gateway;
    let mut doc = <Gateway as utoipa::OpenApi>::openapi();
    doc.merge(herald_auth::cookie::openapi());
    doc
}
pub use options::{GatewayConfig, GatewayOptions};

/// Everything a gateway request needs.
#[derive(Debug)]
pub struct GatewayState {
    pub(crate) config: GatewayConfig,
    pub(crate) store: Arc<dyn History>,
    pub(crate) hub: Hub,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) drain: DrainWatch,
    pub(crate) connections: AtomicUsize,
    pub(crate) history: history::HistoryReader,
}

/// A running gateway: its hub and its routes.
#[derive(Debug, Clone)]
pub struct Gateway {
    state: Arc<GatewayState>,
}

impl Gateway {
    /// Subscribes to the bus, starts the hub, and returns the gateway.
    pub async fn start(
        config: GatewayConfig,
        store: Arc<dyn History>,
        bus: &dyn Bus,
        metrics: Arc<Metrics>,
        drain: DrainWatch,
    ) -> anyhow::Result<Self> {
        // The feed first, then the head: every event is in one or the other.
        let feed = bus.subscribe().await.context("subscribing to the bus")?;
        let bounds = store.bounds().await.context("reading the store's bounds")?;
        // The hub's gap reads and the streams' replays go straight to the store; the bounds that
        // every new stream reads are shared.
        let store: Arc<dyn History> = Arc::new(bounds::SharedBounds::new(store));
        let hub = Hub::start(
            feed,
            Arc::clone(&store),
            HubConfig {
                epoch: bounds.epoch,
                head: bounds.head,
                queue_capacity: config.subscriber_queue,
                gap_timeout: config.gap_timeout,
                window_bytes: config.replay_window,
            },
            Arc::clone(&metrics),
        );
        // Streams learn of the drain from the hub, which wakes them all.
        hub.drain_on(drain.clone());
        let history = history::HistoryReader::new(
            Arc::clone(&store),
            Arc::clone(&metrics),
            config.history_limit,
            Arc::clone(&config.access),
        );
        Ok(Self {
            state: Arc::new(GatewayState {
                history,
                config,
                store,
                hub,
                metrics,
                drain,
                connections: AtomicUsize::new(0),
            }),
        })
    }

    /// The hub (for tests and diagnostics).
    pub fn hub(&self) -> &Hub {
        &self.state.hub
    }

    /// The gateway's routes.
    pub fn router(&self) -> Router {
        let pages = if self.state.config.demo_pages {
            Router::new()
                .route("/", get(demo::page))
                .route("/article", get(demo::article))
        } else {
            Router::new()
        };
        let pages = if self.state.config.lag_reports {
            pages.route("/v1/telemetry/lag", post(lag::report))
        } else {
            pages
        };
        pages
            .route("/v1/stream", get(stream::v1))
            .route("/api/updates", get(stream::compat))
            .route("/herald-lag.js", get(lag::script))
            .route("/herald.js", get(client::script))
            .with_state(Arc::clone(&self.state))
            .merge(self.state.history.clone().router())
    }
}
