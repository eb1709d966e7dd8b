//! The standalone node's [`EventLog`]: the store is the commit point, then the in-process bus
//! announces the new events.

use std::sync::Arc;

use async_trait::async_trait;
use herald_bus::Announce;
use herald_core::{Event, NewEvent};
use herald_store::{Appended, EventLog, Idempotency, Store, StoreError};
use herald_telemetry::otel;
use tracing::{Instrument, Span};

/// The standalone log: the store is the commit point, then the bus announces the new events.
#[derive(Debug, Clone)]
pub struct StoreLog {
    store: Arc<dyn Store>,
    bus: Arc<dyn Announce>,
}

impl StoreLog {
    /// A log over a store and a bus.
    pub fn new(store: Arc<dyn Store>, bus: Arc<dyn Announce>) -> Self {
        Self { store, bus }
    }
}

#[async_trait]
impl EventLog for StoreLog {
    async fn append(
        &self,
        batch: Vec<NewEvent>,
        idempotency: Option<Idempotency>,
    ) -> Result<Appended, StoreError> {
        let (store, bus) = (Arc::clone(&self.store), Arc::clone(&self.bus));
        // A task of its own, so a client hanging up mid-request cannot separate the commit from
        // the announcement (the hub would then wait `gap_timeout` and read the store).
        let task = tokio::spawn(
            async move {
                let span = if herald_telemetry::traces_enabled() {
                    tracing::info_span!("store append", herald.events = batch.len())
                } else {
                    Span::none()
                };
                let appended = store.append(batch, idempotency).instrument(span).await?;
                if appended.duplicate {
                    return Ok(appended);
                }
                // A sampled request's events carry its context to the hub's fan-out span.
                let announced = match otel::sampled(otel::current_trace()) {
                    Some(trace) => appended
                        .events
                        .iter()
                        .map(|e| {
                            Arc::new(Event {
                                trace: Some(trace),
                                ..Event::clone(e)
                            })
                        })
                        .collect(),
                    None => appended.events.clone(),
                };
                if let Err(e) = bus.publish(&announced).await {
                    // Stored is what counts: gateways fill the gap from the store.
                    tracing::warn!(error = %e, "announcing stored events failed");
                }
                Ok(appended)
            }
            .in_current_span(),
        );
        task.await.map_err(|e| StoreError::Backend(Box::new(e)))?
    }
}
