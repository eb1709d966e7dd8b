//! Herald's configuration model, shared by every binary.
//!
//! Each library owns its options as one clap [`Args`](clap::Args) struct whose attributes hold
//! the flag, its `HERALD_*` variable, its `--help` text and its one default; each converts into
//! its runtime settings in one place (a `TryFrom`/`resolve`). A binary flattens the structs it
//! needs, so an option that two binaries share has one definition and one validation.
//!
//! - [`layered`]: parsing with the same layering for every binary: flags, then the environment,
//!   then the `--config` TOML file, then the default. Unknown file keys are refused.
//! - [`units`]: the value parsers (durations, sizes, `off` limits, numbers in a range). Values out
//!   of range are refused by the parser, so a bad option is a usage error (exit code 2) naming
//!   the option, at start-up, never a failure at run time.
//! - [`Secret`]: tokens, keys and URIs with credentials, redacted in `Debug` and `Display`.

pub mod layered;
mod secret;
pub mod units;

pub use layered::{ConfigError, defaults, parse, try_parse_from};
pub use secret::Secret;
pub use units::Limit;
