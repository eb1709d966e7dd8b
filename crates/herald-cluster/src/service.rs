//! What `herald-ingest` and `herald-gateway` share as processes: listening, logging, the ops
//! routes with NATS and MongoDB readiness, background tasks, and the drain.

use std::{future::Future, process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context;
use axum::Router;
use herald_runtime::{
    AdminOptions, ApiError, Drain, ErrorCode, Health, ProcessOptions,
    serve::{admin_routes, ops_routes, serve, spawn_admin},
};
use herald_telemetry::Metrics;
use tokio::task::JoinHandle;

use crate::{
    JetStream, Mongo,
    health::{MongoCheck, NatsCheck, ping_mongo},
};

/// How often MongoDB is pinged for readiness.
const PING_EVERY: Duration = Duration::from_secs(2);

/// The process options of the distributed services: every process's, and the admin listener.
#[derive(Debug, Clone, clap::Args)]
pub struct ServiceOptions {
    /// Every Herald process's options.
    #[command(flatten)]
    pub process: ProcessOptions,
    /// The admin listener.
    #[command(flatten)]
    pub admin: AdminOptions,
}

/// A service ready to run: its routes and the background tasks that live as long as it.
#[derive(Debug)]
pub struct Service {
    /// The service's own routes (the ops routes are added by [`Service::run`]).
    pub router: Router,
    /// Tasks aborted when the service stops.
    pub tasks: Vec<JoinHandle<()>>,
}

impl Service {
    /// Serves until SIGTERM/SIGINT, then drains. Prints `<name> listening on http://ADDR`. Ready
    /// while MongoDB and, when the service uses it, NATS are reachable.
    pub async fn run(
        self,
        name: &str,
        options: &ServiceOptions,
        nats: Option<&JetStream>,
        mongo: &Mongo,
        metrics: Arc<Metrics>,
        drain: Drain,
    ) -> anyhow::Result<()> {
        let mut health = Health::new(drain.watch());
        if let Some(js) = nats {
            health = health.with_check(Arc::new(NatsCheck(js.clone())));
        }
        let health = health.with_check(Arc::new(MongoCheck(mongo.clone())));
        let mut tasks = self.tasks;
        tasks.push(tokio::spawn(ping_mongo(mongo.clone(), PING_EVERY)));
        let render = {
            let metrics = Arc::clone(&metrics);
            Arc::new(move || metrics.render())
        };
        // The service address first: its line is the first one printed.
        let listen = options.process.listen;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        let addr = listener.local_addr().context("reading the bound address")?;
        tracing::info!(%addr, "listening");
        println!("{name} listening on http://{addr}");
        let router = match options.admin.admin_listen {
            None => self.router.merge(ops_routes(health, render)),
            Some(admin) => {
                let admin_listener = tokio::net::TcpListener::bind(admin)
                    .await
                    .with_context(|| format!("binding the admin address {admin}"))?;
                let addr = admin_listener
                    .local_addr()
                    .context("reading the bound address")?;
                tracing::info!(%addr, "admin listening");
                println!("{name} admin listening on http://{addr}");
                let routes = admin_routes(health, render, options.admin.prestop_delay);
                tasks.push(spawn_admin(admin_listener, routes));
                self.router
                    .fallback(|| async { ApiError::new(ErrorCode::NotFound, "no such endpoint") })
            }
        };
        let served = serve(
            listener,
            router,
            &drain,
            &options.process.serve(),
            Arc::new(move || {
                metrics.slow_cut_off.inc();
            }),
            async {
                let signal = herald_runtime::signal::shutdown().await;
                tracing::info!(signal, "shutdown requested");
            },
        )
        .await;
        for task in tasks {
            task.abort();
        }
        if let Some(js) = nats
            && let Err(e) = js.client().flush().await
        {
            tracing::warn!(error = %e, "flushing the NATS connection failed");
        }
        tracing::info!("drained");
        served
    }
}

/// The body of both binaries' `main` ([`herald_runtime::serve::main`] with these options).
///
/// The process exits as soon as `run` has drained and the spans are flushed, without tearing the
/// runtime down: that would drop the MongoDB driver's connection-pool workers in an arbitrary
/// order while another task may still be checking a connection out, which the driver answers
/// with a panic (seen in the rollout rehearsal; mongo-rust-driver issue 847). Nothing is left to
/// do by then: streams are closed, requests answered, NATS flushed.
pub async fn main(
    name: &str,
    options: &ServiceOptions,
    run: impl Future<Output = anyhow::Result<()>>,
) -> ExitCode {
    let code = herald_runtime::serve::exit_code(
        name,
        &options.process.log,
        options.process.log_format,
        options.process.traces,
        run,
    )
    .await;
    std::process::exit(code.into())
}

/// Removes expired MongoDB events and idempotency records every `every`.
pub async fn trim_periodically(mongo: Mongo, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = mongo.trim().await {
            tracing::warn!(error = %e, "mongodb retention failed");
        }
    }
}
