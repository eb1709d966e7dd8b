//! The process runtime every Herald service shares.
//!
//! - [`config`]: layered configuration helpers (TOML file, durations in `15s` form).
//! - [`signal`]: SIGTERM (Kubernetes) and SIGINT (a developer) as one future.
//! - [`drain`]: the drain switch: readiness flips, the listener stops, streams end with jitter.
//! - [`health`]: `/healthz` and `/readyz`.
//! - [`http`]: the API error type with its one `IntoResponse`, and bounded JSON bodies.
//! - [`listener`]: a TCP listener whose connections time out writes to a peer that stopped
//!   reading, so a stalled subscriber is cut off instead of pinning memory.
//! - [`serve`]: serve a router until shutdown, then drain it under a deadline; the ops routes.

pub mod config;
pub mod drain;
pub mod health;
pub mod http;
pub mod listener;
pub mod serve;
pub mod signal;

pub use drain::{Drain, DrainWatch};
pub use health::Health;
pub use http::ApiError;
