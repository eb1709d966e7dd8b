//! Schemathesis against a live standalone `herald` (`herald_tests::schemathesis`).

use herald_tests::{Herald, schemathesis};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_wrong_with_a_live_herald() {
    let dir = tempfile::tempdir().unwrap();
    let herald = Herald::start(dir.path(), &[]).await.unwrap();
    let examples = schemathesis::examples();
    let cases = schemathesis::run(&herald.base, examples).await.unwrap();
    assert!(cases >= examples, "only {cases} cases ran");
}
