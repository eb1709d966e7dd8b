//! `herald-ingest`: the publish API of the distributed mode. Each publish is committed to NATS
//! JetStream (the commit point) and written to MongoDB before it is answered `201`; an archiver
//! writes to MongoDB whatever a crash left out.

use std::{process::ExitCode, sync::Arc};

use clap::{ArgAction, Parser};
use herald_cluster::{
    Archiver, ClusterConfig, ClusterLog, ClusterOptions, Mongo, Tiered,
    redis_bus::{self, BusKind, BusOptions, MongoHistory, RedisLog},
    service::{Service, ServiceOptions, trim_periodically},
};
use herald_gateway::{GatewayConfig, history::HistoryReader};
use herald_ingest::{IngestConfig, IngestOptions};
use herald_runtime::{ArticleOptions, Drain};
use herald_store::{History, RetentionOptions};
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
    article: ArticleOptions,
    /// Run the archiver in this process (turn off to run it elsewhere; not used with --bus redis).
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
    let service = options.service.clone();
    herald_cluster::service::main("herald-ingest", &service, Box::pin(run(options, cluster))).await
}

async fn run(options: Options, cluster: ClusterConfig) -> anyhow::Result<()> {
    let ingest = options.ingest.resolve(&options.article);
    let metrics = Arc::new(Metrics::new());
    let (drain, _watch) = Drain::new();
    // Both buses: MongoDB trimmed to retention; JetStream's also has the archiver and two-tier
    // history, the Redis bus reads history from MongoDB alone.
    let (log, history, tasks, js, mongo): (
        Arc<dyn herald_store::EventLog>,
        Arc<dyn History>,
        _,
        _,
        _,
    ) = match options.bus.bus {
        BusKind::Jetstream => {
            let (js, mongo) =
                herald_cluster::connect(&cluster, "herald-ingest", Arc::clone(&metrics)).await?;
            let mut tasks = vec![tokio::spawn(trim_periodically(
                mongo.clone(),
                cluster.trim_interval,
            ))];
            if options.archiver {
                let archiver =
                    Archiver::new(&js, &cluster.stream, mongo.clone(), Arc::clone(&metrics));
                tasks.push(tokio::spawn(archiver.run()));
            }
            (
                Arc::new(ClusterLog::new(js.clone(), mongo.clone())),
                Arc::new(Tiered::new(js.clone(), mongo.clone(), Arc::clone(&metrics))),
                tasks,
                Some(js),
                mongo,
            )
        }
        BusKind::Redis => {
            let mongo = Mongo::connect(&cluster).await?;
            let epoch = redis_bus::prepare(&mongo).await?;
            let log =
                RedisLog::connect(&options.bus, mongo.clone(), epoch, Arc::clone(&metrics)).await?;
            let tasks = vec![tokio::spawn(trim_periodically(
                mongo.clone(),
                cluster.trim_interval,
            ))];
            (
                Arc::new(log),
                Arc::new(MongoHistory::new(
                    mongo.clone(),
                    epoch,
                    Arc::clone(&metrics),
                )),
                tasks,
                None,
                mongo,
            )
        }
    };
    service(ingest, log, history, tasks, &metrics)
        .run(
            "herald-ingest",
            &options.service,
            js.as_ref(),
            &mongo,
            metrics,
            drain,
        )
        .await
}

/// The publish API and, so an Ingress can route the whole /v1/topics/ resource here, the topic's
/// history.
fn service(
    ingest: IngestConfig,
    log: Arc<dyn herald_store::EventLog>,
    history: Arc<dyn History>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    metrics: &Arc<Metrics>,
) -> Service {
    let history = HistoryReader::new(
        history,
        Arc::clone(metrics),
        GatewayConfig::default().history_limit,
    );
    Service {
        router: herald_ingest::router(ingest, log, Arc::clone(metrics)).merge(history.router()),
        tasks,
    }
}
