//! The standalone `herald` node: ingest and gateway in one process, over the embedded store and
//! the in-process bus.
//!
//! - [`config`]: options from flags, `HERALD_*` environment and a TOML file, resolved to a
//!   [`Config`].
//! - [`app`]: [`App::build`] composes the services; [`App::run`] serves a listener until a shutdown
//!   future resolves, then drains.
//! - [`client`]: `herald publish` and `herald tail`, the API from the command line.

pub mod app;
pub mod client;
pub mod config;

pub use app::App;

/// The whole API's OpenAPI document, as every Herald process serves it at `/v1/openapi.json`
/// (`docs/openapi.json` is a copy a test keeps current).
pub fn openapi() -> serde_json::Value {
    herald_runtime::openapi::document([herald_ingest::openapi(), herald_gateway::openapi()])
}
pub use config::{Config, Options};
pub use herald_store::StoreKind;
