//! Verifying a token: the configured keys ([`Keys`]: an HMAC secret, a PEM public key, a JWKS
//! document re-read when it changes, or one fetched over https), the algorithms they allow, and
//! the registered claims.
//!
//! The algorithms a token may use follow from the key that verifies it, never from the token:
//! an HMAC secret accepts HS256/384/512, an RSA key RS*/PS*, an EC key ES256/ES384, an Ed25519
//! key EdDSA. So `alg: none` is refused (it is not an algorithm here at all), and an HS256 token
//! signed with a published RSA key is refused for its algorithm before any signature is checked.

use std::{
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, Instant, SystemTime},
};

use jsonwebtoken::{
    Algorithm, DecodingKey, Validation, decode, decode_header,
    errors::ErrorKind,
    jwk::{Jwk, JwkSet},
};
use serde::Deserialize;

use crate::{
    Grants,
    remote::{JwksUrl, RemoteJwks},
};

/// The shortest HMAC secret accepted, in bytes (RFC 7518 §3.2: at least the hash's size).
pub const MIN_HMAC_KEY: usize = 32;

/// How often, at most, a JWKS file is looked at for changes.
const JWKS_RECHECK: Duration = Duration::from_secs(1);

/// Why a token was refused. The message is shown to the client (it says what, not how).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// Not three base64url parts of JSON, or an algorithm that does not exist (`none`).
    #[error("the token is malformed or names an unknown algorithm")]
    Malformed,
    /// An algorithm the configured key does not allow.
    #[error("the token's algorithm is not accepted for this server's key")]
    Algorithm,
    /// No key with the token's `kid`.
    #[error("the token's key id is unknown")]
    UnknownKey,
    /// The signature does not verify.
    #[error("the token's signature does not verify")]
    Signature,
    /// `exp` is past.
    #[error("the token has expired")]
    Expired,
    /// `nbf` is ahead.
    #[error("the token is not valid yet")]
    NotYetValid,
    /// `exp` is missing, or another required claim.
    #[error("the token lacks a required claim ({0})")]
    MissingClaim(String),
    /// `aud` is not this server's.
    #[error("the token's audience is not this server")]
    Audience,
    /// `iss` is not the configured issuer.
    #[error("the token's issuer is not accepted")]
    Issuer,
    /// The `herald` claim is not `{"subscribe": [...], "publish": [...]}` of topics and patterns.
    #[error("the token's herald claim is invalid: {0}")]
    Grants(String),
}

impl From<jsonwebtoken::errors::Error> for Rejected {
    fn from(e: jsonwebtoken::errors::Error) -> Self {
        match e.kind() {
            ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => Self::Algorithm,
            ErrorKind::InvalidSignature => Self::Signature,
            ErrorKind::ExpiredSignature => Self::Expired,
            ErrorKind::ImmatureSignature => Self::NotYetValid,
            ErrorKind::InvalidAudience => Self::Audience,
            ErrorKind::InvalidIssuer => Self::Issuer,
            ErrorKind::MissingRequiredClaim(c) => Self::MissingClaim(c.clone()),
            ErrorKind::Json(_) => Self::Grants("not the expected JSON".into()),
            _ => Self::Malformed,
        }
    }
}

/// The claims Herald reads.
#[derive(Debug, Deserialize)]
struct Claims {
    sub: Option<String>,
    // Required, but read as optional so that a token without it says so (`MissingClaim`).
    exp: Option<u64>,
    #[serde(default)]
    herald: Grants,
}

/// A verified token: who, what, until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// `sub`.
    pub subject: Option<String>,
    /// The `herald` claim.
    pub grants: Grants,
    /// `exp`, Unix seconds.
    pub expires: u64,
}

/// Where the keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// An HMAC secret in a file (surrounding whitespace trimmed), at least [`MIN_HMAC_KEY`] bytes.
    HmacFile(PathBuf),
    /// A PEM public key (RSA, EC P-256/P-384 or Ed25519).
    PublicKeyFile(PathBuf),
    /// A JWKS document (`{"keys": [...]}`); keys are picked by `kid` and the file is re-read when it
    /// changes, so keys rotate without a restart.
    JwksFile(PathBuf),
    /// A JWKS document fetched over https, refreshed, and fetched again when a token names a key
    /// id not held (`--auth-jwks-url`).
    JwksUrl(JwksUrl),
}

/// What must hold of a token besides its signature.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    /// `iss` must be this.
    pub issuer: Option<String>,
    /// `aud` must include this; without it, a token that has an `aud` is refused (RFC 7519
    /// §4.1.3: the claim names who may accept the token, and this server was not told it is one).
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
}

/// Checks tokens against the configured keys.
#[derive(Debug)]
pub struct Verifier {
    keys: Keys,
    rules: Rules,
}

#[derive(Debug)]
enum Keys {
    Static(Box<DecodingKey>),
    Jwks(JwksFile),
    Remote(RemoteJwks),
}

impl Verifier {
    /// Loads the keys; an unreadable or invalid key is an error at start-up.
    pub fn load(source: &KeySource, rules: Rules) -> Result<Self, String> {
        let keys = match source {
            KeySource::HmacFile(path) => {
                let secret = read(path)?;
                let secret = secret.trim_ascii();
                if secret.len() < MIN_HMAC_KEY {
                    return Err(format!(
                        "{}: an HMAC key must be at least {MIN_HMAC_KEY} bytes; it has {}",
                        path.display(),
                        secret.len()
                    ));
                }
                let key = DecodingKey::from_secret(secret).map_err(|e| e.to_string())?;
                Keys::Static(Box::new(key))
            }
            KeySource::PublicKeyFile(path) => {
                let pem = read(path)?;
                let key = DecodingKey::from_rsa_pem(&pem)
                    .or_else(|_| DecodingKey::from_ec_pem(&pem))
                    .or_else(|_| DecodingKey::from_ed_pem(&pem))
                    .map_err(|_| {
                        format!(
                            "{}: not a PEM public key (RSA, EC or Ed25519)",
                            path.display()
                        )
                    })?;
                Keys::Static(Box::new(key))
            }
            KeySource::JwksFile(path) => Keys::Jwks(JwksFile::load(path)?),
            KeySource::JwksUrl(url) => Keys::Remote(RemoteJwks::start(url)?),
        };
        Ok(Self { keys, rules })
    }

    /// The clock skew allowed on `exp` and `nbf`.
    pub fn leeway(&self) -> Duration {
        self.rules.leeway
    }

    /// [`Verifier::verify`], and for keys fetched over https, once more after fetching the
    /// document again when the token names a key not held (a key rotated in at the provider).
    pub async fn verify_fresh(&self, token: &str) -> Result<Verified, Rejected> {
        match (self.verify(token), &self.keys) {
            (Err(Rejected::UnknownKey), Keys::Remote(remote)) => {
                remote.refetch().await;
                self.verify(token)
            }
            (verdict, _) => verdict,
        }
    }

    /// Verifies `token`: its algorithm against the key, its signature, `exp` (required), `nbf`,
    /// `iss` and `aud`, and the shape of its `herald` claim.
    pub fn verify(&self, token: &str) -> Result<Verified, Rejected> {
        let header = decode_header(token).map_err(|_| Rejected::Malformed)?;
        let (key, algorithms) = match &self.keys {
            Keys::Static(key) => (key.as_ref().clone(), key.family().algorithms().to_vec()),
            Keys::Jwks(file) => file.key(header.kid.as_deref())?,
            Keys::Remote(remote) => {
                let keys = remote.keys().ok_or(Rejected::UnknownKey)?;
                jwk_key(find(&keys, header.kid.as_deref()).ok_or(Rejected::UnknownKey)?)?
            }
        };
        if !algorithms.contains(&header.alg) {
            return Err(Rejected::Algorithm);
        }
        let mut validation = Validation::new(header.alg);
        validation.algorithms = algorithms;
        validation.leeway = self.rules.leeway.as_secs();
        validation.validate_nbf = true;
        validation.validate_aud = true;
        if let Some(aud) = &self.rules.audience {
            validation.set_audience(&[aud]);
        }
        if let Some(iss) = &self.rules.issuer {
            validation.set_issuer(&[iss]);
        }
        let claims = decode::<Claims>(token, &key, &validation)?.claims;
        claims.herald.validate().map_err(Rejected::Grants)?;
        Ok(Verified {
            subject: claims.sub,
            grants: claims.herald,
            expires: claims
                .exp
                .ok_or_else(|| Rejected::MissingClaim("exp".into()))?,
        })
    }
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// A JWKS document on disk, re-read when its modification time changes (looked at no more than
/// once a second, and at once when a token names a key id it does not hold).
#[derive(Debug)]
struct JwksFile {
    path: PathBuf,
    state: Mutex<JwksState>,
}

#[derive(Debug)]
struct JwksState {
    keys: JwkSet,
    modified: Option<SystemTime>,
    checked: Instant,
}

impl JwksFile {
    fn load(path: &Path) -> Result<Self, String> {
        let (keys, modified) = Self::read(path)?;
        Ok(Self {
            path: path.to_owned(),
            state: Mutex::new(JwksState {
                keys,
                modified,
                checked: Instant::now(),
            }),
        })
    }

    fn read(path: &Path) -> Result<(JwkSet, Option<SystemTime>), String> {
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let keys: JwkSet = serde_json::from_slice(&read(path)?)
            .map_err(|e| format!("{}: not a JWKS document: {e}", path.display()))?;
        check_usable(&keys).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok((keys, modified))
    }

    /// The key for `kid` (a document of one key also serves tokens without a `kid`) and the
    /// algorithms it allows: the key's `alg` if it names one, else its family's.
    fn key(&self, kid: Option<&str>) -> Result<(DecodingKey, Vec<Algorithm>), Rejected> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let due = state.checked.elapsed() >= JWKS_RECHECK;
        if due || find(&state.keys, kid).is_none() && state.checked.elapsed() >= JWKS_RECHECK / 10 {
            self.refresh(&mut state);
        }
        jwk_key(find(&state.keys, kid).ok_or(Rejected::UnknownKey)?)
    }

    /// Re-reads the document if it changed. A document that became unreadable or invalid is
    /// logged and the keys held are kept: a bad deploy of the file must not lock everyone out.
    fn refresh(&self, state: &mut JwksState) {
        state.checked = Instant::now();
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        if modified.is_some() && modified == state.modified {
            return;
        }
        match Self::read(&self.path) {
            Ok((keys, modified)) => {
                tracing::info!(path = %self.path.display(), keys = keys.keys.len(), "token keys reloaded");
                (state.keys, state.modified) = (keys, modified);
            }
            Err(e) => {
                tracing::warn!(error = %e, "token keys not reloaded; keeping the previous ones");
                state.modified = modified;
            }
        }
    }
}

/// Every key of a JWKS document can verify tokens (checked when a document is loaded, so a
/// document with one bad key is refused whole rather than half used).
pub(crate) fn check_usable(keys: &JwkSet) -> Result<(), String> {
    for jwk in &keys.keys {
        DecodingKey::from_jwk(jwk)
            .map_err(|e| format!("key {:?} is not usable: {e}", jwk.common.key_id))?;
    }
    Ok(())
}

/// A JWK's key and the algorithms it allows: the key's `alg` if it names one, else its family's.
fn jwk_key(jwk: &Jwk) -> Result<(DecodingKey, Vec<Algorithm>), Rejected> {
    let key = DecodingKey::from_jwk(jwk).map_err(|_| Rejected::UnknownKey)?;
    let algorithms = match jwk.common.key_algorithm.map(Algorithm::try_from) {
        Some(Ok(alg)) => vec![alg],
        Some(Err(_)) => return Err(Rejected::Algorithm),
        None => key.family().algorithms().to_vec(),
    };
    Ok((key, algorithms))
}

fn find<'a>(keys: &'a JwkSet, kid: Option<&str>) -> Option<&'a Jwk> {
    match kid {
        Some(kid) => keys.find(kid),
        None if keys.keys.len() == 1 => keys.keys.first(),
        None => None,
    }
}
