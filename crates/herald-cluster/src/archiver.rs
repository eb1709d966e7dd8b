//! The archiver: a durable JetStream consumer (`herald-archiver`) that writes every event to
//! MongoDB, acknowledging only what MongoDB has: each message explicitly, once its insert
//! succeeded; a failed insert's messages are NAKed and come back. (With `AckPolicy::All`, the
//! ack of a chunk's last message also acknowledged every lower sequence — a failed chunk's, and
//! those another ingest's archiver still held — which then never reached MongoDB.) Ingest writes MongoDB itself before answering,
//! so the archiver mostly finds events already there (the insert is idempotent on the sequence);
//! it is what repairs the crash of an ingest between its two writes. Several ingests share the
//! one durable consumer, so each event is archived by one of them.

use std::{collections::HashSet, sync::Arc, time::Duration};

use async_nats::jetstream::{
    self, AckKind,
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
/// How long each pull request of the archiver waits for messages.
const PULL_EXPIRES: Duration = Duration::from_secs(2);
/// How long JetStream waits for an archiver's ack before it hands the message to another: what
/// an archiver stopped mid-chunk (its process killed) holds comes back after this. Until then
/// new keyed publishes wait for it ([`crate::JetStream::archived`]) and answer 503 past the
/// backend timeout; well above the time a chunk's MongoDB write takes.
const ACK_WAIT: Duration = Duration::from_secs(10);

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
        let config = pull::Config {
            durable_name: Some(CONSUMER.to_owned()),
            description: Some("Herald: writes every event to MongoDB".to_owned()),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            ack_wait: ACK_WAIT,
            filter_subject: ALL_SUBJECTS.to_owned(),
            max_ack_pending: 20_000,
            ..Default::default()
        };
        let mut consumer = stream
            .get_or_create_consumer(CONSUMER, config.clone())
            .await?;
        if consumer.cached_info().config.ack_policy != AckPolicy::Explicit {
            // Made by an earlier Herald with AckPolicy::All, whose acks may cover events MongoDB
            // never got: made again, it reads the stream from the start (inserts are idempotent).
            tracing::info!("recreating the archiver's consumer with explicit acks");
            stream.delete_consumer(CONSUMER).await?;
            consumer = stream.get_or_create_consumer(CONSUMER, config).await?;
        } else if consumer.cached_info().config.ack_wait != ACK_WAIT {
            // Made by an earlier Herald with a longer ack wait: updated in place.
            consumer = stream.update_consumer(config).await?;
        }
        // A continuous pull; whatever has arrived is written at once, up to BATCH at a time, so
        // the archiver trails JetStream by one MongoDB write, not by a batch timeout.
        let pending = self.metrics.consumer_pending(Consumer::Archiver);
        // Pull requests that expire every 2 s, with a heartbeat each second: a consumer that is
        // gone (NATS lost the stream, which was made again) is noticed within seconds, not
        // after the default 15 s heartbeat, and made again on the new stream.
        let mut chunks = consumer
            .stream()
            .max_messages_per_batch(BATCH)
            .expires(PULL_EXPIRES)
            .heartbeat(PULL_EXPIRES / 2)
            .messages()
            .await?
            .ready_chunks(BATCH);
        while let Some(chunk) = chunks.next().await {
            let mut events: Vec<Arc<Event>> = Vec::with_capacity(chunk.len());
            let mut answers = Vec::new();
            let mut messages = Vec::with_capacity(chunk.len());
            for message in chunk {
                let message = message.map_err(|e| anyhow::anyhow!(e))?;
                let Ok(info) = message.info() else { continue };
                let seq = info.stream_sequence;
                pending.set(i64::try_from(info.pending).unwrap_or(i64::MAX));
                match decode(&message.payload, seq, traceparent(message.headers.as_ref())) {
                    Ok(d) => {
                        if let Some((key, seqs)) = d.answer {
                            answers.push((key, seqs, d.fingerprint, d.event.time_ms));
                        }
                        events.push(d.event);
                    }
                    Err(e) => {
                        tracing::warn!(seq, error = %e, "not archiving a message that is not a Herald event")
                    }
                }
                messages.push(message);
            }
            if let Err(e) = self.insert(&events, &answers).await {
                self.metrics.store_error(StoreOp::Archive);
                // Back soon, to this archiver or another ingest's.
                for message in &messages {
                    let _ = message.ack_with(AckKind::Nak(Some(BACKOFF))).await;
                }
                return Err(e.into());
            }
            self.metrics.events_archived.inc_by(events.len() as u64);
            for message in &messages {
                message.ack().await.map_err(|e| anyhow::anyhow!(e))?;
            }
        }
        anyhow::bail!("the archiver's consumer ended")
    }
}

impl Archiver {
    /// Writes the events, then the answers of their idempotency keys (first write wins): the
    /// ingest records a key only after its own MongoDB write, which a failure or a crash between
    /// the JetStream ack and MongoDB skips, and JetStream's duplicate window is short.
    async fn insert(
        &self,
        events: &[Arc<Event>],
        answers: &[(String, Vec<u64>, u64, u64)],
    ) -> Result<(), herald_store::StoreError> {
        fault_point(events).await?;
        self.mongo.insert(events).await?;
        // A batch's events all carry its key: record it once.
        let mut recorded = HashSet::new();
        for (key, seqs, fingerprint, time_ms) in answers {
            if recorded.insert(key.as_str()) {
                self.mongo
                    .remember_published(key, seqs, *fingerprint, *time_ms)
                    .await?;
            }
        }
        Ok(())
    }
}

/// With the `fault-injection` feature: `HERALD_FAULT=archiver-fails-once:SEQ` fails the first
/// insert of a chunk holding sequence SEQ, as a MongoDB outage would, and `archiver-fails:P`
/// fails each chunk's insert with probability P (0 to 1); `archiver-lags:MS` waits up to MS
/// milliseconds (uniformly drawn) before each chunk's insert, as a slow MongoDB does, so the
/// newest events are often in JetStream only; `archiver-stalls` makes the archiver hold what it
/// was delivered for good, never writing or acknowledging it (as a process stopped mid-chunk
/// does until JetStream's ack wait runs out). Never in release builds.
#[cfg(feature = "fault-injection")]
async fn fault_point(events: &[Arc<Event>]) -> Result<(), herald_store::StoreError> {
    use std::sync::atomic::{AtomicBool, Ordering};
    static FIRED: AtomicBool = AtomicBool::new(false);
    for hook in crate::fault_hooks() {
        if hook == "archiver-stalls" {
            eprintln!("fault: the archiver stalls");
            std::future::pending::<()>().await;
        }
        match hook.split_once(':') {
            Some(("archiver-lags", ms)) => {
                let ms = fastrand::u64(0..=ms.parse().unwrap_or(0));
                tokio::time::sleep(Duration::from_millis(ms)).await;
                continue;
            }
            Some(("archiver-fails", p)) if fastrand::f64() < p.parse::<f64>().unwrap_or(0.0) => {
                let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
                eprintln!("fault: the archiver's insert of {seqs:?} fails");
                return Err(herald_store::StoreError::Unavailable(
                    "fault injection: the archiver's insert fails".into(),
                ));
            }
            _ => {}
        }
        let Some(seq) = hook
            .strip_prefix("archiver-fails-once:")
            .and_then(|s| s.parse::<u64>().ok())
        else {
            continue;
        };
        if events.iter().any(|e| e.seq == seq) && !FIRED.swap(true, Ordering::SeqCst) {
            eprintln!("fault: the archiver's insert of [{seq}] fails");
            return Err(herald_store::StoreError::Unavailable(
                "fault injection: the archiver's insert fails".into(),
            ));
        }
    }
    Ok(())
}

#[cfg(not(feature = "fault-injection"))]
async fn fault_point(_: &[Arc<Event>]) -> Result<(), herald_store::StoreError> {
    Ok(())
}
