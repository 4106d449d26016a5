//! Human durations (`500ms`, `10s`, `5m`, `1h`) as they appear in config and task files.
//!
//! Used by `config` and `task` when deserialising; printed back by `status` and `agents`.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written as text (`"10s"`) or as a bare number of seconds (`10`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dur(pub Duration);

impl Dur {
    pub const fn secs(s: u64) -> Self {
        Dur(Duration::from_secs(s))
    }
    pub const fn millis(ms: u64) -> Self {
        Dur(Duration::from_millis(ms))
    }
}

/// The shortest `timeout` or `idle_timeout` an agent or a task may have: an agent CLI does not
/// even start in less, so a shorter one only fails every attempt.
pub const MIN_TIMEOUT: Duration = Duration::from_millis(100);

/// The longest duration dirigent takes anywhere (a timeout, a wait, an interval): a year.
/// Longer ones are refused when parsed, so no deadline computed from one can overflow.
pub const MAX: Duration = Duration::from_secs(366 * 24 * 60 * 60);

/// Why a duration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration")]
    Empty,
    #[error("invalid duration `{text}` ({cause}); write it like `500ms`, `10s` or `5m`")]
    Invalid { text: String, cause: String },
    #[error("`{text}`: {limit}")]
    TooLong { text: String, limit: TooLong },
}

/// A duration past [`MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("durations are limited to 366 days")]
pub struct TooLong;

/// Parses `500ms`, `10s`, `5m`, `1h30m`, `2d`; a bare number means seconds. At most [`MAX`].
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let t = text.trim();
    if t.is_empty() {
        return Err(DurationError::Empty);
    }
    let d = match t.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(t).map_err(|e| DurationError::Invalid {
            text: t.to_string(),
            cause: cause(t, &e),
        })?,
    };
    // Every time dirigent keeps is in milliseconds: `1ns` or `1500us` would be read as 0 or
    // cut short somewhere.
    if d.subsec_nanos() % 1_000_000 != 0 {
        return Err(DurationError::Invalid {
            text: t.to_string(),
            cause: "dirigent counts time in whole milliseconds".to_string(),
        });
    }
    within_max(d).map_err(|limit| DurationError::TooLong {
        text: t.to_string(),
        limit,
    })
}

/// What was wrong, in the user's terms: the parser's own words name byte offsets (`expected
/// number at 0`).
fn cause(text: &str, e: &humantime::DurationError) -> String {
    use humantime::DurationError as E;
    match e {
        E::InvalidCharacter(at) | E::NumberExpected(at) => {
            let rest = text.get(*at..).unwrap_or("");
            match rest.chars().next() {
                Some(c) if *at == 0 => format!("it must start with a number, not `{c}`"),
                Some(_) => format!("a number and a unit were expected at `{rest}`"),
                None => "a number and a unit were expected".to_string(),
            }
        }
        E::UnknownUnit { unit, .. } => {
            format!("unknown unit `{unit}`: use ms, s, m, h or d")
        }
        E::NumberOverflow => "the number is too large".to_string(),
        E::Empty => "it is empty".to_string(),
    }
}

/// `d` if it is at most [`MAX`].
pub fn within_max(d: Duration) -> Result<Duration, TooLong> {
    if d > MAX { Err(TooLong) } else { Ok(d) }
}

/// Formats a duration compactly for humans: `820ms`, `12.3s`, `4m05s`, `2h10m`.
pub fn short(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else if ms < 3_600_000 {
        format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60)
    } else {
        format!("{}h{:02}m", ms / 3_600_000, (ms / 60_000) % 60)
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&humantime::format_duration(self.0).to_string())
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"500ms\", \"10s\" or \"5m\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Dur, E> {
                parse(v).map(Dur).map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Dur, E> {
                within_max(Duration::from_secs(v))
                    .map(Dur)
                    .map_err(|e| E::custom(format!("{v} seconds: {e}")))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Dur, E> {
                match u64::try_from(v) {
                    Ok(s) => self.visit_u64(s),
                    Err(_) => Err(E::custom("a duration cannot be negative")),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// A Unix time in milliseconds as an RFC 3339 UTC time to the second: `2026-11-21T17:30:00Z`.
pub fn clock(unix_ms: u64) -> String {
    // RFC 3339 ends at the year 9999 (the formatter fails past it): a timestamp from a forged
    // or broken record is shown as that, never a panic.
    const LAST_MS: u64 = 253_402_300_799_000;
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + Duration::from_millis(unix_ms.min(LAST_MS)),
    )
    .to_string()
}

/// `now + d`, saturating far in the future instead of overflowing (a reset time a CLI printed
/// can be anything).
pub fn later(now: tokio::time::Instant, d: Duration) -> tokio::time::Instant {
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(60 * 60 * 24 * 365 * 30))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clock_reading_past_the_year_9999_is_shown_as_its_end() {
        assert_eq!(clock(0), "1970-01-01T00:00:00Z");
        assert_eq!(clock(u64::MAX), "9999-12-31T23:59:59Z");
        assert_eq!(clock(300_000_000_000_000), "9999-12-31T23:59:59Z");
    }

    #[test]
    fn parses_the_documented_forms() {
        let cases = [
            ("500ms", 500),
            ("10s", 10_000),
            ("5m", 300_000),
            ("1h", 3_600_000),
            ("1m30s", 90_000),
            ("7", 7_000),
        ];
        for (text, ms) in cases {
            assert_eq!(parse(text).unwrap(), Duration::from_millis(ms), "{text}");
        }
    }

    #[test]
    fn durations_finer_than_a_millisecond_are_refused() {
        for text in ["1ns", "999us", "1500us", "1s 1ns"] {
            let e = parse(text).unwrap_err().to_string();
            assert!(
                e.contains("dirigent counts time in whole milliseconds"),
                "{text}: expected the millisecond rule, got {e}"
            );
        }
        assert_eq!(parse("2000us").unwrap(), Duration::from_millis(2));
        assert_eq!(parse("0ns").unwrap(), Duration::ZERO);
    }

    #[test]
    fn durations_past_a_year_are_refused_not_overflowed() {
        for text in [
            "18446744073709551615",
            "18446744073709551615s",
            "400d",
            "99999999h",
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(
                err.contains("limited to 366 days") || err.contains("invalid duration"),
                "{text}: {err}"
            );
        }
        assert_eq!(parse("366d").unwrap(), MAX);
        let from_number: Result<Dur, _> = serde_json::from_str("18446744073709551615");
        let err = from_number.unwrap_err().to_string();
        assert!(err.contains("limited to 366 days"), "{err}");
    }

    #[test]
    fn rejects_nonsense_with_a_hint() {
        let err = parse("ten minutes").unwrap_err().to_string();
        assert!(
            err.contains("`ten minutes`") && err.contains("10s"),
            "{err}"
        );
        assert!(parse("").is_err());
        // (text, what the error says was wrong)
        let cases = [
            ("forever", "(it must start with a number, not `f`)"),
            ("-5s", "(it must start with a number, not `-`)"),
            ("5 s x", "(a number and a unit were expected at `x`)"),
            ("5parsecs", "(unknown unit `parsecs`: use ms, s, m, h or d)"),
        ];
        for (text, want) in cases {
            let err = parse(text).unwrap_err().to_string();
            assert!(
                err.contains(want) && !err.contains(" at 0"),
                "{text}: expected {want}, got {err}"
            );
        }
    }

    #[test]
    fn short_format() {
        assert_eq!(short(Duration::from_millis(820)), "820ms");
        assert_eq!(short(Duration::from_millis(12_340)), "12.3s");
        assert_eq!(short(Duration::from_secs(245)), "4m05s");
        assert_eq!(short(Duration::from_secs(7800)), "2h10m");
    }
}
