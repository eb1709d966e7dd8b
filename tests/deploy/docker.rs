//! The container image: hadolint on the Dockerfile, the binaries it ships against what the
//! manifests and the compose file run, and the image's health probe against a real server.

use std::process::Command;

use crate::render::{OVERLAYS, of_kind, overlay, repo, tool};

fn hadolint(path: &std::path::Path) -> std::process::Output {
    Command::new(tool("HERALD_HADOLINT", "hadolint"))
        .arg(path)
        .output()
        .expect("running hadolint")
}

#[test]
fn hadolint_passes_the_dockerfile_and_catches_a_bad_one() {
    let out = hadolint(&repo().join("deploy/docker/Dockerfile"));
    assert!(
        out.status.success(),
        "hadolint deploy/docker/Dockerfile:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The linter really lints: an unpinned base image and an unpinned package fail.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("Dockerfile");
    std::fs::write(
        &bad,
        "FROM debian:latest\nRUN apt-get update && apt-get install -y curl\n",
    )
    .unwrap();
    let out = hadolint(&bad);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "hadolint passed a bad Dockerfile");
    assert!(report.contains("DL3007"), "{report}");
}

/// The binaries the Dockerfile copies into the image.
fn shipped() -> Vec<String> {
    let dockerfile = std::fs::read_to_string(repo().join("deploy/docker/Dockerfile")).unwrap();
    dockerfile
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("target/release/"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_image_ships_every_binary_the_deployments_run() {
    let shipped = shipped();
    for bin in [
        "herald",
        "herald-ingest",
        "herald-gateway",
        "herald-redis-bridge",
        "herald-probe",
    ] {
        assert!(
            shipped.iter().any(|b| b == bin),
            "the image lacks {bin}: {shipped:?}"
        );
        // And each is a binary this workspace builds.
        herald_tests::cluster::herald_binary(bin);
    }
    let dockerfile = std::fs::read_to_string(repo().join("deploy/docker/Dockerfile")).unwrap();
    assert!(dockerfile.contains("CMD [\"/usr/local/bin/herald-probe\"]"));
    for name in OVERLAYS {
        let objects = overlay(name);
        // Every workload running Herald's image runs a binary the image has.
        let herald_image = |o: &&crate::render::Object| {
            let image = o.value["spec"]["template"]["spec"]["containers"][0]["image"]
                .as_str()
                .unwrap_or_default();
            image.rsplit('/').next().unwrap().starts_with("herald:")
        };
        let runs: Vec<_> = of_kind(&objects, "Deployment")
            .filter(herald_image)
            .collect();
        assert_eq!(
            runs.len(),
            2,
            "overlay {name}: gateway and ingest run Herald's image"
        );
        for o in runs {
            let command = o.value["spec"]["template"]["spec"]["containers"][0]["command"][0]
                .as_str()
                .unwrap_or_else(|| panic!("overlay {name}: {} has no command", o.name));
            let bin = command
                .strip_prefix("/usr/local/bin/")
                .expect("/usr/local/bin");
            assert!(
                shipped.iter().any(|b| b == bin),
                "overlay {name}: {} runs {bin}",
                o.name
            );
        }
    }
    let ignore = std::fs::read_to_string(repo().join(".dockerignore")).unwrap();
    for line in ["target/", ".git/"] {
        assert!(
            ignore.lines().any(|l| l == line),
            ".dockerignore lacks {line}"
        );
    }
}

fn probe(args: &[&str], env: Option<&str>) -> std::process::Output {
    let mut cmd = Command::new(herald_tests::cluster::herald_binary("herald-probe"));
    cmd.args(args).env_remove("HERALD_PROBE_URL");
    if let Some(url) = env {
        cmd.env("HERALD_PROBE_URL", url);
    }
    cmd.output().expect("running herald-probe")
}

#[tokio::test]
async fn the_health_probe_passes_only_a_2xx_answer() {
    let data = tempfile::tempdir().unwrap();
    let herald = herald_tests::process::Herald::start(data.path(), &[])
        .await
        .unwrap();
    let healthz = format!("{}/healthz", herald.base);
    assert!(probe(&[&healthz], None).status.success());
    assert!(
        probe(&[], Some(&healthz)).status.success(),
        "$HERALD_PROBE_URL"
    );
    let missing = probe(&[&format!("{}/no-such-endpoint", herald.base)], None);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("answered 404"));
    let closed = format!(
        "http://127.0.0.1:{}/healthz",
        herald_tests::cluster::free_port()
    );
    assert_eq!(probe(&[&closed], None).status.code(), Some(1));
    let https = probe(&["https://127.0.0.1/healthz"], None);
    assert_eq!(https.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&https.stderr).contains("only http://"));
    let help = probe(&["--help"], None);
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("$HERALD_PROBE_URL"));
}
