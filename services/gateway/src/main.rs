//! `herald-gateway`: the SSE side of the distributed mode. Stateless: any gateway resumes any
//! client. One live JetStream feed per process fans out to every connection; replay reads
//! JetStream while the id is inside the stream's retention and MongoDB before it.

use std::{process::ExitCode, sync::Arc, time::Duration};

use clap::Parser;
use herald_auth::AuthOptions;
use herald_cluster::{
    Backends, ClusterConfig, ClusterOptions,
    redis_bus::BusOptions,
    service::{Service, ServiceOptions},
};
use herald_config::{ConfigError, units};
use herald_gateway::{Gateway, GatewayConfig, GatewayOptions};
use herald_runtime::{ArticleOptions, Drain};
use herald_store::RetentionOptions;
use herald_telemetry::Metrics;

/// Every option can also be set with its `HERALD_*` environment variable.
#[derive(Debug, Parser)]
#[command(
    name = "herald-gateway",
    version,
    about = "Herald gateway: SSE streams with Last-Event-ID resume over NATS JetStream (or Redis) and MongoDB.",
    long_about = "Herald gateway: GET /v1/stream (SSE with Last-Event-ID resume), history, the demo \
        page at /, the article's GET /api/updates and its own client page at /article. Live events come from one JetStream feed per \
        process; a resume replays from JetStream while the id is inside the stream's retention, \
        from MongoDB before that, and says recovered:false when neither has it. With --bus redis, \
        live events come from a Redis Pub/Sub channel instead and every replay and gap fill reads \
        MongoDB (no NATS). Every option can also be set with the HERALD_* variable shown."
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
    /// With --bus redis: how often MongoDB's last sequence is read, to find events whose Redis
    /// message was lost with nothing after it to reveal the gap.
    #[arg(long, env = "HERALD_REDIS_POLL", value_name = "DURATION", default_value = "1s", value_parser = units::positive_duration)]
    redis_poll: Duration,
    #[command(flatten)]
    gateway: GatewayOptions,
    #[command(flatten)]
    auth: AuthOptions,
    #[command(flatten)]
    article: ArticleOptions,
}

/// The options, checked together.
struct Config {
    service: ServiceOptions,
    cluster: ClusterConfig,
    bus: BusOptions,
    redis_poll: Duration,
    gateway: GatewayConfig,
}

impl Options {
    fn resolve(self) -> Result<Config, ConfigError> {
        let access = Arc::new(self.auth.resolve(self.service.process.listen)?);
        Ok(Config {
            gateway: self
                .gateway
                .resolve(&self.article, &self.service.process, access)?,
            cluster: self.cluster.resolve(&self.retention)?,
            service: self.service,
            bus: self.bus,
            redis_poll: self.redis_poll,
        })
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let config = herald_config::parse::<Options>()
        .resolve()
        .unwrap_or_else(|e| e.exit("herald-gateway"));
    let service = config.service.clone();
    herald_cluster::service::main("herald-gateway", &service, Box::pin(run(config))).await
}

async fn run(config: Config) -> anyhow::Result<()> {
    let signals = herald_runtime::signal::Signals::install()?;
    let Config {
        service,
        cluster,
        bus,
        redis_poll,
        gateway: config,
    } = config;
    let metrics = Arc::new(Metrics::new());
    let (drain, watch) = Drain::new();
    let backends =
        Backends::connect(&cluster, &bus, "herald-gateway", Arc::clone(&metrics)).await?;
    let feed = backends.feed(redis_poll)?;
    let history = backends.history();
    let access = Arc::clone(&config.access);
    access.warn_if_open(service.process.listen);
    let gateway = Gateway::start(config, history, &*feed, Arc::clone(&metrics), watch).await?;
    Service::new(
        herald_auth::edge::layer(
            gateway
                .router()
                .merge(herald_auth::cookie::router(Arc::clone(&access)))
                .merge(herald_runtime::openapi::route(
                    &herald_runtime::openapi::document([
                        herald_ingest::openapi(),
                        herald_gateway::openapi(),
                    ]),
                )),
            access,
        ),
        Vec::new(),
        &drain,
        backends.jetstream(),
        &backends.mongo,
        metrics,
    )
    .run_until_signal("herald-gateway", &service, drain, signals)
    .await
}
