//! The `tandem` package: the daemon `tandemd` (src/main.rs) and the admin tools
//! (src/bin/), sharing the configuration loader and the tools' plumbing.
//!
//! - [`config`]: tandemd's TOML file and qpidd-style flags.
//! - [`tools`]: what the admin tools share: connecting (`-b`, `--ha-admin`),
//!   management calls, aligned tables.

pub mod config;
pub mod tools;
