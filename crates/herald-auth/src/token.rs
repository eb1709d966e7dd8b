//! Minting tokens with an HMAC key: `herald token`, for development and tests.

use std::{
    path::PathBuf,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use herald_config::units;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde::Serialize;

use crate::{Grants, MIN_HMAC_KEY, grants::grant_pattern};

/// `herald token`: prints a token signed with the HMAC key a server verifies with.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "herald token",
    about = "Prints an HS256 token for Herald, signed with the server's HMAC key file.",
    long_about = "Prints an HS256 token for Herald, signed with the server's HMAC key file \
        (--auth-hmac-key-file). For development and tests: in \
        production your identity provider or backend issues the tokens.\n\n\
        Example: herald token --subscribe 'scores.*' --publish 'scores.>' --ttl 1h"
)]
pub struct TokenArgs {
    /// The HMAC key file, as given to the server.
    #[arg(long, value_name = "FILE")]
    pub auth_hmac_key_file: PathBuf,
    /// A topic or pattern the token may read (repeat or comma-separate).
    #[arg(long, value_name = "PATTERN", value_delimiter = ',', value_parser = grant_pattern)]
    pub subscribe: Vec<String>,
    /// A topic or pattern the token may publish on (repeat or comma-separate).
    #[arg(long, value_name = "PATTERN", value_delimiter = ',', value_parser = grant_pattern)]
    pub publish: Vec<String>,
    /// How long the token is valid.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = units::positive_duration)]
    pub ttl: Duration,
    /// The token's subject (`sub`), shown in logs.
    #[arg(long, value_name = "NAME", default_value = "herald-cli")]
    pub sub: String,
    /// The token's issuer (`iss`), for a server started with --auth-issuer.
    #[arg(long, value_name = "ISSUER")]
    pub issuer: Option<String>,
    /// The token's audience (`aud`), for a server started with --auth-audience.
    #[arg(long, value_name = "AUDIENCE")]
    pub audience: Option<String>,
}

/// The claims a minted token carries.
#[derive(Debug, Serialize)]
struct Claims<'a> {
    sub: &'a str,
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
    herald: Grants,
}

impl TokenArgs {
    /// The token, or why none can be made.
    pub fn mint(&self) -> Result<String, String> {
        let key = std::fs::read(&self.auth_hmac_key_file)
            .map_err(|e| format!("{}: {e}", self.auth_hmac_key_file.display()))?;
        let key = key.trim_ascii();
        if key.len() < MIN_HMAC_KEY {
            return Err(format!(
                "{}: an HMAC key must be at least {MIN_HMAC_KEY} bytes",
                self.auth_hmac_key_file.display()
            ));
        }
        if self.subscribe.is_empty() && self.publish.is_empty() {
            return Err("grant something: --subscribe PATTERN and/or --publish PATTERN".into());
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let claims = Claims {
            sub: &self.sub,
            iat: now,
            exp: now + self.ttl.as_secs().max(1),
            iss: self.issuer.as_deref(),
            aud: self.audience.as_deref(),
            herald: Grants {
                subscribe: self.subscribe.clone(),
                publish: self.publish.clone(),
            },
        };
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(key).map_err(|e| e.to_string())?,
        )
        .map_err(|e| e.to_string())
    }
}
