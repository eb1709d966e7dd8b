//! Layered configuration: defaults, then an optional TOML file, then `HERALD_*` environment
//! variables, then command-line flags. Services declare their flags with clap (which reads the
//! environment variable of each flag); this module reads the file and the durations.

use std::{path::Path, time::Duration};

use anyhow::Context;
use serde::de::DeserializeOwned;

/// Reads a TOML config file into `T` (whose fields are all optional, with unknown keys refused).
pub fn from_file<T: DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))
}

/// Parses a duration such as `15s`, `500ms`, `7days` (humantime syntax).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

/// Parses a size such as `65536`, `64KiB`, `1MiB`, `2GiB`.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}: expected a number with an optional unit"))?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" | "k" => 1 << 10,
        "mib" | "m" => 1 << 20,
        "gib" | "g" => 1 << 30,
        other => {
            return Err(format!(
                "invalid size unit {other:?}: use B, KiB, MiB or GiB"
            ));
        }
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

/// Serde helpers for durations written as strings (`"15s"`).
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    /// Deserializes an optional humantime duration.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| super::parse_duration(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// Serde helpers for sizes written as strings or numbers (`"64KiB"`, `65536`).
pub mod bytes {
    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Number(u64),
        Text(String),
    }

    /// Deserializes an optional size.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        Option::<Size>::deserialize(d)?
            .map(|s| match s {
                Size::Number(n) => Ok(n),
                Size::Text(t) => super::parse_bytes(&t).map_err(serde::de::Error::custom),
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_bytes("65536"), Ok(65536));
        assert_eq!(parse_bytes("64KiB"), Ok(65536));
        assert_eq!(parse_bytes("1 MiB"), Ok(1 << 20));
        assert!(parse_bytes("1 PB").is_err());
        assert!(parse_bytes("x").is_err());
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert!(parse_duration("soon").is_err());
    }
}

/// A limit that can be switched off: `None` when given as `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit<T>(pub Option<T>);

/// Parses a duration limit: `15s`, `7days`, or `off`.
pub fn parse_duration_limit(s: &str) -> Result<Limit<Duration>, String> {
    if s.trim().eq_ignore_ascii_case("off") {
        return Ok(Limit(None));
    }
    parse_duration(s).map(|d| Limit(Some(d)))
}

/// Parses a size limit: `64KiB`, `1GiB`, or `off`.
pub fn parse_bytes_limit(s: &str) -> Result<Limit<u64>, String> {
    if s.trim().eq_ignore_ascii_case("off") {
        return Ok(Limit(None));
    }
    parse_bytes(s).map(|b| Limit(Some(b)))
}
