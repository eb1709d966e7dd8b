//! Topic names, topic patterns and the filter a connection subscribes with.
//!
//! A topic is 1–128 characters of `[A-Za-z0-9_.-]`, made of non-empty dot-separated levels
//! (`scores`, `scores.football.uk`). A pattern is a topic whose levels may also be `*` (exactly one
//! level) or, as the last level only, `>` (one or more levels) — the same wildcards as NATS subjects,
//! so a pattern maps one-to-one onto a subject filter in the distributed mode.

use std::{fmt, sync::Arc};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ValidationError;

/// The longest topic name accepted, in bytes.
pub const MAX_TOPIC_LEN: usize = 128;

/// A validated topic name. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(Arc<str>);

impl Topic {
    /// Validates `name` as a topic.
    pub fn new(name: &str) -> Result<Self, ValidationError> {
        if is_valid_topic(name) {
            Ok(Self(Arc::from(name)))
        } else {
            Err(ValidationError::Topic(truncate(name)))
        }
    }

    /// The topic name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_valid_topic(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_TOPIC_LEN && name.split('.').all(is_valid_level)
}

fn is_valid_level(level: &str) -> bool {
    !level.is_empty()
        && level
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Cuts untrusted input down before it is echoed in an error message.
fn truncate(s: &str) -> String {
    s.chars().take(MAX_TOPIC_LEN + 8).collect()
}

impl std::borrow::Borrow<str> for Topic {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Topic({:?})", &*self.0)
    }
}

impl Serialize for Topic {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Topic {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Topic::new(&s).map_err(serde::de::Error::custom)
    }
}

/// One level of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Name(Box<str>),
    /// `*`: exactly one level.
    One,
    /// `>`: one or more levels; only last.
    Rest,
}

/// A topic pattern with at least one wildcard level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPattern {
    source: Box<str>,
    levels: Vec<Level>,
}

impl TopicPattern {
    /// Parses a pattern. A string without wildcards is refused here: it is a [`Topic`].
    pub fn new(pattern: &str) -> Result<Self, ValidationError> {
        let err = || ValidationError::Pattern(truncate(pattern));
        if pattern.is_empty() || pattern.len() > MAX_TOPIC_LEN {
            return Err(err());
        }
        let parts: Vec<&str> = pattern.split('.').collect();
        let mut levels = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            levels.push(match *part {
                "*" => Level::One,
                ">" if i + 1 == parts.len() => Level::Rest,
                name if is_valid_level(name) => Level::Name(name.into()),
                _ => return Err(err()),
            });
        }
        if levels.iter().all(|l| matches!(l, Level::Name(_))) {
            return Err(err());
        }
        Ok(Self {
            source: pattern.into(),
            levels,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether `topic` matches this pattern.
    pub fn matches(&self, topic: &str) -> bool {
        let mut parts = topic.split('.');
        for level in &self.levels {
            match level {
                Level::Rest => return parts.next().is_some(),
                Level::One => {
                    if parts.next().is_none() {
                        return false;
                    }
                }
                Level::Name(name) => {
                    if parts.next() != Some(name) {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }
}

impl fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// Whether a grant covers a requested topic or pattern: every topic the request can match, the
/// grant matches too. Both are valid topics or patterns (checked by their parsers). A grant `a.*`
/// covers `a.b` and `a.*` but not `a.>` (which also matches `a.b.c`); `>` is covered only by a
/// `>` at the same level or above.
pub fn covers(grant: &str, requested: &str) -> bool {
    let mut want = requested.split('.');
    for level in grant.split('.') {
        let Some(asked) = want.next() else {
            return false;
        };
        match level {
            ">" => return true,
            "*" if asked != ">" => {}
            name if name == asked => {}
            _ => return false,
        }
    }
    want.next().is_none()
}

/// What a connection subscribes to: exact topics and patterns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicFilter {
    topics: Vec<Topic>,
    patterns: Vec<TopicPattern>,
}

impl TopicFilter {
    /// Builds a filter from query values; each is a topic or a pattern. Duplicates are merged.
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a str>) -> Result<Self, ValidationError> {
        let mut filter = Self::default();
        for value in values {
            if value.contains(['*', '>']) {
                let pattern = TopicPattern::new(value)?;
                if !filter.patterns.contains(&pattern) {
                    filter.patterns.push(pattern);
                }
            } else {
                filter.topics.push(Topic::new(value)?);
            }
        }
        filter.topics.sort();
        filter.topics.dedup();
        Ok(filter)
    }

    /// A filter on exactly these topics.
    pub fn topics(topics: impl IntoIterator<Item = Topic>) -> Self {
        let mut topics: Vec<Topic> = topics.into_iter().collect();
        topics.sort();
        topics.dedup();
        Self {
            topics,
            patterns: Vec::new(),
        }
    }

    /// The exact topics, sorted.
    pub fn exact(&self) -> &[Topic] {
        &self.topics
    }

    /// The patterns.
    pub fn patterns(&self) -> &[TopicPattern] {
        &self.patterns
    }

    /// Every topic and pattern the filter names, as written.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.topics
            .iter()
            .map(Topic::as_str)
            .chain(self.patterns.iter().map(TopicPattern::as_str))
    }

    /// How many topics and patterns the filter names (what the per-connection limit counts).
    pub fn len(&self) -> usize {
        self.topics.len() + self.patterns.len()
    }

    /// Whether the filter names nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether an event on `topic` passes the filter.
    pub fn matches(&self, topic: &str) -> bool {
        self.topics
            .binary_search_by(|t| t.as_str().cmp(topic))
            .is_ok()
            || self.patterns.iter().any(|p| p.matches(topic))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_follow_the_grammar() {
        for ok in [
            "a",
            "scores",
            "scores.football",
            "A-b_c.9",
            &"x".repeat(128),
        ] {
            assert!(Topic::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".a",
            "a.",
            "a..b",
            "a b",
            "a\nb",
            "a\rb",
            "a\0b",
            "é",
            "a*",
            "a.>",
            &"x".repeat(129),
        ] {
            assert!(Topic::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn patterns_match_levels() {
        let one = TopicPattern::new("scores.*").unwrap();
        assert!(one.matches("scores.uk"));
        assert!(!one.matches("scores"));
        assert!(!one.matches("scores.uk.london"));
        assert!(!one.matches("scoresx.uk"));
        let rest = TopicPattern::new("scores.>").unwrap();
        assert!(rest.matches("scores.uk"));
        assert!(rest.matches("scores.uk.london"));
        assert!(!rest.matches("scores"));
        let all = TopicPattern::new(">").unwrap();
        assert!(all.matches("anything.at.all"));
        let mid = TopicPattern::new("a.*.c").unwrap();
        assert!(mid.matches("a.b.c"));
        assert!(!mid.matches("a.b.d"));
        for bad in ["scores", "a.>.b", "a.**", "a.*x", "", "a\n.*"] {
            assert!(TopicPattern::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_grant_covers_only_what_it_matches() {
        for (grant, requested) in [
            ("a", "a"),
            ("a.*", "a.b"),
            ("a.*", "a.*"),
            ("a.>", "a.b.c"),
            ("a.>", "a.*"),
            ("a.>", "a.>"),
            ("a.>", "a.*.>"),
            (">", ">"),
            (">", "x"),
            ("*.b", "a.b"),
            ("*.>", "a.b"),
        ] {
            assert!(covers(grant, requested), "{grant} should cover {requested}");
        }
        for (grant, requested) in [
            ("a", "b"),
            ("a", "a.b"),
            ("a.b", "a"),
            ("a.*", "a.>"),
            ("a.*", ">"),
            ("a.*", "b"),
            ("a.*", "a"),
            ("a.*", "a.b.c"),
            ("a.>", "a"),
            ("a.>", ">"),
            ("a.b", "a.*"),
            ("*", ">"),
            ("*.b", "*.>"),
        ] {
            assert!(
                !covers(grant, requested),
                "{grant} must not cover {requested}"
            );
        }
        // Whatever a grant covers, it matches: checked against sample topics.
        let topics = ["a", "b", "a.b", "a.c", "a.b.c", "b.b", "x.y.z"];
        for grant in ["a", "a.*", "a.>", ">", "*.b", "*", "a.*.c"] {
            for requested in ["a", "a.b", "a.*", "a.>", ">", "*", "*.b", "a.b.c", "*.*"] {
                if !covers(grant, requested) {
                    continue;
                }
                let g = TopicFilter::parse([grant]).unwrap();
                let r = TopicFilter::parse([requested]).unwrap();
                for t in topics {
                    assert!(
                        !r.matches(t) || g.matches(t),
                        "{grant} covers {requested} but not {t}"
                    );
                }
            }
        }
    }

    #[test]
    fn filter_merges_duplicates_and_matches() {
        let f = TopicFilter::parse(["b", "a", "b", "x.*", "x.*"]).unwrap();
        assert_eq!(f.len(), 3);
        assert!(f.matches("a") && f.matches("b") && f.matches("x.y"));
        assert!(!f.matches("c") && !f.matches("x"));
        assert!(TopicFilter::parse(["ok", "bad topic"]).is_err());
    }
}
