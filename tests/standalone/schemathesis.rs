//! Schemathesis against a live standalone `herald` (`herald_tests::schemathesis`): open, as the
//! README's first command starts it, and with access control, every request carrying a token.

use herald_tests::{Herald, process::mint_token, schemathesis};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_wrong_with_a_live_herald() {
    let dir = tempfile::tempdir().unwrap();
    let herald = Herald::start(dir.path(), &[]).await.unwrap();
    let examples = schemathesis::examples();
    let cases = schemathesis::run(&herald.base, examples, &[])
        .await
        .unwrap();
    assert!(cases >= examples, "only {cases} cases ran");
}

/// With an HMAC key: a token granting every topic on every request (its cookie too), and the
/// operations' 401 and 403 answers as documented when the fuzzer sends its own headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_wrong_with_a_herald_that_checks_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("herald.key");
    std::fs::write(&key, "a-test-key-of-at-least-thirty-two-bytes-long").unwrap();
    let key_arg = key.to_str().unwrap();
    let herald = Herald::start(&dir.path().join("data"), &["--auth-hmac-key-file", key_arg])
        .await
        .unwrap();
    let token = mint_token(&key, &["--subscribe", ">", "--publish", ">", "--ttl", "2h"]);
    let bearer = format!("Authorization: Bearer {token}");
    let examples = schemathesis::examples();
    let cases = schemathesis::run(&herald.base, examples, &[&bearer])
        .await
        .unwrap();
    assert!(cases >= examples, "only {cases} cases ran");
}
