//! Herald → Redis: every Herald event (that did not come from Redis) is published on its topic's
//! channel in the article's payload shape, so legacy SSE servers and other Redis subscribers keep
//! working.
//!
//! The events come from a durable JetStream consumer, `herald-redis-bridge`, shared by every
//! bridge replica, with the pinned-client priority policy: the server delivers to one replica at
//! a time, so events reach Redis in sequence order; the others stand by and take over when the
//! pinned one has not pulled for [`PIN_TIMEOUT`] (it died), continuing where the consumer stands,
//! so none is skipped. A message is acknowledged after its PUBLISH; a bridge that dies between
//! the two has the event republished (at least once), and the payload's `_herald.id` lets a
//! subscriber drop the repeat.

use std::{sync::Arc, time::Duration};

use async_nats::jetstream::{
    self, AckKind,
    consumer::{AckPolicy, DeliverPolicy, PriorityPolicy, pull},
};
use futures_util::StreamExt;
use herald_cluster::envelope::{ALL_SUBJECTS, decode};
use herald_core::{EventId, TopicFilter};
use herald_proto::Origin;
use herald_telemetry::Metrics;
use herald_telemetry::{BridgeDirection, BridgeOutcome};
use redis::AsyncCommands;

use crate::mapping::{Mapping, article_payload};

/// The durable consumer every bridge shares.
pub(crate) const CONSUMER: &str = "herald-redis-bridge";
const BACKOFF: Duration = Duration::from_millis(500);
/// The priority group every replica pulls in.
const GROUP: &str = "bridges";
/// How long the pinned replica may go without pulling before a standby one takes over: the
/// delay events see when the replica that republishes them dies.
const PIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one pull waits for messages: well below [`PIN_TIMEOUT`], so a live replica keeps
/// its pin between pulls.
const PULL_EXPIRES: Duration = Duration::from_secs(1);
const DIRECTION: BridgeDirection = BridgeDirection::ToRedis;

/// Republishes Herald's events on Redis.
#[derive(Debug)]
pub(crate) struct Outbound {
    pub(crate) js: jetstream::Context,
    pub(crate) stream: String,
    pub(crate) redis: redis::aio::ConnectionManager,
    pub(crate) mapping: Mapping,
    pub(crate) topics: TopicFilter,
    pub(crate) metrics: Arc<Metrics>,
}

impl Outbound {
    /// Runs until the task is dropped.
    pub(crate) async fn run(mut self) {
        loop {
            if let Err(e) = self.republish().await {
                tracing::warn!(error = %e, "republishing on redis stopped; restarting");
            }
            tokio::time::sleep(BACKOFF).await;
        }
    }

    async fn republish(&mut self) -> anyhow::Result<()> {
        let stream = self.js.get_stream_no_info(&self.stream).await?;
        let consumer = stream
            .get_or_create_consumer(
                CONSUMER,
                pull::Config {
                    durable_name: Some(CONSUMER.to_owned()),
                    description: Some(
                        "Herald: republishes events on Redis for legacy subscribers".to_owned(),
                    ),
                    // From the bridge's first start on; afterwards the consumer remembers.
                    deliver_policy: DeliverPolicy::New,
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(30),
                    filter_subject: ALL_SUBJECTS.to_owned(),
                    max_ack_pending: 10_000,
                    priority_policy: PriorityPolicy::PinnedClient,
                    priority_groups: vec![GROUP.to_owned()],
                    priority_timeout: PIN_TIMEOUT,
                    ..Default::default()
                },
            )
            .await?;
        let mut messages = consumer
            .stream()
            .group(GROUP)
            .expires(PULL_EXPIRES)
            .messages()
            .await?;
        while let Some(message) = messages.next().await {
            let message = message.map_err(|e| anyhow::anyhow!(e))?;
            let seq = message
                .info()
                .map_err(|e| anyhow::anyhow!(e))?
                .stream_sequence;
            match decode(&message.payload, seq, None) {
                Ok(d) if d.origin == Origin::Redis => {
                    self.metrics.bridged(DIRECTION, BridgeOutcome::SkippedLoop);
                }
                Ok(d) if !self.topics.matches(d.event.topic.as_str()) => {
                    self.metrics.bridged(DIRECTION, BridgeOutcome::SkippedTopic);
                }
                Ok(d) => {
                    let e = &d.event;
                    let payload = article_payload(
                        EventId::new(d.epoch, seq),
                        &e.topic,
                        &e.event_type,
                        e.data.get(),
                    );
                    let channel = self.mapping.channel(&e.topic);
                    // In place until Redis answers, so the events keep their order; the message
                    // is kept ours meanwhile.
                    let mut warned = false;
                    loop {
                        let published: redis::RedisResult<i64> =
                            self.redis.publish(&channel, &payload).await;
                        match published {
                            Ok(_) => break,
                            Err(e) => {
                                self.metrics.bridged(DIRECTION, BridgeOutcome::Failed);
                                if !warned {
                                    tracing::warn!(error = %e, "publishing on redis failed; retrying");
                                    warned = true;
                                }
                                let _ = message.ack_with(AckKind::Progress).await;
                                tokio::time::sleep(BACKOFF).await;
                            }
                        }
                    }
                    self.metrics.bridged(DIRECTION, BridgeOutcome::Published);
                }
                Err(e) => {
                    tracing::warn!(seq, error = %e, "not republishing a message that is not a Herald event");
                    self.metrics.bridged(DIRECTION, BridgeOutcome::Invalid);
                }
            }
            message.ack().await.map_err(|e| anyhow::anyhow!(e))?;
        }
        anyhow::bail!("the consumer's messages ended")
    }
}
