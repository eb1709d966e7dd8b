//! Rendering overlays with `kubectl kustomize`, and the repository's files.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
};

use herald_tests::cluster::{cache_dir, server_bin};
pub(crate) use herald_tests::env_file;

use serde_json::Value;

/// The repository root.
pub(crate) fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the repository")
        .to_path_buf()
}

/// A tool `tests/servers/install` put in its virtualenv (or `$var`).
pub(crate) fn tool(var: &str, name: &str) -> PathBuf {
    server_bin(var, cache_dir().join("venv/bin").join(name))
}

/// The overlays every check runs on.
pub(crate) const OVERLAYS: &[&str] = &["dev", "prod", "prod-gateway-api"];

/// One rendered object.
#[derive(Debug, Clone)]
pub(crate) struct Object {
    pub(crate) kind: String,
    pub(crate) name: String,
    pub(crate) value: Value,
}

/// `kubectl kustomize DIR`, split into objects.
pub(crate) fn render(dir: &Path) -> Vec<Object> {
    let out = Command::new(tool("HERALD_KUBECTL", "kubectl"))
        .arg("kustomize")
        .arg(dir)
        .output()
        .expect("running kubectl");
    assert!(
        out.status.success(),
        "kubectl kustomize {} failed:\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    parse_documents(&String::from_utf8(out.stdout).expect("UTF-8"))
}

/// An overlay of the repository's `k8s/`, rendered once for all the tests, with the test JWKS
/// document as prod's token keys (a checkout has none: `secrets/` is git-ignored).
pub(crate) fn overlay(name: &str) -> Vec<Object> {
    static RENDERED: Mutex<BTreeMap<String, Vec<Object>>> = Mutex::new(BTreeMap::new());
    let mut rendered = RENDERED.lock().unwrap_or_else(|e| e.into_inner());
    rendered
        .entry(name.to_owned())
        .or_insert_with(|| {
            let dir = scratch_copy();
            std::fs::write(
                dir.path().join("k8s/overlays/prod/secrets/jwks.json"),
                test_jwks(),
            )
            .unwrap();
            render(&dir.path().join("k8s/overlays").join(name))
        })
        .clone()
}

/// The JWKS document the rendered prod overlays carry: one of the token tests' public keys.
pub(crate) fn test_jwks() -> String {
    let key =
        std::fs::read_to_string(repo().join("crates/herald-auth/tests/keys/rsa.jwk.json")).unwrap();
    format!("{{\"keys\": [{key}]}}")
}

/// A copy of `k8s/` (and the collector config it includes) to change and render, without any
/// production secret a developer may have put in the checkout.
pub(crate) fn scratch_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let copy = |from: &Path, to: &Path| {
        let status = Command::new("cp")
            .arg("-r")
            .arg(from)
            .arg(to)
            .status()
            .unwrap();
        assert!(status.success());
    };
    std::fs::create_dir_all(dir.path().join("deploy")).unwrap();
    copy(&repo().join("k8s"), dir.path());
    copy(&repo().join("deploy/otel"), &dir.path().join("deploy"));
    let _ = std::fs::remove_file(dir.path().join("k8s/overlays/prod/secrets/jwks.json"));
    dir
}

/// Every document of a YAML stream, as JSON values with kind and name.
pub(crate) fn parse_documents(yaml: &str) -> Vec<Object> {
    let mut objects = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(yaml) {
        let value: Value = serde::Deserialize::deserialize(doc).expect("a YAML document");
        if value.is_null() {
            continue;
        }
        let kind = value["kind"].as_str().expect("kind").to_owned();
        let name = value["metadata"]["name"].as_str().expect("name").to_owned();
        objects.push(Object { kind, name, value });
    }
    objects
}

/// The objects of one kind.
pub(crate) fn of_kind<'a>(
    objects: &'a [Object],
    kind: &'a str,
) -> impl Iterator<Item = &'a Object> {
    objects.iter().filter(move |o| o.kind == kind)
}

/// The object of this kind and name.
pub(crate) fn find<'a>(objects: &'a [Object], kind: &str, name: &str) -> &'a Object {
    objects
        .iter()
        .find(|o| o.kind == kind && o.name == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// `BIN --help` of a Herald binary built beside the tests.
/// `BINARY --help`; `BINARY` may name a subcommand after the binary (`herald token`).
pub(crate) fn help(binary: &str) -> String {
    let mut words = binary.split(' ');
    let out = Command::new(herald_tests::cluster::herald_binary(words.next().unwrap()))
        .args(words)
        .arg("--help")
        .output()
        .expect("running --help");
    assert!(out.status.success(), "{binary} --help failed");
    String::from_utf8(out.stdout).expect("UTF-8")
}
