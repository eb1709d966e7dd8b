//! Composition and lifecycle of the standalone node.

use std::{future::Future, sync::Arc, time::Duration};

use anyhow::Context;
use axum::{
    Router,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use herald_bus::{Bus, MemoryBus};
use herald_gateway::Gateway;
use herald_ingest::StoreLog;
use herald_runtime::{ApiError, Drain, Health, health, listener::TimedListener};
use herald_store::{EmbeddedStore, MemoryStore, Store};
use herald_telemetry::Metrics;
use tokio::net::TcpListener;
use tower_http::trace::TraceLayer;

use crate::{Config, StoreKind};

/// How long the store may take to flush after the connections are gone.
const STORE_CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// A built node, ready to serve.
#[derive(Debug)]
pub struct App {
    config: Config,
    router: Router,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    drain: Drain,
}

impl App {
    /// Opens the store and wires ingest, gateway, health and metrics into one router.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let store: Arc<dyn Store> = match config.store {
            StoreKind::Embedded => Arc::new(
                EmbeddedStore::open(&config.data_dir, config.store_options.clone()).with_context(
                    || {
                        format!(
                            "opening the embedded store in {}",
                            config.data_dir.display()
                        )
                    },
                )?,
            ),
            StoreKind::Memory => Arc::new(MemoryStore::new(config.store_options.clone())),
        };
        let bus: Arc<dyn Bus> = Arc::new(MemoryBus::default());
        let metrics = Arc::new(Metrics::new());
        let (drain, watch) = Drain::new();
        let gateway = Gateway::start(
            config.gateway.clone(),
            Arc::clone(&store),
            &*bus,
            Arc::clone(&metrics),
            watch.clone(),
        )
        .await
        .context("starting the gateway")?;
        let log = Arc::new(StoreLog::new(Arc::clone(&store), bus));
        let ingest = herald_ingest::router(config.ingest.clone(), log, Arc::clone(&metrics));
        let router = gateway
            .router()
            .merge(ingest)
            .merge(ops_routes(Health::new(watch), Arc::clone(&metrics)))
            .fallback(|| async {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
            })
            .layer(TraceLayer::new_for_http());
        Ok(Self {
            config,
            router,
            store,
            metrics,
            drain,
        })
    }

    /// Serves `listener` until `shutdown` resolves, then drains: readiness fails and no new
    /// connection is accepted, every stream ends at a jittered moment, in-flight requests finish,
    /// all under the drain deadline; then the store flushes and closes.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let metrics = Arc::clone(&self.metrics);
        let listener = TimedListener::new(
            listener,
            self.config.write_timeout,
            Arc::new(move || {
                metrics.slow_cut_off.inc();
            }),
        );
        let watch = self.drain.watch();
        let server = axum::serve(listener, self.router)
            .with_graceful_shutdown(async move { watch.started().await });
        let mut server = tokio::spawn(async move { server.await });
        let trimmer = tokio::spawn(trim_periodically(
            Arc::clone(&self.store),
            self.config.trim_interval,
        ));

        tokio::select! {
            () = shutdown => {}
            result = &mut server => {
                trimmer.abort();
                return result.context("server task")?.context("serving");
            }
        }
        let deadline = self.config.drain_deadline;
        tracing::info!(deadline = ?deadline, "draining");
        self.drain.start();
        match tokio::time::timeout(deadline, &mut server).await {
            Ok(result) => result.context("server task")?.context("serving")?,
            Err(_) => {
                tracing::warn!(deadline = ?deadline, "drain deadline passed; closing the remaining connections");
                server.abort();
            }
        }
        trimmer.abort();
        match tokio::time::timeout(STORE_CLOSE_TIMEOUT, self.store.close()).await {
            Ok(result) => result.context("closing the store")?,
            Err(_) => tracing::warn!("the store did not close in time"),
        }
        tracing::info!("drained");
        Ok(())
    }
}

fn ops_routes(health: Health, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(move || std::future::ready(health.readyz())))
        .route(
            "/metrics",
            get(move || {
                let body = metrics.render();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        body,
                    )
                        .into_response()
                }
            }),
        )
}

async fn trim_periodically(store: Arc<dyn Store>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = store.trim().await {
            tracing::warn!(error = %e, "retention failed");
        }
    }
}
