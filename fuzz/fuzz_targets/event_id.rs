//! Event ids and resume verdicts: an id that parses prints back as itself, and a verdict of
//! "recovered" is only ever given for an id of the stream's epoch inside its retained range.
#![no_main]

use herald_core::{Bounds, Epoch, EventId, ResumeVerdict};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    if input.len() < 12 {
        return;
    }
    let (numbers, text) = input.split_at(12);
    let word = |i: usize| u32::from_le_bytes(numbers[i..i + 4].try_into().unwrap());
    let (epoch, a, b) = (word(0), u64::from(word(4)), u64::from(word(8)));
    let bounds = Bounds {
        epoch: Epoch(epoch % 4),
        earliest: a.min(b + 1),
        head: b,
    };
    let text = String::from_utf8_lossy(text);
    if let Ok(id) = text.parse::<EventId>() {
        assert_eq!(id.to_string().parse::<EventId>(), Ok(id), "{text:?}");
    }
    match ResumeVerdict::judge(&text, bounds) {
        ResumeVerdict::Recovered { after } => {
            let id: EventId = text
                .parse()
                .expect("recovered from an id that does not parse");
            assert_eq!(id.epoch, bounds.epoch);
            assert_eq!(id.seq, after);
            assert!(after <= bounds.head, "{text:?} {bounds:?}");
            assert!(after + 1 >= bounds.earliest, "{text:?} {bounds:?}");
        }
        ResumeVerdict::NotRecovered { earliest, head, .. } => {
            assert_eq!((earliest.epoch, head.epoch), (bounds.epoch, bounds.epoch));
            assert_eq!(head.seq, bounds.head);
        }
    }
});
