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

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use futures_util::StreamExt;
use herald_bus::Feed;
use herald_core::{Epoch, Event, EventId, Topic, TopicFilter, TraceContext, sse};
use herald_store::{History, ReadQuery};
use herald_telemetry::{Metrics, otel};
use tokio::{
    sync::mpsc::{self, error::TrySendError},
    time::Instant,
};
use tracing::field::Empty;

use crate::window::{Window, WindowPage};

/// The most events held while waiting for a gap to fill before the store is asked at once.
const MAX_PENDING: usize = 4096;
/// How many recent events' publish times the hub remembers (for browser lag reports).
const RECENT: usize = 1 << 16;

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

/// The publish times of the last [`RECENT`] events, by sequence: one writer (the hub task),
/// lock-free readers.
struct Recent {
    slots: Box<[(AtomicU64, AtomicU64)]>,
}

impl Recent {
    fn new() -> Self {
        Self {
            slots: (0..RECENT)
                .map(|_| (AtomicU64::new(0), AtomicU64::new(0)))
                .collect(),
        }
    }

    fn record(&self, seq: u64, time_ms: u64) {
        let (s, t) = &self.slots[seq as usize % RECENT];
        s.store(0, Ordering::Release);
        t.store(time_ms, Ordering::Release);
        s.store(seq, Ordering::Release);
    }

    fn time_of(&self, seq: u64) -> Option<u64> {
        let (s, t) = &self.slots[seq as usize % RECENT];
        if seq == 0 || s.load(Ordering::Acquire) != seq {
            return None;
        }
        let time = t.load(Ordering::Acquire);
        (s.load(Ordering::Acquire) == seq).then_some(time)
    }
}

impl std::fmt::Debug for Recent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Recent")
    }
}

#[derive(Debug)]
struct Slot {
    id: u64,
    filter: TopicFilter,
    tx: mpsc::Sender<Delivery>,
    lagged: AtomicBool,
}

#[derive(Debug, Default)]
struct Registry {
    /// Subscribers with only exact topics, by topic.
    by_topic: HashMap<Topic, Vec<Arc<Slot>>>,
    /// Subscribers with at least one pattern; their whole filter is checked per event.
    patterned: Vec<Arc<Slot>>,
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
}

/// A cheap handle on the hub.
#[derive(Debug, Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

impl Hub {
    /// Starts the hub task on `feed`. Events up to `head` are taken as already delivered: take the
    /// feed before reading `head`, so nothing falls between them. The last `window_bytes` of
    /// delivered events are kept for [`Hub::window_page`].
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        feed: Feed,
        store: Arc<dyn History>,
        epoch: Epoch,
        head: u64,
        queue_capacity: usize,
        gap_timeout: Duration,
        window_bytes: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        let inner = Arc::new(Inner {
            epoch,
            registry: RwLock::default(),
            next_id: AtomicU64::new(0),
            queue_capacity: queue_capacity.max(1),
            metrics,
            recent: Recent::new(),
            window: Window::new(window_bytes, head),
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
        let sequencer = Sequencer {
            inner: Arc::clone(&inner),
            store,
            expected: head + 1,
            pending: BTreeMap::new(),
            gap_timeout,
        };
        tokio::spawn(sequencer.run(feed));
        Self { inner }
    }

    /// Registers a subscriber. Events the hub delivers from now on that match `filter` are queued
    /// for it until it is dropped.
    pub fn subscribe(&self, filter: TopicFilter) -> Subscription {
        let (tx, rx) = mpsc::channel(self.inner.queue_capacity);
        let slot = Arc::new(Slot {
            id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            filter,
            tx,
            lagged: AtomicBool::new(false),
        });
        let mut registry = self.inner.registry.write().expect("hub registry");
        if slot.filter.patterns().is_empty() {
            for topic in slot.filter.exact() {
                registry
                    .by_topic
                    .entry(topic.clone())
                    .or_default()
                    .push(Arc::clone(&slot));
            }
        } else {
            registry.patterned.push(Arc::clone(&slot));
        }
        Subscription {
            slot,
            rx,
            hub: Arc::clone(&self.inner),
        }
    }

    /// Frames of recently delivered events matching `filter` after `after`, at most `limit`; or
    /// `None` when the window no longer covers `after + 1` (read the store). Events past the page
    /// reach a subscriber registered before the read through its queue.
    pub fn window_page(
        &self,
        filter: &TopicFilter,
        after: u64,
        limit: usize,
    ) -> Option<WindowPage> {
        let page = self.inner.window.read(filter, after, limit)?;
        self.inner
            .metrics
            .replay_read("window", page.frames.len() as u64);
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
}

impl Inner {
    fn fan_out(&self, event: &Event) {
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
        let exact = registry.by_topic.get(topic).into_iter().flatten();
        let patterned = registry
            .patterned
            .iter()
            .filter(|s| s.filter.matches(topic));
        let mut delivered = 0;
        for slot in exact.chain(patterned) {
            if slot.lagged.load(Ordering::Acquire) {
                continue;
            }
            let mut d = delivery.clone();
            d.trace = write_trace.take();
            match slot.tx.try_send(d) {
                Ok(()) => delivered += 1,
                Err(TrySendError::Full(d)) => {
                    slot.lagged.store(true, Ordering::Release);
                    write_trace = d.trace;
                }
                Err(TrySendError::Closed(d)) => write_trace = d.trace,
            }
        }
        if let Some(span) = &span {
            span.record("herald.subscribers", delivered);
        }
        self.metrics.events_delivered.inc_by(delivered);
    }

    /// How many subscribers are registered, and how many frames are queued for them all.
    fn census(&self) -> (usize, i64) {
        let registry = self.registry.read().expect("hub registry");
        let mut seen = std::collections::HashSet::new();
        let mut queued = 0;
        for slot in registry
            .by_topic
            .values()
            .flatten()
            .chain(&registry.patterned)
        {
            if seen.insert(slot.id) {
                queued += (slot.tx.max_capacity() - slot.tx.capacity()) as i64;
            }
        }
        (seen.len(), queued)
    }

    fn mark_all_lagged(&self) {
        let registry = self.registry.read().expect("hub registry");
        for slot in registry
            .by_topic
            .values()
            .flatten()
            .chain(&registry.patterned)
        {
            slot.lagged.store(true, Ordering::Release);
        }
    }
}

/// The hub task's state: puts the feed in sequence order.
struct Sequencer {
    inner: Arc<Inner>,
    store: Arc<dyn History>,
    expected: u64,
    pending: BTreeMap<u64, Arc<Event>>,
    gap_timeout: Duration,
}

impl Sequencer {
    async fn run(mut self, mut feed: Feed) {
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
    /// store cannot supply them, every subscriber catches up from the store on its own.
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
                    for event in page.events.iter().take_while(|e| e.seq < first_pending) {
                        self.inner.fan_out(event);
                    }
                    self.expected = (page.next_after + 1).min(first_pending);
                    if page.end {
                        break;
                    }
                }
                Err(e) => {
                    self.inner.metrics.store_error("read");
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
}

/// A subscriber's end of the hub: its queue and its lagged flag. Dropping it unregisters.
#[derive(Debug)]
pub struct Subscription {
    slot: Arc<Slot>,
    rx: mpsc::Receiver<Delivery>,
    hub: Arc<Inner>,
}

impl Subscription {
    /// The next queued delivery.
    pub async fn recv(&mut self) -> Option<Delivery> {
        self.rx.recv().await
    }

    /// The next queued delivery, if one is queued.
    pub fn try_recv(&mut self) -> Option<Delivery> {
        self.rx.try_recv().ok()
    }

    /// Whether the queue is empty now.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// Whether the queue overflowed: the hub skips this subscriber until [`Self::rearm`].
    pub fn lagged(&self) -> bool {
        self.slot.lagged.load(Ordering::Acquire)
    }

    /// Resumes live delivery. Call it before reading the store to catch up, so every event is
    /// either in the catch-up read or in the queue.
    pub fn rearm(&self) {
        self.slot.lagged.store(false, Ordering::Release);
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut registry = self.hub.registry.write().expect("hub registry");
        let id = self.slot.id;
        if self.slot.filter.patterns().is_empty() {
            for topic in self.slot.filter.exact() {
                if let Some(slots) = registry.by_topic.get_mut(topic) {
                    slots.retain(|s| s.id != id);
                    if slots.is_empty() {
                        registry.by_topic.remove(topic);
                    }
                }
            }
        } else {
            registry.patterned.retain(|s| s.id != id);
        }
    }
}

#[cfg(test)]
mod tests {
    use herald_bus::{Announce, Bus, MemoryBus};
    use herald_core::{EventType, NewEvent, event::parse_data};
    use herald_store::{MemoryStore, Store, StoreOptions};

    use super::*;

    fn new_event(topic: &str) -> NewEvent {
        NewEvent {
            topic: Topic::new(topic).unwrap(),
            event_type: EventType::default(),
            data: parse_data("1".into()).unwrap(),
        }
    }

    async fn setup(capacity: usize) -> (Hub, Arc<dyn Store>, MemoryBus) {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new(StoreOptions::default()));
        let bus = MemoryBus::new(64);
        let bounds = store.bounds().await.unwrap();
        let hub = Hub::start(
            bus.subscribe().await.unwrap(),
            Arc::clone(&store) as Arc<dyn herald_store::History>,
            bounds.epoch,
            bounds.head,
            capacity,
            Duration::from_millis(20),
            1 << 20,
            Arc::new(Metrics::new()),
        );
        (hub, store, bus)
    }

    async fn seqs(sub: &mut Subscription, n: usize) -> Vec<u64> {
        let mut out = Vec::new();
        for _ in 0..n {
            let d = tokio::time::timeout(Duration::from_secs(2), sub.recv())
                .await
                .expect("delivery in time")
                .unwrap();
            out.push(d.seq);
        }
        out
    }

    #[tokio::test]
    async fn out_of_order_publishes_are_delivered_in_order_once() {
        let (hub, store, bus) = setup(64).await;
        let mut sub = hub.subscribe(TopicFilter::parse(["a"]).unwrap());
        let mut events = Vec::new();
        for _ in 0..4 {
            events.extend(
                store
                    .append(vec![new_event("a")], None)
                    .await
                    .unwrap()
                    .events,
            );
        }
        bus.publish(&[events[1].clone(), events[0].clone(), events[0].clone()])
            .await
            .unwrap();
        bus.publish(&[events[3].clone(), events[2].clone()])
            .await
            .unwrap();
        assert_eq!(seqs(&mut sub, 4).await, vec![1, 2, 3, 4]);
        assert!(sub.is_empty());
    }

    #[tokio::test]
    async fn every_subscriber_gets_the_same_encoded_bytes() {
        let (hub, store, bus) = setup(8).await;
        let mut a = hub.subscribe(TopicFilter::parse(["t"]).unwrap());
        let mut b = hub.subscribe(TopicFilter::parse(["t.>", "x"]).unwrap());
        let mut c = hub.subscribe(TopicFilter::parse(["t", "t.*"]).unwrap());
        let appended = store.append(vec![new_event("t")], None).await.unwrap();
        bus.publish(&appended.events).await.unwrap();
        let (da, dc) = (a.recv().await.unwrap(), c.recv().await.unwrap());
        assert_eq!(da.frame.as_ptr(), dc.frame.as_ptr(), "one encoding, shared");
        assert!(da.frame.starts_with(b"id: "));
        let appended = store.append(vec![new_event("t.y")], None).await.unwrap();
        bus.publish(&appended.events).await.unwrap();
        let (db, dc) = (b.recv().await.unwrap(), c.recv().await.unwrap());
        assert_eq!(
            (db.seq, dc.seq),
            (2, 2),
            "t.y reaches the pattern subscribers once each"
        );
        assert!(a.is_empty() && b.is_empty() && c.is_empty());
    }

    #[tokio::test]
    async fn a_gap_that_never_fills_is_read_from_the_store() {
        let (hub, store, bus) = setup(64).await;
        let mut sub = hub.subscribe(TopicFilter::parse(["a.*"]).unwrap());
        let mut events = Vec::new();
        for topic in ["a.x", "b", "a.y"] {
            events.extend(
                store
                    .append(vec![new_event(topic)], None)
                    .await
                    .unwrap()
                    .events,
            );
        }
        // Only the last one is announced: 1 and 2 must come from the store, 2 is filtered out.
        bus.publish(&[events[2].clone()]).await.unwrap();
        assert_eq!(seqs(&mut sub, 2).await, vec![1, 3]);
    }

    #[tokio::test]
    async fn a_lost_event_is_filled_within_the_gap_timeout_despite_steady_traffic() {
        let (hub, store, bus) = setup(64).await;
        let mut sub = hub.subscribe(TopicFilter::parse(["a"]).unwrap());
        store.append(vec![new_event("a")], None).await.unwrap();
        let started = tokio::time::Instant::now();
        let publisher = tokio::spawn(async move {
            // Event 1 is never announced; the others keep coming every 10 ms.
            for _ in 0..30 {
                let a = store.append(vec![new_event("a")], None).await.unwrap();
                bus.publish(&a.events).await.unwrap();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        assert_eq!(seqs(&mut sub, 1).await, vec![1]);
        let waited = started.elapsed();
        assert!(
            waited < Duration::from_millis(150),
            "gap filled after {waited:?}"
        );
        publisher.await.unwrap();
        assert_eq!(seqs(&mut sub, 30).await, (2..=31).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_full_queue_marks_only_that_subscriber_lagged() {
        let (hub, store, bus) = setup(2).await;
        let slow = hub.subscribe(TopicFilter::parse(["t"]).unwrap());
        let mut fast = hub.subscribe(TopicFilter::parse(["t"]).unwrap());
        for _ in 0..5 {
            let a = store.append(vec![new_event("t")], None).await.unwrap();
            bus.publish(&a.events).await.unwrap();
            let got = seqs(&mut fast, 1).await;
            assert_eq!(got, a.seqs);
        }
        assert!(slow.lagged() && !fast.lagged());
        slow.rearm();
        assert!(!slow.lagged());
        drop(slow);
        assert_eq!(hub.subscribers(), 1);
    }
}
