//! The demo page at `/`: the article's scoreboard, served by Herald. And at `/article`, the
//! article's own client as it was: `new EventSource('/api/updates')` and a form doing
//! `PUT /api/post-update`, with nothing Herald-specific; the browser's own reconnection with
//! `Last-Event-ID` is all it needs.
//!
//! The first render already lists the newest events (read on the server), and the page's
//! EventSource resumes from the last rendered id, so nothing published between render and connect
//! is lost. The page shows its connection state (connected / reconnecting / caught up N events)
//! and reopens the stream itself if the browser gives up on it.

use std::{fmt::Write as _, sync::Arc};

use axum::{
    extract::{Query, State},
    response::Html,
};
use herald_core::{EventId, Topic};
use herald_runtime::{ApiError, ErrorCode};
use serde::Deserialize;

use crate::GatewayState;

/// Events rendered on the server.
const RENDERED: usize = 20;

const TEMPLATE: &str = include_str!("demo.html");

/// `GET /article`: the original article's client, unchanged.
pub(crate) async fn article() -> Html<&'static str> {
    Html(include_str!("article.html"))
}

#[derive(Debug, Deserialize)]
pub(crate) struct Params {
    topic: Option<String>,
    /// The share of events whose publish→render delay the page reports (0 to 1; default 0.1).
    lag_sample: Option<f64>,
}

pub(crate) async fn page(
    State(gw): State<Arc<GatewayState>>,
    Query(params): Query<Params>,
) -> Result<Html<String>, ApiError> {
    let topic = match params.topic {
        Some(t) => {
            Topic::new(&t).map_err(|e| ApiError::new(ErrorCode::InvalidTopic, e.to_string()))?
        }
        None => gw.config.demo_topic.clone(),
    };
    let (bounds, events) = crate::history::read(&gw.history, &topic, None, RENDERED).await?;
    let resume_from = events
        .last()
        .map_or(EventId::new(bounds.epoch, bounds.head), |e| {
            EventId::new(bounds.epoch, e.seq)
        });
    let mut items = String::new();
    for e in &events {
        let _ = write!(
            items,
            "<li data-id=\"{}\">{}</li>",
            EventId::new(bounds.epoch, e.seq),
            escape(e.data.get())
        );
    }
    Ok(Html(
        TEMPLATE
            .replace("{{topic}}", topic.as_str())
            .replace("{{resume_from}}", &resume_from.to_string())
            .replace("{{rendered}}", &events.len().to_string())
            .replace(
                "{{lag_sample}}",
                &params
                    .lag_sample
                    .filter(|s| s.is_finite())
                    .map_or(0.1, |s| s.clamp(0.0, 1.0))
                    .to_string(),
            )
            .replace("{{items}}", &items),
    ))
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
}
