//! The token matrix, against the verifier the servers use: every way a token can be wrong is
//! refused with its reason, and the right token is accepted with its grants.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{jwks, key_file};
use herald_auth::{Grants, KeySource, Rejected, Rules, Verifier};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test-secret";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(extra: Value) -> Value {
    let mut c = json!({
        "sub": "alice",
        "exp": now() + 600,
        "herald": {"subscribe": ["a.*"], "publish": ["a.b"]},
    });
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    encode(&header, claims, key).unwrap()
}

fn hmac(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(SECRET).unwrap(),
        claims,
    )
}

fn rsa(name: &str) -> EncodingKey {
    EncodingKey::from_rsa_pem(&std::fs::read(key_file(&format!("{name}.key"))).unwrap()).unwrap()
}

fn hmac_verifier(rules: Rules) -> (tempfile::TempDir, Verifier) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key");
    std::fs::write(&path, [SECRET, b"\n"].concat()).unwrap();
    let v = Verifier::load(&KeySource::HmacFile(path), rules).unwrap();
    (dir, v)
}

fn b64(bytes: &[u8]) -> String {
    // base64url without padding, by hand: the tests do not need another crate.
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, &b| n << 8 | u32::from(b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

#[test]
fn a_valid_hmac_token_gives_its_grants() {
    let (_dir, v) = hmac_verifier(Rules::default());
    let got = v.verify(&hmac(&claims(json!({})))).unwrap();
    assert_eq!(got.subject.as_deref(), Some("alice"));
    assert_eq!(
        got.grants,
        Grants {
            subscribe: vec!["a.*".into()],
            publish: vec!["a.b".into()]
        }
    );
}

#[test]
fn bad_tokens_are_refused_with_their_reason() {
    let (_dir, v) = hmac_verifier(Rules {
        issuer: Some("https://id.example".into()),
        audience: Some("herald".into()),
        leeway: Duration::from_secs(5),
    });
    let ok = json!({"iss": "https://id.example", "aud": "herald"});
    assert!(v.verify(&hmac(&claims(ok.clone()))).is_ok());
    let with = |extra: Value| {
        let mut c = claims(ok.clone());
        for (k, val) in extra.as_object().unwrap() {
            if val.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = val.clone();
            }
        }
        hmac(&c)
    };
    let cases = [
        (with(json!({"exp": now() - 60})), Rejected::Expired),
        (
            with(json!({"exp": null})),
            Rejected::MissingClaim("exp".into()),
        ),
        (with(json!({"nbf": now() + 60})), Rejected::NotYetValid),
        (with(json!({"aud": "someone-else"})), Rejected::Audience),
        (
            with(json!({"iss": "https://evil.example"})),
            Rejected::Issuer,
        ),
        (
            with(json!({"herald": {"subscribe": ["a..b"]}})),
            Rejected::Grants(
                "\"a..b\" is not a topic or pattern (levels of [A-Za-z0-9_-], `*`, a last `>`)"
                    .into(),
            ),
        ),
    ];
    for (token, want) in cases {
        assert_eq!(v.verify(&token).unwrap_err(), want);
    }
    // Inside the leeway, an expired token still passes.
    assert!(v.verify(&with(json!({"exp": now() - 2}))).is_ok());
    // A bad signature: the same claims signed with another secret.
    let other = sign(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(b"another-secret-of-at-least-32-bytes!!").unwrap(),
        &claims(ok.clone()),
    );
    assert_eq!(v.verify(&other).unwrap_err(), Rejected::Signature);
    // A token with an `aud` where the server was given none.
    let (_dir2, plain) = hmac_verifier(Rules::default());
    assert_eq!(
        plain.verify(&with(json!({}))).unwrap_err(),
        Rejected::Audience
    );
    // Garbage.
    for junk in ["", "x", "a.b.c", "....", "eyJ.eyJ.x"] {
        assert_eq!(
            plain.verify(junk).unwrap_err(),
            Rejected::Malformed,
            "{junk:?}"
        );
    }
}

#[test]
fn alg_none_is_refused() {
    let (_dir, v) = hmac_verifier(Rules::default());
    let header = b64(br#"{"alg":"none","typ":"JWT"}"#);
    let body = b64(claims(json!({})).to_string().as_bytes());
    for token in [format!("{header}.{body}."), format!("{header}.{body}")] {
        assert_eq!(v.verify(&token).unwrap_err(), Rejected::Malformed);
    }
}

#[test]
fn public_keys_accept_only_their_algorithms() {
    for (name, alg, key) in [
        ("rsa", Algorithm::RS256, rsa("rsa")),
        (
            "ec",
            Algorithm::ES256,
            EncodingKey::from_ec_pem(&std::fs::read(key_file("ec.key")).unwrap()).unwrap(),
        ),
        (
            "ed",
            Algorithm::EdDSA,
            EncodingKey::from_ed_pem(&std::fs::read(key_file("ed.key")).unwrap()).unwrap(),
        ),
    ] {
        let public = key_file(&format!("{name}.pub"));
        let v =
            Verifier::load(&KeySource::PublicKeyFile(public.clone()), Rules::default()).unwrap();
        assert!(
            v.verify(&sign(alg, None, &key, &claims(json!({})))).is_ok(),
            "{name}"
        );
        // The key confusion attack: HS256 "signed" with the public key's bytes.
        let pem = std::fs::read(&public).unwrap();
        let forged = sign(
            Algorithm::HS256,
            None,
            &EncodingKey::from_secret(&pem).unwrap(),
            &claims(json!({})),
        );
        assert_eq!(
            v.verify(&forged).unwrap_err(),
            Rejected::Algorithm,
            "{name}"
        );
    }
    // RS256 signed with another RSA key.
    let v = Verifier::load(
        &KeySource::PublicKeyFile(key_file("rsa.pub")),
        Rules::default(),
    )
    .unwrap();
    let wrong = sign(Algorithm::RS256, None, &rsa("rsa2"), &claims(json!({})));
    assert_eq!(v.verify(&wrong).unwrap_err(), Rejected::Signature);
}

#[test]
fn bad_keys_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short");
    std::fs::write(&short, "too short").unwrap();
    let e = Verifier::load(&KeySource::HmacFile(short), Rules::default()).unwrap_err();
    assert!(e.contains("at least 32 bytes"), "{e}");
    let e = Verifier::load(
        &KeySource::PublicKeyFile(dir.path().join("missing")),
        Rules::default(),
    )
    .unwrap_err();
    assert!(e.contains("missing"), "{e}");
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    assert!(Verifier::load(&KeySource::PublicKeyFile(not_pem), Rules::default()).is_err());
    let bad_jwks = dir.path().join("jwks.json");
    for doc in [
        r#"{"keys": [{"kty": "oct", "k": ""}]}"#,
        r#"{"keys": [{"kty": "RSA", "n": "!!", "e": "AQAB"}]}"#,
        r#"{"keys": "none"}"#,
        "not json",
    ] {
        std::fs::write(&bad_jwks, doc).unwrap();
        let e = Verifier::load(&KeySource::JwksFile(bad_jwks.clone()), Rules::default());
        assert!(e.is_err(), "{doc}");
    }
}

#[test]
fn jwks_keys_are_picked_by_kid_and_rotate_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwks(&["rsa"])).unwrap();
    let v = Verifier::load(&KeySource::JwksFile(path.clone()), Rules::default()).unwrap();
    let old = sign(
        Algorithm::RS256,
        Some("rsa"),
        &rsa("rsa"),
        &claims(json!({})),
    );
    let new = sign(
        Algorithm::RS256,
        Some("rsa2"),
        &rsa("rsa2"),
        &claims(json!({})),
    );
    assert!(v.verify(&old).is_ok());
    assert_eq!(v.verify(&new).unwrap_err(), Rejected::UnknownKey);
    // A kid that names one key, signed by another.
    let lying = sign(
        Algorithm::RS256,
        Some("rsa"),
        &rsa("rsa2"),
        &claims(json!({})),
    );
    assert_eq!(v.verify(&lying).unwrap_err(), Rejected::Signature);
    // The key's `alg` is RS256: PS256 with the same key is refused.
    let ps = sign(
        Algorithm::PS256,
        Some("rsa"),
        &rsa("rsa"),
        &claims(json!({})),
    );
    assert_eq!(v.verify(&ps).unwrap_err(), Rejected::Algorithm);

    // Rotation: both keys published, then the old one withdrawn.
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&path, jwks(&["rsa", "rsa2"])).unwrap();
    std::thread::sleep(Duration::from_millis(150));
    assert!(
        v.verify(&new).is_ok(),
        "a new kid is looked up in the changed file"
    );
    assert!(v.verify(&old).is_ok());
    std::fs::write(&path, jwks(&["rsa2"])).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(v.verify(&old).unwrap_err(), Rejected::UnknownKey);
    assert!(v.verify(&new).is_ok());
    // A broken document keeps the keys held.
    std::fs::write(&path, "{ not json").unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    assert!(v.verify(&new).is_ok());
}
