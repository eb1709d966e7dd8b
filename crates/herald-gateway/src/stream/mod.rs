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
//! 6. When the client's token stops being valid, `event: herald.auth` with
//!    `{"reason":"expired"}`, then the end: the page refreshes its token (cookie) and its
//!    EventSource resumes by Last-Event-ID after `retry:`, nothing lost.
//!
//! Who may open which stream is decided first, from the request head ([`herald_auth`]).
//!
//! A stream refused for a cause that passes (the connection limit, a drain, a backend that is
//! down) is not answered 503: a native `EventSource` treats any answer but 200 as fatal and never
//! reconnects. It is answered `200 text/event-stream` with a jittered `retry:`, then
//! `event: herald.refused` with `{"code", "retry_ms", "message"}`, then the end, so the browser
//! reconnects on its own after the delay and resumes by Last-Event-ID ([`refused`]). Causes that
//! do not pass (a bad topic, 401, 403) stay HTTP errors, and the page's `onerror` sees them.

mod live;

use std::{
    convert::Infallible,
    sync::{Arc, atomic::Ordering},
};

use axum::{
    Extension,
    body::Body,
    extract::{Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use futures_util::StreamExt;
use herald_auth::{
    Principal,
    edge::Client,
    limits::{Kind, StreamSlot},
};
use herald_core::{TopicFilter, sse};
use herald_runtime::{ApiError, ErrorCode};
use herald_telemetry::{CloseReason, Rejection, StoreOp};

use self::live::connection;
use crate::GatewayState;

/// The event stream of topics and patterns (`text/event-stream`). It starts with `retry:`; a
/// resume (`Last-Event-ID`, or `lastEventId` for a first load) first gets `event: herald.resume`
/// with the verdict (`{"recovered":true}` then the missed events and `event: herald.live`
/// `{"replayed":N}`, or `{"recovered":false,"reason","earliest","head"}`), then live events as
/// `id:` / `event:` / `data:`. A stream refused for now (too many connections, draining, a backend
/// down) is a `200` with `event: herald.refused` `{"code","retry_ms","message"}` and the end, so
/// a browser reconnects; an expiring token gets `event: herald.auth` `{"reason":"expired"}`.
#[utoipa::path(
    get,
    path = "/v1/stream", operation_id = "stream",
    tag = "read",
    params(
        ("topic" = Vec<String>, Query, description = "Topics and patterns (`*` one level, a final `>` one or more; 1–128 characters of `[A-Za-z0-9_.-*>]`); repeat for several", explode = true),
        ("lastEventId" = Option<String>, Query, pattern = "^[0-9a-fA-F]{8}-[0-9]{1,19}$", description = "Resume after this id (a first load; the header wins)"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this id (sent by EventSource when it reconnects)"),
    ),
    responses(
        (status = 200, description = "The stream (or an in-band refusal)", content_type = "text/event-stream", body = String),
        (status = 400, description = "No topic, too many, or an invalid one", body = herald_runtime::openapi::ErrorBody),
        (status = 401, description = "No valid token where one is needed", body = herald_runtime::openapi::ErrorBody),
        (status = 403, description = "The token's grants do not cover a topic or pattern", body = herald_runtime::openapi::ErrorBody),
    )
)]
pub(crate) async fn v1(
    State(gw): State<Arc<GatewayState>>,
    client: Option<Extension<Client>>,
    uri: Uri,
    headers: HeaderMap,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let principal = gw.config.access.identify(&headers, Some(&uri)).await?;
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
    principal.may_subscribe(filter.names())?;
    let query_id = params
        .iter()
        .find(|(k, _)| k == "lastEventId")
        .map(|(_, v)| v.clone());
    open(
        gw,
        filter,
        last_event_id(&headers, query_id),
        &principal,
        client,
    )
    .await
}

/// The original article's stream, on the compatibility topic, read with `onmessage`.
#[utoipa::path(
    get,
    path = "/api/updates", operation_id = "updates",
    tag = "read",
    params(("Last-Event-ID" = Option<String>, Header, description = "Resume after this id")),
    responses(
        (status = 200, description = "The stream", content_type = "text/event-stream", body = String),
        (status = 401, description = "No valid token where one is needed", body = herald_runtime::openapi::ErrorBody),
        (status = 403, description = "The token's grants do not cover the topic", body = herald_runtime::openapi::ErrorBody),
    )
)]
pub(crate) async fn compat(
    State(gw): State<Arc<GatewayState>>,
    client: Option<Extension<Client>>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let principal = gw.config.access.identify(&headers, Some(&uri)).await?;
    principal.may_subscribe([gw.config.compat_topic.as_str()])?;
    let filter = TopicFilter::topics([gw.config.compat_topic.clone()]);
    open(
        gw,
        filter,
        last_event_id(&headers, None),
        &principal,
        client,
    )
    .await
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
    principal: &Principal,
    client: Option<Extension<Client>>,
) -> Result<Response, ApiError> {
    if gw.drain.is_draining() {
        gw.metrics.connection_rejected(Rejection::Draining);
        return Ok(refused(
            &gw,
            ApiError::new(
                ErrorCode::Draining,
                "this server is shutting down; reconnect",
            ),
        ));
    }
    // The client's own share first (streams per address and per token subject), then the
    // server's.
    let client = client.and_then(|Extension(Client(ip))| ip);
    if let Err(e) = gw
        .config
        .access
        .limits()
        .take_subject(Kind::StreamOpen, principal.subject())
    {
        return Ok(refused(&gw, e));
    }
    let slot = match gw
        .config
        .access
        .limits()
        .open_stream(client, principal.subject())
    {
        Ok(slot) => slot,
        Err(e) => {
            gw.metrics.connection_rejected(Rejection::Limit);
            return Ok(refused(&gw, e));
        }
    };
    let Some(guard) = ConnectionGuard::acquire(Arc::clone(&gw), slot) else {
        gw.metrics.connection_rejected(Rejection::Limit);
        let limit = ApiError::new(
            ErrorCode::TooManyConnections,
            format!(
                "this server holds its limit of {} connections",
                gw.config.max_connections
            ),
        )
        .retry_after(5);
        return Ok(refused(&gw, limit));
    };
    // Register first, then read the head, both before the answer: every event committed after the
    // client has the response headers is either at or below this head (and committed before it)
    // or above it (and queued), so "live from now" means from the moment the client connected.
    let subscription = gw.hub.subscribe(filter);
    let bounds = match gw.store.bounds().await {
        Ok(bounds) => bounds,
        Err(e) => {
            gw.metrics.store_error(StoreOp::Bounds);
            tracing::warn!(error = %e, "stream: reading the store bounds failed");
            let e = ApiError::from(e);
            return if e.status == StatusCode::SERVICE_UNAVAILABLE {
                Ok(refused(&gw, e))
            } else {
                Err(e)
            };
        }
    };
    let stream = connection(
        gw,
        subscription,
        last_event_id,
        bounds,
        guard,
        principal.expires_in(),
    );
    Ok(event_stream(Body::from_stream(
        stream.map(Ok::<_, Infallible>),
    )))
}

/// A `200 text/event-stream` answer with `body`, never cached or buffered on the way.
fn event_stream(body: Body) -> Response {
    let mut response = body.into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(sse::CONTENT_TYPE),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// A stream refused for a cause that passes, said in a way a native `EventSource` survives
/// ([`ApiError::into_stream_refusal`]), with `--retry` as the shortest delay.
fn refused(gw: &GatewayState, e: ApiError) -> Response {
    e.into_stream_refusal(gw.config.retry)
}

/// Counts an open connection (and, in its slot, against its client's limits); on drop,
/// uncounts it and records why it ended.
#[derive(Debug)]
struct ConnectionGuard {
    gw: Arc<GatewayState>,
    reason: CloseReason,
    _slot: StreamSlot,
}

impl ConnectionGuard {
    fn acquire(gw: Arc<GatewayState>, slot: StreamSlot) -> Option<Self> {
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
            _slot: slot,
        })
    }

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
