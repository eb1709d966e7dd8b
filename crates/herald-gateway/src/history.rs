//! `GET /v1/topics/{topic}/events?after=ID&limit=N`: a topic's events as JSON, for rendering a
//! page before its EventSource connects.
//!
//! Without `after`, the newest `limit` events (oldest first). With `after`, the events that follow
//! it. `head` is the id to resume from when no event was returned, so nothing published between
//! this read and the EventSource connecting is missed.
//!
//! The route is a [`HistoryReader`] of its own, so that a process without a hub can serve it too:
//! `herald-ingest` does, which lets a load balancer that routes by path only (a Kubernetes
//! Ingress) send the whole `/v1/topics/` resource, publish and read, to the ingests.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::HeaderMap,
    response::{IntoResponse, Response},
    routing::get,
};
use herald_auth::Access;
use herald_core::{Bounds, Event, EventId, ResumeReason, ResumeVerdict, Topic, TopicFilter};
use herald_runtime::{ApiError, ErrorCode};
use herald_store::ReadQuery;
use herald_telemetry::Metrics;
use herald_telemetry::StoreOp;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::History as Store;

/// Reads a topic's history: the route's state.
#[derive(Debug, Clone)]
pub struct HistoryReader {
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    limit: usize,
    access: Arc<Access>,
}

impl HistoryReader {
    /// A reader over `store` returning at most `limit` events per request, to the clients
    /// `access` lets read the topic.
    pub fn new(
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        limit: usize,
        access: Arc<Access>,
    ) -> Self {
        Self {
            store,
            metrics,
            limit: limit.max(1),
            access,
        }
    }

    /// `GET /v1/topics/{topic}/events`.
    pub fn router(self) -> Router {
        Router::new()
            .route("/v1/topics/{topic}/events", get(list))
            .with_state(self)
    }
}

/// Events returned when `limit` is not given.
const DEFAULT_LIMIT: usize = 100;
/// The largest `limit` a request may name (the document's: a 32-bit integer); more than the
/// server's cap (1,000 events) is read as the cap.
const MAX_LIMIT_PARAM: u32 = i32::MAX as u32;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Params {
    after: Option<String>,
    limit: Option<std::num::NonZeroU32>,
}

/// One event as JSON.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Event)]
pub struct EventJson<'a> {
    /// The SSE id.
    #[schema(value_type = String, example = "5f3a09c2-1")]
    pub id: EventId,
    /// The topic.
    pub topic: &'a str,
    /// The event type.
    #[serde(rename = "type")]
    pub event_type: &'a str,
    /// The data, as published.
    #[schema(value_type = serde_json::Value)]
    pub data: &'a RawValue,
    /// When it was accepted (ms since the Unix epoch).
    pub time: u64,
}

impl<'a> EventJson<'a> {
    /// The JSON view of a stored event.
    pub fn new(bounds: &Bounds, event: &'a Event) -> Self {
        Self {
            id: EventId::new(bounds.epoch, event.seq),
            topic: event.topic.as_str(),
            event_type: event.event_type.as_str(),
            data: &event.data,
            time: event.time_ms,
        }
    }
}

/// The history answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct History<'a> {
    /// The events, oldest first.
    pub events: Vec<EventJson<'a>>,
    /// The newest id of the deployment when the read started.
    #[schema(value_type = String)]
    pub head: EventId,
}

/// A topic's events as JSON: the newest `limit`, or those after `after`; `head` is the id to
/// resume a stream from.
#[utoipa::path(
    get,
    path = "/v1/topics/{topic}/events", operation_id = "history",
    tag = "read",
    params(
        ("topic" = String, Path, pattern = "^[A-Za-z0-9_-]+(\\.[A-Za-z0-9_-]+)*$", max_length = 128, description = "The topic"),
        ("after" = Option<String>, Query, pattern = "^[0-9a-fA-F]{8}-[0-9]{1,19}$", description = "An id: the events after it"),
        ("limit" = Option<i32>, Query, minimum = 1, maximum = 2147483647, description = "At most this many events (default 100, capped at the server's limit)"),
    ),
    responses(
        (status = 200, description = "The events, oldest first", body = History<'_>),
        (status = 400, description = "An invalid topic, a malformed id or query", body = herald_runtime::openapi::ErrorBody),
        (status = 401, description = "No valid token where one is needed", body = herald_runtime::openapi::ErrorBody),
        (status = 403, description = "The token's grants do not cover the topic", body = herald_runtime::openapi::ErrorBody),
        (status = 409, description = "`after` is beyond the head (`unknown_id`)", body = herald_runtime::openapi::ErrorBody),
        (status = 410, description = "`after` is older than the retained history or of another epoch", body = herald_runtime::openapi::ErrorBody),
        (status = 429, description = "Over the history rate", body = herald_runtime::openapi::ErrorBody),
        (status = 503, description = "The store is unavailable", body = herald_runtime::openapi::ErrorBody),
    )
)]
pub(crate) async fn list(
    State(reader): State<HistoryReader>,
    Path(topic): Path<String>,
    headers: HeaderMap,
    Query(params): Query<Params>,
) -> Result<Response, ApiError> {
    let principal = reader.access.identify(&headers, None).await?;
    let topic =
        Topic::new(&topic).map_err(|e| ApiError::new(ErrorCode::InvalidTopic, e.to_string()))?;
    principal.may_subscribe([topic.as_str()])?;
    reader
        .access
        .limits()
        .take_subject(herald_auth::limits::Kind::History, principal.subject())?;
    let limit = match params.limit {
        None => DEFAULT_LIMIT,
        Some(l) if l.get() <= MAX_LIMIT_PARAM => l.get() as usize,
        Some(l) => {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!("limit={l}: give 1 to {MAX_LIMIT_PARAM}"),
            ));
        }
    }
    .min(reader.limit);
    let (bounds, events) = read(&reader, &topic, params.after.as_deref(), limit).await?;
    let history = History {
        events: events.iter().map(|e| EventJson::new(&bounds, e)).collect(),
        head: EventId::new(bounds.epoch, bounds.head),
    };
    // Serialized here, while the events it borrows are alive; `data` stays byte for byte.
    Ok(Json(&history).into_response())
}

/// Reads the bounds first, then the events, so `head` never runs ahead of what was read.
pub(crate) async fn read(
    reader: &HistoryReader,
    topic: &Topic,
    after: Option<&str>,
    limit: usize,
) -> Result<(Bounds, Vec<Arc<Event>>), ApiError> {
    let bounds = reader.store.bounds().await.map_err(|e| {
        reader.metrics.store_error(StoreOp::Bounds);
        ApiError::from(e)
    })?;
    let events = match after {
        None => reader.store.latest(topic, limit).await,
        Some(after) => {
            let after = match ResumeVerdict::judge(after, bounds) {
                ResumeVerdict::Recovered { after } => after,
                ResumeVerdict::NotRecovered {
                    reason,
                    earliest,
                    head,
                } => {
                    return Err(refused(reason, earliest, head));
                }
            };
            let query = ReadQuery {
                filter: TopicFilter::topics([topic.clone()]),
                after,
                limit,
            };
            reader.store.read(query).await.map(|page| page.events)
        }
    };
    let events = events.map_err(|e| {
        reader.metrics.store_error(StoreOp::Read);
        ApiError::from(e)
    })?;
    Ok((bounds, events))
}

fn refused(reason: ResumeReason, earliest: EventId, head: EventId) -> ApiError {
    let code = match reason {
        ResumeReason::Malformed => ErrorCode::MalformedId,
        ResumeReason::Unknown => ErrorCode::UnknownId,
        ResumeReason::Expired => ErrorCode::ExpiredId,
        ResumeReason::Epoch => ErrorCode::EpochId,
    };
    ApiError::new(
        code,
        format!(
            "`after` cannot be served ({}); the retained ids run from {earliest} to {head}",
            reason.as_str()
        ),
    )
}
