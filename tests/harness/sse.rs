//! An event stream as a browser reads it.

use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use herald_core::sse::decode::{Decoder, SseEvent};
use reqwest::header::HeaderMap;

use crate::PATIENCE;

/// An open SSE response.
pub struct SseStream {
    /// The response headers.
    pub headers: HeaderMap,
    body: std::pin::Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    decoder: Decoder,
    ready: std::collections::VecDeque<SseEvent>,
    ended: bool,
}

impl std::fmt::Debug for SseStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SseStream")
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl SseStream {
    /// Sends the request and checks it is an event stream.
    pub async fn open(req: reqwest::RequestBuilder) -> anyhow::Result<Self> {
        let res = req.send().await.context("opening the stream")?;
        if !res.status().is_success() {
            let status = res.status();
            bail!(
                "stream refused: {status} {}",
                res.text().await.unwrap_or_default()
            );
        }
        Ok(Self {
            headers: res.headers().clone(),
            body: Box::pin(res.bytes_stream()),
            decoder: Decoder::new(),
            ready: Default::default(),
            ended: false,
        })
    }

    /// The decoder (retry, comment count, last event id).
    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    /// The next event, or `None` when the server ended the stream. Fails after `within`.
    pub async fn next_within(&mut self, within: Duration) -> anyhow::Result<Option<SseEvent>> {
        tokio::time::timeout(within, self.next_event())
            .await
            .context("no event in time")?
    }

    /// The next event, or `None` when the server ended the stream. Fails after [`PATIENCE`].
    pub async fn next(&mut self) -> anyhow::Result<Option<SseEvent>> {
        self.next_within(PATIENCE).await
    }

    async fn next_event(&mut self) -> anyhow::Result<Option<SseEvent>> {
        loop {
            if let Some(ev) = self.ready.pop_front() {
                return Ok(Some(ev));
            }
            if self.ended {
                return Ok(None);
            }
            match self.body.next().await {
                Some(chunk) => {
                    let chunk = chunk.context("reading the stream")?;
                    self.ready.extend(self.decoder.feed(&chunk));
                }
                None => self.ended = true,
            }
        }
    }

    /// Reads until `n` events of type `message` (or any non-control type) have arrived; control
    /// events (`herald.*`) are returned separately.
    pub async fn collect(&mut self, n: usize) -> anyhow::Result<(Vec<SseEvent>, Vec<SseEvent>)> {
        let (mut events, mut control) = (Vec::new(), Vec::new());
        while events.len() < n {
            match self.next().await? {
                Some(ev) if ev.event.starts_with("herald.") => control.push(ev),
                Some(ev) => events.push(ev),
                None => bail!("stream ended after {} of {n} events", events.len()),
            }
        }
        Ok((events, control))
    }

    /// Whether the server has ended the stream (after reading everything it sent).
    pub async fn ended_within(&mut self, within: Duration) -> anyhow::Result<Vec<SseEvent>> {
        let mut rest = Vec::new();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_within(left).await? {
                Some(ev) => rest.push(ev),
                None => return Ok(rest),
            }
        }
    }
}
