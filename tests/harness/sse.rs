//! An event stream as a browser reads it.

use std::{pin::Pin, time::Duration};

use anyhow::{Context, bail};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use herald_core::sse::decode::{Decoder, SseEvent};
use hyper::body::Body;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use reqwest::header::HeaderMap;

use crate::PATIENCE;

/// The receive buffer, in bytes, of a stream opened with [`SseStream::open_narrow`] (the kernel
/// doubles it for its bookkeeping).
const NARROW_WINDOW: usize = 4096;

/// An open SSE response.
pub struct SseStream {
    /// The response headers.
    pub headers: HeaderMap,
    body: Pin<Box<dyn Stream<Item = anyhow::Result<Bytes>> + Send>>,
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
        Ok(Self::new(
            res.headers().clone(),
            res.bytes_stream().map(|chunk| Ok(chunk?)),
        ))
    }

    /// Opens `url` (with `Last-Event-ID` when given) over a socket whose receive buffer is
    /// [`NARROW_WINDOW`] bytes, as a browser on a slow link. A reader that stops reading then
    /// backs the stream up into the server sooner than over a default socket, whose receive
    /// buffer grows to megabytes on loopback.
    pub async fn open_narrow(url: &str, last_event_id: Option<&str>) -> anyhow::Result<Self> {
        let mut connector = HttpConnector::new();
        connector.set_recv_buffer_size(Some(NARROW_WINDOW));
        let client = Client::builder(TokioExecutor::new()).build(connector);
        let mut req = hyper::Request::get(url).header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let res = client
            .request(req.body(String::new())?)
            .await
            .context("opening the stream")?;
        if !res.status().is_success() {
            bail!("stream refused: {}", res.status());
        }
        let headers = res.headers().clone();
        let body = futures_util::stream::unfold(res.into_body(), |mut body| async move {
            loop {
                match std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await? {
                    Ok(frame) => {
                        if let Ok(data) = frame.into_data() {
                            return Some((Ok(data), body));
                        }
                    }
                    Err(e) => return Some((Err(e.into()), body)),
                }
            }
        });
        Ok(Self::new(headers, body))
    }

    fn new(
        headers: HeaderMap,
        body: impl Stream<Item = anyhow::Result<Bytes>> + Send + 'static,
    ) -> Self {
        Self {
            headers,
            body: Box::pin(body),
            decoder: Decoder::new(),
            ready: Default::default(),
            ended: false,
        }
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
