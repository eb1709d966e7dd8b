//! The backends of a distributed service, connected once: MongoDB, and the bus chosen by
//! `--bus` (JetStream, or Redis Pub/Sub with MongoDB sequencing). Each binary asks it for what
//! it needs — an event log, a history, a live feed — instead of wiring the two modes itself.

use std::{sync::Arc, time::Duration};

use herald_bus::Bus;
use herald_core::Epoch;
use herald_store::{EventLog, History};
use herald_telemetry::Metrics;

use crate::{
    ClusterConfig, ClusterLog, JetStream, Mongo, Tiered,
    redis_bus::{self, BusKind, BusOptions, MongoHistory, RedisBus, RedisLog},
};

/// The connected bus.
#[derive(Debug)]
enum Carrier {
    /// JetStream sequences, carries and keeps recent events.
    JetStream(Box<JetStream>),
    /// MongoDB sequences (in `epoch`), Redis Pub/Sub carries.
    Redis { options: BusOptions, epoch: Epoch },
}

/// MongoDB and the bus, connected.
#[derive(Debug)]
pub struct Backends {
    /// The MongoDB store (both buses).
    pub mongo: Mongo,
    carrier: Carrier,
    metrics: Arc<Metrics>,
}

impl Backends {
    /// Connects MongoDB and the bus `bus` chooses; `name` names this process to NATS.
    pub async fn connect(
        cluster: &ClusterConfig,
        bus: &BusOptions,
        name: &str,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let (mongo, carrier) = match bus.bus {
            BusKind::Jetstream => {
                let (js, mongo) = crate::connect(cluster, name, Arc::clone(&metrics)).await?;
                (mongo, Carrier::JetStream(Box::new(js)))
            }
            BusKind::Redis => {
                let mongo = Mongo::connect(cluster).await?;
                let epoch = redis_bus::prepare(&mongo).await?;
                let options = bus.clone();
                (mongo, Carrier::Redis { options, epoch })
            }
        };
        Ok(Self {
            mongo,
            carrier,
            metrics,
        })
    }

    /// JetStream, when it is the bus.
    pub fn jetstream(&self) -> Option<&JetStream> {
        match &self.carrier {
            Carrier::JetStream(js) => Some(js),
            Carrier::Redis { .. } => None,
        }
    }

    /// What a publish is committed to: JetStream then MongoDB, or MongoDB then Redis.
    pub async fn log(&self) -> anyhow::Result<Arc<dyn EventLog>> {
        Ok(match &self.carrier {
            Carrier::JetStream(js) => {
                Arc::new(ClusterLog::new(JetStream::clone(js), self.mongo.clone()))
            }
            Carrier::Redis { options, epoch } => Arc::new(
                RedisLog::connect(
                    options,
                    self.mongo.clone(),
                    *epoch,
                    Arc::clone(&self.metrics),
                )
                .await?,
            ),
        })
    }

    /// Where replays read: JetStream then MongoDB, or MongoDB alone.
    pub fn history(&self) -> Arc<dyn History> {
        let metrics = Arc::clone(&self.metrics);
        match &self.carrier {
            Carrier::JetStream(js) => Arc::new(Tiered::new(
                JetStream::clone(js),
                self.mongo.clone(),
                metrics,
            )),
            Carrier::Redis { epoch, .. } => {
                Arc::new(MongoHistory::new(self.mongo.clone(), *epoch, metrics))
            }
        }
    }

    /// The live feed's bus; on Redis, MongoDB's head is polled every `poll` for events whose
    /// message was lost.
    pub fn feed(&self, poll: Duration) -> anyhow::Result<Box<dyn Bus>> {
        Ok(match &self.carrier {
            Carrier::JetStream(js) => Box::new(JetStream::clone(js)),
            Carrier::Redis { options, epoch } => Box::new(RedisBus::new(
                options,
                self.mongo.clone(),
                *epoch,
                poll,
                Arc::clone(&self.metrics),
            )?),
        })
    }
}
