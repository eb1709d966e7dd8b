//! Bounded JSON bodies.

use axum::body::Body;
use serde::de::DeserializeOwned;

use crate::{ApiError, ErrorCode};

/// Reads at most `limit` bytes of a body and parses it as JSON: 413 past the limit, 400 for
/// anything that is not the expected JSON.
pub async fn read_json<T: DeserializeOwned>(body: Body, limit: usize) -> Result<T, ApiError> {
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|e| {
        if is_length_limit(&e) {
            ApiError::too_large(format!("the body is larger than {limit} bytes"))
        } else {
            ApiError::new(
                ErrorCode::UnreadableBody,
                "the request body could not be read",
            )
        }
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::new(ErrorCode::InvalidJson, format!("invalid JSON body: {e}")))
}

fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;
    use serde_json::json;

    use super::*;

    #[tokio::test]
    async fn bodies_over_the_limit_are_413() {
        let err = read_json::<serde_json::Value>(Body::from(vec![b' '; 11]), 10)
            .await
            .unwrap_err();
        assert_eq!(err.status, StatusCode::PAYLOAD_TOO_LARGE);
        let err = read_json::<serde_json::Value>(Body::from("{"), 10)
            .await
            .unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        let ok: serde_json::Value = read_json(Body::from("[1]"), 10).await.unwrap();
        assert_eq!(ok, json!([1]));
    }
}
