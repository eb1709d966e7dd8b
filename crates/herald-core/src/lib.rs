//! Herald's contract: what an event is and how it travels over Server-Sent Events.
//!
//! This crate has no I/O and no async runtime, so every other crate (stores, buses, services,
//! tests, benchmarks) can depend on it without pulling anything in.
//!
//! - [`topic`]: validated [`Topic`] names and [`TopicPattern`]s (`scores.*`, `scores.>`), and the
//!   [`TopicFilter`] a connection subscribes with.
//! - [`event`]: the [`EventType`], a [`NewEvent`] before it is sequenced, and a stored [`Event`].
//! - [`id`]: the deployment [`Epoch`], the SSE [`EventId`] (`<epoch>-<seq>`) and the resume
//!   verdict sent as `event: herald.resume`.
//! - [`sse`]: the one encoder that owns the wire format, and a WHATWG-conformant decoder used by
//!   tests and the load generator.
//! - [`trace`]: the W3C [`TraceContext`] an event carries from its publish to its delivery.
//! - [`error`]: [`ValidationError`], the reasons input is refused.

pub mod error;
pub mod event;
pub mod id;
pub mod sse;
pub mod topic;
pub mod trace;

pub use error::ValidationError;
pub use event::{Batch, BatchItem, Event, EventType, NewEvent, PublishBody};
pub use id::{Bounds, Epoch, EventId, ResumeReason, ResumeVerdict};
pub use topic::{Topic, TopicFilter, TopicPattern, covers};
pub use trace::TraceContext;
