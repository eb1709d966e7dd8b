//! The event bus: how sequenced events reach every gateway.
//!
//! [`Bus`] is the small trait every backend implements; services hold it as `Arc<dyn Bus>`. A
//! gateway takes one [`Bus::subscribe`] feed for all the topics it serves (never one per browser)
//! and fans it out itself.
//!
//! A feed carries events in the order the bus saw them, which is not always sequence order (two
//! publishers race; a subscriber falls behind and loses some). Consumers order by sequence and
//! fill gaps from the store; the gateway's hub does.
//!
//! - [`memory`]: the in-process bus of the standalone node (a broadcast channel).
//! - `contract` (feature `test-util`): the feed contract every bus answers to.

use std::{fmt, pin::Pin, sync::Arc};

use async_trait::async_trait;
use futures_util::Stream;
use herald_core::Event;

#[cfg(any(test, feature = "test-util"))]
pub mod contract;
pub mod memory;

pub use memory::MemoryBus;

/// A live feed of events.
pub type Feed = Pin<Box<dyn Stream<Item = Arc<Event>> + Send>>;

/// Why a publish failed.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The bus is shut down.
    #[error("the bus is closed")]
    Closed,
    /// The backend failed.
    #[error("bus backend error")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Carries sequenced events to every gateway.
#[async_trait]
pub trait Bus: Send + Sync + fmt::Debug {
    /// A feed of every event published from now on: every event published after this returns
    /// is in it, or is missing from it as a gap in the sequence.
    async fn subscribe(&self) -> Result<Feed, BusError>;
}

/// A bus that announces events sequenced elsewhere (by the store): the standalone node's. A bus
/// that sequences events itself (JetStream) has its own publish, which answers the sequences.
#[async_trait]
pub trait Announce: Bus {
    /// Announces stored events, in sequence order.
    async fn publish(&self, events: &[Arc<Event>]) -> Result<(), BusError>;
}
