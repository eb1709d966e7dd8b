//! Herald's load generator, as a library: the benchmark suite (`cargo bench -p herald-tests
//! --bench suite`) drives the same scenarios in-process against the servers it starts.

pub mod http;
pub mod origin;
pub mod procfs;
pub mod publish;
pub mod reference;
pub mod scenario;
pub mod sub;

pub use scenario::{Options, Report, Scenario, Server};
