//! What every public request passes before its handler: cross-origin rules (CORS) and the
//! checks against cross-site request forgery.
//!
//! - **Preflight** (`OPTIONS` with `Access-Control-Request-Method`): for an origin in
//!   `--cors-origins`, `204` with the methods and request headers Herald reads and credentials
//!   allowed; for any other origin, `204` without CORS headers, which the browser treats as a no.
//! - **Answers** to an allowlisted origin carry `Access-Control-Allow-Origin` (that origin, never
//!   `*`), `Access-Control-Allow-Credentials: true` (cookies reach streams) and the headers a page
//!   may read. Every answer says `Vary: Origin`.
//! - **Cross-site writes.** A `POST`/`PUT`/`PATCH`/`DELETE` that carries an `Origin` which is
//!   neither the server's own (same scheme-less host and port as `Host`) nor allowlisted is
//!   refused with 403 before anything is read, and a write's body (if it has one) must be JSON
//!   (`Content-Type: application/json`, 415 otherwise): an HTML form on another site can send
//!   neither, so it cannot publish with a visitor's cookie. Clients without an `Origin` (curl,
//!   backends) are not cross-site requests and pass.
//! - **Rates.** Each request is counted against its client's rate for what it does
//!   ([`crate::limits`]); past it, 429 with `Retry-After`, or for a stream an in-band refusal
//!   a native `EventSource` survives. The client's address is left on the request ([`Client`])
//!   for the stream's own per-client count.

use std::{net::IpAddr, sync::Arc};

use axum::{
    Router,
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
};
use herald_runtime::{ApiError, ErrorCode, serve::Peer};

use crate::{Access, ClientLimits, limits::Kind};

/// The client a request comes from, as the limits see it (`None`: not limited by address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client(pub Option<IpAddr>);

/// What a request does, for its rate, and whether it opens a stream.
fn kind(method: &Method, path: &str) -> Option<Kind> {
    let topic_events = path
        .strip_prefix("/v1/topics/")
        .and_then(|rest| rest.strip_suffix("/events"))
        .is_some_and(|topic| !topic.is_empty() && !topic.contains('/'));
    match (method.as_str(), path) {
        ("GET", "/v1/stream" | "/api/updates") => Some(Kind::StreamOpen),
        ("POST", "/v1/events") | ("PUT", "/api/post-update") => Some(Kind::Publish),
        ("POST", _) if topic_events => Some(Kind::Publish),
        ("GET", _) if topic_events => Some(Kind::History),
        ("POST", "/v1/telemetry/lag") => Some(Kind::Lag),
        _ => None,
    }
}

/// The request headers Herald reads, allowed in a preflight.
const ALLOW_HEADERS: &str = "authorization, content-type, idempotency-key, last-event-id";
/// The methods Herald serves.
const ALLOW_METHODS: &str = "GET, POST, PUT";
/// The answer headers a page may read.
const EXPOSE_HEADERS: &str = "idempotent-replayed, retry-after";
/// How long a browser may cache a preflight answer, in seconds.
const MAX_AGE: &str = "600";

/// `router` behind the cross-origin and cross-site checks of `access`.
pub fn layer(router: Router, access: Arc<Access>) -> Router {
    router.layer(middleware::from_fn_with_state(access, edge))
}

async fn edge(State(access): State<Arc<Access>>, mut request: Request, next: Next) -> Response {
    let client = request
        .extensions()
        .get::<Peer>()
        .and_then(|peer| access.limits().client(peer.0.ip(), request.headers()));
    request.extensions_mut().insert(Client(client));
    let kind = kind(request.method(), request.uri().path());
    let over = kind.and_then(|k| access.limits().take(k, client).err().map(|s| (k, s)));
    let origin = request.headers().get(header::ORIGIN).cloned();
    let listed = origin.as_ref().filter(|o| access.origin_allowed(o));
    let method = request.method().clone();
    let mut response = if method == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        let mut response = StatusCode::NO_CONTENT.into_response();
        if listed.is_some() {
            let h = response.headers_mut();
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static(ALLOW_METHODS),
            );
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static(ALLOW_HEADERS),
            );
            h.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static(MAX_AGE),
            );
        }
        response
    } else if let Err(e) = check_write(
        &method,
        request.headers(),
        authority(&request),
        origin.as_ref(),
        listed,
    ) {
        e.into_response()
    } else if let Some((kind, retry_after)) = over {
        let refusal = ClientLimits::too_many(kind, retry_after);
        if kind == Kind::StreamOpen {
            refusal.into_stream_refusal(std::time::Duration::ZERO)
        } else {
            refusal.into_response()
        }
    } else {
        next.run(request).await
    };
    let h = response.headers_mut();
    h.append(header::VARY, HeaderValue::from_static("origin"));
    if let Some(origin) = listed {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSE_HEADERS),
        );
    }
    response
}

/// The host and port the request was sent to: its `Host` header (HTTP/1.1), or the authority of
/// its target (HTTP/2's `:authority`, which has no `Host` header beside it).
fn authority<B>(request: &axum::http::Request<B>) -> Option<&str> {
    match request.headers().get(header::HOST) {
        Some(host) => host.to_str().ok(),
        None => request.uri().authority().map(|a| a.as_str()),
    }
}

/// A write from a foreign origin is 403; a write whose body is not declared JSON is 415.
fn check_write(
    method: &Method,
    headers: &HeaderMap,
    host: Option<&str>,
    origin: Option<&HeaderValue>,
    listed: Option<&HeaderValue>,
) -> Result<(), ApiError> {
    if !matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    ) {
        return Ok(());
    }
    if let Some(origin) = origin
        && listed.is_none()
        && !same_origin(origin, host)
    {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "a cross-site request from {:?}: list the origin in --cors-origins to allow it",
                String::from_utf8_lossy(origin.as_bytes())
            ),
        ));
    }
    if herald_runtime::http::has_body(headers) && !is_json(headers.get(header::CONTENT_TYPE)) {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "the body must be JSON, sent with `Content-Type: application/json`",
        ));
    }
    Ok(())
}

/// `application/json` or `application/<x>+json`, with any parameters.
fn is_json(content_type: Option<&HeaderValue>) -> bool {
    let Some(value) = content_type.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    let Some((kind, sub)) = essence.split_once('/') else {
        return false;
    };
    kind.eq_ignore_ascii_case("application")
        && (sub.eq_ignore_ascii_case("json")
            || sub.len() > 5 && sub[sub.len() - 5..].eq_ignore_ascii_case("+json"))
}

/// Whether `origin` (`scheme://host[:port]`) names the host the request was sent to.
fn same_origin(origin: &HeaderValue, host: Option<&str>) -> bool {
    let (Ok(origin), Some(host)) = (origin.to_str(), host) else {
        return false;
    };
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    authority.is_some_and(|a| a.eq_ignore_ascii_case(host))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_what_they_do() {
        let (get, post, put) = (Method::GET, Method::POST, Method::PUT);
        assert_eq!(kind(&get, "/v1/stream"), Some(Kind::StreamOpen));
        assert_eq!(kind(&get, "/api/updates"), Some(Kind::StreamOpen));
        assert_eq!(kind(&post, "/v1/topics/a.b/events"), Some(Kind::Publish));
        assert_eq!(kind(&post, "/v1/events"), Some(Kind::Publish));
        assert_eq!(kind(&put, "/api/post-update"), Some(Kind::Publish));
        assert_eq!(kind(&get, "/v1/topics/a.b/events"), Some(Kind::History));
        assert_eq!(kind(&post, "/v1/telemetry/lag"), Some(Kind::Lag));
        assert_eq!(kind(&get, "/"), None);
        assert_eq!(kind(&get, "/v1/topics//events"), None);
        assert_eq!(kind(&get, "/metrics"), None);
    }

    #[test]
    fn json_content_types() {
        for ok in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/merge-patch+json",
        ] {
            assert!(is_json(Some(&HeaderValue::from_static(ok))), "{ok}");
        }
        for bad in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/jsonx",
            "json",
            "",
        ] {
            assert!(!is_json(Some(&HeaderValue::from_static(bad))), "{bad}");
        }
        assert!(!is_json(None));
    }

    #[test]
    fn same_origin_compares_host_and_port() {
        let same =
            |o: &'static str| same_origin(&HeaderValue::from_static(o), Some("127.0.0.1:8080"));
        assert!(same("http://127.0.0.1:8080"));
        assert!(same("https://127.0.0.1:8080"));
        assert!(!same("http://127.0.0.1:8081"));
        assert!(!same("http://evil.example"));
        assert!(!same("null"));
        assert!(!same_origin(&HeaderValue::from_static("http://a"), None));
    }

    /// HTTP/2 has no `Host` header: the target's authority (`:authority`) is the host.
    #[test]
    fn the_authority_is_the_host_header_or_the_targets() {
        let h1 = axum::http::Request::post("/v1/events")
            .header(header::HOST, "a.example:8443")
            .body(())
            .unwrap();
        assert_eq!(authority(&h1), Some("a.example:8443"));
        let h2 = axum::http::Request::post("https://a.example:8443/v1/events")
            .body(())
            .unwrap();
        assert_eq!(authority(&h2), Some("a.example:8443"));
        let neither = axum::http::Request::post("/v1/events").body(()).unwrap();
        assert_eq!(authority(&neither), None);
    }
}
