//! Text a peer supplied (a SASL mechanism name, a container id, an address, a
//! user name), as log lines show it: control characters and quotes escaped,
//! so a peer cannot forge a line, and cut to [`LIMIT`] characters, so it
//! cannot flood one. Error conditions display this way too (a peer's close
//! carries its own description).

use std::fmt;

/// Most characters shown; the rest is summarised.
pub const LIMIT: usize = 256;

/// `text` as a log line may show it.
pub fn shown(text: &str) -> Shown<'_> {
    Shown(text)
}

pub struct Shown<'a>(&'a str);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, c) in self.0.chars().enumerate() {
            if i == LIMIT {
                let rest = self.0.chars().count() - LIMIT;
                return write!(f, "…({rest} more characters)");
            }
            if c.is_control() || c == '"' || c == '\\' {
                write!(f, "{}", c.escape_default())?;
            } else {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newline_cannot_forge_a_log_line_and_long_text_is_cut() {
        assert_eq!(shown("PLAIN").to_string(), "PLAIN");
        assert_eq!(
            shown("X\n2026-01-01 INFO forged").to_string(),
            "X\\n2026-01-01 INFO forged"
        );
        assert_eq!(
            shown("a\"b\\c\u{1b}[31m").to_string(),
            "a\\\"b\\\\c\\u{1b}[31m"
        );
        let long = "x".repeat(LIMIT + 10);
        let text = shown(&long).to_string();
        assert!(text.starts_with(&"x".repeat(LIMIT)));
        assert!(text.ends_with("…(10 more characters)"), "{text}");
        assert_eq!(format!("{:?}", shown("q\r")), "\"q\\r\"");
    }
}
