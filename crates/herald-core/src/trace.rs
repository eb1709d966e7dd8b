//! W3C trace context (`traceparent`), as an event carries it from its publish to its delivery.
//!
//! Herald keeps the context of the span that published an event: it travels in the NATS message
//! headers, is stored with the event in MongoDB, and parents the gateway's delivery spans. Only
//! the `traceparent` is carried; `tracestate` is not.

use std::fmt;

/// A span's identity in a trace: `00-<trace-id>-<span-id>-<flags>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceContext {
    /// The trace's id: 16 bytes, not all zero.
    pub trace_id: [u8; 16],
    /// The span's id: 8 bytes, not all zero.
    pub span_id: [u8; 8],
    /// The trace flags; bit 0 is `sampled`.
    pub flags: u8,
}

impl TraceContext {
    /// The length of a version-00 `traceparent`.
    pub const TRACEPARENT_LEN: usize = 55;

    /// Whether the trace is sampled (recorded and exported).
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// Parses a `traceparent` header value. Versions other than `00` are read by their first 55
    /// characters, as the W3C recommendation says; anything malformed is `None` (the request then
    /// starts a new trace, it is not refused).
    pub fn parse(value: &str) -> Option<Self> {
        let b = value.trim().as_bytes();
        if b.len() < Self::TRACEPARENT_LEN
            || (b.len() > Self::TRACEPARENT_LEN && (&b[..2] == b"00" || b[55] != b'-'))
            || b[2] != b'-'
            || b[35] != b'-'
            || b[52] != b'-'
        {
            return None;
        }
        let version = hex::<1>(&b[0..2])?;
        if version == [0xff] {
            return None;
        }
        let trace_id = hex::<16>(&b[3..35])?;
        let span_id = hex::<8>(&b[36..52])?;
        let [flags] = hex::<1>(&b[53..55])?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            span_id,
            flags,
        })
    }
}

/// Lower-case hex of exactly `N` bytes; upper case is invalid in a `traceparent`.
fn hex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// The `traceparent` header value (version 00).
impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("00-")?;
        for b in self.trace_id {
            write!(f, "{b:02x}")?;
        }
        f.write_str("-")?;
        for b in self.span_id {
            write!(f, "{b:02x}")?;
        }
        write!(f, "-{:02x}", self.flags)
    }
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceContext({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn round_trips_a_traceparent() {
        let tc = TraceContext::parse(TP).unwrap();
        assert!(tc.sampled());
        assert_eq!(tc.span_id, [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
        assert_eq!(tc.to_string(), TP);
        let unsampled = TraceContext::parse(&TP.replace("-01", "-00")).unwrap();
        assert!(!unsampled.sampled());
    }

    #[test]
    fn refuses_malformed_values() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad}");
        }
        // A future version may append fields after a dash.
        let future = TP.replacen("00", "01", 1) + "-what-ever";
        assert!(TraceContext::parse(&future).is_some());
    }
}
