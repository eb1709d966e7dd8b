//! TLS termination for a directly exposed listener: a certificate and key from PEM files, read
//! again when either file changes (certificate rotation without a restart), and ALPN offering
//! HTTP/2 (`h2`) before HTTP/1.1 where HTTP/2 is on.

use std::{
    io,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use tokio_rustls::rustls::{
    self,
    crypto::ring::sign::any_supported_type,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

/// How often the certificate and key files are checked for a change.
pub const RELOAD_CHECK: Duration = Duration::from_secs(10);

/// The PEM files of the served certificate chain and its private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Accepts TLS connections with the current certificate.
#[derive(Clone)]
pub struct Tls {
    acceptor: tokio_rustls::TlsAcceptor,
    current: Arc<Current>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("files", &self.current.files)
            .finish_non_exhaustive()
    }
}

/// The certificate served now, and what its files looked like when it was read.
struct Current {
    files: TlsFiles,
    key: RwLock<(Arc<CertifiedKey>, Stamp)>,
}

impl std::fmt::Debug for Current {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Current")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

/// The modification times and sizes of the two files: a change in either is a rotation.
type Stamp = [Option<(SystemTime, u64)>; 2];

fn stamp(files: &TlsFiles) -> Stamp {
    let one = |path: &Path| {
        let meta = std::fs::metadata(path).ok()?;
        Some((meta.modified().ok()?, meta.len()))
    };
    [one(&files.cert), one(&files.key)]
}

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let key = self.key.read().unwrap_or_else(|e| e.into_inner());
        Some(Arc::clone(&key.0))
    }
}

/// Reads and checks the certificate chain and key.
pub fn load(files: &TlsFiles) -> io::Result<CertifiedKey> {
    let invalid = |what: &Path, e: &dyn std::fmt::Display| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {e}", what.display()),
        )
    };
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| invalid(&files.cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(&files.cert, &e))?;
    if chain.is_empty() {
        return Err(invalid(&files.cert, &"no PEM certificate in it"));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| invalid(&files.key, &e))?;
    let key = any_supported_type(&key).map_err(|e| invalid(&files.key, &e))?;
    let certified = CertifiedKey::new(chain, key);
    // The key must be the leaf certificate's.
    certified
        .keys_match()
        .map_err(|e| invalid(&files.cert, &format!("does not match the key: {e}")))?;
    Ok(certified)
}

impl Tls {
    /// Reads the files (an error names the file and what is wrong with it) and builds the
    /// acceptor; `http2` puts `h2` first in ALPN.
    pub fn new(files: &TlsFiles, http2: bool) -> io::Result<Self> {
        let before = stamp(files);
        let key = Arc::new(load(files)?);
        let current = Arc::new(Current {
            files: files.clone(),
            key: RwLock::new((key, before)),
        });
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::clone(&current) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = if http2 {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        } else {
            vec![b"http/1.1".to_vec()]
        };
        Ok(Self {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            current,
        })
    }

    /// The acceptor, for each connection's handshake.
    pub fn acceptor(&self) -> &tokio_rustls::TlsAcceptor {
        &self.acceptor
    }

    /// Reads the files again if either changed since the last read. A certificate that fails to
    /// load (a rotation half written, a key that does not match) keeps the previous one served,
    /// and is tried again at the next check. Answers whether a new certificate is served.
    pub fn reload_if_changed(&self) -> bool {
        let now = stamp(&self.current.files);
        {
            let key = self.current.key.read().unwrap_or_else(|e| e.into_inner());
            if key.1 == now {
                return false;
            }
        }
        match load(&self.current.files) {
            Ok(key) => {
                *self.current.key.write().unwrap_or_else(|e| e.into_inner()) = (Arc::new(key), now);
                tracing::info!(cert = %self.current.files.cert.display(), "TLS certificate reloaded");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "TLS certificate changed but does not load; still serving the previous one");
                false
            }
        }
    }

    /// Checks the files every `every` until the returned task is aborted.
    pub fn spawn_reload(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let tls = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                tls.reload_if_changed();
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certs(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/certs")
            .join(name)
    }

    /// The leaf certificate served now.
    fn served(tls: &Tls) -> CertificateDer<'static> {
        let key = tls.current.key.read().unwrap();
        key.0.cert[0].clone()
    }

    fn leaf(name: &str) -> CertificateDer<'static> {
        CertificateDer::pem_file_iter(certs(name))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
    }

    #[test]
    fn a_bad_pair_is_refused_naming_the_file() {
        let mismatched = TlsFiles {
            cert: certs("server.pem"),
            key: certs("other.key"),
        };
        let e = load(&mismatched).unwrap_err().to_string();
        assert!(
            e.contains("server.pem") && e.contains("does not match the key"),
            "{e}"
        );
        let missing = TlsFiles {
            cert: certs("nope.pem"),
            key: certs("server.key"),
        };
        let e = load(&missing).unwrap_err().to_string();
        assert!(e.contains("nope.pem"), "{e}");
        let no_key = TlsFiles {
            cert: certs("server.pem"),
            key: certs("ca.pem"),
        };
        let e = load(&no_key).unwrap_err().to_string();
        assert!(e.contains("ca.pem"), "{e}");
    }

    /// A rotation is served once both files changed; a half-written one (a new certificate with
    /// the old key) keeps the previous pair served.
    #[test]
    fn rotation_is_picked_up_and_a_half_written_one_is_not() {
        let dir = std::env::temp_dir().join(format!(
            "herald-tls-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let files = TlsFiles {
            cert: dir.join("tls.pem"),
            key: dir.join("tls.key"),
        };
        std::fs::copy(certs("server.pem"), &files.cert).unwrap();
        std::fs::copy(certs("server.key"), &files.key).unwrap();
        let tls = Tls::new(&files, true).unwrap();
        assert_eq!(served(&tls), leaf("server.pem"));
        assert!(!tls.reload_if_changed(), "nothing changed");

        // Half written: the new certificate, the old key.
        std::fs::copy(certs("other.pem"), &files.cert).unwrap();
        assert!(!tls.reload_if_changed());
        assert_eq!(served(&tls), leaf("server.pem"));

        std::fs::copy(certs("other.key"), &files.key).unwrap();
        assert!(tls.reload_if_changed());
        assert_eq!(served(&tls), leaf("other.pem"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
