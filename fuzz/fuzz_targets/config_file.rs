//! The config file (`--config FILE`, TOML): whatever the file holds, parsing ends in options or
//! in an error message — never a panic — and a file's value never beats a flag given on the
//! command line. The options are a sample of each kind the binaries use: durations, sizes,
//! limits with `off`, counts, lists, enums, booleans, secrets.
#![no_main]

use std::{path::PathBuf, sync::OnceLock, time::Duration};

use clap::Parser;
use herald_config::{Limit, Secret, units};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Store {
    Embedded,
    Memory,
}

#[derive(Debug, Parser)]
#[command(name = "herald")]
struct Options {
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
    #[arg(long, default_value = "15s", value_parser = units::positive_duration)]
    heartbeat: Duration,
    #[arg(long, default_value = "7days", value_parser = units::duration_limit)]
    retention_age: Limit<Duration>,
    #[arg(long, default_value = "1GiB", value_parser = units::bytes_limit)]
    retention_bytes: Limit<u64>,
    #[arg(long, default_value_t = 100, value_parser = units::count(1..=1000))]
    max_batch: usize,
    #[arg(long, value_delimiter = ',')]
    cors_origins: Vec<String>,
    #[arg(long, value_enum, default_value = "embedded")]
    store: Store,
    #[arg(long)]
    anonymous_publish: bool,
    #[arg(long, value_parser = units::secret)]
    publish_token: Option<Secret>,
}

fn path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        std::env::temp_dir().join(format!("herald-fuzz-config-{}.toml", std::process::id()))
    })
}

fuzz_target!(|input: &[u8]| {
    std::fs::write(path(), input).unwrap();
    let config = path().to_str().unwrap();
    let _ = herald_config::try_parse_from::<Options, _, _>(["herald", "--config", config]);
    // A flag beats the file, whatever the file says about the same option.
    if let Ok(options) = herald_config::try_parse_from::<Options, _, _>([
        "herald",
        "--config",
        config,
        "--max-batch",
        "7",
    ]) {
        assert_eq!(options.max_batch, 7);
    }
});
