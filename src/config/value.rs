//! Turning one option's raw value — command-line text or a TOML value — into a typed
//! value. Each parser accepts both forms, so the file and the command line agree on
//! what is valid, and on rejection returns what the option allows, for the message.

use std::net::Ipv6Addr;
use std::str::FromStr;
use std::time::Duration;

use tandem_shards::duration::parse_duration;
use tandem_shards::url::BrokerUrl;

use super::UnknownChoice;

/// An option's value as the user gave it.
#[derive(Clone, Copy)]
pub(super) enum Raw<'a> {
    /// From the command line, or a built-in default.
    Text(&'a str),
    /// From the config file.
    Toml(&'a toml::Value),
}

/// What an option allows, when a value is rejected.
pub(super) type Rejection = String;

impl<'a> Raw<'a> {
    /// The value as an error message quotes it: text in quotes, TOML values as TOML.
    pub fn quoted(&self) -> String {
        match self.text() {
            Some(text) => format!("'{text}'"),
            None => self.as_text(),
        }
    }

    /// Command-line text, or a TOML string; `None` for other TOML types.
    fn text(&self) -> Option<&'a str> {
        match self {
            Raw::Text(text) => Some(text),
            Raw::Toml(toml::Value::String(text)) => Some(text),
            Raw::Toml(_) => None,
        }
    }

    /// The value as text; other TOML types as TOML writes them, so that parsing them
    /// as text gives the right complaint.
    fn as_text(&self) -> String {
        match self {
            Raw::Text(text) => text.to_string(),
            Raw::Toml(toml::Value::String(text)) => text.clone(),
            Raw::Toml(value) => value.to_string(),
        }
    }
}

/// A whole number from `min` to `max`: command-line text, a TOML integer, or a TOML
/// string holding one.
pub(super) fn number<T: TryFrom<u64>>(raw: Raw<'_>, min: u64, max: u64) -> Result<T, Rejection> {
    let unbounded = max == u64::MAX;
    let not_a_number = || match (min, unbounded) {
        (0, true) => "must be a whole number, 0 or more".to_string(),
        (_, true) => format!("must be a whole number of at least {min}"),
        (_, false) => format!("must be a whole number from {min} to {max}"),
    };
    let n = match raw {
        Raw::Toml(toml::Value::Integer(n)) => u64::try_from(*n).map_err(|_| not_a_number())?,
        _ => match raw.text() {
            Some(text) => {
                let text = text.trim();
                if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(not_a_number());
                }
                text.parse::<u64>().map_err(|_| not_a_number())?
            }
            None => return Err(not_a_number()),
        },
    };
    if n < min || n > max {
        return Err(if unbounded {
            format!("must be at least {min}")
        } else {
            not_a_number()
        });
    }
    T::try_from(n).map_err(|_| not_a_number())
}

/// yes/no, true/false, on/off or 1/0 in any case; or a TOML boolean.
pub(super) fn boolean(raw: Raw<'_>) -> Result<bool, Rejection> {
    let rejection = || "must be yes or no (also accepted: true/false, on/off, 1/0)".to_string();
    if let Raw::Toml(toml::Value::Boolean(b)) = raw {
        return Ok(*b);
    }
    let text = raw.text().ok_or_else(rejection)?;
    match text.trim().to_ascii_lowercase().as_str() {
        "yes" | "true" | "on" | "1" => Ok(true),
        "no" | "false" | "off" | "0" => Ok(false),
        _ => Err(rejection()),
    }
}

/// Seconds with an optional fraction, or a number with a unit; a TOML number is seconds.
pub(super) fn duration(raw: Raw<'_>) -> Result<Duration, Rejection> {
    // Numbers go through the text parser too (Rust writes floats without exponents),
    // so that 0.1 is exactly 100ms and negative or NaN values get its messages.
    let text = match raw {
        Raw::Toml(toml::Value::Integer(n)) => n.to_string(),
        Raw::Toml(toml::Value::Float(f)) => f.to_string(),
        _ => match raw.text() {
            Some(text) => text.to_string(),
            None => {
                return Err(
                    "must be a duration: a number of seconds (e.g. 1.5) or a string \
                            with a unit ns, us, ms, s, m or h (e.g. \"100ms\")"
                        .to_string(),
                )
            }
        },
    };
    parse_duration(&text).map_err(|e| e.to_string())
}

/// One of a fixed set of names (an enum's `FromStr`).
pub(super) fn choice<T: FromStr<Err = UnknownChoice>>(raw: Raw<'_>) -> Result<T, Rejection> {
    raw.as_text()
        .parse()
        .map_err(|e: UnknownChoice| format!("must be one of {}", e.allowed.join(", ")))
}

/// A broker URL. The rejection names the offending part of the URL, never the password.
pub(super) fn url(raw: Raw<'_>) -> Result<BrokerUrl, Rejection> {
    match raw.text() {
        Some(text) => text
            .parse()
            .map_err(|e: tandem_shards::url::UrlError| e.to_string()),
        None => Err("must be a broker URL string: [amqp:][user[/password]@]host[:port],...".into()),
    }
}

/// Non-empty text, trimmed: user names, paths.
pub(super) fn text(raw: Raw<'_>) -> Result<String, Rejection> {
    match raw.text().map(str::trim) {
        Some(text) if !text.is_empty() => Ok(text.to_string()),
        _ => Err("must be a non-empty string".into()),
    }
}

/// Any text, as given: passwords may start or end with spaces.
pub(super) fn secret(raw: Raw<'_>) -> Result<String, Rejection> {
    raw.text()
        .map(str::to_string)
        .ok_or_else(|| "must be a string".into())
}

/// The listening address: an IPv4 or IPv6 address or a host name. IPv6 may be given in
/// brackets; they are removed so that `(interface, port)` works with `ToSocketAddrs`.
pub(super) fn interface(raw: Raw<'_>) -> Result<String, Rejection> {
    let rejection =
        || "must be an IP address or a host name, e.g. 0.0.0.0, ::1 or localhost".to_string();
    let text = raw.text().map(str::trim).ok_or_else(rejection)?;
    let host = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    let name_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_');
    let valid = if host.contains(':') {
        host.parse::<Ipv6Addr>().is_ok()
    } else {
        !host.is_empty() && !host.starts_with('-') && host.chars().all(name_char)
    };
    if valid {
        Ok(host.to_string())
    } else {
        Err(rejection())
    }
}

/// qpidd's `--log-enable` levels, as a `tracing` level filter. `notice` is between info
/// and warning in qpidd, and `critical` above error; tracing has neither, so they map
/// to the nearest level that still shows them.
pub(super) fn log_level(raw: Raw<'_>) -> Result<String, Rejection> {
    let rejection = || {
        "must be one of trace+, debug+, info+, notice+, warning+, error+, critical+ \
         (the '+' may be left out)"
            .to_string()
    };
    let text = raw
        .text()
        .ok_or_else(rejection)?
        .trim()
        .to_ascii_lowercase();
    let level = text.strip_suffix('+').unwrap_or(&text);
    let filter = match level {
        "trace" => "trace",
        "debug" => "debug",
        "info" | "notice" => "info",
        "warning" => "warn",
        "error" | "critical" => "error",
        _ => return Err(rejection()),
    };
    Ok(filter.to_string())
}

/// A SASL mechanism name (RFC 4422: up to 20 letters, digits, `-`, `_`), upper-cased.
pub(super) fn mechanism(raw: Raw<'_>) -> Result<String, Rejection> {
    let rejection = || "must be a SASL mechanism name such as PLAIN or ANONYMOUS".to_string();
    let text = raw.text().map(str::trim).ok_or_else(rejection)?;
    let valid_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    if text.is_empty() || text.len() > 20 || !text.chars().all(valid_char) {
        return Err(rejection());
    }
    Ok(text.to_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toml(text: &str) -> toml::Value {
        match format!("v = {text}").parse::<toml::Table>() {
            Ok(mut table) => table.remove("v").unwrap_or(toml::Value::Boolean(false)),
            Err(e) => panic!("bad TOML in test: {e}"),
        }
    }

    #[test]
    fn numbers_from_text_and_toml() {
        assert_eq!(number::<u16>(Raw::Text(" 5672 "), 0, 65535), Ok(5672));
        assert_eq!(number::<u16>(Raw::Toml(&toml("5672")), 0, 65535), Ok(5672));
        assert_eq!(
            number::<u16>(Raw::Toml(&toml("\"5672\"")), 0, 65535),
            Ok(5672)
        );
        assert_eq!(
            number::<u64>(Raw::Toml(&toml("104_857_600")), 0, u64::MAX),
            Ok(104_857_600)
        );
    }

    #[test]
    fn number_rejections_say_what_is_allowed() {
        fn port(raw: Raw<'_>) -> Result<u16, Rejection> {
            number(raw, 0, 65535)
        }
        let allowed = Err("must be a whole number from 0 to 65535".to_string());
        assert_eq!(port(Raw::Text("abc")), allowed);
        assert_eq!(port(Raw::Text("-1")), allowed);
        assert_eq!(port(Raw::Text("+1")), allowed);
        assert_eq!(port(Raw::Text("")), allowed);
        assert_eq!(port(Raw::Text("99999999999999999999999")), allowed);
        assert_eq!(port(Raw::Toml(&toml("1.5"))), allowed);
        assert_eq!(port(Raw::Toml(&toml("-1"))), allowed);
        assert_eq!(port(Raw::Toml(&toml("true"))), allowed);
        assert_eq!(port(Raw::Text("65536")), allowed);
        assert_eq!(
            number::<usize>(Raw::Text("0"), 1, u64::MAX),
            Err("must be at least 1".to_string())
        );
        assert_eq!(
            number::<usize>(Raw::Text("x"), 1, u64::MAX),
            Err("must be a whole number of at least 1".to_string())
        );
        assert_eq!(
            number::<u64>(Raw::Text("x"), 0, u64::MAX),
            Err("must be a whole number, 0 or more".to_string())
        );
    }

    #[test]
    fn booleans_in_every_spelling() {
        for yes in ["yes", "YES", "true", "True", "on", "1", " yes "] {
            assert_eq!(boolean(Raw::Text(yes)), Ok(true), "{yes}");
            assert_eq!(
                boolean(Raw::Toml(&toml(&format!("{yes:?}")))),
                Ok(true),
                "{yes}"
            );
        }
        for no in ["no", "No", "false", "FALSE", "off", "0"] {
            assert_eq!(boolean(Raw::Text(no)), Ok(false), "{no}");
        }
        assert_eq!(boolean(Raw::Toml(&toml("true"))), Ok(true));
        assert_eq!(boolean(Raw::Toml(&toml("false"))), Ok(false));
        assert!(boolean(Raw::Text("maybe")).is_err());
        assert!(boolean(Raw::Text("")).is_err());
        assert!(boolean(Raw::Toml(&toml("1"))).is_err());
    }

    #[test]
    fn durations_from_text_and_toml_numbers() {
        assert_eq!(duration(Raw::Text("10ms")), Ok(Duration::from_millis(10)));
        assert_eq!(duration(Raw::Toml(&toml("5"))), Ok(Duration::from_secs(5)));
        assert_eq!(
            duration(Raw::Toml(&toml("0.1"))),
            Ok(Duration::from_millis(100))
        );
        assert_eq!(
            duration(Raw::Toml(&toml("\"1.5s\""))),
            Ok(Duration::from_millis(1500))
        );
        assert!(duration(Raw::Toml(&toml("-1"))).is_err_and(|e| e.contains("negative")));
        assert!(duration(Raw::Toml(&toml("nan"))).is_err());
        assert!(duration(Raw::Toml(&toml("inf"))).is_err());
        assert_eq!(
            duration(Raw::Toml(&toml("1e-7"))),
            Ok(Duration::from_nanos(100))
        );
        assert!(duration(Raw::Toml(&toml("true"))).is_err_and(|e| e.contains("must be a duration")));
        assert!(duration(Raw::Text("10sec")).is_err_and(|e| e.contains("unknown unit 'sec'")));
    }

    #[test]
    fn log_levels_map_to_tracing_filters() {
        for (spec, filter) in [
            ("trace+", "trace"),
            ("debug+", "debug"),
            ("info+", "info"),
            ("notice+", "info"),
            ("warning+", "warn"),
            ("error+", "error"),
            ("critical+", "error"),
            ("notice", "info"),
            ("WARNING+", "warn"),
        ] {
            assert_eq!(log_level(Raw::Text(spec)), Ok(filter.to_string()), "{spec}");
        }
        for bad in ["warn+", "info+:Broker", "loud", "", "+"] {
            assert!(log_level(Raw::Text(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn interfaces() {
        for (given, stored) in [
            ("0.0.0.0", "0.0.0.0"),
            ("::1", "::1"),
            ("[::1]", "::1"),
            ("localhost", "localhost"),
            (" host-1.example ", "host-1.example"),
        ] {
            assert_eq!(
                interface(Raw::Text(given)),
                Ok(stored.to_string()),
                "{given}"
            );
        }
        for bad in ["", "a b", "1.2.3.4:5672", "[::1]:5672", "[]", "h/x", "-5"] {
            assert!(interface(Raw::Text(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn mechanisms_are_upper_cased() {
        assert_eq!(mechanism(Raw::Text("plain")), Ok("PLAIN".to_string()));
        assert_eq!(
            mechanism(Raw::Text("SCRAM-SHA-256")),
            Ok("SCRAM-SHA-256".to_string())
        );
        for bad in ["", "two words", "A-MECHANISM-NAME-TOO-LONG"] {
            assert!(mechanism(Raw::Text(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn quoting_for_messages() {
        assert_eq!(Raw::Text("x").quoted(), "'x'");
        assert_eq!(Raw::Toml(&toml("\"x\"")).quoted(), "'x'");
        assert_eq!(Raw::Toml(&toml("0")).quoted(), "0");
        assert_eq!(Raw::Toml(&toml("[1, 2]")).quoted(), "[1, 2]");
    }

    #[test]
    fn text_and_secret() {
        assert_eq!(text(Raw::Text(" bob ")), Ok("bob".to_string()));
        assert!(text(Raw::Text("  ")).is_err());
        assert!(text(Raw::Toml(&toml("1"))).is_err());
        assert_eq!(secret(Raw::Text(" pw ")), Ok(" pw ".to_string()));
        assert!(secret(Raw::Toml(&toml("1"))).is_err());
    }
}
