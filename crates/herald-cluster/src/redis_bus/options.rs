//! The bus options: which bus, where Redis is, the channel.

use super::*;

/// The channel events travel on by default.
pub const DEFAULT_CHANNEL: &str = "herald:events";

/// Which bus carries events between ingests and gateways.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BusKind {
    /// NATS JetStream sequences, carries and keeps recent events; MongoDB keeps the history.
    Jetstream,
    /// MongoDB sequences and keeps events; Redis Pub/Sub carries them (no NATS).
    Redis,
}

/// The bus options `herald-ingest` and `herald-gateway` share.
#[derive(Debug, Clone, clap::Args)]
pub struct BusOptions {
    /// The bus: `jetstream` (NATS JetStream, the default) or `redis` (MongoDB sequences and keeps
    /// events, Redis Pub/Sub carries them, gateways fill what Redis loses from MongoDB; no NATS).
    #[arg(long, env = "HERALD_BUS", value_enum, default_value = "jetstream")]
    pub bus: BusKind,
    /// Where Redis is (`--bus redis`).
    #[command(flatten)]
    pub redis: RedisOptions,
    /// The Redis Pub/Sub channel events travel on (`--bus redis`).
    #[arg(long, env = "HERALD_REDIS_CHANNEL", value_name = "NAME", default_value = DEFAULT_CHANNEL, value_parser = channel)]
    pub redis_channel: String,
}

/// Where Redis is: the Redis bus's and the Redis bridge's one option.
#[derive(Debug, Clone, clap::Args)]
pub struct RedisOptions {
    /// Redis URL.
    #[arg(
        long,
        env = "HERALD_REDIS_URL",
        value_name = "URL",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true,
        value_parser = redis_url
    )]
    pub redis_url: Secret,
}

impl RedisOptions {
    /// A client for the configured Redis (the URL was checked when it was parsed).
    pub fn client(&self) -> redis::RedisResult<redis::Client> {
        redis::Client::open(self.redis_url.expose())
    }
}

/// `--redis-url`: a URL the Redis client accepts.
fn redis_url(s: &str) -> Result<Secret, String> {
    redis::Client::open(s).map_err(|e| e.to_string())?;
    Ok(Secret::new(s))
}

/// `--redis-channel`: not empty.
fn channel(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    Ok(s.to_owned())
}
