//! One SSE connection.
//!
//! Order of a connection's life:
//! 1. Register with the hub (live events queue from now on) and read the store's bounds, both
//!    before answering; then `retry:`.
//! 2. With a Last-Event-ID: `event: herald.resume` with the verdict; if recovered, replay after
//!    the id page by page (from the hub's window of recent events while it covers them, from the
//!    store before that), then `event: herald.live` with the count replayed.
//! 3. Live: queued events with a sequence above the last one sent (so nothing at the seam is sent
//!    twice), comment heartbeats after `heartbeat` of silence.
//! 4. If the queue overflowed, drain it, re-arm, catch up (window, then store), and go on live.
//! 5. On drain, end after a random delay within `drain_jitter`.

use std::{
    convert::Infallible,
    pin::Pin,
    sync::{Arc, atomic::Ordering},
};

use axum::{
    body::Body,
    extract::{Query, State},
    http::{HeaderMap, HeaderValue, header},
    response::{IntoResponse, Response},
};
use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use herald_core::{Bounds, EventId, ResumeVerdict, TopicFilter, sse};
use herald_runtime::{ApiError, drain::jitter};
use herald_store::ReadQuery;
use herald_telemetry::{CloseReason, otel};
use tokio::time::{Instant, Sleep, sleep};

use crate::{GatewayState, hub::Subscription};

/// `GET /v1/stream?topic=a&topic=b.*&lastEventId=X`
pub(crate) async fn v1(
    State(gw): State<Arc<GatewayState>>,
    headers: HeaderMap,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let topics: Vec<&str> = params
        .iter()
        .filter(|(k, _)| k == "topic")
        .map(|(_, v)| v.as_str())
        .collect();
    if topics.is_empty() {
        return Err(ApiError::bad_request(
            "missing_topic",
            "name at least one topic: /v1/stream?topic=NAME",
        ));
    }
    if topics.len() > gw.config.max_topics {
        return Err(ApiError::bad_request(
            "too_many_topics",
            format!(
                "{} topics named; a connection may name at most {}",
                topics.len(),
                gw.config.max_topics
            ),
        ));
    }
    let filter = TopicFilter::parse(topics)
        .map_err(|e| ApiError::bad_request("invalid_topic", e.to_string()))?;
    let query_id = params
        .iter()
        .find(|(k, _)| k == "lastEventId")
        .map(|(_, v)| v.clone());
    open(gw, filter, last_event_id(&headers, query_id)).await
}

/// `GET /api/updates`: the article's stream, on the compatibility topic.
pub(crate) async fn compat(
    State(gw): State<Arc<GatewayState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let filter = TopicFilter::topics([gw.config.compat_topic.clone()]);
    open(gw, filter, last_event_id(&headers, None)).await
}

/// The header wins over the query (the browser sets it on reconnect); empty means none. A header
/// that is not text is kept (lossily) so that it is judged malformed, not ignored.
fn last_event_id(headers: &HeaderMap, query: Option<String>) -> Option<String> {
    headers
        .get("last-event-id")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .or(query)
        .filter(|s| !s.is_empty())
}

async fn open(
    gw: Arc<GatewayState>,
    filter: TopicFilter,
    last_event_id: Option<String>,
) -> Result<Response, ApiError> {
    if gw.drain.is_draining() {
        gw.metrics.connection_rejected("draining");
        return Err(ApiError::unavailable(
            "draining",
            "this server is shutting down; reconnect",
            1,
        ));
    }
    let guard = ConnectionGuard::acquire(Arc::clone(&gw)).ok_or_else(|| {
        gw.metrics.connection_rejected("limit");
        ApiError::unavailable(
            "too_many_connections",
            format!(
                "this server holds its limit of {} connections",
                gw.config.max_connections
            ),
            5,
        )
    })?;
    // Register first, then read the head, both before the answer: every event committed after the
    // client has the response headers is either at or below this head (and committed before it)
    // or above it (and queued), so "live from now" means from the moment the client connected.
    let subscription = gw.hub.subscribe(filter.clone());
    let bounds = gw.store.bounds().await.map_err(|e| {
        gw.metrics.store_error("bounds");
        tracing::warn!(error = %e, "stream: reading the store bounds failed");
        ApiError::unavailable("unavailable", "the event history is unavailable; retry", 1)
    })?;
    let stream = connection(gw, subscription, filter, last_event_id, bounds, guard);
    let mut response = Body::from_stream(stream.map(Ok::<_, Infallible>)).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(sse::CONTENT_TYPE),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// Counts an open connection; on drop, uncounts it and records why it ended.
#[derive(Debug)]
struct ConnectionGuard {
    gw: Arc<GatewayState>,
    reason: CloseReason,
}

impl ConnectionGuard {
    fn acquire(gw: Arc<GatewayState>) -> Option<Self> {
        let open = gw.connections.fetch_add(1, Ordering::AcqRel);
        if open >= gw.config.max_connections {
            gw.connections.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        gw.metrics.connections_accepted.inc();
        gw.metrics.connections_open.inc();
        Some(Self {
            gw,
            reason: CloseReason::Client,
        })
    }
}

impl ConnectionGuard {
    /// Records why the connection is about to end (it is `Client` unless said otherwise).
    fn ending(&mut self, reason: CloseReason) {
        self.reason = reason;
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.gw.connections.fetch_sub(1, Ordering::AcqRel);
        self.gw.metrics.connections_open.dec();
        self.gw.metrics.connection_closed(self.reason);
    }
}

/// The most bytes of queued frames sent as one chunk.
const MAX_CHUNK: usize = 64 * 1024;

/// Frames gathered into one body chunk: the first is kept as it is (no copy for the usual single
/// frame); a second one starts a buffer.
#[derive(Debug, Default)]
struct Chunk {
    first: Option<Bytes>,
    rest: Option<BytesMut>,
}

impl Chunk {
    fn push(&mut self, frame: Bytes) {
        match (&self.first, &mut self.rest) {
            (None, _) => self.first = Some(frame),
            (Some(first), None) => {
                let both = first.len() + frame.len();
                let mut buf = BytesMut::with_capacity((both * 4).min(MAX_CHUNK).max(both));
                buf.extend_from_slice(first);
                buf.extend_from_slice(&frame);
                self.rest = Some(buf);
            }
            (Some(_), Some(buf)) => buf.extend_from_slice(&frame),
        }
    }

    fn len(&self) -> usize {
        match (&self.first, &self.rest) {
            (_, Some(buf)) => buf.len(),
            (Some(first), None) => first.len(),
            (None, None) => 0,
        }
    }

    fn take(self) -> Option<Bytes> {
        match self.rest {
            Some(buf) => Some(buf.freeze()),
            None => self.first,
        }
    }
}

/// What woke the live loop.
enum Wake {
    Delivery(Option<crate::hub::Delivery>),
    Heartbeat,
    DrainStarted,
    Close,
}

fn connection(
    gw: Arc<GatewayState>,
    mut sub: Subscription,
    filter: TopicFilter,
    last_event_id: Option<String>,
    bounds: Bounds,
    mut guard: ConnectionGuard,
) -> impl Stream<Item = Bytes> {
    async_stream::stream! {
        let config = &gw.config;
        yield sse::retry(config.retry.as_millis() as u64);
        // The last sequence this connection has covered: sent, or known not to match.
        let mut last = bounds.head;
        let mut catch_up = false;
        let mut announce_live = false;
        if let Some(id) = last_event_id {
            let verdict = ResumeVerdict::judge(&id, bounds);
            match &verdict {
                ResumeVerdict::Recovered { after } => {
                    gw.metrics.resume(true, "");
                    (last, catch_up, announce_live) = (*after, true, true);
                }
                ResumeVerdict::NotRecovered { reason, .. } => gw.metrics.resume(false, reason.as_str()),
            }
            yield sse::control("herald.resume", &verdict.to_json());
        }
        let mut heartbeat = Box::pin(sleep(config.heartbeat));
        let mut last_sent = Instant::now();
        let drain = gw.drain.clone();
        let mut drain_started = Box::pin(drain.started());
        let mut close: Option<Pin<Box<Sleep>>> = None;
        loop {
            if catch_up {
                sub.rearm();
                let mut replayed = 0u64;
                loop {
                    // Recent events come encoded from the hub's window; older ones from the store.
                    if let Some(page) = gw.hub.window_page(&filter, last, config.replay_page) {
                        replayed += page.frames.len() as u64;
                        last = page.next_after;
                        let mut chunk = Chunk::default();
                        for frame in page.frames {
                            chunk.push(frame);
                            if chunk.len() >= MAX_CHUNK
                                && let Some(bytes) = std::mem::take(&mut chunk).take()
                            {
                                yield bytes;
                            }
                        }
                        if let Some(bytes) = chunk.take() {
                            yield bytes;
                        }
                        if page.end {
                            break;
                        }
                        continue;
                    }
                    let query = ReadQuery { filter: filter.clone(), after: last, limit: config.replay_page };
                    let page = match gw.store.read(query).await {
                        Ok(page) => page,
                        Err(e) => {
                            gw.metrics.store_error("read");
                            tracing::warn!(error = %e, after = last, "stream: replay read failed; the client will resume");
                            guard.ending(CloseReason::Error);
                            return;
                        }
                    };
                    for event in &page.events {
                        yield sse::event(EventId::new(bounds.epoch, event.seq), &event.event_type, event.data.get());
                    }
                    replayed += page.events.len() as u64;
                    last = page.next_after;
                    if page.end {
                        break;
                    }
                }
                gw.metrics.events_replayed.inc_by(replayed);
                gw.metrics.events_delivered.inc_by(replayed);
                if announce_live {
                    announce_live = false;
                    yield sse::control("herald.live", &format!("{{\"replayed\":{replayed}}}"));
                }
                catch_up = false;
                last_sent = Instant::now();
            }
            if sub.lagged() && sub.is_empty() {
                gw.metrics.slow_caught_up.inc();
                catch_up = true;
                continue;
            }
            let wake = tokio::select! {
                d = sub.recv() => Wake::Delivery(d),
                () = &mut heartbeat => Wake::Heartbeat,
                () = &mut drain_started, if close.is_none() => Wake::DrainStarted,
                () = async { if let Some(c) = close.as_mut() { c.await } }, if close.is_some() => Wake::Close,
            };
            match wake {
                Wake::Delivery(Some(d)) => {
                    // Everything already queued goes out as one chunk (one write for a
                    // backlogged connection); a sampled delivery goes alone, inside its span.
                    let mut chunk = Chunk::default();
                    let mut traced = None;
                    let mut next = Some(d);
                    while let Some(d) = next.take() {
                        if d.seq > last {
                            last = d.seq;
                            if d.trace.is_some() {
                                traced = Some(d);
                                break;
                            }
                            chunk.push(d.frame);
                            if chunk.len() >= MAX_CHUNK {
                                break;
                            }
                        }
                        next = sub.try_recv();
                    }
                    if let Some(bytes) = chunk.take() {
                        last_sent = Instant::now();
                        yield bytes;
                    }
                    if let Some(d) = traced {
                        last_sent = Instant::now();
                        // Sampled: the span lasts until the body asks for the next chunk, that
                        // is, until this frame has been handed to the socket.
                        let _write = d.trace.map(|parent| {
                            let span = tracing::info_span!("sse write", messaging.message.id = %EventId::new(bounds.epoch, d.seq));
                            otel::set_parent(&span, *parent);
                            span
                        });
                        yield d.frame;
                    }
                }
                Wake::Delivery(None) => return,
                Wake::Heartbeat => {
                    // The timer is not moved on every frame (a timer-wheel update per delivery):
                    // when it fires after recent frames, it is set again from the last one.
                    let quiet_until = last_sent + config.heartbeat;
                    if quiet_until > Instant::now() {
                        heartbeat.as_mut().reset(quiet_until);
                    } else {
                        heartbeat.as_mut().reset(Instant::now() + config.heartbeat);
                        last_sent = Instant::now();
                        yield sse::comment("");
                    }
                }
                Wake::DrainStarted => close = Some(Box::pin(sleep(jitter(config.drain_jitter)))),
                Wake::Close => {
                    guard.ending(CloseReason::Drain);
                    return;
                }
            }
        }
    }
}
