//! The event model: what a publisher sends and what a subscriber receives.

use std::{fmt, sync::Arc};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

use crate::{Topic, TraceContext, ValidationError};

/// The longest event type accepted, in bytes.
pub const MAX_TYPE_LEN: usize = 64;

/// An event type: the SSE `event:` field. Never contains a control character, so it can never
/// inject another SSE field. `message` (the default) is what `EventSource.onmessage` receives.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct EventType(Arc<str>);

impl EventType {
    /// The type a browser's `onmessage` handler receives.
    pub const DEFAULT: &'static str = "message";

    /// Validates `name` as an event type.
    pub fn new(name: &str) -> Result<Self, ValidationError> {
        if !name.is_empty()
            && name.chars().count() <= MAX_TYPE_LEN
            && !name.chars().any(char::is_control)
        {
            Ok(Self(Arc::from(name)))
        } else {
            Err(ValidationError::EventType(
                name.chars().take(MAX_TYPE_LEN + 8).collect(),
            ))
        }
    }

    /// The type name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether a publisher may not use this type: `herald.*` names Herald's own control events
    /// (a published `herald.resume` would fake a verdict), and `error` and `open` are the names
    /// `EventSource` itself dispatches, so a page could not tell them from the connection's own.
    pub fn is_reserved(&self) -> bool {
        self.0.starts_with("herald.") || matches!(&*self.0, "error" | "open")
    }

    /// Whether this is the default `message` type (sent without an `event:` line).
    pub fn is_default(&self) -> bool {
        &*self.0 == Self::DEFAULT
    }
}

impl Default for EventType {
    fn default() -> Self {
        Self(Arc::from(Self::DEFAULT))
    }
}

impl fmt::Debug for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventType({:?})", &*self.0)
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for EventType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for EventType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        EventType::new(&s).map_err(serde::de::Error::custom)
    }
}

/// Parses `text` as the JSON data of an event, keeping it byte for byte.
pub fn parse_data(text: String) -> Result<Box<RawValue>, ValidationError> {
    RawValue::from_string(text).map_err(|e| ValidationError::Data(e.to_string()))
}

/// Now, in milliseconds since the Unix epoch (the unit of [`Event::time_ms`]).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// An event before it has a sequence number.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// Where it is published.
    pub topic: Topic,
    /// Its SSE `event:` name.
    pub event_type: EventType,
    /// Its JSON data, as published.
    pub data: Box<RawValue>,
}

impl NewEvent {
    /// An event a publisher sent, checked: the topic's grammar, the type's (`message` when
    /// none), and no reserved type ([`EventType::is_reserved`]).
    pub fn checked(
        topic: &str,
        event_type: Option<&str>,
        data: Box<RawValue>,
    ) -> Result<Self, ValidationError> {
        let event_type = match event_type {
            Some(t) => {
                let t = EventType::new(t)?;
                if t.is_reserved() {
                    return Err(ValidationError::ReservedType(t.as_str().to_owned()));
                }
                t
            }
            None => EventType::default(),
        };
        Ok(Self {
            topic: Topic::new(topic)?,
            event_type,
            data,
        })
    }
}

/// The body of a publish to one topic (`POST /v1/topics/{topic}/events`):
/// `{"type": "...", "data": ...}`.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PublishBody {
    /// The event type (`message` when absent): 1–64 characters, no control character, not
    /// `herald.*`, `error` or `open`.
    #[serde(rename = "type")]
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = "^(?!herald\\.|error$|open$)[^\\u0000-\\u001f\\u007f-\\u009f]{1,64}$")
    )]
    pub event_type: Option<String>,
    /// The JSON data, kept byte for byte.
    #[cfg_attr(feature = "openapi", schema(value_type = serde_json::Value))]
    pub data: Box<RawValue>,
}

impl PublishBody {
    /// The event, on `topic`, checked.
    pub fn into_event(self, topic: &str) -> Result<NewEvent, ValidationError> {
        NewEvent::checked(topic, self.event_type.as_deref(), self.data)
    }
}

/// One event of a batch (`POST /v1/events`): `{"topic": "...", "type": "...", "data": ...}`.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct BatchItem {
    /// Where it is published.
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = "^[A-Za-z0-9_-]+(\\.[A-Za-z0-9_-]+)*$", max_length = 128)
    )]
    pub topic: String,
    /// The event type (`message` when absent), as for a single publish.
    #[serde(rename = "type")]
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = "^(?!herald\\.|error$|open$)[^\\u0000-\\u001f\\u007f-\\u009f]{1,64}$")
    )]
    pub event_type: Option<String>,
    /// The JSON data, kept byte for byte.
    #[cfg_attr(feature = "openapi", schema(value_type = serde_json::Value))]
    pub data: Box<RawValue>,
}

/// The body of a batch publish (`POST /v1/events`): its events, at least one, all or nothing.
#[derive(Debug, Deserialize)]
#[serde(transparent)]
pub struct Batch(pub Vec<BatchItem>);

/// `Batch`'s schema: an array of `BatchItem`s, at least one (the derive cannot say `minItems`
/// of a newtype).
#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Batch {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ArrayBuilder::new()
            .items(utoipa::openapi::Ref::from_schema_name("BatchItem"))
            .min_items(Some(1))
            .description(Some("The events, at least one; all are published or none"))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Batch {
    fn name() -> std::borrow::Cow<'static, str> {
        "Batch".into()
    }

    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        schemas.push((
            "BatchItem".into(),
            <BatchItem as utoipa::PartialSchema>::schema(),
        ));
    }
}

impl BatchItem {
    /// The event, checked.
    pub fn into_event(self) -> Result<NewEvent, ValidationError> {
        NewEvent::checked(&self.topic, self.event_type.as_deref(), self.data)
    }
}

/// A sequenced, stored event.
#[derive(Debug, Clone)]
pub struct Event {
    /// The deployment-wide sequence number (the SSE id is `<epoch>-<seq>`).
    pub seq: u64,
    /// Where it was published.
    pub topic: Topic,
    /// Its SSE `event:` name.
    pub event_type: EventType,
    /// Its JSON data, as published.
    pub data: Box<RawValue>,
    /// When it was accepted, in milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The trace context of its publish, where it was traced: delivery spans continue it.
    pub trace: Option<TraceContext>,
}

impl Event {
    /// Sequences a new event.
    pub fn from_new(new: NewEvent, seq: u64, time_ms: u64) -> Self {
        Self {
            seq,
            topic: new.topic,
            event_type: new.event_type,
            data: new.data,
            time_ms,
            trace: None,
        }
    }

    /// The length this event counts for in size-based retention.
    pub fn weight(&self) -> u64 {
        (self.topic.as_str().len() + self.event_type.as_str().len() + self.data.get().len() + 16)
            as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_types_refuse_control_characters() {
        assert!(EventType::new("score").is_ok());
        assert!(EventType::new("with space and ünïcode").is_ok());
        for bad in [
            "",
            "a\nb",
            "a\rb",
            "a\0b",
            "a\tb",
            "\u{85}",
            &"x".repeat(65),
        ] {
            assert!(EventType::new(bad).is_err(), "{bad:?}");
        }
        assert!(EventType::default().is_default());
        // 1–64 characters, as the API document says (not bytes): 64 four-byte ones are fine.
        assert!(EventType::new(&"🎯".repeat(64)).is_ok());
        assert!(EventType::new(&"🎯".repeat(65)).is_err());
    }

    #[test]
    fn data_must_be_json_and_is_kept_verbatim() {
        let raw = parse_data("{\n  \"a\": 1\n}".into()).unwrap();
        assert_eq!(raw.get(), "{\n  \"a\": 1\n}");
        assert!(parse_data("{oops".into()).is_err());
        assert!(parse_data(String::new()).is_err());
    }
}
