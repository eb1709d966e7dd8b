//! A JWKS document fetched over `https` (`--auth-jwks-url`): an identity provider's published
//! keys, refreshed in the background and at once (no more than every [`MIN_REFETCH`]) when a
//! token names a key id the server does not hold yet, so a key rotated in at the provider is
//! picked up without a restart and without refusing the first token signed with it.
//!
//! The server's certificate is checked against the Mozilla roots built into Herald (the same as
//! its MongoDB client's), plus the certificates of `--auth-jwks-ca-file` for a private CA. A fetch
//! that fails keeps the keys held: an identity provider's outage must not lock every client out.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::JwkSet;
use tokio::net::TcpStream;
use tokio_rustls::{
    TlsConnector,
    rustls::{self, pki_types::ServerName},
};

/// The most a fetch of the document may take, connect to last byte.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest document accepted.
const MAX_DOCUMENT: usize = 1 << 20;
/// A token naming an unknown key fetches the document again no sooner than this after the last
/// fetch (a client making up key ids must not turn Herald against the identity provider).
pub(crate) const MIN_REFETCH: Duration = Duration::from_secs(10);
/// Wait between attempts while the document cannot be fetched.
const RETRY: Duration = Duration::from_secs(5);

/// Where a JWKS document is fetched from and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksUrl {
    /// The document's `https://` URL.
    pub url: String,
    /// PEM certificates of CAs trusted for the URL's server, beside the built-in roots.
    pub ca_file: Option<PathBuf>,
    /// How often the document is fetched again.
    pub refresh: Duration,
}

/// Checks a `--auth-jwks-url` value: an `https://` URL with a host.
pub fn https_url(s: &str) -> Result<String, String> {
    let uri: Uri = s.parse().map_err(|e| format!("{s:?} is not a URL: {e}"))?;
    if uri.scheme_str() != Some("https") || uri.host().is_none_or(str::is_empty) {
        return Err(format!(
            "{s:?}: the key document must be fetched over https (https://host/path)"
        ));
    }
    Ok(s.to_owned())
}

/// The fetched keys, and the fetcher that keeps them current.
#[derive(Debug)]
pub(crate) struct RemoteJwks {
    source: Arc<Source>,
    keys: Arc<RwLock<Option<JwkSet>>>,
    /// Single flight: the instant of the last fetch started; a fetch holds it while it runs.
    last: tokio::sync::Mutex<Option<Instant>>,
}

struct Source {
    uri: Uri,
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    tls: TlsConnector,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source")
            .field("uri", &self.uri)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher").finish_non_exhaustive()
    }
}

/// The background task's handle on the keys (weak, so the task ends with the verifier).
struct Fetcher {
    source: Arc<Source>,
    keys: std::sync::Weak<RwLock<Option<JwkSet>>>,
    refresh: Duration,
}

impl RemoteJwks {
    /// Checks the URL and CA file, and starts fetching in the background (on the current tokio
    /// runtime): the first fetch starts at once; tokens that arrive before it completes wait
    /// for it (see [`RemoteJwks::refetch`]).
    pub(crate) fn start(config: &JwksUrl) -> Result<Self, String> {
        let uri: Uri = https_url(&config.url)?.parse().expect("checked");
        let host = uri.host().expect("checked").to_owned();
        let bare = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let server_name = ServerName::try_from(bare.clone())
            .map_err(|e| format!("{}: {e}", config.url))?
            .to_owned();
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        if let Some(path) = &config.ca_file {
            for cert in ca_certificates(path)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let source = Arc::new(Source {
            port: uri.port_u16().unwrap_or(443),
            uri,
            host: bare,
            server_name,
            tls: TlsConnector::from(Arc::new(tls)),
        });
        let keys = Arc::new(RwLock::new(None));
        let fetcher = Fetcher {
            source: source.clone(),
            keys: Arc::downgrade(&keys),
            refresh: config.refresh,
        };
        tokio::spawn(fetcher.run());
        Ok(Self {
            source,
            keys,
            last: tokio::sync::Mutex::new(None),
        })
    }

    /// The keys held now (`None` before the first successful fetch).
    pub(crate) fn keys(&self) -> Option<JwkSet> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Fetches the document again because a token named a key not held, unless a fetch
    /// started in the last [`MIN_REFETCH`]. Concurrent callers wait for one fetch, then look
    /// at the keys again.
    pub(crate) async fn refetch(&self) {
        let mut last = self.last.lock().await;
        if last.is_some_and(|at| at.elapsed() < MIN_REFETCH) {
            return;
        }
        *last = Some(Instant::now());
        match self.source.fetch().await {
            Ok(keys) => store(&self.keys, keys, &self.source.uri),
            Err(e) => {
                tracing::warn!(url = %self.source.uri, error = %e, "token keys could not be fetched; keeping the previous ones")
            }
        }
    }
}

fn store(slot: &RwLock<Option<JwkSet>>, keys: JwkSet, uri: &Uri) {
    let mut slot = slot.write().unwrap_or_else(|e| e.into_inner());
    let changed = slot
        .as_ref()
        .is_none_or(|held| serde_json::to_value(held).ok() != serde_json::to_value(&keys).ok());
    if changed {
        tracing::info!(url = %uri, keys = keys.keys.len(), "token keys fetched");
    }
    *slot = Some(keys);
}

impl Fetcher {
    async fn run(self) {
        loop {
            let Some(keys) = self.keys.upgrade() else {
                return;
            };
            let wait = match self.source.fetch().await {
                Ok(document) => {
                    store(&keys, document, &self.source.uri);
                    self.refresh
                }
                Err(e) => {
                    let held = keys.read().unwrap_or_else(|e| e.into_inner()).is_some();
                    tracing::warn!(
                        url = %self.source.uri, error = %e, held,
                        "token keys could not be fetched; retrying"
                    );
                    RETRY.min(self.refresh)
                }
            };
            drop(keys);
            tokio::time::sleep(wait).await;
        }
    }
}

impl Source {
    /// One GET of the document: 200, JSON, at most [`MAX_DOCUMENT`] bytes, every key usable.
    async fn fetch(&self) -> Result<JwkSet, String> {
        tokio::time::timeout(FETCH_TIMEOUT, self.get())
            .await
            .map_err(|_| format!("no answer within {FETCH_TIMEOUT:?}"))?
    }

    async fn get(&self) -> Result<JwkSet, String> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let tls = self
            .tls
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        let connection = tokio::spawn(connection);
        let path = self
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let request = Request::get(path)
            .header(
                header::HOST,
                self.uri.authority().expect("checked").as_str(),
            )
            .header(header::ACCEPT, "application/json")
            .header(header::USER_AGENT, "herald")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        if response.status() != StatusCode::OK {
            connection.abort();
            return Err(format!("answered {}", response.status()));
        }
        let body = Limited::new(response.into_body(), MAX_DOCUMENT)
            .collect()
            .await
            .map_err(|e| format!("reading the document: {e}"))?
            .to_bytes();
        connection.abort();
        let keys: JwkSet =
            serde_json::from_slice(&body).map_err(|e| format!("not a JWKS document: {e}"))?;
        crate::verify::check_usable(&keys)?;
        Ok(keys)
    }
}

/// The PEM certificates in `path`.
fn ca_certificates(path: &Path) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}
