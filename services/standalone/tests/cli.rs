//! The `herald` command line: `--help` documents every option with its environment variable, and
//! bad configuration stops the process with a clear message and exit code 2.

use std::process::Command;

fn herald(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(args)
        .env_remove("HERALD_LISTEN")
        .output()
        .expect("run herald")
}

#[test]
fn help_names_every_option_and_its_environment_variable() {
    let out = herald(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for (flag, env) in [
        ("--config", "HERALD_CONFIG"),
        ("--listen", "HERALD_LISTEN"),
        ("--data-dir", "HERALD_DATA_DIR"),
        ("--store", "HERALD_STORE"),
        ("--heartbeat", "HERALD_HEARTBEAT"),
        ("--retry", "HERALD_RETRY"),
        ("--max-body", "HERALD_MAX_BODY"),
        ("--max-batch", "HERALD_MAX_BATCH"),
        ("--max-topics", "HERALD_MAX_TOPICS"),
        ("--max-connections", "HERALD_MAX_CONNECTIONS"),
        ("--subscriber-queue", "HERALD_SUBSCRIBER_QUEUE"),
        ("--replay-page", "HERALD_REPLAY_PAGE"),
        ("--replay-bytes", "HERALD_REPLAY_BYTES"),
        ("--write-timeout", "HERALD_WRITE_TIMEOUT"),
        ("--drain-deadline", "HERALD_DRAIN_DEADLINE"),
        ("--drain-jitter", "HERALD_DRAIN_JITTER"),
        ("--retention-age", "HERALD_RETENTION_AGE"),
        ("--retention-bytes", "HERALD_RETENTION_BYTES"),
        ("--idempotency-window", "HERALD_IDEMPOTENCY_WINDOW"),
        ("--trim-interval", "HERALD_TRIM_INTERVAL"),
        ("--demo-topic", "HERALD_DEMO_TOPIC"),
        ("--compat-topic", "HERALD_COMPAT_TOPIC"),
        ("--log ", "HERALD_LOG="),
        ("--log-format", "HERALD_LOG_FORMAT"),
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
        assert!(
            help.contains(&format!("[env: {}", env.trim_end_matches('='))),
            "{env} missing from --help"
        );
    }
    assert!(help.contains("[default: 127.0.0.1:8080]"));
}

#[test]
fn bad_configuration_exits_2_naming_the_option() {
    let out = herald(&["--drain-jitter", "30s", "--drain-deadline", "5s"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("--drain-jitter"), "{err}");

    let out = herald(&["--heartbeat", "soon"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .contains("--heartbeat")
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("herald.toml");
    std::fs::write(&file, "listen = \"127.0.0.1:1\"\nunknown_key = 1\n").unwrap();
    let out = herald(&["--config", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8(out.stderr).unwrap().contains("unknown"));
}
