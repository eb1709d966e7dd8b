//! The bus options: which bus, where Redis is, the channel.

use std::path::PathBuf;

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
    /// PEM CA certificates the Redis server's certificate is checked against (a `rediss://`
    /// URL; without this, the system's roots).
    #[arg(long, env = "HERALD_REDIS_CA_FILE", value_name = "FILE")]
    pub redis_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for Redis mutual TLS, with --redis-tls-key-file.
    #[arg(
        long,
        env = "HERALD_REDIS_TLS_CERT_FILE",
        value_name = "FILE",
        requires = "redis_tls_key_file"
    )]
    pub redis_tls_cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(
        long,
        env = "HERALD_REDIS_TLS_KEY_FILE",
        value_name = "FILE",
        requires = "redis_tls_cert_file"
    )]
    pub redis_tls_key_file: Option<PathBuf>,
}

impl RedisOptions {
    /// A client for the configured Redis (the URL was checked when it was parsed): over TLS for
    /// a `rediss://` URL, with the configured CA and client certificate.
    pub fn client(&self) -> redis::RedisResult<redis::Client> {
        let url = self.redis_url.expose();
        if self.redis_ca_file.is_none() && self.redis_tls_cert_file.is_none() {
            return redis::Client::open(url);
        }
        if !url.starts_with("rediss://") {
            return Err(redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "--redis-ca-file and --redis-tls-cert-file need a rediss:// URL",
            )));
        }
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|e| {
                redis::RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "cannot read a Redis TLS file",
                    format!("{}: {e}", path.display()),
                ))
            })
        };
        let client_tls = match (&self.redis_tls_cert_file, &self.redis_tls_key_file) {
            (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                client_cert: read(cert)?,
                client_key: read(key)?,
            }),
            _ => None,
        };
        let root_cert = self.redis_ca_file.as_ref().map(read).transpose()?;
        redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls,
                root_cert,
            },
        )
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
