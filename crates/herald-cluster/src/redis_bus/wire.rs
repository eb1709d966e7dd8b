//! An event on the channel: JSON with the epoch and sequence, `data` unchanged.

use super::*;

/// One event on the channel. `data` is the publisher's JSON, unchanged.
#[derive(Debug, Serialize, Deserialize)]
struct Message<'a> {
    epoch: u32,
    seq: u64,
    topic: &'a str,
    #[serde(rename = "type")]
    event_type: &'a str,
    #[serde(borrow)]
    data: &'a RawValue,
    ts: u64,
}

/// The wire form of an event on the channel.
pub fn encode(event: &Event, epoch: Epoch) -> String {
    serde_json::to_string(&Message {
        epoch: epoch.0,
        seq: event.seq,
        topic: event.topic.as_str(),
        event_type: event.event_type.as_str(),
        data: &event.data,
        ts: event.time_ms,
    })
    .expect("an event serializes")
}

/// An event read from the channel, with the epoch it was published in.
pub fn decode(payload: &[u8]) -> anyhow::Result<(Epoch, Event)> {
    let m: Message<'_> = serde_json::from_slice(payload)?;
    Ok((
        Epoch(m.epoch),
        Event {
            seq: m.seq,
            topic: Topic::new(m.topic)?,
            event_type: EventType::new(m.event_type)?,
            data: m.data.to_owned(),
            time_ms: m.ts,
            trace: None,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_survives_the_channel() {
        let event = Event {
            seq: 42,
            topic: Topic::new("scores.home").unwrap(),
            event_type: EventType::new("goal").unwrap(),
            data: RawValue::from_string(r#"{"a": [1, "x\ny"]}"#.into()).unwrap(),
            time_ms: 1234,
            trace: None,
        };
        let wire = encode(&event, Epoch(7));
        let (epoch, back) = decode(wire.as_bytes()).unwrap();
        assert_eq!(epoch, Epoch(7));
        assert_eq!(back.seq, 42);
        assert_eq!(back.topic.as_str(), "scores.home");
        assert_eq!(back.event_type.as_str(), "goal");
        assert_eq!(back.data.get(), r#"{"a": [1, "x\ny"]}"#);
        assert_eq!(back.time_ms, 1234);
        assert!(decode(br#"{"seq":1}"#).is_err());
        assert!(decode(b"plain text").is_err());
    }
}
