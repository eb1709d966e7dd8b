//! Herald's wire contract: the bus envelope every NATS message carries.
//!
//! The types are generated from `herald/v1/envelope.proto` by `prost-build` and committed
//! (`src/herald.v1.rs`); `tests/generated.rs` fails when they are stale and says how to refresh
//! them. See `README.md` for the subject scheme, the stream and consumer configuration, and the
//! MongoDB collections.

#![allow(missing_docs, unreachable_pub)]

/// `package herald.v1`.
pub mod v1 {
    include!("herald.v1.rs");
}

pub use v1::{Envelope, Origin};
