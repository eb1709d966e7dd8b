//! Publish and batch bodies, as the ingest reads them: whatever a publisher sends, an accepted
//! event has a valid topic, a type that is not reserved and cannot break an SSE frame, and data
//! kept byte for byte; and the frame Herald writes for it decodes (by the WHATWG rules) to
//! exactly that type, id and data — no publisher can inject a field or another event.
#![no_main]

use herald_core::{
    BatchItem, Epoch, EventId, NewEvent, PublishBody, Topic, sse, sse::decode::Decoder,
};
use libfuzzer_sys::fuzz_target;

fn check(event: &NewEvent, body: &[u8]) {
    assert!(Topic::new(event.topic.as_str()).is_ok());
    assert!(!event.event_type.is_reserved(), "{:?}", event.event_type);
    let data = event.data.get();
    assert!(
        body.windows(data.len().max(1))
            .any(|w| w == data.as_bytes())
            || data.is_empty(),
        "the data was not kept byte for byte"
    );
    let id = EventId::new(Epoch(7), 42);
    let frame = sse::event(id, &event.event_type, data);
    let mut decoder = Decoder::new();
    let events = decoder.feed(&frame);
    assert_eq!(events.len(), 1, "one frame, one event: {frame:?}");
    assert_eq!(events[0].event, event.event_type.as_str());
    assert_eq!(events[0].id, id.to_string());
    // The browser joins data lines with LF; CR and CRLF inside JSON whitespace become LF too.
    let expected = data.replace("\r\n", "\n").replace('\r', "\n");
    assert_eq!(events[0].data, expected);
}

fuzz_target!(|input: &[u8]| {
    let Some((&kind, body)) = input.split_first() else {
        return;
    };
    if kind % 2 == 0 {
        let topic = String::from_utf8_lossy(&body[..body.len().min(usize::from(kind / 2))]);
        let rest = &body[body.len().min(usize::from(kind / 2))..];
        if let Ok(parsed) = serde_json::from_slice::<PublishBody>(rest)
            && let Ok(event) = parsed.into_event(&topic)
        {
            check(&event, rest);
        }
    } else if let Ok(items) = serde_json::from_slice::<Vec<BatchItem>>(body) {
        let events: Result<Vec<NewEvent>, _> =
            items.into_iter().map(BatchItem::into_event).collect();
        for event in events.iter().flatten() {
            check(event, body);
        }
    }
});
