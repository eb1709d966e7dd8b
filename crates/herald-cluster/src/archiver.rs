//! The archiver: a durable JetStream consumer (`herald-archiver`) that writes every event to
//! MongoDB, acknowledging only what MongoDB has. Ingest writes MongoDB itself before answering,
//! so the archiver mostly finds events already there (the insert is idempotent on the sequence);
//! it is what repairs the crash of an ingest between its two writes. Several ingests share the
//! one durable consumer, so each event is archived by one of them.

use std::{sync::Arc, time::Duration};

use async_nats::jetstream::{
    self,
    consumer::{AckPolicy, DeliverPolicy, pull},
};
use futures_util::StreamExt;
use herald_core::Event;
use herald_telemetry::Metrics;
use herald_telemetry::{Consumer, StoreOp};

use crate::{
    Mongo,
    envelope::{ALL_SUBJECTS, decode},
    jetstream::traceparent,
};

/// The durable consumer's name.
pub const CONSUMER: &str = "herald-archiver";
/// The most events written to MongoDB at once.
const BATCH: usize = 512;
/// Wait after a failure.
const BACKOFF: Duration = Duration::from_secs(1);

/// Runs the archiver.
#[derive(Debug)]
pub struct Archiver {
    js: jetstream::Context,
    stream: String,
    mongo: Mongo,
    metrics: Arc<Metrics>,
}

impl Archiver {
    /// An archiver for `stream` into `mongo`.
    pub fn new(js: &crate::JetStream, stream: &str, mongo: Mongo, metrics: Arc<Metrics>) -> Self {
        Self {
            js: jetstream::new(js.client().clone()),
            stream: stream.to_owned(),
            mongo,
            metrics,
        }
    }

    /// Archives until the task is dropped.
    pub async fn run(self) {
        loop {
            if let Err(e) = self.archive().await {
                tracing::warn!(error = %e, "archiver stopped; restarting");
            }
            tokio::time::sleep(BACKOFF).await;
        }
    }

    async fn archive(&self) -> anyhow::Result<()> {
        let stream = self.js.get_stream_no_info(&self.stream).await?;
        let consumer = stream
            .get_or_create_consumer(
                CONSUMER,
                pull::Config {
                    durable_name: Some(CONSUMER.to_owned()),
                    description: Some("Herald: writes every event to MongoDB".to_owned()),
                    deliver_policy: DeliverPolicy::All,
                    ack_policy: AckPolicy::All,
                    ack_wait: Duration::from_secs(30),
                    filter_subject: ALL_SUBJECTS.to_owned(),
                    max_ack_pending: 20_000,
                    ..Default::default()
                },
            )
            .await?;
        // A continuous pull; whatever has arrived is written at once, up to BATCH at a time, so
        // the archiver trails JetStream by one MongoDB write, not by a batch timeout.
        let pending = self.metrics.consumer_pending(Consumer::Archiver);
        let mut chunks = consumer
            .stream()
            .max_messages_per_batch(BATCH)
            .messages()
            .await?
            .ready_chunks(BATCH);
        while let Some(chunk) = chunks.next().await {
            let mut events: Vec<Arc<Event>> = Vec::with_capacity(chunk.len());
            let mut last = None;
            for message in chunk {
                let message = message.map_err(|e| anyhow::anyhow!(e))?;
                let Ok(info) = message.info() else { continue };
                let seq = info.stream_sequence;
                pending.set(i64::try_from(info.pending).unwrap_or(i64::MAX));
                match decode(&message.payload, seq, traceparent(message.headers.as_ref())) {
                    Ok(d) => events.push(d.event),
                    Err(e) => {
                        tracing::warn!(seq, error = %e, "not archiving a message that is not a Herald event")
                    }
                }
                last = Some(message);
            }
            let Some(last) = last else { continue };
            if let Err(e) = self.mongo.insert(&events).await {
                self.metrics.store_error(StoreOp::Archive);
                return Err(e.into());
            }
            self.metrics.events_archived.inc_by(events.len() as u64);
            // AckPolicy::All: this acknowledges everything up to it.
            last.ack().await.map_err(|e| anyhow::anyhow!(e))?;
        }
        anyhow::bail!("the archiver's consumer ended")
    }
}
