//! What a Redis message is as a Herald event, and what a Herald event is on Redis.
//!
//! - Channel ↔ topic: a channel is `--channel-prefix` + topic. Coming in, the prefix is removed
//!   and `:` or `/` become `.` (so `scores:home` is the topic `scores.home`); going out, the topic
//!   is used as it is (`scores.home`).
//! - A legacy message is JSON (kept as the event's data, unchanged) or plain text (the data is
//!   that text as a JSON string). The event type is `message`, what `onmessage` reads.
//! - On Redis, an event is the article's payload: the event's JSON object, with a `_herald`
//!   member `{id, topic, type}` added. Data that is not an object goes out as
//!   `{"data": <value>, "_herald": {…}}`. Legacy subscribers read the fields they know.
//! - Loop prevention: a message carrying `_herald` came from Herald and is never taken back in;
//!   an event that came from Redis (its envelope's origin) is never sent back out.

use herald_core::{EventId, EventType, NewEvent, Topic};
use serde_json::{Map, Value, value::RawValue};

/// The member that marks a Redis message as Herald's own.
pub(crate) const MARK: &str = "_herald";

/// Why a Redis message was not taken into Herald.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Skip {
    /// It came from Herald (it carries the `_herald` mark).
    Loop,
    /// Its channel or stream does not name a valid topic.
    Topic(String),
}

/// Maps channels and topics.
#[derive(Debug, Clone)]
pub(crate) struct Mapping {
    prefix: String,
    id_field: String,
}

impl Mapping {
    /// `prefix` starts every bridged channel; `id_field` names the JSON member that identifies a
    /// legacy message.
    pub(crate) fn new(prefix: &str, id_field: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            id_field: id_field.to_owned(),
        }
    }

    /// The topic of a channel (or stream key).
    pub(crate) fn topic(&self, channel: &str) -> Result<Topic, Skip> {
        let name = channel
            .strip_prefix(self.prefix.as_str())
            .ok_or_else(|| Skip::Topic(channel.to_owned()))?;
        let name: String = name
            .chars()
            .map(|c| if c == ':' || c == '/' { '.' } else { c })
            .collect();
        Topic::new(&name).map_err(|_| Skip::Topic(channel.to_owned()))
    }

    /// The channel of a topic.
    pub(crate) fn channel(&self, topic: &Topic) -> String {
        format!("{}{}", self.prefix, topic.as_str())
    }

    /// A legacy message as an event, with the identity its idempotency key is made from: the
    /// `--id-field` member when the message has one, otherwise its content.
    pub(crate) fn event(
        &self,
        topic: Topic,
        payload: &[u8],
        event_type: Option<&str>,
    ) -> Result<(NewEvent, Option<String>), Skip> {
        let text = String::from_utf8_lossy(payload);
        let (data, id) = match serde_json::from_str::<Value>(&text) {
            Ok(Value::Object(object)) => {
                if object.contains_key(MARK) {
                    return Err(Skip::Loop);
                }
                let id = object.get(&self.id_field).and_then(|v| match v {
                    Value::String(s) => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    _ => None,
                });
                (raw(text.trim().to_owned()), id)
            }
            Ok(_) => (raw(text.trim().to_owned()), None),
            Err(_) => (
                raw(serde_json::to_string(&text).expect("a string serializes")),
                None,
            ),
        };
        let event_type = event_type
            .and_then(|t| EventType::new(t).ok())
            .unwrap_or_default();
        Ok((
            NewEvent {
                topic,
                event_type,
                data,
            },
            id,
        ))
    }
}

fn raw(json: String) -> Box<RawValue> {
    RawValue::from_string(json).expect("valid JSON")
}

/// The idempotency key of a Pub/Sub message: its channel and identity (or content hash), so two
/// bridges that both receive it, or one that sees it again, make one event.
pub(crate) fn pubsub_key(channel: &str, id: Option<&str>, event: &NewEvent) -> String {
    match id {
        Some(id) => format!("redis:{channel}:id:{id}"),
        None => format!(
            "redis:{channel}:hash:{:016x}",
            herald_ingest::publish::fingerprint(std::slice::from_ref(event))
        ),
    }
}

/// The idempotency key of a stream entry: the stream and the message's identity when it has one
/// (a producer that retried an `XADD` added the message twice, under two entry ids), otherwise
/// the entry id Redis gave it.
pub(crate) fn stream_key(stream: &str, id: Option<&str>, entry: &str) -> String {
    match id {
        Some(id) => format!("redis-stream:{stream}:id:{id}"),
        None => format!("redis-stream:{stream}:entry:{entry}"),
    }
}

/// An event as the article's payload, marked as Herald's.
pub(crate) fn article_payload(
    id: EventId,
    topic: &Topic,
    event_type: &EventType,
    data: &str,
) -> String {
    let mark = serde_json::json!({
        "id": id.to_string(),
        "topic": topic.as_str(),
        "type": event_type.as_str(),
    });
    let mut object = match serde_json::from_str::<Value>(data) {
        Ok(Value::Object(object)) => object,
        Ok(other) => Map::from_iter([("data".to_owned(), other)]),
        Err(_) => Map::from_iter([("data".to_owned(), Value::String(data.to_owned()))]),
    };
    object.insert(MARK.to_owned(), mark);
    Value::Object(object).to_string()
}

#[cfg(test)]
mod tests {
    use herald_core::Epoch;

    use super::*;

    #[test]
    fn channels_and_topics() {
        let m = Mapping::new("", "id");
        assert_eq!(m.topic("updates").unwrap().as_str(), "updates");
        assert_eq!(m.topic("scores:home").unwrap().as_str(), "scores.home");
        assert_eq!(m.topic("a/b.c").unwrap().as_str(), "a.b.c");
        assert!(matches!(m.topic("bad topic"), Err(Skip::Topic(_))));
        let p = Mapping::new("legacy:", "id");
        assert_eq!(p.topic("legacy:updates").unwrap().as_str(), "updates");
        assert!(p.topic("other").is_err());
        assert_eq!(
            p.channel(&Topic::new("scores.home").unwrap()),
            "legacy:scores.home"
        );
    }

    #[test]
    fn messages_become_events() {
        let m = Mapping::new("", "id");
        let topic = Topic::new("updates").unwrap();
        let (e, id) = m
            .event(
                topic.clone(),
                br#"{"id": 7, "team": "A", "score": 1}"#,
                None,
            )
            .unwrap();
        assert_eq!(e.data.get(), r#"{"id": 7, "team": "A", "score": 1}"#);
        assert_eq!(e.event_type.as_str(), "message");
        assert_eq!(id.as_deref(), Some("7"));
        let (e, id) = m.event(topic.clone(), b"goal!\nA", Some("note")).unwrap();
        assert_eq!(e.data.get(), r#""goal!\nA""#);
        assert_eq!(e.event_type.as_str(), "note");
        assert_eq!(id, None);
        let (e, _) = m.event(topic.clone(), b"[1,2]", None).unwrap();
        assert_eq!(e.data.get(), "[1,2]");
        assert_eq!(
            m.event(topic, br#"{"_herald": {"id": "1-1"}, "a": 1}"#, None)
                .unwrap_err(),
            Skip::Loop
        );
    }

    #[test]
    fn keys_are_stable_and_distinct() {
        let m = Mapping::new("", "id");
        let topic = Topic::new("updates").unwrap();
        let (a, _) = m.event(topic.clone(), br#"{"s": 1}"#, None).unwrap();
        let (b, _) = m.event(topic, br#"{"s": 2}"#, None).unwrap();
        assert_eq!(
            pubsub_key("updates", None, &a),
            pubsub_key("updates", None, &a)
        );
        assert_ne!(
            pubsub_key("updates", None, &a),
            pubsub_key("updates", None, &b)
        );
        assert_eq!(pubsub_key("updates", Some("7"), &a), "redis:updates:id:7");
        assert_eq!(stream_key("s", None, "1-0"), "redis-stream:s:entry:1-0");
        assert_eq!(stream_key("s", Some("7"), "1-0"), "redis-stream:s:id:7");
    }

    #[test]
    fn events_go_out_in_the_article_shape_and_do_not_come_back() {
        let topic = Topic::new("updates").unwrap();
        let id = EventId::new(Epoch(0xab), 5);
        let out = article_payload(
            id,
            &topic,
            &EventType::default(),
            r#"{"team":"A","score":2}"#,
        );
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["team"], "A");
        assert_eq!(v["score"], 2);
        assert_eq!(v["_herald"]["id"], id.to_string());
        assert_eq!(v["_herald"]["topic"], "updates");
        let wrapped: Value =
            serde_json::from_str(&article_payload(id, &topic, &EventType::default(), "3")).unwrap();
        assert_eq!(wrapped["data"], 3);
        let m = Mapping::new("", "id");
        assert_eq!(
            m.event(topic, out.as_bytes(), None).unwrap_err(),
            Skip::Loop
        );
    }
}
