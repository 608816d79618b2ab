//! tandemd's log lines. Text (the default): timestamp, level, then the broker's
//! id (its first 8 characters) and HA status in brackets, as qpidd's log has
//! carried them since QPID-6020, then the message and its fields.
//! `log-format = json`: one JSON object per line with `timestamp`, `level`,
//! `broker_id`, `status`, `thread`, `shard` (when the line comes from a
//! shard), `message` and the event's other fields.

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// `log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = crate::config::UnknownChoice;

    fn from_str(s: &str) -> Result<LogFormat, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(crate::config::UnknownChoice {
                value: s.to_owned(),
                allowed: &["text", "json"],
            }),
        }
    }
}

/// Formats events as [`LogFormat`] says.
pub struct Lines {
    pub format: LogFormat,
    pub ansi: bool,
}

impl<S, N> FormatEvent<S, N> for Lines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let (broker_id, status) = tandem_shards::log_context::current();
        let level = *event.metadata().level();
        let timestamp = timestamp();
        match self.format {
            LogFormat::Text => {
                let short: String = broker_id.chars().take(8).collect();
                let level = if self.ansi {
                    format!("{}{level:>5}\x1b[0m", level_colour(level))
                } else {
                    format!("{level:>5}")
                };
                write!(writer, "{timestamp} {level} [{short} {status}] ")?;
                ctx.format_fields(writer.by_ref(), event)?;
                writeln!(writer)
            }
            LogFormat::Json => {
                let mut fields = Fields::default();
                event.record(&mut fields);
                let mut line = Map::new();
                line.insert("timestamp".into(), timestamp.into());
                line.insert("level".into(), level.as_str().into());
                line.insert("broker_id".into(), broker_id.into());
                line.insert("status".into(), status.into());
                let thread = std::thread::current();
                let name = thread.name().unwrap_or("").to_owned();
                // Shard threads are named shard-N-CPU (and repl-0).
                if !fields.0.contains_key("shard") {
                    if let Some(n) = name
                        .strip_prefix("shard-")
                        .and_then(|r| r.split('-').next())
                        .and_then(|n| n.parse::<u64>().ok())
                    {
                        line.insert("shard".into(), n.into());
                    }
                }
                line.insert("thread".into(), name.into());
                line.insert(
                    "message".into(),
                    fields.0.remove("message").unwrap_or(Value::Null),
                );
                line.extend(fields.0);
                let text = serde_json::to_string(&line).map_err(|_| fmt::Error)?;
                writeln!(writer, "{text}")
            }
        }
    }
}

fn level_colour(level: tracing::Level) -> &'static str {
    match level {
        tracing::Level::ERROR => "\x1b[31m",
        tracing::Level::WARN => "\x1b[33m",
        tracing::Level::INFO => "\x1b[32m",
        _ => "\x1b[34m",
    }
}

/// Now, as RFC 3339 UTC with microseconds (`2026-12-03T13:13:13.110305Z`).
pub fn timestamp() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs() as i64;
    let (days, day) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z",
        day / 3600,
        day % 3600 / 60,
        day % 60,
        now.subsec_micros()
    )
}

/// The proleptic Gregorian date of a day count from 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// An event's fields as JSON values.
#[derive(Default)]
struct Fields(Map<String, Value>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), format!("{value:?}").into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), value.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_become_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(20_790), (2026, 12, 3));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
