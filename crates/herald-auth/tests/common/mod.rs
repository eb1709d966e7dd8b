//! What the token tests share: the test keys in `tests/keys`.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// A file of `tests/keys`.
pub(crate) fn key_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/keys")
        .join(name)
}

/// A JWKS document of the named test keys (`tests/keys/NAME.jwk.json`).
pub(crate) fn jwks(names: &[&str]) -> String {
    let keys: Vec<Value> = names
        .iter()
        .map(|n| {
            serde_json::from_slice(&std::fs::read(key_file(&format!("{n}.jwk.json"))).unwrap())
                .unwrap()
        })
        .collect();
    json!({ "keys": keys }).to_string()
}
