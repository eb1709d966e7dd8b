//! Redis → Herald: legacy publishers' messages become Herald events.
//!
//! - [`pubsub`]: channels and patterns. At most once, as Pub/Sub is: what is published while no
//!   bridge is subscribed (a restart, a Redis restart, a network cut) is gone. Every message is
//!   published with an idempotency key made from it, so two bridges that both receive it make
//!   one event.
//! - [`streams`]: Redis Streams read with a consumer group: an entry is acknowledged (`XACK`)
//!   only after Herald answered 201 (or said it already had it), so a crash or a restart of the
//!   bridge re-reads it and nothing is lost; the message's `--id-field` (or else the entry id) is
//!   the idempotency key, so nothing is doubled either, not even an entry a producer added twice
//!   because its first `XADD` answer was lost. Entries a dead bridge left pending are claimed after `--claim-idle`.

use std::{sync::Arc, time::Duration};

use futures_util::StreamExt;
use herald_cluster::ClusterLog;
use herald_core::NewEvent;
use herald_store::EventLog;
use herald_store::{Idempotency, StoreError};
use herald_telemetry::Metrics;
use herald_telemetry::{BridgeDirection, BridgeOutcome};
use redis::{
    AsyncCommands,
    aio::{ConnectionManager, ConnectionManagerConfig},
    streams::{StreamAutoClaimReply, StreamId, StreamReadOptions, StreamReadReply},
};

use crate::mapping::{Mapping, Skip, pubsub_key, stream_key};

/// Wait before retrying Redis or Herald.
const BACKOFF: Duration = Duration::from_millis(500);
/// The first wait before subscribing again.
const PUBSUB_RETRY: Duration = Duration::from_millis(50);
/// Entries read from the streams at once.
const READ_COUNT: usize = 100;
/// How long one XREADGROUP waits for entries.
const BLOCK: Duration = Duration::from_secs(1);
const DIRECTION: BridgeDirection = BridgeDirection::FromRedis;

/// Publishes into Herald.
#[derive(Debug, Clone)]
pub(crate) struct Inbound {
    pub(crate) log: ClusterLog,
    pub(crate) mapping: Mapping,
    pub(crate) metrics: Arc<Metrics>,
}

impl Inbound {
    /// Publishes `event` under `key`, retrying while Herald is unavailable, until Herald has it
    /// (new, or already: another bridge, an earlier try) or refuses it for good.
    async fn publish(&self, event: NewEvent, key: String) {
        let fingerprint = herald_ingest::publish::fingerprint(std::slice::from_ref(&event));
        let mut warned = false;
        loop {
            let idempotency = Idempotency {
                key: key.clone(),
                fingerprint,
            };
            match self
                .log
                .append(vec![event.clone()], Some(idempotency))
                .await
            {
                Ok(appended) => {
                    let outcome = if appended.duplicate {
                        BridgeOutcome::Duplicate
                    } else {
                        BridgeOutcome::Published
                    };
                    self.metrics.bridged(DIRECTION, outcome);
                    return;
                }
                Err(StoreError::IdempotencyConflict) => {
                    tracing::warn!(%key, "a message reuses the identity of another one; not bridged");
                    self.metrics.bridged(DIRECTION, BridgeOutcome::Invalid);
                    return;
                }
                Err(e) => {
                    self.metrics.bridged(DIRECTION, BridgeOutcome::Failed);
                    if !warned {
                        tracing::warn!(error = %e, %key, "publishing into Herald failed; retrying");
                        warned = true;
                    }
                    tokio::time::sleep(BACKOFF).await;
                }
            }
        }
    }

    fn skipped(&self, skip: &Skip) {
        match skip {
            Skip::Loop => self.metrics.bridged(DIRECTION, BridgeOutcome::SkippedLoop),
            Skip::Topic(name) => {
                tracing::warn!(channel = %name, "the channel does not name a Herald topic; message not bridged");
                self.metrics.bridged(DIRECTION, BridgeOutcome::SkippedTopic);
            }
        }
    }
}

/// Bridges Pub/Sub channels (a name with `*`, `?` or `[` is a pattern) until the task is dropped.
///
/// Every moment without a subscription loses messages, so a lost subscription is retried at
/// once, then after 50 ms doubling up to 200 ms.
pub(crate) async fn pubsub(client: redis::Client, subscriptions: Vec<String>, inbound: Inbound) {
    let mut delay = Duration::ZERO;
    loop {
        match subscribe(&client, &subscriptions).await {
            Ok(mut messages) => {
                tracing::info!(?subscriptions, "subscribed to redis");
                delay = Duration::ZERO;
                while let Some(message) = messages.next().await {
                    let channel = message.get_channel_name();
                    let event = inbound.mapping.topic(channel).and_then(|topic| {
                        inbound
                            .mapping
                            .event(topic, message.get_payload_bytes(), None)
                    });
                    match event {
                        Ok((event, id)) => {
                            let key = pubsub_key(channel, id.as_deref(), &event);
                            inbound.publish(event, key).await;
                        }
                        Err(skip) => inbound.skipped(&skip),
                    }
                }
                tracing::warn!(
                    "the redis subscription ended; messages published until it is back are lost"
                );
            }
            Err(e) => {
                if delay.is_zero() {
                    tracing::warn!(error = %e, "subscribing to redis failed; retrying");
                }
                tracing::debug!(error = %e, "subscribing to redis failed");
                delay = (delay * 2).clamp(PUBSUB_RETRY, PUBSUB_RETRY * 4);
            }
        }
        tokio::time::sleep(delay).await;
    }
}

async fn subscribe(
    client: &redis::Client,
    subscriptions: &[String],
) -> redis::RedisResult<redis::aio::PubSubStream> {
    let mut pubsub = client.get_async_pubsub().await?;
    for name in subscriptions {
        if name.contains(['*', '?', '[']) {
            pubsub.psubscribe(name).await?;
        } else {
            pubsub.subscribe(name).await?;
        }
    }
    Ok(pubsub.into_on_message())
}

/// Where the streams reader reads.
#[derive(Debug, Clone)]
pub(crate) struct StreamsConfig {
    pub(crate) keys: Vec<String>,
    pub(crate) group: String,
    pub(crate) consumer: String,
    pub(crate) claim_idle: Duration,
}

/// Bridges Redis Streams with a consumer group until the task is dropped.
pub(crate) async fn streams(client: redis::Client, config: StreamsConfig, inbound: Inbound) {
    loop {
        if let Err(e) = read_streams(&client, &config, &inbound).await {
            tracing::warn!(error = %e, "reading the redis streams failed; retrying");
        }
        tokio::time::sleep(BACKOFF).await;
    }
}

async fn read_streams(
    client: &redis::Client,
    config: &StreamsConfig,
    inbound: &Inbound,
) -> redis::RedisResult<()> {
    let manager = ConnectionManagerConfig::new().set_response_timeout(Some(BLOCK * 5));
    let mut redis = client.get_connection_manager_with_config(manager).await?;
    for key in &config.keys {
        // From the stream's start: entries added before the first bridge ran are taken too.
        let created: redis::RedisResult<()> =
            redis.xgroup_create_mkstream(key, &config.group, "0").await;
        match created {
            Ok(()) => {
                tracing::info!(stream = %key, group = %config.group, "created the consumer group")
            }
            Err(e) if e.code() == Some("BUSYGROUP") => {}
            Err(e) => return Err(e),
        }
    }
    // This consumer's own pending entries first (a restart after a crash), then new ones.
    let mut pending = true;
    let mut last_claim = tokio::time::Instant::now();
    loop {
        let ids: Vec<&str> = config
            .keys
            .iter()
            .map(|_| if pending { "0" } else { ">" })
            .collect();
        let options = StreamReadOptions::default()
            .group(&config.group, &config.consumer)
            .count(READ_COUNT)
            .block(BLOCK.as_millis() as usize);
        let reply: Option<StreamReadReply> =
            redis.xread_options(&config.keys, &ids, &options).await?;
        let mut read = 0;
        for stream in reply.map(|r| r.keys).unwrap_or_default() {
            read += stream.ids.len();
            take(&mut redis, config, inbound, &stream.key, stream.ids).await?;
        }
        if pending && read == 0 {
            pending = false;
        }
        if last_claim.elapsed() >= config.claim_idle / 2 {
            claim(&mut redis, config, inbound).await?;
            last_claim = tokio::time::Instant::now();
        }
    }
}

/// Entries other consumers left pending longer than `--claim-idle` (a bridge that died).
async fn claim(
    redis: &mut ConnectionManager,
    config: &StreamsConfig,
    inbound: &Inbound,
) -> redis::RedisResult<()> {
    for key in &config.keys {
        let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(key)
            .arg(&config.group)
            .arg(&config.consumer)
            .arg(config.claim_idle.as_millis() as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(READ_COUNT)
            .query_async(redis)
            .await?;
        if !reply.claimed.is_empty() {
            tracing::info!(stream = %key, entries = reply.claimed.len(), "claimed entries a stopped bridge left pending");
            take(redis, config, inbound, key, reply.claimed).await?;
        }
    }
    Ok(())
}

/// Publishes entries into Herald and acknowledges each once Herald has it.
async fn take(
    redis: &mut ConnectionManager,
    config: &StreamsConfig,
    inbound: &Inbound,
    key: &str,
    entries: Vec<StreamId>,
) -> redis::RedisResult<()> {
    for entry in entries {
        let topic = match entry.get::<String>("topic") {
            Some(topic) => inbound.mapping.topic(&topic),
            None => inbound.mapping.topic(key),
        };
        let data: Vec<u8> = entry.get("data").unwrap_or_default();
        let event_type: Option<String> = entry.get("type");
        match topic.and_then(|t| inbound.mapping.event(t, &data, event_type.as_deref())) {
            Ok((event, id)) => {
                let key = stream_key(key, id.as_deref(), &entry.id);
                inbound.publish(event, key).await;
            }
            Err(skip) => inbound.skipped(&skip),
        }
        // Taken, or never takeable: either way it must not be read again.
        let _: i64 = redis.xack(key, &config.group, &[&entry.id]).await?;
    }
    Ok(())
}
