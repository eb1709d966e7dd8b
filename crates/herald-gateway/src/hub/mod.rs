//! The hub: one live feed in, one bounded queue per subscriber out.
//!
//! The hub task reads the gateway's single bus feed and delivers events in strict sequence order:
//! an event ahead of the next expected sequence waits (a racing publisher, a lagging feed) and, if
//! the gap is not filled within `gap_timeout`, the hub reads the missing events from the store.
//! Duplicates (a sequence already delivered) are dropped. Each event's SSE frame is encoded once
//! and every matching subscriber's queue gets a reference to the same bytes.
//!
//! A subscriber whose queue is full is marked lagged and skipped from then on: it never slows the
//! hub or the others (G6). Its connection drains what it has, re-arms ([`Subscription::rearm`]),
//! and catches up from the window of recent events the hub keeps, or from the store before it.
//!
//! - [`registry`]: who is subscribed to what, each subscriber's bounded queue, and what happens
//!   when one is slow: its queue overflows, it is marked lagged and skipped, and its
//!   [`Subscription`] re-arms it once it has caught up (G6).
//! - [`sequencer`]: the hub task: the feed put in sequence order, gaps filled from the store.
//! - [`recent`]: the publish times of recent events, for browser lag reports.

mod recent;
mod registry;
mod sequencer;
#[cfg(test)]
mod tests;

use std::{
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::Waker,
    time::Duration,
};

use bytes::Bytes;
use herald_bus::Feed;
use herald_core::{Epoch, Event, EventId, TopicFilter, TraceContext, sse};
use herald_runtime::DrainWatch;
use herald_store::History;
use herald_telemetry::{Metrics, Tier, otel};
use tracing::field::Empty;

use crate::window::{Window, WindowPage};

pub use self::registry::Subscription;
use self::{
    recent::Recent,
    registry::{Registry, Slot},
    sequencer::Sequencer,
};

/// One event, encoded, on its way to a subscriber.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Its sequence.
    pub seq: u64,
    /// Its SSE frame, shared by every subscriber.
    pub frame: Bytes,
    /// For one subscriber of a sampled trace: the fan-out span its socket write continues.
    pub trace: Option<Box<TraceContext>>,
}

impl Delivery {
    /// A wake-up with no frame, for a subscriber marked lagged while its queue was empty: its
    /// sequence (0) is at or below any connection's position, so the connection sends nothing
    /// for it, finds itself lagged, and catches up.
    pub(crate) fn wake() -> Self {
        Self {
            seq: 0,
            frame: Bytes::new(),
            trace: None,
        }
    }
}

/// What a hub is started with.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// The epoch of the ids the hub writes.
    pub epoch: Epoch,
    /// The last sequence already delivered: take the feed before reading it, so nothing falls
    /// between them.
    pub head: u64,
    /// Events queued per subscriber before it is marked lagged.
    pub queue_capacity: usize,
    /// How long a missing sequence is waited for before it is read from the store.
    pub gap_timeout: Duration,
    /// Bytes of delivered events kept for [`Hub::window_page`].
    pub window_bytes: usize,
}

#[derive(Debug)]
struct Inner {
    epoch: Epoch,
    registry: RwLock<Registry>,
    next_id: AtomicU64,
    queue_capacity: usize,
    metrics: Arc<Metrics>,
    recent: Recent,
    window: Window,
    /// Set when the server starts draining; every subscriber is woken to notice it.
    draining: AtomicBool,
}

/// A cheap handle on the hub.
#[derive(Debug, Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

impl Hub {
    /// Starts the hub task on `feed`, which gap fills read from `store`. Events up to
    /// `config.head` are taken as already delivered.
    pub fn start(
        feed: Feed,
        store: Arc<dyn History>,
        config: HubConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        let inner = Arc::new(Inner {
            epoch: config.epoch,
            registry: RwLock::default(),
            next_id: AtomicU64::new(0),
            queue_capacity: config.queue_capacity.max(1),
            metrics,
            recent: Recent::new(),
            window: Window::new(config.window_bytes, config.head),
            draining: AtomicBool::new(false),
        });
        // Subscribers and queued frames are counted when /metrics is read, not tracked.
        let weak = Arc::downgrade(&inner);
        inner.metrics.on_render(move || {
            if let Some(inner) = weak.upgrade() {
                let (subscribers, queued) = inner.census();
                inner.metrics.subscribers.set(subscribers as i64);
                inner.metrics.queued_frames.set(queued);
            }
        });
        let sequencer = Sequencer::new(Arc::clone(&inner), store, config.head, config.gap_timeout);
        tokio::spawn(sequencer.run(feed));
        Self { inner }
    }

    /// Registers a subscriber. Events the hub delivers from now on that match `filter` are queued
    /// for it until it is dropped.
    pub fn subscribe(&self, filter: TopicFilter) -> Subscription {
        let slot = Arc::new(Slot::new(
            self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            filter,
            self.inner.queue_capacity,
        ));
        self.inner
            .registry
            .write()
            .expect("hub registry")
            .insert(Arc::clone(&slot));
        Subscription::new(slot, Arc::clone(&self.inner))
    }

    /// Frames of recently delivered events matching `filter` after `after`, at most `limit` of them
    /// and none past the one that brings them to `max_bytes` (`bounds` is both); or `None` when
    /// the window no longer covers `after + 1` (read the store). Events past the page reach a
    /// subscriber registered before the read through its queue.
    pub fn window_page(
        &self,
        filter: &TopicFilter,
        after: u64,
        bounds: (usize, usize),
    ) -> Option<WindowPage> {
        let page = self.inner.window.read(filter, after, bounds)?;
        self.inner
            .metrics
            .replay_read(Tier::Window, page.frames.len() as u64);
        Some(page)
    }

    /// How many subscribers are registered.
    pub fn subscribers(&self) -> usize {
        self.inner.census().0
    }

    /// When the event at `seq` was published (ms since the Unix epoch), if it is recent.
    pub fn published_at(&self, seq: u64) -> Option<u64> {
        self.inner.recent.time_of(seq)
    }

    /// The hub's epoch.
    pub fn epoch(&self) -> Epoch {
        self.inner.epoch
    }

    /// Tells every subscriber, present and future, that the server is draining: [`Self::draining`]
    /// says so from now on, and each subscriber is woken (a connection notices on that wake-up,
    /// without a drain watch of its own). Idempotent.
    pub fn drain(&self) {
        self.inner.draining.store(true, Ordering::Release);
        // The flag before the wake-ups: a subscriber registered after this pass sees it set.
        self.inner.registry.read().expect("hub registry").wake_all();
    }

    /// Whether [`Self::drain`] was called.
    pub fn draining(&self) -> bool {
        self.inner.draining.load(Ordering::Acquire)
    }

    /// Calls [`Self::drain`] when `drain` starts (in a task that holds the hub weakly).
    pub fn drain_on(&self, drain: DrainWatch) {
        let inner = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            if drain.thrown().await
                && let Some(inner) = inner.upgrade()
            {
                Hub { inner }.drain();
            }
        });
    }
}

impl Inner {
    /// Queues `event` for every matching subscriber. The connections to wake are added to
    /// `wakes`, for the caller to wake once it has queued every event at hand: a connection then
    /// writes them all at once, not one write per event.
    fn fan_out(&self, event: &Event, wakes: &mut Vec<Waker>) -> u64 {
        let id = EventId::new(self.epoch, event.seq);
        let delivery = Delivery {
            seq: event.seq,
            frame: sse::event(id, &event.event_type, event.data.get()),
            trace: None,
        };
        self.recent.record(event.seq, event.time_ms);
        // In the window before in any queue: see `window` for why the order matters.
        self.window.push(event.seq, &event.topic, &delivery.frame);
        let lag_ms = herald_core::event::now_ms().saturating_sub(event.time_ms);
        self.metrics.delivery_lag.observe(lag_ms as f64 / 1000.0);
        // A sampled trace gets a fan-out span, and one subscriber's socket write continues it.
        let span = otel::sampled(event.trace).map(|parent| {
            let span = tracing::info_span!(
                "fan-out",
                messaging.message.id = %id,
                herald.subscribers = Empty,
            );
            otel::set_parent(&span, parent);
            span
        });
        let _entered = span.as_ref().map(|s| s.enter());
        let mut write_trace = span.as_ref().and_then(otel::trace_of).map(Box::new);
        let topic = event.topic.as_str();
        let registry = self.registry.read().expect("hub registry");
        let mut delivered = 0;
        for slot in registry.matching(topic) {
            let mut d = delivery.clone();
            d.trace = write_trace.take();
            match slot.offer(d) {
                Ok(waker) => {
                    delivered += 1;
                    wakes.extend(waker);
                }
                Err(d) => write_trace = d.trace,
            }
        }
        if let Some(span) = &span {
            span.record("herald.subscribers", delivered);
        }
        self.metrics.events_delivered.inc_by(delivered);
        delivered
    }

    /// How many subscribers are registered, and how many frames are queued for them all.
    fn census(&self) -> (usize, i64) {
        self.registry.read().expect("hub registry").census()
    }

    /// Every subscriber catches up from the store on its own (a gap the store could not fill).
    fn mark_all_lagged(&self) {
        self.registry
            .read()
            .expect("hub registry")
            .mark_all_lagged();
    }
}
