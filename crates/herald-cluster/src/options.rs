//! What `herald-ingest`, `herald-gateway` and `herald-redis-bridge` share: where NATS and
//! MongoDB are, and how long each keeps events. Retention options shared with the standalone
//! `herald` ([`RetentionOptions`]: `--retention-age`, `--idempotency-window`, `--trim-interval`)
//! are defined once, in `herald-store`.

use std::{path::PathBuf, time::Duration};

use herald_config::{ConfigError, Limit, Secret, units};
use herald_store::RetentionOptions;

/// The connection and JetStream options of the distributed services.
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterOptions {
    /// NATS server URL; several, comma-separated, for a cluster.
    #[arg(
        long,
        env = "HERALD_NATS_URL",
        value_name = "URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,
    /// NATS credentials and TLS.
    #[command(flatten)]
    pub nats_auth: NatsAuthOptions,
    /// MongoDB connection string (credentials and TLS in it: `tls=true`, `tlsCAFile=...`).
    #[arg(
        long,
        env = "HERALD_MONGODB_URI",
        value_name = "URI",
        default_value = "mongodb://127.0.0.1:27017/?directConnection=true",
        hide_env_values = true,
        value_parser = mongodb_uri
    )]
    pub mongodb_uri: Secret,
    /// MongoDB database holding the `events`, `idempotency` and `meta` collections.
    #[arg(
        long,
        env = "HERALD_MONGODB_DATABASE",
        value_name = "NAME",
        default_value = "herald"
    )]
    pub mongodb_database: String,
    /// JetStream stream name.
    #[arg(long, env = "HERALD_STREAM", value_name = "NAME", default_value = "HERALD", value_parser = stream_name)]
    pub stream: String,
    /// JetStream keeps events this long, or `off` (then only --stream-max-bytes limits it).
    #[arg(long, env = "HERALD_STREAM_MAX_AGE", value_name = "DURATION|off", default_value = "24h", value_parser = units::duration_limit)]
    pub stream_max_age: Limit<Duration>,
    /// JetStream keeps at most this much data, dropping the oldest events, or `off`.
    #[arg(long, env = "HERALD_STREAM_MAX_BYTES", value_name = "SIZE|off", default_value = "1GiB", value_parser = units::bytes_limit)]
    pub stream_max_bytes: Limit<u64>,
    /// Replicas of the stream (3 in a production NATS cluster; at most the number of servers).
    #[arg(long, env = "HERALD_STREAM_REPLICAS", value_name = "N", default_value_t = 1, value_parser = units::count(1..=5))]
    pub stream_replicas: usize,
    /// JetStream's duplicate window: a Nats-Msg-Id repeated within it is not stored again.
    /// Longer windows cost NATS memory; MongoDB's idempotency records cover the rest.
    #[arg(long, env = "HERALD_DUPLICATE_WINDOW", value_name = "DURATION", default_value = "2m", value_parser = units::positive_duration)]
    pub duplicate_window: Duration,
    /// Timeout of one NATS or MongoDB operation; past it a publish answers 503.
    #[arg(long, env = "HERALD_BACKEND_TIMEOUT", value_name = "DURATION", default_value = "5s", value_parser = units::positive_duration)]
    pub backend_timeout: Duration,
}

/// How Herald authenticates to NATS and checks its servers. One of credentials file, user and
/// password, or token (or none, or a user and password in `--nats-url`); TLS is required as soon
/// as a CA or client certificate is given (or the URL says `tls://`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct NatsAuthOptions {
    /// A NATS credentials file (`.creds`: a user JWT and its NKey seed).
    #[arg(long, env = "HERALD_NATS_CREDENTIALS_FILE", value_name = "FILE")]
    pub nats_credentials_file: Option<PathBuf>,
    /// NATS user name, with --nats-password-file.
    #[arg(long, env = "HERALD_NATS_USER", value_name = "USER")]
    pub nats_user: Option<String>,
    /// File holding the NATS user's password.
    #[arg(long, env = "HERALD_NATS_PASSWORD_FILE", value_name = "FILE")]
    pub nats_password_file: Option<PathBuf>,
    /// File holding a NATS authentication token.
    #[arg(long, env = "HERALD_NATS_TOKEN_FILE", value_name = "FILE")]
    pub nats_token_file: Option<PathBuf>,
    /// PEM CA certificates the NATS servers' certificates are checked against (implies TLS).
    #[arg(long, env = "HERALD_NATS_CA_FILE", value_name = "FILE")]
    pub nats_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for NATS mutual TLS, with --nats-tls-key-file.
    #[arg(long, env = "HERALD_NATS_TLS_CERT_FILE", value_name = "FILE")]
    pub nats_tls_cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "HERALD_NATS_TLS_KEY_FILE", value_name = "FILE")]
    pub nats_tls_key_file: Option<PathBuf>,
}

/// Who Herald is to NATS.
#[derive(Debug, Clone, Default)]
pub enum NatsAuth {
    /// No credentials (or those of the URL).
    #[default]
    None,
    /// A credentials file.
    Credentials(PathBuf),
    /// A user and password.
    UserPassword(String, Secret),
    /// A token.
    Token(Secret),
}

/// NATS TLS beyond the URL's `tls://`.
#[derive(Debug, Clone, Default)]
pub struct NatsTls {
    /// Extra root certificates; TLS is required when set.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key; TLS is required when set.
    pub client: Option<(PathBuf, PathBuf)>,
}

impl NatsTls {
    /// Whether TLS is required by these settings.
    pub fn required(&self) -> bool {
        self.ca_file.is_some() || self.client.is_some()
    }
}

impl NatsAuthOptions {
    fn resolve(self) -> Result<(NatsAuth, NatsTls), ConfigError> {
        let given = [
            (
                "--nats-credentials-file",
                self.nats_credentials_file.is_some(),
            ),
            ("--nats-user", self.nats_user.is_some()),
            ("--nats-token-file", self.nats_token_file.is_some()),
        ];
        let mut set = given.iter().filter(|(_, on)| *on).map(|(name, _)| *name);
        if let (Some(first), Some(second)) = (set.next(), set.next()) {
            return Err(ConfigError::new(
                second,
                format_args!("cannot be combined with {first}: give one way to authenticate"),
            ));
        }
        let auth = match (
            self.nats_credentials_file,
            self.nats_user,
            self.nats_password_file,
        ) {
            (Some(path), None, None) => {
                readable("--nats-credentials-file", &path)?;
                NatsAuth::Credentials(path)
            }
            (None, Some(user), Some(path)) => {
                NatsAuth::UserPassword(user, secret_file("--nats-password-file", &path)?)
            }
            (None, Some(_), None) => {
                return Err(ConfigError::new(
                    "--nats-user",
                    "needs --nats-password-file",
                ));
            }
            (_, None, Some(_)) => {
                return Err(ConfigError::new(
                    "--nats-password-file",
                    "needs --nats-user",
                ));
            }
            (Some(_), Some(_), _) => unreachable!("refused above"),
            (None, None, None) => match self.nats_token_file {
                Some(path) => NatsAuth::Token(secret_file("--nats-token-file", &path)?),
                None => NatsAuth::None,
            },
        };
        if let Some(path) = &self.nats_ca_file {
            readable("--nats-ca-file", path)?;
        }
        let client = match (self.nats_tls_cert_file, self.nats_tls_key_file) {
            (Some(cert), Some(key)) => {
                readable("--nats-tls-cert-file", &cert)?;
                readable("--nats-tls-key-file", &key)?;
                Some((cert, key))
            }
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError::new(
                    "--nats-tls-cert-file",
                    "needs --nats-tls-key-file",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    "--nats-tls-key-file",
                    "needs --nats-tls-cert-file",
                ));
            }
        };
        Ok((
            auth,
            NatsTls {
                ca_file: self.nats_ca_file,
                client,
            },
        ))
    }
}

fn readable(option: &'static str, path: &std::path::Path) -> Result<(), ConfigError> {
    std::fs::File::open(path)
        .map(drop)
        .map_err(|e| ConfigError::new(option, format_args!("{}: {e}", path.display())))
}

/// A secret kept in a file (surrounding whitespace trimmed; an empty file is an error).
fn secret_file(option: &'static str, path: &std::path::Path) -> Result<Secret, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(option, format_args!("{}: {e}", path.display())))?;
    match text.trim() {
        "" => Err(ConfigError::new(
            option,
            format_args!("{} is empty", path.display()),
        )),
        value => Ok(Secret::new(value)),
    }
}

/// `--mongodb-uri`: a `mongodb://` or `mongodb+srv://` connection string.
fn mongodb_uri(s: &str) -> Result<Secret, String> {
    if s.starts_with("mongodb://") || s.starts_with("mongodb+srv://") {
        Ok(Secret::new(s))
    } else {
        Err("must start with mongodb:// or mongodb+srv://".into())
    }
}

/// `--stream`: a JetStream stream name.
fn stream_name(s: &str) -> Result<String, String> {
    if s.is_empty()
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err("must be letters, digits, `_` or `-`".into());
    }
    Ok(s.to_owned())
}

/// The resolved shared configuration.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// NATS URLs.
    pub nats_url: String,
    /// Who Herald is to NATS.
    pub nats_auth: NatsAuth,
    /// NATS TLS settings.
    pub nats_tls: NatsTls,
    /// MongoDB connection string.
    pub mongodb_uri: Secret,
    /// MongoDB database.
    pub mongodb_database: String,
    /// The stream.
    pub stream: String,
    /// JetStream retention by age.
    pub stream_max_age: Option<Duration>,
    /// JetStream retention by size.
    pub stream_max_bytes: Option<u64>,
    /// Stream replicas.
    pub stream_replicas: usize,
    /// JetStream duplicate window.
    pub duplicate_window: Duration,
    /// MongoDB retention.
    pub retention_age: Option<Duration>,
    /// Idempotency window.
    pub idempotency_window: Duration,
    /// Trim interval.
    pub trim_interval: Duration,
    /// Backend operation timeout.
    pub backend_timeout: Duration,
}

impl ClusterOptions {
    /// Checks the options together and resolves them with the store's retention.
    pub fn resolve(self, retention: &RetentionOptions) -> Result<ClusterConfig, ConfigError> {
        if let Some(age) = self.stream_max_age.0
            && age < self.duplicate_window
        {
            return Err(ConfigError::new(
                "--stream-max-age",
                "must be at least --duplicate-window",
            ));
        }
        let (nats_auth, nats_tls) = self.nats_auth.resolve()?;
        Ok(ClusterConfig {
            nats_url: self.nats_url,
            nats_auth,
            nats_tls,
            mongodb_uri: self.mongodb_uri,
            mongodb_database: self.mongodb_database,
            stream: self.stream,
            stream_max_age: self.stream_max_age.0,
            stream_max_bytes: self.stream_max_bytes.0,
            stream_replicas: self.stream_replicas,
            duplicate_window: self.duplicate_window,
            retention_age: retention.retention_age.0,
            idempotency_window: retention.idempotency_window,
            trim_interval: retention.trim_interval,
            backend_timeout: self.backend_timeout,
        })
    }
}
