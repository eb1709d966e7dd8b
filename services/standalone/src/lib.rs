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
pub use config::{Config, Options};
pub use herald_store::StoreKind;
