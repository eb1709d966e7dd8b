//! The hub task: the feed in strict sequence order, gaps filled from the store.

use std::{collections::BTreeMap, sync::Arc, task::Waker, time::Duration};

use futures_util::{FutureExt, StreamExt};
use herald_bus::Feed;
use herald_core::{Event, TopicFilter};
use herald_store::{History, ReadQuery};
use herald_telemetry::StoreOp;
use tokio::time::Instant;

use super::Inner;

/// The most events held while waiting for a gap to fill before the store is asked at once.
const MAX_PENDING: usize = 4096;

/// The most events one pass takes from the feed before it wakes the connections.
const BATCH_EVENTS: usize = 64;
/// The most deliveries one pass queues before it wakes the connections: what the first
/// subscriber of a pass waits for the last (a push costs about a tenth of a microsecond).
const BATCH_DELIVERIES: u64 = 2048;

/// The hub task's state: puts the feed in sequence order.
pub(super) struct Sequencer {
    inner: Arc<Inner>,
    store: Arc<dyn History>,
    expected: u64,
    pending: BTreeMap<u64, Arc<Event>>,
    gap_timeout: Duration,
    /// The connections to wake at the end of this pass, and how many deliveries it queued.
    /// Events that arrive together (a batch, a group commit, concurrent publishers) are queued
    /// for every subscriber before any is woken, so each connection writes them in one go.
    wakes: Vec<Waker>,
    batched: u64,
}

impl Sequencer {
    /// A sequencer that takes everything up to `head` as delivered.
    pub(super) fn new(
        inner: Arc<Inner>,
        store: Arc<dyn History>,
        head: u64,
        gap_timeout: Duration,
    ) -> Self {
        Self {
            inner,
            store,
            expected: head + 1,
            pending: BTreeMap::new(),
            gap_timeout,
            wakes: Vec::new(),
            batched: 0,
        }
    }

    pub(super) async fn run(mut self, mut feed: Feed) {
        // When the current gap opened plus `gap_timeout`: fixed while the gap lasts, so steady
        // traffic behind a lost event cannot postpone the fill.
        let mut deadline: Option<Instant> = None;
        loop {
            let next = match deadline {
                None => Some(feed.next().await),
                Some(at) => tokio::select! {
                    event = feed.next() => Some(event),
                    () = tokio::time::sleep_until(at) => None,
                },
            };
            let before = self.expected;
            let mut ended = false;
            match next {
                Some(Some(event)) => {
                    self.accept(event).await;
                    // What the feed already holds joins this pass.
                    for _ in 1..BATCH_EVENTS {
                        if self.batched >= BATCH_DELIVERIES {
                            break;
                        }
                        match feed.next().now_or_never() {
                            Some(Some(event)) => self.accept(event).await,
                            Some(None) => {
                                ended = true;
                                break;
                            }
                            None => break,
                        }
                    }
                }
                Some(None) => break,
                None => self.fill_gap().await,
            }
            self.wake();
            if ended {
                break;
            }
            self.inner
                .metrics
                .hub_pending
                .set(self.pending.len() as i64);
            if self.pending.is_empty() {
                deadline = None;
            } else if deadline.is_none() || self.expected != before {
                deadline = Some(Instant::now() + self.gap_timeout);
            }
        }
        // Deliver what was waiting behind a gap before stopping.
        self.fill_gap().await;
        self.wake();
        tracing::debug!("hub feed ended");
    }

    /// Queues `event` for its subscribers; they are woken at the end of the pass.
    fn fan_out(&mut self, event: &Event) {
        self.batched += self.inner.fan_out(event, &mut self.wakes);
    }

    /// Wakes the connections this pass queued deliveries for.
    fn wake(&mut self) {
        for waker in self.wakes.drain(..) {
            waker.wake();
        }
        self.batched = 0;
    }

    async fn accept(&mut self, event: Arc<Event>) {
        if event.seq < self.expected {
            return;
        }
        self.pending.insert(event.seq, event);
        self.release();
        if self.pending.len() > MAX_PENDING {
            self.fill_gap().await;
        }
    }

    /// Delivers the pending events that follow on without a gap.
    fn release(&mut self) {
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() != self.expected {
                break;
            }
            let event = entry.remove();
            self.fan_out(&event);
            self.expected += 1;
        }
    }

    /// Reads the events between the last delivered and the first pending from the store. If the
    /// store cannot supply them (down, or retention removed them), every subscriber catches up
    /// from the store on its own.
    async fn fill_gap(&mut self) {
        let Some(&first_pending) = self.pending.keys().next() else {
            return;
        };
        self.inner.metrics.gap_fills.inc();
        let filter = TopicFilter::parse([">"]).expect("`>` is a valid pattern");
        while self.expected < first_pending {
            // What is queued goes out while the store is read.
            self.wake();
            let query = ReadQuery {
                filter: filter.clone(),
                after: self.expected - 1,
                limit: (first_pending - self.expected).min(1024) as usize,
            };
            match self.store.read(query).await {
                Ok(page) => {
                    let starts_late = page.events.first().is_none_or(|e| e.seq != self.expected);
                    if starts_late && self.removed_by_retention().await {
                        // Skipping the hole would be silent (G4): the subscribers' own
                        // catch-ups get the verdict instead.
                        tracing::debug!(
                            expected = self.expected,
                            first_pending,
                            "gap removed by retention; subscribers catch up from the store"
                        );
                        break;
                    }
                    for event in page.events.iter().take_while(|e| e.seq < first_pending) {
                        self.fan_out(event);
                    }
                    self.expected = (page.next_after + 1).min(first_pending);
                    if page.end {
                        break;
                    }
                }
                Err(e) => {
                    self.inner.metrics.store_error(StoreOp::Read);
                    tracing::warn!(error = %e, expected = self.expected, first_pending, "gap fill failed; subscribers catch up from the store");
                    break;
                }
            }
        }
        if self.expected < first_pending {
            self.inner.window.restart(first_pending);
            self.inner.mark_all_lagged();
            self.expected = first_pending;
        } else {
            // Sequences the store read past without an event are covered too.
            self.inner.window.cover(first_pending - 1);
        }
        self.release();
    }

    /// Whether retention removed the next expected sequence: a page that does not start with it
    /// may start late (or the sequence never held an event). Asked after the page was read:
    /// retention removes a prefix, so bounds that still reach back to it mean the page was whole.
    /// A store that cannot say counts as removed: the subscribers then catch up on their own.
    async fn removed_by_retention(&self) -> bool {
        match self.store.bounds().await {
            Ok(bounds) => bounds.earliest > self.expected,
            Err(e) => {
                self.inner.metrics.store_error(StoreOp::Bounds);
                tracing::warn!(error = %e, "store bounds unavailable during a gap fill");
                true
            }
        }
    }
}
