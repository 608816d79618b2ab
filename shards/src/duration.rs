//! Durations as operators write them in configuration and on command lines:
//! plain seconds with an optional fraction (`5`, `0.1`, qpidd's style), or a number
//! with a unit (`10ms`, `1.5s`, `2m`).
//!
//! Parsing is exact decimal arithmetic, not floating point, so `0.1` is exactly
//! 100 ms and [`format_duration`]'s output parses back to the same `Duration`.
//!
//! ```
//! use std::time::Duration;
//! use tandem_shards::duration::{format_duration, parse_duration};
//!
//! assert_eq!(parse_duration("0.1").unwrap(), Duration::from_millis(100));
//! assert_eq!(parse_duration(" 2m ").unwrap(), Duration::from_secs(120));
//! assert_eq!(format_duration(Duration::from_millis(1500)), "1.5s");
//! ```

use std::time::Duration;

/// The units [`parse_duration`] accepts, with their length in nanoseconds.
const UNITS: [(&str, u128); 7] = [
    ("ns", 1),
    ("us", 1_000),
    ("µs", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

/// Fraction digits beyond this are below a nanosecond for every unit and are dropped
/// (it also keeps the arithmetic inside `u128`).
const MAX_FRACTION_DIGITS: usize = 20;

/// Why a string is not a duration. Each message quotes the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Nothing but whitespace.
    #[error("empty duration: expected seconds (e.g. 1.5) or a number with a unit ns, us, ms, s, m or h (e.g. 100ms)")]
    Empty,
    /// A minus sign.
    #[error("duration '{text}' is negative: durations must be 0 or more")]
    Negative {
        /// The text as given.
        text: String,
    },
    /// No decimal number where one was expected (includes `NaN`, `inf`, `1e3`, `1.2.3`).
    #[error("duration '{text}' is not a number: expected seconds (e.g. 1.5) or a number with a unit (e.g. 100ms)")]
    NotANumber {
        /// The text as given.
        text: String,
    },
    /// A suffix that is not one of `ns`, `us`, `ms`, `s`, `m`, `h`.
    #[error("unknown unit '{unit}' in duration '{text}': use ns, us, ms, s, m or h")]
    UnknownUnit {
        /// The suffix after the number.
        unit: String,
        /// The text as given.
        text: String,
    },
    /// More than `Duration` can hold (about 584 billion years).
    #[error("duration '{text}' is too large")]
    TooLarge {
        /// The text as given.
        text: String,
    },
}

/// Parses `5`, `0.1`, `1.5s`, `100ms`, `10us`, `10ns`, `2m` (minutes) or `1h`.
///
/// A number without a unit is seconds. Surrounding whitespace, and whitespace between
/// the number and the unit, is ignored. A leading `+` is allowed; a `-` is an error.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let text = s.trim();
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    let owned = || text.to_string();
    if text.starts_with('-') {
        return Err(DurationError::Negative { text: owned() });
    }
    let unsigned = text.strip_prefix('+').unwrap_or(text);
    let number_len = unsigned
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(unsigned.len());
    let (number, unit) = unsigned.split_at(number_len);
    let unit = unit.trim_start();
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
        return Err(DurationError::NotANumber { text: owned() });
    }
    let unit_nanos = match unit {
        "" => 1_000_000_000,
        _ => match UNITS.iter().find(|(name, _)| *name == unit) {
            Some((_, nanos)) => *nanos,
            None => {
                return Err(DurationError::UnknownUnit {
                    unit: unit.to_string(),
                    text: owned(),
                })
            }
        },
    };
    let too_large = || DurationError::TooLarge { text: owned() };
    let whole: u128 = match whole {
        "" => 0,
        digits => digits.parse().map_err(|_| too_large())?,
    };
    let fraction = &fraction[..fraction.len().min(MAX_FRACTION_DIGITS)];
    let fraction_nanos = match fraction {
        "" => 0,
        digits => {
            let value: u128 = digits.parse().map_err(|_| too_large())?;
            // len <= 20, so 10^len and value * unit_nanos (< 10^20 * 3.6e12) fit in u128.
            value * unit_nanos / 10u128.pow(digits.len() as u32)
        }
    };
    let nanos = whole
        .checked_mul(unit_nanos)
        .and_then(|n| n.checked_add(fraction_nanos))
        .ok_or_else(too_large)?;
    let secs = u64::try_from(nanos / 1_000_000_000).map_err(|_| too_large())?;
    // The remainder is below 10^9, so it fits in u32.
    let subsec = (nanos % 1_000_000_000) as u32;
    Ok(Duration::new(secs, subsec))
}

/// Writes a duration the way an operator would: `0s`, `100ms`, `1.5s`, `2m`, `1h`,
/// `250us`, `7ns`. The result parses back to the same `Duration` with [`parse_duration`].
pub fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".to_string();
    }
    let nanos = d.as_nanos();
    for (unit, per) in [("h", 3_600_000_000_000u128), ("m", 60_000_000_000)] {
        if nanos.is_multiple_of(per) {
            return format!("{}{unit}", nanos / per);
        }
    }
    let (unit, per) = match nanos {
        n if n >= 1_000_000_000 => ("s", 1_000_000_000u128),
        n if n >= 1_000_000 => ("ms", 1_000_000),
        n if n >= 1_000 => ("us", 1_000),
        _ => ("ns", 1),
    };
    let whole = nanos / per;
    let rest = nanos % per;
    if rest == 0 {
        return format!("{whole}{unit}");
    }
    let width = per.ilog10() as usize;
    let fraction = format!("{rest:0width$}");
    format!("{whole}.{}{unit}", fraction.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Duration {
        match parse_duration(s) {
            Ok(d) => d,
            Err(e) => panic!("{s:?} should parse: {e}"),
        }
    }

    #[test]
    fn plain_numbers_are_seconds() {
        assert_eq!(ok("5"), Duration::from_secs(5));
        assert_eq!(ok("0"), Duration::ZERO);
        assert_eq!(ok("0.1"), Duration::from_millis(100));
        assert_eq!(ok("1.5"), Duration::from_millis(1500));
        assert_eq!(ok(".5"), Duration::from_millis(500));
        assert_eq!(ok("5."), Duration::from_secs(5));
        assert_eq!(ok("+2"), Duration::from_secs(2));
    }

    #[test]
    fn every_unit() {
        assert_eq!(ok("10ns"), Duration::from_nanos(10));
        assert_eq!(ok("10us"), Duration::from_micros(10));
        assert_eq!(ok("10µs"), Duration::from_micros(10));
        assert_eq!(ok("10ms"), Duration::from_millis(10));
        assert_eq!(ok("10s"), Duration::from_secs(10));
        assert_eq!(ok("2m"), Duration::from_secs(120));
        assert_eq!(ok("1h"), Duration::from_secs(3600));
    }

    #[test]
    fn fractions_with_units_are_exact() {
        assert_eq!(ok("1.5ms"), Duration::from_micros(1500));
        assert_eq!(ok("0.1s"), Duration::from_millis(100));
        assert_eq!(ok("0.5m"), Duration::from_secs(30));
        assert_eq!(ok("0.001h"), Duration::from_millis(3600));
        assert_eq!(
            ok("0.333333333333333333333333s"),
            Duration::new(0, 333_333_333)
        );
        assert_eq!(ok("1.9ns"), Duration::from_nanos(1));
    }

    #[test]
    fn whitespace_is_ignored() {
        assert_eq!(ok("  10s\n"), Duration::from_secs(10));
        assert_eq!(ok("10 ms"), Duration::from_millis(10));
        assert_eq!(ok("\t0.25 "), Duration::from_millis(250));
    }

    #[test]
    fn empty_is_an_error() {
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        assert_eq!(parse_duration("  "), Err(DurationError::Empty));
    }

    #[test]
    fn negative_is_an_error_naming_the_text() {
        let e = parse_duration(" -1s").unwrap_err();
        assert_eq!(e, DurationError::Negative { text: "-1s".into() });
        assert!(e.to_string().contains("'-1s'"), "{e}");
        assert!(matches!(
            parse_duration("-0"),
            Err(DurationError::Negative { .. })
        ));
    }

    #[test]
    fn non_numbers_are_errors() {
        for s in [
            "NaN", "nan", "inf", "abc", ".", "s", "ms", "1.2.3", "1e3", "..5",
        ] {
            match parse_duration(s) {
                Err(DurationError::NotANumber { text }) => assert_eq!(text, s),
                Err(DurationError::UnknownUnit { text, .. }) => assert_eq!(text, s),
                other => panic!("{s:?}: {other:?}"),
            }
        }
        assert!(matches!(
            parse_duration("NaN"),
            Err(DurationError::NotANumber { .. })
        ));
    }

    #[test]
    fn unknown_units_are_errors_naming_the_unit() {
        let e = parse_duration("10sec").unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown unit 'sec' in duration '10sec': use ns, us, ms, s, m or h"
        );
        for s in ["10d", "10S", "10 minutes", "1e3", "5s5"] {
            assert!(
                matches!(parse_duration(s), Err(DurationError::UnknownUnit { .. })),
                "{s}"
            );
        }
    }

    #[test]
    fn too_large_is_an_error() {
        assert!(matches!(
            parse_duration("99999999999999999999999999999999999999999"),
            Err(DurationError::TooLarge { .. })
        ));
        assert!(matches!(
            parse_duration("18446744073709551616"),
            Err(DurationError::TooLarge { .. })
        ));
        assert!(matches!(
            parse_duration("5124095576030432h"),
            Err(DurationError::TooLarge { .. })
        ));
        assert_eq!(ok("18446744073709551615"), Duration::from_secs(u64::MAX));
    }

    #[test]
    fn format_picks_a_readable_unit() {
        assert_eq!(format_duration(Duration::ZERO), "0s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_duration(Duration::from_millis(100)), "100ms");
        assert_eq!(format_duration(Duration::from_secs(10)), "10s");
        assert_eq!(format_duration(Duration::from_secs(120)), "2m");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_secs(7200)), "2h");
        assert_eq!(format_duration(Duration::from_secs(5400)), "90m");
        assert_eq!(format_duration(Duration::from_micros(250)), "250us");
        assert_eq!(format_duration(Duration::from_micros(1500)), "1.5ms");
        assert_eq!(format_duration(Duration::from_nanos(7)), "7ns");
        assert_eq!(format_duration(Duration::new(1, 1)), "1.000000001s");
    }

    #[test]
    fn format_round_trips() {
        for d in [
            Duration::ZERO,
            Duration::from_nanos(1),
            Duration::from_nanos(999),
            Duration::from_nanos(1_001),
            Duration::from_micros(999_999),
            Duration::from_millis(100),
            Duration::new(2, 500),
            Duration::from_secs(61),
            Duration::from_secs(3660),
            Duration::MAX,
        ] {
            let text = format_duration(d);
            assert_eq!(parse_duration(&text), Ok(d), "{d:?} -> {text}");
        }
    }
}
