//! Cross-process tests of the standalone `herald` binary: each test starts its own process on a
//! free port with its own data directory.

mod api;
mod auth;
mod checker;
mod cli;
mod crash;
mod delivery;
mod drain;
mod edge;
mod http2;
mod isolation;
mod loadgen;
mod resume;
mod schemathesis;
