//! Publishers: `C` keep-alive connections, each sending its share of the message numbers in order
//! (publisher `k` sends `n = first+k, first+k+C, …`), one request at a time, at a fixed total rate
//! or as fast as the server answers.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use tokio::task::JoinSet;

use crate::{
    http::{Conn, Url},
    sub::now_us,
};

/// How to publish to one server.
#[derive(Debug, Clone)]
pub struct Target {
    /// The publish URL; `{topic}` in its path is replaced.
    pub url: Url,
    /// The body of one message: `{n}`, `{t}` (µs since the Unix epoch at send) and `{topic}` are
    /// replaced.
    pub body: String,
    /// The batch URL, when batches are sent.
    pub batch_url: Option<Url>,
    /// One item of a batch (same placeholders); items are joined with `,` inside `[` `]`.
    pub batch_item: Option<String>,
    /// Request headers (Content-Type, a bearer token).
    pub headers: Vec<(String, String)>,
    /// The server honours `Idempotency-Key`: every request carries one, and a request that failed
    /// in any way is sent again (for up to 10 s) without making a duplicate.
    pub idempotent: bool,
}

/// What to publish.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// The first message number.
    pub first: u64,
    /// How many messages.
    pub count: u64,
    /// Messages per second over all publishers; 0 for as fast as possible.
    pub rate: f64,
    /// Publishers.
    pub concurrency: u64,
    /// Messages per request (1 without a batch URL).
    pub batch: u64,
}

/// Counters shared with the coordinator.
#[derive(Debug, Default)]
pub struct Counters {
    /// The highest message number whose request has started.
    pub started: AtomicU64,
    /// Messages answered 2xx.
    pub acked: AtomicU64,
    /// Requests that failed or were answered otherwise.
    pub errors: AtomicU64,
    /// Each answered request's time from just before it was sent to its 2xx answer, µs: the
    /// publish's own share (request and durable commit) of what the subscribers see.
    pub ack_us: std::sync::Mutex<Vec<u32>>,
}

/// What a publish run did.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    /// Messages answered 2xx.
    pub acked: u64,
    /// Failed requests.
    pub errors: u64,
    /// From the first request to the last answer.
    pub elapsed: Duration,
}

fn render(template: &str, topic: &str, n: u64) -> String {
    template
        .replace("{topic}", topic)
        .replace("{n}", &n.to_string())
        .replace("{t}", &now_us().to_string())
}

fn refused(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
    })
}

/// Publishes `plan` on `topic`; returns when every request is answered.
pub async fn run(
    target: &Target,
    topic: &str,
    plan: Plan,
    counters: Arc<Counters>,
) -> anyhow::Result<Outcome> {
    let concurrency = plan.concurrency.max(1);
    let batch = if target.batch_url.is_some() {
        plan.batch.max(1)
    } else {
        1
    };
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for k in 0..concurrency {
        let target = target.clone();
        let topic = topic.to_owned();
        let counters = Arc::clone(&counters);
        tasks.spawn(async move {
            let ns: Vec<u64> = (plan.first + k..plan.first + plan.count)
                .step_by(concurrency as usize)
                .collect();
            let (url, template) = match (&target.batch_url, &target.batch_item) {
                (Some(u), Some(item)) if batch > 1 => (u.clone(), item.clone()),
                _ => (target.url.clone(), target.body.clone()),
            };
            let path = url.target.replace("{topic}", &topic);
            let mut conn = Conn::new(url);
            for group in ns.chunks(batch as usize) {
                if plan.rate > 0.0 {
                    let due =
                        start + Duration::from_secs_f64((group[0] - plan.first) as f64 / plan.rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                let last = *group.last().expect("non-empty chunk");
                counters.started.fetch_max(last, Ordering::Relaxed);
                let body = if batch > 1 {
                    let items: Vec<String> = group
                        .iter()
                        .map(|&n| render(&template, &topic, n))
                        .collect();
                    format!("[{}]", items.join(","))
                } else {
                    render(&template, &topic, group[0])
                };
                // A refused connection (the server restarting) never carried the request: it is
                // sent again, for up to 10 s. Other failures only where the server is idempotent.
                let mut headers = target.headers.clone();
                if target.idempotent {
                    headers.push((
                        "Idempotency-Key".to_owned(),
                        format!("bench-{topic}-{}-{last}", group[0]),
                    ));
                }
                let mut attempts = 0;
                let sent_us = now_us();
                let result = loop {
                    let r = conn.request("POST", &path, &headers, body.as_bytes()).await;
                    let retry = match &r {
                        Err(e) => refused(e) || target.idempotent,
                        Ok((status, _)) => target.idempotent && *status >= 500,
                    };
                    match &r {
                        _ if retry && attempts < 200 => {
                            attempts += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        _ => break r,
                    }
                };
                match result {
                    Ok((status, _)) if (200..300).contains(&status) => {
                        counters
                            .acked
                            .fetch_add(group.len() as u64, Ordering::Relaxed);
                        let took = now_us().saturating_sub(sent_us);
                        counters
                            .ack_us
                            .lock()
                            .expect("not poisoned")
                            .push(u32::try_from(took).unwrap_or(u32::MAX));
                    }
                    Ok((status, body)) => {
                        if counters.errors.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!(
                                "publish {path}: {status} {}",
                                String::from_utf8_lossy(&body[..body.len().min(200)])
                            );
                        }
                    }
                    Err(e) => {
                        if counters.errors.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!("publish {path}: {e:#}");
                        }
                    }
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.context("publisher task")?;
    }
    Ok(Outcome {
        acked: counters.acked.load(Ordering::Relaxed),
        errors: counters.errors.load(Ordering::Relaxed),
        elapsed: start.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders() {
        let b = render(r#"{"topic":"{topic}","data":{"n":{n},"t":{t}}}"#, "a.b", 7);
        assert!(b.starts_with(r#"{"topic":"a.b","data":{"n":7,"t":"#), "{b}");
    }
}
