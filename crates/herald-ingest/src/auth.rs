//! The authorization hook for publishes.
//!
//! [`Authorize`] is the hook point: implement it to check a publisher against your identity
//! provider and topic rules, and hand it to [`crate::IngestConfig::auth`]. Herald ships two:
//! [`AllowAll`] (the default) and [`BearerToken`] (`--publish-token`: every publish must send
//! `Authorization: Bearer <token>`).

use std::fmt;

use axum::http::{HeaderMap, header};
use herald_config::Secret;
use herald_core::NewEvent;
use herald_runtime::{ApiError, ErrorCode};

/// Decides whether a request may publish these events (all of a batch at once).
pub trait Authorize: Send + Sync + fmt::Debug {
    /// `Ok` to let the publish through; an error (401, 403) is the answer otherwise.
    fn publish(&self, headers: &HeaderMap, events: &[NewEvent]) -> Result<(), ApiError>;
}

/// Every publish is allowed: for a private network, or with authorization in front of Herald.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl Authorize for AllowAll {
    fn publish(&self, _: &HeaderMap, _: &[NewEvent]) -> Result<(), ApiError> {
        Ok(())
    }
}

/// Every publish must carry `Authorization: Bearer <token>`.
#[derive(Debug)]
pub struct BearerToken {
    token: Secret,
}

impl BearerToken {
    /// Requires `token`.
    pub fn new(token: Secret) -> Self {
        Self { token }
    }
}

impl Authorize for BearerToken {
    fn publish(&self, headers: &HeaderMap, _: &[NewEvent]) -> Result<(), ApiError> {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            Some(given) if constant_time_eq(given.as_bytes(), self.token.expose().as_bytes()) => {
                Ok(())
            }
            _ => Err(ApiError::new(
                ErrorCode::Unauthorized,
                "publishing needs `Authorization: Bearer <token>` with the publish token",
            )),
        }
    }
}

/// Compares without an early exit, so timing does not tell how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn a_bearer_token_is_checked() {
        let auth = BearerToken::new(Secret::new("s3cret"));
        let mut h = HeaderMap::new();
        assert!(auth.publish(&h, &[]).is_err());
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer nope"),
        );
        assert!(auth.publish(&h, &[]).is_err());
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer s3cret"),
        );
        assert!(auth.publish(&h, &[]).is_ok());
        assert!(AllowAll.publish(&HeaderMap::new(), &[]).is_ok());
    }
}
