//! One SSE connection.
//!
//! Order of a connection's life:
//! 1. Register with the hub (live events queue from now on) and read the store's bounds, both
//!    before answering; then `retry:`.
//! 2. With a Last-Event-ID: `event: herald.resume` with the verdict; if recovered, replay after
//!    the id ([`crate::replay`]), then `event: herald.live` with the count replayed.
//! 3. Live: queued events with a sequence above the last one sent (so nothing at the seam is sent
//!    twice), comment heartbeats after `heartbeat` of silence.
//! 4. If the queue overflowed (the hub marked it lagged, see [`crate::hub`]'s registry), drain
//!    it, re-arm, catch up the same way as a replay, and go on live.
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
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use herald_core::{Bounds, EventId, ResumeVerdict, TopicFilter, sse};
use herald_runtime::{ApiError, ErrorCode, drain::jitter};
use herald_telemetry::{CloseReason, otel};
use herald_telemetry::{Rejection, StoreOp};
use tokio::time::{Instant, Sleep, sleep};

use crate::{
    GatewayState,
    hub::Subscription,
    replay::{Chunk, MAX_CHUNK, Replay},
};

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
        return Err(ApiError::new(
            ErrorCode::MissingTopic,
            "name at least one topic: /v1/stream?topic=NAME",
        ));
    }
    if topics.len() > gw.config.max_topics {
        return Err(ApiError::new(
            ErrorCode::TooManyTopics,
            format!(
                "{} topics named; a connection may name at most {}",
                topics.len(),
                gw.config.max_topics
            ),
        ));
    }
    let filter = TopicFilter::parse(topics)
        .map_err(|e| ApiError::new(ErrorCode::InvalidTopic, e.to_string()))?;
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
        gw.metrics.connection_rejected(Rejection::Draining);
        return Err(ApiError::new(
            ErrorCode::Draining,
            "this server is shutting down; reconnect",
        ));
    }
    let guard = ConnectionGuard::acquire(Arc::clone(&gw)).ok_or_else(|| {
        gw.metrics.connection_rejected(Rejection::Limit);
        ApiError::new(
            ErrorCode::TooManyConnections,
            format!(
                "this server holds its limit of {} connections",
                gw.config.max_connections
            ),
        )
        .retry_after(5)
    })?;
    // Register first, then read the head, both before the answer: every event committed after the
    // client has the response headers is either at or below this head (and committed before it)
    // or above it (and queued), so "live from now" means from the moment the client connected.
    let subscription = gw.hub.subscribe(filter.clone());
    let bounds = gw.store.bounds().await.map_err(|e| {
        gw.metrics.store_error(StoreOp::Bounds);
        tracing::warn!(error = %e, "stream: reading the store bounds failed");
        ApiError::from(e)
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
                let mut replay = Replay::new(&gw, &filter, bounds.epoch, last);
                loop {
                    match replay.next_page().await {
                        Ok(page) => {
                            for chunk in page.chunks {
                                yield chunk;
                            }
                            if page.end {
                                break;
                            }
                        }
                        Err(e) => {
                            gw.metrics.store_error(StoreOp::Read);
                            tracing::warn!(error = %e, after = replay.last(), "stream: replay read failed; the client will resume");
                            guard.ending(CloseReason::Error);
                            return;
                        }
                    }
                }
                let replayed = replay.replayed();
                last = replay.last();
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
