//! The demo page at `/`: the article's scoreboard, served by Herald. And at `/article`, the
//! article's own client as it was: `new EventSource('/api/updates')` and a form doing
//! `PUT /api/post-update`, with nothing Herald-specific; the browser's own reconnection with
//! `Last-Event-ID` is all it needs. `/article?client=herald` is the same page with its stream
//! opened by `herald.js`.
//!
//! The first render already lists the newest events (read on the server), and the page's stream
//! (`herald.js`, shared by the page's tabs) resumes from the last rendered id, so nothing
//! published between render and connect is lost. The page shows its connection state (connected /
//! reconnecting / caught up N events); herald.js reopens the stream if the browser gives up on it.
//!
//! The page renders a topic's history, so it is held to the same grants as the history endpoint.
//! Both pages can be switched off (`--demo-pages false`), and are served with a
//! Content-Security-Policy (scripts and connections to this origin only, no framing), `nosniff`
//! and no referrer.

use std::{fmt::Write as _, sync::Arc};

use axum::{
    extract::{Query, State},
    http::{HeaderMap, HeaderName, HeaderValue, header},
    response::{Html, IntoResponse, Response},
};
use herald_core::{EventId, Topic};
use herald_runtime::{ApiError, ErrorCode};
use serde::Deserialize;

use crate::GatewayState;

/// Events rendered on the server.
const RENDERED: usize = 20;

const TEMPLATE: &str = include_str!("demo.html");

/// The headers of the HTML pages: their scripts and connections stay on this origin, no other
/// site may frame them, the browser takes the content type as sent, and no referrer leaks.
const PAGE_HEADERS: [(HeaderName, &str); 3] = [
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; \
         connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; \
         form-action 'self'",
    ),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::REFERRER_POLICY, "no-referrer"),
];

/// `html` with [`PAGE_HEADERS`].
fn page_response(html: Html<impl IntoResponse>) -> Response {
    let mut response = html.into_response();
    for (name, value) in PAGE_HEADERS {
        response
            .headers_mut()
            .insert(name, HeaderValue::from_static(value));
    }
    response
}

/// The article's one line that opens its stream.
const ARTICLE_STREAM: &str = r#"const source = new EventSource("/api/updates");"#;

/// The same stream through `herald.js`: the article's handler, unchanged, gets each event as
/// EventSource would hand it over.
const ARTICLE_STREAM_HERALD: &str = r#"const source = {};
  import("/herald.js").then(({ connect }) => {
    source.herald = connect({
      topics: [{{topic}}],
      events: { message: (e) => source.onmessage({ data: e.raw, lastEventId: e.id }) },
    });
  });"#;

/// Which client the article's page streams with.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum ArticleClient {
    /// The article's own: `new EventSource('/api/updates')`.
    #[default]
    Eventsource,
    /// `herald.js`, which shares one stream between the page's tabs.
    Herald,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ArticleParams {
    #[serde(default)]
    client: ArticleClient,
}

/// The original article's client (`--demo-pages`): unchanged, or with its stream opened by
/// `herald.js` (`?client=herald`), its handler and form the same.
#[utoipa::path(get, path = "/article", operation_id = "article", tag = "pages", security(()),
    params(("client" = inline(Option<ArticleClient>), Query, description = "`eventsource` (the article's own, the default) or `herald` (herald.js)")),
    responses(
        (status = 200, description = "The page", content_type = "text/html", body = String),
        (status = 400, description = "An unknown client", body = herald_runtime::openapi::ErrorBody),
    ))]
pub(crate) async fn article(
    State(gw): State<Arc<GatewayState>>,
    Query(params): Query<ArticleParams>,
) -> Response {
    let page = include_str!("article.html");
    match params.client {
        ArticleClient::Eventsource => page_response(Html(page.to_owned())),
        ArticleClient::Herald => {
            let topic = serde_json::to_string(gw.config.compat_topic.as_str())
                .expect("a string serializes");
            let stream = ARTICLE_STREAM_HERALD.replace("{{topic}}", &topic);
            page_response(Html(page.replace(ARTICLE_STREAM, &stream)))
        }
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct Params {
    topic: Option<String>,
    /// The share of events whose publish→render delay the page reports (0 to 1; default 0.1).
    lag_sample: Option<f64>,
}

/// The demo page: a topic's recent events rendered by the server, then followed with
/// EventSource from the last of them (`--demo-pages`).
#[utoipa::path(
    get,
    path = "/", operation_id = "demoPage",
    tag = "pages",
    params(
        ("topic" = Option<String>, Query, pattern = "^[A-Za-z0-9_-]+(\\.[A-Za-z0-9_-]+)*$", max_length = 128, description = "The topic to watch (default: --demo-topic)"),
        ("lag_sample" = Option<f64>, Query, description = "The share of events whose delivery latency the page reports (0 to 1; default 0.1)"),
    ),
    responses(
        (status = 200, description = "The page", content_type = "text/html", body = String),
        (status = 400, description = "An invalid topic or query", body = herald_runtime::openapi::ErrorBody),
        (status = 401, description = "No valid token where one is needed", body = herald_runtime::openapi::ErrorBody),
        (status = 403, description = "The token's grants do not cover the topic", body = herald_runtime::openapi::ErrorBody),
        (status = 503, description = "The store is unavailable", body = herald_runtime::openapi::ErrorBody),
    )
)]
pub(crate) async fn page(
    State(gw): State<Arc<GatewayState>>,
    headers: HeaderMap,
    Query(params): Query<Params>,
) -> Result<Response, ApiError> {
    let principal = gw.config.access.identify(&headers, None).await?;
    let topic = match params.topic {
        Some(t) => {
            Topic::new(&t).map_err(|e| ApiError::new(ErrorCode::InvalidTopic, e.to_string()))?
        }
        None => gw.config.demo_topic.clone(),
    };
    principal.may_subscribe([topic.as_str()])?;
    let (bounds, events) = crate::history::read(&gw.history, &topic, None, RENDERED).await?;
    let resume_from = events
        .last()
        .map_or(EventId::new(bounds.epoch, bounds.head), |e| {
            EventId::new(bounds.epoch, e.seq)
        });
    // No reports where they are not taken (`--lag-reports false`).
    let lag_sample = match params.lag_sample.filter(|s| s.is_finite()) {
        _ if !gw.config.lag_reports => 0.0,
        Some(s) => s.clamp(0.0, 1.0),
        None => 0.1,
    };
    let mut items = String::new();
    for e in &events {
        let _ = write!(
            items,
            "<li data-id=\"{}\">{}</li>",
            EventId::new(bounds.epoch, e.seq),
            escape(e.data.get())
        );
    }
    Ok(page_response(Html(
        TEMPLATE
            .replace("{{topic}}", topic.as_str())
            .replace("{{resume_from}}", &resume_from.to_string())
            .replace("{{rendered}}", &events.len().to_string())
            .replace("{{lag_sample}}", &lag_sample.to_string())
            .replace("{{items}}", &items),
    )))
}

/// Escapes text for HTML element content and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn escapes_markup() {
        assert_eq!(
            super::escape(r#"{"a":"<b>&'"}"#),
            "{&quot;a&quot;:&quot;&lt;b&gt;&amp;&#39;&quot;}"
        );
    }

    #[test]
    fn the_articles_page_opens_its_stream_in_the_line_herald_js_replaces() {
        assert_eq!(
            include_str!("article.html")
                .matches(super::ARTICLE_STREAM)
                .count(),
            1
        );
    }
}
