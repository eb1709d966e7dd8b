//! The on-disk encoding of an event (its sequence is the table key):
//! `time_ms: u64 LE | topic_len: u8 | topic | type_len: u8 | type | data (JSON text)`.

use herald_core::{Event, EventType, Topic, event::parse_data};

use crate::StoreError;

pub(super) fn encode(event: &Event) -> Vec<u8> {
    let topic = event.topic.as_str().as_bytes();
    let kind = event.event_type.as_str().as_bytes();
    let data = event.data.get().as_bytes();
    let mut out = Vec::with_capacity(10 + topic.len() + kind.len() + data.len());
    out.extend_from_slice(&event.time_ms.to_le_bytes());
    out.push(topic.len() as u8);
    out.extend_from_slice(topic);
    out.push(kind.len() as u8);
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    out
}

/// The parts of a stored event that retention and filtering need, without decoding the data.
pub(super) struct Header<'a> {
    pub(super) time_ms: u64,
    pub(super) topic: &'a str,
    pub(super) weight: u64,
}

pub(super) fn header(bytes: &[u8]) -> Result<Header<'_>, StoreError> {
    let (time_ms, topic, _, _) = split(bytes)?;
    Ok(Header {
        time_ms,
        topic,
        weight: (bytes.len() - 10 + 16) as u64,
    })
}

pub(super) fn decode(seq: u64, bytes: &[u8]) -> Result<Event, StoreError> {
    let (time_ms, topic, kind, data) = split(bytes)?;
    Ok(Event {
        seq,
        topic: Topic::new(topic).map_err(corrupt)?,
        event_type: EventType::new(kind).map_err(corrupt)?,
        data: parse_data(data.to_owned()).map_err(corrupt)?,
        time_ms,
        trace: None,
    })
}

fn split(bytes: &[u8]) -> Result<(u64, &str, &str, &str), StoreError> {
    let err = || corrupt("truncated event record");
    let time = bytes.get(..8).ok_or_else(err)?;
    let time_ms = u64::from_le_bytes(time.try_into().map_err(|_| err())?);
    let (topic, rest) = field(&bytes[8..]).ok_or_else(err)?;
    let (kind, data) = field(rest).ok_or_else(err)?;
    let text = |b| std::str::from_utf8(b).map_err(corrupt);
    Ok((time_ms, text(topic)?, text(kind)?, text(data)?))
}

fn field(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let (&len, rest) = bytes.split_first()?;
    let len = usize::from(len);
    (rest.len() >= len).then(|| rest.split_at(len))
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("corrupt event record: {e}").into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let event = Event {
            seq: 5,
            topic: Topic::new("a.b").unwrap(),
            event_type: EventType::new("t").unwrap(),
            data: parse_data("{\"x\": [1, 2]}".into()).unwrap(),
            time_ms: 1234,
            trace: None,
        };
        let bytes = encode(&event);
        let back = decode(5, &bytes).unwrap();
        assert_eq!(back.topic, event.topic);
        assert_eq!(back.event_type, event.event_type);
        assert_eq!(back.data.get(), event.data.get());
        assert_eq!(back.time_ms, 1234);
        assert_eq!(header(&bytes).unwrap().weight, event.weight());
        assert!(decode(5, &bytes[..12]).is_err());
    }
}
