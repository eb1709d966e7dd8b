//! Events to and from the bus envelope (`proto/herald/v1/envelope.proto`), and topics to and
//! from NATS subjects (`herald.events.<topic>`).

use std::sync::Arc;

use bytes::Bytes;
use herald_core::{
    Epoch, Event, EventType, NewEvent, Topic, TopicFilter, TraceContext, event::parse_data,
};
use herald_proto::{Envelope, Origin};
use prost::Message as _;

/// Every event subject starts with this.
pub const SUBJECT_PREFIX: &str = "herald.events.";
/// The stream's subjects.
pub const ALL_SUBJECTS: &str = "herald.events.>";

/// The subject an event on `topic` is published on.
pub fn subject(topic: &Topic) -> String {
    format!("{SUBJECT_PREFIX}{topic}")
}

/// The subjects a connection's filter reads. Herald's patterns are NATS's (`*` one level, a final
/// `>` the rest), so they map one to one. JetStream refuses a consumer whose filters overlap, so a
/// topic or pattern that another pattern already covers is left out.
pub fn filter_subjects(filter: &TopicFilter) -> Vec<String> {
    let mut kept: Vec<&str> = Vec::new();
    let all: Vec<&str> = filter
        .patterns()
        .iter()
        .map(|p| p.as_str())
        .chain(filter.exact().iter().map(Topic::as_str))
        .collect();
    for (i, candidate) in all.iter().enumerate() {
        let covered = all.iter().enumerate().any(|(j, other)| {
            j != i && covers(other, candidate) && (!covers(candidate, other) || j < i)
        });
        if !covered {
            kept.push(candidate);
        }
    }
    kept.iter()
        .map(|t| format!("{SUBJECT_PREFIX}{t}"))
        .collect()
}

/// Whether every subject `narrow` matches is matched by `wide` (both NATS-style, `*` and `>`).
fn covers(wide: &str, narrow: &str) -> bool {
    let (mut w, mut n) = (wide.split('.'), narrow.split('.'));
    loop {
        match (w.next(), n.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(level)) if level != ">" => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// What every event of one publish carries in its envelope besides itself.
#[derive(Debug, Clone, Copy)]
pub struct Stamp<'a> {
    /// The stream's epoch.
    pub epoch: Epoch,
    /// When the ingest accepted the publish.
    pub time_ms: u64,
    /// The request's fingerprint (0 without a key).
    pub fingerprint: u64,
    /// Where the events entered Herald.
    pub origin: Origin,
    /// The publish's Idempotency-Key.
    pub key: Option<&'a str>,
    /// How many events the publish has.
    pub size: usize,
}

/// Encodes the event at `index` of a publish for the bus.
pub fn encode(event: &NewEvent, index: usize, stamp: &Stamp<'_>) -> Bytes {
    Envelope {
        topic: event.topic.as_str().to_owned(),
        r#type: if event.event_type == EventType::default() {
            String::new()
        } else {
            event.event_type.as_str().to_owned()
        },
        data: event.data.get().as_bytes().to_vec(),
        time_ms: stamp.time_ms,
        epoch: stamp.epoch.0,
        fingerprint: stamp.fingerprint,
        origin: stamp.origin as i32,
        idempotency_key: stamp.key.unwrap_or_default().to_owned(),
        batch_index: u32::try_from(index).unwrap_or(u32::MAX),
        batch_size: u32::try_from(stamp.size).unwrap_or(u32::MAX),
    }
    .encode_to_vec()
    .into()
}

/// Why a bus message is not a Herald event.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not a protobuf envelope.
    #[error("not a Herald envelope: {0}")]
    Protobuf(#[from] prost::DecodeError),
    /// A field breaks Herald's rules (a topic, a type, data that is not JSON).
    #[error("invalid envelope: {0}")]
    Invalid(#[from] herald_core::ValidationError),
    /// The data is not UTF-8.
    #[error("envelope data is not UTF-8")]
    Utf8,
}

/// A decoded envelope: the event (at `seq`) and the envelope's own fields.
#[derive(Debug)]
pub struct Decoded {
    /// The event.
    pub event: Arc<Event>,
    /// The request fingerprint the ingest recorded.
    pub fingerprint: u64,
    /// The epoch the ingest published in.
    pub epoch: Epoch,
    /// Where the event entered Herald.
    pub origin: Origin,
    /// The publish's Idempotency-Key and all its sequences, when it had a key.
    pub answer: Option<(String, Vec<u64>)>,
}

/// Decodes a bus message stored at `seq`, published in the trace `trace` (its `traceparent`).
pub fn decode(
    payload: &[u8],
    seq: u64,
    trace: Option<TraceContext>,
) -> Result<Decoded, DecodeError> {
    let envelope = Envelope::decode(payload)?;
    let origin = envelope.origin();
    let answer = (!envelope.idempotency_key.is_empty()).then(|| {
        let first = seq.saturating_sub(u64::from(envelope.batch_index));
        let size = u64::from(envelope.batch_size.max(1));
        (
            envelope.idempotency_key.clone(),
            (first..first + size).collect(),
        )
    });
    let data = String::from_utf8(envelope.data).map_err(|_| DecodeError::Utf8)?;
    let event_type = if envelope.r#type.is_empty() {
        EventType::default()
    } else {
        EventType::new(&envelope.r#type)?
    };
    Ok(Decoded {
        event: Arc::new(Event {
            seq,
            topic: Topic::new(&envelope.topic)?,
            event_type,
            data: parse_data(data)?,
            time_ms: envelope.time_ms,
            trace,
        }),
        fingerprint: envelope.fingerprint,
        epoch: Epoch(envelope.epoch),
        origin,
        answer,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::value::RawValue;

    use super::*;

    #[test]
    fn an_event_survives_the_envelope() {
        let new = NewEvent {
            topic: Topic::new("scores.home").unwrap(),
            event_type: EventType::new("goal").unwrap(),
            data: RawValue::from_string(r#"{"a": [1, 2]}"#.into()).unwrap(),
        };
        let stamp = Stamp {
            epoch: Epoch(7),
            time_ms: 1234,
            fingerprint: 99,
            origin: Origin::Redis,
            key: Some("k"),
            size: 3,
        };
        let bytes = encode(&new, 1, &stamp);
        let d = decode(&bytes, 42, None).unwrap();
        assert_eq!(d.answer, Some(("k".to_owned(), vec![41, 42, 43])));
        let bytes = encode(&new, 0, &Stamp { key: None, ..stamp });
        assert_eq!(decode(&bytes, 42, None).unwrap().answer, None);
        let d = decode(&encode(&new, 1, &stamp), 42, None).unwrap();
        assert_eq!(d.event.seq, 42);
        assert_eq!(d.event.topic.as_str(), "scores.home");
        assert_eq!(d.event.event_type.as_str(), "goal");
        assert_eq!(d.event.data.get(), r#"{"a": [1, 2]}"#);
        assert_eq!(
            (d.event.time_ms, d.fingerprint, d.epoch),
            (1234, 99, Epoch(7))
        );
        assert_eq!(d.origin, Origin::Redis);
        assert!(decode(b"\xff\xff", 1, None).is_err());
    }

    #[test]
    fn filters_map_to_subjects() {
        let f = TopicFilter::parse(["a", "b.*", "c.>"]).unwrap();
        assert_eq!(
            filter_subjects(&f),
            ["herald.events.b.*", "herald.events.c.>", "herald.events.a"]
        );
        let all = TopicFilter::parse(["a", ">"]).unwrap();
        assert_eq!(filter_subjects(&all), ["herald.events.>"]);
        // Overlaps are left out (JetStream refuses overlapping filters).
        let f = TopicFilter::parse(["c.x", "c.*", "c.>", "d", "*", "d"]).unwrap();
        assert_eq!(
            filter_subjects(&f),
            ["herald.events.c.>", "herald.events.*"]
        );
        let f = TopicFilter::parse(["a.*.c", "a.b.c", "a.*.*"]).unwrap();
        assert_eq!(filter_subjects(&f), ["herald.events.a.*.*"]);
        assert!(covers("a.>", "a.*.c") && !covers("a.*", "a.>") && !covers("a.b", "a"));
    }
}
