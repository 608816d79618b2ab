//! tandemd's configuration: qpidd's option names, from a TOML file and the command line.
//!
//! Every option is both a config-file key and a command-line flag with the same
//! spelling (`ha-cluster = true` / `--ha-cluster yes`). The command line wins over the
//! file, the file over the built-in default. The file is `--config PATH`, or
//! [`DEFAULT_CONFIG_FILE`] if that exists.
//!
//! - [`options`]: the table of options (name, default, help) that the clap command
//!   and the file's key check are both built from;
//! - [`value`]: parsing one value, from command-line text or TOML;
//! - [`sources`]: reading the file and applying the precedence rule;
//! - [`error`]: [`ConfigError`], whose messages name the key, where it was set, the
//!   bad value and what is allowed.
//!
//! ```text
//! # /etc/tandem/tandemd.toml
//! port = 5672
//! ha-cluster = true
//! ha-brokers-url = "node1,node2,node3"
//! ha-replicate = "all"
//! link-heartbeat-interval = "5s"
//! ```

pub mod error;
mod options;
mod sources;
mod value;

#[cfg(test)]
mod tests;

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use tandem_shards::url::BrokerUrl;

pub use error::ConfigError;
pub use options::DEFAULT_CONFIG_FILE;

use sources::{ConfigFile, Sources};

/// The TLS port's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub port: u16,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: Option<PathBuf>,
    pub require_client_auth: bool,
}

/// Everything tandemd is configured with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The config file that was read: `None` when `--config` was not given and the
    /// default file does not exist. For the start-up log.
    pub config_file: Option<PathBuf>,
    /// AMQP port; 0 lets the OS pick a free one (tests run many brokers side by side).
    pub port: u16,
    /// Address to listen on, an IP address (IPv6 without brackets) or a host name:
    /// `(interface.as_str(), port)` is a `ToSocketAddrs`.
    pub interface: String,
    /// Number of shards, one pinned thread each; at least 1.
    pub worker_threads: usize,
    /// Whether `worker-threads` was given (a cluster broker on a host with 4
    /// or more CPUs otherwise leaves one CPU to its replication shard).
    pub worker_threads_given: bool,
    /// Whether clients must authenticate (SASL PLAIN against `users_file`).
    pub auth: bool,
    /// Whether `auth` was given (no elsewhere than on loopback must be).
    pub auth_given: bool,
    /// File of `user:password` lines for SASL PLAIN. Only the path: the broker reads it.
    pub users_file: Option<PathBuf>,
    /// TLS, if `ssl-cert-file` is set.
    pub tls: Option<TlsConfig>,
    /// Refuse clients that did not connect over TLS.
    pub require_encryption: bool,
    /// Realm of EXTERNAL identities (`CN@realm`).
    pub realm: String,
    /// The ACL file, if any.
    pub acl_file: Option<PathBuf>,
    /// Where durable state lives.
    pub data_dir: PathBuf,
    /// A `tracing` level filter (`trace`, `debug`, `info`, `warn`, `error`) made from
    /// qpidd's `--log-enable` syntax.
    pub log_enable: String,
    /// Whether the log goes to standard error.
    pub log_to_stderr: bool,
    /// `log-format`: text (prefixed with broker id and status) or json.
    pub log_format: crate::log::LogFormat,
    /// Most client connections open at once; at least 1.
    pub max_connections: usize,
    /// Largest AMQP frame accepted or sent; at least 512, the spec's minimum.
    pub max_frame_size: u32,
    /// AMQP idle time-out offered to peers; zero means none.
    pub idle_timeout: Duration,
    /// A connection must have opened within this long.
    pub handshake_timeout: Duration,
    /// Most connections in their handshake at once (the oldest goes).
    pub max_handshaking: usize,
    /// Credit the broker grants a publishing link; at least 1.
    pub link_credit: u32,
    /// Byte limit of a queue that sets none of its own; 0 means unlimited.
    pub default_max_queue_size: u64,
    /// Message-count limit of a queue that sets none of its own; 0 means unlimited.
    pub default_max_queue_count: u64,
    /// What a full queue does, unless it says otherwise.
    pub default_limit_policy: LimitPolicy,
    /// Whether attaching to a queue that does not exist creates it.
    pub auto_create_queues: bool,
    /// `http-port`: the HTTP listener's port (`None`: off; 0: any free one).
    pub http_port: Option<u16>,
    /// `http-interface`: the address it listens on.
    pub http_interface: String,
    /// `stall-threshold`: polls over this much CPU are stalls; `None`: off.
    pub stall_threshold: Option<Duration>,
    /// `connection-placement`: move a connection to the shard owning the
    /// queue of its first link.
    pub connection_placement: bool,
    /// The `store*` options.
    pub store: StoreConfig,
    /// The `ha-*` and `link-*` options.
    pub ha: HaConfig,
}

/// The persistent store's options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// `store`: persistent messages and durable configuration go to disk.
    pub enabled: bool,
    /// `store-dir`: default `data-dir`/store.
    pub dir: PathBuf,
    /// `store-segment-size`: bytes per journal segment.
    pub segment_size: u64,
    /// `store-sync`: wait for the disk before settling (off is unsafe).
    pub sync: bool,
    /// `store-repair`: cut a damaged segment instead of refusing to start.
    pub repair: bool,
}

/// The high-availability options, with qpidd's meanings.
#[derive(Clone, PartialEq, Eq)]
pub struct HaConfig {
    /// `ha-cluster`: this broker is a member of an active-passive cluster.
    pub cluster: bool,
    /// `ha-brokers-url`: the real addresses of all brokers, for broker-to-broker links.
    /// Always set when `cluster` is.
    pub brokers_url: Option<BrokerUrl>,
    /// `ha-public-url`: the URL clients are given (e.g. a virtual IP).
    pub public_url: Option<BrokerUrl>,
    /// `ha-replicate`: the level for queues and exchanges that do not set their own.
    pub replicate: ReplicateLevel,
    /// `ha-username`: user for links to other brokers.
    pub username: Option<String>,
    /// `ha-password`: only set together with `username`.
    pub password: Option<String>,
    /// `ha-mechanism`, upper-cased. After [`Config::load`] always `Some`: as given, else
    /// `PLAIN` when `username` is set, else `ANONYMOUS`.
    pub mechanism: Option<String>,
    /// `ha-backup-timeout`: how long a recovering primary waits for expected backups.
    pub backup_timeout: Duration,
    /// `ha-min-backups`: a primary settles publishes to replicated queues only
    /// while at least this many backups are ready (0: with none).
    pub min_backups: usize,
    /// `ha-min-backups-timeout`: how long such a publish waits before it is
    /// rejected.
    pub min_backups_timeout: Duration,
    /// `ha-sync-config`: `tandem-config` waits for the backups after each
    /// change unless told otherwise.
    pub sync_config: bool,
    /// `link-maintenance-interval`: how often a backup checks its link to the primary.
    pub link_maintenance_interval: Duration,
    /// `link-heartbeat-interval`: heartbeat on broker-to-broker links; two silent
    /// intervals mean the peer is gone.
    pub link_heartbeat_interval: Duration,
    /// `ha-queue-replication`: allow replicating single queues without a cluster.
    /// As in qpidd, `cluster` implies it; this field is only what was configured.
    pub queue_replication: bool,
    /// `ha-replica-consumers`: local consumers may take messages from a queue
    /// replica (sends to one are always refused).
    pub replica_consumers: bool,
    /// `ha-replication-cpu`: the CPU of the replication shard (default: its
    /// own with 4 or more CPUs and no `worker-threads`, else the last).
    pub replication_cpu: Option<usize>,
}

/// What a queue at its size or count limit does with another message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum LimitPolicy {
    /// Withhold credit from publishers until there is room (never drops).
    #[default]
    Flow,
    /// Reject the message back to its publisher.
    Reject,
    /// Drop the oldest messages to make room.
    Ring,
}

/// How much of the broker's state a backup replicates (qpidd's `ha-replicate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ReplicateLevel {
    /// Nothing.
    #[default]
    None,
    /// Queue and exchange definitions and bindings, not messages.
    Configuration,
    /// Definitions and messages.
    All,
}

/// A name that is not one of an enum's spellings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{value}' is not one of {}", .allowed.join(", "))]
pub struct UnknownChoice {
    /// The text given.
    pub value: String,
    /// The names accepted.
    pub allowed: &'static [&'static str],
}

impl Config {
    /// Builds the configuration from a command line (`args`, starting with the program
    /// name, e.g. `std::env::args_os()`) and the config file it names, or the default one.
    ///
    /// `--help` and `--version` come back as [`ConfigError::Clap`]: `e.exit()` prints
    /// them.
    pub fn load<I, T>(args: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        Self::load_with_default_file(args, Path::new(DEFAULT_CONFIG_FILE))
    }

    fn load_with_default_file<I, T>(args: I, default_file: &Path) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let cli = options::command().try_get_matches_from(args)?;
        let file = match cli.get_one::<String>(options::CONFIG_KEY) {
            Some(path) => Some(ConfigFile::read(Path::new(path))?),
            None => ConfigFile::read_if_exists(default_file)?,
        };
        Self::resolve(&Sources { cli, file })
    }

    /// The configuration a config file of `text` gives with no command-line
    /// options, as if read from `path`: the `config_file` fuzz target's entry
    /// (fuzz/), without the file system.
    #[doc(hidden)]
    pub fn from_file_text(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let cli = options::command().try_get_matches_from(["tandemd"])?;
        let file = Some(ConfigFile::parse(path, text)?);
        Self::resolve(&Sources { cli, file })
    }

    fn resolve(src: &Sources) -> Result<Config, ConfigError> {
        Ok(Config {
            config_file: src.file.as_ref().map(|file| file.path.clone()),
            port: src.value("port", |r| value::number(r, 0, u16::MAX.into()))?,
            interface: src.value("interface", value::interface)?,
            worker_threads: match src.get("worker-threads", |r| value::number(r, 1, u64::MAX))? {
                Some(setting) => setting.value,
                None => std::thread::available_parallelism().map_or(1, |n| n.get()),
            },
            worker_threads_given: src
                .get("worker-threads", |r| value::number::<usize>(r, 1, u64::MAX))?
                .is_some(),
            auth: match src.get("auth", value::boolean)? {
                Some(setting) => setting.value,
                None => !is_loopback(&src.value("interface", value::interface)?),
            },
            auth_given: src.get("auth", value::boolean)?.is_some(),
            users_file: src.get("users-file", value::text)?.map(|s| s.value.into()),
            tls: tls_config(src)?,
            require_encryption: src.value("require-encryption", value::boolean)?,
            realm: src.value("realm", value::text)?,
            acl_file: src.get("acl-file", value::text)?.map(|s| s.value.into()),
            data_dir: src.value("data-dir", value::text)?.into(),
            log_enable: src.value("log-enable", value::log_level)?,
            log_to_stderr: src.value("log-to-stderr", value::boolean)?,
            log_format: src.value("log-format", value::choice)?,
            max_connections: src.value("max-connections", |r| value::number(r, 1, u64::MAX))?,
            max_frame_size: src
                .value("max-frame-size", |r| value::number(r, 512, u32::MAX.into()))?,
            idle_timeout: src.value("idle-timeout", value::duration)?,
            handshake_timeout: src.value("handshake-timeout", value::duration)?,
            max_handshaking: src.value("max-handshaking", |r| value::number(r, 1, u64::MAX))?,
            link_credit: src.value("link-credit", |r| value::number(r, 1, u32::MAX.into()))?,
            default_max_queue_size: src
                .value("default-max-queue-size", |r| value::number(r, 0, u64::MAX))?,
            default_max_queue_count: src
                .value("default-max-queue-count", |r| value::number(r, 0, u64::MAX))?,
            default_limit_policy: src.value("default-limit-policy", value::choice)?,
            auto_create_queues: src.value("auto-create-queues", value::boolean)?,
            connection_placement: src.value("connection-placement", value::boolean)?,
            http_port: src
                .get("http-port", |r| value::number(r, 0, u16::MAX.into()))?
                .map(|s| s.value),
            http_interface: src.value("http-interface", value::interface)?,
            stall_threshold: Some(src.value("stall-threshold", value::duration)?)
                .filter(|d| !d.is_zero()),
            store: StoreConfig {
                enabled: src.value("store", value::boolean)?,
                dir: match src.get("store-dir", value::text)? {
                    Some(dir) => dir.value.into(),
                    None => PathBuf::from(src.value("data-dir", value::text)?).join("store"),
                },
                segment_size: src
                    .value("store-segment-size", |r| value::number(r, 65536, u64::MAX))?,
                sync: src.value("store-sync", value::boolean)?,
                repair: src.value("store-repair", value::boolean)?,
            },
            ha: HaConfig::resolve(src)?,
        })
    }
}

impl Default for Config {
    /// The built-in defaults: what `tandemd` runs with given no options and no file.
    fn default() -> Self {
        let defaults = options::command()
            .try_get_matches_from(["tandemd"])
            .map_err(ConfigError::from)
            .and_then(|cli| Self::resolve(&Sources { cli, file: None }));
        match defaults {
            Ok(config) => config,
            // The defaults are constants checked by a unit test.
            Err(e) => unreachable!("built-in defaults are invalid: {e}"),
        }
    }
}

/// The shortest `link-heartbeat-interval` and `link-maintenance-interval` a
/// cluster accepts.
const MIN_CLUSTER_INTERVAL: Duration = Duration::from_millis(10);

impl HaConfig {
    fn resolve(src: &Sources) -> Result<HaConfig, ConfigError> {
        let cluster = src.get("ha-cluster", value::boolean)?;
        let brokers_url = src.get("ha-brokers-url", value::url)?.map(|s| s.value);
        let public_url = src.get("ha-public-url", value::url)?.map(|s| s.value);
        let replicate = src.value("ha-replicate", value::choice)?;
        let username = src.get("ha-username", value::text)?.map(|s| s.value);
        let password = src.get("ha-password", value::secret)?;
        let mechanism = src.get("ha-mechanism", value::mechanism)?;
        let backup_timeout = src.value("ha-backup-timeout", value::duration)?;
        let min_backups = src.value("ha-min-backups", |r| value::number(r, 0, 1000))?;
        let min_backups_timeout = src.value("ha-min-backups-timeout", value::duration)?;
        let sync_config = src.value("ha-sync-config", value::boolean)?;
        let link_maintenance_interval = src.value("link-maintenance-interval", value::duration)?;
        let link_heartbeat_interval = src.value("link-heartbeat-interval", value::duration)?;
        let queue_replication = src.value("ha-queue-replication", value::boolean)?;
        let replica_consumers = src.value("ha-replica-consumers", value::boolean)?;
        let replication_cpu = src
            .get("ha-replication-cpu", |r| value::number(r, 0, 4095))?
            .map(|s| s.value);

        if let Some(cluster) = cluster.as_ref().filter(|c| c.value) {
            if brokers_url.is_none() {
                return Err(ConfigError::Conflict {
                    origin: cluster.origin.clone(),
                    problem: "a cluster broker needs ha-brokers-url, the addresses of all \
                              brokers in the cluster (e.g. --ha-brokers-url node1,node2,node3, \
                              or ha-brokers-url = \"node1,node2,node3\" in the config file)"
                        .into(),
                });
            }
        }
        if cluster.as_ref().is_some_and(|c| c.value) {
            // Below this a cluster drops every backup at once and settles with
            // no copy anywhere (and timers this short only burn CPU).
            for key in ["link-heartbeat-interval", "link-maintenance-interval"] {
                if let Some(set) = src.get(key, value::duration)? {
                    if set.value < MIN_CLUSTER_INTERVAL {
                        return Err(ConfigError::InvalidValue {
                            origin: set.origin,
                            value: Some(format!("'{:?}'", set.value)),
                            reason: "a cluster needs at least 10ms (backups would be dropped \
                                     as silent before they could answer)"
                                .into(),
                        });
                    }
                }
            }
        }
        if let (Some(set), Some(url)) = (
            src.get("ha-min-backups", |r| value::number::<usize>(r, 0, 1000))?,
            &brokers_url,
        ) {
            // The primary is one of the brokers: at most the others back it up.
            let others = url.addrs.len().saturating_sub(1);
            if set.value > others {
                return Err(ConfigError::InvalidValue {
                    origin: set.origin,
                    value: Some(set.value.to_string()),
                    reason: format!(
                        "ha-brokers-url names {} brokers, so a primary has at most {others} backups: it would never settle",
                        url.addrs.len()
                    ),
                });
            }
        }
        if let (Some(password), None) = (&password, &username) {
            return Err(ConfigError::Conflict {
                origin: password.origin.clone(),
                problem: "a password needs a user: set ha-username too".into(),
            });
        }
        if let (Some(mechanism), None) = (&mechanism, &username) {
            if mechanism.value == "PLAIN" {
                return Err(ConfigError::Conflict {
                    origin: mechanism.origin.clone(),
                    problem: "PLAIN needs ha-username (and ha-password); leave ha-mechanism \
                              out to connect as ANONYMOUS"
                        .into(),
                });
            }
        }
        let mechanism = match (mechanism, &username) {
            (Some(given), _) => given.value,
            (None, Some(_)) => "PLAIN".to_string(),
            (None, None) => "ANONYMOUS".to_string(),
        };
        Ok(HaConfig {
            cluster: cluster.is_some_and(|c| c.value),
            brokers_url,
            public_url,
            replicate,
            username,
            password: password.map(|s| s.value),
            mechanism: Some(mechanism),
            backup_timeout,
            min_backups,
            min_backups_timeout,
            sync_config,
            link_maintenance_interval,
            link_heartbeat_interval,
            queue_replication,
            replica_consumers,
            replication_cpu,
        })
    }
}

impl fmt::Debug for HaConfig {
    /// Like a derived `Debug`, with the password hidden: configurations get logged.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HaConfig")
            .field("cluster", &self.cluster)
            .field("brokers_url", &self.brokers_url)
            .field("public_url", &self.public_url)
            .field("replicate", &self.replicate)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("mechanism", &self.mechanism)
            .field("backup_timeout", &self.backup_timeout)
            .field("min_backups", &self.min_backups)
            .field("min_backups_timeout", &self.min_backups_timeout)
            .field("sync_config", &self.sync_config)
            .field("link_maintenance_interval", &self.link_maintenance_interval)
            .field("link_heartbeat_interval", &self.link_heartbeat_interval)
            .field("queue_replication", &self.queue_replication)
            .field("replica_consumers", &self.replica_consumers)
            .field("replication_cpu", &self.replication_cpu)
            .finish()
    }
}

/// `FromStr` and `Display` for an enum of lower-case names, case-insensitive on input.
macro_rules! named_choices {
    ($ty:ident { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            const NAMES: &'static [&'static str] = &[$($name),+];
        }

        impl FromStr for $ty {
            type Err = UnknownChoice;

            fn from_str(s: &str) -> Result<Self, UnknownChoice> {
                match s.trim().to_ascii_lowercase().as_str() {
                    $($name => Ok($ty::$variant),)+
                    _ => Err(UnknownChoice { value: s.to_string(), allowed: Self::NAMES }),
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(match self {
                    $($ty::$variant => $name,)+
                })
            }
        }
    };
}

named_choices!(LimitPolicy { Flow => "flow", Reject => "reject", Ring => "ring" });
named_choices!(ReplicateLevel { None => "none", Configuration => "configuration", All => "all" });

/// The TLS port's settings, if `ssl-cert-file` is set (every `ssl-*` option
/// is checked either way).
fn tls_config(src: &Sources) -> Result<Option<TlsConfig>, ConfigError> {
    let port = src.value("ssl-port", |r| value::number(r, 0, u16::MAX.into()))?;
    let cert = src.get("ssl-cert-file", value::text)?;
    let key = src.get("ssl-key-file", value::text)?;
    let ca = src.get("ssl-ca-file", value::text)?;
    let require_client_auth = src.value("ssl-require-client-authentication", value::boolean)?;
    match (cert, key) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => Ok(Some(TlsConfig {
            port,
            cert: cert.value.into(),
            key: key.value.into(),
            ca: ca.map(|c| c.value.into()),
            require_client_auth,
        })),
        (Some(cert), None) => Err(ConfigError::Conflict {
            origin: cert.origin,
            problem: "ssl-cert-file needs ssl-key-file (the certificate's private key)".into(),
        }),
        (None, Some(key)) => Err(ConfigError::Conflict {
            origin: key.origin,
            problem: "ssl-key-file needs ssl-cert-file (the certificate it is the key of)".into(),
        }),
    }
}

/// Whether `interface` only reaches this host (where `auth = no` is a sane
/// default): a loopback address, or `localhost`.
pub fn is_loopback(interface: &str) -> bool {
    interface.eq_ignore_ascii_case("localhost")
        || interface
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}
