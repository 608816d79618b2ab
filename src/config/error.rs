//! Why tandemd's configuration was not accepted, and where the offending value came from.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Where an option's value came from: what an error message points the operator at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// `--key VALUE` on the command line.
    CommandLine {
        /// The option's name (the flag without `--`).
        key: &'static str,
    },
    /// `key = VALUE` in the config file.
    File {
        /// The config file.
        path: PathBuf,
        /// The key as written in the file.
        key: String,
    },
    /// The option's built-in default.
    Default {
        /// The option's name.
        key: &'static str,
    },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::CommandLine { key } => write!(f, "--{key}"),
            Origin::File { path, key } => write!(f, "config file {}: {key}", path.display()),
            Origin::Default { key } => write!(f, "built-in default of {key}"),
        }
    }
}

/// Why [`Config::load`](super::Config::load) failed. Every message but clap's names the
/// option as the user spelled it, where it was set, and what it allows.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--help` or `--version` (not failures: clap prints them and exits 0), or a
    /// command line clap cannot parse: an unknown flag, a missing value (exit 2).
    /// Call [`ConfigError::exit`] or `clap::Error::exit` on it.
    #[error(transparent)]
    Clap(#[from] clap::Error),
    /// The config file could not be read: `--config` names a file that does not exist,
    /// or the file is unreadable. (A missing *default* file is not an error.)
    #[error("config file {}: cannot read it: {source}", .path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// The config file is not valid TOML; the message shows the line and column.
    #[error("config file {}: not valid TOML: {message}", .path.display())]
    FileSyntax {
        /// The file.
        path: PathBuf,
        /// The TOML parser's description, with line and column.
        message: String,
    },
    /// A key in the config file that is not an option: usually a typo, which the hint
    /// corrects.
    #[error("config file {}: unknown key '{key}'{}", .path.display(), hint_suffix(.hint))]
    UnknownKey {
        /// The file.
        path: PathBuf,
        /// The key as written.
        key: String,
        /// The likely intended key, or another way forward.
        hint: Option<String>,
    },
    /// A value the option does not accept, or a TOML value of the wrong type.
    #[error("{origin}: {}{reason}", value_prefix(.value))]
    InvalidValue {
        /// Which option, and where it was set.
        origin: Origin,
        /// The value as written, or `None` where it may hold a password.
        value: Option<String>,
        /// What the option allows.
        reason: String,
    },
    /// Options that are each valid but do not work together, e.g. `ha-cluster` without
    /// `ha-brokers-url`.
    #[error("{origin}: {problem}")]
    Conflict {
        /// The option that needs the others, and where it was set.
        origin: Origin,
        /// What is missing or contradictory, and how to fix it.
        problem: String,
    },
}

fn hint_suffix(hint: &Option<String>) -> String {
    hint.as_ref().map(|h| format!(" ({h})")).unwrap_or_default()
}

fn value_prefix(value: &Option<String>) -> String {
    value
        .as_ref()
        .map(|v| format!("{v} is not allowed: "))
        .unwrap_or_default()
}

impl ConfigError {
    /// Ends tandemd over a configuration it cannot run with: clap's errors the clap way
    /// (help and version on stdout with status 0, usage errors with status 2), every
    /// other error as `error: MESSAGE` on stderr with status 1.
    pub fn exit(&self) -> ! {
        match self {
            ConfigError::Clap(e) => e.exit(),
            other => {
                eprintln!("error: {other}");
                std::process::exit(1)
            }
        }
    }
}
