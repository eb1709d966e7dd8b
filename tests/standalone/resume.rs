//! Resumes that cannot be honoured say so with `recovered:false` and the right reason.

use std::time::Duration;

use herald_tests::{Herald, seq_of};
use serde_json::{Value, json};

async fn verdict(api: &herald_tests::Api, last_event_id: &str) -> Value {
    let mut s = api
        .stream("/v1/stream?topic=t", Some(last_event_id))
        .await
        .unwrap();
    let first = s.next().await.unwrap().unwrap();
    assert_eq!(first.event, "herald.resume");
    assert_eq!(first.id, "", "the control event carries no id");
    serde_json::from_str(&first.data).unwrap()
}

#[tokio::test]
async fn malformed_unknown_and_expired_ids_are_refused_with_their_reason() {
    let dir = tempfile::tempdir().unwrap();
    let herald = Herald::start(
        dir.path(),
        &["--retention-bytes", "2KiB", "--trim-interval", "100ms"],
    )
    .await
    .unwrap();
    let api = herald.api();
    let mut ids = Vec::new();
    for n in 0..100 {
        ids.push(
            api.publish("t", json!({"n": n, "pad": "x".repeat(40)}))
                .await
                .unwrap()
                .id(),
        );
    }
    let last = ids.last().unwrap().clone();
    let epoch = last.split('-').next().unwrap().to_owned();

    // Wait for retention to remove the oldest events, and to be done: the trimmer works in
    // passes, so the earliest id is only read once two reads 300 ms apart agree.
    let mut earliest = 0;
    for _ in 0..100 {
        let (_, h) = api
            .get_json("/v1/topics/t/events?limit=1000")
            .await
            .unwrap();
        let now = h["events"][0]["id"].as_str().map(seq_of).unwrap_or(0);
        if now > 1 && now == earliest {
            break;
        }
        earliest = now;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(earliest > 1, "retention ran");

    let v = verdict(&api, &ids[0]).await;
    assert_eq!(v["recovered"], false);
    assert_eq!(v["reason"], "expired");
    assert_eq!(v["earliest"], format!("{epoch}-{earliest}"));
    assert_eq!(v["head"], last);

    for bad in ["garbage", "12", "zz-1", &format!("{epoch}-")] {
        let v = verdict(&api, bad).await;
        assert_eq!(
            (v["recovered"].clone(), v["reason"].clone()),
            (json!(false), json!("malformed")),
            "{bad}"
        );
    }
    let v = verdict(&api, &format!("{epoch}-{}", seq_of(&last) + 10)).await;
    assert_eq!(v["reason"], "unknown");

    // The id just before the earliest retained one loses nothing: recovered.
    let v = verdict(&api, &format!("{epoch}-{}", earliest - 1)).await;
    assert_eq!(v, json!({"recovered": true}));

    // After a refusal the stream goes on live, from now.
    let mut s = api
        .stream("/v1/stream?topic=t", Some("garbage"))
        .await
        .unwrap();
    assert_eq!(s.next().await.unwrap().unwrap().event, "herald.resume");
    let live = api.publish("t", json!("live")).await.unwrap().id();
    assert_eq!(s.next().await.unwrap().unwrap().id, live);
}

#[tokio::test]
async fn an_id_from_before_the_data_dir_was_wiped_is_another_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let mut herald = Herald::start(dir.path(), &[]).await.unwrap();
    let old = herald.api().publish("t", json!(1)).await.unwrap().id();
    herald.kill9().await;
    std::fs::remove_dir_all(dir.path()).unwrap();
    herald.restart().await.unwrap();
    let api = herald.api();
    let new = api.publish("t", json!(2)).await.unwrap().id();
    assert_eq!(seq_of(&new), 1, "the sequence restarted");
    let v = verdict(&api, &old).await;
    assert_eq!(v["recovered"], false);
    assert_eq!(v["reason"], "epoch");
    assert_eq!(v["head"], new);
}

#[tokio::test]
async fn the_query_parameter_resumes_a_first_load_and_the_header_wins() {
    let dir = tempfile::tempdir().unwrap();
    let herald = Herald::start(dir.path(), &[]).await.unwrap();
    let api = herald.api();
    let ids: Vec<String> = futures_util::future::join_all((0..3).map(|n| {
        let api = api.clone();
        async move { api.publish("t", json!(n)).await.unwrap().id() }
    }))
    .await;
    let mut ids = ids;
    ids.sort_by_key(|i| seq_of(i));
    let mut s = api
        .stream(&format!("/v1/stream?topic=t&lastEventId={}", ids[0]), None)
        .await
        .unwrap();
    let (got, control) = s.collect(2).await.unwrap();
    assert_eq!(control[0].data, r#"{"recovered":true}"#);
    assert_eq!(
        got.iter().map(|e| e.id.clone()).collect::<Vec<_>>(),
        ids[1..]
    );
    let mut s = api
        .stream(
            &format!("/v1/stream?topic=t&lastEventId={}", ids[0]),
            Some(&ids[1]),
        )
        .await
        .unwrap();
    let (got, _) = s.collect(1).await.unwrap();
    assert_eq!(got[0].id, ids[2], "Last-Event-ID header over the query");
}

/// Resumes after `from` and answers the ids of the `n` events replayed, and the count the
/// `herald.live` event reports.
async fn replay(api: &herald_tests::Api, from: &str, n: usize) -> (Vec<String>, String) {
    let mut s = api.stream("/v1/stream?topic=t", Some(from)).await.unwrap();
    let (got, control) = s.collect(n).await.unwrap();
    assert_eq!(control[0].data, r#"{"recovered":true}"#);
    // The live marker follows the last replayed event.
    let live = s.next().await.unwrap().unwrap();
    assert_eq!(live.event, "herald.live");
    (got.into_iter().map(|e| e.id).collect(), live.data)
}

#[tokio::test]
async fn recent_events_replay_from_the_window_and_older_ones_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    // A window of 4 KiB holds about the last 20 of these events; pages of 10.
    let herald = Herald::start(
        dir.path(),
        &["--replay-window", "4KiB", "--replay-page", "10"],
    )
    .await
    .unwrap();
    let api = herald.api();
    let pad = "p".repeat(60);
    let mut ids = Vec::new();
    for n in 0..100 {
        ids.push(
            api.publish("t", json!({"n": n, "pad": pad}))
                .await
                .unwrap()
                .id(),
        );
        // Another topic in between: the window skips what the filter does not match.
        api.publish("u", json!(n)).await.unwrap();
    }
    let window = || api.metric("herald_replay_reads_total{tier=\"window\"}");

    // Recent: all from the window.
    let before = window().await.unwrap();
    let (got, live) = replay(&api, &ids[89], 10).await;
    assert_eq!(got, ids[90..]);
    assert_eq!(live, r#"{"replayed":10}"#);
    assert_eq!(window().await.unwrap() - before, 10.0);

    // Old: the store first, then the window once it covers the rest; every event once, in order.
    let before = window().await.unwrap();
    let (got, live) = replay(&api, &ids[4], 95).await;
    assert_eq!(
        got,
        ids[5..],
        "a gap or a duplicate where the store hands over"
    );
    assert_eq!(live, r#"{"replayed":95}"#);
    let from_window = window().await.unwrap() - before;
    assert!(
        from_window > 0.0 && from_window < 40.0,
        "{from_window} of 95 from a window of about 20 events"
    );
}

#[tokio::test]
async fn without_a_window_every_replay_reads_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let herald = Herald::start(dir.path(), &["--replay-window", "0"])
        .await
        .unwrap();
    let api = herald.api();
    let mut ids = Vec::new();
    for n in 0..20 {
        ids.push(api.publish("t", json!(n)).await.unwrap().id());
    }
    let (got, _) = replay(&api, &ids[9], 10).await;
    assert_eq!(got, ids[10..]);
    let window = api
        .metric("herald_replay_reads_total{tier=\"window\"}")
        .await
        .unwrap();
    assert_eq!(window, 0.0);
}

/// G4 mid-stream: a subscriber that stops reading falls behind and catches up from the store while
/// retention removes what it has not read. It must be told (`herald.resume`,
/// `recovered:false`, `expired`) before the ids jump — never a silent skip. (Found by review:
/// the catch-up read pages after its position without checking that they still start there.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catch_up_that_falls_behind_retention_says_so_before_the_ids_jump() {
    let dir = tempfile::tempdir().unwrap();
    let herald = Herald::start(
        dir.path(),
        &[
            "--retention-bytes",
            "1MiB",
            "--trim-interval",
            "100ms",
            "--subscriber-queue",
            "1",
            "--replay-window",
            "0",
        ],
    )
    .await
    .unwrap();
    let api = herald.api();
    // Open, then stop reading: the socket and the one-event queue fill, the hub skips it.
    let mut stream = api.stream("/v1/stream?topic=t", None).await.unwrap();
    let pad = "x".repeat(60_000);
    let mut last = String::new();
    for n in 0..300 {
        last = api
            .publish("t", json!({"n": n, "pad": pad}))
            .await
            .unwrap()
            .id();
    }
    // Retention keeps about 17 of these 60 KB events; let it run.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (mut previous, mut told, mut verdicts) = (None::<u64>, false, 0);
    loop {
        let event = stream.next().await.unwrap().expect("the stream goes on");
        if event.event == "herald.resume" {
            let v: Value = serde_json::from_str(&event.data).unwrap();
            assert_eq!(
                (&v["recovered"], &v["reason"]),
                (&json!(false), &json!("expired"))
            );
            (told, verdicts) = (true, verdicts + 1);
            continue;
        }
        let seq = seq_of(&event.id);
        if let Some(previous) = previous {
            assert!(
                seq == previous + 1 || told,
                "the ids jumped from {previous} to {seq} with no verdict"
            );
            assert!(seq > previous, "{seq} after {previous}");
        }
        (previous, told) = (Some(seq), false);
        if event.id == last {
            break;
        }
    }
    assert!(verdicts >= 1, "the catch-up did not fall behind retention");
}
