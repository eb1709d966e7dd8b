//! The `herald` configuration: defaults, then an optional TOML file (`--config`), then `HERALD_*`
//! environment variables, then flags. Every option has all three spellings: the flag
//! `--max-body`, the variable `HERALD_MAX_BODY`, the file key `max_body`.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context, bail};
use clap::Parser;
use herald_core::Topic;
use herald_gateway::GatewayConfig;
use herald_ingest::{BearerToken, IngestConfig};
use herald_runtime::config::{self, parse_bytes, parse_duration};
use herald_store::StoreOptions;
use herald_telemetry::{LogFormat, TracesMode};
use serde::Deserialize;

/// Which store the node keeps events in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// Durable, on disk in the data directory (redb).
    Embedded,
    /// In memory: lost on exit. For tests and demos.
    Memory,
}

/// Every option, as given by the file, the environment or the command line. Unset options fall
/// through to the next layer down, then to the default shown in `--help`.
#[derive(Debug, Default, Parser, Deserialize)]
#[command(
    name = "herald",
    version,
    about = "Herald: Server-Sent Events that never lose an event. One process, embedded store.",
    long_about = "Herald: Server-Sent Events that never lose an event.\n\n\
        This is the standalone node: publish API, SSE gateway with Last-Event-ID resume, and the \
        demo page at /, over an embedded crash-safe store in --data-dir. Every option can also be \
        set with its HERALD_* environment variable or in a TOML file (--config) under the option's \
        name with underscores (max_body = \"1MiB\"). Flags win over the environment, which wins \
        over the file."
)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// TOML config file.
    #[arg(long, env = "HERALD_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "HERALD_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Directory of the embedded store [default: ./data].
    #[arg(long, env = "HERALD_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Store backend [default: embedded].
    #[arg(long, env = "HERALD_STORE", value_enum)]
    pub store: Option<StoreKind>,
    /// Idle time before a comment heartbeat on a stream [default: 15s].
    #[arg(long, env = "HERALD_HEARTBEAT", value_parser = parse_duration, value_name = "DURATION")]
    #[serde(default, deserialize_with = "config::duration::deserialize")]
    pub heartbeat: Option<Duration>,
    /// Reconnection delay sent to browsers as `retry:` [default: 2s].
    #[arg(long, env = "HERALD_RETRY", value_parser = parse_duration, value_name = "DURATION")]
    #[serde(default, deserialize_with = "config::duration::deserialize")]
    pub retry: Option<Duration>,
    /// Largest request body; 413 past it [default: 64KiB].
    #[arg(long, env = "HERALD_MAX_BODY", value_parser = parse_bytes, value_name = "SIZE")]
    #[serde(default, deserialize_with = "config::bytes::deserialize")]
    pub max_body: Option<u64>,
    /// Most events in one batch publish; 413 past it [default: 100].
    #[arg(long, env = "HERALD_MAX_BATCH", value_name = "N")]
    pub max_batch: Option<usize>,
    /// Most topics and patterns per stream; 400 past it [default: 32].
    #[arg(long, env = "HERALD_MAX_TOPICS", value_name = "N")]
    pub max_topics: Option<usize>,
    /// Most open streams; 503 with Retry-After past it [default: 10000].
    #[arg(long, env = "HERALD_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Events queued per subscriber before it catches up from the store instead [default: 256].
    #[arg(long, env = "HERALD_SUBSCRIBER_QUEUE", value_name = "N")]
    pub subscriber_queue: Option<usize>,
    /// Events per store read during replay [default: 256].
    #[arg(long, env = "HERALD_REPLAY_PAGE", value_name = "N")]
    pub replay_page: Option<usize>,
    /// Bytes of recently delivered events kept in memory, so resumes and catch-ups inside them
    /// read no store; 0 keeps none [default: 64MiB].
    #[arg(long, env = "HERALD_REPLAY_WINDOW", value_parser = parse_bytes, value_name = "SIZE")]
    #[serde(default, deserialize_with = "config::bytes::deserialize")]
    pub replay_window: Option<u64>,
    /// A connection whose peer accepts no bytes for this long is closed [default: 30s].
    #[arg(long, env = "HERALD_WRITE_TIMEOUT", value_parser = parse_duration, value_name = "DURATION")]
    #[serde(default, deserialize_with = "config::duration::deserialize")]
    pub write_timeout: Option<Duration>,
    /// On SIGTERM/SIGINT, time allowed for streams to end and writes to flush [default: 25s].
    #[arg(long, env = "HERALD_DRAIN_DEADLINE", value_parser = parse_duration, value_name = "DURATION")]
    #[serde(default, deserialize_with = "config::duration::deserialize")]
    pub drain_deadline: Option<Duration>,
    /// Streams end at random within this after a drain starts; below the deadline [default: 5s].
    #[arg(long, env = "HERALD_DRAIN_JITTER", value_parser = parse_duration, value_name = "DURATION")]
    #[serde(default, deserialize_with = "config::duration::deserialize")]
    pub drain_jitter: Option<Duration>,
    /// Events older than this are removed, or `off` [default: 7days].
    #[arg(long, env = "HERALD_RETENTION_AGE", value_name = "DURATION|off")]
    pub retention_age: Option<String>,
    /// Oldest events are removed past this much data, or `off` [default: 1GiB].
    #[arg(long, env = "HERALD_RETENTION_BYTES", value_name = "SIZE|off")]
    pub retention_bytes: Option<String>,
    /// How long an Idempotency-Key answers with its first result [default: 24h].
    #[arg(long, env = "HERALD_IDEMPOTENCY_WINDOW", value_parser = parse_duration, value_name = "DURATION")]
    #[serde(default, deserialize_with = "config::duration::deserialize")]
    pub idempotency_window: Option<Duration>,
    /// How often retention runs [default: 10s].
    #[arg(long, env = "HERALD_TRIM_INTERVAL", value_parser = parse_duration, value_name = "DURATION")]
    #[serde(default, deserialize_with = "config::duration::deserialize")]
    pub trim_interval: Option<Duration>,
    /// Topic shown by the demo page at / [default: scores].
    #[arg(long, env = "HERALD_DEMO_TOPIC", value_name = "TOPIC")]
    pub demo_topic: Option<String>,
    /// Topic behind the article's PUT /api/post-update and GET /api/updates [default: updates].
    #[arg(long, env = "HERALD_COMPAT_TOPIC", value_name = "TOPIC")]
    pub compat_topic: Option<String>,
    /// Publishes must send `Authorization: Bearer TOKEN`; 401 otherwise [default: none, open].
    #[arg(
        long,
        env = "HERALD_PUBLISH_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub publish_token: Option<String>,
    /// Log filter, RUST_LOG syntax [default: info].
    #[arg(long, env = "HERALD_LOG", value_name = "FILTER")]
    pub log: Option<String>,
    /// Log format [default: text].
    #[arg(long, env = "HERALD_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormatArg>,
    /// Export spans over OTLP: `auto` when OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT is set, `otlp`,
    /// or `off` (the OTEL_* environment configures the rest) [default: auto].
    #[arg(long, env = "HERALD_TRACES", value_enum)]
    pub traces: Option<TracesArg>,
}

/// `--traces`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TracesArg {
    /// On when an OTLP endpoint is configured.
    Auto,
    /// Never.
    Off,
    /// Always.
    Otlp,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormatArg {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Takes each option from `$upper` where set, else from `$lower`.
macro_rules! layer {
    ($upper:expr, $lower:expr, $($field:ident),* $(,)?) => {{
        let (upper, lower) = ($upper, $lower);
        Options { config: upper.config, $($field: upper.$field.or(lower.$field)),* }
    }};
}

impl Options {
    /// Lays these options (flags and environment) over the config file they name, if any.
    pub fn over_file(self) -> anyhow::Result<Self> {
        let Some(path) = self.config.clone() else {
            return Ok(self);
        };
        let file: Options = config::from_file(&path)?;
        Ok(layer!(
            self,
            file,
            listen,
            data_dir,
            store,
            heartbeat,
            retry,
            max_body,
            max_batch,
            max_topics,
            max_connections,
            subscriber_queue,
            replay_page,
            replay_window,
            write_timeout,
            drain_deadline,
            drain_jitter,
            retention_age,
            retention_bytes,
            idempotency_window,
            trim_interval,
            demo_topic,
            compat_topic,
            publish_token,
            log,
            log_format,
            traces,
        ))
    }
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen.
    pub listen: SocketAddr,
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
    /// The write timeout for a peer that stopped reading.
    pub write_timeout: Duration,
    /// The drain deadline.
    pub drain_deadline: Duration,
    /// Log filter.
    pub log: String,
    /// Log format.
    pub log_format: LogFormat,
    /// Whether spans are exported.
    pub traces: TracesMode,
}

impl Default for Config {
    fn default() -> Self {
        Self::resolve(Options::default()).expect("the defaults are valid")
    }
}

impl Config {
    /// Applies defaults and checks the options.
    pub fn resolve(o: Options) -> anyhow::Result<Self> {
        let gw_default = GatewayConfig::default();
        let ingest_default = IngestConfig::default();
        let store_default = StoreOptions::default();
        let topic = |name: Option<String>, default: Topic, flag: &str| -> anyhow::Result<Topic> {
            name.map_or(Ok(default), |n| {
                Topic::new(&n).with_context(|| format!("--{flag}"))
            })
        };
        let compat_topic = topic(
            o.compat_topic,
            gw_default.compat_topic.clone(),
            "compat-topic",
        )?;
        let positive = |n: Option<usize>, default: usize, flag: &str| -> anyhow::Result<usize> {
            match n {
                Some(0) => bail!("--{flag} must be at least 1"),
                Some(n) => Ok(n),
                None => Ok(default),
            }
        };
        let gateway = GatewayConfig {
            heartbeat: o.heartbeat.unwrap_or(gw_default.heartbeat),
            retry: o.retry.unwrap_or(gw_default.retry),
            max_topics: positive(o.max_topics, gw_default.max_topics, "max-topics")?,
            max_connections: positive(
                o.max_connections,
                gw_default.max_connections,
                "max-connections",
            )?,
            subscriber_queue: positive(
                o.subscriber_queue,
                gw_default.subscriber_queue,
                "subscriber-queue",
            )?,
            replay_page: positive(o.replay_page, gw_default.replay_page, "replay-page")?,
            replay_window: o.replay_window.map_or(Ok(gw_default.replay_window), |b| {
                usize::try_from(b).context("--replay-window")
            })?,
            drain_jitter: o.drain_jitter.unwrap_or(gw_default.drain_jitter),
            demo_topic: topic(o.demo_topic, gw_default.demo_topic.clone(), "demo-topic")?,
            compat_topic: compat_topic.clone(),
            ..gw_default
        };
        let ingest = IngestConfig {
            max_body_bytes: o
                .max_body
                .map_or(ingest_default.max_body_bytes, |b| b as usize),
            max_batch: positive(o.max_batch, ingest_default.max_batch, "max-batch")?,
            compat_topic,
            auth: match o.publish_token {
                Some(token) if token.is_empty() => bail!("--publish-token must not be empty"),
                Some(token) => Arc::new(BearerToken::new(token)),
                None => ingest_default.auth,
            },
        };
        let store_options = StoreOptions {
            max_age: off_or(o.retention_age, store_default.max_age, |s| {
                parse_duration(s)
            })
            .context("--retention-age")?,
            max_bytes: off_or(o.retention_bytes, store_default.max_bytes, |s| {
                parse_bytes(s)
            })
            .context("--retention-bytes")?,
            idempotency_window: o
                .idempotency_window
                .unwrap_or(store_default.idempotency_window),
        };
        let drain_deadline = o.drain_deadline.unwrap_or(Duration::from_secs(25));
        if gateway.drain_jitter >= drain_deadline {
            bail!(
                "--drain-jitter ({:?}) must be shorter than --drain-deadline ({:?})",
                gateway.drain_jitter,
                drain_deadline
            );
        }
        if gateway.heartbeat.is_zero() {
            bail!("--heartbeat must be longer than zero");
        }
        Ok(Self {
            listen: o.listen.unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8080))),
            data_dir: o.data_dir.unwrap_or_else(|| PathBuf::from("data")),
            store: o.store.unwrap_or(StoreKind::Embedded),
            store_options,
            trim_interval: o.trim_interval.unwrap_or(Duration::from_secs(10)),
            gateway,
            ingest,
            write_timeout: o.write_timeout.unwrap_or(Duration::from_secs(30)),
            drain_deadline,
            log: o.log.unwrap_or_else(|| "info".into()),
            log_format: match o.log_format {
                Some(LogFormatArg::Json) => LogFormat::Json,
                _ => LogFormat::Text,
            },
            traces: match o.traces {
                Some(TracesArg::Off) => TracesMode::Off,
                Some(TracesArg::Otlp) => TracesMode::Otlp,
                Some(TracesArg::Auto) | None => TracesMode::Auto,
            },
        })
    }
}

/// `off` disables a limit; anything else is parsed; unset keeps the default.
fn off_or<T>(
    value: Option<String>,
    default: Option<T>,
    parse: impl Fn(&str) -> Result<T, String>,
) -> anyhow::Result<Option<T>> {
    match value.as_deref() {
        None => Ok(default),
        Some("off") => Ok(None),
        Some(s) => parse(s).map(Some).map_err(anyhow::Error::msg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Options {
        Options::try_parse_from(std::iter::once("herald").chain(args.iter().copied())).unwrap()
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
        let o = parse(&["--config", file.to_str().unwrap(), "--heartbeat", "9s"]);
        let c = Config::resolve(o.over_file().unwrap()).unwrap();
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
        let o = parse(&["--config", file.to_str().unwrap()]);
        assert!(o.over_file().is_err());
        let e = Config::resolve(parse(&["--drain-jitter", "30s", "--drain-deadline", "10s"]))
            .unwrap_err();
        assert!(e.to_string().contains("--drain-jitter"), "{e}");
        let e = Config::resolve(parse(&["--demo-topic", "bad topic"])).unwrap_err();
        assert!(format!("{e:#}").contains("--demo-topic"), "{e:#}");
        assert!(Options::try_parse_from(["herald", "--heartbeat", "soon"]).is_err());
        assert!(Config::resolve(parse(&["--max-batch", "0"])).is_err());
    }
}
