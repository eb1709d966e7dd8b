//! The hub task: the feed in strict sequence order, gaps filled from the store.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use futures_util::StreamExt;
use herald_bus::Feed;
use herald_core::{Event, TopicFilter};
use herald_store::{History, ReadQuery};
use herald_telemetry::StoreOp;
use tokio::time::Instant;

use super::Inner;

/// The most events held while waiting for a gap to fill before the store is asked at once.
const MAX_PENDING: usize = 4096;

/// The hub task's state: puts the feed in sequence order.
pub(super) struct Sequencer {
    inner: Arc<Inner>,
    store: Arc<dyn History>,
    expected: u64,
    pending: BTreeMap<u64, Arc<Event>>,
    gap_timeout: Duration,
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
            match next {
                Some(Some(event)) => self.accept(event).await,
                Some(None) => break,
                None => self.fill_gap().await,
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
        tracing::debug!("hub feed ended");
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
            self.inner.fan_out(&event);
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
                        self.inner.fan_out(event);
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
