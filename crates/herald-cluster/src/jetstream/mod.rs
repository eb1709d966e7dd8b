//! Herald on NATS JetStream: publish (the PubAck's sequence is the global sequence), the
//! gateway's one live feed ([`feed`]), replay reads filtered to a connection's topics
//! ([`read`]), and making the stream again when NATS lost it ([`recovery`]).

mod feed;
mod read;
mod recovery;

pub use read::Reader;
use recovery::{Recovery, StreamMissing, stream_not_found};

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use async_nats::{
    Client, HeaderMap, RequestErrorKind,
    jetstream::{
        self, ErrorCode,
        consumer::{AckPolicy, DeliverPolicy, pull},
        context::{ConsumerInfoErrorKind, GetStreamErrorKind, PublishErrorKind},
        message::PublishMessage,
        stream::ConsumerErrorKind,
    },
};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use herald_bus::{Bus, BusError, Feed};
use herald_core::{Epoch, Event, EventId, NewEvent, TopicFilter, TraceContext, event::now_ms};
use herald_proto::Origin;
use herald_store::{Page, StoreError};
use herald_telemetry::{BusOp, Consumer};
use herald_telemetry::{Metrics, otel};
use serde_json::Value;

use crate::{
    ClusterConfig, Mongo, NatsAuth,
    envelope::{ALL_SUBJECTS, Stamp, decode, encode, filter_subjects, subject},
    stream,
};

/// The message header carrying the publish's W3C trace context.
pub const TRACEPARENT: &str = "traceparent";
/// Replay reads (each one a consumer on the server) under way at once per process; the others
/// wait their turn. Thousands of clients replaying at once (a cold gateway after a crash) would
/// otherwise hit JetStream's consumer limit and fail.
const CONCURRENT_READS: usize = 64;

/// A connection to the deployment's stream. Cheap to clone.
#[derive(Debug, Clone)]
pub struct JetStream {
    client: Client,
    js: jetstream::Context,
    stream: Arc<str>,
    epoch: Epoch,
    timeout: Duration,
    duplicate_window: Duration,
    metrics: Arc<Metrics>,
    reads: Arc<tokio::sync::Semaphore>,
    recovery: Arc<Recovery>,
    /// Until when every message the archiver may not have written yet is known to be in
    /// JetStream's duplicate window ([`Self::archived_recently`]).
    young_until: Arc<std::sync::Mutex<Option<tokio::time::Instant>>>,
}

/// What a publish got from JetStream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The sequence of each event of the batch, in order.
    pub seqs: Vec<u64>,
    /// JetStream had the `Nats-Msg-Id` already: these are the first publish's sequences.
    pub duplicate: bool,
}

impl JetStream {
    /// Connects to NATS (reconnecting for ever after a first success) and makes sure the stream
    /// exists.
    pub async fn connect(
        config: &ClusterConfig,
        name: &str,
        mongo: &Mongo,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let mut options = match &config.nats_auth {
            NatsAuth::None => async_nats::ConnectOptions::new(),
            NatsAuth::Credentials(path) => async_nats::ConnectOptions::with_credentials_file(path)
                .await
                .with_context(|| format!("reading NATS credentials {}", path.display()))?,
            NatsAuth::UserPassword(user, password) => {
                async_nats::ConnectOptions::with_user_and_password(
                    user.clone(),
                    password.expose().to_owned(),
                )
            }
            NatsAuth::Token(token) => {
                async_nats::ConnectOptions::with_token(token.expose().to_owned())
            }
        };
        if let Some(ca) = &config.nats_tls.ca_file {
            options = options.add_root_certificates(ca.clone());
        }
        if let Some((cert, key)) = &config.nats_tls.client {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        let client = options
            .require_tls(config.nats_tls.required())
            .name(name)
            .max_reconnects(None)
            .connection_timeout(config.backend_timeout)
            .request_timeout(Some(config.backend_timeout))
            .event_callback(|event| async move {
                tracing::info!(%event, "nats connection");
            })
            .connect(config.nats_url.as_str())
            .await?;
        let js = jetstream::ContextBuilder::new()
            .timeout(config.backend_timeout)
            .build(client.clone());
        let epoch = stream::ensure(&js, config, mongo).await?;
        Ok(Self {
            client,
            js,
            stream: config.stream.as_str().into(),
            epoch,
            timeout: config.backend_timeout,
            duplicate_window: config.duplicate_window,
            metrics,
            reads: Arc::new(tokio::sync::Semaphore::new(CONCURRENT_READS)),
            recovery: Arc::new(Recovery::new(config, mongo)),
            young_until: Arc::default(),
        })
    }

    /// The stream's epoch.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The NATS client (for readiness).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The stream's first and last sequence now. An empty stream answers `(last + 1, last)`.
    pub async fn state(&self) -> Result<(u64, u64), StoreError> {
        let stream = self
            .restoring(|| async {
                self.js.get_stream(&*self.stream).await.map_err(|e| {
                    if stream_not_found(&e) {
                        unavailable(StreamMissing)
                    } else {
                        unavailable(e)
                    }
                })
            })
            .await?;
        let state = &stream.cached_info().state;
        let first = if state.messages == 0 {
            state.last_sequence + 1
        } else {
            state.first_sequence
        };
        // Every id up to the last sequence was handed out: a process that looked knows them,
        // should the stream have to be made again.
        self.saw(state.last_sequence);
        Ok((first, state.last_sequence))
    }

    /// Publishes a batch, all or nothing, and answers its sequences. One event is published with
    /// `Nats-Msg-Id` = the idempotency key, so JetStream stores it once within its duplicate
    /// window; a batch is an atomic batch publish (consecutive sequences, all or none stored).
    /// `key`: the idempotency key and the request's fingerprint. A stream NATS lost is made
    /// again first, unless `restore` is false: then the publish is unavailable until another
    /// process (a gateway, which knows the ids it delivered and read) has made it.
    pub async fn publish(
        &self,
        batch: &[NewEvent],
        key: Option<(&str, u64)>,
        time_ms: u64,
        trace: Option<TraceContext>,
        origin: Origin,
        restore: bool,
    ) -> Result<Published, StoreError> {
        let stamp = Stamp {
            epoch: self.epoch,
            time_ms,
            fingerprint: key.map_or(0, |(_, fingerprint)| fingerprint),
            origin,
            key: key.map(|(key, _)| key),
            size: batch.len(),
        };
        let published = match batch {
            [] => {
                return Ok(Published {
                    seqs: Vec::new(),
                    duplicate: false,
                });
            }
            [event] if restore => {
                self.restoring(|| self.publish_one(event, &stamp, trace))
                    .await?
            }
            [event] => self.publish_one(event, &stamp, trace).await?,
            _ => {
                self.restoring(|| self.publish_batch(batch, &stamp, trace))
                    .await?
            }
        };
        if let Some(&last) = published.seqs.last() {
            self.saw(last);
        }
        Ok(published)
    }

    async fn publish_one(
        &self,
        event: &NewEvent,
        stamp: &Stamp<'_>,
        trace: Option<TraceContext>,
    ) -> Result<Published, StoreError> {
        let (key, fingerprint) = (stamp.key, stamp.fingerprint);
        let mut message = PublishMessage::build().payload(encode(event, 0, stamp));
        if let Some(key) = key {
            message = message.message_id(key);
        }
        if let Some(trace) = trace {
            message = message.header(TRACEPARENT, trace.to_string().as_str());
        }
        let ack = self
            .js
            .send_publish(subject(&event.topic), message)
            .await
            .map_err(unavailable)?
            .await
            .map_err(|e| match e.kind() {
                // No stream listens on the subject: nothing was stored.
                PublishErrorKind::StreamNotFound => unavailable(StreamMissing),
                _ => unavailable(e),
            })?;
        if ack.duplicate && key.is_some() {
            // The key was used before: with the same request, answer the first result.
            let stored = self.fingerprint_at(ack.sequence).await?;
            if stored != fingerprint {
                return Err(StoreError::IdempotencyConflict);
            }
        }
        Ok(Published {
            seqs: vec![ack.sequence],
            duplicate: ack.duplicate,
        })
    }

    /// An atomic batch (ADR-50): every message carries the batch id and its position; the first
    /// and the last are requests (the server answers errors early and the PubAck at the commit),
    /// the others plain publishes.
    async fn publish_batch(
        &self,
        batch: &[NewEvent],
        stamp: &Stamp<'_>,
        trace: Option<TraceContext>,
    ) -> Result<Published, StoreError> {
        let traceparent = trace.map(|t| t.to_string());
        let batch_id = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        let last = batch.len();
        let mut commit = None;
        for (i, event) in batch.iter().enumerate() {
            let n = i + 1;
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Batch-Id", batch_id.as_str());
            headers.insert("Nats-Batch-Sequence", n.to_string().as_str());
            if n == last {
                headers.insert("Nats-Batch-Commit", "1");
            }
            if let Some(traceparent) = &traceparent {
                headers.insert(TRACEPARENT, traceparent.as_str());
            }
            let payload = encode(event, i, stamp);
            let subject = subject(&event.topic);
            if n == 1 || n == last {
                let reply = tokio::time::timeout(
                    self.timeout,
                    self.client.request_with_headers(subject, headers, payload),
                )
                .await
                .map_err(|_| unavailable("the batch publish timed out"))?
                .map_err(|e| match e.kind() {
                    // The first message found no stream: nothing of the batch was stored.
                    RequestErrorKind::NoResponders if n == 1 => unavailable(StreamMissing),
                    _ => unavailable(e),
                })?;
                let answer = parse_reply(&reply.payload)?;
                if n == last {
                    commit = answer;
                }
            } else {
                self.client
                    .publish_with_headers(subject, headers, payload)
                    .await
                    .map_err(unavailable)?;
            }
        }
        let ack = commit.ok_or_else(|| unavailable("the batch commit had no acknowledgement"))?;
        let seq = ack["seq"]
            .as_u64()
            .ok_or_else(|| unavailable("the batch ack has no seq"))?;
        let count = ack["count"].as_u64().unwrap_or(last as u64);
        if count != last as u64 || seq < count {
            return Err(unavailable(format!(
                "the batch ack counts {count} messages of {last}"
            )));
        }
        Ok(Published {
            seqs: (seq + 1 - count..=seq).collect(),
            duplicate: false,
        })
    }

    /// Waits until a key MongoDB has no record of can be taken as new. MongoDB learns a key from
    /// the ingest (after its own write, which a failure or a crash after the JetStream ack
    /// skips) or from the archiver; JetStream remembers a single event's `Nats-Msg-Id` for its
    /// duplicate window, and a batch's not at all. So this waits until the archiver's durable
    /// consumer has acknowledged (written to MongoDB, keys' answers included) every message the
    /// stream held on the first look: its ack floor reaches that last sequence. For a single
    /// event (`single`), it is enough that the oldest message not yet acknowledged is younger
    /// than half the duplicate window (stamped by its ingest's clock; half leaves room for
    /// skew): JetStream still remembers every key after it. An archiver holds messages while
    /// MongoDB is down, or when its process was killed mid-chunk (until the ack wait hands them
    /// on). Unavailable after the backend timeout.
    pub async fn archived(&self, single: bool) -> Result<(), StoreError> {
        let stream = self
            .js
            .get_stream_no_info(&*self.stream)
            .await
            .map_err(unavailable)?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        let half = self.duplicate_window / 2;
        let mut target = None;
        loop {
            let checked = tokio::time::Instant::now();
            let info = match stream.consumer_info(crate::archiver::CONSUMER).await {
                Ok(info) => info,
                // No archiver has read this stream yet (every archiver is starting, or the
                // stream was made again after NATS lost it and they have not noticed): when one
                // does, it reads the stream from its start. A key is new only if nothing the
                // stream holds could be its earlier publish: the stream is empty, or (a single
                // event) its oldest message is young enough for JetStream to remember every key.
                Err(e) if e.kind() == ConsumerInfoErrorKind::NotFound => {
                    let (first, last) = self.state().await?;
                    if last < first {
                        self.young_for(checked, half);
                        return Ok(());
                    }
                    if single && let Some(left) = self.youth(&stream, first).await {
                        self.young_for(checked, left);
                        return Ok(());
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Err(unavailable(
                            "no archiver has read the stream yet, so a new idempotency key \
                             cannot be told from a retried one",
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                Err(e) => return Err(unavailable(e)),
            };
            if info.num_pending == 0 && info.num_ack_pending == 0 {
                self.young_for(checked, half);
                return Ok(());
            }
            if single
                && let Some(left) = self
                    .youth(&stream, info.ack_floor.stream_sequence + 1)
                    .await
            {
                self.young_for(checked, left);
                return Ok(());
            }
            let last = *target.get_or_insert(info.delivered.stream_sequence + info.num_pending);
            if info.ack_floor.stream_sequence >= last {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(unavailable(format!(
                    "the archiver has not written every earlier event to MongoDB (up to {last}, \
                     {} so far), so a new idempotency key cannot be told from a retried one yet",
                    info.ack_floor.stream_sequence
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Whether an earlier look at the archiver found every message it had not written young
    /// enough to be younger than half the duplicate window still now (as [`Self::archived`]
    /// counts it): then a single event's key MongoDB had no record of (read before now) is new,
    /// or JetStream still remembers it, with no request. What the archiver had not written now
    /// was either unwritten at that look, and then at most as old as the oldest such message
    /// plus the time since, or published since, and then younger than the time since.
    pub fn archived_recently(&self) -> bool {
        let until = *self.young_until.lock().expect("never poisoned");
        until.is_some_and(|until| tokio::time::Instant::now() < until)
    }

    /// A look at `checked` found the oldest message the archiver had not written younger than
    /// half the duplicate window by `left`.
    fn young_for(&self, checked: tokio::time::Instant, left: Duration) {
        let mut until = self.young_until.lock().expect("never poisoned");
        *until = (*until).max(Some(checked + left));
    }

    /// How much younger than half the duplicate window the message at `seq` is (stamped by its
    /// ingest's clock; half leaves room for skew): JetStream still remembers every key from it
    /// on, for that long at least. `None` for a message that is older, or cannot be read.
    async fn youth(&self, stream: &jetstream::stream::Stream<()>, seq: u64) -> Option<Duration> {
        let message = stream.direct_get(seq).await.ok()?;
        let decoded = decode(&message.payload, seq, None).ok()?;
        let age = Duration::from_millis(now_ms().saturating_sub(decoded.event.time_ms));
        (self.duplicate_window / 2)
            .checked_sub(age)
            .filter(|left| !left.is_zero())
    }

    /// The request fingerprint stored with the event at `seq`.
    pub async fn fingerprint_at(&self, seq: u64) -> Result<u64, StoreError> {
        let stream = self
            .js
            .get_stream_no_info(&*self.stream)
            .await
            .map_err(unavailable)?;
        let message = stream.direct_get(seq).await.map_err(unavailable)?;
        decode(&message.payload, seq, None)
            .map(|d| d.fingerprint)
            .map_err(|e| StoreError::Backend(Box::new(e)))
    }
}

/// The W3C trace context a message was published in.
pub(crate) fn traceparent(headers: Option<&HeaderMap>) -> Option<TraceContext> {
    headers?
        .get(TRACEPARENT)
        .and_then(|v| TraceContext::parse(v.as_str()))
}

/// A request's reply: nothing (an intermediate ack), a PubAck, or an API error.
fn parse_reply(payload: &Bytes) -> Result<Option<Value>, StoreError> {
    if payload.is_empty() {
        return Ok(None);
    }
    let value: Value = serde_json::from_slice(payload).map_err(unavailable)?;
    if let Some(error) = value.get("error") {
        return Err(unavailable(format!("JetStream refused the batch: {error}")));
    }
    Ok(Some(value))
}

/// NATS could not be reached or refused: the caller may retry (503).
pub(crate) fn unavailable(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> StoreError {
    StoreError::Unavailable(e.into())
}
