//! The `tandem` package: the daemon `tandemd` (src/main.rs) and the admin tools
//! (src/bin/), sharing the configuration loader and the tools' plumbing.
//!
//! - [`config`]: tandemd's TOML file and qpidd-style flags.
//! - [`data_dir`]: the data directory's lock and the broker's identity.
//! - [`http`], [`metrics`]: the HTTP listener (`http-port`): Prometheus
//!   metrics and health probes, from the shards' published counters.
//! - [`store`]: opening the persistent store at start (recovery).
//! - [`tools`]: what the admin tools share: connecting (`-b`, `--ha-admin`),
//!   management calls, aligned tables.

pub mod config;
pub mod data_dir;
pub mod http;
pub mod log;
pub mod metrics;
pub mod status;
pub mod store;
pub mod tools;
