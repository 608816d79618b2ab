//! The three places an option's value can come from — the command line, the config
//! file, the built-in default — and the rule between them: the command line wins over
//! the file, the file over the default.

use std::io;
use std::path::{Path, PathBuf};

use clap::ArgMatches;

use super::error::{ConfigError, Origin};
use super::options::{self, Kind, CONFIG_KEY};
use super::value::{Raw, Rejection};

/// A config file, read and checked for unknown keys.
pub(super) struct ConfigFile {
    pub path: PathBuf,
    table: toml::Table,
}

/// An option's value and where it came from.
pub(super) struct Setting<T> {
    pub value: T,
    pub origin: Origin,
}

/// The command line and the config file (if any) of one start of tandemd.
pub(super) struct Sources {
    pub cli: ArgMatches,
    pub file: Option<ConfigFile>,
}

impl ConfigFile {
    /// Reads a file the operator named: it must exist.
    pub fn read(path: &Path) -> Result<ConfigFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Reads the default file, if there is one.
    pub fn read_if_exists(path: &Path) -> Result<Option<ConfigFile>, ConfigError> {
        match Self::read(path) {
            Err(ConfigError::ReadFile { source, .. })
                if source.kind() == io::ErrorKind::NotFound =>
            {
                Ok(None)
            }
            other => other.map(Some),
        }
    }

    /// Parses `text` as the file at `path` (named in errors).
    pub fn parse(path: &Path, text: &str) -> Result<ConfigFile, ConfigError> {
        let table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::FileSyntax {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        for (key, value) in &table {
            let known = key != CONFIG_KEY && options::OPTIONS.iter().any(|s| s.key == key);
            if known {
                continue;
            }
            let hint = if key == CONFIG_KEY {
                Some("the config file can only be chosen on the command line, with --config".into())
            } else if let Some(near) = options::suggest(key) {
                Some(format!("did you mean '{near}'?"))
            } else if value.is_table() {
                Some("options are top-level keys, e.g. `ha-cluster = true`, not sections".into())
            } else {
                None
            };
            return Err(ConfigError::UnknownKey {
                path: path.to_path_buf(),
                key: key.clone(),
                hint,
            });
        }
        Ok(ConfigFile {
            path: path.to_path_buf(),
            table,
        })
    }
}

impl Sources {
    /// The value of option `key`: from the command line if given there, else from the
    /// file, else the built-in default; `None` if none of them has one. The file's value
    /// is checked even when the command line overrides it, so a broken file is never
    /// silently accepted.
    pub fn get<T>(
        &self,
        key: &'static str,
        parse: impl Fn(Raw<'_>) -> Result<T, Rejection>,
    ) -> Result<Option<Setting<T>>, ConfigError> {
        let spec = options::spec(key);
        let check = |raw: Raw<'_>, origin: Origin| match parse(raw) {
            Ok(value) => Ok(Setting { value, origin }),
            Err(reason) => Err(ConfigError::InvalidValue {
                origin,
                value: (spec.kind != Kind::Secret).then(|| raw.quoted()),
                reason,
            }),
        };
        let from_file = match &self.file {
            Some(file) => match file.table.get(key) {
                Some(value) => Some(check(
                    Raw::Toml(value),
                    Origin::File {
                        path: file.path.clone(),
                        key: key.to_string(),
                    },
                )?),
                None => None,
            },
            None => None,
        };
        if let Some(text) = self.cli.get_one::<String>(key) {
            return check(Raw::Text(text), Origin::CommandLine { key }).map(Some);
        }
        if from_file.is_some() {
            return Ok(from_file);
        }
        spec.default
            .map(|default| check(Raw::Text(default), Origin::Default { key }))
            .transpose()
    }

    /// The value of an option that has a built-in default.
    pub fn value<T>(
        &self,
        key: &'static str,
        parse: impl Fn(Raw<'_>) -> Result<T, Rejection>,
    ) -> Result<T, ConfigError> {
        match self.get(key, parse)? {
            Some(setting) => Ok(setting.value),
            None => Err(ConfigError::InvalidValue {
                origin: Origin::Default { key },
                value: None,
                reason: "is missing from the option table (a bug in tandemd)".into(),
            }),
        }
    }
}
