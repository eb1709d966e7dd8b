//! `POST /v1/auth/cookie`: turns a bearer token into the HttpOnly cookie a native `EventSource`
//! sends, and `DELETE /v1/auth/cookie` clears it.
//!
//! A page that gets its tokens in JavaScript (from its identity provider or its backend) cannot
//! hand them to `EventSource`, which sets no headers, and must not keep them where scripts can
//! read them. It posts the token once: Herald verifies it and answers with
//! `Set-Cookie: <cookie>=<token>; HttpOnly; Path=/; Max-Age=<until exp>; SameSite=...`. When a
//! stream then receives `herald.auth` `{"reason":"expired"}`, the page posts a fresh token the same
//! way before its `EventSource` reconnects (within the stream's `retry:`).

use std::sync::Arc;

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use herald_runtime::ApiError;

use crate::Access;

/// The `SameSite` attribute of the token cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SameSite {
    /// Sent with same-site requests and top-level navigations: pages on the same site.
    #[default]
    Lax,
    /// Sent with same-site requests only.
    Strict,
    /// Sent with cross-site requests too (a page on another site, with `withCredentials`);
    /// browsers then require `Secure`, so the cookie only travels over HTTPS.
    None,
}

impl SameSite {
    fn attributes(self) -> &'static str {
        match self {
            SameSite::Lax => "SameSite=Lax",
            SameSite::Strict => "SameSite=Strict",
            SameSite::None => "SameSite=None; Secure",
        }
    }
}

/// The cookie routes' part of the OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    #[derive(utoipa::OpenApi)]
    #[openapi(paths(set, clear))]
    struct Cookie;
    <Cookie as utoipa::OpenApi>::openapi()
}

/// The cookie routes.
pub fn router(access: Arc<Access>) -> Router {
    Router::new()
        .route("/v1/auth/cookie", post(set).delete(clear))
        .with_state(access)
}

/// Sets the bearer token as the HttpOnly cookie an `EventSource` sends.
#[utoipa::path(
    post,
    path = "/v1/auth/cookie", operation_id = "setCookie",
    tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "The cookie is set (`Set-Cookie`)"),
        (status = 401, description = "No token, or one that does not verify", body = herald_runtime::openapi::ErrorBody),
    )
)]
pub(crate) async fn set(
    State(access): State<Arc<Access>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (token, max_age) = access.cookie_token(&headers).await?;
    let cookie = format!(
        "{}={token}; Path=/; HttpOnly; Max-Age={max_age}; {}",
        access.cookie_name(),
        access.same_site().attributes()
    );
    Ok(with_cookie(cookie))
}

/// Clears the cookie.
#[utoipa::path(delete, path = "/v1/auth/cookie", operation_id = "clearCookie", tag = "auth", security(()),
    responses((status = 204, description = "The cookie is cleared")))]
pub(crate) async fn clear(State(access): State<Arc<Access>>) -> Response {
    with_cookie(format!(
        "{}=; Path=/; HttpOnly; Max-Age=0; {}",
        access.cookie_name(),
        access.same_site().attributes()
    ))
}

fn with_cookie(cookie: String) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let value = HeaderValue::from_str(&cookie).expect("a token and a cookie name are header-safe");
    response.headers_mut().insert(header::SET_COOKIE, value);
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
