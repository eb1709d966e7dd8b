//! The ingest's commit path in the distributed mode.
//!
//! 1. An idempotency key already answered (MongoDB's record) gets the first answer, or 422 when
//!    the request differs.
//! 2. JetStream publish. **The PubAck is the commit point**: from then on the event has its
//!    sequence, is replicated by JetStream, reaches every gateway and will be archived.
//! 3. MongoDB insert (idempotent on the sequence), and the idempotency record.
//! 4. `201`, only now, so an acknowledged event can be resumed from either tier at once.
//!
//! A failure after step 2 answers 503: the event exists and will reach MongoDB through the
//! archiver. A retry with the same Idempotency-Key gets the same sequence back from JetStream's
//! duplicate window (or MongoDB's record), so it makes no second event.

use std::sync::Arc;

use async_trait::async_trait;
use herald_core::{Event, NewEvent};
use herald_ingest::EventLog;
use herald_store::{Appended, Idempotency, StoreError};

use crate::{JetStream, Mongo, now_ms};

/// The distributed event log: JetStream, then MongoDB.
#[derive(Debug, Clone)]
pub struct ClusterLog {
    js: JetStream,
    mongo: Mongo,
}

impl ClusterLog {
    /// A log over a stream and a database.
    pub fn new(js: JetStream, mongo: Mongo) -> Self {
        Self { js, mongo }
    }
}

#[async_trait]
impl EventLog for ClusterLog {
    async fn append(
        &self,
        batch: Vec<NewEvent>,
        idempotency: Option<Idempotency>,
    ) -> Result<Appended, StoreError> {
        let this = self.clone();
        // Its own task: a client hanging up cannot stop a publish between the two writes.
        tokio::spawn(async move { this.commit(batch, idempotency).await })
            .await
            .map_err(|e| StoreError::Backend(Box::new(e)))?
    }
}

impl ClusterLog {
    async fn commit(
        &self,
        batch: Vec<NewEvent>,
        idempotency: Option<Idempotency>,
    ) -> Result<Appended, StoreError> {
        let epoch = self.js.epoch();
        let fingerprint = idempotency.as_ref().map_or(0, |i| i.fingerprint);
        if let Some(idem) = &idempotency
            && let Some((seqs, first)) = self.mongo.idempotency(&idem.key).await?
        {
            if first != idem.fingerprint {
                return Err(StoreError::IdempotencyConflict);
            }
            return Ok(Appended {
                epoch,
                seqs,
                events: Vec::new(),
                duplicate: true,
            });
        }
        let time_ms = now_ms();
        let key = idempotency.as_ref().map(|i| i.key.as_str());
        let published = self.js.publish(&batch, key, fingerprint, time_ms).await?;
        fault_point(&published.seqs);
        let events: Vec<Arc<Event>> = batch
            .into_iter()
            .zip(&published.seqs)
            .map(|(e, &seq)| {
                Arc::new(Event {
                    seq,
                    topic: e.topic,
                    event_type: e.event_type,
                    data: e.data,
                    time_ms,
                })
            })
            .collect();
        self.mongo.insert(&events).await?;
        if let Some(idem) = &idempotency {
            self.mongo
                .remember(&idem.key, &published.seqs, idem.fingerprint)
                .await?;
        }
        Ok(Appended {
            epoch,
            seqs: published.seqs,
            events: if published.duplicate {
                Vec::new()
            } else {
                events
            },
            duplicate: published.duplicate,
        })
    }
}

/// With the `fault-injection` feature and `HERALD_FAULT=pause-after-jetstream-ack`, a publish
/// stops for good between the JetStream ack and the MongoDB write (a test then kills the
/// process there). Without the feature this is nothing.
#[cfg(feature = "fault-injection")]
fn fault_point(seqs: &[u64]) {
    if std::env::var("HERALD_FAULT").as_deref() == Ok("pause-after-jetstream-ack") {
        eprintln!("fault: paused after the JetStream ack of {seqs:?}");
        loop {
            std::thread::park();
        }
    }
}

#[cfg(not(feature = "fault-injection"))]
fn fault_point(_: &[u64]) {}
