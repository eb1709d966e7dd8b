//! `herald-ingest` and `herald-gateway` on the command line: help that names every shared option
//! and its variable, and clear failures for bad options and unreachable servers.

use std::process::Command;

use herald_tests::cluster::{free_port, herald_binary, mongodb_uri};

fn run(bin: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(herald_binary(bin))
        .args(args)
        .env_remove("HERALD_NATS_URL")
        .env_remove("HERALD_MONGODB_URI")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_names_the_options_and_their_variables() {
    for bin in ["herald-ingest", "herald-gateway"] {
        let (code, help, _) = run(bin, &["--help"]);
        assert_eq!(code, 0);
        for needle in [
            "--listen",
            "--nats-url",
            "HERALD_NATS_URL",
            "--mongodb-uri",
            "HERALD_MONGODB_URI",
            "--stream-max-age",
            "--stream-max-bytes",
            "--stream-replicas",
            "--retention-age",
            "--idempotency-window",
            "--drain-deadline",
        ] {
            assert!(help.contains(needle), "{bin} --help lacks {needle}");
        }
    }
    let (_, help, _) = run("herald-ingest", &["--help"]);
    assert!(help.contains("--archiver") && help.contains("--publish-token"));
    let (_, help, _) = run("herald-gateway", &["--help"]);
    assert!(help.contains("--heartbeat") && help.contains("--max-connections"));
}

#[test]
fn bad_options_and_unreachable_servers_fail_clearly() {
    let (code, _, err) = run("herald-gateway", &["--stream-replicas", "0"]);
    assert_ne!(code, 0);
    assert!(err.contains("--stream-replicas must be 1 to 5"), "{err}");
    let (code, _, err) = run("herald-ingest", &["--mongodb-uri", "postgres://x"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("--mongodb-uri must start with mongodb://"),
        "{err}"
    );
    let (code, _, err) = run("herald-ingest", &["--max-batch", "5000"]);
    assert_ne!(code, 0);
    assert!(err.contains("--max-batch must be 1 to 1000"), "{err}");
    let (code, _, err) = run("herald-gateway", &["--stream-max-age", "soon"]);
    assert_eq!(
        code, 2,
        "a value that does not parse is a usage error: {err}"
    );
    // Nothing listens on these ports: it says so and exits, for the orchestrator to retry.
    let uri = mongodb_uri(free_port());
    let (code, _, err) = run(
        "herald-gateway",
        &["--mongodb-uri", &uri, "--backend-timeout", "300ms"],
    );
    assert_ne!(code, 0);
    assert!(err.contains("herald-gateway:"), "{err}");
}
