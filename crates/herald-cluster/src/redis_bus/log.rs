//! The ingest's commit path in the Redis bus mode.

use super::*;
use herald_telemetry::BusOp;

/// How long the ingest waits for Redis to take a PUBLISH before answering without it (a Redis
/// that hangs must not hold publishes; the gateways read the events from MongoDB).
const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(1);

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
        let client = options.redis.client()?;
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
                self.metrics.bus_error(BusOp::RedisPublish);
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
