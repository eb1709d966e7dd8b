//! `herald-gateway`: the SSE side of the distributed mode. Stateless: any gateway resumes any
//! client. One live JetStream feed per process fans out to every connection; replay reads
//! JetStream while the id is inside the stream's retention and MongoDB before it.

use std::{process::ExitCode, sync::Arc};

use anyhow::Context;
use clap::Parser;
use herald_cluster::{
    ClusterOptions, Mongo, Tiered,
    redis_bus::{self, BusKind, BusOptions, MongoHistory, RedisBus},
    service::{Service, ServiceOptions},
};
use herald_core::Topic;
use herald_gateway::{Gateway, GatewayConfig};
use herald_runtime::{
    Drain,
    config::{parse_bytes, parse_duration},
};
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
    bus: BusOptions,
    /// With --bus redis: how often MongoDB's last sequence is read, to find events whose Redis
    /// message was lost with nothing after it to reveal the gap.
    #[arg(long, env = "HERALD_REDIS_POLL", value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    redis_poll: std::time::Duration,
    /// Idle time before a comment heartbeat on a stream.
    #[arg(long, env = "HERALD_HEARTBEAT", value_name = "DURATION", default_value = "15s", value_parser = parse_duration)]
    heartbeat: std::time::Duration,
    /// Reconnection delay sent to browsers as `retry:`.
    #[arg(long, env = "HERALD_RETRY", value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    retry: std::time::Duration,
    /// Most topics and patterns per stream; 400 past it.
    #[arg(
        long,
        env = "HERALD_MAX_TOPICS",
        value_name = "N",
        default_value_t = 32
    )]
    max_topics: usize,
    /// Most open streams; 503 with Retry-After past it.
    #[arg(
        long,
        env = "HERALD_MAX_CONNECTIONS",
        value_name = "N",
        default_value_t = 10_000
    )]
    max_connections: usize,
    /// Events queued per subscriber before it catches up from the history instead.
    #[arg(
        long,
        env = "HERALD_SUBSCRIBER_QUEUE",
        value_name = "N",
        default_value_t = 256
    )]
    subscriber_queue: usize,
    /// Events per read during replay.
    #[arg(
        long,
        env = "HERALD_REPLAY_PAGE",
        value_name = "N",
        default_value_t = 256
    )]
    replay_page: usize,
    /// Bytes of recently delivered events kept in memory, so resumes and catch-ups inside them
    /// read no store (0 keeps none).
    #[arg(long, env = "HERALD_REPLAY_WINDOW", value_name = "SIZE", default_value = "64MiB", value_parser = parse_bytes)]
    replay_window: u64,
    /// Streams end at random within this after a drain starts; keep it below the deadline.
    #[arg(long, env = "HERALD_DRAIN_JITTER", value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    drain_jitter: std::time::Duration,
    /// How long the live feed waits for a missing sequence before reading it from the history.
    #[arg(long, env = "HERALD_GAP_TIMEOUT", value_name = "DURATION", default_value = "100ms", value_parser = parse_duration)]
    gap_timeout: std::time::Duration,
    /// Topic shown by the demo page at /.
    #[arg(
        long,
        env = "HERALD_DEMO_TOPIC",
        value_name = "TOPIC",
        default_value = "scores"
    )]
    demo_topic: String,
    /// Topic behind the article's GET /api/updates.
    #[arg(
        long,
        env = "HERALD_COMPAT_TOPIC",
        value_name = "TOPIC",
        default_value = "updates"
    )]
    compat_topic: String,
}

#[tokio::main]
async fn main() -> ExitCode {
    let options = Options::parse();
    let service = options.service.clone();
    herald_cluster::service::main("herald-gateway", &service, Box::pin(run(options))).await
}

async fn run(options: Options) -> anyhow::Result<()> {
    if options.drain_jitter >= options.service.drain_deadline {
        anyhow::bail!("--drain-jitter must be below --drain-deadline");
    }
    for (name, n) in [
        ("--max-topics", options.max_topics),
        ("--max-connections", options.max_connections),
        ("--subscriber-queue", options.subscriber_queue),
        ("--replay-page", options.replay_page),
    ] {
        if n == 0 {
            anyhow::bail!("{name} must be at least 1");
        }
    }
    let config = GatewayConfig {
        heartbeat: options.heartbeat,
        retry: options.retry,
        max_topics: options.max_topics,
        max_connections: options.max_connections,
        subscriber_queue: options.subscriber_queue,
        replay_page: options.replay_page,
        replay_window: usize::try_from(options.replay_window).context("--replay-window")?,
        drain_jitter: options.drain_jitter,
        gap_timeout: options.gap_timeout,
        demo_topic: Topic::new(&options.demo_topic).context("--demo-topic")?,
        compat_topic: Topic::new(&options.compat_topic).context("--compat-topic")?,
        ..GatewayConfig::default()
    };
    options.bus.check()?;
    if options.redis_poll.is_zero() {
        anyhow::bail!("--redis-poll must be above zero");
    }
    let cluster = options.cluster.resolve()?;
    let metrics = Arc::new(Metrics::new());
    let (drain, watch) = Drain::new();
    let (gateway, js, mongo) = match options.bus.bus {
        BusKind::Jetstream => {
            let (js, mongo) =
                herald_cluster::connect(&cluster, "herald-gateway", Arc::clone(&metrics)).await?;
            let history = Arc::new(Tiered::new(js.clone(), mongo.clone(), Arc::clone(&metrics)));
            let gateway = Gateway::start(config, history, &js, Arc::clone(&metrics), watch).await?;
            (gateway, Some(js), mongo)
        }
        BusKind::Redis => {
            let mongo = Mongo::connect(&cluster).await?;
            let epoch = redis_bus::prepare(&mongo).await?;
            let bus = RedisBus::new(
                &options.bus,
                mongo.clone(),
                epoch,
                options.redis_poll,
                Arc::clone(&metrics),
            )?;
            let history = Arc::new(MongoHistory::new(
                mongo.clone(),
                epoch,
                Arc::clone(&metrics),
            ));
            let gateway =
                Gateway::start(config, history, &bus, Arc::clone(&metrics), watch).await?;
            (gateway, None, mongo)
        }
    };
    let service = Service {
        router: gateway.router(),
        tasks: Vec::new(),
    };
    service
        .run(
            "herald-gateway",
            &options.service,
            js.as_ref(),
            &mongo,
            metrics,
            drain,
        )
        .await
}
