//! The ingest's commit path in the distributed mode.
//!
//! 1. An idempotency key already answered (MongoDB's record, read again once the archiver has
//!    caught up with the stream when the first read finds none) gets the first answer, or 422
//!    when the request differs.
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
use herald_core::{Event, EventId, NewEvent};
use herald_proto::Origin;
use herald_store::EventLog;
use herald_store::{Appended, Idempotency, StoreError};
use herald_telemetry::{otel, traces_enabled};
use tracing::{Instrument, Span, field::Empty};

use herald_core::event::now_ms;

use crate::{JetStream, Mongo, envelope::subject};

/// What MongoDB and the archiver say of an idempotency key before its publish.
enum Answer {
    /// Published before: its sequences and request fingerprint.
    First((Vec<u64>, u64)),
    /// New, or (a single event) JetStream remembers it.
    New,
    /// The same as `New`, vouched for by an earlier look at the archiver
    /// ([`JetStream::archived_recently`]) rather than a request now.
    Remembered,
}

/// The distributed event log: JetStream, then MongoDB.
#[derive(Debug, Clone)]
pub struct ClusterLog {
    js: JetStream,
    mongo: Mongo,
    origin: Origin,
}

impl ClusterLog {
    /// A log over a stream and a database, for the HTTP publish API.
    pub fn new(js: JetStream, mongo: Mongo) -> Self {
        Self {
            js,
            mongo,
            origin: Origin::HttpUnspecified,
        }
    }

    /// The same log, marking its events as entered from `origin` (the Redis bridge's), so that
    /// no bridge sends them back where they came from.
    pub fn with_origin(self, origin: Origin) -> Self {
        Self { origin, ..self }
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
        detached(async move { this.commit(batch, idempotency).await }).await
    }
}

/// Runs a commit in its own task, so a client hanging up cannot stop it between its writes (the
/// JetStream publish and MongoDB; MongoDB and the Redis announce). The task carries the request's
/// span, so its spans are the request's children.
pub(crate) async fn detached(
    commit: impl Future<Output = Result<Appended, StoreError>> + Send + 'static,
) -> Result<Appended, StoreError> {
    tokio::spawn(commit.in_current_span())
        .await
        .map_err(|e| StoreError::Backend(Box::new(e)))?
}

impl ClusterLog {
    /// The first answer to `key` (its sequences and request fingerprint), if it was published
    /// before. MongoDB's record is certain once the archiver has caught up far enough
    /// ([`JetStream::archived`]; `single`: a one-event publish, which JetStream's duplicate
    /// window also covers): the ingest records a key only after its own MongoDB write, which a
    /// failure or a crash after the JetStream ack skips, and then only the archiver records it.
    /// A new key is [`Answer::Remembered`] when a recent look at the archiver still vouches for
    /// it, with no request.
    async fn first_answer(&self, key: &str, single: bool) -> Result<Answer, StoreError> {
        if let Some(first) = self.mongo.idempotency(key).await? {
            return Ok(Answer::First(first));
        }
        // A single event whose key MongoDB did not know while every message the archiver had
        // not written was in JetStream's duplicate window (checked now, after the read): new, or
        // JetStream answers it.
        if single && self.js.archived_recently() {
            return Ok(Answer::Remembered);
        }
        self.js.archived(single).await?;
        Ok(match self.mongo.idempotency(key).await? {
            Some(first) => Answer::First(first),
            None => Answer::New,
        })
    }

    async fn commit(
        &self,
        batch: Vec<NewEvent>,
        idempotency: Option<Idempotency>,
    ) -> Result<Appended, StoreError> {
        let epoch = self.js.epoch();
        let answer = match &idempotency {
            Some(idem) => self.first_answer(&idem.key, batch.len() == 1).await?,
            None => Answer::New,
        };
        if let (Some(idem), Answer::First((seqs, stored))) = (&idempotency, &answer) {
            if *stored != idem.fingerprint {
                return Err(StoreError::IdempotencyConflict);
            }
            return Ok(Appended {
                epoch,
                seqs: seqs.clone(),
                events: Vec::new(),
                duplicate: true,
            });
        }
        let time_ms = now_ms();
        let key = idempotency
            .as_ref()
            .map(|i| (i.key.as_str(), i.fingerprint));
        let span = publish_span(&batch);
        // The producer span's context travels in the message headers and is stored with the
        // events: the gateways' delivery spans are its children.
        let trace = otel::trace_of(&span);
        let published = self
            .js
            // Not a stream NATS lost, when the key was vouched for from memory: the look at the
            // archiver that would have found it missing (and answered 503 until a gateway made
            // it again, knowing every id it read) did not happen. An ingest that made it would
            // know only its own ids, and could hand out again one that only JetStream held.
            .publish(
                &batch,
                key,
                time_ms,
                trace,
                self.origin,
                !matches!(answer, Answer::Remembered),
            )
            .instrument(span.clone())
            .await?;
        if let Some(&first) = published.seqs.first() {
            span.record(
                "messaging.message.id",
                EventId::new(epoch, first).to_string(),
            );
        }
        drop(span);
        fault_point(&published.seqs)?;
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
                    trace,
                })
            })
            .collect();
        self.mongo
            .insert(&events)
            .instrument(self.mongo.span("insert", "events"))
            .await?;
        if let Some(idem) = &idempotency {
            self.mongo
                .remember(&idem.key, &published.seqs, idem.fingerprint)
                .instrument(self.mongo.span("update", "idempotency"))
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

/// The PRODUCER span of a JetStream publish, by the messaging conventions (when traces are
/// exported). A batch over several topics names the stream's subject root.
fn publish_span(batch: &[NewEvent]) -> Span {
    if !traces_enabled() {
        return Span::none();
    }
    let destination = match batch {
        [first, rest @ ..] if rest.iter().all(|e| e.topic == first.topic) => subject(&first.topic),
        _ => "herald.events".to_owned(),
    };
    tracing::info_span!(
        "publish",
        otel.name = %format_args!("send {destination}"),
        otel.kind = "producer",
        messaging.system = "nats",
        messaging.operation.type = "send",
        messaging.operation.name = "publish",
        messaging.destination.name = destination.as_str(),
        messaging.batch.message_count = batch.len(),
        messaging.message.id = Empty,
    )
}

/// With the `fault-injection` feature: `HERALD_FAULT=pause-after-jetstream-ack` stops a publish
/// for good between the JetStream ack and the MongoDB write (a test then kills the process
/// there); `HERALD_FAULT=mongodb-fails-after-jetstream-ack` fails that MongoDB write once, as a
/// MongoDB outage would (the publish answers 503), and `...:P` fails each one with probability P
/// (0 to 1). Without the feature this is nothing.
#[cfg(feature = "fault-injection")]
fn fault_point(seqs: &[u64]) -> Result<(), StoreError> {
    use std::sync::atomic::{AtomicBool, Ordering};
    static FAILED: AtomicBool = AtomicBool::new(false);
    let fails = crate::fault_hooks()
        .iter()
        .any(|hook| match hook.split_once(':') {
            Some(("mongodb-fails-after-jetstream-ack", p)) => {
                fastrand::f64() < p.parse::<f64>().unwrap_or(0.0)
            }
            _ if hook == "mongodb-fails-after-jetstream-ack" => {
                !FAILED.swap(true, Ordering::SeqCst)
            }
            _ if hook == "pause-after-jetstream-ack" => {
                eprintln!("fault: paused after the JetStream ack of {seqs:?}");
                loop {
                    std::thread::park();
                }
            }
            _ => false,
        });
    if !fails {
        return Ok(());
    }
    eprintln!("fault: MongoDB fails after the JetStream ack of {seqs:?}");
    Err(StoreError::Unavailable(
        "fault injection: MongoDB fails after the JetStream ack".into(),
    ))
}

#[cfg(not(feature = "fault-injection"))]
fn fault_point(_: &[u64]) -> Result<(), StoreError> {
    Ok(())
}
