//! Why input is refused. Every variant maps to a 4xx answer in the services.

use thiserror::Error;

/// A value that does not satisfy the contract of ARCHITECTURE.md §4.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ValidationError {
    /// A topic name is empty, too long, or has a character outside `[A-Za-z0-9_.-]`.
    #[error(
        "invalid topic {0:?}: use 1-128 characters of A-Z a-z 0-9 _ . - with non-empty dot-separated levels"
    )]
    Topic(String),
    /// A topic pattern is not a topic whose levels may be `*` (one level) or a final `>` (the rest).
    #[error(
        "invalid topic pattern {0:?}: levels are names, `*` (one level) or a final `>` (one or more levels)"
    )]
    Pattern(String),
    /// An event type is empty, too long, or contains a control character (CR, LF, NUL…).
    #[error(
        "invalid event type {0:?}: use 1-64 characters without control characters (CR, LF, NUL)"
    )]
    EventType(String),
    /// A publisher named an event type that is Herald's or EventSource's own
    /// ([`crate::EventType::is_reserved`]).
    #[error(
        "event type {0:?} is reserved: `herald.*` names Herald's control events, `error` and `open` EventSource's own"
    )]
    ReservedType(String),
    /// The event data is not JSON.
    #[error("event data is not valid JSON: {0}")]
    Data(String),
    /// An idempotency key is empty, too long, or contains a control character.
    #[error("invalid Idempotency-Key: use 1-256 visible characters")]
    IdempotencyKey,
}
