//! Herald's distributed mode: NATS JetStream sequences, carries and keeps recent events; MongoDB
//! keeps the long history and the idempotency records.
//!
//! - [`options`]: the connection and JetStream options `herald-ingest` and `herald-gateway` share.
//! - [`backends`]: MongoDB and the chosen bus, connected once; the log, history and feed of either mode.
//! - [`envelope`]: events to and from the protobuf bus envelope, topics to and from subjects.
//! - [`stream`]: the `HERALD` stream, created or checked at start-up, and its epoch.
//! - [`jetstream`]: publish (the PubAck sequence is the global sequence), the gateway's one live
//!   feed, and replay reads filtered to a connection's topics.
//! - [`mongo`]: the MongoDB store: events by sequence, a `(topic, seq)` index, retention by prefix,
//!   idempotency records.
//! - [`tiered`]: replay from JetStream while the id is inside its retention, from MongoDB before.
//! - [`log`]: the ingest's commit path: JetStream ack, then MongoDB, then `201`.
//! - [`archiver`]: a durable JetStream consumer that writes every event MongoDB lacks.
//! - [`redis_bus`]: the Redis bus mode: MongoDB sequences and keeps events, Redis Pub/Sub carries
//!   them, gateways fill what Redis loses from MongoDB.
//! - [`health`]: readiness checks for NATS and MongoDB.
//! - [`service`]: the process around either service: options, ops routes, serving and draining.

pub mod archiver;
pub mod backends;
pub mod envelope;
pub mod health;
pub mod jetstream;
pub mod log;
pub mod mongo;
pub mod options;
pub mod redis_bus;
pub mod service;
pub mod stream;
pub mod tiered;

pub use archiver::Archiver;
pub use backends::Backends;
pub use jetstream::JetStream;
pub use log::ClusterLog;
pub use mongo::Mongo;
pub use options::{ClusterConfig, ClusterOptions, NatsAuth, NatsAuthOptions, NatsTls};
pub use tiered::Tiered;

/// The test hooks `HERALD_FAULT` names (comma-separated), with the `fault-injection` feature.
#[cfg(feature = "fault-injection")]
pub(crate) fn fault_hooks() -> Vec<String> {
    std::env::var("HERALD_FAULT")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|hook| !hook.is_empty())
        .map(str::to_owned)
        .collect()
}

use std::sync::Arc;

use herald_telemetry::Metrics;

/// Connects to NATS and MongoDB and makes sure the stream exists: what both services do first.
/// `metrics` counts the live feed's errors and the consumers' pending messages.
pub async fn connect(
    config: &ClusterConfig,
    name: &str,
    metrics: Arc<Metrics>,
) -> anyhow::Result<(JetStream, Mongo)> {
    let mongo = Mongo::connect(config).await?;
    let js = JetStream::connect(config, name, &mongo, metrics).await?;
    Ok((js, mongo))
}
