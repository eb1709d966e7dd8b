//! Rendering overlays with `kubectl kustomize`, and the repository's files.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;

/// The repository root.
pub(crate) fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the repository")
        .to_path_buf()
}

/// A tool from the environment or the test servers' virtualenv.
pub(crate) fn tool(var: &str, name: &str) -> PathBuf {
    let bin = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        let cache = std::env::var_os("HERALD_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/herald")
            });
        cache.join("venv/bin").join(name)
    });
    assert!(
        bin.exists(),
        "{} is missing: run tests/servers/install (tests/run does), or set {var}",
        bin.display()
    );
    bin
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

/// An overlay of the repository's `k8s/`.
pub(crate) fn overlay(name: &str) -> Vec<Object> {
    render(&repo().join("k8s/overlays").join(name))
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

/// `KEY=VALUE` lines of a kustomize env file (comments and blank lines skipped).
pub(crate) fn env_file(path: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("{}: not KEY=VALUE: {l}", path.display()));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// `BIN --help` of a Herald binary built beside the tests.
pub(crate) fn help(binary: &str) -> String {
    let out = Command::new(herald_tests::cluster::herald_binary(binary))
        .arg("--help")
        .output()
        .expect("running --help");
    assert!(out.status.success(), "{binary} --help failed");
    String::from_utf8(out.stdout).expect("UTF-8")
}
