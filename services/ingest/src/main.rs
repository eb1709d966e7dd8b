//! `herald-ingest`: the publish API of the distributed mode. Each publish is committed to NATS
//! JetStream (the commit point) and written to MongoDB before it is answered `201`; an archiver
//! writes to MongoDB whatever a crash left out.

use std::{process::ExitCode, sync::Arc};

use anyhow::Context;
use clap::{ArgAction, Parser};
use herald_cluster::{
    Archiver, ClusterLog, ClusterOptions, Mongo, Tiered,
    redis_bus::{self, BusKind, BusOptions, MongoHistory, RedisLog},
    service::{Service, ServiceOptions, trim_periodically},
};
use herald_core::Topic;
use herald_gateway::{GatewayConfig, history::HistoryReader};
use herald_ingest::{AllowAll, BearerToken, IngestConfig};
use herald_runtime::{Drain, config::parse_bytes};
use herald_store::History;
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
    bus: BusOptions,
    /// Largest request body; 413 past it.
    #[arg(long, env = "HERALD_MAX_BODY", value_name = "SIZE", default_value = "64KiB", value_parser = parse_bytes)]
    max_body: u64,
    /// Most events in one batch publish; 413 past it (JetStream's atomic batches allow 1000).
    #[arg(
        long,
        env = "HERALD_MAX_BATCH",
        value_name = "N",
        default_value_t = 100
    )]
    max_batch: usize,
    /// Topic behind the article's PUT /api/post-update.
    #[arg(
        long,
        env = "HERALD_COMPAT_TOPIC",
        value_name = "TOPIC",
        default_value = "updates"
    )]
    compat_topic: String,
    /// Publishes must send `Authorization: Bearer TOKEN`; 401 otherwise (unset: open).
    #[arg(
        long,
        env = "HERALD_PUBLISH_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    publish_token: Option<String>,
    /// Run the archiver in this process (turn off to run it elsewhere; not used with --bus redis).
    #[arg(long, env = "HERALD_ARCHIVER", value_name = "BOOL", default_value_t = true, action = ArgAction::Set)]
    archiver: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let options = Options::parse();
    let service = options.service.clone();
    herald_cluster::service::main("herald-ingest", &service, Box::pin(run(options))).await
}

async fn run(options: Options) -> anyhow::Result<()> {
    if options.max_batch == 0 || options.max_batch > 1000 {
        anyhow::bail!("--max-batch must be 1 to 1000");
    }
    let ingest = IngestConfig {
        max_body_bytes: usize::try_from(options.max_body).context("--max-body")?,
        max_batch: options.max_batch,
        compat_topic: Topic::new(&options.compat_topic).context("--compat-topic")?,
        auth: match options.publish_token {
            Some(token) if token.is_empty() => anyhow::bail!("--publish-token must not be empty"),
            Some(token) => Arc::new(BearerToken::new(token)),
            None => Arc::new(AllowAll),
        },
    };
    options.bus.check()?;
    let cluster = options.cluster.resolve()?;
    let metrics = Arc::new(Metrics::new());
    let (drain, _watch) = Drain::new();
    // Both buses: MongoDB trimmed to retention; JetStream's also has the archiver and two-tier
    // history, the Redis bus reads history from MongoDB alone.
    let (log, history, tasks, js, mongo): (
        Arc<dyn herald_ingest::EventLog>,
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
    log: Arc<dyn herald_ingest::EventLog>,
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
