//! The publish times of recent events, for browser lag reports.

use std::sync::atomic::{AtomicU64, Ordering};

/// How many recent events' publish times the hub remembers.
const RECENT: usize = 1 << 16;

/// The publish times of the last [`RECENT`] events, by sequence: one writer (the hub task),
/// lock-free readers.
pub(super) struct Recent {
    slots: Box<[(AtomicU64, AtomicU64)]>,
}

impl Recent {
    pub(super) fn new() -> Self {
        Self {
            slots: (0..RECENT)
                .map(|_| (AtomicU64::new(0), AtomicU64::new(0)))
                .collect(),
        }
    }

    pub(super) fn record(&self, seq: u64, time_ms: u64) {
        let (s, t) = &self.slots[seq as usize % RECENT];
        s.store(0, Ordering::Release);
        t.store(time_ms, Ordering::Release);
        s.store(seq, Ordering::Release);
    }

    pub(super) fn time_of(&self, seq: u64) -> Option<u64> {
        let (s, t) = &self.slots[seq as usize % RECENT];
        if seq == 0 || s.load(Ordering::Acquire) != seq {
            return None;
        }
        let time = t.load(Ordering::Acquire);
        (s.load(Ordering::Acquire) == seq).then_some(time)
    }
}

impl std::fmt::Debug for Recent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Recent")
    }
}
