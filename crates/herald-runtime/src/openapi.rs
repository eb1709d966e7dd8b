//! The API's OpenAPI 3.1 document. Each service crate describes its own endpoints with
//! `#[utoipa::path]` on its handlers and the types they read and answer; this module holds what
//! they share — the error answer ([`ErrorBody`], every [`ErrorCode`]), the security schemes, the
//! ops routes — and [`document`], which puts the parts together. Every Herald process serves the
//! whole document at `/v1/openapi.json` ([`route`]); `docs/openapi.json` is a copy that a test
//! keeps current.

use std::{borrow::Cow, sync::Arc};

use axum::{
    Router,
    http::{HeaderValue, header},
    response::IntoResponse,
    routing::get,
};
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::{
    OpenApi, PartialSchema, ToSchema,
    openapi::{
        self, ObjectBuilder, RefOr, Schema,
        schema::Type,
        security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme},
    },
};

use crate::ErrorCode;

/// Every error answer: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The inside of an error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// The stable machine-readable code; it decides the status.
    pub code: ErrorCode,
    /// What went wrong, for a person.
    pub message: String,
}

impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl PartialSchema for ErrorCode {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(ErrorCode::ALL.iter().map(|c| c.as_str())))
            .description(Some(format!(
                "The error's code; each has one status, whichever operation answers it: {}.",
                ErrorCode::ALL
                    .iter()
                    .map(|c| format!("`{}` {}", c.as_str(), c.status().as_u16()))
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
            .into()
    }
}

impl ToSchema for ErrorCode {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("ErrorCode")
    }
}

/// `GET /healthz`: the process is alive.
#[utoipa::path(get, path = "/healthz", operation_id = "healthz", tag = "ops", security(()),
    responses((status = 200, description = "Alive: `{\"status\":\"ok\"}`", body = Object)))]
#[allow(dead_code)]
fn healthz() {}

/// `GET /readyz`: whether the process takes traffic.
#[utoipa::path(get, path = "/readyz", operation_id = "readyz", tag = "ops", security(()),
    responses(
        (status = 200, description = "Ready", body = Object),
        (status = 503, description = "Not ready: draining, withdrawn by `/prestop`, or a backend check failing", body = Object),
    ))]
#[allow(dead_code)]
fn readyz() {}

/// `GET /metrics`: Prometheus / OpenMetrics text.
#[utoipa::path(get, path = "/metrics", operation_id = "metrics", tag = "ops", security(()),
    responses((status = 200, description = "The metrics", content_type = "application/openmetrics-text", body = String)))]
#[allow(dead_code)]
fn metrics() {}

/// `GET /v1/openapi.json`: this document.
#[utoipa::path(get, path = "/v1/openapi.json", operation_id = "openapi", tag = "ops", security(()),
    responses((status = 200, description = "The OpenAPI document", body = Object)))]
#[allow(dead_code)]
fn openapi_json() {}

/// The shared part: the ops routes, the error schema, the security schemes.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Herald",
        description = "Server-Sent Events that never lose an event: publish, stream with Last-Event-ID resume, history. See docs/api.md and docs/security.md.",
        license(name = "MIT OR Apache-2.0"),
    ),
    paths(healthz, readyz, metrics, openapi_json),
    components(schemas(ErrorBody, ErrorDetail, ErrorCode)),
    modifiers(&Security),
    security((), ("bearer" = []), ("cookie" = [])),
    tags(
        (name = "publish", description = "Publishing events (the ingest)"),
        (name = "read", description = "Streams and history (the gateways)"),
        (name = "auth", description = "The token cookie for EventSource"),
        (name = "pages", description = "The demo and the article's pages"),
        (name = "ops", description = "Health, readiness, metrics, this document"),
    )
)]
struct Shared;

/// The security schemes: a bearer token, the HttpOnly cookie an `EventSource` sends. Which
/// topics need one is the server's configuration (anonymous patterns), so every operation also
/// allows none.
struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, openapi: &mut openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A JWT with a `herald` claim granting topic patterns (docs/security.md)",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "cookie",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                "herald_token",
                "The same JWT in the HttpOnly cookie set by POST /v1/auth/cookie (name: --auth-cookie)",
            ))),
        );
    }
}

/// The whole document, as JSON: the shared part and the services' `parts`, in that order, and the
/// links between operations.
pub fn document(parts: impl IntoIterator<Item = openapi::OpenApi>) -> Value {
    let mut doc = Shared::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    for part in parts {
        doc.merge(part);
    }
    let mut doc = serde_json::to_value(&doc).expect("the document serializes");
    everywhere(
        &mut doc,
        "414",
        "A request target over --max-url-length (or a proxy's limit)",
    );
    link(
        &mut doc,
        "/v1/topics/{topic}/events",
        "history",
        json!({ "topic": "$request.path.topic", "after": "$response.body#/id" }),
    );
    link(
        &mut doc,
        "/v1/events",
        "history",
        json!({ "topic": "$response.body#/events/0/topic", "after": "$response.body#/events/0/id" }),
    );
    doc
}

/// Adds the error answer `status` to every operation that does not name it: one the edge can
/// give on any path, before a handler runs.
fn everywhere(doc: &mut Value, status: &str, description: &str) {
    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    for operation in paths.values_mut().filter_map(Value::as_object_mut) {
        for op in operation.values_mut() {
            let responses = &mut op["responses"];
            if responses.get(status).is_none() {
                responses[status] = json!({
                    "description": description,
                    "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } },
                });
            }
        }
    }
}

/// Links the `201` answer of `POST from` to the operation `to`, its parameters filled from the
/// request and the answer: a client, or an API fuzzer testing sequences, reads what it just
/// published. (Written into the JSON: utoipa 5 spells a link's `operationId` `operation_id`.)
fn link(doc: &mut Value, from: &str, to: &str, parameters: Value) {
    let created = &mut doc["paths"][from]["post"]["responses"]["201"];
    assert!(created.is_object(), "no 201 answer of POST {from}");
    created["links"][to] = json!({
        "operationId": to,
        "parameters": parameters,
        "description": "The events after the one just published",
    });
}

/// `GET /v1/openapi.json`, answering `doc`.
pub fn route(doc: &Value) -> Router {
    let body: Arc<str> = serde_json::to_string_pretty(doc)
        .expect("the document serializes")
        .into();
    Router::new().route(
        "/v1/openapi.json",
        get(move || {
            let body = Arc::clone(&body);
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    )],
                    body.to_string(),
                )
                    .into_response()
            }
        }),
    )
}
