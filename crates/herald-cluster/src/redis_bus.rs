//! The Redis bus mode (`--bus redis`): the article's topology, with Herald's guarantees.
//!
//! The ingest commits a publish to MongoDB, which also sequences it (a counter incremented in the
//! same transaction as the insert, [`Mongo::append_sequenced`]), then announces it on one Redis
//! Pub/Sub channel. Gateways listen on that channel and replay from MongoDB. No NATS.
//!
//! Redis Pub/Sub is at-most-once: a message is lost when a gateway's subscription is down or
//! slow, and two ingests' messages can arrive in either order. Neither reaches a browser:
//! - the gateway's hub delivers in sequence order only, waits `--gap-timeout` for a missing
//!   sequence and then reads it from MongoDB (the transaction makes sequence `n` visible only
//!   after every sequence before it, so what the hub reads there is final);
//! - a lost message at the tail (nothing follows it to reveal the gap) is found by
//!   [`RedisBus`]'s poll of MongoDB's last sequence every `--redis-poll`.
//!
//! A Redis outage therefore costs latency (events arrive through the poll), never events.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use futures_util::StreamExt;
use herald_bus::{Bus, BusError, Feed};
use herald_core::{Bounds, Epoch, Event, EventType, Topic, TopicFilter, event::now_ms};
use herald_ingest::EventLog;
use herald_store::{Appended, History, Idempotency, Page, ReadQuery, StoreError};
use herald_telemetry::Metrics;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::{Mongo, mongo::Sequenced};

/// The channel events travel on by default.
pub const DEFAULT_CHANNEL: &str = "herald:events";
/// Wait between attempts to re-open the subscription.
const RESUBSCRIBE: Duration = Duration::from_millis(500);
/// The most events the poll reads from MongoDB at once.
const POLL_PAGE: usize = 1024;
/// How long the ingest waits for Redis to take a PUBLISH before answering without it (a Redis
/// that hangs must not hold publishes; the gateways read the events from MongoDB).
const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(1);

/// Which bus carries events between ingests and gateways.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BusKind {
    /// NATS JetStream sequences, carries and keeps recent events; MongoDB keeps the history.
    Jetstream,
    /// MongoDB sequences and keeps events; Redis Pub/Sub carries them (no NATS).
    Redis,
}

/// The bus options `herald-ingest` and `herald-gateway` share.
#[derive(Debug, Clone, clap::Args)]
pub struct BusOptions {
    /// The bus: `jetstream` (NATS JetStream, the default) or `redis` (MongoDB sequences and keeps
    /// events, Redis Pub/Sub carries them, gateways fill what Redis loses from MongoDB; no NATS).
    #[arg(long, env = "HERALD_BUS", value_enum, default_value = "jetstream")]
    pub bus: BusKind,
    /// Redis URL (`--bus redis`).
    #[arg(
        long,
        env = "HERALD_REDIS_URL",
        value_name = "URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,
    /// The Redis Pub/Sub channel events travel on (`--bus redis`).
    #[arg(
        long,
        env = "HERALD_REDIS_CHANNEL",
        value_name = "NAME",
        default_value = DEFAULT_CHANNEL
    )]
    pub redis_channel: String,
}

impl BusOptions {
    /// Checks the Redis options when the Redis bus is chosen.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.bus == BusKind::Redis {
            redis::Client::open(self.redis_url.as_str())
                .map_err(|e| anyhow::anyhow!("--redis-url: {e}"))?;
            if self.redis_channel.is_empty() {
                anyhow::bail!("--redis-channel must not be empty");
            }
        }
        Ok(())
    }
}

/// One event on the channel. `data` is the publisher's JSON, unchanged.
#[derive(Debug, Serialize, Deserialize)]
struct Message<'a> {
    epoch: u32,
    seq: u64,
    topic: &'a str,
    #[serde(rename = "type")]
    event_type: &'a str,
    #[serde(borrow)]
    data: &'a RawValue,
    ts: u64,
}

/// The wire form of an event on the channel.
pub fn encode(event: &Event, epoch: Epoch) -> String {
    serde_json::to_string(&Message {
        epoch: epoch.0,
        seq: event.seq,
        topic: event.topic.as_str(),
        event_type: event.event_type.as_str(),
        data: &event.data,
        ts: event.time_ms,
    })
    .expect("an event serializes")
}

/// An event read from the channel, with the epoch it was published in.
pub fn decode(payload: &[u8]) -> anyhow::Result<(Epoch, Event)> {
    let m: Message<'_> = serde_json::from_slice(payload)?;
    Ok((
        Epoch(m.epoch),
        Event {
            seq: m.seq,
            topic: Topic::new(m.topic)?,
            event_type: EventType::new(m.event_type)?,
            data: m.data.to_owned(),
            time_ms: m.ts,
            trace: None,
        },
    ))
}

/// Records MongoDB's epoch if it has none yet (a new deployment), raises the sequence counter to
/// MongoDB's last event, and answers the epoch.
pub async fn prepare(mongo: &Mongo) -> anyhow::Result<Epoch> {
    let epoch = mongo.adopt_epoch(Epoch(fastrand::u32(1..))).await?;
    mongo.raise_counter(mongo.head().await?).await?;
    Ok(epoch)
}

/// The ingest's commit path in the Redis bus mode: MongoDB (sequence and insert, one
/// transaction), then one Redis PUBLISH per event, then `201`.
///
/// The MongoDB commit is the commit point. A PUBLISH that fails is logged and counted but does
/// not fail the request: the event is durable, and every gateway reads it from MongoDB (a gap
/// fill, or the poll when nothing follows it).
#[derive(Debug, Clone)]
pub struct RedisLog {
    mongo: Mongo,
    redis: ConnectionManager,
    channel: Arc<str>,
    epoch: Epoch,
    metrics: Arc<Metrics>,
    reachable: Arc<AtomicBool>,
}

impl RedisLog {
    /// Connects to Redis. `epoch` comes from [`prepare`].
    pub async fn connect(
        options: &BusOptions,
        mongo: Mongo,
        epoch: Epoch,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let client = redis::Client::open(options.redis_url.as_str())?;
        let redis = ConnectionManager::new(client).await?;
        Ok(Self {
            mongo,
            redis,
            channel: options.redis_channel.as_str().into(),
            epoch,
            metrics,
            reachable: Arc::new(AtomicBool::new(true)),
        })
    }

    /// The deployment's epoch.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    async fn commit(
        &self,
        batch: Vec<herald_core::NewEvent>,
        idempotency: Option<Idempotency>,
    ) -> Result<Appended, StoreError> {
        let key = idempotency
            .as_ref()
            .map(|i| (i.key.as_str(), i.fingerprint));
        match self
            .mongo
            .append_sequenced(&batch, now_ms(), None, key)
            .instrument(self.mongo.span("transaction", "events"))
            .await?
        {
            Sequenced::Duplicate(seqs) => Ok(Appended {
                epoch: self.epoch,
                seqs,
                events: Vec::new(),
                duplicate: true,
            }),
            Sequenced::Stored(events) => {
                self.announce(&events).await;
                Ok(Appended {
                    epoch: self.epoch,
                    seqs: events.iter().map(|e| e.seq).collect(),
                    events,
                    duplicate: false,
                })
            }
        }
    }

    /// Publishes stored events on the channel, in one round trip.
    async fn announce(&self, events: &[Arc<Event>]) {
        let mut pipe = redis::pipe();
        for event in events {
            pipe.publish(&*self.channel, encode(event, self.epoch))
                .ignore();
        }
        let mut redis = self.redis.clone();
        let published = tokio::time::timeout(ANNOUNCE_TIMEOUT, pipe.query_async::<()>(&mut redis))
            .await
            .unwrap_or_else(|_| {
                Err(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "no answer from redis",
                )))
            });
        match published {
            Ok(()) => {
                if !self.reachable.swap(true, Ordering::AcqRel) {
                    tracing::info!("redis reachable again");
                }
            }
            Err(e) => {
                self.metrics.bus_error("redis_publish");
                if self.reachable.swap(false, Ordering::AcqRel) {
                    tracing::warn!(error = %e, "publishing on redis failed; gateways will read the events from mongodb");
                }
            }
        }
    }
}

#[async_trait]
impl EventLog for RedisLog {
    async fn append(
        &self,
        batch: Vec<herald_core::NewEvent>,
        idempotency: Option<Idempotency>,
    ) -> Result<Appended, StoreError> {
        let this = self.clone();
        crate::log::detached(async move { this.commit(batch, idempotency).await }).await
    }
}

/// The gateway's feed in the Redis bus mode: the channel's messages, plus what the poll finds in
/// MongoDB beyond the last message seen.
#[derive(Debug, Clone)]
pub struct RedisBus {
    client: redis::Client,
    channel: Arc<str>,
    mongo: Mongo,
    epoch: Epoch,
    poll: Duration,
    subscribed: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
}

impl RedisBus {
    /// A bus on `options`' channel; `poll` is how often MongoDB's last sequence is checked.
    pub fn new(
        options: &BusOptions,
        mongo: Mongo,
        epoch: Epoch,
        poll: Duration,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            client: redis::Client::open(options.redis_url.as_str())?,
            channel: options.redis_channel.as_str().into(),
            mongo,
            epoch,
            poll,
            subscribed: Arc::new(AtomicBool::new(false)),
            metrics,
        })
    }

    /// Whether the subscription is up now (a gateway without it still delivers, through the
    /// poll, only later).
    pub fn subscribed(&self) -> bool {
        self.subscribed.load(Ordering::Acquire)
    }

    async fn open(&self) -> redis::RedisResult<redis::aio::PubSubStream> {
        let mut pubsub = self.client.get_async_pubsub().await?;
        pubsub.subscribe(&*self.channel).await?;
        Ok(pubsub.into_on_message())
    }
}

#[async_trait]
impl Bus for RedisBus {
    async fn subscribe(&self) -> Result<Feed, BusError> {
        // Subscribed before the head is read: an event is on the channel or at most `head`.
        let messages = self
            .open()
            .await
            .map_err(|e| BusError::Backend(Box::new(e)))?;
        self.subscribed.store(true, Ordering::Release);
        let head = self
            .mongo
            .head()
            .await
            .map_err(|e| BusError::Backend(Box::new(e)))?;
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(self.clone().feed(messages, head, tx));
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}

impl RedisBus {
    /// Forwards the channel's messages and the poll's finds until the feed is dropped.
    async fn feed(
        self,
        messages: redis::aio::PubSubStream,
        head: u64,
        tx: mpsc::Sender<Arc<Event>>,
    ) {
        let mut messages = Some(messages);
        // The highest sequence forwarded, and MongoDB's head at the previous poll.
        let (mut last, mut polled) = (head, head);
        let mut tick = tokio::time::interval(self.poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let faults = Faults::from_env();
        loop {
            let step = match messages.as_mut() {
                Some(stream) => tokio::select! {
                    message = stream.next() => Step::Message(message),
                    _ = tick.tick() => Step::Poll,
                },
                None => tokio::select! {
                    () = tokio::time::sleep(RESUBSCRIBE) => Step::Resubscribe,
                    _ = tick.tick() => Step::Poll,
                },
            };
            match step {
                Step::Message(Some(message)) => {
                    if faults.drop_message() {
                        continue;
                    }
                    match decode(message.get_payload_bytes()) {
                        Ok((epoch, event)) if epoch == self.epoch => {
                            last = last.max(event.seq);
                            if tx.send(Arc::new(event)).await.is_err() {
                                return;
                            }
                        }
                        Ok((epoch, event)) => {
                            tracing::warn!(%epoch, seq = event.seq, ours = %self.epoch, "ignoring an event of another epoch on the channel");
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "ignoring a message that is not a Herald event");
                        }
                    }
                }
                Step::Message(None) => {
                    tracing::warn!("the redis subscription ended; resubscribing");
                    self.subscribed.store(false, Ordering::Release);
                    messages = None;
                }
                Step::Resubscribe => match self.open().await {
                    Ok(stream) => {
                        tracing::info!("redis subscription restored");
                        self.subscribed.store(true, Ordering::Release);
                        messages = Some(stream);
                    }
                    Err(e) => tracing::debug!(error = %e, "resubscribing to redis failed"),
                },
                Step::Poll => {
                    // What MongoDB held one poll ago and no message brought since: its message
                    // was lost (or never sent). Read it. A message still on its way is then a
                    // duplicate, which the hub drops.
                    if polled > last {
                        match self.read_range(last, polled, &tx).await {
                            Ok(true) => last = polled,
                            Ok(false) => return,
                            Err(e) => {
                                tracing::warn!(error = %e, "reading missed events from mongodb failed")
                            }
                        }
                    }
                    match self.mongo.head().await {
                        Ok(head) => polled = head,
                        Err(e) => tracing::debug!(error = %e, "reading mongodb's head failed"),
                    }
                }
            }
        }
    }

    /// Forwards the events in `(after, upper]`; false when the feed was dropped.
    async fn read_range(
        &self,
        mut after: u64,
        upper: u64,
        tx: &mpsc::Sender<Arc<Event>>,
    ) -> Result<bool, StoreError> {
        let all = TopicFilter::parse([">"]).expect("`>` is a valid pattern");
        while after < upper {
            let events = self.mongo.read(&all, after, upper, POLL_PAGE).await?;
            let full = events.len() >= POLL_PAGE;
            self.metrics.redis_polled.inc_by(events.len() as u64);
            for event in events {
                after = event.seq;
                if tx.send(event).await.is_err() {
                    return Ok(false);
                }
            }
            if !full {
                break;
            }
        }
        Ok(true)
    }
}

enum Step {
    Message(Option<redis::Msg>),
    Resubscribe,
    Poll,
}

/// The test hook: with the `fault-injection` feature, `HERALD_FAULT=drop-redis:P` drops each
/// message the gateway receives with probability P (0 to 1), as a congested Pub/Sub would.
#[derive(Debug, Clone, Copy)]
struct Faults {
    #[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
    drop: f64,
}

impl Faults {
    #[cfg(feature = "fault-injection")]
    fn from_env() -> Self {
        let drop = std::env::var("HERALD_FAULT")
            .ok()
            .and_then(|f| f.strip_prefix("drop-redis:")?.parse().ok())
            .unwrap_or(0.0);
        if drop > 0.0 {
            eprintln!("fault: dropping {drop} of the redis messages");
        }
        Self { drop }
    }

    #[cfg(not(feature = "fault-injection"))]
    fn from_env() -> Self {
        Self { drop: 0.0 }
    }

    fn drop_message(self) -> bool {
        self.drop > 0.0 && fastrand::f64() < self.drop
    }
}

/// The gateway's history in the Redis bus mode: MongoDB alone.
#[derive(Debug, Clone)]
pub struct MongoHistory {
    mongo: Mongo,
    epoch: Epoch,
    metrics: Arc<Metrics>,
}

impl MongoHistory {
    /// Reads `mongo`, whose events belong to `epoch`.
    pub fn new(mongo: Mongo, epoch: Epoch, metrics: Arc<Metrics>) -> Self {
        Self {
            mongo,
            epoch,
            metrics,
        }
    }
}

#[async_trait]
impl History for MongoHistory {
    async fn read(&self, query: ReadQuery) -> Result<Page, StoreError> {
        let head = self.mongo.head().await?;
        if query.after >= head {
            return Ok(Page {
                events: Vec::new(),
                next_after: query.after,
                end: true,
            });
        }
        let page = self.mongo.page(&query, head, head).await?;
        self.metrics
            .replay_read("mongodb", page.events.len() as u64);
        Ok(page)
    }

    async fn latest(&self, topic: &Topic, limit: usize) -> Result<Vec<Arc<Event>>, StoreError> {
        let head = self.mongo.head().await?;
        self.mongo.latest(topic, limit, head).await
    }

    async fn bounds(&self) -> Result<Bounds, StoreError> {
        let head = self.mongo.head().await?;
        Ok(Bounds {
            epoch: self.epoch,
            earliest: self.mongo.earliest().await?.unwrap_or(head + 1),
            head,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_survives_the_channel() {
        let event = Event {
            seq: 42,
            topic: Topic::new("scores.home").unwrap(),
            event_type: EventType::new("goal").unwrap(),
            data: RawValue::from_string(r#"{"a": [1, "x\ny"]}"#.into()).unwrap(),
            time_ms: 1234,
            trace: None,
        };
        let wire = encode(&event, Epoch(7));
        let (epoch, back) = decode(wire.as_bytes()).unwrap();
        assert_eq!(epoch, Epoch(7));
        assert_eq!(back.seq, 42);
        assert_eq!(back.topic.as_str(), "scores.home");
        assert_eq!(back.event_type.as_str(), "goal");
        assert_eq!(back.data.get(), r#"{"a": [1, "x\ny"]}"#);
        assert_eq!(back.time_ms, 1234);
        assert!(decode(br#"{"seq":1}"#).is_err());
        assert!(decode(b"plain text").is_err());
    }
}
