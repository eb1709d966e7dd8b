//! 1,000 events over 3 topics, 20 subscribers with different topic sets and resume points.

use std::{collections::BTreeMap, time::Duration};

use futures_util::future::join_all;
use herald_tests::{Herald, SseStream, seq_of};
use serde_json::json;

const TOPICS: [&str; 3] = ["game.a", "game.b", "news"];
const EVENTS: usize = 1000;

struct Plan {
    filter: &'static [&'static str],
    /// Connect after this many events were published, resuming from the last one; 0 = at start.
    resume_after: usize,
}

fn matches(filter: &[&str], topic: &str) -> bool {
    filter.iter().any(|f| match f.strip_suffix(".*") {
        Some(prefix) => topic
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('.')),
        None => *f == topic,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subscriber_sees_exactly_its_events_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let herald = Herald::start(dir.path(), &[]).await.unwrap();
    let api = herald.api();
    let filters: [&[&str]; 5] = [
        &["game.a"],
        &["game.*"],
        &["news", "game.b"],
        &["game.*", "news"],
        &["game.b"],
    ];
    let plans: Vec<Plan> = (0..20)
        .map(|i| Plan {
            filter: filters[i % 5],
            resume_after: if i < 8 { 0 } else { (i - 7) * 50 },
        })
        .collect();

    // Subscribers that start before anything is published.
    let mut early = Vec::new();
    for plan in plans.iter().filter(|p| p.resume_after == 0) {
        let query: String = plan.filter.iter().map(|t| format!("topic={t}&")).collect();
        early.push(
            api.stream(&format!("/v1/stream?{query}"), None)
                .await
                .unwrap(),
        );
    }

    // Four concurrent publishers; `published` maps seq -> (id, topic).
    let mut published: BTreeMap<u64, (String, &str)> = BTreeMap::new();
    let mut late: Vec<(usize, SseStream, String)> = Vec::new();
    for chunk in 0..(EVENTS / 50) {
        let sends = (0..50).map(|k| {
            let api = api.clone();
            let n = chunk * 50 + k;
            async move {
                let topic = TOPICS[n % 3];
                (
                    api.publish(topic, json!({"n": n})).await.unwrap().id(),
                    topic,
                )
            }
        });
        for (id, topic) in join_all(sends).await {
            published.insert(seq_of(&id), (id, topic));
        }
        // Late subscribers connect mid-stream, resuming from an id they "had".
        for (i, plan) in plans.iter().enumerate() {
            if plan.resume_after != 0 && plan.resume_after == published.len() {
                let (id, _) = published
                    .values()
                    .nth(plan.resume_after / 2)
                    .unwrap()
                    .clone();
                let query: String = plan.filter.iter().map(|t| format!("topic={t}&")).collect();
                let s = api
                    .stream(&format!("/v1/stream?{query}"), Some(&id))
                    .await
                    .unwrap();
                late.push((i, s, id));
            }
        }
    }
    assert_eq!(published.len(), EVENTS);
    assert_eq!(late.len(), 12);

    let expected = |filter: &[&str], after: u64| -> Vec<String> {
        published
            .iter()
            .filter(|(seq, (_, topic))| **seq > after && matches(filter, topic))
            .map(|(_, (id, _))| id.clone())
            .collect()
    };
    let early_plans = plans.iter().filter(|p| p.resume_after == 0);
    for (plan, mut stream) in early_plans.zip(early) {
        let want = expected(plan.filter, 0);
        let (got, control) = stream.collect(want.len()).await.unwrap();
        assert!(control.is_empty(), "no resume, no control event");
        let got: Vec<String> = got.into_iter().map(|e| e.id).collect();
        assert_eq!(got, want, "subscriber {:?}", plan.filter);
        assert_nothing_more(&mut stream).await;
    }
    for (i, mut stream, from) in late {
        let plan = &plans[i];
        let want = expected(plan.filter, seq_of(&from));
        let (got, control) = stream.collect(want.len()).await.unwrap();
        assert_eq!(control[0].event, "herald.resume");
        assert_eq!(control[0].data, r#"{"recovered":true}"#);
        let got: Vec<String> = got.into_iter().map(|e| e.id).collect();
        let seqs: Vec<u64> = got.iter().map(|id| seq_of(id)).collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "strictly increasing ids"
        );
        assert_eq!(
            got, want,
            "late subscriber {i} {:?} from {from}",
            plan.filter
        );
        assert_nothing_more(&mut stream).await;
    }
}

async fn assert_nothing_more(stream: &mut SseStream) {
    let extra = stream.next_within(Duration::from_millis(100)).await;
    assert!(
        extra.is_err(),
        "an event beyond the expected ones: {extra:?}"
    );
}

/// Resumes replay a backlog in small pages while a publisher keeps going: the events published
/// during the replay arrive once, after the replayed ones, with no gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replay_live_seam_holds_while_events_are_published_during_the_replay() {
    let dir = tempfile::tempdir().unwrap();
    let herald = Herald::start(
        dir.path(),
        &[
            "--replay-page",
            "8",
            "--subscriber-queue",
            "4096",
            "--max-body",
            "1MiB",
        ],
    )
    .await
    .unwrap();
    let api = herald.api();
    let mut backlog = Vec::new();
    for chunk in 0..30 {
        let batch: Vec<_> = (0..100)
            .map(|k| json!({"topic": "s", "data": chunk * 100 + k}))
            .collect();
        let r = api.publish_batch(json!(batch)).await.unwrap();
        backlog.extend(
            r.body["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["id"].as_str().unwrap().to_owned()),
        );
    }
    let first = backlog[0].clone();
    let live_publisher = {
        let api = api.clone();
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for n in 0..300 {
                ids.push(api.publish("s", json!({"live": n})).await.unwrap().id());
            }
            ids
        })
    };
    // Several resumes from the start, each replaying ~3,000 events 8 at a time.
    let mut streams = Vec::new();
    for _ in 0..4 {
        streams.push(
            api.stream("/v1/stream?topic=s", Some(&first))
                .await
                .unwrap(),
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let live = live_publisher.await.unwrap();
    let mut want: Vec<String> = backlog[1..].to_vec();
    want.extend(live);
    want.sort_by_key(|id| seq_of(id));
    for mut s in streams {
        let (got, control) = s.collect(want.len()).await.unwrap();
        assert_eq!(control[0].data, r#"{"recovered":true}"#);
        let got: Vec<String> = got.into_iter().map(|e| e.id).collect();
        assert_eq!(got.len(), want.len());
        let first_diff = got.iter().zip(&want).position(|(g, w)| g != w);
        assert_eq!(
            first_diff, None,
            "the stream departs from the log at that position"
        );
        assert_nothing_more(&mut s).await;
    }
}
