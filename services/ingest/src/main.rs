//! `herald-ingest`: the publish API of the distributed mode. Each publish is committed to NATS
//! JetStream (the commit point) and written to MongoDB before it is answered `201`; an archiver
//! writes to MongoDB whatever a crash left out.

use std::{process::ExitCode, sync::Arc};

use clap::{ArgAction, Parser};
use herald_auth::{Access, AuthOptions};
use herald_cluster::{
    Archiver, Backends, ClusterConfig, ClusterOptions,
    redis_bus::BusOptions,
    service::{Service, ServiceOptions, trim_periodically},
};
use herald_gateway::{GatewayConfig, history::HistoryReader};
use herald_ingest::{IngestConfig, IngestOptions};
use herald_runtime::{ArticleOptions, Drain};
use herald_store::{EventLog, History, RetentionOptions};
use herald_telemetry::Metrics;

/// Every option can also be set with its `HERALD_*` environment variable.
#[derive(Debug, Parser)]
#[command(
    name = "herald-ingest",
    version,
    about = "Herald ingest: the publish API, committing events to NATS JetStream and MongoDB (or MongoDB and Redis).",
    long_about = "Herald ingest: the publish API (POST /v1/topics/{topic}/events, POST /v1/events, \
        PUT /api/post-update) and a topic's history (GET /v1/topics/{topic}/events, as on the \
        gateways, so a path-only router can send all of /v1/topics/ here). A publish is answered \
        201 once JetStream has acknowledged it (the commit point: it has its sequence and reaches \
        every gateway) and MongoDB holds it. With --bus redis, MongoDB sequences and stores the \
        publish in one transaction (the commit point) and the event is then announced on a Redis \
        Pub/Sub channel (no NATS). Every option can also be set with the HERALD_* variable shown."
)]
struct Options {
    #[command(flatten)]
    service: ServiceOptions,
    #[command(flatten)]
    cluster: ClusterOptions,
    #[command(flatten)]
    retention: RetentionOptions,
    #[command(flatten)]
    bus: BusOptions,
    #[command(flatten)]
    ingest: IngestOptions,
    #[command(flatten)]
    auth: AuthOptions,
    #[command(flatten)]
    article: ArticleOptions,
    /// Run the archiver in this process (turn off to run it elsewhere: one must run, as new
    /// idempotency keys wait for it; not used with --bus redis).
    #[arg(long, env = "HERALD_ARCHIVER", value_name = "BOOL", default_value_t = true, action = ArgAction::Set)]
    archiver: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let options = herald_config::parse::<Options>();
    let cluster = options
        .cluster
        .clone()
        .resolve(&options.retention)
        .unwrap_or_else(|e| e.exit("herald-ingest"));
    let access = options
        .auth
        .clone()
        .resolve(options.service.process.listen)
        .map(Arc::new)
        .unwrap_or_else(|e| e.exit("herald-ingest"));
    let service = options.service.clone();
    herald_cluster::service::main(
        "herald-ingest",
        &service,
        Box::pin(run(options, cluster, access)),
    )
    .await
}

async fn run(options: Options, cluster: ClusterConfig, access: Arc<Access>) -> anyhow::Result<()> {
    let signals = herald_runtime::signal::Signals::install()?;
    access.warn_if_open(options.service.process.listen);
    let ingest = options
        .ingest
        .resolve(&options.article, Arc::clone(&access));
    let metrics = Arc::new(Metrics::new());
    let (drain, _watch) = Drain::new();
    let backends = Backends::connect(
        &cluster,
        &options.bus,
        "herald-ingest",
        Arc::clone(&metrics),
    )
    .await?;
    // MongoDB trimmed to retention on both buses; on JetStream's, the archiver (unless off).
    let mut tasks = vec![tokio::spawn(trim_periodically(
        backends.mongo.clone(),
        cluster.trim_interval,
    ))];
    if let Some(js) = backends.jetstream()
        && options.archiver
    {
        let archiver = Archiver::new(
            js,
            &cluster.stream,
            backends.mongo.clone(),
            Arc::clone(&metrics),
        );
        tasks.push(tokio::spawn(archiver.run()));
    }
    let (log, history) = (backends.log().await?, backends.history());
    let router = routes(ingest, log, history, &metrics);
    let service = Service::new(
        router,
        tasks,
        &drain,
        backends.jetstream(),
        &backends.mongo,
        metrics,
    );
    service
        .run_until_signal("herald-ingest", &options.service, drain, signals)
        .await
}

/// The publish API and, so an Ingress can route the whole /v1/topics/ resource here, the topic's
/// history.
fn routes(
    ingest: IngestConfig,
    log: Arc<dyn EventLog>,
    history: Arc<dyn History>,
    metrics: &Arc<Metrics>,
) -> axum::Router {
    let access = Arc::clone(&ingest.access);
    let history = HistoryReader::new(
        history,
        Arc::clone(metrics),
        GatewayConfig::default().history_limit,
        Arc::clone(&access),
    );
    let document =
        herald_runtime::openapi::document([herald_ingest::openapi(), herald_gateway::openapi()]);
    let routes = herald_ingest::router(ingest, log, Arc::clone(metrics))
        .merge(history.router())
        .merge(herald_runtime::openapi::route(&document));
    herald_auth::edge::layer(routes, access)
}
