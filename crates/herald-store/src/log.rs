//! What a publish is committed to.

use std::fmt;

use async_trait::async_trait;
use herald_core::NewEvent;

use crate::{Appended, Idempotency, StoreError};

/// Sequences and durably records a batch, then makes it visible to subscribers. `Ok` means the
/// events will never be lost (G1).
#[async_trait]
pub trait EventLog: Send + Sync + fmt::Debug {
    /// Appends a batch, all or nothing.
    async fn append(
        &self,
        batch: Vec<NewEvent>,
        idempotency: Option<Idempotency>,
    ) -> Result<Appended, StoreError>;
}
