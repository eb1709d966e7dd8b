//! Herald on NATS JetStream: publish (the PubAck's sequence is the global sequence), the
//! gateway's one live feed, and replay reads filtered to a connection's topics.

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
        context::{GetStreamErrorKind, PublishErrorKind},
        message::PublishMessage,
        stream::ConsumerErrorKind,
    },
};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use herald_bus::{Bus, BusError, Feed};
use herald_core::{Epoch, Event, EventId, NewEvent, TopicFilter, TraceContext};
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

/// Wait between attempts to re-open the live feed.
const FEED_RETRY: Duration = Duration::from_millis(500);
/// The message header carrying the publish's W3C trace context.
pub const TRACEPARENT: &str = "traceparent";
/// How long an abandoned replay consumer lives on the server.
const READ_CONSUMER_TTL: Duration = Duration::from_secs(30);
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
    metrics: Arc<Metrics>,
    reads: Arc<tokio::sync::Semaphore>,
    recovery: Arc<Recovery>,
}

/// What it takes to make the stream again while running, when NATS lost it.
#[derive(Debug)]
struct Recovery {
    config: ClusterConfig,
    mongo: Mongo,
    /// The highest sequence this process saw handed out: published or delivered live.
    seen: AtomicU64,
    /// One recovery at a time; a caller that waited finds the stream made.
    one: tokio::sync::Mutex<()>,
}

/// The stream is gone: NATS lost its storage (or an operator deleted it). Carried inside
/// [`StoreError::Unavailable`] so that the operation can make the stream again and try once more.
#[derive(Debug)]
struct StreamMissing;

impl std::fmt::Display for StreamMissing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the stream is missing")
    }
}

impl std::error::Error for StreamMissing {}

fn missing(e: &StoreError) -> bool {
    matches!(e, StoreError::Unavailable(inner) if inner.is::<StreamMissing>())
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
            metrics,
            reads: Arc::new(tokio::sync::Semaphore::new(CONCURRENT_READS)),
            recovery: Arc::new(Recovery {
                config: config.clone(),
                mongo: mongo.clone(),
                seen: AtomicU64::new(0),
                one: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// Runs `op`; if it found the stream missing, makes the stream again ([`JetStream::restore`])
    /// and runs it once more.
    async fn restoring<T, F>(&self, op: impl Fn() -> F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, StoreError>>,
    {
        match op().await {
            Err(e) if missing(&e) => {
                self.restore().await?;
                op().await
            }
            done => done,
        }
    }

    /// Makes the stream again after NATS lost it, as start-up does ([`stream::ensure`]): in the
    /// same epoch, after the highest sequence MongoDB knows was handed out — first raised to the
    /// highest this process saw, which MongoDB may not hold yet (an event published or delivered
    /// live whose insert had not happened). A gateway's live feed tries within [`FEED_RETRY`] of
    /// NATS coming back, so it usually records what it delivered before a publish recreates the
    /// stream (not always: a publish can come first). Nothing is done when the stream is there
    /// again.
    async fn restore(&self) -> Result<(), StoreError> {
        let recovery = &self.recovery;
        let _one = recovery.one.lock().await;
        match self.js.get_stream(&*self.stream).await {
            Ok(_) => return Ok(()),
            Err(e) if !stream_not_found(&e) => return Err(unavailable(e)),
            Err(_) => {}
        }
        let seen = recovery.seen.load(Ordering::Relaxed);
        recovery.mongo.raise_handed_out(seen).await?;
        tracing::warn!(stream = %self.stream, seen, "the stream is gone (NATS lost its storage); making it again");
        let epoch = stream::ensure(&self.js, &recovery.config, &recovery.mongo)
            .await
            .map_err(|e| unavailable(format!("making the stream again: {e:#}")))?;
        if epoch != self.epoch {
            return Err(unavailable(format!(
                "the stream was made again in epoch {epoch}, not this process's {}; restart it",
                self.epoch
            )));
        }
        Ok(())
    }

    /// Notes a sequence handed out, for [`JetStream::restore`].
    fn saw(&self, seq: u64) {
        self.recovery.seen.fetch_max(seq, Ordering::Relaxed);
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
        Ok((first, state.last_sequence))
    }

    /// Publishes a batch, all or nothing, and answers its sequences. One event is published with
    /// `Nats-Msg-Id` = the idempotency key, so JetStream stores it once within its duplicate
    /// window; a batch is an atomic batch publish (consecutive sequences, all or none stored).
    pub async fn publish(
        &self,
        batch: &[NewEvent],
        key: Option<&str>,
        fingerprint: u64,
        time_ms: u64,
        trace: Option<TraceContext>,
        origin: Origin,
    ) -> Result<Published, StoreError> {
        let stamp = Stamp {
            epoch: self.epoch,
            time_ms,
            fingerprint,
            origin,
            key,
            size: batch.len(),
        };
        let published = match batch {
            [] => {
                return Ok(Published {
                    seqs: Vec::new(),
                    duplicate: false,
                });
            }
            [event] => {
                self.restoring(|| self.publish_one(event, &stamp, trace))
                    .await?
            }
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

    /// One page of events matching `filter` after `after`, read with a short-lived consumer
    /// filtered to the connection's subjects. `head` is the stream's last sequence as the caller
    /// saw it; a page that reaches the end answers `next_after >= head`.
    pub async fn read(
        &self,
        filter: &TopicFilter,
        after: u64,
        limit: usize,
        head: u64,
    ) -> Result<Page, StoreError> {
        if after >= head || limit == 0 {
            return Ok(Page {
                events: Vec::new(),
                next_after: after.max(head),
                end: after >= head,
            });
        }
        let _turn = self.reads.acquire().await.map_err(unavailable)?;
        let (stream, consumer) = self
            .restoring(|| async {
                let stream = self
                    .js
                    .get_stream_no_info(&*self.stream)
                    .await
                    .map_err(unavailable)?;
                let consumer = stream
                    .create_consumer(read_consumer(filter, after))
                    .await
                    .map_err(consumer_error)?;
                Ok((stream, consumer))
            })
            .await?;
        let name = consumer.cached_info().name.clone();
        let pending = consumer.cached_info().num_pending;
        let want = (limit as u64).min(pending) as usize;
        let mut fetched = Fetched {
            events: Vec::with_capacity(want),
            last_seq: after,
            read: 0,
        };
        if want > 0 {
            tokio::time::timeout(self.timeout, fetched.fetch(&consumer, want))
                .await
                .map_err(|_| unavailable("JetStream did not deliver the replay page in time"))??;
        }
        let Fetched {
            events,
            last_seq,
            read,
        } = fetched;
        tokio::spawn(async move {
            let _ = stream.delete_consumer(&name).await;
        });
        if want > 0 && read == 0 {
            return Err(unavailable(
                "JetStream delivered none of the pending events",
            ));
        }
        let end = read as u64 >= pending;
        Ok(Page {
            events,
            next_after: if end { last_seq.max(head) } else { last_seq },
            end,
        })
    }
}

/// A short-lived, unacknowledged consumer of `filter`'s subjects from `after + 1` on.
fn read_consumer(filter: &TopicFilter, after: u64) -> pull::Config {
    let subjects = filter_subjects(filter);
    let (filter_subject, filter_subjects) = match subjects.len() {
        1 => (subjects[0].clone(), Vec::new()),
        _ => (String::new(), subjects),
    };
    pull::Config {
        deliver_policy: DeliverPolicy::ByStartSequence {
            start_sequence: after + 1,
        },
        ack_policy: AckPolicy::None,
        filter_subject,
        filter_subjects,
        inactive_threshold: READ_CONSUMER_TTL,
        memory_storage: true,
        num_replicas: 1,
        ..Default::default()
    }
}

/// What one replay fetch got: the events, the last sequence delivered, how many messages.
struct Fetched {
    events: Vec<Arc<Event>>,
    last_seq: u64,
    read: usize,
}

impl Fetched {
    /// Fetches up to `want` messages; one that is not a Herald event is passed over.
    async fn fetch(
        &mut self,
        consumer: &jetstream::consumer::Consumer<pull::Config>,
        want: usize,
    ) -> Result<(), StoreError> {
        let mut messages = consumer
            .fetch()
            .max_messages(want)
            .messages()
            .await
            .map_err(unavailable)?;
        while let Some(message) = messages.next().await {
            let message = message.map_err(unavailable)?;
            let Ok(info) = message.info() else { continue };
            let seq = info.stream_sequence;
            self.last_seq = seq;
            self.read += 1;
            match decode(&message.payload, seq, traceparent(message.headers.as_ref())) {
                Ok(d) => self.events.push(d.event),
                Err(e) => {
                    tracing::warn!(seq, error = %e, "skipping a message that is not a Herald event")
                }
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Bus for JetStream {
    /// The gateway's one live feed: an ordered consumer over every subject, starting after the
    /// stream's last sequence now. If it fails (NATS restarted, the consumer vanished) it is
    /// opened again after the last sequence it delivered, so nothing is skipped.
    async fn subscribe(&self) -> Result<Feed, BusError> {
        let (_, head) = self
            .state()
            .await
            .map_err(|e| BusError::Backend(Box::new(e)))?;
        let messages = self.live_from(head + 1).await?;
        let this = self.clone();
        let pending = self.metrics.consumer_pending(Consumer::Live);
        Ok(Box::pin(async_stream::stream! {
            let mut last = head;
            let mut messages = Some(messages);
            loop {
                let Some(current) = messages.as_mut() else {
                    tokio::time::sleep(FEED_RETRY).await;
                    match this.live_from(last + 1).await {
                        Ok(m) => {
                            tracing::info!(after = last, "live feed re-opened");
                            messages = Some(m);
                        }
                        Err(e) => {
                            this.metrics.bus_error(BusOp::Feed);
                            tracing::warn!(error = %e, "re-opening the live feed failed; retrying");
                        }
                    }
                    continue;
                };
                match current.next().await {
                    Some(Ok(message)) => {
                        let Ok(info) = message.info() else { continue };
                        let seq = info.stream_sequence;
                        if seq <= last {
                            continue;
                        }
                        last = seq;
                        this.saw(seq);
                        pending.set(i64::try_from(info.pending).unwrap_or(i64::MAX));
                        match this.receive(&message, seq) {
                            Ok(event) => yield event,
                            Err(e) => tracing::warn!(seq, error = %e, "skipping a message that is not a Herald event"),
                        }
                    }
                    Some(Err(e)) => {
                        this.metrics.bus_error(BusOp::Feed);
                        tracing::warn!(error = %e, after = last, "live feed failed; re-opening it");
                        messages = None;
                    }
                    None => messages = None,
                }
            }
        }))
    }
}

impl JetStream {
    /// Decodes a live message. When its publish was traced and sampled, the decode runs in a
    /// CONSUMER `process` span, a child of (and linked to) the producer span, and the event
    /// carries that span's context on to the hub's fan-out.
    fn receive(
        &self,
        message: &jetstream::Message,
        seq: u64,
    ) -> Result<Arc<Event>, crate::envelope::DecodeError> {
        let trace = traceparent(message.headers.as_ref());
        let Some(producer) = otel::sampled(trace) else {
            return decode(&message.payload, seq, trace).map(|d| d.event);
        };
        let process = tracing::info_span!(
            "process",
            otel.name = %format_args!("process {}", message.subject),
            otel.kind = "consumer",
            messaging.system = "nats",
            messaging.operation.type = "process",
            messaging.operation.name = "process",
            messaging.destination.name = message.subject.as_str(),
            messaging.message.id = %EventId::new(self.epoch, seq),
            messaging.consumer.group.name = "live",
        );
        otel::set_parent(&process, producer);
        otel::add_link(&process, producer);
        let own = otel::trace_of(&process).or(trace);
        let _decode = tracing::info_span!(parent: &process, "decode").entered();
        decode(&message.payload, seq, own).map(|d| d.event)
    }

    /// The live feed from `start` on. A stream NATS lost is made again first: the feed notices
    /// the loss as soon as NATS is back.
    async fn live_from(&self, start: u64) -> Result<pull::Ordered, BusError> {
        let consumer = self
            .restoring(|| async {
                let stream = self
                    .js
                    .get_stream_no_info(&*self.stream)
                    .await
                    .map_err(unavailable)?;
                stream
                    .create_consumer(pull::OrderedConfig {
                        filter_subject: ALL_SUBJECTS.to_owned(),
                        deliver_policy: DeliverPolicy::ByStartSequence {
                            start_sequence: start,
                        },
                        ..Default::default()
                    })
                    .await
                    .map_err(consumer_error)
            })
            .await
            .map_err(|e| BusError::Backend(Box::new(e)))?;
        consumer
            .messages()
            .await
            .map_err(|e| BusError::Backend(Box::new(e)))
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

/// Whether reading the stream found none.
fn stream_not_found(e: &async_nats::jetstream::context::GetStreamError) -> bool {
    matches!(e.kind(), GetStreamErrorKind::JetStream(ref j) if j.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

/// A consumer could not be made; [`StreamMissing`] when its stream is gone.
fn consumer_error(e: async_nats::jetstream::stream::ConsumerError) -> StoreError {
    if matches!(e.kind(), ConsumerErrorKind::JetStream(ref j) if j.error_code() == ErrorCode::STREAM_NOT_FOUND)
    {
        unavailable(StreamMissing)
    } else {
        unavailable(e)
    }
}

/// NATS could not be reached or refused: the caller may retry (503).
pub(crate) fn unavailable(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> StoreError {
    StoreError::Unavailable(e.into())
}
