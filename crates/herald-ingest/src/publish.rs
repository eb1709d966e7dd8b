//! The publish endpoints.

use std::{sync::Arc, time::Instant};

use axum::{
    Json,
    body::Body,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use herald_core::{BatchItem, EventId, EventType, NewEvent, PublishBody, Topic, ValidationError};
use herald_runtime::{ApiError, ErrorCode, http::read_json};
use herald_store::{Appended, Idempotency, StoreError};
use herald_telemetry::{PublishOutcome, StoreOp};
use serde_json::{json, value::RawValue};
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

/// `POST /v1/topics/{topic}/events`
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

/// `POST /v1/events`: all or nothing, ids in order.
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
        let items: Vec<BatchItem> = read_json(body, state.config.max_body_bytes).await?;
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
    let listed: Vec<_> = appended
        .seqs
        .iter()
        .zip(&topics)
        .map(|(&seq, topic)| json!({ "id": EventId::new(appended.epoch, seq), "topic": topic }))
        .collect();
    Ok(answer(
        state,
        started,
        &appended,
        json!({ "events": listed }),
    ))
}

/// `PUT /api/post-update`: the article's publish; the body is the event's data.
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
    let body = json!({ "id": id, "topic": topic });
    Ok(answer(state, started, &appended, body))
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
    body: serde_json::Value,
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
