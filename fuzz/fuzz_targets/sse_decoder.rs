//! The SSE decoder (WHATWG rules, what the tests and the load generator read streams with): any
//! byte stream decodes to the same events, last id, retry and comment count however it is cut
//! into chunks, and a dispatched event never carries a line break in its type or id.
#![no_main]

use herald_core::sse::decode::Decoder;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some((&cut, stream)) = input.split_first() else {
        return;
    };
    let mut whole = Decoder::new();
    let at_once = whole.feed(stream);
    let mut pieces = Decoder::new();
    let mut chunked = Vec::new();
    // Chunks of 1 to 8 bytes, and an empty feed between them now and then.
    for (i, chunk) in stream.chunks(usize::from(cut % 8) + 1).enumerate() {
        chunked.extend(pieces.feed(chunk));
        if i % 3 == usize::from(cut >> 6) {
            chunked.extend(pieces.feed(&[]));
        }
    }
    assert_eq!(at_once, chunked);
    assert_eq!(whole.last_event_id(), pieces.last_event_id());
    assert_eq!(whole.retry(), pieces.retry());
    assert_eq!(whole.comments(), pieces.comments());
    for event in &at_once {
        assert!(!event.event.contains(['\r', '\n']), "{event:?}");
        assert!(!event.id.contains(['\r', '\n', '\0']), "{event:?}");
    }
});
