//! Bounded JSON bodies, and bodies that must arrive within a deadline.

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use axum::body::{Body, Bytes};
use http_body::{Frame, SizeHint};
use serde::de::DeserializeOwned;
use tokio::time::Sleep;

use crate::{ApiError, ErrorCode};

/// Whether a request says it has a body: a `Content-Length` above 0, or a chunked one.
pub fn has_body(headers: &axum::http::HeaderMap) -> bool {
    use axum::http::header;
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

/// `body`, failing with [`BodyTimeout`] if it has not arrived whole within `timeout`: a client
/// that trickles its body (a slowloris body) cannot hold a request open.
pub fn deadline(body: Body, timeout: Duration) -> Body {
    Body::new(DeadlineBody {
        inner: body,
        deadline: Box::pin(tokio::time::sleep(timeout)),
    })
}

/// A body read past its deadline.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
pub struct BodyTimeout;

struct DeadlineBody {
    inner: Body,
    deadline: Pin<Box<Sleep>>,
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        match this.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(axum::Error::new(BodyTimeout)))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Reads at most `limit` bytes of a body and parses it as JSON: 413 past the limit, 400 for
/// anything that is not the expected JSON.
pub async fn read_json<T: DeserializeOwned>(body: Body, limit: usize) -> Result<T, ApiError> {
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|e| {
        if is_length_limit(&e) {
            ApiError::too_large(format!("the body is larger than {limit} bytes"))
        } else if caused_by::<BodyTimeout>(&e) {
            ApiError::new(
                ErrorCode::RequestTimeout,
                "the request body did not arrive within the body timeout",
            )
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
    caused_by::<http_body_util::LengthLimitError>(e)
}

/// Whether `E` is in `e`'s chain of causes.
fn caused_by<E: std::error::Error + 'static>(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<E>() {
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

    /// On tokio's paused clock: a body that stops arriving fails at its deadline with 408; one
    /// that arrives in time is read.
    #[tokio::test(start_paused = true)]
    async fn a_body_that_trickles_past_its_deadline_is_408() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
        tx.send(Ok(Bytes::from_static(b"[1,"))).await.unwrap();
        let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
        let started = tokio::time::Instant::now();
        let err = read_json::<serde_json::Value>(deadline(body, Duration::from_secs(10)), 100)
            .await
            .unwrap_err();
        assert_eq!(err.status, StatusCode::REQUEST_TIMEOUT);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        drop(tx);
        let ok: serde_json::Value =
            read_json(deadline(Body::from("[2]"), Duration::from_secs(10)), 100)
                .await
                .unwrap();
        assert_eq!(ok, json!([2]));
    }
}
