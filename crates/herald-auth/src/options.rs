//! The access-control options (`herald`, `herald-gateway`, `herald-ingest`) and the safe default.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use herald_config::{ConfigError, Secret, units};
use http::HeaderValue;

use crate::{
    Access, ClientLimits, Grants, JwksUrl, KeySource, LimitOptions, Rules, TokenSources, Verifier,
    cookie::SameSite, grants::grant_pattern,
};

/// Who may read and publish what.
#[derive(Debug, Clone, clap::Args)]
pub struct AuthOptions {
    /// Verify tokens with this HMAC secret (HS256/384/512), read from FILE (32 bytes or more).
    #[arg(long, env = "HERALD_AUTH_HMAC_KEY_FILE", value_name = "FILE")]
    pub auth_hmac_key_file: Option<PathBuf>,
    /// Verify tokens with this PEM public key (RSA: RS*/PS*, EC: ES256/ES384, Ed25519: EdDSA).
    #[arg(long, env = "HERALD_AUTH_PUBLIC_KEY_FILE", value_name = "FILE")]
    pub auth_public_key_file: Option<PathBuf>,
    /// Verify tokens with the keys of this JWKS document, picked by `kid`; the file is re-read
    /// when it changes, so keys rotate without a restart.
    #[arg(long, env = "HERALD_AUTH_JWKS_FILE", value_name = "FILE")]
    pub auth_jwks_file: Option<PathBuf>,
    /// Verify tokens with the keys of the JWKS document at this https URL (an identity
    /// provider's `jwks_uri`), fetched again every --auth-jwks-refresh and when a token names a
    /// key id not held.
    #[arg(long, env = "HERALD_AUTH_JWKS_URL", value_name = "URL", value_parser = crate::remote::https_url)]
    pub auth_jwks_url: Option<String>,
    /// How often the --auth-jwks-url document is fetched again.
    #[arg(long, env = "HERALD_AUTH_JWKS_REFRESH", value_name = "DURATION", default_value = "5m", value_parser = units::positive_duration)]
    pub auth_jwks_refresh: Duration,
    /// PEM certificates of the CAs that sign the --auth-jwks-url server's certificate, beside
    /// the built-in Mozilla roots (a private CA).
    #[arg(long, env = "HERALD_AUTH_JWKS_CA_FILE", value_name = "FILE")]
    pub auth_jwks_ca_file: Option<PathBuf>,
    /// Tokens must carry this `iss`.
    #[arg(long, env = "HERALD_AUTH_ISSUER", value_name = "ISSUER")]
    pub auth_issuer: Option<String>,
    /// Tokens must name this audience in `aud` (unset: a token with an `aud` is refused).
    #[arg(long, env = "HERALD_AUTH_AUDIENCE", value_name = "AUDIENCE")]
    pub auth_audience: Option<String>,
    /// Clock skew allowed when checking a token's `exp` and `nbf`.
    #[arg(long, env = "HERALD_AUTH_LEEWAY", value_name = "DURATION", default_value = "30s", value_parser = units::duration)]
    pub auth_leeway: Duration,
    /// Cookie a browser's EventSource sends its token in (HttpOnly, set by your site).
    #[arg(
        long,
        env = "HERALD_AUTH_COOKIE",
        value_name = "NAME",
        default_value = "herald_token"
    )]
    pub auth_cookie: String,
    /// SameSite of the token cookie set by POST /v1/auth/cookie (`none` for pages on another
    /// site; it adds Secure, so HTTPS only).
    #[arg(
        long,
        env = "HERALD_AUTH_COOKIE_SAME_SITE",
        value_enum,
        default_value = "lax"
    )]
    pub auth_cookie_same_site: SameSite,
    /// Also take the token from this query parameter (off unless set: URLs end up in logs).
    #[arg(long, env = "HERALD_AUTH_QUERY_PARAM", value_name = "NAME")]
    pub auth_query_param: Option<String>,
    /// Topics and patterns anyone may read without a token, comma-separated (`scores.>`).
    #[arg(long, env = "HERALD_ANONYMOUS_SUBSCRIBE", value_name = "PATTERNS", value_delimiter = ',', value_parser = grant_pattern)]
    pub anonymous_subscribe: Vec<String>,
    /// Anyone may publish on any topic without a token.
    #[arg(long, env = "HERALD_ANONYMOUS_PUBLISH")]
    pub anonymous_publish: bool,
    /// Origins whose pages may use the API from another origin, comma-separated
    /// (`https://app.example.com`): CORS with credentials for them, and their writes are not
    /// refused as cross-site.
    #[arg(long, env = "HERALD_CORS_ORIGINS", value_name = "ORIGINS", value_delimiter = ',', value_parser = origin)]
    pub cors_origins: Vec<String>,
    /// Per-client limits.
    #[command(flatten)]
    pub limits: LimitOptions,
    /// A static bearer token that may publish on every topic (beside or instead of keys).
    #[arg(long, env = "HERALD_PUBLISH_TOKEN", value_name = "TOKEN", hide_env_values = true, value_parser = units::secret)]
    pub publish_token: Option<Secret>,
}

impl AuthOptions {
    /// The key option given, if any; more than one is an error.
    fn key(&self) -> Result<Option<(&'static str, KeySource)>, ConfigError> {
        let given: Vec<(&'static str, KeySource)> = [
            (
                "--auth-hmac-key-file",
                self.auth_hmac_key_file.clone().map(KeySource::HmacFile),
            ),
            (
                "--auth-public-key-file",
                self.auth_public_key_file
                    .clone()
                    .map(KeySource::PublicKeyFile),
            ),
            (
                "--auth-jwks-file",
                self.auth_jwks_file.clone().map(KeySource::JwksFile),
            ),
            (
                "--auth-jwks-url",
                self.auth_jwks_url.clone().map(|url| {
                    KeySource::JwksUrl(JwksUrl {
                        url,
                        ca_file: self.auth_jwks_ca_file.clone(),
                        refresh: self.auth_jwks_refresh,
                    })
                }),
            ),
        ]
        .into_iter()
        .filter_map(|(name, source)| source.map(|s| (name, s)))
        .collect();
        match given.len() {
            0 | 1 => Ok(given.into_iter().next()),
            _ => Err(ConfigError::new(
                given[1].0,
                format_args!(
                    "cannot be combined with {}: give one source of keys",
                    given[0].0
                ),
            )),
        }
    }

    /// The access rules for a server listening on `listen`.
    ///
    /// Safe by default: with no key, no publish token and no anonymous option, a server on a
    /// loopback address is open (the demo works out of the box), and one listening beyond
    /// loopback refuses to start, saying what to configure.
    pub fn resolve(self, listen: SocketAddr) -> Result<Access, ConfigError> {
        let origins = self
            .cors_origins
            .iter()
            .map(|o| HeaderValue::from_str(o).expect("checked by the parser"))
            .collect();
        let limits = ClientLimits::new(&self.limits);
        Ok(self
            .access(listen)?
            .with_origins(origins)
            .with_limits(limits))
    }

    fn access(self, listen: SocketAddr) -> Result<Access, ConfigError> {
        let key = self.key()?;
        if self.auth_jwks_ca_file.is_some() && self.auth_jwks_url.is_none() {
            return Err(ConfigError::new(
                "--auth-jwks-ca-file",
                "is for the server of --auth-jwks-url, which is not set",
            ));
        }
        let explicit = !self.anonymous_subscribe.is_empty() || self.anonymous_publish;
        if key.is_none() && self.publish_token.is_none() && !explicit {
            if !listen.ip().is_loopback() {
                return Err(ConfigError::new(
                    "--listen",
                    format_args!(
                        "{listen} reaches beyond this machine and no access control is set: give \
                         token keys (--auth-hmac-key-file, --auth-public-key-file, \
                         --auth-jwks-file or --auth-jwks-url), or allow anonymous access explicitly \
                         (--anonymous-subscribe '>' to let anyone read, --anonymous-publish to \
                         let anyone publish)"
                    ),
                ));
            }
            return Ok(Access::open());
        }
        let mut anonymous = Grants {
            subscribe: self.anonymous_subscribe,
            publish: Vec::new(),
        };
        if self.anonymous_publish {
            anonymous.publish.push(">".into());
        }
        if key.is_none() && !explicit && listen.ip().is_loopback() {
            // Only a publish token on loopback: publishing is closed, reading stays open as before.
            anonymous.subscribe.push(">".into());
        }
        let verifier = match key {
            Some((option, source)) => Some(
                Verifier::load(
                    &source,
                    Rules {
                        issuer: self.auth_issuer,
                        audience: self.auth_audience,
                        leeway: self.auth_leeway,
                    },
                )
                .map_err(|e| ConfigError::new(option, e))?,
            ),
            None => None,
        };
        if self.auth_cookie.is_empty() || !self.auth_cookie.bytes().all(is_token_char) {
            return Err(ConfigError::new(
                "--auth-cookie",
                format_args!("{:?} is not a cookie name", self.auth_cookie),
            ));
        }
        Ok(Access::new(
            verifier,
            anonymous,
            TokenSources {
                cookie: self.auth_cookie,
                same_site: self.auth_cookie_same_site,
                query: self.auth_query_param,
            },
            self.publish_token.into_iter().collect(),
        ))
    }
}

/// An origin as a browser sends it: `http://` or `https://`, a host, an optional port, no path.
fn origin(s: &str) -> Result<String, String> {
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .ok_or_else(|| format!("{s:?} is not an origin: it starts with https:// or http://"))?;
    let valid = !rest.is_empty()
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b));
    if valid && http::HeaderValue::from_str(s).is_ok() {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?} is not an origin (scheme://host[:port], no path, no `*`)"
        ))
    }
}

/// RFC 9110 `tchar`, what a cookie name is made of.
fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}
