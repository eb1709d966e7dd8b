//! `herald-redis-bridge`: keeps the article's Redis topology working beside Herald.
//!
//! - Redis → Herald ([`from_redis`]): legacy publishers' `PUBLISH`es on configured channels or
//!   patterns (at most once, as Pub/Sub is), or entries of Redis Streams read with a consumer
//!   group (acknowledged after Herald's commit: nothing lost), become Herald events, with an
//!   idempotency key made from each message so restarts and replicas never double one.
//! - Herald → Redis ([`to_redis`]): every Herald event is republished on its topic's channel in
//!   the article's payload shape, for legacy SSE servers and other subscribers.
//! - Loop prevention ([`mapping`]): events carry where they entered Herald (the envelope's
//!   origin) and what Herald puts on Redis carries a `_herald` mark; neither goes back.

mod from_redis;
mod mapping;
mod to_redis;

use std::{process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context;
use clap::{ArgAction, Parser};
use herald_cluster::{
    ClusterConfig, ClusterLog, ClusterOptions,
    redis_bus::RedisOptions,
    service::{Service, ServiceOptions},
};
use herald_config::{ConfigError, units};
use herald_core::TopicFilter;
use herald_proto::Origin;
use herald_runtime::Drain;
use herald_store::RetentionOptions;
use herald_telemetry::Metrics;

use crate::{
    from_redis::{Inbound, StreamsConfig},
    mapping::Mapping,
    to_redis::Outbound,
};

/// Every option can also be set with its `HERALD_*` environment variable.
#[derive(Debug, Parser)]
#[command(
    name = "herald-redis-bridge",
    version,
    about = "Herald's Redis bridge: legacy Redis publishers into Herald, Herald's events out to Redis.",
    long_about = "Herald's Redis bridge, for teams moving from the Redis Pub/Sub + MongoDB design. \
        Redis to Herald: messages PUBLISHed on --subscribe channels or patterns (at most once, as \
        Pub/Sub is: what is published while no bridge is subscribed is lost), or entries of \
        --streams read with a consumer group and acknowledged after Herald's commit (nothing \
        lost), become events on the topic the channel names, each with an idempotency key made \
        from the message, so replicas and restarts never double one. Herald to Redis: every event \
        is republished on the channel of its topic, as the event's JSON with a `_herald` member \
        {id, topic, type}, by one replica at a time, in order (a standby takes over within 5 s). Events that came from Redis never go back, and messages marked \
        `_herald` never come in. Serves /healthz, /readyz and /metrics. Every option can also be \
        set with the HERALD_* variable shown."
)]
struct Options {
    #[command(flatten)]
    service: ServiceOptions,
    #[command(flatten)]
    cluster: ClusterOptions,
    #[command(flatten)]
    retention: RetentionOptions,
    #[command(flatten)]
    redis: RedisOptions,
    /// Bring legacy Redis messages into Herald.
    #[arg(long, env = "HERALD_FROM_REDIS", value_name = "BOOL", default_value_t = true, action = ArgAction::Set)]
    from_redis: bool,
    /// Republish Herald's events on Redis.
    #[arg(long, env = "HERALD_TO_REDIS", value_name = "BOOL", default_value_t = true, action = ArgAction::Set)]
    to_redis: bool,
    /// Pub/Sub channels to bring in, comma-separated; a name with `*`, `?` or `[` is a pattern
    /// (PSUBSCRIBE). Empty for none.
    #[arg(
        long,
        env = "HERALD_REDIS_SUBSCRIBE",
        value_name = "CHANNELS",
        value_delimiter = ',',
        default_value = "updates"
    )]
    subscribe: Vec<String>,
    /// Redis Streams to bring in with a consumer group (lossless), comma-separated. An entry's
    /// `data` field is the event (JSON or text); optional `topic` and `type` fields override the
    /// stream's topic and the type `message`.
    #[arg(
        long,
        env = "HERALD_REDIS_STREAMS",
        value_name = "KEYS",
        value_delimiter = ','
    )]
    streams: Vec<String>,
    /// The streams' consumer group, shared by every bridge replica.
    #[arg(
        long,
        env = "HERALD_REDIS_GROUP",
        value_name = "NAME",
        default_value = "herald-bridge"
    )]
    group: String,
    /// This bridge's consumer name in the group (default: the host name, which is the pod name
    /// on Kubernetes). A restart under the same name takes its own pending entries back at once;
    /// another name gets them after --claim-idle.
    #[arg(long, env = "HERALD_REDIS_CONSUMER", value_name = "NAME")]
    consumer: Option<String>,
    /// Entries another consumer has held unacknowledged this long are claimed (it died).
    #[arg(long, env = "HERALD_REDIS_CLAIM_IDLE", value_name = "DURATION", default_value = "30s", value_parser = units::positive_duration)]
    claim_idle: Duration,
    /// Every bridged channel is this prefix and a topic, both ways.
    #[arg(
        long,
        env = "HERALD_REDIS_CHANNEL_PREFIX",
        value_name = "PREFIX",
        default_value = ""
    )]
    channel_prefix: String,
    /// Topics republished on Redis, comma-separated (patterns allowed).
    #[arg(
        long,
        env = "HERALD_TO_REDIS_TOPICS",
        value_name = "TOPICS",
        default_value = ">",
        value_parser = topic_filter
    )]
    to_redis_topics: TopicFilter,
    /// The JSON member that identifies a legacy message (its idempotency key). A Pub/Sub message
    /// without it is identified by its content, so identical messages on one channel within the
    /// idempotency window count once; a stream entry without it by its entry id.
    #[arg(
        long,
        env = "HERALD_REDIS_ID_FIELD",
        value_name = "NAME",
        default_value = "id"
    )]
    id_field: String,
}

#[tokio::main]
async fn main() -> ExitCode {
    let mut options = herald_config::parse::<Options>();
    let cluster = options
        .check()
        .and_then(|()| options.cluster.clone().resolve(&options.retention))
        .unwrap_or_else(|e| e.exit("herald-redis-bridge"));
    let service = options.service.clone();
    let run = Box::pin(run(options, cluster));
    herald_cluster::service::main("herald-redis-bridge", &service, run).await
}

async fn run(options: Options, cluster: ClusterConfig) -> anyhow::Result<()> {
    let signals = herald_runtime::signal::Signals::install()?;
    let client = options.redis.client().context("--redis-url")?;
    let (subscribe, streams) = (options.subscribe, options.streams);
    let topics = options.to_redis_topics;
    let mapping = Mapping::new(&options.channel_prefix, &options.id_field);
    let metrics = Arc::new(Metrics::new());
    let (js, mongo) =
        herald_cluster::connect(&cluster, "herald-redis-bridge", Arc::clone(&metrics)).await?;
    let (drain, _watch) = Drain::new();
    let mut tasks = Vec::new();
    if options.from_redis {
        let inbound = Inbound {
            log: ClusterLog::new(js.clone(), mongo.clone()).with_origin(Origin::Redis),
            mapping: mapping.clone(),
            metrics: Arc::clone(&metrics),
        };
        if !subscribe.is_empty() {
            tasks.push(tokio::spawn(from_redis::pubsub(
                client.clone(),
                subscribe,
                inbound.clone(),
            )));
        }
        if !streams.is_empty() {
            let consumer = options.consumer.unwrap_or_else(default_consumer);
            tracing::info!(%consumer, group = %options.group, ?streams, "reading redis streams");
            let config = StreamsConfig {
                keys: streams,
                group: options.group,
                consumer,
                claim_idle: options.claim_idle,
            };
            tasks.push(tokio::spawn(from_redis::streams(
                client.clone(),
                config,
                inbound,
            )));
        }
    }
    if options.to_redis {
        let outbound = Outbound {
            js: async_nats::jetstream::new(js.client().clone()),
            stream: cluster.stream.clone(),
            redis: client
                .get_connection_manager()
                .await
                .context("connecting to redis")?,
            mapping,
            topics,
            metrics: Arc::clone(&metrics),
        };
        tasks.push(tokio::spawn(outbound.run()));
    }
    // No API of its own: the service adds the ops routes.
    let service = Service::new(
        axum::Router::new(),
        tasks,
        &drain,
        Some(&js),
        &mongo,
        metrics,
    );
    service
        .run_until_signal("herald-redis-bridge", &options.service, drain, signals)
        .await
}

impl Options {
    /// Checks the directions against the sources they need (empty names dropped).
    fn check(&mut self) -> Result<(), ConfigError> {
        self.subscribe.retain(|s| !s.is_empty());
        self.streams.retain(|s| !s.is_empty());
        if !self.from_redis && !self.to_redis {
            return Err(ConfigError::new(
                "--from-redis",
                "and --to-redis are both off: nothing to bridge",
            ));
        }
        if self.from_redis && self.subscribe.is_empty() && self.streams.is_empty() {
            return Err(ConfigError::new(
                "--from-redis",
                "needs --subscribe channels or --streams",
            ));
        }
        Ok(())
    }
}

/// `--to-redis-topics`: topics and patterns.
fn topic_filter(s: &str) -> Result<TopicFilter, String> {
    TopicFilter::parse(s.split(',')).map_err(|e| e.to_string())
}

/// The host name: the pod name on Kubernetes, which a restarted container keeps.
fn default_consumer() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "herald-redis-bridge".to_owned())
}
