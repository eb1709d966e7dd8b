//! The SSE wire format, owned by one encoder.
//!
//! Every byte Herald writes on an event stream comes from the functions here. Their inputs are typed
//! ([`EventId`], [`EventType`]) so CR, LF or NUL can never reach an `id:` or `event:` line; `data`
//! is split on every line break (CRLF, CR, LF) into `data:` lines, which a browser joins back with
//! LF. Each event is encoded once into [`Bytes`] that every subscriber shares.
//!
//! The [`decode`] module parses a stream the way a browser's `EventSource` does.

pub mod decode;

use bytes::{BufMut, Bytes, BytesMut};

use crate::{EventId, EventType};

/// The `Content-Type` of an event stream.
pub const CONTENT_TYPE: &str = "text/event-stream";

/// Encodes one event: `id:`, `event:` (omitted for the default `message` type, which a browser
/// treats identically), one `data:` line per line of `data`, and the blank line that dispatches it.
pub fn event(id: EventId, event_type: &EventType, data: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + event_type.as_str().len() + 48);
    out.put_slice(b"id: ");
    out.put_slice(id.to_string().as_bytes());
    out.put_u8(b'\n');
    if !event_type.is_default() {
        put_event_line(&mut out, event_type.as_str());
    }
    put_data(&mut out, data);
    out.freeze()
}

/// Encodes a named control event with no `id:` line, so the browser's `lastEventId` is untouched
/// (`herald.resume`, `herald.live`).
pub fn control(name: &'static str, data: &str) -> Bytes {
    debug_assert!(!name.contains(['\r', '\n', '\0']));
    let mut out = BytesMut::with_capacity(data.len() + name.len() + 16);
    put_event_line(&mut out, name);
    put_data(&mut out, data);
    out.freeze()
}

/// Encodes the `retry:` field that tells a browser how long to wait before reconnecting.
pub fn retry(millis: u64) -> Bytes {
    Bytes::from(format!("retry: {millis}\n\n"))
}

/// Encodes a comment line (a heartbeat). Line breaks in `text` are replaced by spaces.
pub fn comment(text: &str) -> Bytes {
    let clean: String = text
        .chars()
        .map(|c| if matches!(c, '\r' | '\n') { ' ' } else { c })
        .collect();
    Bytes::from(format!(":{clean}\n\n"))
}

fn put_event_line(out: &mut BytesMut, name: &str) {
    out.put_slice(b"event: ");
    out.put_slice(name.as_bytes());
    out.put_u8(b'\n');
}

/// Writes `data` as `data:` lines, splitting on CRLF, CR and LF, then the dispatching blank line.
fn put_data(out: &mut BytesMut, data: &str) {
    let bytes = data.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\r' | b'\n' => {
                put_data_line(out, &bytes[start..i]);
                if bytes[i] == b'\r' && bytes.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    put_data_line(out, &bytes[start..]);
    out.put_u8(b'\n');
}

fn put_data_line(out: &mut BytesMut, line: &[u8]) {
    out.put_slice(b"data: ");
    out.put_slice(line);
    out.put_u8(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Epoch;

    fn id(seq: u64) -> EventId {
        EventId::new(Epoch(0xabcdef01), seq)
    }

    #[test]
    fn golden_default_type() {
        let frame = event(id(7), &EventType::default(), r#"{"a":1}"#);
        assert_eq!(&frame[..], b"id: abcdef01-7\ndata: {\"a\":1}\n\n");
    }

    #[test]
    fn golden_named_type() {
        let frame = event(id(8), &EventType::new("goal").unwrap(), "1");
        assert_eq!(&frame[..], b"id: abcdef01-8\nevent: goal\ndata: 1\n\n");
    }

    #[test]
    fn golden_multi_line_data_splits_every_line_break() {
        let frame = event(id(9), &EventType::default(), "{\r\n\"a\":\r1,\n\"b\":2\n}");
        assert_eq!(
            &frame[..],
            b"id: abcdef01-9\ndata: {\ndata: \"a\":\ndata: 1,\ndata: \"b\":2\ndata: }\n\n"
        );
    }

    #[test]
    fn golden_trailing_line_break_keeps_an_empty_data_line() {
        let frame = event(id(1), &EventType::default(), "x\n");
        assert_eq!(&frame[..], b"id: abcdef01-1\ndata: x\ndata: \n\n");
    }

    #[test]
    fn golden_control_retry_comment() {
        assert_eq!(
            &control("herald.resume", r#"{"recovered":true}"#)[..],
            b"event: herald.resume\ndata: {\"recovered\":true}\n\n"
        );
        assert_eq!(&retry(3000)[..], b"retry: 3000\n\n");
        assert_eq!(&comment("")[..], b":\n\n");
        assert_eq!(&comment("a\r\nb")[..], b":a  b\n\n");
    }

    #[test]
    fn what_is_encoded_decodes_to_the_same_event() {
        let data = "line one\r\nline two\rline three\nlast";
        let frame = event(id(3), &EventType::new("t").unwrap(), data);
        let mut decoder = decode::Decoder::new();
        let events = decoder.feed(&frame);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].id, "abcdef01-3");
        assert_eq!(events[0].event, "t");
        assert_eq!(events[0].data, "line one\nline two\nline three\nlast");
    }
}
