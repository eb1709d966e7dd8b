//! The publish endpoints.

use std::{sync::Arc, time::Instant};

use axum::{
    Json,
    body::Body,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use herald_core::{Batch, EventId, EventType, NewEvent, PublishBody, Topic, ValidationError};
use herald_runtime::openapi::ErrorBody;
use herald_runtime::{ApiError, ErrorCode, http::read_json};
use herald_store::{Appended, Idempotency, StoreError};
use herald_telemetry::{PublishOutcome, StoreOp};
use serde::Serialize;
use serde_json::value::RawValue;
use tracing::{Instrument, Span};

use crate::IngestState;

/// The longest `Idempotency-Key` accepted.
const MAX_KEY_LEN: usize = 256;

/// The span of reading and validating a publish body (only when traces are exported).
fn validate_span() -> Span {
    if herald_telemetry::traces_enabled() {
        tracing::info_span!("validate")
    } else {
        Span::none()
    }
}

/// Counts a publish request by outcome: `created`, `duplicate` (the Idempotency-Key was
/// answered before), `rejected` (4xx) or `unavailable` (5xx).
fn counted(state: &IngestState, result: Result<Response, ApiError>) -> Result<Response, ApiError> {
    let outcome = match &result {
        Ok(r) if r.headers().contains_key("idempotent-replayed") => PublishOutcome::Duplicate,
        Ok(_) => PublishOutcome::Created,
        Err(e) if e.status.is_server_error() => PublishOutcome::Unavailable,
        Err(_) => PublishOutcome::Rejected,
    };
    state.metrics.publish_request(outcome);
    result
}

/// A published event: its id and topic.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Published {
    /// The event's id (`<epoch>-<seq>`), for `Last-Event-ID` and history's `after`.
    #[schema(value_type = String, example = "5f3a09c2-1")]
    pub id: EventId,
    /// Where it was published.
    #[schema(value_type = String, example = "scores")]
    pub topic: Topic,
}

/// A published batch: each event's id and topic, in the batch's order.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PublishedBatch {
    /// The events, in order.
    pub events: Vec<Published>,
}

/// Publish one event to a topic: `201` once it is committed (on disk, or acknowledged by
/// JetStream and written to MongoDB).
#[utoipa::path(
    post,
    path = "/v1/topics/{topic}/events", operation_id = "publish",
    tag = "publish",
    params(
        ("topic" = String, Path, pattern = "^[A-Za-z0-9_-]+(\\.[A-Za-z0-9_-]+)*$", max_length = 128, description = "The topic: 1–128 characters of `[A-Za-z0-9_.-]` in dot-separated levels"),
        ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]([ -~]{0,254}[!-~])?$", description = "Makes the publish idempotent within the idempotency window: the same key and body answer the first result again"),
    ),
    request_body(content = PublishBody, content_type = "application/json"),
    responses(
        (status = 201, description = "Committed", body = Published,
            headers(("Idempotent-Replayed" = String, description = "`true` when the key was answered before: nothing new was stored"))),
        (status = 400, description = "Invalid topic, type, data, JSON or Idempotency-Key", body = ErrorBody),
        (status = 401, description = "No valid token where one is needed", body = ErrorBody),
        (status = 403, description = "The token's grants do not cover the topic", body = ErrorBody),
        (status = 408, description = "The body did not arrive within --body-timeout", body = ErrorBody),
        (status = 413, description = "A body over --max-body", body = ErrorBody),
        (status = 415, description = "The body is not declared application/json", body = ErrorBody),
        (status = 422, description = "The Idempotency-Key was used with another body", body = ErrorBody),
        (status = 429, description = "Over the publish rate", body = ErrorBody),
        (status = 503, description = "The event log is unavailable; retry with the same Idempotency-Key", body = ErrorBody),
    )
)]
pub(crate) async fn one(
    State(state): State<Arc<IngestState>>,
    Path(topic): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let result = async {
        // Decided from the head, before the body is read.
        let principal = state.config.access.identify(&headers, None).await?;
        let valid = Topic::new(&topic).map_err(invalid)?;
        principal.may_publish([valid.as_str()])?;
        charge(&state, &principal)?;
        let event = async {
            let body: PublishBody = read_json(body, state.config.max_body_bytes).await?;
            body.into_event(&topic).map_err(invalid)
        }
        .instrument(validate_span())
        .await?;
        single(&state, started, event, &headers).await
    }
    .await;
    counted(&state, result)
}

/// Publish a batch, all or nothing, ids in order.
#[utoipa::path(
    post,
    path = "/v1/events", operation_id = "publishBatch",
    tag = "publish",
    params(
        ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]([ -~]{0,254}[!-~])?$", description = "Makes the batch idempotent: the same key and body answer the first result again"),
    ),
    request_body(content = Batch, content_type = "application/json"),
    responses(
        (status = 201, description = "Committed, every event", body = PublishedBatch,
            headers(("Idempotent-Replayed" = String, description = "`true` when the key was answered before"))),
        (status = 400, description = "An invalid event (the message names it), an empty batch, bad JSON", body = ErrorBody),
        (status = 401, description = "No valid token where one is needed", body = ErrorBody),
        (status = 403, description = "The token's grants do not cover a topic of the batch", body = ErrorBody),
        (status = 408, description = "The body did not arrive within --body-timeout", body = ErrorBody),
        (status = 413, description = "A body over --max-body or a batch over --max-batch", body = ErrorBody),
        (status = 415, description = "The body is not declared application/json", body = ErrorBody),
        (status = 422, description = "The Idempotency-Key was used with another body", body = ErrorBody),
        (status = 429, description = "Over the publish rate", body = ErrorBody),
        (status = 503, description = "The event log is unavailable; retry with the same Idempotency-Key", body = ErrorBody),
    )
)]
pub(crate) async fn batch(
    State(state): State<Arc<IngestState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let result = batch_inner(&state, started, &headers, body).await;
    counted(&state, result)
}

async fn batch_inner(
    state: &IngestState,
    started: Instant,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    // The token is checked from the head, before the body is read; the topics, once it is.
    let principal = state.config.access.identify(headers, None).await?;
    let events = async {
        let Batch(items) = read_json(body, state.config.max_body_bytes).await?;
        if items.is_empty() {
            return Err(ApiError::new(
                ErrorCode::EmptyBatch,
                "the batch has no events",
            ));
        }
        if items.len() > state.config.max_batch {
            return Err(ApiError::too_large(format!(
                "the batch has {} events; the limit is {}",
                items.len(),
                state.config.max_batch
            )));
        }
        items
            .into_iter()
            .map(|i| i.into_event().map_err(invalid))
            .collect::<Result<Vec<_>, _>>()
    }
    .instrument(validate_span())
    .await?;
    principal.may_publish(events.iter().map(|e| e.topic.as_str()))?;
    charge(state, &principal)?;
    let topics: Vec<Topic> = events.iter().map(|e| e.topic.clone()).collect();
    let appended = commit(state, events, headers).await?;
    let events = appended
        .seqs
        .iter()
        .zip(topics)
        .map(|(&seq, topic)| Published {
            id: EventId::new(appended.epoch, seq),
            topic,
        })
        .collect();
    Ok(answer(
        state,
        started,
        &appended,
        &PublishedBatch { events },
    ))
}

/// The original article's publish: the body is the event's data, on the compatibility topic.
#[utoipa::path(
    put,
    path = "/api/post-update", operation_id = "postUpdate",
    tag = "publish",
    params(
        ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]([ -~]{0,254}[!-~])?$", description = "Makes the publish idempotent"),
    ),
    request_body(content = serde_json::Value, content_type = "application/json", description = "Any JSON: the event's data"),
    responses(
        (status = 201, description = "Committed", body = Published),
        (status = 400, description = "Not JSON", body = ErrorBody),
        (status = 401, description = "No valid token where one is needed", body = ErrorBody),
        (status = 403, description = "The token's grants do not cover the topic", body = ErrorBody),
        (status = 408, description = "The body did not arrive within --body-timeout", body = ErrorBody),
        (status = 413, description = "A body over --max-body", body = ErrorBody),
        (status = 415, description = "The body is not declared application/json", body = ErrorBody),
        (status = 422, description = "The Idempotency-Key was used with another body", body = ErrorBody),
        (status = 429, description = "Over the publish rate", body = ErrorBody),
        (status = 503, description = "The event log is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn compat(
    State(state): State<Arc<IngestState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let result = async {
        let principal = state.config.access.identify(&headers, None).await?;
        principal.may_publish([state.config.compat_topic.as_str()])?;
        charge(&state, &principal)?;
        let data: Box<RawValue> = read_json(body, state.config.max_body_bytes)
            .instrument(validate_span())
            .await?;
        let event = NewEvent {
            topic: state.config.compat_topic.clone(),
            event_type: EventType::default(),
            data,
        };
        single(&state, started, event, &headers).await
    }
    .await;
    counted(&state, result)
}

/// Counts a publish against its token subject's rate (the address's was counted at the edge).
fn charge(state: &IngestState, principal: &herald_auth::Principal) -> Result<(), ApiError> {
    state
        .config
        .access
        .limits()
        .take_subject(herald_auth::limits::Kind::Publish, principal.subject())
}

/// Commits one event and answers `201 {"id", "topic"}`.
async fn single(
    state: &IngestState,
    started: Instant,
    event: NewEvent,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let topic = event.topic.clone();
    let appended = commit(state, vec![event], headers).await?;
    let id = EventId::new(appended.epoch, appended.seqs[0]);
    Ok(answer(state, started, &appended, &Published { id, topic }))
}

fn invalid(e: ValidationError) -> ApiError {
    let code = match e {
        ValidationError::Topic(_) | ValidationError::Pattern(_) => ErrorCode::InvalidTopic,
        ValidationError::EventType(_) | ValidationError::ReservedType(_) => ErrorCode::InvalidType,
        ValidationError::Data(_) => ErrorCode::InvalidData,
        ValidationError::IdempotencyKey => ErrorCode::InvalidIdempotencyKey,
    };
    ApiError::new(code, e.to_string())
}

async fn commit(
    state: &IngestState,
    events: Vec<NewEvent>,
    headers: &HeaderMap,
) -> Result<Appended, ApiError> {
    let idempotency = idempotency(headers, &events)?;
    state.log.append(events, idempotency).await.map_err(|e| {
        if matches!(e, StoreError::Unavailable(_) | StoreError::Backend(_)) {
            state.metrics.store_error(StoreOp::Append);
        }
        ApiError::from(e)
    })
}

/// Reads `Idempotency-Key` and fingerprints the request it comes with.
fn idempotency(headers: &HeaderMap, events: &[NewEvent]) -> Result<Option<Idempotency>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| {
            !k.is_empty()
                && k.len() <= MAX_KEY_LEN
                && k.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
        })
        .ok_or_else(|| invalid(ValidationError::IdempotencyKey))?;
    Ok(Some(Idempotency {
        key: key.to_owned(),
        fingerprint: fingerprint(events),
    }))
}

/// The fingerprint of a publish, for idempotency: FNV-1a over every event's topic, type and
/// data, stable across processes and versions.
pub fn fingerprint(events: &[NewEvent]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for e in events {
        for part in [e.topic.as_str(), e.event_type.as_str(), e.data.get()] {
            for b in part.bytes().chain([0xff]) {
                hash ^= u64::from(b);
                hash = hash.wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    hash
}

fn answer(
    state: &IngestState,
    started: Instant,
    appended: &Appended,
    body: &impl Serialize,
) -> Response {
    let mut response = (StatusCode::CREATED, Json(body)).into_response();
    if appended.duplicate {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    } else {
        state
            .metrics
            .events_published
            .inc_by(appended.seqs.len() as u64);
    }
    state
        .metrics
        .publish_duration
        .observe(started.elapsed().as_secs_f64());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_event(
        topic: &str,
        event_type: Option<&str>,
        data: Box<RawValue>,
    ) -> Result<NewEvent, ApiError> {
        NewEvent::checked(topic, event_type, data).map_err(invalid)
    }

    fn ev(data: &str) -> NewEvent {
        new_event("t", None, RawValue::from_string(data.into()).unwrap()).unwrap()
    }

    #[test]
    fn fingerprints_tell_requests_apart() {
        assert_eq!(fingerprint(&[ev("1")]), fingerprint(&[ev("1")]));
        assert_ne!(fingerprint(&[ev("1")]), fingerprint(&[ev("2")]));
        assert_ne!(fingerprint(&[ev("1"), ev("2")]), fingerprint(&[ev("12")]));
    }

    #[test]
    fn injection_attempts_are_invalid() {
        let data = || RawValue::from_string("1".into()).unwrap();
        assert!(new_event("a\nb", None, data()).is_err());
        assert!(new_event("a", Some("x\r\nid: 9"), data()).is_err());
        assert!(new_event("a", Some("x\0"), data()).is_err());
        for reserved in ["herald.resume", "herald.live", "herald.x", "error", "open"] {
            let e = new_event("a", Some(reserved), data()).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidType, "{reserved}");
        }
        assert!(new_event("a", Some("heraldic"), data()).is_ok());
        let mut h = HeaderMap::new();
        h.insert("idempotency-key", HeaderValue::from_static("k"));
        assert!(idempotency(&h, &[]).unwrap().is_some());
        h.insert("idempotency-key", HeaderValue::from_bytes(b"a\tb").unwrap());
        assert!(idempotency(&h, &[]).is_err());
    }
}
