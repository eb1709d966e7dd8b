//! The `herald` configuration: defaults, then an optional TOML file (`--config`), then `HERALD_*`
//! environment variables, then flags. Every option has all three spellings: the flag
//! `--max-body`, the variable `HERALD_MAX_BODY`, the file key `max_body`. Each option is defined
//! once, by the library that uses it, and the distributed binaries share the same definitions.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use clap::Parser;
use herald_auth::AuthOptions;
use herald_config::{ConfigError, defaults};
use herald_gateway::{GatewayConfig, GatewayOptions};
use herald_ingest::{IngestConfig, IngestOptions};
use herald_runtime::{AdminOptions, ArticleOptions, ProcessOptions, serve::ServeOptions};
use herald_store::{EmbeddedOptions, RetentionOptions, StoreKind, StoreOptions};
use herald_telemetry::{LogFormat, TracesMode};

/// Every option, as given by the flags, the environment or the file.
#[derive(Debug, Parser)]
#[command(
    name = "herald",
    version,
    about = "Herald: Server-Sent Events that never lose an event. One process, embedded store.",
    long_about = "Herald: Server-Sent Events that never lose an event.\n\n\
        This is the standalone node: publish API, SSE gateway with Last-Event-ID resume, and the \
        demo page at /, over an embedded crash-safe store in --data-dir. Every option can also be \
        set with its HERALD_* environment variable or in a TOML file (--config) under the option's \
        name with underscores (max_body = \"1MiB\"). Flags win over the environment, which wins \
        over the file.\n\n\
        Access: on a loopback address with no access options, anyone may read and publish (the \
        demo). Beyond loopback Herald refuses to start until token keys (--auth-*) or anonymous \
        access (--anonymous-*) are configured. `herald token --help` mints tokens for an HMAC key.

Commands for a running server's API: `herald publish --help` (events from arguments or standard input, retried safely) and `herald tail --help` (follows topics, resuming across disconnects)."
)]
pub struct Options {
    #[command(flatten)]
    process: ProcessOptions,
    #[command(flatten)]
    admin: AdminOptions,
    #[command(flatten)]
    store: EmbeddedOptions,
    #[command(flatten)]
    retention: RetentionOptions,
    #[command(flatten)]
    gateway: GatewayOptions,
    #[command(flatten)]
    ingest: IngestOptions,
    #[command(flatten)]
    auth: AuthOptions,
    #[command(flatten)]
    article: ArticleOptions,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Where the ops routes listen, when not on `listen`.
    pub admin_listen: Option<SocketAddr>,
    /// How long `/prestop` (admin listener) waits before it answers.
    pub prestop_delay: Duration,
    /// The embedded store's directory.
    pub data_dir: PathBuf,
    /// Which store.
    pub store: StoreKind,
    /// Store retention.
    pub store_options: StoreOptions,
    /// How often retention runs.
    pub trim_interval: Duration,
    /// The gateway's settings.
    pub gateway: GatewayConfig,
    /// The ingest settings.
    pub ingest: IngestConfig,
    /// How the server is run and drained, and the limits of its HTTP edge.
    pub serve: ServeOptions,
    /// Log filter.
    pub log: String,
    /// Log format.
    pub log_format: LogFormat,
    /// Whether spans are exported.
    pub traces: TracesMode,
}

impl Default for Config {
    fn default() -> Self {
        let options = Options {
            process: defaults(),
            admin: defaults(),
            store: defaults(),
            retention: defaults(),
            gateway: defaults(),
            ingest: defaults(),
            auth: defaults(),
            article: defaults(),
        };
        Self::resolve(options).expect("the defaults are valid")
    }
}

impl Config {
    /// Checks the options together and resolves them (each value was checked when parsed).
    pub fn resolve(o: Options) -> Result<Self, ConfigError> {
        let access = Arc::new(o.auth.resolve(o.process.listen)?);
        Ok(Self {
            listen: o.process.listen,
            admin_listen: o.admin.admin_listen,
            prestop_delay: o.admin.prestop_delay,
            data_dir: o.store.data_dir.clone(),
            store: o.store.store,
            store_options: StoreOptions::new(&o.retention, &o.store),
            trim_interval: o.retention.trim_interval,
            gateway: o
                .gateway
                .resolve(&o.article, &o.process, Arc::clone(&access))?,
            ingest: o.ingest.resolve(&o.article, access),
            serve: o.process.serve(),
            log: o.process.log,
            log_format: o.process.log_format,
            traces: o.process.traces,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Options, clap::Error> {
        herald_config::try_parse_from(std::iter::once("herald").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::default();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.gateway.heartbeat, Duration::from_secs(15));
        assert_eq!(c.ingest.max_body_bytes, 65536);
    }

    #[test]
    fn flags_win_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("herald.toml");
        std::fs::write(
            &file,
            "max_body = \"1MiB\"\nheartbeat = \"3s\"\nretention_age = \"off\"\nmax_batch = 7\n",
        )
        .unwrap();
        let o = parse(&["--config", file.to_str().unwrap(), "--heartbeat", "9s"]).unwrap();
        let c = Config::resolve(o).unwrap();
        assert_eq!(c.gateway.heartbeat, Duration::from_secs(9));
        assert_eq!(c.ingest.max_body_bytes, 1 << 20);
        assert_eq!(c.ingest.max_batch, 7);
        assert_eq!(c.store_options.max_age, None);
    }

    #[test]
    fn bad_values_are_refused_with_the_option_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("herald.toml");
        std::fs::write(&file, "no_such_option = 1\n").unwrap();
        assert!(parse(&["--config", file.to_str().unwrap()]).is_err());
        let e =
            Config::resolve(parse(&["--drain-jitter", "30s", "--drain-deadline", "10s"]).unwrap())
                .unwrap_err();
        assert!(e.to_string().contains("--drain-jitter"), "{e}");
        let e = parse(&["--demo-topic", "bad topic"]).unwrap_err();
        assert!(format!("{e:#}").contains("--demo-topic"), "{e:#}");
        assert!(parse(&["--heartbeat", "soon"]).is_err());
        assert!(parse(&["--max-batch", "0"]).is_err());
    }
}
