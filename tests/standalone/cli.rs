//! `herald publish` and `herald tail` against a live server, run as a user runs them.

use std::{process::Stdio, time::Duration};

use herald_tests::{Herald, process::herald_bin, seq_of};
use serde_json::Value;
use tokio::{io::AsyncWriteExt as _, process::Command};

/// `herald publish ARGS` with `stdin`; (exit code, stdout lines, stderr).
async fn publish(base: &str, args: &[&str], stdin: &str) -> (i32, Vec<String>, String) {
    let mut child = Command::new(herald_bin())
        .arg("publish")
        .args(["--url", base])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("herald publish did not finish")
        .unwrap();
    let lines = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    (
        out.status.code().unwrap_or(-1),
        lines,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `herald tail --json --url BASE --count N` with `args` (topics and flags), its output piped.
fn spawn_tail(base: &str, args: &[&str], count: usize) -> tokio::process::Child {
    Command::new(herald_bin())
        .arg("tail")
        .args(args)
        .args(["--json", "--url", base, "--count", &count.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// What `herald tail --json --count N` printed once it ended (it must end, successfully): its
/// JSON lines and its standard error.
async fn tail_output(tail: tokio::process::Child) -> (Vec<Value>, String) {
    let out = tokio::time::timeout(Duration::from_secs(60), tail.wait_with_output())
        .await
        .expect("herald tail did not end after --count events")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let lines = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (lines, stderr)
}

async fn history(herald: &Herald, topic: &str) -> Vec<Value> {
    let (status, body) = herald
        .api()
        .get_json(&format!("/v1/topics/{topic}/events?limit=1000"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    body["events"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_publish_sends_an_event_or_stdin_lines_and_never_makes_two() {
    let dir = tempfile::tempdir().unwrap();
    let mut herald = Herald::start(dir.path(), &[]).await.unwrap();
    let base = herald.base.clone();

    let (code, ids, err) = publish(&base, &["t", r#"{"n": 0}"#, "--type", "goal"], "").await;
    assert_eq!((code, ids.len()), (0, 1), "{err}");

    // Five lines in batches of two: three requests, five ids in order.
    let lines = "{\"n\": 1}\n{\"n\": 2}\n\n3\n\"four\"\n[5]\n";
    let (code, batch_ids, err) = publish(&base, &["t", "--batch", "2"], lines).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(batch_ids.len(), 5, "{batch_ids:?}");
    assert!(batch_ids.windows(2).all(|w| seq_of(&w[0]) < seq_of(&w[1])));
    let events = history(&herald, "t").await;
    let data: Vec<String> = events.iter().map(|e| e["data"].to_string()).collect();
    assert_eq!(
        data,
        [
            r#"{"n":0}"#,
            r#"{"n":1}"#,
            r#"{"n":2}"#,
            "3",
            r#""four""#,
            "[5]"
        ]
    );
    assert_eq!(events[0]["type"], "goal");

    // The same input with the same key twice: the second run answers the first ids.
    let keyed = ["t", "--batch", "2", "--idempotency-key", "import-1"];
    let (_, first, _) = publish(&base, &keyed, "1\n2\n3\n").await;
    let (code, again, err) = publish(&base, &keyed, "1\n2\n3\n").await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(first, again);
    assert_eq!(history(&herald, "t").await.len(), 9);

    // Not JSON: refused before anything is sent, with what to do; --raw sends it as a string.
    let (code, _, err) = publish(&base, &["t", "hello"], "").await;
    assert_eq!(code, 1);
    assert!(err.contains("--raw"), "{err}");
    let (code, _, err) = publish(&base, &["t", "hello", "--raw"], "").await;
    assert_eq!(code, 0, "{err}");
    // A refusal the client must fix is not retried.
    let (code, _, err) = publish(&base, &["bad topic!", "1"], "").await;
    assert_eq!(code, 1);
    assert!(err.contains("invalid_topic"), "{err}");

    // The server is down when the publish starts and back a moment later: it is retried with
    // the same key until it is acknowledged, once.
    herald.kill9().await;
    let pending = tokio::spawn({
        let base = base.clone();
        async move { publish(&base, &["t", "\"while down\""], "").await }
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    herald.restart_same_port().await.unwrap();
    let (code, ids, err) = pending.await.unwrap();
    assert_eq!((code, ids.len()), (0, 1), "{err}");
    assert!(err.contains("retrying"), "the first attempts failed: {err}");
    let events = history(&herald, "t").await;
    assert_eq!(events.len(), 11);
    assert_eq!(events[10]["data"], "while down");
}

/// `herald tail` across a `kill -9` and restart of the server: every event once, in order, the
/// resume verdict printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_tail_prints_every_event_once_in_order_across_a_kill_9_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut herald = Herald::start(dir.path(), &["--retry", "300ms"])
        .await
        .unwrap();
    let base = herald.base.clone();
    let total = 30;
    let tail = spawn_tail(&base, &["t", "news.*"], total);
    let api = herald.api();
    let mut open = 0.0;
    for _ in 0..100 {
        open = api.metric("herald_connections_open").await.unwrap();
        if open >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(open, 1.0, "herald tail connected");

    let mut ids = Vec::new();
    for i in 0..total {
        if i == total / 2 {
            herald.restart_same_port().await.unwrap();
        }
        let topic = if i % 3 == 0 { "news.uk" } else { "t" };
        let api = herald.api();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let id = loop {
            match api.publish(topic, serde_json::json!({"i": i})).await {
                Ok(p) if p.status == 201 => break p.id(),
                _ => assert!(tokio::time::Instant::now() < deadline, "publish {i}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        api.publish("other", serde_json::json!("not followed"))
            .await
            .unwrap();
        ids.push(id);
    }
    let (lines, _) = tail_output(tail).await;
    let got: Vec<&str> = lines.iter().filter_map(|l| l["id"].as_str()).collect();
    assert_eq!(got, ids, "every event once, in order");
    let verdicts: Vec<&Value> = lines
        .iter()
        .filter(|l| l["control"] == "herald.resume")
        .collect();
    assert_eq!(
        verdicts.len(),
        1,
        "one resume, after the restart: {lines:?}"
    );
    assert_eq!(verdicts[0]["data"]["recovered"], true);
    assert_eq!(lines[3]["data"]["i"], 3, "events carry their JSON data");
}

/// With the server's HMAC key file, `herald publish` and `herald tail` mint their own tokens
/// (granting just their topics); when the server ends `tail`'s stream because the token expired
/// (`herald.auth`), it mints a new one and resumes: every event once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_key_file_the_commands_mint_their_tokens_and_tail_renews_an_expired_one() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("herald.key");
    std::fs::write(&key, "a-test-key-of-at-least-thirty-two-bytes-long\n").unwrap();
    let key = key.to_str().unwrap().to_owned();
    let herald = Herald::start(
        &dir.path().join("data"),
        &[
            "--auth-hmac-key-file",
            &key,
            "--auth-leeway",
            "0s",
            "--retry",
            "200ms",
        ],
    )
    .await
    .unwrap();
    let base = herald.base.clone();
    let total = 6;
    let tail = spawn_tail(
        &base,
        &["t", "--auth-hmac-key-file", &key, "--token-ttl", "2s"],
        total,
    );
    // Without a token the server refuses; with the key file the command mints one.
    let (code, _, err) = publish(&base, &["t", "1"], "").await;
    assert_eq!(code, 1);
    assert!(err.contains("unauthorized"), "{err}");
    let auth = ["--auth-hmac-key-file", key.as_str()];
    let mut ids = Vec::new();
    for i in 0..total {
        if i == total / 2 {
            // Past the tail's token's expiry.
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        let data = i.to_string();
        let args: Vec<&str> = ["t", data.as_str()].iter().chain(&auth).copied().collect();
        let (code, out, err) = publish(&base, &args, "").await;
        assert_eq!(code, 0, "{err}");
        ids.extend(out);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (lines, stderr) = tail_output(tail).await;
    let got: Vec<&str> = lines.iter().filter_map(|l| l["id"].as_str()).collect();
    assert_eq!(got, ids, "every event once, in order, across the renewal");
    assert!(
        lines.iter().any(|l| l["control"] == "herald.auth"),
        "the token expired mid-stream: {lines:?}"
    );
    assert!(stderr.contains("minting a new token"), "{stderr}");
}
