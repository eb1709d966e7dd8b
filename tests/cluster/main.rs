//! The distributed mode against real servers: nats-server with JetStream, the MongoDB-wire server
//! (or a real MongoDB at `$HERALD_TEST_MONGODB_URI`), nginx, and Herald's own ingest and gateway
//! processes.

mod api;
mod auth;
mod backend_auth;
mod bridge;
mod checker;
mod cli;
mod common;
mod config;
mod contracts;
mod epoch;
mod fanout;
mod faults;
mod metrics;
mod mongo;

mod redis_bus;
mod rehearsal;
mod restarts;
mod rolling;
mod schemathesis;
mod tiers;
mod tracing;
