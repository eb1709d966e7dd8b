//! Events to and from MongoDB documents; topic filters to query conditions.

use super::*;

pub(super) fn seq(s: u64) -> i64 {
    i64::try_from(s).unwrap_or(i64::MAX)
}

pub(super) fn to_doc(e: &Event) -> Document {
    let mut d = doc! {
        "_id": seq(e.seq),
        "topic": e.topic.as_str(),
        "type": e.event_type.as_str(),
        "data": e.data.get(),
        "ts": DateTime::from_millis(e.time_ms as i64),
    };
    if let Some(trace) = e.trace {
        d.insert("traceparent", trace.to_string());
    }
    d
}

pub(super) fn from_doc(d: &Document) -> Option<Arc<Event>> {
    let event = (|| {
        Some(Event {
            seq: d.get_i64("_id").ok()? as u64,
            topic: Topic::new(d.get_str("topic").ok()?).ok()?,
            event_type: EventType::new(d.get_str("type").ok()?).ok()?,
            data: parse_data(d.get_str("data").ok()?.to_owned()).ok()?,
            time_ms: d.get_datetime("ts").ok()?.timestamp_millis() as u64,
            trace: d.get_str("traceparent").ok().and_then(TraceContext::parse),
        })
    })();
    if event.is_none() {
        tracing::warn!(id = ?d.get("_id"), "skipping a malformed event document");
    }
    event.map(Arc::new)
}

/// The `topic` condition for a filter, or `None` when it matches every topic.
pub(super) fn topic_condition(filter: &TopicFilter) -> Option<Bson> {
    if filter.patterns().iter().any(|p| p.as_str() == ">") {
        return None;
    }
    let exact: Vec<&str> = filter.exact().iter().map(Topic::as_str).collect();
    let regexes: Vec<String> = filter
        .patterns()
        .iter()
        .map(|p| pattern_regex(p.as_str()))
        .collect();
    if regexes.is_empty() {
        return Some(doc! { "$in": exact }.into());
    }
    let mut alternatives = Vec::new();
    if !exact.is_empty() {
        alternatives.push(format!(
            "^(?:{})$",
            exact
                .iter()
                .map(|t| escape(t))
                .collect::<Vec<_>>()
                .join("|")
        ));
    }
    alternatives.extend(regexes);
    Some(doc! { "$regex": alternatives.join("|") }.into())
}

/// `scores.*` → `^scores\.[^.]+$`; `scores.>` → `^scores\..+$`.
fn pattern_regex(pattern: &str) -> String {
    let levels: Vec<String> = pattern
        .split('.')
        .map(|level| match level {
            "*" => "[^.]+".to_owned(),
            ">" => ".+".to_owned(),
            literal => escape(literal),
        })
        .collect();
    format!("^{}$", levels.join("\\."))
}

fn escape(literal: &str) -> String {
    literal.replace('.', "\\.").replace('-', "\\-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_become_anchored_regexes() {
        assert_eq!(pattern_regex("scores.*"), r"^scores\.[^.]+$");
        assert_eq!(pattern_regex("a-b.>"), r"^a\-b\..+$");
        let filter = TopicFilter::parse(["x.y", "scores.*"]).unwrap();
        let Some(Bson::Document(d)) = topic_condition(&filter) else {
            panic!()
        };
        assert_eq!(d.get_str("$regex").unwrap(), r"^(?:x\.y)$|^scores\.[^.]+$");
        assert!(topic_condition(&TopicFilter::parse([">"]).unwrap()).is_none());
    }
}
