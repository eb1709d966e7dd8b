//! [`Access`]: from a request's head to the [`Principal`] it acts as.
//!
//! A token is looked for in `Authorization: Bearer` (publishers, `fetch`), then in the query
//! parameter if one is enabled, then in the cookie (what a native `EventSource` can send: it sets
//! no headers). A token that is present but invalid is refused with 401 even where anonymous
//! access would do, so a client with a broken token hears about it. Everything is decided from
//! the request head, before a body is read.

use std::sync::Arc;

use herald_config::Secret;
use herald_runtime::{ApiError, ErrorCode};
use http::{HeaderMap, HeaderValue, Uri, header};

use crate::{ClientLimits, Grants, Principal, Verifier, cookie::SameSite};

/// Where tokens are looked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSources {
    /// The cookie's name.
    pub cookie: String,
    /// The cookie's `SameSite` when Herald sets it (`POST /v1/auth/cookie`).
    pub same_site: SameSite,
    /// The query parameter's name, when enabled.
    pub query: Option<String>,
}

impl Default for TokenSources {
    fn default() -> Self {
        Self {
            cookie: "herald_token".into(),
            same_site: SameSite::default(),
            query: None,
        }
    }
}

/// The server's access rules.
#[derive(Debug)]
pub struct Access {
    verifier: Option<Verifier>,
    anonymous: Grants,
    sources: TokenSources,
    /// Static bearer tokens that may publish anything (`--publish-token`).
    publish_tokens: Vec<Secret>,
    /// Origins whose pages may use the API (`--cors-origins`).
    origins: Vec<HeaderValue>,
    /// Per-client limits.
    limits: Arc<ClientLimits>,
}

impl Access {
    /// Anyone may read and publish everything: the loopback demo, and tests.
    pub fn open() -> Self {
        Self::new(None, Grants::all(), TokenSources::default(), Vec::new())
    }

    /// Tokens verified by `verifier` (none: no token is valid), `anonymous` grants for everyone,
    /// tokens looked for in `sources`, and static publish tokens.
    pub fn new(
        verifier: Option<Verifier>,
        anonymous: Grants,
        sources: TokenSources,
        publish_tokens: Vec<Secret>,
    ) -> Self {
        Self {
            verifier,
            anonymous,
            sources,
            publish_tokens,
            origins: Vec::new(),
            limits: Arc::new(ClientLimits::none()),
        }
    }

    /// The same, with these per-client limits.
    pub fn with_limits(mut self, limits: ClientLimits) -> Self {
        self.limits = Arc::new(limits);
        self
    }

    /// The per-client limits.
    pub fn limits(&self) -> &Arc<ClientLimits> {
        &self.limits
    }

    /// The same, letting pages of these origins (`https://app.example.com`) use the API.
    pub fn with_origins(mut self, origins: Vec<HeaderValue>) -> Self {
        self.origins = origins;
        self
    }

    /// Whether pages of `origin` may use the API across origins.
    pub fn origin_allowed(&self, origin: &HeaderValue) -> bool {
        self.origins
            .iter()
            .any(|o| o.as_bytes().eq_ignore_ascii_case(origin.as_bytes()))
    }

    /// The cookie tokens are read from.
    pub fn cookie_name(&self) -> &str {
        &self.sources.cookie
    }

    /// The token cookie's `SameSite`.
    pub fn same_site(&self) -> SameSite {
        self.sources.same_site
    }

    /// For `POST /v1/auth/cookie`: the bearer token of the request, verified, and the seconds it
    /// stays valid (the cookie's `Max-Age`). Only a verifiable token becomes a cookie.
    pub async fn cookie_token(&self, headers: &HeaderMap) -> Result<(String, u64), ApiError> {
        let token = bearer(headers)?
            .ok_or_else(|| unauthorized("send the token as `Authorization: Bearer <token>`"))?;
        let principal = self.verified(token).await?;
        let max_age = principal.expires_in().unwrap_or_default().as_secs().max(1);
        Ok((token.to_owned(), max_age))
    }

    /// Whether every request may read and publish everything without a token.
    pub fn is_open(&self) -> bool {
        self.anonymous == Grants::all()
    }

    /// Says in the log, at start-up, when anyone who reaches `listen` may read and publish
    /// everything: at info on loopback (the demo), as a warning beyond it (configured so).
    pub fn warn_if_open(&self, listen: std::net::SocketAddr) {
        const OPEN: &str = "no access control: anyone who reaches this address may read and publish every topic (docs/security.md)";
        match (self.is_open(), listen.ip().is_loopback()) {
            (false, _) => {}
            (true, true) => tracing::info!(%listen, "{OPEN}"),
            (true, false) => tracing::warn!(%listen, "{OPEN}"),
        }
    }

    /// Who the request acts as: 401 for a token that is present but not valid. `stream_uri` is
    /// the URI of a stream request, the one kind of request whose token may come in the query
    /// (an `EventSource` cannot set headers; everything else can).
    pub async fn identify(
        &self,
        headers: &HeaderMap,
        stream_uri: Option<&Uri>,
    ) -> Result<Principal, ApiError> {
        let Some(token) = self.token(headers, stream_uri)? else {
            return Ok(Principal::anonymous(self.anonymous.clone()));
        };
        if self
            .publish_tokens
            .iter()
            .any(|t| constant_time_eq(t.expose().as_bytes(), token.as_bytes()))
        {
            let grants = Grants {
                subscribe: Vec::new(),
                publish: vec![">".into()],
            };
            return Ok(Principal::authenticated(
                Some("publish-token".into()),
                grants.union(&self.anonymous),
                None,
            ));
        }
        self.verified(&token).await
    }

    /// The client a JWT names, once verified: 401 for one that does not verify.
    async fn verified(&self, token: &str) -> Result<Principal, ApiError> {
        let Some(verifier) = &self.verifier else {
            return Err(unauthorized(
                "this server has no token keys (it accepts only the publish token)",
            ));
        };
        let verified = verifier.verify_fresh(token).await.map_err(|e| {
            tracing::debug!(reason = %e, "a token was refused");
            unauthorized(&e.to_string())
        })?;
        // The client, on the request's span (`enduser.id`, when spans are exported).
        if let Some(sub) = &verified.subject {
            tracing::Span::current().record("enduser.id", sub.as_str());
        }
        // A stream is cut off at the first second verification refuses the token (it is
        // expired once `exp` < now - leeway, in whole seconds), so its reconnect is refused too.
        let until = verified
            .expires
            .saturating_add(verifier.leeway().as_secs())
            .saturating_add(1);
        Ok(Principal::authenticated(
            verified.subject,
            verified.grants.union(&self.anonymous),
            Some(until),
        ))
    }

    /// The token the request carries, if any.
    fn token(&self, headers: &HeaderMap, uri: Option<&Uri>) -> Result<Option<String>, ApiError> {
        if let Some(token) = bearer(headers)? {
            return Ok(Some(token.to_owned()));
        }
        if let (Some(name), Some(query)) = (&self.sources.query, uri.and_then(Uri::query))
            && let Some((_, token)) =
                form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == name.as_str())
        {
            return Ok(Some(token.into_owned()));
        }
        for value in headers.get_all(header::COOKIE) {
            let Ok(value) = value.to_str() else { continue };
            for pair in value.split(';') {
                if let Some((name, token)) = pair.trim().split_once('=')
                    && name == self.sources.cookie
                    && !token.is_empty()
                {
                    return Ok(Some(token.trim_matches('"').to_owned()));
                }
            }
        }
        Ok(None)
    }
}

/// The token of `Authorization: Bearer <token>`: none without the header, 401 for another scheme
/// or an empty token.
fn bearer(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(Some)
        .ok_or_else(|| unauthorized("Authorization must be `Bearer <token>`"))
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(ErrorCode::Unauthorized, message)
}

/// Compares without an early exit, so timing does not tell how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
