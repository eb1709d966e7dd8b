//! What `herald-ingest` and `herald-gateway` share as processes: listening, logging, the ops
//! routes with NATS and MongoDB readiness, background tasks, and the drain.

use std::{future::Future, net::SocketAddr, process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context;
use axum::Router;
use herald_runtime::{
    AdminOptions, ApiError, Drain, ErrorCode, Health, ProcessOptions,
    serve::{admin_routes, ops_routes, serve, spawn_admin},
};
use herald_telemetry::Metrics;
use tokio::{net::TcpListener, task::JoinHandle};

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

/// Where a service listens: its public address and, when `--admin-listen` is set, the admin
/// address (probes, metrics, the preStop hook). Bound by the caller, so a test can bind port 0.
#[derive(Debug)]
pub struct Listeners {
    /// The public listener (the API).
    pub public: TcpListener,
    /// The admin listener, if the ops routes are served apart.
    pub admin: Option<TcpListener>,
}

impl Listeners {
    /// Binds the addresses `options` names and prints `<name> listening on http://ADDR`
    /// (`https` with `--tls-cert`; the public one first: scripts read the port from it), then the
    /// admin line. A TLS pair that does not load fails it before anything is printed.
    pub async fn bind(name: &str, options: &ServiceOptions) -> anyhow::Result<Self> {
        let serve = options.process.serve();
        serve.check_tls()?;
        let scheme = serve.scheme();
        let public = bind(name, "listening", scheme, options.process.listen).await?;
        let admin = match options.admin.admin_listen {
            Some(addr) => Some(bind(name, "admin listening", "http", addr).await?),
            None => None,
        };
        Ok(Self { public, admin })
    }
}

async fn bind(
    name: &str,
    what: &str,
    scheme: &str,
    addr: SocketAddr,
) -> anyhow::Result<TcpListener> {
    let listener = herald_runtime::serve::bind(addr).with_context(|| format!("binding {addr}"))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    tracing::info!(%addr, "{what}");
    println!("{name} {what} on {scheme}://{addr}");
    Ok(listener)
}

/// A service ready to run: its routes, the background tasks that live as long as it, and what
/// its readiness depends on.
#[derive(Debug)]
pub struct Service {
    router: Router,
    tasks: Vec<JoinHandle<()>>,
    health: Health,
    nats: Option<JetStream>,
    metrics: Arc<Metrics>,
}

impl Service {
    /// A service of `router` and `tasks`, ready while `drain` has not started, MongoDB answers
    /// and, when the service uses it, NATS does.
    pub fn new(
        router: Router,
        mut tasks: Vec<JoinHandle<()>>,
        drain: &Drain,
        nats: Option<&JetStream>,
        mongo: &Mongo,
        metrics: Arc<Metrics>,
    ) -> Self {
        let mut health = Health::new(drain.watch());
        if let Some(js) = nats {
            health = health.with_check(Arc::new(NatsCheck(js.clone())));
        }
        let health = health.with_check(Arc::new(MongoCheck(mongo.clone())));
        tasks.push(tokio::spawn(ping_mongo(mongo.clone(), PING_EVERY)));
        Self {
            router,
            tasks,
            health,
            nats: nats.cloned(),
            metrics,
        }
    }

    /// Serves `listeners` until `shutdown` resolves, then drains under `options`' deadline and
    /// flushes NATS.
    pub async fn run(
        self,
        listeners: Listeners,
        options: &ServiceOptions,
        drain: Drain,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Self {
            router,
            mut tasks,
            health,
            nats,
            metrics,
        } = self;
        let render = {
            let metrics = Arc::clone(&metrics);
            Arc::new(move || metrics.render())
        };
        let router = match listeners.admin {
            None => router.merge(ops_routes(health, render)),
            Some(admin) => {
                let routes = admin_routes(health, render, options.admin.prestop_delay);
                tasks.push(spawn_admin(admin, routes));
                router.fallback(|| async { ApiError::new(ErrorCode::NotFound, "no such endpoint") })
            }
        };
        let on_cut_off = Arc::new(move || {
            metrics.slow_cut_off.inc();
        });
        let served = serve(
            listeners.public,
            router,
            &drain,
            &options.process.serve(),
            on_cut_off,
            shutdown,
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

    /// [`Service::run`] on the addresses `options` names, until SIGTERM or SIGINT (caught since
    /// `signals` was made, first thing in the binary's `run`): what the binaries do.
    pub async fn run_until_signal(
        self,
        name: &str,
        options: &ServiceOptions,
        drain: Drain,
        signals: herald_runtime::signal::Signals,
    ) -> anyhow::Result<()> {
        let listeners = Listeners::bind(name, options).await?;
        self.run(listeners, options, drain, async {
            let signal = signals.recv().await;
            tracing::info!(signal, "shutdown requested");
        })
        .await
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
