//! The HTTP server span of each request, by the OpenTelemetry conventions (served with trace
//! export on, by [`crate::serve::serve`]).

use axum::{
    extract::{MatchedPath, Request},
    middleware::Next,
    response::Response,
};
use tracing::{Instrument, field::Empty};

/// What the server spans say of their listener.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SpanOptions {
    /// Continue a request's `traceparent`.
    pub(crate) trusted: bool,
    /// `url.scheme`: `https` on a TLS listener.
    pub(crate) scheme: &'static str,
}

/// The HTTP server span, by the OpenTelemetry conventions, continuing the request's
/// `traceparent` when it is `trusted` (else a new trace, sampled by this process's sampler).
pub(crate) async fn server_span(
    axum::extract::State(SpanOptions { trusted, scheme }): axum::extract::State<SpanOptions>,
    request: Request,
    next: Next,
) -> Response {
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("", MatchedPath::as_str)
        .to_owned();
    let name = if route.is_empty() {
        method.clone()
    } else {
        format!("{method} {route}")
    };
    let version = match request.version() {
        axum::http::Version::HTTP_10 => "1.0",
        axum::http::Version::HTTP_2 => "2",
        _ => "1.1",
    };
    let span = tracing::info_span!(
        "request",
        otel.name = name.as_str(),
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = method.as_str(),
        http.route = route.as_str(),
        url.path = request.uri().path(),
        url.scheme = scheme,
        network.protocol.version = version,
        http.response.status_code = Empty,
        enduser.id = Empty,
    );
    if trusted && let Some(parent) = herald_telemetry::otel::parent_from_headers(request.headers())
    {
        herald_telemetry::otel::set_parent(&span, parent);
    }
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "error");
    }
    response
}
