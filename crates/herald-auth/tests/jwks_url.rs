//! Keys from a JWKS document fetched over https (`--auth-jwks-url`), against a real TLS server
//! with the test CA of `tests/certs`: fetched at start, fetched again for a key id not held (no
//! more than once per ten seconds, whatever kids clients make up), refreshed on schedule, kept
//! through a failing or broken document, and never fetched from a server whose certificate is
//! not trusted.

mod common;

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use common::{jwks, key_file};
use herald_auth::{JwksUrl, KeySource, Rejected, Rules, Verifier};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        self,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    },
};

fn certs(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/certs")
        .join(name)
}

fn token(kid: &str, key: &str) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.into());
    let key = EncodingKey::from_rsa_pem(&std::fs::read(key_file(&format!("{key}.key"))).unwrap())
        .unwrap();
    encode(
        &header,
        &json!({"sub": "alice", "exp": exp, "herald": {"subscribe": ["a"]}}),
        &key,
    )
    .unwrap()
}

/// An https server answering every request with the current status and body.
struct KeyServer {
    url: String,
    answer: Arc<Mutex<(u16, String)>>,
    served: Arc<AtomicUsize>,
}

impl KeyServer {
    async fn start(body: String) -> Self {
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(certs("server.pem"))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
        let key = PrivateKeyDer::from_pem_file(certs_key()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "https://127.0.0.1:{}/.well-known/jwks.json",
            listener.local_addr().unwrap().port()
        );
        let answer = Arc::new(Mutex::new((200, body)));
        let served = Arc::new(AtomicUsize::new(0));
        let (a, s) = (answer.clone(), served.clone());
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let (acceptor, answer, served) = (acceptor.clone(), a.clone(), s.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    assert!(
                        head.starts_with(b"GET /.well-known/jwks.json HTTP/1.1\r\n"),
                        "{}",
                        String::from_utf8_lossy(&head)
                    );
                    let (status, body) = answer.lock().unwrap().clone();
                    served.fetch_add(1, Ordering::SeqCst);
                    let response = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tls.write_all(response.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        Self {
            url,
            answer,
            served,
        }
    }

    fn set(&self, status: u16, body: String) {
        *self.answer.lock().unwrap() = (status, body);
    }

    fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }

    fn verifier(&self, ca: Option<PathBuf>, refresh: Duration) -> Verifier {
        Verifier::load(
            &KeySource::JwksUrl(JwksUrl {
                url: self.url.clone(),
                ca_file: ca,
                refresh,
            }),
            Rules::default(),
        )
        .unwrap()
    }
}

fn certs_key() -> PathBuf {
    certs("server.key")
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_fetched_and_a_new_kid_fetches_them_again_at_most_every_ten_seconds() {
    let server = KeyServer::start(jwks(&["rsa"])).await;
    let v = server.verifier(Some(certs("ca.pem")), Duration::from_secs(600));
    let (old, new) = (token("rsa", "rsa"), token("rsa2", "rsa2"));
    // A token arriving before the first fetch completes waits for a fetch instead of failing.
    v.verify_fresh(&old)
        .await
        .expect("the first token is accepted");
    until("the start-up fetch", || server.served() >= 1).await;
    let before = server.served();

    // Rotation at the provider: the new key is published; the first token signed with it
    // fetches the document again and is accepted.
    server.set(200, jwks(&["rsa", "rsa2"]));
    assert_eq!(v.verify(&new).unwrap_err(), Rejected::UnknownKey);
    let verified = v.verify_fresh(&new).await.expect("a rotated-in key");
    assert_eq!(verified.subject.as_deref(), Some("alice"));
    assert_eq!(server.served(), before + 1);
    assert!(v.verify(&old).is_ok(), "the old key is still published");

    // Made-up key ids do not turn Herald against the provider: no fetch within ten seconds.
    for kid in ["x", "y", "z"] {
        assert_eq!(
            v.verify_fresh(&token(kid, "rsa")).await.unwrap_err(),
            Rejected::UnknownKey
        );
    }
    assert_eq!(server.served(), before + 1, "unknown kids fetched again");
    // A kid that names one key, signed by another, still fails on the signature.
    assert_eq!(
        v.verify_fresh(&token("rsa", "rsa2")).await.unwrap_err(),
        Rejected::Signature
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_refreshed_on_schedule_and_kept_through_a_failing_provider() {
    let server = KeyServer::start(jwks(&["rsa"])).await;
    let v = server.verifier(Some(certs("ca.pem")), Duration::from_millis(200));
    let (old, new) = (token("rsa", "rsa"), token("rsa2", "rsa2"));
    until("the first fetch", || v.verify(&old).is_ok()).await;
    // The old key withdrawn, the new one published: the refresh picks both changes up.
    server.set(200, jwks(&["rsa2"]));
    until("the refresh", || v.verify(&new).is_ok()).await;
    assert_eq!(v.verify(&old).unwrap_err(), Rejected::UnknownKey);
    // The provider fails, then serves something that is not a key set: the keys are kept.
    server.set(503, "down".into());
    let n = server.served();
    until("fetches of the failing provider", || {
        server.served() >= n + 2
    })
    .await;
    assert!(v.verify(&new).is_ok());
    server.set(200, "{ not json".into());
    let n = server.served();
    until("fetches of the broken document", || {
        server.served() >= n + 2
    })
    .await;
    assert!(v.verify(&new).is_ok());
    server.set(
        200,
        json!({"keys": [{"kty": "RSA", "kid": "bad", "n": "!!", "e": "AQAB", "alg": "RS256"}]})
            .to_string(),
    );
    let n = server.served();
    until("fetches of the unusable key", || server.served() >= n + 2).await;
    assert!(
        v.verify(&new).is_ok(),
        "a document with an unusable key is refused whole"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_whose_certificate_is_not_trusted_is_never_believed() {
    let server = KeyServer::start(jwks(&["rsa"])).await;
    // The built-in roots only: the test CA is not one of them, so the TLS handshake fails.
    let v = server.verifier(None, Duration::from_millis(100));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        v.verify_fresh(&token("rsa", "rsa")).await.unwrap_err(),
        Rejected::UnknownKey
    );
    assert_eq!(
        server.served(),
        0,
        "a document was served over an untrusted connection"
    );
}

#[tokio::test]
async fn bad_urls_and_ca_files_are_refused_at_start() {
    for url in [
        "http://127.0.0.1/jwks.json",
        "https:///jwks.json",
        "jwks.json",
    ] {
        assert!(herald_auth::remote::https_url(url).is_err(), "{url}");
    }
    assert!(
        herald_auth::remote::https_url("https://idp.example.com/.well-known/jwks.json").is_ok()
    );
    let e = Verifier::load(
        &KeySource::JwksUrl(JwksUrl {
            url: "https://127.0.0.1:1/jwks.json".into(),
            ca_file: Some(key_file("rsa.jwk.json")),
            refresh: Duration::from_secs(60),
        }),
        Rules::default(),
    )
    .unwrap_err();
    assert!(e.contains("rsa.jwk.json"), "{e}");
}
