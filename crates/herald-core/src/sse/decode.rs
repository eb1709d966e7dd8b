//! An event-stream parser that follows the WHATWG HTML "Server-sent events" parsing rules: a
//! leading BOM is dropped, lines end in CRLF, CR or LF (also across chunk boundaries), a line
//! starting with `:` is a comment, a field without a colon has an empty value, one space after the
//! colon is dropped, `id` values containing NUL are ignored, `retry` takes only ASCII digits, and
//! an event with no data is not dispatched.
//!
//! Herald's tests and load generator read streams through it, so they see exactly what a browser
//! would.

/// A dispatched event, as `EventSource` would deliver it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The event's type (`message` when the stream named none).
    pub event: String,
    /// The data lines joined with LF.
    pub data: String,
    /// The last event id at dispatch (the browser's `lastEventId`).
    pub id: String,
}

/// Incremental parser state for one stream.
#[derive(Debug, Default)]
pub struct Decoder {
    pending: Vec<u8>,
    started: bool,
    skip_lf: bool,
    data: String,
    event: String,
    id_buffer: String,
    last_event_id: String,
    retry: Option<u64>,
    comments: u64,
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

impl Decoder {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// The browser's `lastEventId` so far.
    pub fn last_event_id(&self) -> &str {
        &self.last_event_id
    }

    /// The last valid `retry:` value, in milliseconds.
    pub fn retry(&self) -> Option<u64> {
        self.retry
    }

    /// How many comment lines (heartbeats) have been read.
    pub fn comments(&self) -> u64 {
        self.comments
    }

    /// Feeds the next chunk of the stream and returns the events it completes.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        self.pending.extend_from_slice(chunk);
        if !self.started {
            if self.pending.len() < BOM.len() && BOM.starts_with(&self.pending) {
                return Vec::new();
            }
            if self.pending.starts_with(BOM) {
                self.pending.drain(..BOM.len());
            }
            self.started = true;
        }
        let mut events = Vec::new();
        let mut start = 0;
        let mut i = 0;
        while i < self.pending.len() {
            let b = self.pending[i];
            if self.skip_lf {
                self.skip_lf = false;
                if b == b'\n' {
                    start = i + 1;
                    i += 1;
                    continue;
                }
            }
            if b == b'\r' || b == b'\n' {
                let line = String::from_utf8_lossy(&self.pending[start..i]).into_owned();
                if let Some(ev) = self.process_line(&line) {
                    events.push(ev);
                }
                self.skip_lf = b == b'\r';
                start = i + 1;
            }
            i += 1;
        }
        self.pending.drain(..start);
        events
    }

    fn process_line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            return self.dispatch();
        }
        if line.starts_with(':') {
            self.comments += 1;
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = value.to_owned(),
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
            }
            "id" if !value.contains('\0') => self.id_buffer = value.to_owned(),
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                self.retry = value.parse().ok();
            }
            _ => {}
        }
        None
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        self.last_event_id.clone_from(&self.id_buffer);
        if self.data.is_empty() {
            self.event.clear();
            return None;
        }
        let mut data = std::mem::take(&mut self.data);
        data.pop();
        let event = std::mem::take(&mut self.event);
        Some(SseEvent {
            event: if event.is_empty() {
                "message".to_owned()
            } else {
                event
            },
            data,
            id: self.last_event_id.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(chunks: &[&[u8]]) -> (Vec<SseEvent>, Decoder) {
        let mut d = Decoder::new();
        let events = chunks.iter().flat_map(|c| d.feed(c)).collect();
        (events, d)
    }

    #[test]
    fn bom_and_mixed_line_endings() {
        let (ev, _) = all(&[b"\xEF\xBB", b"\xBFdata: a\r\ndata: b\rdata: c\n\r\n"]);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].data, "a\nb\nc");
        assert_eq!(ev[0].event, "message");
    }

    #[test]
    fn crlf_split_across_chunks_is_one_line_end() {
        let (ev, _) = all(&[b"data: x\r", b"\n\r", b"\n"]);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].data, "x");
    }

    #[test]
    fn field_without_colon_and_leading_space() {
        let (ev, _) = all(&[b"data\ndata:  two spaces\nevent:x\n\n"]);
        assert_eq!(ev[0].data, "\n two spaces");
        assert_eq!(ev[0].event, "x");
    }

    #[test]
    fn comments_ids_retry_and_empty_events() {
        let (ev, d) = all(&[b": hi\nretry: 1500\nretry: 1x\nid: 7\n\nid: a\0b\ndata: d\n\n"]);
        assert_eq!(d.comments(), 1);
        assert_eq!(d.retry(), Some(1500));
        assert_eq!(ev.len(), 1, "an event without data is not dispatched");
        assert_eq!(ev[0].id, "7", "an id with NUL is ignored");
        assert_eq!(d.last_event_id(), "7");
    }

    #[test]
    fn a_bom_later_in_the_stream_is_data() {
        let (ev, _) = all(&[b"data: 1\n\n\xEF\xBB\xBFdata: 2\n\n"]);
        assert_eq!(ev.len(), 1, "the second BOM makes an unknown field name");
    }
}
