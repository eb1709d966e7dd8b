//! Replay and catch-up: one path for both.
//!
//! A stream that resumes from a Last-Event-ID, and a subscriber that fell behind and catches up
//! in place, read the same way: page by page after the last sequence covered, from the hub's
//! window of recent events while it covers the next sequence, from the store before that. Window
//! pages (frames already encoded) and store pages (events encoded here) go out the same way, as
//! chunks of at most [`MAX_CHUNK`] bytes. The caller re-arms its subscription before the first
//! page, so every event is either in a page or in its queue; its live loop skips what a page
//! already covered. Store pages come from one cursor held for the replay (one JetStream consumer,
//! one MongoDB cursor), not a new read per page. A store page that may start late (retention
//! moved past the position while the stream was behind) is checked against the bounds, and the
//! stream is told in band.

use bytes::{Bytes, BytesMut};
use herald_core::{Epoch, EventId, ResumeVerdict, TopicFilter, sse};
use herald_store::{Cursor, StoreError};
use sync_wrapper::SyncWrapper;

use crate::GatewayState;

/// The most bytes of queued frames sent as one chunk.
pub(crate) const MAX_CHUNK: usize = 64 * 1024;

/// Frames gathered into one body chunk: the first is kept as it is (no copy for the usual single
/// frame); a second one starts a buffer.
#[derive(Debug, Default)]
pub(crate) struct Chunk {
    first: Option<Bytes>,
    rest: Option<BytesMut>,
}

impl Chunk {
    pub(crate) fn push(&mut self, frame: Bytes) {
        match (&self.first, &mut self.rest) {
            (None, _) => self.first = Some(frame),
            (Some(first), None) => {
                let both = first.len() + frame.len();
                let mut buf = BytesMut::with_capacity((both * 4).min(MAX_CHUNK).max(both));
                buf.extend_from_slice(first);
                buf.extend_from_slice(&frame);
                self.rest = Some(buf);
            }
            (Some(_), Some(buf)) => buf.extend_from_slice(&frame),
        }
    }

    pub(crate) fn len(&self) -> usize {
        match (&self.first, &self.rest) {
            (_, Some(buf)) => buf.len(),
            (Some(first), None) => first.len(),
            (None, None) => 0,
        }
    }

    pub(crate) fn take(self) -> Option<Bytes> {
        match self.rest {
            Some(buf) => Some(buf.freeze()),
            None => self.first,
        }
    }
}

/// Frames as chunks of at most [`MAX_CHUNK`] bytes (a larger frame is a chunk of its own).
fn chunked(frames: impl IntoIterator<Item = Bytes>) -> Vec<Bytes> {
    let mut chunks = Vec::new();
    let mut chunk = Chunk::default();
    for frame in frames {
        chunk.push(frame);
        if chunk.len() >= MAX_CHUNK {
            chunks.extend(std::mem::take(&mut chunk).take());
        }
    }
    chunks.extend(chunk.take());
    chunks
}

/// A replay of a filter's events after a sequence.
pub(crate) struct Replay<'a> {
    gw: &'a GatewayState,
    filter: &'a TopicFilter,
    epoch: Epoch,
    last: u64,
    replayed: u64,
    done: bool,
    /// The store read held from page to page while the replay reads the store, and the position
    /// it continues from (a window page in between moves the replay past it).
    cursor: Option<(SyncWrapper<Box<dyn Cursor + 'a>>, u64)>,
}

impl std::fmt::Debug for Replay<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replay")
            .field("last", &self.last)
            .field("replayed", &self.replayed)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl<'a> Replay<'a> {
    /// A replay of `filter`'s events after `after`, written with ids of `epoch`.
    pub(crate) fn new(
        gw: &'a GatewayState,
        filter: &'a TopicFilter,
        epoch: Epoch,
        after: u64,
    ) -> Self {
        Self {
            gw,
            filter,
            epoch,
            last: after,
            replayed: 0,
            done: false,
            cursor: None,
        }
    }

    /// The next page's frames as body chunks, from the window while it covers the next
    /// sequence, else from the store; `None` once a page has reached the head.
    pub(crate) async fn next_page(&mut self) -> Result<Option<Vec<Bytes>>, StoreError> {
        if self.done {
            return Ok(None);
        }
        let (limit, max_bytes) = (self.gw.config.replay_page, self.gw.config.replay_bytes);
        if let Some(page) = self
            .gw
            .hub
            .window_page(self.filter, self.last, (limit, max_bytes))
        {
            self.replayed += page.frames.len() as u64;
            self.last = page.next_after;
            self.done = page.end;
            self.cursor = None;
            return Ok(Some(chunked(page.frames)));
        }
        let mut cursor = match self.cursor.take() {
            Some((cursor, at)) if at == self.last => cursor,
            _ => SyncWrapper::new(self.gw.store.cursor(self.filter.clone(), self.last)),
        };
        let page = cursor.get_mut().next(limit, max_bytes).await?;
        if !page.end {
            self.cursor = Some((cursor, page.next_after));
        }
        let verdict = match page.events.first() {
            Some(first) if first.seq == self.last + 1 => None,
            _ => self.fallen_behind().await?,
        };
        self.replayed += page.events.len() as u64;
        self.last = page.next_after;
        self.done = page.end;
        let epoch = self.epoch;
        let frames = page
            .events
            .iter()
            .map(|e| sse::event(EventId::new(epoch, e.seq), &e.event_type, e.data.get()));
        Ok(Some(chunked(verdict.into_iter().chain(frames))))
    }

    /// Whether retention removed events after this replay's position while it was behind: a store
    /// page does not say that it starts late. Asked after the page was read: retention removes
    /// a prefix, so bounds that still reach back to the position mean the page was whole. If not,
    /// the `herald.resume` verdict the client would get on reconnecting, sent in band before the
    /// events that follow the hole (G4: a jump is never silent).
    async fn fallen_behind(&self) -> Result<Option<Bytes>, StoreError> {
        let bounds = self.gw.store.bounds().await?;
        let verdict = ResumeVerdict::judge_id(EventId::new(self.epoch, self.last), bounds);
        let ResumeVerdict::NotRecovered { reason, .. } = &verdict else {
            return Ok(None);
        };
        self.gw.metrics.resume(false, reason.as_str());
        tracing::debug!(
            after = self.last,
            earliest = bounds.earliest,
            "replay fell behind retention"
        );
        Ok(Some(sse::control("herald.resume", &verdict.to_json())))
    }

    /// The last sequence the pages so far covered.
    pub(crate) fn last(&self) -> u64 {
        self.last
    }

    /// How many events the pages so far held.
    pub(crate) fn replayed(&self) -> u64 {
        self.replayed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_go_out_in_chunks_of_at_most_max_chunk() {
        let frame = Bytes::from(vec![b'x'; 1000]);
        let chunks = chunked(std::iter::repeat_n(frame, 200));
        let sizes: Vec<usize> = chunks.iter().map(Bytes::len).collect();
        // 66 frames reach MAX_CHUNK; the rest is the last chunk.
        assert_eq!(sizes, [66_000, 66_000, 66_000, 2_000]);
        let big = Bytes::from(vec![b'y'; MAX_CHUNK * 2]);
        assert_eq!(chunked([big.clone()]), vec![big]);
        assert!(chunked(std::iter::empty()).is_empty());
    }
}
