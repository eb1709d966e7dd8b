//! One configuration model for every binary: an option that several binaries take is refused
//! the same way by each, whether it comes from a flag, a `HERALD_*` variable or the `--config`
//! file, with exit code 2 and a message that names the option, before anything is started.

use std::process::Command;

use herald_tests::cluster::herald_binary;

const ALL: &[&str] = &[
    "herald",
    "herald-ingest",
    "herald-gateway",
    "herald-redis-bridge",
];
const PUBLISH: &[&str] = &["herald", "herald-ingest"];
const STREAM: &[&str] = &["herald", "herald-gateway"];

/// Runs `bin` with `args` and `env`, and answers its exit code and the error it printed (the
/// binary's own name taken out, so two binaries' messages compare equal).
fn refusal(bin: &str, args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut command = Command::new(herald_binary(bin));
    command.args(args);
    for (name, _) in std::env::vars().filter(|(k, _)| k.starts_with("HERALD_")) {
        command.env_remove(name);
    }
    let out = command.envs(env.iter().copied()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).replace(bin, "BIN");
    let line = err
        .lines()
        .find(|l| l.contains("error"))
        .unwrap_or("")
        .to_owned();
    (out.status.code().unwrap_or(-1), line)
}

/// Each binary in `bins` refuses `args` with exit code 2 and the same message containing `says`.
fn refused_alike(bins: &[&str], args: &[&str], env: &[(&str, &str)], says: &str) {
    let mut first: Option<String> = None;
    for bin in bins {
        let (code, line) = refusal(bin, args, env);
        assert_eq!(code, 2, "{bin} {args:?} {env:?}: {line}");
        assert!(line.contains(says), "{bin} {args:?} {env:?}: {line}");
        match &first {
            None => first = Some(line),
            Some(first) => assert_eq!(&line, first, "{bin} says it differently"),
        }
    }
}

#[test]
fn shared_options_are_validated_alike_in_every_binary() {
    for (bins, args, says) in [
        (
            PUBLISH,
            &["--max-batch", "0"][..],
            "--max-batch must be 1 to 1000",
        ),
        (
            PUBLISH,
            &["--max-batch", "5000"],
            "--max-batch must be 1 to 1000",
        ),
        (
            PUBLISH,
            &["--max-body", "0"],
            "--max-body must be above zero",
        ),
        (
            PUBLISH,
            &["--publish-token", ""],
            "--publish-token must not be empty",
        ),
        (
            ALL,
            &["--trim-interval", "0s"],
            "--trim-interval must be above zero",
        ),
        (
            ALL,
            &["--idempotency-window", "0s"],
            "--idempotency-window must be above zero",
        ),
        (
            ALL,
            &["--retention-age", "0s"],
            "--retention-age must be above zero",
        ),
        (
            ALL,
            &["--write-timeout", "0s"],
            "--write-timeout must be above zero",
        ),
        (
            ALL,
            &["--drain-deadline", "0s"],
            "--drain-deadline must be above zero",
        ),
        (
            ALL,
            &["--drain-deadline", "soon"],
            "--drain-deadline invalid duration",
        ),
        (
            STREAM,
            &["--heartbeat", "0s"],
            "--heartbeat must be above zero",
        ),
        (STREAM, &["--retry", "0s"], "--retry must be above zero"),
        (
            STREAM,
            &["--gap-timeout", "0s"],
            "--gap-timeout must be above zero",
        ),
        (
            STREAM,
            &["--replay-page", "0"],
            "--replay-page must be at least 1",
        ),
        (
            STREAM,
            &["--max-connections", "0"],
            "--max-connections must be at least 1",
        ),
        (STREAM, &["--demo-topic", "bad topic"], "--demo-topic"),
        (
            STREAM,
            &["--drain-jitter", "30s", "--drain-deadline", "10s"],
            "--drain-jitter (30s) must be shorter than --drain-deadline (10s)",
        ),
    ] {
        refused_alike(bins, args, &[], says);
    }
}

#[test]
fn the_environment_and_the_file_are_validated_like_flags() {
    refused_alike(
        ALL,
        &[],
        &[("HERALD_TRIM_INTERVAL", "0s")],
        "--trim-interval must be above zero (got '0s')",
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("options.toml");
    let path = file.to_str().unwrap();
    std::fs::write(&file, "trim_interval = \"0s\"\n").unwrap();
    refused_alike(
        ALL,
        &["--config", path],
        &[],
        "--trim-interval must be above zero (got '0s')",
    );
    std::fs::write(&file, "no_such_option = 1\n").unwrap();
    refused_alike(
        ALL,
        &["--config", path],
        &[],
        "unknown option `no_such_option`",
    );
    // A flag over a bad file value wins, as it does over a good one.
    std::fs::write(&file, "max_batch = 0\n").unwrap();
    refused_alike(
        PUBLISH,
        &["--config", path],
        &[],
        "--max-batch must be 1 to 1000",
    );
    let (code, line) = refusal(
        "herald",
        &[
            "--config",
            path,
            "--max-batch",
            "7",
            "--listen",
            "256.0.0.1:1",
        ],
        &[],
    );
    assert_eq!(code, 2);
    assert!(line.contains("--listen"), "{line}");
}

/// Every `HERALD_*` variable is declared by one option in the whole source: an option two
/// binaries share is one definition, never two copies that could drift.
#[test]
fn each_variable_is_declared_once() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut declared = std::collections::BTreeMap::<String, Vec<String>>::new();
    let mut dirs = vec![root.join("crates"), root.join("services")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for (i, _) in text.match_indices("env = \"HERALD_") {
                    let name: String = text[i + 7..].chars().take_while(|c| *c != '"').collect();
                    declared
                        .entry(name)
                        .or_default()
                        .push(path.display().to_string());
                }
            }
        }
    }
    assert!(declared.len() > 40, "{declared:?}");
    let twice: Vec<_> = declared.iter().filter(|(_, at)| at.len() > 1).collect();
    assert!(twice.is_empty(), "declared more than once: {twice:?}");
}
