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
//!
//! - [`options`]: `--bus`, `--redis-url`, `--redis-channel`;
//! - [`wire`]: an event's form on the channel;
//! - [`log`]: [`RedisLog`], the ingest's commit path;
//! - [`feed`]: [`RedisBus`], the gateway's live feed (channel, gap reads, poll);
//! - [`history`]: [`MongoHistory`], replay from MongoDB alone.

mod feed;
mod history;
mod log;
mod options;
mod wire;

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
use herald_config::Secret;
use herald_core::{Bounds, Epoch, Event, EventType, Topic, TopicFilter, event::now_ms};
use herald_store::EventLog;
use herald_store::{Appended, History, Idempotency, Page, ReadQuery, StoreError};
use herald_telemetry::Metrics;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::{Mongo, mongo::Sequenced};

pub use feed::RedisBus;
pub use history::MongoHistory;
pub use log::RedisLog;
pub use options::{BusKind, BusOptions, DEFAULT_CHANNEL, RedisOptions};
pub use wire::{decode, encode};

/// Records MongoDB's epoch if it has none yet (a new deployment), raises the sequence counter to
/// MongoDB's last event, and answers the epoch.
pub async fn prepare(mongo: &Mongo) -> anyhow::Result<Epoch> {
    let epoch = mongo.adopt_epoch(Epoch(fastrand::u32(1..))).await?;
    mongo.raise_counter(mongo.head().await?).await?;
    Ok(epoch)
}
