//! Access control: who may read and publish which topics.
//!
//! One model for the standalone node and the distributed services. A client shows a JWT whose
//! `herald` claim grants it patterns (`{"subscribe": ["scores.*"], "publish": ["scores.>"]}`);
//! every stream, history read and publish is checked against those grants before anything else
//! is done; anonymous access is whatever the server explicitly allows.
//!
//! - [`grants`]: [`Grants`] and the [`Principal`] a request acts as, with the 401/403 checks.
//! - [`verify`]: the keys ([`KeySource`]: HMAC secret, PEM public key, JWKS document) and the
//!   [`Verifier`] that checks a token's algorithm, signature and claims.
//! - [`access`]: [`Access`], from a request head (bearer header, query parameter, cookie) to a
//!   [`Principal`].
//! - [`cookie`]: `POST /v1/auth/cookie`, a bearer token made into the HttpOnly cookie an
//!   `EventSource` sends.
//! - [`edge`]: CORS for the allowlisted origins and the checks against cross-site writes, in
//!   front of every public route.
//! - [`limits`]: per-client limits: streams per address and per subject, token-bucket rates,
//!   the client's address behind trusted proxies.
//! - [`options`]: [`AuthOptions`], with the safe default: no access control, no start beyond
//!   loopback.
//! - [`token`]: `herald token`, minting HS256 tokens for development and tests.

pub mod access;
pub mod cookie;
pub mod edge;
pub mod grants;
pub mod limits;
pub mod options;
pub mod remote;
pub mod token;
pub mod verify;

pub use access::{Access, TokenSources};
pub use grants::{Grants, Principal};
pub use limits::{ClientLimits, LimitOptions};
pub use options::AuthOptions;
pub use remote::JwksUrl;
pub use token::TokenArgs;
pub use verify::{KeySource, MIN_HMAC_KEY, Rejected, Rules, Verified, Verifier};
