//! The process runtime every Herald service shares.
//!
//! - [`options`]: the options every process takes (listen, logs, traces, drain, config file),
//!   the admin listener's, and the article's topic.
//! - [`signal`]: SIGTERM (Kubernetes) and SIGINT (a developer) as one future.
//! - [`drain`]: the drain switch: readiness flips, the listener stops, streams end with jitter.
//! - [`health`]: `/healthz` and `/readyz`.
//! - [`error`]: the API's error codes, the error answer with its one `IntoResponse`, and the one
//!   mapping of store failures to answers.
//! - [`http`]: bounded JSON bodies.
//! - [`openapi`]: the OpenAPI document's shared part (errors, security, ops routes) and its route.
//! - [`connection`]: a connection's bytes (TCP or TLS) and its HTTP/2 settings.
//! - [`listener`]: a TCP listener whose connections time out writes to a peer that stopped
//!   reading, so a stalled subscriber is cut off instead of pinning memory.
//! - [`serve`]: serve a router until shutdown, then drain it under a deadline; the ops routes.
//! - `stall`: the write timeout of each HTTP/2 stream.
//! - [`tls`]: TLS termination with certificate rotation, ALPN for HTTP/2.

pub mod connection;
pub mod drain;
pub mod error;
pub mod health;
pub mod http;
pub mod lean;
pub mod listener;
pub mod openapi;
pub mod options;
pub mod serve;
pub mod signal;
mod span;
mod stall;
pub mod tls;

pub use drain::{Drain, DrainWatch};
pub use error::{ApiError, ErrorCode};
pub use health::Health;
pub use options::{AdminOptions, ArticleOptions, ProcessOptions};
