//! The demo page in real headless Chromium, driven over WebDriver: the feed shows events published
//! through the API and through its form, and after the server is killed and restarted the page
//! catches up, through Last-Event-ID, the events published while it was disconnected. The page
//! also reports its publish→render delays to the gateway.

use std::{process::Stdio, time::Duration};

use anyhow::{Context, bail};
use fantoccini::{Client, ClientBuilder, Locator};
use herald_tests::{Herald, PATIENCE, process::mint_token as mint, seq_of};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

/// A chromedriver process on a free port, killed on drop with the browsers it started.
struct ChromeDriver {
    child: Child,
    url: String,
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        // Chromium is chromedriver's child, in its process group: a session a test did not close
        // would outlive chromedriver alone (seen: one held the test runner's output pipe open
        // after the suite ended). The whole group goes.
        if let Some(pid) = self.child.id() {
            herald_tests::process::kill_group(pid);
        }
    }
}

impl ChromeDriver {
    async fn start() -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // A group of its own, which the drop kills with the browsers in it.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .context("starting chromedriver (tests/run installs Debian's chromium-driver)")?;
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        for _ in 0..100 {
            if http.get(format!("{url}/status")).send().await.is_ok() {
                return Ok(Self { child, url });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("chromedriver did not answer on {url}")
    }

    async fn browser(&self, profile: &std::path::Path) -> anyhow::Result<Client> {
        self.browser_with(profile, &[]).await
    }

    /// A browser with `extra` command-line switches.
    async fn browser_with(
        &self,
        profile: &std::path::Path,
        extra: &[&str],
    ) -> anyhow::Result<Client> {
        let mut args: Vec<String> = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-quic",
        ]
        .iter()
        .chain(extra)
        .map(|a| (*a).to_owned())
        .collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": "/usr/bin/chromium",
                "args": args,
            }),
        );
        Ok(ClientBuilder::new(HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await?)
    }
}

/// The items of a list on the page: (data-id, text) per `li` of `list` (a CSS selector).
async fn list(browser: &Client, list: &str) -> anyhow::Result<Vec<(String, String)>> {
    let items = browser
        .execute(
            "return Array.from(document.querySelectorAll(arguments[0] + ' li')).map(li => [li.dataset.id, li.textContent]);",
            vec![json!(list)],
        )
        .await?;
    Ok(serde_json::from_value(items)?)
}

/// The feed as the demo page shows it: (id, text) per item.
async fn feed(browser: &Client) -> anyhow::Result<Vec<(String, String)>> {
    list(browser, "#feed").await
}

async fn state(browser: &Client) -> anyhow::Result<String> {
    Ok(browser.find(Locator::Id("state")).await?.text().await?)
}

/// Polls until `check` holds for the feed and state, or fails with what was last seen.
async fn wait_until(
    browser: &Client,
    what: &str,
    check: impl Fn(&[(String, String)], &str) -> bool,
) -> anyhow::Result<Vec<(String, String)>> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (items, st) = (feed(browser).await?, state(browser).await?);
        if check(&items, &st) {
            return Ok(items);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("timed out waiting for {what}; state {st:?}, feed {items:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn ids(items: &[(String, String)]) -> Vec<String> {
    items.iter().map(|(id, _)| id.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_page_shows_live_events_and_catches_up_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let profile = tempfile::tempdir().unwrap();
    // A long retry: the page stays disconnected while events are published after the restart.
    let mut herald = Herald::start(dir.path(), &["--retry", "3s"]).await.unwrap();
    let api = herald.api();
    let mut published = Vec::new();
    for n in 0..2 {
        published.push(
            api.publish("scores", json!({"team": "Early", "score": n}))
                .await
                .unwrap()
                .id(),
        );
    }

    let driver = ChromeDriver::start().await.unwrap();
    let browser = driver.browser(profile.path()).await.unwrap();
    browser.goto(&format!("{}/", herald.base)).await.unwrap();
    let rendered = browser
        .find(Locator::Id("rendered"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        rendered, "2",
        "the first render lists the events already published"
    );
    // It resumed from the last rendered id: nothing was missed between render and connect.
    wait_until(&browser, "connected", |_, st| st == "caught up 0 events")
        .await
        .unwrap();

    for n in 0..3 {
        published.push(
            api.publish("scores", json!({"team": "Live", "score": n}))
                .await
                .unwrap()
                .id(),
        );
    }
    let items = wait_until(&browser, "3 live events", |items, _| items.len() == 5)
        .await
        .unwrap();
    assert_eq!(ids(&items), published);
    assert_eq!(items[2].1, r#"{"score":0,"team":"Live"}"#);

    // The page's own publish form.
    let form = browser.find(Locator::Id("publish")).await.unwrap();
    let team = form.find(Locator::Css("input[name=team]")).await.unwrap();
    team.clear().await.unwrap();
    team.send_keys("Form").await.unwrap();
    form.find(Locator::Css("button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let items = wait_until(&browser, "the form's event", |items, _| items.len() == 6)
        .await
        .unwrap();
    assert!(items[5].1.contains(r#""team":"Form""#), "{items:?}");
    published.push(items[5].0.clone());

    // Crash and restart on the same port; publish while the page waits to reconnect.
    herald.restart_same_port().await.unwrap();
    let api = herald.api();
    for n in 0..3 {
        published.push(
            api.publish("scores", json!({"team": "WhileDown", "score": n}))
                .await
                .unwrap()
                .id(),
        );
    }
    let items = wait_until(&browser, "catch-up after restart", |items, st| {
        items.len() == 9 && st == "caught up 3 events"
    })
    .await
    .unwrap();
    assert_eq!(ids(&items), published, "every event once, in order");
    let seqs: Vec<u64> = items.iter().map(|(id, _)| seq_of(id)).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));

    // And live again after the catch-up.
    let live = api
        .publish("scores", json!({"team": "After", "score": 9}))
        .await
        .unwrap()
        .id();
    let items = wait_until(&browser, "live after catch-up", |items, _| {
        items.len() == 10
    })
    .await
    .unwrap();
    assert_eq!(items[9].0, live);
    let _: Value = browser.execute("return 1;", vec![]).await.unwrap();
    browser.close().await.unwrap();
}

/// Browser-observed delivery latency: the demo page, sampling every event, reports each one's
/// publish→render delay; the gateway turns the reports into a histogram, and refuses nonsense.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_reports_publish_to_render_lag() {
    let dir = tempfile::tempdir().unwrap();
    let profile = tempfile::tempdir().unwrap();
    let herald = Herald::start(dir.path(), &[]).await.unwrap();
    let api = herald.api();
    let driver = ChromeDriver::start().await.unwrap();
    let browser = driver.browser(profile.path()).await.unwrap();
    browser
        .goto(&format!("{}/?lag_sample=1", herald.base))
        .await
        .unwrap();
    wait_until(&browser, "connected", |_, st| st == "caught up 0 events")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut last = String::new();
    for n in 0..5 {
        last = api
            .publish("scores", json!({"team": "Lag", "score": n}))
            .await
            .unwrap()
            .id();
    }
    let epoch = herald_tests::epoch_of(&last).to_owned();
    wait_until(&browser, "5 events", |items, _| items.len() == 5)
        .await
        .unwrap();
    // The helper posts every 5 s.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while api
        .metric(r#"herald_browser_lag_samples_total{result="accepted"}"#)
        .await
        .unwrap()
        < 5.0
    {
        assert!(tokio::time::Instant::now() < deadline, "no lag reports");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let count = api
        .metric("herald_browser_delivery_lag_seconds_count")
        .await
        .unwrap();
    let sum = api
        .metric("herald_browser_delivery_lag_seconds_sum")
        .await
        .unwrap();
    assert_eq!(count, 5.0);
    // Each delay is real (above zero) and below the whole run's duration.
    assert!(
        sum > 0.0 && sum / 5.0 < started.elapsed().as_secs_f64(),
        "mean {}",
        sum / 5.0
    );
    browser.close().await.unwrap();

    // Nonsense is counted and ignored; too much is refused.
    let post = |body: Value| {
        api.http
            .post(format!("{}/v1/telemetry/lag", api.base))
            .json(&body)
            .send()
    };
    let other_epoch = if epoch == "00000001" {
        "00000002"
    } else {
        "00000001"
    };
    let res = post(json!({"samples": [
        {"id": "not-an-id", "ago_ms": 1},
        {"id": last, "ago_ms": -5},
        {"id": format!("{epoch}-999999"), "ago_ms": 1},
        {"id": format!("{other_epoch}-1"), "ago_ms": 1},
    ]}))
    .await
    .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body, json!({"accepted": 0, "unknown": 2, "invalid": 2}));
    let many: Vec<Value> = (0..101).map(|_| json!({"id": last, "ago_ms": 1})).collect();
    assert_eq!(
        post(json!({ "samples": many })).await.unwrap().status(),
        413
    );
    assert_eq!(post(json!({"nope": 1})).await.unwrap().status(), 400);
    assert_eq!(
        api.metric("herald_browser_delivery_lag_seconds_count")
            .await
            .unwrap(),
        5.0
    );
}

/// `PUT /api/post-update` as the article's publisher does it; answers the event's id.
async fn post_update(api: &herald_tests::Api, team: &str, score: u32) -> String {
    let res = api
        .http
        .put(format!("{}/api/post-update", api.base))
        .json(&json!({ "team": team, "score": score }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let body: Value = res.json().await.unwrap();
    body["id"].as_str().unwrap().to_owned()
}

/// The log of received updates on the article's page: (lastEventId, text) per item.
async fn article_log(browser: &Client) -> anyhow::Result<Vec<(String, String)>> {
    list(browser, "#log").await
}

async fn wait_for_log(
    browser: &Client,
    what: &str,
    len: usize,
) -> anyhow::Result<Vec<(String, String)>> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let items = article_log(browser).await?;
        if items.len() >= len {
            return Ok(items);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("timed out waiting for {what}; log {items:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The original article's client, unchanged (`new EventSource('/api/updates')`, a form doing
/// `PUT /api/post-update`), on the article's topology kept by Herald: MongoDB and Redis Pub/Sub
/// (`--bus redis`), an ingest and a gateway behind nginx. Updates appear; after the gateway is
/// killed and restarted, the browser's own reconnection with Last-Event-ID brings the updates
/// published meanwhile, once each, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_articles_own_client_catches_up_after_a_gateway_restart() {
    the_article_page_catches_up_after_a_gateway_restart("").await;
}

/// The same page with its stream opened by herald.js (`/article?client=herald`), the article's
/// handler unchanged: the same events, once each, in order, across the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_article_page_on_herald_js_catches_up_after_a_gateway_restart() {
    the_article_page_catches_up_after_a_gateway_restart("?client=herald").await;
}

async fn the_article_page_catches_up_after_a_gateway_restart(query: &str) {
    use herald_tests::cluster::{Deployment, Mongo, Nginx, Redis};

    let redis = Redis::start().await.unwrap();
    let mongo = Mongo::start().await.unwrap();
    let deployment = Deployment::redis_bus(&redis, &mongo, &[]);
    let ingest = deployment.ingest(&[], &[]).await.unwrap();
    // The browser waits `retry` before reconnecting: the updates below are published meanwhile.
    let mut gateway = deployment.gateway(&["--retry", "3s"]).await.unwrap();
    let nginx = Nginx::start(&[gateway.addr()], &[ingest.addr()])
        .await
        .unwrap();
    let lb = nginx.api();

    let profile = tempfile::tempdir().unwrap();
    let driver = ChromeDriver::start().await.unwrap();
    let browser = driver.browser(profile.path()).await.unwrap();
    browser
        .goto(&format!("{}/article{query}", lb.base))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while browser
        // herald.js's stream is `source.herald` (state "open"), the article's own an EventSource.
        .execute(
            "return source.readyState ?? (source.herald?.state === 'open' ? 1 : 0);",
            vec![],
        )
        .await
        .unwrap()
        != json!(1)
    {
        assert!(tokio::time::Instant::now() < deadline, "never connected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut published = Vec::new();
    for score in 0..3 {
        published.push(post_update(&lb, "Home", score).await);
    }
    let items = wait_for_log(&browser, "3 updates", 3).await.unwrap();
    assert_eq!(
        items.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(),
        published
    );
    assert_eq!(items[2].1, "Home: 2");

    // The page's form.
    let form = browser.find(Locator::Id("update")).await.unwrap();
    for (name, value) in [("team", "Away"), ("score", "7")] {
        form.find(Locator::Css(&format!("input[name={name}]")))
            .await
            .unwrap()
            .send_keys(value)
            .await
            .unwrap();
    }
    form.find(Locator::Css("button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let items = wait_for_log(&browser, "the form's update", 4)
        .await
        .unwrap();
    assert_eq!(items[3].1, "Away: 7");
    published.push(items[3].0.clone());

    // The gateway dies and comes back; updates are published while the page waits to reconnect.
    gateway.restart_same_port().await.unwrap();
    for score in 3..6 {
        published.push(post_update(&lb, "Home", score).await);
    }
    wait_for_log(&browser, "the catch-up", published.len())
        .await
        .unwrap();
    // A repeat would come with the catch-up or right after it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let items = article_log(&browser).await.unwrap();
    assert_eq!(
        items.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(),
        published,
        "every update once, in order"
    );
    let scoreboard = browser
        .execute(
            "return Array.from(document.querySelectorAll('#scores tr')).map(r => r.textContent);",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(scoreboard, json!(["Home5", "Away7"]));
    let recovered = gateway
        .api()
        .metric("herald_resumes_total{recovered=\"true\",reason=\"\"}")
        .await
        .unwrap();
    assert_eq!(recovered, 1.0, "the browser resumed with its Last-Event-ID");
    browser.close().await.unwrap();
}

/// Reads a JavaScript expression's value on the page.
async fn js(browser: &Client, expr: &str) -> anyhow::Result<Value> {
    Ok(browser.execute(&format!("return {expr};"), vec![]).await?)
}

/// Waits until the page's list `expr` (event ids) is as long as `want`, then checks it is
/// exactly `want`: every event once, in order.
/// `readyState` of each of the page's `window.sources` (0 connecting, 1 open, 2 closed).
async fn ready_states(browser: &Client) -> Vec<u64> {
    serde_json::from_value(
        js(browser, "window.sources.map(s => s.readyState)")
            .await
            .unwrap(),
    )
    .unwrap()
}

async fn page_ids_become(browser: &Client, expr: &str, want: &[String]) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let got: Vec<String> = serde_json::from_value(js(browser, expr).await.unwrap()).unwrap();
        if got.len() >= want.len() {
            assert_eq!(got, want, "{expr}: every event exactly once, in order");
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{expr}: {} of {} events",
            got.len(),
            want.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// With `--max-connections 2`, a page opens three native EventSources: the third is refused in
/// the way EventSource survives (`herald.refused` on a 200 stream, never a status it gives up
/// on), keeps retrying on its own, and connects once a slot frees — no source ever ends CLOSED,
/// and the one that stayed open misses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_eventsource_connects_on_its_own_once_a_slot_frees() {
    let dir = tempfile::tempdir().unwrap();
    let profile = tempfile::tempdir().unwrap();
    let herald = Herald::start(dir.path(), &["--max-connections", "2"])
        .await
        .unwrap();
    let api = herald.api();
    let driver = ChromeDriver::start().await.unwrap();
    let browser = driver.browser(profile.path()).await.unwrap();
    // A same-origin page with no stream of its own.
    browser
        .goto(&format!("{}/v1/topics/t/events", herald.base))
        .await
        .unwrap();
    browser
        .execute(
            r#"
            window.got = [[], [], []];
            window.refusals = [0, 0, 0];
            window.closedOnError = [];
            window.sources = [0, 1, 2].map(i => {
                const es = new EventSource('/v1/stream?topic=t');
                es.onmessage = e => window.got[i].push(e.lastEventId);
                es.addEventListener('herald.refused', () => window.refusals[i]++);
                es.onerror = () => { if (es.readyState === EventSource.CLOSED) window.closedOnError.push(i); };
                return es;
            });
            "#,
            vec![],
        )
        .await
        .unwrap();
    // One of the three is refused; which one depends on the order the browser opened them.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let refused = loop {
        let refusals: Vec<u64> =
            serde_json::from_value(js(&browser, "window.refusals").await.unwrap()).unwrap();
        if let Some(i) = refusals.iter().position(|&n| n > 0) {
            break i;
        }
        let gave_up = js(&browser, "window.closedOnError").await.unwrap();
        assert_eq!(
            gave_up,
            json!([]),
            "the browser gave up on these sources for good"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "no refusal: {refusals:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (closed, kept) = match refused {
        0 => (1, 2),
        1 => (0, 2),
        _ => (0, 1),
    };
    // Both open sources receive an event; the refused one does not.
    let first = api.publish("t", json!(0)).await.unwrap().id();
    let mut published = vec![first];
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Free a slot: the refused source reconnects on its own after its retry (5 to 7.5 s).
    browser
        .execute(&format!("window.sources[{closed}].close();"), vec![])
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        published.push(api.publish("t", json!(published.len())).await.unwrap().id());
        let got: Vec<String> = serde_json::from_value(
            js(&browser, &format!("window.got[{refused}]"))
                .await
                .unwrap(),
        )
        .unwrap();
        if !got.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the refused EventSource never connected"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let states: Vec<u64> = ready_states(&browser).await;
    assert_eq!(
        states[refused], 1,
        "the refused source is OPEN now: {states:?}"
    );
    assert_eq!(states[kept], 1, "{states:?}");
    let closed_on_error = js(&browser, "window.closedOnError").await.unwrap();
    assert_eq!(
        closed_on_error,
        json!([]),
        "no source was given up by the browser"
    );
    // The source that stayed open has every event, in order.
    page_ids_become(&browser, &format!("window.got[{kept}]"), &published).await;
}

/// A Herald that takes HMAC tokens with no leeway, and tokens: `writer` may publish on
/// `private.>`, `short` may read `private.t` for 3 s, `fresh` for an hour.
struct PrivateTopic {
    herald: Herald,
    writer: String,
    short: String,
    fresh: String,
}

impl PrivateTopic {
    async fn start(dir: &std::path::Path) -> Self {
        let key = dir.join("hmac.key");
        std::fs::write(&key, "a-browser-test-hmac-key-of-enough-length").unwrap();
        let herald = Herald::start(
            &dir.join("data"),
            &[
                "--auth-hmac-key-file",
                key.to_str().unwrap(),
                "--auth-leeway",
                "0s",
            ],
        )
        .await
        .unwrap();
        Self {
            herald,
            writer: mint(&key, &["--publish", "private.>"]),
            short: mint(&key, &["--subscribe", "private.t", "--ttl", "3s"]),
            fresh: mint(&key, &["--subscribe", "private.t", "--ttl", "1h"]),
        }
    }

    /// Publishes `n` on `private.t` as `writer`; its id.
    async fn publish(&self, n: usize) -> String {
        let api = self.herald.api();
        let res = api
            .http
            .post(format!("{}/v1/topics/private.t/events", api.base))
            .bearer_auth(&self.writer)
            .json(&json!({ "data": n }))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
        res.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

/// A page reads a private topic with a native EventSource and an HttpOnly cookie: the token
/// expires mid-stream, the page hears `herald.auth`, posts a fresh token for a new cookie, and the
/// browser's own reconnect resumes by Last-Event-ID — every event exactly once, in order, and the
/// EventSource never given up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_expiring_mid_stream_is_refreshed_by_the_page_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let profile = tempfile::tempdir().unwrap();
    let private = PrivateTopic::start(dir.path()).await;
    let (herald, short, fresh) = (&private.herald, &private.short, &private.fresh);
    let publish = |n: usize| private.publish(n);

    let driver = ChromeDriver::start().await.unwrap();
    let browser = driver.browser(profile.path()).await.unwrap();
    // A same-origin page that needs no token.
    browser
        .goto(&format!("{}/herald-lag.js", herald.base))
        .await
        .unwrap();
    browser
        .execute(
            r#"
            const [short, fresh] = arguments;
            window.got = []; window.expired = 0; window.gaveUp = false; window.opened = 0;
            const login = token => fetch('/v1/auth/cookie', {
                method: 'POST', headers: { Authorization: 'Bearer ' + token } });
            login(short).then(() => {
                const es = new EventSource('/v1/stream?topic=private.t');
                es.onopen = () => window.opened++;
                es.onmessage = e => window.got.push(e.lastEventId);
                es.addEventListener('herald.auth', () => { window.expired++; login(fresh); });
                es.onerror = () => { if (es.readyState === EventSource.CLOSED) window.gaveUp = true; };
            });
            "#,
            vec![json!(short), json!(fresh)],
        )
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while js(&browser, "window.opened").await.unwrap() == json!(0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stream never opened"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        js(&browser, "document.cookie").await.unwrap(),
        json!(""),
        "the token cookie is HttpOnly: scripts cannot read it"
    );
    // Publish across the expiry (3 s), the refresh and the reconnect (after `retry:`, 2 s).
    let mut published = Vec::new();
    let started = tokio::time::Instant::now();
    while started.elapsed() < Duration::from_secs(7) {
        published.push(publish(published.len()).await);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    page_ids_become(&browser, "window.got", &published).await;
    assert_eq!(js(&browser, "window.expired").await.unwrap(), json!(1));
    assert_eq!(js(&browser, "window.gaveUp").await.unwrap(), json!(false));
    assert_eq!(
        js(&browser, "window.opened").await.unwrap(),
        json!(2),
        "one reconnect"
    );
}

/// A page on another origin reads a stream with `withCredentials` and the HttpOnly cookie it got
/// from `POST /v1/auth/cookie`: from an origin in `--cors-origins` it works; a page of another
/// origin in the same browser (the cookie is there) is refused by the browser itself, since
/// Herald sends it no CORS headers, and nothing reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_on_another_origin_streams_with_credentials_only_when_allowlisted() {
    let dir = tempfile::tempdir().unwrap();
    let profile = tempfile::tempdir().unwrap();
    let key = dir.path().join("hmac.key");
    std::fs::write(&key, "a-cross-origin-test-hmac-key-long-enough").unwrap();
    // Two plain servers whose pages stand for applications (origins that differ by port).
    let app = Herald::start(&dir.path().join("app"), &[]).await.unwrap();
    let other = Herald::start(&dir.path().join("other"), &[]).await.unwrap();
    let origin = |h: &Herald| h.base.replace("127.0.0.1", "localhost");
    let herald = Herald::start(
        &dir.path().join("herald"),
        &[
            "--auth-hmac-key-file",
            key.to_str().unwrap(),
            "--cors-origins",
            &origin(&app),
        ],
    )
    .await
    .unwrap();
    let reader = mint(&key, &["--subscribe", "private.t"]);
    let writer = mint(&key, &["--publish", "private.t"]);
    let api = herald.api();
    let herald_url = origin(&herald);

    let driver = ChromeDriver::start().await.unwrap();
    let browser = driver.browser(profile.path()).await.unwrap();
    // The page posts its token for a cookie, then opens the stream with credentials.
    let open = |page: String| {
        let (browser, herald_url, reader) = (&browser, herald_url.clone(), reader.clone());
        async move {
            browser
                .goto(&format!("{page}/herald-lag.js"))
                .await
                .unwrap();
            browser
                .execute(
                    r#"
                    const [herald, token] = arguments;
                    window.got = []; window.cookie = 'pending'; window.errors = 0; window.opened = 0;
                    fetch(herald + '/v1/auth/cookie', {
                        method: 'POST', credentials: 'include',
                        headers: { Authorization: 'Bearer ' + token },
                    }).then(r => { window.cookie = r.status; }, () => { window.cookie = 'blocked'; })
                      .finally(() => {
                        const es = new EventSource(herald + '/v1/stream?topic=private.t', { withCredentials: true });
                        es.onopen = () => window.opened++;
                        es.onmessage = e => window.got.push(e.lastEventId);
                        es.onerror = () => window.errors++;
                      });
                    "#,
                    vec![json!(herald_url), json!(reader)],
                )
                .await
                .unwrap();
        }
    };

    // The allowlisted origin: the cookie is set and the stream opens.
    let first = browser.window().await.unwrap();
    open(origin(&app)).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while js(&browser, "window.opened").await.unwrap() == json!(0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the allowlisted page never connected: cookie {}, errors {}",
            js(&browser, "window.cookie").await.unwrap(),
            js(&browser, "window.errors").await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(js(&browser, "window.cookie").await.unwrap(), json!(204));

    // Another origin, in a second window of the same browser (the cookie for the host is
    // there): no cookie exchange, and the browser treats each attempt of the stream as a network
    // error for its missing CORS headers — it never opens (Chromium keeps retrying, as the
    // specification allows for network errors).
    let second = browser.new_window(true).await.unwrap().handle;
    browser.switch_to_window(second.clone()).await.unwrap();
    open(origin(&other)).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while js(&browser, "window.errors").await.unwrap() == json!(0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the other origin's stream was not refused: cookie {}, opened {}",
            js(&browser, "window.cookie").await.unwrap(),
            js(&browser, "window.opened").await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        js(&browser, "window.cookie").await.unwrap(),
        json!("blocked")
    );

    let mut published = Vec::new();
    for n in 0..3 {
        let res = api
            .http
            .post(format!("{}/v1/topics/private.t/events", api.base))
            .bearer_auth(&writer)
            .json(&json!({ "data": n }))
            .send()
            .await
            .unwrap();
        let body: Value = res.json().await.unwrap();
        published.push(body["id"].as_str().unwrap().to_owned());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(js(&browser, "window.got").await.unwrap(), json!([]));
    assert_eq!(js(&browser, "window.opened").await.unwrap(), json!(0));
    browser.switch_to_window(first).await.unwrap();
    page_ids_become(&browser, "window.got", &published).await;
}

/// Publishes on `topic` through `api` with an Idempotency-Key, retrying through 502/503 and
/// connection failures until it is acknowledged; answers the id.
async fn publish_until_acked(api: &herald_tests::Api, topic: &str, key: &str, n: usize) -> String {
    let body = json!({ "data": n }).to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(p) = api.publish_raw(topic, body.clone(), Some(key)).await
            && p.status == 201
        {
            return p.id();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{key} never acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The distributed mode behind nginx, with native EventSources in Chromium: one opened while
/// NATS is down connects on its own once NATS is back, and with both gateways restarting in turn
/// the page's streams come back by themselves — no EventSource ever ends CLOSED, and each has
/// every event published after it first connected, once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_eventsources_ride_out_a_nats_outage_and_gateway_restarts_behind_nginx() {
    use herald_tests::cluster::{Deployment, Mongo, Nats, Nginx};

    let mut nats = Nats::start().await.unwrap();
    let mongo = Mongo::start().await.unwrap();
    let deployment = Deployment::new(&nats, &mongo, &[]);
    let ingest = deployment.ingest(&[], &[]).await.unwrap();
    let mut gateways = vec![
        deployment.gateway(&["--retry", "1s"]).await.unwrap(),
        deployment.gateway(&["--retry", "1s"]).await.unwrap(),
    ];
    let addrs: Vec<String> = gateways.iter().map(|g| g.addr().to_owned()).collect();
    let addrs: Vec<&str> = addrs.iter().map(String::as_str).collect();
    let nginx = Nginx::start(&addrs, &[ingest.addr()]).await.unwrap();
    let lb = nginx.api();

    let profile = tempfile::tempdir().unwrap();
    let driver = ChromeDriver::start().await.unwrap();
    let browser = driver.browser(profile.path()).await.unwrap();
    browser
        .goto(&format!("{}/herald-lag.js", lb.base))
        .await
        .unwrap();
    browser
        .execute(
            r#"
            window.got = [[], []]; window.opened = [0, 0]; window.refused = [0, 0]; window.gaveUp = [];
            window.sources = [];
            window.openSource = i => {
                const es = new EventSource('/v1/stream?topic=t');
                es.onopen = () => window.opened[i]++;
                es.onmessage = e => window.got[i].push(e.lastEventId);
                es.addEventListener('herald.refused', () => window.refused[i]++);
                es.onerror = () => { if (es.readyState === EventSource.CLOSED) window.gaveUp.push(i); };
                window.sources[i] = es;
            };
            window.openSource(0);
            "#,
            vec![],
        )
        .await
        .unwrap();
    let wait = |what: &'static str, expr: &'static str| {
        let browser = &browser;
        async move {
            let deadline = tokio::time::Instant::now() + PATIENCE;
            while js(browser, expr).await.unwrap() != json!(true) {
                assert_eq!(
                    js(browser, "window.gaveUp").await.unwrap(),
                    json!([]),
                    "an EventSource was given up while waiting for {what}"
                );
                assert!(tokio::time::Instant::now() < deadline, "waiting for {what}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    wait("the first stream", "window.opened[0] > 0").await;
    let mut published = Vec::new();
    for n in 0..3 {
        published.push(publish_until_acked(&lb, "t", &format!("k{n}"), n).await);
    }
    page_ids_become(&browser, "window.got[0]", &published).await;

    // NATS goes down; a second EventSource opens meanwhile.
    nats.stop().await;
    browser
        .execute("window.openSource(1);", vec![])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    nats.resume().await.unwrap();
    // Once NATS is back, what is published reaches both, the second without any help. The
    // second has no Last-Event-ID (it never got an event), so it starts live whenever its own
    // jittered retry brings it back: events keep coming until it has one.
    let first_after = published.len();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let n = published.len();
        published.push(publish_until_acked(&lb, "t", &format!("k{n}"), n).await);
        if js(&browser, "window.got[1].length > 0").await.unwrap() == json!(true) {
            break;
        }
        assert_eq!(js(&browser, "window.gaveUp").await.unwrap(), json!([]));
        assert!(
            tokio::time::Instant::now() < deadline,
            "waiting for the second stream"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    page_ids_become(&browser, "window.got[0]", &published).await;

    // Both gateways restart, one after the other, while events keep coming.
    for gateway in &mut gateways {
        gateway.restart_same_port().await.unwrap();
        let n = published.len();
        published.push(publish_until_acked(&lb, "t", &format!("k{n}"), n).await);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let n = published.len();
    published.push(publish_until_acked(&lb, "t", &format!("k{n}"), n).await);
    page_ids_become(&browser, "window.got[0]", &published).await;
    // The second source first connected (live from then: it had no Last-Event-ID) once NATS was
    // back: from its first event on it has every event, in order, once.
    let last = published.last().unwrap().clone();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let second: Vec<String> = loop {
        let got: Vec<String> =
            serde_json::from_value(js(&browser, "window.got[1]").await.unwrap()).unwrap();
        if got.last() == Some(&last) {
            break got;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "second source: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let from = published.len() - second.len();
    assert!(from >= first_after, "{second:?}");
    assert_eq!(second, published[from..], "the second source's events");
    assert_eq!(js(&browser, "window.gaveUp").await.unwrap(), json!([]));
    eprintln!(
        "nats outage and gateway restarts: opens {}, in-band refusals {}",
        js(&browser, "window.opened").await.unwrap(),
        js(&browser, "window.refused").await.unwrap()
    );
}

/// Established TCP connections whose local port is `port` (the server's side of each), from
/// `/proc/net/tcp` and `tcp6`.
fn established_to(port: u16) -> usize {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .flat_map(|text| {
            text.lines()
                .skip(1)
                .filter(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    let local_port = fields
                        .get(1)
                        .and_then(|a| a.rsplit(':').next())
                        .and_then(|p| u16::from_str_radix(p, 16).ok());
                    local_port == Some(port) && fields.get(3) == Some(&"01")
                })
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .count()
}

/// Over TLS with HTTP/2, one page opens twelve native EventSources to one origin: all twelve
/// open and receive every event, over a single TCP connection. The same page over HTTP/1.1
/// (`--http2 false`) gets six connections, and the other six sources wait: the browser's limit
/// per origin is real here, and HTTP/2 is what lifts it. Then the same through the shipped nginx
/// config terminating TLS with HTTP/2 in front of a plain-HTTP Herald: one connection to nginx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twelve_streams_share_one_http2_connection_where_http1_stalls_at_six() {
    let certs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("certs");
    let (cert, key) = (certs.join("server.pem"), certs.join("server.key"));
    let driver = ChromeDriver::start().await.unwrap();
    // (HTTP/2, through nginx)
    for (http2, nginx) in [(true, false), (false, false), (true, true)] {
        let dir = tempfile::tempdir().unwrap();
        let profile = tempfile::tempdir().unwrap();
        let tls_flags = [
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--http2",
            if http2 { "true" } else { "false" },
        ];
        let herald = Herald::start(dir.path(), if nginx { &[] } else { &tls_flags })
            .await
            .unwrap();
        let front = match nginx {
            true => {
                let addr = herald.base.trim_start_matches("http://").to_owned();
                Some(
                    herald_tests::cluster::Nginx::start_tls(&[&addr], &[&addr], (&cert, &key))
                        .await
                        .unwrap(),
                )
            }
            false => None,
        };
        let base = front.as_ref().map_or(&herald.base, |n| &n.base);
        let port: u16 = base
            .rsplit(':')
            .next()
            .filter(|_| base.starts_with("https://"))
            .unwrap_or_else(|| panic!("not an https listener: {base}"))
            .parse()
            .unwrap();
        // The test CA is not the browser's: its errors are ignored, which changes nothing of
        // how the browser pools connections or speaks HTTP/2.
        let browser = driver
            .browser_with(profile.path(), &["--ignore-certificate-errors"])
            .await
            .unwrap();
        browser
            .goto(&format!("https://localhost:{port}/v1/topics/t/events"))
            .await
            .unwrap();
        let protocol = js(
            &browser,
            "performance.getEntriesByType('navigation')[0].nextHopProtocol",
        )
        .await
        .unwrap();
        assert_eq!(protocol, json!(if http2 { "h2" } else { "http/1.1" }));
        browser
            .execute(
                r#"
                window.got = Array.from({length: 12}, () => []);
                window.sources = window.got.map(got => {
                    const es = new EventSource('/v1/stream?topic=t');
                    es.onmessage = e => got.push(e.lastEventId);
                    return es;
                });
                "#,
                vec![],
            )
            .await
            .unwrap();
        let want_open = if http2 { 12 } else { 6 };
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let states: Vec<u64> = ready_states(&browser).await;
            let open = states.iter().filter(|s| **s == 1).count();
            if open >= want_open {
                assert_eq!(open, want_open, "{states:?}");
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "http2 {http2}, nginx {nginx}: {open} of 12 sources open: {states:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if http2 {
            // Three events, published from the page over the same connection.
            let ids: Vec<String> = serde_json::from_value(
                browser
                    .execute_async(
                        r#"
                        const done = arguments[arguments.length - 1];
                        (async () => {
                            const ids = [];
                            for (let i = 0; i < 3; i++) {
                                const r = await fetch('/v1/topics/t/events', {
                                    method: 'POST',
                                    headers: {'content-type': 'application/json'},
                                    body: JSON.stringify({data: i}),
                                });
                                ids.push((await r.json()).id);
                            }
                            return ids;
                        })().then(done, e => done(String(e)));
                        "#,
                        vec![],
                    )
                    .await
                    .unwrap(),
            )
            .unwrap();
            for i in 0..12 {
                page_ids_become(&browser, &format!("window.got[{i}]"), &ids).await;
            }
        } else {
            // Six more seconds: the other six are still waiting for a connection.
            tokio::time::sleep(Duration::from_secs(6)).await;
            let states: Vec<u64> = ready_states(&browser).await;
            assert_eq!(
                states.iter().filter(|s| **s == 0).count(),
                6,
                "six sources still connecting: {states:?}"
            );
        }
        let connections = established_to(port);
        assert_eq!(
            connections,
            if http2 { 1 } else { 6 },
            "http2 {http2}, nginx {nginx}: TCP connections to the origin"
        );
        browser.close().await.unwrap();
    }
}

/// What a tab of the herald.js tests runs on load: it streams topic `t` through herald.js and
/// keeps the ids it was handed in sessionStorage, so that a reload continues the same list.
const HERALD_JS_TAB: &str = r#"
    const done = arguments[arguments.length - 1];
    window.got = JSON.parse(sessionStorage.getItem('got') || '[]');
    window.gaps = 0;
    import('/herald.js').then(({ connect }) => {
        window.stream = connect({
            topics: ['t'],
            events: { message: e => {
                window.got.push(e.id);
                sessionStorage.setItem('got', JSON.stringify(window.got));
            } },
            onGap: () => window.gaps++,
            onState: s => {
                if (s === 'open' && window.stream && window.stream.role === 'leader') window.ledAt = Date.now();
            },
        });
        done(true);
    }, e => done(String(e)));
"#;

/// Each tab's herald.js stream: (role, state, in step with the leader).
async fn herald_js_roles(
    browser: &Client,
    tabs: &[fantoccini::wd::WindowHandle],
) -> Vec<(String, String, bool)> {
    let mut roles = Vec::new();
    for tab in tabs {
        browser.switch_to_window(tab.clone()).await.unwrap();
        let role = js(
            browser,
            "[window.stream.role, window.stream.state, window.stream.buffer === null]",
        )
        .await
        .unwrap();
        roles.push(serde_json::from_value(role).unwrap());
    }
    roles
}

/// Waits until Herald holds `n` streams.
async fn streams_open_become(api: &herald_tests::Api, n: f64) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let open = api.metric("herald_connections_open").await.unwrap();
        if open == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{open} streams open at Herald, not {n}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Five tabs of one origin stream through herald.js: Herald holds one stream in all, and every
/// tab gets every event exactly once, in order, while events are published throughout. The
/// leader's tab is closed mid-stream: another tab holds the stream again within a second, and
/// no tab misses or doubles an event. A follower tab is reloaded mid-stream: it resumes from the
/// last id it had and its list (kept across the reload) has every event once, in order. Events
/// relayed twice between tabs are handed to each page once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_tabs_share_one_stream_through_herald_js_across_a_leader_leaving_and_a_reload() {
    let dir = tempfile::tempdir().unwrap();
    let profile = tempfile::tempdir().unwrap();
    let herald = Herald::start(dir.path(), &[]).await.unwrap();
    let api = herald.api();
    let driver = ChromeDriver::start().await.unwrap();
    let browser = driver.browser(profile.path()).await.unwrap();
    let mut tabs = vec![browser.window().await.unwrap()];
    for _ in 1..5 {
        tabs.push(browser.new_window(true).await.unwrap().handle);
    }
    for tab in &tabs {
        browser.switch_to_window(tab.clone()).await.unwrap();
        // A same-origin page with no stream of its own.
        browser
            .goto(&format!("{}/v1/topics/t/events", herald.base))
            .await
            .unwrap();
        let started = browser.execute_async(HERALD_JS_TAB, vec![]).await.unwrap();
        assert_eq!(started, json!(true));
    }
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let roles = herald_js_roles(&browser, &tabs).await;
        let leaders = roles.iter().filter(|r| r.0 == "leader").count();
        let in_step = roles.iter().filter(|r| r.0 == "follower" && r.2).count();
        if leaders == 1 && in_step == 4 && roles.iter().all(|r| r.1 == "open") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "tabs not settled: {roles:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    streams_open_become(&api, 1.0).await;

    // Events every 40 ms from here to the end.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = tokio::spawn({
        let (api, stop) = (api.clone(), stop.clone());
        async move {
            let mut published = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                published.push(api.publish("t", json!(published.len())).await.unwrap().id());
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            published
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Events relayed twice, as a new leader's replay can overlap what the old one relayed: a
    // follower's tab posts the last three it got to every tab again. None is handed over twice.
    let roles = herald_js_roles(&browser, &tabs).await;
    let follower = roles.iter().position(|r| r.0 == "follower").unwrap();
    browser
        .switch_to_window(tabs[follower].clone())
        .await
        .unwrap();
    let replayed = js(
        &browser,
        "(() => { const ch = new BroadcastChannel(window.stream.key); \
           const ids = window.got.slice(-3); \
           for (const id of ids) ch.postMessage({ t: 'e', id, type: 'message', raw: '0' }); \
           ch.close(); return ids.length; })()",
    )
    .await
    .unwrap();
    assert_eq!(replayed, json!(3));

    // The leader's tab goes.
    let roles = herald_js_roles(&browser, &tabs).await;
    let leader = roles.iter().position(|r| r.0 == "leader").unwrap();
    let leader_tab = tabs.remove(leader);
    browser.switch_to_window(leader_tab).await.unwrap();
    let closed_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as f64;
    browser.close_window().await.unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let handover_ms = 'found: loop {
        for tab in &tabs {
            browser.switch_to_window(tab.clone()).await.unwrap();
            if let Some(led_at) = js(&browser, "window.ledAt || null").await.unwrap().as_f64() {
                break 'found led_at - closed_at;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no tab took the stream over"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!(
        "herald.js: the next leader's stream was open {handover_ms:.0} ms after the leader's tab closed"
    );
    assert!(handover_ms < 1000.0, "the hand-over took {handover_ms} ms");
    tokio::time::sleep(Duration::from_secs(1)).await;

    // A follower's tab is reloaded, and its page starts again.
    let roles = herald_js_roles(&browser, &tabs).await;
    let follower = roles.iter().position(|r| r.0 == "follower").unwrap();
    browser
        .switch_to_window(tabs[follower].clone())
        .await
        .unwrap();
    let before: Vec<String> =
        serde_json::from_value(js(&browser, "window.got").await.unwrap()).unwrap();
    browser.refresh().await.unwrap();
    // Events published while the page reloads are what it must catch up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = browser.execute_async(HERALD_JS_TAB, vec![]).await.unwrap();
    assert_eq!(started, json!(true));
    tokio::time::sleep(Duration::from_secs(1)).await;

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let published = publisher.await.unwrap();
    assert!(
        before.len() >= 20 && published.len() > before.len() + 10,
        "the reload fell mid-stream: {} before it, {} in all",
        before.len(),
        published.len()
    );
    for tab in &tabs {
        browser.switch_to_window(tab.clone()).await.unwrap();
        page_ids_become(&browser, "window.got", &published).await;
        assert_eq!(js(&browser, "window.gaps").await.unwrap(), json!(0));
    }
    // The reloaded tab's catch-up stream has closed: one stream again.
    streams_open_become(&api, 1.0).await;
    let roles = herald_js_roles(&browser, &tabs).await;
    assert_eq!(
        roles.iter().filter(|r| r.0 == "leader").count(),
        1,
        "{roles:?}"
    );
    browser.close().await.unwrap();
}

/// herald.js hands the page Herald's control events: a resume it cannot honour (an id ahead of
/// the head) reaches `onGap` and the stream goes on live from the head, every later event
/// delivered; a token expiring mid-stream reaches `onAuthExpired`, herald.js calls the page's
/// `refreshToken()`, posts the token it returns for a new cookie and reopens from the last id:
/// every event once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_js_reports_a_gap_and_refreshes_an_expired_token_losing_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let profile = tempfile::tempdir().unwrap();
    let private = PrivateTopic::start(dir.path()).await;
    let (herald, short, fresh) = (&private.herald, &private.short, &private.fresh);
    let publish = |n: usize| private.publish(n);
    // An id of this epoch far ahead of the head.
    let first = publish(0).await;
    let ahead = format!("{}-999999", first.rsplit_once('-').unwrap().0);

    let driver = ChromeDriver::start().await.unwrap();
    let browser = driver.browser(profile.path()).await.unwrap();
    browser
        .goto(&format!("{}/herald-lag.js", herald.base))
        .await
        .unwrap();
    let started = browser
        .execute_async(
            r#"
            const [short, fresh, ahead, done] = arguments;
            window.got = []; window.gaps = []; window.expired = 0; window.refreshed = 0;
            fetch('/v1/auth/cookie', { method: 'POST', headers: { Authorization: 'Bearer ' + short } })
                .then(() => import('/herald.js'))
                .then(({ connect }) => {
                    window.stream = connect({
                        topics: ['private.t'],
                        lastEventId: ahead,
                        events: { message: e => window.got.push(e.id) },
                        onGap: v => window.gaps.push(v.reason),
                        onAuthExpired: () => window.expired++,
                        refreshToken: async () => { window.refreshed++; return fresh; },
                    });
                    done(true);
                }, e => done(String(e)));
            "#,
            vec![json!(short), json!(fresh), json!(ahead)],
        )
        .await
        .unwrap();
    assert_eq!(started, json!(true));
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while js(&browser, "window.gaps.length").await.unwrap() == json!(0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no verdict reached the page"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        js(&browser, "window.gaps").await.unwrap(),
        json!(["unknown"])
    );
    // Publish across the expiry (3 s), the refresh and the reopening.
    let mut published = Vec::new();
    let started = tokio::time::Instant::now();
    while started.elapsed() < Duration::from_secs(7) {
        published.push(publish(published.len() + 1).await);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    page_ids_become(&browser, "window.got", &published).await;
    assert_eq!(js(&browser, "window.expired").await.unwrap(), json!(1));
    assert_eq!(js(&browser, "window.refreshed").await.unwrap(), json!(1));
    assert_eq!(
        js(&browser, "window.stream.state").await.unwrap(),
        json!("open")
    );
    browser.close().await.unwrap();
}
