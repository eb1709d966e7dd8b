//! The in-process bus: a bounded broadcast channel. A feed that falls more than the capacity
//! behind skips the events it missed; the consumer sees the gap in the sequence and fills it.

use std::sync::Arc;

use async_trait::async_trait;
use futures_util::StreamExt;
use herald_core::Event;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;

use crate::{Announce, Bus, BusError, Feed};

/// The standalone node's bus.
#[derive(Debug, Clone)]
pub struct MemoryBus {
    tx: broadcast::Sender<Arc<Event>>,
}

impl MemoryBus {
    /// A bus whose feeds buffer up to `capacity` events.
    pub fn new(capacity: usize) -> Self {
        Self {
            tx: broadcast::channel(capacity.max(1)).0,
        }
    }
}

impl Default for MemoryBus {
    fn default() -> Self {
        Self::new(16_384)
    }
}

#[async_trait]
impl Bus for MemoryBus {
    async fn subscribe(&self) -> Result<Feed, BusError> {
        Ok(BroadcastStream::new(self.tx.subscribe())
            .filter_map(|item| std::future::ready(item.ok()))
            .boxed())
    }
}

#[async_trait]
impl Announce for MemoryBus {
    async fn publish(&self, events: &[Arc<Event>]) -> Result<(), BusError> {
        for event in events {
            // No feed yet is not an error: nothing is listening.
            let _ = self.tx.send(Arc::clone(event));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;
    use herald_core::{EventType, Topic, event::parse_data};

    use super::*;

    fn event(seq: u64) -> Arc<Event> {
        Arc::new(Event {
            seq,
            topic: Topic::new("t").unwrap(),
            event_type: EventType::default(),
            data: parse_data("1".into()).unwrap(),
            time_ms: 0,
            trace: None,
        })
    }

    #[tokio::test]
    async fn every_feed_sees_every_event_in_order() {
        let bus = MemoryBus::new(8);
        let (mut a, mut b) = (
            bus.subscribe().await.unwrap(),
            bus.subscribe().await.unwrap(),
        );
        bus.publish(&[event(1), event(2)]).await.unwrap();
        for feed in [&mut a, &mut b] {
            assert_eq!(feed.next().await.unwrap().seq, 1);
            assert_eq!(feed.next().await.unwrap().seq, 2);
        }
    }

    #[tokio::test]
    async fn a_lagging_feed_skips_what_it_missed() {
        let bus = MemoryBus::new(2);
        let mut feed = bus.subscribe().await.unwrap();
        let events: Vec<_> = (1..=5).map(event).collect();
        bus.publish(&events).await.unwrap();
        assert_eq!(feed.next().await.unwrap().seq, 4);
        assert_eq!(feed.next().await.unwrap().seq, 5);
    }

    #[tokio::test]
    async fn the_memory_bus_keeps_the_feed_contract() {
        let bus = MemoryBus::new(64);
        let next = std::sync::atomic::AtomicU64::new(1);
        let publish = |batch: Vec<herald_core::NewEvent>| {
            let events: Vec<Arc<Event>> = batch
                .into_iter()
                .map(|e| {
                    Arc::new(Event {
                        seq: next.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                        topic: e.topic,
                        event_type: e.event_type,
                        data: e.data,
                        time_ms: 0,
                        trace: None,
                    })
                })
                .collect();
            let bus = &bus;
            async move {
                bus.publish(&events).await.unwrap();
                events
            }
        };
        crate::contract::check_feed("memory", &bus, publish).await;
    }
}
