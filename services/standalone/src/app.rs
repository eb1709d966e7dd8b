//! Composition and lifecycle of the standalone node.

use std::{future::Future, sync::Arc, time::Duration};

use anyhow::Context;
use axum::Router;
use herald_bus::MemoryBus;
use herald_gateway::Gateway;
use herald_ingest::StoreLog;
use herald_runtime::{
    ApiError, Drain, ErrorCode, Health,
    serve::{admin_routes, ops_routes, serve, spawn_admin},
};
use herald_store::{EmbeddedStore, History, MemoryStore, Store};
use herald_telemetry::Metrics;
use tokio::net::TcpListener;

use crate::{Config, StoreKind};

/// How long the store may take to flush after the connections are gone.
const STORE_CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// A built node, ready to serve.
#[derive(Debug)]
pub struct App {
    config: Config,
    router: Router,
    health: Health,
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
        let bus = Arc::new(MemoryBus::default());
        let metrics = Arc::new(Metrics::new());
        let (drain, watch) = Drain::new();
        let gateway = Gateway::start(
            config.gateway.clone(),
            Arc::clone(&store) as Arc<dyn History>,
            &*bus,
            Arc::clone(&metrics),
            watch.clone(),
        )
        .await
        .context("starting the gateway")?;
        let log = Arc::new(StoreLog::new(Arc::clone(&store), bus));
        let ingest = herald_ingest::router(config.ingest.clone(), log, Arc::clone(&metrics));
        let access = Arc::clone(&config.gateway.access);
        access.warn_if_open(config.listen);
        let public = herald_auth::edge::layer(
            gateway
                .router()
                .merge(ingest)
                .merge(herald_auth::cookie::router(Arc::clone(&access)))
                .merge(herald_runtime::openapi::route(&crate::openapi())),
            access,
        );
        Ok(Self {
            config,
            router: public,
            health: Health::new(watch),
            store,
            metrics,
            drain,
        })
    }

    /// Serves `listener` (and the ops routes on `admin` when given, else on `listener` too) until
    /// `shutdown` resolves, then drains: readiness fails and no new connection is accepted, every
    /// stream ends at a jittered moment, in-flight requests finish, all under the drain deadline;
    /// then the store flushes and closes.
    pub async fn run(
        self,
        listener: TcpListener,
        admin: Option<TcpListener>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let metrics = Arc::clone(&self.metrics);
        let trimmer = tokio::spawn(trim_periodically(
            Arc::clone(&self.store),
            self.config.trim_interval,
        ));
        let render: Arc<dyn Fn() -> String + Send + Sync> = {
            let metrics = Arc::clone(&self.metrics);
            Arc::new(move || metrics.render())
        };
        let (router, admin) = match admin {
            None => (self.router.merge(ops_routes(self.health, render)), None),
            Some(admin) => {
                let routes = admin_routes(self.health, render, self.config.prestop_delay);
                let router = self
                    .router
                    .fallback(|| async { ApiError::new(ErrorCode::NotFound, "no such endpoint") });
                (router, Some(spawn_admin(admin, routes)))
            }
        };
        let options = self.config.serve.clone();
        let served = serve(
            listener,
            router,
            &self.drain,
            &options,
            Arc::new(move || {
                metrics.slow_cut_off.inc();
            }),
            shutdown,
        )
        .await;
        trimmer.abort();
        if let Some(admin) = admin {
            admin.abort();
        }
        served?;
        match tokio::time::timeout(STORE_CLOSE_TIMEOUT, self.store.close()).await {
            Ok(result) => result.context("closing the store")?,
            Err(_) => tracing::warn!("the store did not close in time"),
        }
        tracing::info!("drained");
        Ok(())
    }
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
