//! The units options are written in, as clap value parsers: `15s`, `64KiB`, `off`, counts in a
//! range. A parser's error becomes clap's usage error, which names the option and exits with 2.

use std::{ops::RangeInclusive, time::Duration};

/// A limit that can be switched off: `None` when given as `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit<T>(pub Option<T>);

/// A duration such as `15s`, `500ms`, `7days` (humantime syntax); zero allowed.
pub fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

/// A duration above zero (an interval, a timeout, a window).
pub fn positive_duration(s: &str) -> Result<Duration, String> {
    match duration(s)? {
        d if d.is_zero() => Err("must be above zero".into()),
        d => Ok(d),
    }
}

/// A duration limit above zero, or `off`.
pub fn duration_limit(s: &str) -> Result<Limit<Duration>, String> {
    off_or(s, positive_duration)
}

/// A size such as `65536`, `64KiB`, `1MiB`, `2GiB`; zero allowed.
pub fn bytes(s: &str) -> Result<u64, String> {
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

/// A size of memory, as a `usize`; zero allowed.
pub fn size(s: &str) -> Result<usize, String> {
    usize::try_from(bytes(s)?).map_err(|_| format!("size {s:?} is too large for this machine"))
}

/// A size of memory above zero.
pub fn positive_size(s: &str) -> Result<usize, String> {
    match size(s)? {
        0 => Err("must be above zero".into()),
        n => Ok(n),
    }
}

/// A size limit above zero, or `off`.
pub fn bytes_limit(s: &str) -> Result<Limit<u64>, String> {
    off_or(s, |s| match bytes(s)? {
        0 => Err("must be above zero (or `off`)".into()),
        n => Ok(n),
    })
}

/// A whole number in `range`.
pub fn count(
    range: RangeInclusive<usize>,
) -> impl Fn(&str) -> Result<usize, String> + Clone + Send + Sync + 'static {
    move |s| {
        let n: usize = s
            .trim()
            .parse()
            .map_err(|_| "must be a whole number".to_owned())?;
        if range.contains(&n) {
            Ok(n)
        } else if *range.end() == usize::MAX {
            Err(format!("must be at least {}", range.start()))
        } else {
            Err(format!("must be {} to {}", range.start(), range.end()))
        }
    }
}

/// A whole number of at least one.
pub fn at_least_one() -> impl Fn(&str) -> Result<usize, String> + Clone + Send + Sync + 'static {
    count(1..=usize::MAX)
}

/// A count of at least one, or `off`.
pub fn count_limit(s: &str) -> Result<Limit<usize>, String> {
    off_or(s, at_least_one())
}

/// A secret that is not empty.
pub fn secret(s: &str) -> Result<crate::Secret, String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    Ok(crate::Secret::new(s))
}

fn off_or<T>(s: &str, parse: impl Fn(&str) -> Result<T, String>) -> Result<Limit<T>, String> {
    if s.trim().eq_ignore_ascii_case("off") {
        return Ok(Limit(None));
    }
    parse(s).map(|v| Limit(Some(v)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(bytes("65536"), Ok(65536));
        assert_eq!(bytes("64KiB"), Ok(65536));
        assert_eq!(bytes("1 MiB"), Ok(1 << 20));
        assert!(bytes("1 PB").is_err());
        assert!(bytes("x").is_err());
        assert_eq!(duration("15s"), Ok(Duration::from_secs(15)));
        assert!(duration("soon").is_err());
    }

    #[test]
    fn zero_is_refused_where_it_means_nothing() {
        assert_eq!(duration("0s"), Ok(Duration::ZERO));
        assert_eq!(positive_duration("0s"), Err("must be above zero".into()));
        assert_eq!(duration_limit("off"), Ok(Limit(None)));
        assert!(duration_limit("0s").is_err());
        assert_eq!(size("0"), Ok(0));
        assert!(positive_size("0").is_err());
        assert!(bytes_limit("0").is_err());
        assert_eq!(bytes_limit("OFF"), Ok(Limit(None)));
        assert_eq!(count(1..=5)("0"), Err("must be 1 to 5".into()));
        assert_eq!(count(1..=5)("5"), Ok(5));
        assert_eq!(at_least_one()("0"), Err("must be at least 1".into()));
        assert!(at_least_one()("-1").is_err());
        assert!(secret("").is_err());
    }
}
