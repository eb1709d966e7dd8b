//! Readiness checks for NATS and MongoDB.

use std::time::Duration;

use async_nats::connection::State;
use herald_runtime::health::Check;

use crate::{JetStream, Mongo};

/// Ready while the NATS connection is up.
#[derive(Debug)]
pub struct NatsCheck(pub JetStream);

impl Check for NatsCheck {
    fn name(&self) -> &'static str {
        "nats"
    }

    fn ready(&self) -> bool {
        self.0.client().connection_state() == State::Connected
    }
}

/// Ready while MongoDB answered the last ping or operation.
#[derive(Debug)]
pub struct MongoCheck(pub Mongo);

impl Check for MongoCheck {
    fn name(&self) -> &'static str {
        "mongodb"
    }

    fn ready(&self) -> bool {
        self.0.is_healthy()
    }
}

/// Pings MongoDB every `every` so [`MongoCheck`] follows it.
pub async fn ping_mongo(mongo: Mongo, every: Duration) {
    let mut tick = tokio::time::interval(every);
    let mut was = true;
    loop {
        tick.tick().await;
        let ok = mongo.ping().await;
        if ok != was {
            if ok {
                tracing::info!("mongodb reachable again");
            } else {
                tracing::warn!("mongodb unreachable");
            }
            was = ok;
        }
    }
}
