//! Event ids and the resume verdict.
//!
//! One sequence orders every event of a deployment. The SSE id pairs it with the deployment's
//! [`Epoch`] as `<epoch>-<seq>` (`5f3a09c2-1042`), so an id minted before the sequence was reset (a
//! store wiped, a stream recreated) is recognised instead of replaying the wrong events. Clients
//! treat ids as opaque strings.

use std::{fmt, str::FromStr};

use serde::Serialize;

/// Identifies one incarnation of a deployment's sequence. Chosen at random when the sequence is
/// created and kept with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Epoch(pub u32);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

/// An SSE event id: epoch and sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EventId {
    /// The sequence's incarnation.
    pub epoch: Epoch,
    /// The position in the sequence; 0 means "before the first event".
    pub seq: u64,
}

impl EventId {
    /// An id in `epoch` at `seq`.
    pub fn new(epoch: Epoch, seq: u64) -> Self {
        Self { epoch, seq }
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.epoch, self.seq)
    }
}

impl Serialize for EventId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// An id that is not of the form `<8 hex digits>-<decimal>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed event id")]
pub struct MalformedId;

impl FromStr for EventId {
    type Err = MalformedId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (epoch, seq) = s.split_once('-').ok_or(MalformedId)?;
        if epoch.len() != 8 || !epoch.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(MalformedId);
        }
        if seq.is_empty() || seq.len() > 20 || !seq.bytes().all(|b| b.is_ascii_digit()) {
            return Err(MalformedId);
        }
        Ok(Self {
            epoch: Epoch(u32::from_str_radix(epoch, 16).map_err(|_| MalformedId)?),
            seq: seq.parse().map_err(|_| MalformedId)?,
        })
    }
}

/// Why a resume could not be honoured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ResumeReason {
    /// Events after the id were removed by retention.
    Expired,
    /// The id is ahead of anything this deployment has sequenced.
    Unknown,
    /// The id is not a Herald id.
    Malformed,
    /// The id belongs to an earlier incarnation of the sequence.
    Epoch,
}

impl ResumeReason {
    /// The reason as it appears on the wire and in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Expired => "expired",
            Self::Unknown => "unknown",
            Self::Malformed => "malformed",
            Self::Epoch => "epoch",
        }
    }
}

/// The retained range of a sequence: `earliest` is the first sequence still kept (or `head + 1`
/// when nothing is), `head` the last sequence assigned (0 before the first event).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// The sequence's incarnation.
    pub epoch: Epoch,
    /// First sequence still retained.
    pub earliest: u64,
    /// Last sequence assigned.
    pub head: u64,
}

/// What a connection that carried a Last-Event-ID is told first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResumeVerdict {
    /// Every event after the id will follow: replay from `after`.
    Recovered {
        /// The last sequence the client has.
        after: u64,
    },
    /// The events after the id cannot be replayed; only live events follow.
    NotRecovered {
        /// Why.
        reason: ResumeReason,
        /// The oldest id that can still be replayed from.
        earliest: EventId,
        /// The newest id.
        head: EventId,
    },
}

impl ResumeVerdict {
    /// Judges a Last-Event-ID against the retained range.
    pub fn judge(last_event_id: &str, bounds: Bounds) -> Self {
        match last_event_id.parse::<EventId>() {
            Ok(id) => Self::judge_id(id, bounds),
            Err(_) => Self::refuse(ResumeReason::Malformed, bounds),
        }
    }

    /// Judges an id against the retained range: also what a stream that is already replaying
    /// checks its position with, when retention may have moved past it.
    pub fn judge_id(id: EventId, bounds: Bounds) -> Self {
        let refuse = |reason| Self::refuse(reason, bounds);
        if id.epoch != bounds.epoch {
            refuse(ResumeReason::Epoch)
        } else if id.seq > bounds.head {
            refuse(ResumeReason::Unknown)
        } else if id.seq.saturating_add(1) < bounds.earliest {
            refuse(ResumeReason::Expired)
        } else {
            Self::Recovered { after: id.seq }
        }
    }

    fn refuse(reason: ResumeReason, bounds: Bounds) -> Self {
        Self::NotRecovered {
            reason,
            earliest: EventId::new(bounds.epoch, bounds.earliest.max(1)),
            head: EventId::new(bounds.epoch, bounds.head),
        }
    }

    /// The JSON data of the `herald.resume` control event.
    pub fn to_json(&self) -> String {
        #[derive(Serialize)]
        struct Wire<'a> {
            recovered: bool,
            #[serde(skip_serializing_if = "Option::is_none")]
            reason: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            earliest: Option<String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            head: Option<String>,
        }
        let wire = match self {
            Self::Recovered { .. } => Wire {
                recovered: true,
                reason: None,
                earliest: None,
                head: None,
            },
            Self::NotRecovered {
                reason,
                earliest,
                head,
            } => Wire {
                recovered: false,
                reason: Some(reason.as_str()),
                earliest: Some(earliest.to_string()),
                head: Some(head.to_string()),
            },
        };
        serde_json::to_string(&wire).expect("a struct of strings serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const E: Epoch = Epoch(0x5f3a09c2);

    #[test]
    fn ids_round_trip() {
        let id = EventId::new(E, 1042);
        assert_eq!(id.to_string(), "5f3a09c2-1042");
        assert_eq!("5f3a09c2-1042".parse::<EventId>(), Ok(id));
        assert_eq!(EventId::new(Epoch(1), 0).to_string(), "00000001-0");
    }

    #[test]
    fn malformed_ids_are_refused() {
        for bad in [
            "",
            "42",
            "5f3a09c2",
            "5f3a09c2-",
            "5f3a09c-1",
            "5f3a09c2x-1",
            "zzzzzzzz-1",
            "5f3a09c2--1",
            "5f3a09c2-+1",
            "5f3a09c2-1a",
            "5f3a09c2-99999999999999999999999",
        ] {
            assert_eq!(bad.parse::<EventId>(), Err(MalformedId), "{bad:?}");
        }
    }

    #[test]
    fn verdicts() {
        let b = Bounds {
            epoch: E,
            earliest: 10,
            head: 20,
        };
        let judge = |s: &str| ResumeVerdict::judge(s, b);
        assert_eq!(judge("5f3a09c2-9"), ResumeVerdict::Recovered { after: 9 });
        assert_eq!(judge("5f3a09c2-20"), ResumeVerdict::Recovered { after: 20 });
        let reason = |s: &str| match judge(s) {
            ResumeVerdict::NotRecovered { reason, .. } => Some(reason),
            ResumeVerdict::Recovered { .. } => None,
        };
        assert_eq!(reason("5f3a09c2-8"), Some(ResumeReason::Expired));
        assert_eq!(reason("5f3a09c2-21"), Some(ResumeReason::Unknown));
        assert_eq!(reason("00000001-15"), Some(ResumeReason::Epoch));
        assert_eq!(reason("garbage"), Some(ResumeReason::Malformed));
        assert_eq!(
            judge("5f3a09c2-8").to_json(),
            r#"{"recovered":false,"reason":"expired","earliest":"5f3a09c2-10","head":"5f3a09c2-20"}"#
        );
        assert_eq!(judge("5f3a09c2-9").to_json(), r#"{"recovered":true}"#);
    }

    #[test]
    fn an_empty_sequence_recovers_from_zero() {
        let b = Bounds {
            epoch: E,
            earliest: 1,
            head: 0,
        };
        assert_eq!(
            ResumeVerdict::judge("5f3a09c2-0", b),
            ResumeVerdict::Recovered { after: 0 }
        );
    }
}
