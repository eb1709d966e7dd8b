//! The API's one error vocabulary: [`ErrorCode`] says what went wrong and decides the status,
//! [`ApiError`] is the answer (one `IntoResponse`: the status, `Retry-After` when a retry may
//! work, and `{"error": {"code", "message"}}`), and a [`StoreError`] maps to the same answer on
//! every endpoint.

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use herald_store::StoreError;
use serde_json::json;

/// Seconds a client is asked to wait before retrying a transient refusal.
const RETRY_AFTER: u64 = 1;

macro_rules! codes {
    ($($(#[$doc:meta])* $name:ident = $text:literal, $status:ident;)*) => {
        /// Every error code the API answers with. Each has one status, whichever endpoint
        /// answers it.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $($(#[$doc])* $name,)*
        }

        impl ErrorCode {
            /// Every code.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$name),*];

            /// The code as it is written in answers (`invalid_topic`).
            pub fn as_str(self) -> &'static str {
                match self { $(ErrorCode::$name => $text,)* }
            }

            /// The status every answer with this code has.
            pub fn status(self) -> StatusCode {
                match self { $(ErrorCode::$name => StatusCode::$status,)* }
            }
        }
    };
}

codes! {
    /// A request whose target, query or headers the server does not understand (a query
    /// parameter of the wrong kind, a path that is not UTF-8).
    InvalidRequest = "invalid_request", BAD_REQUEST;
    /// A topic or pattern that is not valid.
    InvalidTopic = "invalid_topic", BAD_REQUEST;
    /// An event type that is not valid.
    InvalidType = "invalid_type", BAD_REQUEST;
    /// Event data that is not valid JSON.
    InvalidData = "invalid_data", BAD_REQUEST;
    /// A body that is not the expected JSON.
    InvalidJson = "invalid_json", BAD_REQUEST;
    /// A body that could not be read.
    UnreadableBody = "unreadable_body", BAD_REQUEST;
    /// An `Idempotency-Key` that is not valid.
    InvalidIdempotencyKey = "invalid_idempotency_key", BAD_REQUEST;
    /// A batch with no events.
    EmptyBatch = "empty_batch", BAD_REQUEST;
    /// A stream that names no topic.
    MissingTopic = "missing_topic", BAD_REQUEST;
    /// A stream that names more topics than `--max-topics`.
    TooManyTopics = "too_many_topics", BAD_REQUEST;
    /// A history `after=` that is not an id.
    MalformedId = "malformed_id", BAD_REQUEST;
    /// No valid token where one is needed: none given, or one that does not verify (expired,
    /// bad signature, wrong audience...).
    Unauthorized = "unauthorized", UNAUTHORIZED;
    /// A valid token whose grants do not cover a topic asked for.
    Forbidden = "forbidden", FORBIDDEN;
    /// No such endpoint.
    NotFound = "not_found", NOT_FOUND;
    /// An endpoint that does not take this method (`Allow` lists those it takes).
    MethodNotAllowed = "method_not_allowed", METHOD_NOT_ALLOWED;
    /// A request body that did not arrive within `--body-timeout`.
    RequestTimeout = "request_timeout", REQUEST_TIMEOUT;
    /// A history `after=` beyond the head.
    UnknownId = "unknown_id", CONFLICT;
    /// A history `after=` older than the retained history.
    ExpiredId = "expired_id", GONE;
    /// A history `after=` from an earlier epoch.
    EpochId = "epoch_id", GONE;
    /// A request target over `--max-url-length`.
    UriTooLong = "uri_too_long", URI_TOO_LONG;
    /// A body over `--max-body`, a batch over `--max-batch`.
    PayloadTooLarge = "payload_too_large", PAYLOAD_TOO_LARGE;
    /// A write whose body is not declared JSON.
    UnsupportedMediaType = "unsupported_media_type", UNSUPPORTED_MEDIA_TYPE;
    /// An `Idempotency-Key` reused with a different request.
    IdempotencyConflict = "idempotency_conflict", UNPROCESSABLE_ENTITY;
    /// A failure the client cannot fix; the cause is logged, not shown.
    Internal = "internal", INTERNAL_SERVER_ERROR;
    /// A client over one of its rates (`--stream-open-rate`, `--publish-rate`, ...).
    TooManyRequests = "too_many_requests", TOO_MANY_REQUESTS;
    /// A stream over `--max-connections`.
    TooManyConnections = "too_many_connections", SERVICE_UNAVAILABLE;
    /// The server is shutting down.
    Draining = "draining", SERVICE_UNAVAILABLE;
    /// A backend (NATS, MongoDB, the store) is unreachable.
    Unavailable = "unavailable", SERVICE_UNAVAILABLE;
}

/// Every error the HTTP API answers with: a code (which decides the status) and a message for
/// people. Internals are never shown; the server logs them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct ApiError {
    /// The HTTP status (the code's).
    pub status: StatusCode,
    /// The stable machine-readable code.
    pub code: ErrorCode,
    /// What went wrong, for a person.
    pub message: String,
    /// Seconds to wait before retrying (sent as `Retry-After`).
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with this code and message; a 503 carries `Retry-After`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let status = code.status();
        Self {
            status,
            code,
            message: message.into(),
            retry_after: (status == StatusCode::SERVICE_UNAVAILABLE).then_some(RETRY_AFTER),
        }
    }

    /// 413 Payload Too Large.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::PayloadTooLarge, message)
    }

    /// A 503 asking the client to retry after `secs`.
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// 500, for failures the client cannot fix; the cause is logged, not shown.
    pub fn internal(cause: &(dyn std::error::Error + 'static)) -> Self {
        tracing::error!(error = %cause, source = ?cause.source(), "request failed");
        Self::new(
            ErrorCode::Internal,
            "internal error; the request may be retried",
        )
    }
}

/// The one mapping from store and bus failures to answers: the same cause gets the same status
/// on every endpoint (an unreachable backend is 503 with `Retry-After` for a publish, a stream
/// and a history read alike).
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::IdempotencyConflict => {
                Self::new(ErrorCode::IdempotencyConflict, e.to_string())
            }
            StoreError::Closed => {
                Self::new(ErrorCode::Draining, "this server is shutting down; retry")
            }
            StoreError::Unavailable(_) => {
                tracing::warn!(error = %e, "a backend is unavailable");
                Self::new(
                    ErrorCode::Unavailable,
                    "the event log is unavailable; retry (a publish with the same Idempotency-Key)",
                )
            }
            StoreError::Backend(_) => Self::internal(&e),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(crate::openapi::ErrorBody {
            error: crate::openapi::ErrorDetail {
                code: self.code,
                message: self.message,
            },
        });
        let mut response = (self.status, body).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl ApiError {
    /// This refusal of a stream, said in a way a native `EventSource` survives (it gives up for
    /// good on any status but 200): `200 text/event-stream`, `retry:` with the delay, then
    /// `event: herald.refused` with `{"code", "retry_ms", "message"}`, then the end. The delay
    /// is the larger of `at_least` (the server's `--retry`) and the error's `Retry-After`,
    /// stretched at random by up to half, so the clients turned away do not all come back at
    /// once. No `id:` is sent: the browser keeps its Last-Event-ID for the next attempt.
    pub fn into_stream_refusal(self, at_least: std::time::Duration) -> Response {
        let base = at_least.max(std::time::Duration::from_secs(
            self.retry_after.unwrap_or(0),
        ));
        let delay = base + crate::drain::jitter(base / 2);
        let retry_ms = delay.as_millis() as u64;
        let data = json!({
            "code": self.code.as_str(),
            "retry_ms": retry_ms,
            "message": self.message,
        });
        let mut body = Vec::new();
        body.extend_from_slice(&herald_core::sse::retry(retry_ms));
        body.extend_from_slice(&herald_core::sse::control(
            "herald.refused",
            &data.to_string(),
        ));
        let mut response = axum::body::Body::from(body).into_response();
        let h = response.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(herald_core::sse::CONTENT_TYPE),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        response
    }
}

/// The most of a non-JSON error body kept as the message of its JSON answer.
const MAX_MESSAGE: usize = 512;

/// Middleware making every error answer the API's JSON shape: those the handlers give are
/// already; what the framework answers on its own (a query or path it could not read, a method
/// an endpoint does not take, an unknown path) comes as plain text or empty, and is rewritten
/// with the code its status means, keeping its headers (`Allow`) and its text as the message.
pub async fn json_errors(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) || is_json(&response) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = match axum::body::to_bytes(body, MAX_MESSAGE * 4).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).trim().to_owned(),
        Err(_) => String::new(),
    };
    let code = code_for(status);
    let message = match (text.is_empty(), code) {
        (false, _) => text.chars().take(MAX_MESSAGE).collect(),
        (true, ErrorCode::MethodNotAllowed) => "this endpoint does not take this method".into(),
        (true, ErrorCode::NotFound) => "no such endpoint".into(),
        (true, _) => status
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase(),
    };
    let answer = ApiError::new(code, message).into_response();
    parts.headers.remove(header::CONTENT_TYPE);
    parts.headers.remove(header::CONTENT_LENGTH);
    let (answer_parts, answer_body) = answer.into_parts();
    parts.status = answer_parts.status;
    parts.headers.extend(answer_parts.headers);
    Response::from_parts(parts, answer_body)
}

fn is_json(response: &Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// The code of a framework's own error answer, by its status.
fn code_for(status: StatusCode) -> ErrorCode {
    ErrorCode::ALL
        .iter()
        .copied()
        .find(|code| code.status() == status && code.is_generic())
        .unwrap_or(if status.is_client_error() {
            ErrorCode::InvalidRequest
        } else {
            ErrorCode::Internal
        })
}

impl ErrorCode {
    /// The code that stands for its status as a whole, for answers no handler chose a code for.
    fn is_generic(self) -> bool {
        matches!(
            self,
            ErrorCode::InvalidRequest
                | ErrorCode::Unauthorized
                | ErrorCode::Forbidden
                | ErrorCode::NotFound
                | ErrorCode::MethodNotAllowed
                | ErrorCode::RequestTimeout
                | ErrorCode::UriTooLong
                | ErrorCode::PayloadTooLarge
                | ErrorCode::UnsupportedMediaType
                | ErrorCode::TooManyRequests
                | ErrorCode::Internal
                | ErrorCode::Unavailable
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_sent() {
        let r = ApiError::new(ErrorCode::Draining, "try later")
            .retry_after(3)
            .into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "3");
    }

    #[test]
    fn an_unreachable_backend_is_503_with_retry_after() {
        let e = ApiError::from(StoreError::Unavailable("mongodb timed out".into()));
        assert_eq!(
            (e.status, e.code),
            (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable)
        );
        assert_eq!(e.retry_after, Some(RETRY_AFTER));
        let e = ApiError::from(StoreError::Backend("disk".into()));
        assert_eq!(
            (e.status, e.retry_after),
            (StatusCode::INTERNAL_SERVER_ERROR, None)
        );
    }

    /// The API document's error table lists every code with its status, and nothing else.
    #[test]
    fn the_documented_error_table_matches_the_codes() {
        let doc =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/api.md"))
                .expect("docs/api.md");
        let table = doc
            .split("## Errors and limits")
            .nth(1)
            .expect("an Errors and limits section")
            .lines()
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'))
            .skip(2);
        let mut documented = Vec::new();
        for row in table {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let status: u16 = cells[1][..3].parse().expect("a status first");
            for code in cells[2].split('`').skip(1).step_by(2) {
                documented.push((code.to_owned(), status));
            }
        }
        documented.sort();
        let mut codes: Vec<(String, u16)> = ErrorCode::ALL
            .iter()
            .map(|c| (c.as_str().to_owned(), c.status().as_u16()))
            .collect();
        codes.sort();
        assert_eq!(documented, codes);
    }

    async fn answer(
        app: axum::Router,
        request: axum::extract::Request,
    ) -> (StatusCode, axum::http::HeaderMap, serde_json::Value) {
        use tower_service::Service as _;
        let mut app = app.layer(axum::middleware::from_fn(json_errors));
        let response = app.call(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, 1 << 16).await.unwrap();
        (
            parts.status,
            parts.headers,
            serde_json::from_slice(&bytes).unwrap_or_default(),
        )
    }

    /// The framework's own refusals (a query it could not read, a method not taken, no route)
    /// become the API's JSON errors; a handler's JSON error and a success pass unchanged.
    #[tokio::test]
    async fn every_error_answer_is_json() {
        use axum::{body::Body, extract::Query, routing::get};
        #[derive(serde::Deserialize)]
        struct Params {
            #[allow(dead_code)]
            limit: u32,
        }
        let app = axum::Router::new()
            .route("/q", get(|Query(_): Query<Params>| async { "ok" }))
            .route(
                "/refused",
                get(|| async { ApiError::new(ErrorCode::Forbidden, "no") }),
            );
        let get = |uri: &str| axum::http::Request::get(uri).body(Body::empty()).unwrap();

        let (status, headers, body) = answer(app.clone(), get("/q?limit=x")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(headers[header::CONTENT_TYPE], "application/json");
        assert_eq!(body["error"]["code"], "invalid_request");
        assert!(
            body["error"]["message"].as_str().unwrap().contains("limit"),
            "{body}"
        );

        let post = axum::http::Request::post("/q").body(Body::empty()).unwrap();
        let (status, headers, body) = answer(app.clone(), post).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(body["error"]["code"], "method_not_allowed");
        assert!(headers[header::ALLOW].to_str().unwrap().contains("GET"));

        let (status, _, body) = answer(app.clone(), get("/nowhere")).await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (StatusCode::NOT_FOUND, &"not_found".into())
        );

        let (status, _, body) = answer(app.clone(), get("/refused")).await;
        assert_eq!(
            (status, &body["error"]["message"]),
            (StatusCode::FORBIDDEN, &"no".into())
        );

        let (status, _, _) = answer(app, get("/q?limit=3")).await;
        assert_eq!(status, StatusCode::OK);
    }
}
