//! Loading whole configurations: defaults, the file, the command line, and every kind
//! of error as the operator sees it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tandem_shards::url::Transport;

use super::options::OPTIONS;
use super::*;

/// A config file in the temp directory, removed when dropped.
struct TempFile {
    path: PathBuf,
}

impl TempFile {
    fn new(text: &str) -> TempFile {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "tandem-config-test-{}-{}.toml",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        if let Err(e) = std::fs::write(&path, text) {
            panic!("cannot write {}: {e}", path.display());
        }
        TempFile { path }
    }

    fn arg(&self) -> String {
        format!("--config={}", self.path.display())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

const NO_DEFAULT_FILE: &str = "/nonexistent/tandem/tandemd.toml";

/// Loads with `args` after the program name, and a default config file that does not exist.
fn load(args: &[&str]) -> Result<Config, ConfigError> {
    let argv = std::iter::once("tandemd").chain(args.iter().copied());
    Config::load_with_default_file(argv, Path::new(NO_DEFAULT_FILE))
}

fn loaded(args: &[&str]) -> Config {
    match load(args) {
        Ok(config) => config,
        Err(e) => panic!("{args:?} should load: {e}"),
    }
}

fn error(args: &[&str]) -> ConfigError {
    match load(args) {
        Ok(config) => panic!("{args:?} should fail, got {config:?}"),
        Err(e) => e,
    }
}

/// Loads `toml` as the config file, then `args`.
fn with_file(toml: &str, args: &[&str]) -> Result<Config, ConfigError> {
    let file = TempFile::new(toml);
    let config_arg = file.arg();
    let mut all = vec![config_arg.as_str()];
    all.extend_from_slice(args);
    load(&all)
}

/// The message of loading `toml` and `args`, with the temp file's path shown as FILE.
fn file_error(toml: &str, args: &[&str]) -> String {
    let file = TempFile::new(toml);
    let config_arg = file.arg();
    let mut all = vec![config_arg.as_str()];
    all.extend_from_slice(args);
    match load(&all) {
        Ok(config) => panic!("{toml:?} {args:?} should fail, got {config:?}"),
        Err(e) => e
            .to_string()
            .replace(&file.path.display().to_string(), "FILE"),
    }
}

fn file_loaded(toml: &str, args: &[&str]) -> Config {
    match with_file(toml, args) {
        Ok(config) => config,
        Err(e) => panic!("{toml:?} {args:?} should load: {e}"),
    }
}

#[test]
fn defaults_without_file_or_flags() {
    let c = loaded(&[]);
    assert_eq!(c.config_file, None);
    assert_eq!(c.port, 5672);
    assert_eq!(c.interface, "127.0.0.1");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(c.worker_threads, cores);
    assert!(!c.auth);
    assert_eq!(c.users_file, None);
    assert_eq!(c.data_dir, PathBuf::from("./tandem-data"));
    assert_eq!(c.log_enable, "info");
    assert!(c.log_to_stderr);
    assert_eq!(c.max_connections, 500);
    assert_eq!(c.max_frame_size, 65536);
    assert_eq!(c.idle_timeout, Duration::ZERO);
    assert_eq!(c.link_credit, 500);
    assert_eq!(c.default_max_queue_size, 104_857_600);
    assert_eq!(c.default_max_queue_count, 0);
    assert_eq!(c.default_limit_policy, LimitPolicy::Flow);
    assert!(c.auto_create_queues);
    let ha = &c.ha;
    assert!(!ha.cluster);
    assert_eq!(ha.brokers_url, None);
    assert_eq!(ha.public_url, None);
    assert_eq!(ha.replicate, ReplicateLevel::None);
    assert_eq!(ha.username, None);
    assert_eq!(ha.password, None);
    assert_eq!(ha.mechanism.as_deref(), Some("ANONYMOUS"));
    assert_eq!(ha.backup_timeout, Duration::from_secs(10));
    assert_eq!(ha.min_backups, 0);
    assert_eq!(ha.min_backups_timeout, Duration::from_secs(30));
    assert!(!ha.sync_config);
    assert_eq!(ha.link_maintenance_interval, Duration::from_secs(2));
    assert_eq!(ha.link_heartbeat_interval, Duration::from_secs(120));
    assert!(!ha.queue_replication);
}

#[test]
fn default_impl_is_the_built_in_defaults() {
    assert_eq!(Config::default(), loaded(&[]));
}

#[test]
fn default_file_is_read_when_it_exists() {
    let file = TempFile::new("port = 6000\n");
    let argv = ["tandemd"];
    let c = match Config::load_with_default_file(argv, &file.path) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(c.port, 6000);
    assert_eq!(c.config_file.as_deref(), Some(file.path.as_path()));
}

#[test]
fn explicit_missing_file_is_an_error() {
    let e = error(&["--config", "/nonexistent/x.toml"]);
    assert!(matches!(e, ConfigError::ReadFile { .. }), "{e:?}");
    let shown = e.to_string();
    assert!(
        shown.starts_with("config file /nonexistent/x.toml: cannot read it: "),
        "{shown}"
    );
}

#[test]
fn explicit_file_that_is_a_directory_is_an_error() {
    let dir = std::env::temp_dir();
    let dir = dir.display().to_string();
    assert!(matches!(
        error(&["--config", &dir]),
        ConfigError::ReadFile { .. }
    ));
}

#[test]
fn empty_file_gives_defaults() {
    let c = file_loaded("# nothing here\n", &[]);
    assert_eq!(
        Config {
            config_file: None,
            ..c
        },
        loaded(&[])
    );
}

#[test]
fn file_sets_every_option() {
    let c = file_loaded(
        r#"
        port = 5673
        interface = "0.0.0.0"
        worker-threads = 3
        auth = true
        users-file = "/etc/tandem/users"
        data-dir = "/var/lib/tandem"
        log-enable = "debug+"
        log-to-stderr = "no"
        max-connections = "1000"
        max-frame-size = 512
        idle-timeout = 30
        link-credit = 100
        default-max-queue-size = 1_000_000
        default-max-queue-count = 5000
        default-limit-policy = "ring"
        auto-create-queues = false
        ha-cluster = true
        ha-brokers-url = "n1,n2:5673,ssl:n3"
        ha-public-url = "amqp:vip:5672"
        ha-replicate = "all"
        ha-username = "ha"
        ha-password = "s3cret"
        ha-mechanism = "plain"
        ha-backup-timeout = 0.5
        link-maintenance-interval = "100ms"
        link-heartbeat-interval = "5s"
        ha-queue-replication = "yes"
        "#,
        &[],
    );
    assert_eq!(c.port, 5673);
    assert_eq!(c.interface, "0.0.0.0");
    assert_eq!(c.worker_threads, 3);
    assert!(c.auth);
    assert_eq!(c.users_file, Some(PathBuf::from("/etc/tandem/users")));
    assert_eq!(c.data_dir, PathBuf::from("/var/lib/tandem"));
    assert_eq!(c.log_enable, "debug");
    assert!(!c.log_to_stderr);
    assert_eq!(c.max_connections, 1000);
    assert_eq!(c.max_frame_size, 512);
    assert_eq!(c.idle_timeout, Duration::from_secs(30));
    assert_eq!(c.link_credit, 100);
    assert_eq!(c.default_max_queue_size, 1_000_000);
    assert_eq!(c.default_max_queue_count, 5000);
    assert_eq!(c.default_limit_policy, LimitPolicy::Ring);
    assert!(!c.auto_create_queues);
    let ha = &c.ha;
    assert!(ha.cluster);
    assert_eq!(
        ha.brokers_url.as_ref().map(ToString::to_string).as_deref(),
        Some("n1:5672,n2:5673,ssl:n3:5671")
    );
    assert_eq!(
        ha.public_url.as_ref().map(ToString::to_string).as_deref(),
        Some("vip:5672")
    );
    assert_eq!(ha.replicate, ReplicateLevel::All);
    assert_eq!(ha.username.as_deref(), Some("ha"));
    assert_eq!(ha.password.as_deref(), Some("s3cret"));
    assert_eq!(ha.mechanism.as_deref(), Some("PLAIN"));
    assert_eq!(ha.backup_timeout, Duration::from_millis(500));
    assert_eq!(ha.link_maintenance_interval, Duration::from_millis(100));
    assert_eq!(ha.link_heartbeat_interval, Duration::from_secs(5));
    assert!(ha.queue_replication);
}

#[test]
#[rustfmt::skip]
fn command_line_sets_every_option() {
    let c = loaded(&[
        "--port", "0",
        "--interface", "[::1]",
        "--worker-threads", "2",
        "--auth", "yes",
        "--users-file", "users.txt",
        "--data-dir", "/tmp/d",
        "--log-enable", "warning+",
        "--log-to-stderr", "off",
        "--max-connections", "7",
        "--max-frame-size", "4096",
        "--idle-timeout", "1.5",
        "--link-credit", "9",
        "--default-max-queue-size", "0",
        "--default-max-queue-count", "10",
        "--default-limit-policy", "REJECT",
        "--auto-create-queues", "no",
        "--ha-cluster", "true",
        "--ha-brokers-url", "127.0.0.1:5672,127.0.0.1:5673",
        "--ha-public-url", "[::1]:5672",
        "--ha-replicate", "configuration",
        "--ha-username", "bob",
        "--ha-password", "pw",
        "--ha-mechanism", "SCRAM-SHA-256",
        "--ha-backup-timeout", "1m",
        "--link-maintenance-interval", "0.1",
        "--link-heartbeat-interval", "10ms",
        "--ha-queue-replication", "1",
    ]);
    assert_eq!(c.port, 0);
    assert_eq!(c.interface, "::1");
    assert_eq!(c.worker_threads, 2);
    assert!(c.auth);
    assert_eq!(c.users_file, Some(PathBuf::from("users.txt")));
    assert_eq!(c.data_dir, PathBuf::from("/tmp/d"));
    assert_eq!(c.log_enable, "warn");
    assert!(!c.log_to_stderr);
    assert_eq!(c.max_connections, 7);
    assert_eq!(c.max_frame_size, 4096);
    assert_eq!(c.idle_timeout, Duration::from_millis(1500));
    assert_eq!(c.link_credit, 9);
    assert_eq!(c.default_max_queue_size, 0);
    assert_eq!(c.default_max_queue_count, 10);
    assert_eq!(c.default_limit_policy, LimitPolicy::Reject);
    assert!(!c.auto_create_queues);
    let ha = &c.ha;
    assert!(ha.cluster);
    let brokers = ha.brokers_url.as_ref().map(|u| u.addrs.clone());
    assert_eq!(brokers.map(|a| a.len()), Some(2));
    assert_eq!(
        ha.public_url.as_ref().map(|u| u.addrs[0].socket_string()).as_deref(),
        Some("[::1]:5672")
    );
    assert_eq!(ha.replicate, ReplicateLevel::Configuration);
    assert_eq!(ha.username.as_deref(), Some("bob"));
    assert_eq!(ha.password.as_deref(), Some("pw"));
    assert_eq!(ha.mechanism.as_deref(), Some("SCRAM-SHA-256"));
    assert_eq!(ha.backup_timeout, Duration::from_secs(60));
    assert_eq!(ha.link_maintenance_interval, Duration::from_millis(100));
    assert_eq!(ha.link_heartbeat_interval, Duration::from_millis(10));
    assert!(ha.queue_replication);
}

#[test]
fn command_line_overrides_file_and_file_overrides_defaults() {
    let c = file_loaded(
        "port = 6000\nworker-threads = 4\nha-replicate = \"all\"\n",
        &["--port", "7000", "--ha-replicate=configuration"],
    );
    assert_eq!(c.port, 7000);
    assert_eq!(c.worker_threads, 4);
    assert_eq!(c.ha.replicate, ReplicateLevel::Configuration);
    assert_eq!(c.max_connections, 500);
}

#[test]
fn bad_file_value_is_an_error_even_when_overridden() {
    assert_eq!(
        file_error("port = \"x\"\n", &["--port", "1"]),
        "config file FILE: port: 'x' is not allowed: must be a whole number from 0 to 65535"
    );
}

#[test]
fn last_flag_wins() {
    assert_eq!(loaded(&["--port", "1", "--port", "2"]).port, 2);
}

#[test]
fn unknown_file_key_suggests_the_option() {
    assert_eq!(
        file_error("worker-thread = 2\n", &[]),
        "config file FILE: unknown key 'worker-thread' (did you mean 'worker-threads'?)"
    );
    assert_eq!(
        file_error("ha_brokers_url = \"n1\"\n", &[]),
        "config file FILE: unknown key 'ha_brokers_url' (did you mean 'ha-brokers-url'?)"
    );
    assert_eq!(
        file_error("colour = \"blue\"\n", &[]),
        "config file FILE: unknown key 'colour'"
    );
}

#[test]
fn sections_and_config_key_are_unknown_in_the_file() {
    let shown = file_error("[ha]\ncluster = true\n", &[]);
    assert!(
        shown.starts_with("config file FILE: unknown key 'ha' ("),
        "{shown}"
    );
    let shown = file_error("config = \"/etc/other.toml\"\n", &[]);
    assert!(shown.contains("unknown key 'config'"), "{shown}");
    assert!(shown.contains("--config"), "{shown}");
}

#[test]
fn invalid_toml_is_an_error_with_its_position() {
    let shown = file_error("port = \n", &[]);
    assert!(
        shown.starts_with("config file FILE: not valid TOML: "),
        "{shown}"
    );
    assert!(shown.contains("line 1"), "{shown}");
    let shown = file_error("port = 1\nport = 2\n", &[]);
    assert!(shown.contains("not valid TOML"), "{shown}");
}

#[test]
fn wrong_toml_types_are_errors() {
    assert_eq!(
        file_error("port = [1, 2]\n", &[]),
        "config file FILE: port: [1, 2] is not allowed: must be a whole number from 0 to 65535"
    );
    assert_eq!(
        file_error("auth = 1\n", &[]),
        "config file FILE: auth: 1 is not allowed: must be yes or no (also accepted: true/false, on/off, 1/0)"
    );
    assert_eq!(
        file_error("interface = 5\n", &[]),
        "config file FILE: interface: 5 is not allowed: must be an IP address or a host name, e.g. 0.0.0.0, ::1 or localhost"
    );
    assert_eq!(
        file_error("max-connections = 1.5\n", &[]),
        "config file FILE: max-connections: 1.5 is not allowed: must be a whole number of at least 1"
    );
    assert!(file_error("idle-timeout = true\n", &[]).contains("must be a duration"));
    assert!(
        file_error("ha-replicate = 1\n", &[]).contains("must be one of none, configuration, all")
    );
    assert!(file_error("data-dir = 1\n", &[]).contains("must be a non-empty string"));
}

#[test]
fn every_option_is_read_and_checked_from_the_file() {
    for spec in OPTIONS.iter().filter(|s| s.key != "config") {
        let shown = file_error(&format!("{} = [[]]\n", spec.key), &[]);
        let prefix = format!("config file FILE: {}: ", spec.key);
        assert!(shown.starts_with(&prefix), "{}: {shown}", spec.key);
    }
}

#[test]
fn command_line_value_errors_name_the_flag() {
    let shown = |args: &[&str]| error(args).to_string();
    assert_eq!(
        shown(&["--worker-threads", "0"]),
        "--worker-threads: '0' is not allowed: must be at least 1"
    );
    assert_eq!(
        shown(&["--port", "99999"]),
        "--port: '99999' is not allowed: must be a whole number from 0 to 65535"
    );
    assert_eq!(
        shown(&["--max-frame-size", "511"]),
        "--max-frame-size: '511' is not allowed: must be a whole number from 512 to 4294967295"
    );
    assert_eq!(
        shown(&["--auth", "maybe"]),
        "--auth: 'maybe' is not allowed: must be yes or no (also accepted: true/false, on/off, 1/0)"
    );
    assert_eq!(
        shown(&["--default-limit-policy", "drop"]),
        "--default-limit-policy: 'drop' is not allowed: must be one of flow, reject, ring"
    );
    assert_eq!(
        shown(&["--log-enable", "verbose"]),
        "--log-enable: 'verbose' is not allowed: must be one of trace+, debug+, info+, notice+, warning+, error+, critical+ (the '+' may be left out)"
    );
    assert_eq!(
        shown(&["--idle-timeout", "-1"]),
        "--idle-timeout: '-1' is not allowed: duration '-1' is negative: durations must be 0 or more"
    );
    assert_eq!(
        shown(&["--link-heartbeat-interval", "5sec"]),
        "--link-heartbeat-interval: '5sec' is not allowed: unknown unit 'sec' in duration '5sec': use ns, us, ms, s, m or h"
    );
    assert!(matches!(
        error(&["--link-credit", "0"]),
        ConfigError::InvalidValue { .. }
    ));
    assert!(matches!(
        error(&["--max-connections", "0"]),
        ConfigError::InvalidValue { .. }
    ));
    assert!(matches!(
        error(&["--data-dir", ""]),
        ConfigError::InvalidValue { .. }
    ));
}

#[test]
fn help_and_version_are_clap_errors_to_exit_with() {
    let kind = |args: &[&str]| match error(args) {
        ConfigError::Clap(e) => e.kind(),
        other => panic!("{args:?}: {other}"),
    };
    assert_eq!(kind(&["--help"]), clap::error::ErrorKind::DisplayHelp);
    assert_eq!(kind(&["--version"]), clap::error::ErrorKind::DisplayVersion);
    assert_eq!(
        kind(&["--worker-thread", "2"]),
        clap::error::ErrorKind::UnknownArgument
    );
    assert_eq!(kind(&["--port"]), clap::error::ErrorKind::InvalidValue);
    assert_eq!(kind(&["extra"]), clap::error::ErrorKind::UnknownArgument);
}

#[test]
fn help_lists_every_option_with_its_default() {
    let help = super::options::command().render_long_help().to_string();
    for spec in OPTIONS {
        assert!(help.contains(&format!("--{}", spec.key)), "{}", spec.key);
        if let Some(default) = spec.default {
            assert!(
                help.contains(&format!("[default: {default}]")),
                "{}",
                spec.key
            );
        }
    }
}

#[test]
#[rustfmt::skip]
fn booleans_accept_every_spelling() {
    for (word, expected) in [
        ("yes", true), ("no", false), ("true", true), ("false", false),
        ("on", true), ("off", false), ("1", true), ("0", false),
        ("YES", true), ("Off", false),
    ] {
        assert_eq!(loaded(&["--auth", word]).auth, expected, "{word}");
        let toml = format!("auto-create-queues = {word:?}\n");
        assert_eq!(file_loaded(&toml, &[]).auto_create_queues, expected, "{word}");
    }
    assert!(file_loaded("auth = true\n", &[]).auth);
    assert!(!file_loaded("log-to-stderr = false\n", &[]).log_to_stderr);
}

#[test]
fn bare_boolean_flag_means_yes() {
    let c = loaded(&["--auth", "--ha-queue-replication", "--port", "1"]);
    assert!(c.auth);
    assert!(c.ha.queue_replication);
    assert_eq!(c.port, 1);
}

#[test]
fn durations_with_units() {
    let c = file_loaded(
        "idle-timeout = \"250ms\"\nha-backup-timeout = \"1.5s\"\nlink-heartbeat-interval = 2\n",
        &["--link-maintenance-interval", "10us"],
    );
    assert_eq!(c.idle_timeout, Duration::from_millis(250));
    assert_eq!(c.ha.backup_timeout, Duration::from_millis(1500));
    assert_eq!(c.ha.link_heartbeat_interval, Duration::from_secs(2));
    assert_eq!(c.ha.link_maintenance_interval, Duration::from_micros(10));
    assert!(file_error("idle-timeout = -0.5\n", &[]).contains("negative"));
    assert!(file_error("idle-timeout = nan\n", &[]).contains("not a number"));
}

#[test]
#[rustfmt::skip]
fn ha_urls_follow_the_broker_url_grammar() {
    let c = loaded(&[
        "--ha-cluster", "yes",
        "--ha-brokers-url", "amqp:admin/pw@tcp:n1:5672, ssl:n2, [fe80::1]:5673",
    ]);
    let Some(url) = &c.ha.brokers_url else {
        panic!("no brokers url");
    };
    assert_eq!(url.user.as_deref(), Some("admin"));
    assert_eq!(url.password.as_deref(), Some("pw"));
    assert_eq!(url.addrs.len(), 3);
    assert_eq!(url.addrs[1].transport, Transport::Ssl);
    assert_eq!(url.addrs[1].port, 5671);
    assert_eq!(url.addrs[2].host, "fe80::1");
    assert_eq!(
        error(&["--ha-brokers-url", "rdma:host:5672"]).to_string(),
        "--ha-brokers-url: unsupported transport 'rdma' in address 'rdma:host:5672' (use tcp: or ssl:)"
    );
    assert_eq!(
        file_error("ha-public-url = \"h:99999\"\n", &[]),
        "config file FILE: ha-public-url: port '99999' in address 'h:99999' is not a number from 1 to 65535"
    );
}

#[test]
#[rustfmt::skip]
fn passwords_never_appear_in_errors_or_debug() {
    let shown = error(&["--ha-brokers-url", "u/topsecret@h:0"]).to_string();
    assert!(!shown.contains("topsecret"), "{shown}");
    let shown = file_error("ha-password = [\"topsecret\"]\n", &[]);
    assert!(!shown.contains("topsecret"), "{shown}");
    let c = loaded(&[
        "--ha-username", "u",
        "--ha-password", "topsecret",
        "--ha-public-url", "u/topsecret@h",
    ]);
    let shown = format!("{c:?}");
    assert!(!shown.contains("topsecret"), "{shown}");
}

#[test]
fn cluster_needs_brokers_url() {
    assert_eq!(
        error(&["--ha-cluster", "yes"]).to_string(),
        "--ha-cluster: a cluster broker needs ha-brokers-url, the addresses of all brokers in \
         the cluster (e.g. --ha-brokers-url node1,node2,node3, or \
         ha-brokers-url = \"node1,node2,node3\" in the config file)"
    );
    let shown = file_error("ha-cluster = true\n", &[]);
    assert!(
        shown.starts_with("config file FILE: ha-cluster: a cluster broker needs ha-brokers-url"),
        "{shown}"
    );
    let c = file_loaded("ha-cluster = true\n", &["--ha-brokers-url", "n1,n2"]);
    assert!(c.ha.cluster);
    assert!(!loaded(&["--ha-brokers-url", "n1"]).ha.cluster);
}

#[test]
fn ha_mechanism_follows_the_credentials() {
    assert_eq!(loaded(&[]).ha.mechanism.as_deref(), Some("ANONYMOUS"));
    assert_eq!(
        loaded(&["--ha-username", "u", "--ha-password", "p"])
            .ha
            .mechanism
            .as_deref(),
        Some("PLAIN")
    );
    assert_eq!(
        loaded(&["--ha-username", "u", "--ha-mechanism", "anonymous"])
            .ha
            .mechanism
            .as_deref(),
        Some("ANONYMOUS")
    );
    assert_eq!(
        error(&["--ha-password", "p"]).to_string(),
        "--ha-password: a password needs a user: set ha-username too"
    );
    assert!(error(&["--ha-mechanism", "PLAIN"])
        .to_string()
        .starts_with("--ha-mechanism: PLAIN needs ha-username"));
}

#[test]
fn log_enable_maps_qpidd_levels() {
    for (spec, filter) in [
        ("notice+", "info"),
        ("critical", "error"),
        ("trace+", "trace"),
    ] {
        assert_eq!(loaded(&["--log-enable", spec]).log_enable, filter);
    }
}

#[test]
fn choice_enums_parse_and_display() {
    for policy in [LimitPolicy::Flow, LimitPolicy::Reject, LimitPolicy::Ring] {
        assert_eq!(policy.to_string().parse(), Ok(policy));
    }
    for level in [
        ReplicateLevel::None,
        ReplicateLevel::Configuration,
        ReplicateLevel::All,
    ] {
        assert_eq!(level.to_string().parse(), Ok(level));
    }
    assert_eq!(" ALL ".parse(), Ok(ReplicateLevel::All));
    assert_eq!(
        "some".parse::<ReplicateLevel>().map_err(|e| e.to_string()),
        Err("'some' is not one of none, configuration, all".to_string())
    );
}

#[test]
fn a_cluster_refuses_heartbeat_and_maintenance_intervals_below_10ms() {
    let cluster = ["--ha-cluster", "yes", "--ha-brokers-url", "a,b"];
    let with = |extra: [&'static str; 2]| -> Vec<&'static str> {
        cluster.iter().copied().chain(extra).collect()
    };
    assert_eq!(
        error(&with(["--link-heartbeat-interval", "0"])).to_string(),
        "--link-heartbeat-interval: '0ns' is not allowed: a cluster needs at least 10ms \
         (backups would be dropped as silent before they could answer)"
    );
    let short = error(&with(["--link-maintenance-interval", "9ms"])).to_string();
    assert!(
        short.starts_with("--link-maintenance-interval: '9ms' is not allowed"),
        "{short}"
    );
    let c = loaded(&with(["--link-heartbeat-interval", "10ms"]));
    assert_eq!(c.ha.link_heartbeat_interval, Duration::from_millis(10));
    // Outside a cluster the intervals mean nothing and are not checked.
    let c = loaded(&["--link-heartbeat-interval", "0"]);
    assert_eq!(c.ha.link_heartbeat_interval, Duration::ZERO);
}

#[test]
fn min_backups_cannot_exceed_the_other_brokers() {
    let cluster = ["--ha-cluster", "yes", "--ha-brokers-url", "a,b,c"];
    let with = |n: &'static str| -> Vec<&'static str> {
        cluster
            .iter()
            .copied()
            .chain(["--ha-min-backups", n])
            .collect()
    };
    let c = loaded(&with("2"));
    assert_eq!(c.ha.min_backups, 2);
    assert_eq!(
        error(&with("3")).to_string(),
        "--ha-min-backups: 3 is not allowed: ha-brokers-url names 3 brokers, so a primary \
         has at most 2 backups: it would never settle"
    );
    assert!(matches!(
        error(&["--ha-min-backups", "-1"]),
        ConfigError::InvalidValue { .. }
    ));
    let c = loaded(&["--ha-min-backups-timeout", "2s", "--ha-sync-config", "yes"]);
    assert_eq!(c.ha.min_backups_timeout, Duration::from_secs(2));
    assert!(c.ha.sync_config);
}

#[test]
fn the_replication_shards_cpu_is_a_cpu_number() {
    let c = loaded(&["--ha-replication-cpu", "3"]);
    assert_eq!(c.ha.replication_cpu, Some(3));
    assert_eq!(loaded(&[]).ha.replication_cpu, None);
    assert!(matches!(
        error(&["--ha-replication-cpu", "last"]),
        ConfigError::InvalidValue { .. }
    ));
    assert!(!loaded(&[]).worker_threads_given);
    assert!(loaded(&["--worker-threads", "2"]).worker_threads_given);
}

#[test]
fn the_store_is_on_under_data_dir_unless_told_otherwise() {
    let c = loaded(&["--data-dir", "/var/lib/tandem"]);
    assert!(c.store.enabled && c.store.sync && !c.store.repair);
    assert_eq!(
        c.store.dir,
        std::path::PathBuf::from("/var/lib/tandem/store")
    );
    assert_eq!(c.store.segment_size, 64 * 1024 * 1024);
    let c = loaded(&[
        "--store",
        "no",
        "--store-dir",
        "/fast/store",
        "--store-sync",
        "no",
    ]);
    assert!(!c.store.enabled && !c.store.sync);
    assert_eq!(c.store.dir, std::path::PathBuf::from("/fast/store"));
    let e = error(&["--store-segment-size", "4096"]).to_string();
    assert!(
        e.contains("store-segment-size") && e.contains("4096"),
        "{e}"
    );
}

#[test]
fn auth_defaults_to_no_only_on_loopback() {
    let c = loaded(&[]);
    assert!(!c.auth && !c.auth_given, "127.0.0.1 by default: no auth");
    assert!(!loaded(&["--interface", "::1"]).auth);
    assert!(!loaded(&["--interface", "localhost"]).auth);
    let open = loaded(&["--interface", "0.0.0.0"]);
    assert!(
        open.auth && !open.auth_given,
        "elsewhere auth is on unless given"
    );
    let explicit = loaded(&["--interface", "0.0.0.0", "--auth", "no"]);
    assert!(!explicit.auth && explicit.auth_given);
    assert!(file_loaded("interface = \"10.0.0.5\"\nauth = false\n", &[]).auth_given);
}

#[test]
fn handshake_limits_have_defaults_and_are_checked() {
    let c = loaded(&[]);
    assert_eq!(c.handshake_timeout, std::time::Duration::from_secs(10));
    assert_eq!(c.max_handshaking, 100);
    let c = loaded(&["--handshake-timeout", "2s", "--max-handshaking", "7"]);
    assert_eq!(c.handshake_timeout, std::time::Duration::from_secs(2));
    assert_eq!(c.max_handshaking, 7);
    let e = error(&["--max-handshaking", "0"]).to_string();
    assert!(e.contains("max-handshaking"), "{e}");
}

#[test]
fn the_example_config_file_loads() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/tandemd.toml");
    let arg = format!("--config={path}");
    let c = loaded(&[&arg]);
    assert!(c.ha.cluster);
    assert_eq!(c.ha.min_backups, 1);
}

#[test]
fn the_http_port_is_off_unless_given_and_listens_on_loopback() {
    let c = loaded(&[]);
    assert_eq!(c.http_port, None);
    assert_eq!(c.http_interface, "127.0.0.1");
    let c = loaded(&["--http-port", "0", "--http-interface", "::1"]);
    assert_eq!(c.http_port, Some(0));
    assert_eq!(c.http_interface, "::1");
    assert_eq!(loaded(&["--http-port", "8672"]).http_port, Some(8672));
    for bad in ["65536", "web", "-1"] {
        assert!(
            matches!(
                error(&["--http-port", bad]),
                ConfigError::InvalidValue { .. }
            ),
            "{bad}"
        );
    }
}

#[test]
fn the_log_format_is_text_unless_json_is_asked_for() {
    use crate::log::LogFormat;
    assert_eq!(loaded(&[]).log_format, LogFormat::Text);
    assert_eq!(
        loaded(&["--log-format", "json"]).log_format,
        LogFormat::Json
    );
    assert_eq!(
        loaded(&["--log-format", "JSON"]).log_format,
        LogFormat::Json
    );
    assert!(matches!(
        error(&["--log-format", "xml"]),
        ConfigError::InvalidValue { .. }
    ));
}
