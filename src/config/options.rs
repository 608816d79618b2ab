//! The option table: every tandemd option once, with the name that is both its
//! command-line flag and its config-file key, its default, and its help text.
//! The clap command and the config file's key check are both built from this
//! table, so a flag and its key cannot drift apart.

use clap::{Arg, ArgAction, Command};

/// Where tandemd looks for its config file when `--config` is not given.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/tandem/tandemd.toml";

/// The one option that only exists on the command line.
pub(super) const CONFIG_KEY: &str = "config";

/// One option of tandemd.
pub(super) struct OptionSpec {
    /// The flag without `--`, and the config-file key.
    pub key: &'static str,
    /// Placeholder for the value in `--help`.
    value_name: &'static str,
    /// The default in the option's own syntax, parsed by the same code as user input
    /// so that `--help` shows exactly what the broker uses. `None`: no default, or one
    /// computed at start-up (the help text says which).
    pub default: Option<&'static str>,
    /// `--help` text.
    help: &'static str,
    /// `--help` section.
    heading: &'static str,
    pub kind: Kind,
}

/// What an option's value is, as far as the command line and error messages care.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// Any value.
    Plain,
    /// A yes/no value; a bare `--flag` means yes.
    Bool,
    /// May hold a password: error messages never repeat the value.
    Secret,
}

const GENERAL: &str = "General";
const SECURITY: &str = "Security";
const LOGGING: &str = "Logging";
const MONITORING: &str = "Monitoring (HTTP)";
const LIMITS: &str = "Limits";
const QUEUES: &str = "Queue defaults";
const STORE: &str = "Persistent store";
const HA: &str = "High availability (active-passive cluster)";

const fn opt(
    heading: &'static str,
    key: &'static str,
    value_name: &'static str,
    default: Option<&'static str>,
    kind: Kind,
    help: &'static str,
) -> OptionSpec {
    OptionSpec {
        key,
        value_name,
        default,
        help,
        heading,
        kind,
    }
}

use Kind::{Bool, Plain, Secret};

/// Every option, in `--help` order.
#[rustfmt::skip]
pub(super) const OPTIONS: &[OptionSpec] = &[
    opt(GENERAL, CONFIG_KEY, "PATH", Some(DEFAULT_CONFIG_FILE), Plain,
        "Config file (TOML, keys named like these options); the default file is skipped if it does not exist"),
    opt(GENERAL, "port", "N", Some("5672"), Plain,
        "Port for AMQP connections; 0 picks a free port"),
    opt(GENERAL, "interface", "ADDR", Some("127.0.0.1"), Plain,
        "Address to listen on: an IP address or host name"),
    opt(GENERAL, "worker-threads", "N", None, Plain,
        "Number of shards, each a thread pinned to a core [default: number of available cores]"),
    opt(GENERAL, "data-dir", "PATH", Some("./tandem-data"), Plain,
        "Directory for the broker's durable state"),
    opt(GENERAL, "connection-placement", "yes|no", Some("yes"), Bool,
        "Move a connection, at its first link to a queue, to the shard that owns that queue (its messages then stay on one shard)"),
    opt(STORE, "store", "yes|no", Some("yes"), Bool,
        "Write persistent messages (durable, on durable queues) and durable configuration to disk"),
    opt(STORE, "store-dir", "PATH", None, Plain,
        "Directory of the store (qpidd's store-dir) [default: DATA-DIR/store]"),
    opt(STORE, "store-segment-size", "BYTES", Some("67108864"), Plain,
        "Size of a journal segment file (at least 65536)"),
    opt(STORE, "store-sync", "yes|no", Some("yes"), Bool,
        "Settle persistent messages only once on disk; no is UNSAFE (a crash loses settled messages), for benchmarks"),
    opt(STORE, "store-repair", "yes|no", Some("no"), Bool,
        "At start, cut a journal segment at a damaged record in its middle (the records after it are lost) instead of refusing to start"),
    opt(SECURITY, "auth", "yes|no", None, Bool,
        "Require SASL authentication of clients [default: no on a loopback interface, yes otherwise; no elsewhere must be given and is logged loudly]"),
    opt(SECURITY, "ssl-port", "PORT", Some("5671"), Plain,
        "TLS port, on the same interface (listening only with ssl-cert-file; 0 picks a free one)"),
    opt(SECURITY, "ssl-cert-file", "PATH", None, Plain,
        "PEM certificate chain of the broker; with it the TLS port listens"),
    opt(SECURITY, "ssl-key-file", "PATH", None, Plain,
        "PEM private key of ssl-cert-file"),
    opt(SECURITY, "ssl-ca-file", "PATH", None, Plain,
        "PEM CA whose client certificates the TLS port accepts (SASL EXTERNAL); a backup also verifies its primary against it"),
    opt(SECURITY, "ssl-require-client-authentication", "yes|no", Some("no"), Bool,
        "Refuse TLS clients without a certificate ssl-ca-file signed"),
    opt(SECURITY, "require-encryption", "yes|no", Some("no"), Bool,
        "Refuse clients that did not connect over TLS (the plain port still answers, to say so)"),
    opt(SECURITY, "acl-file", "PATH", None, Plain,
        "Access-control list in qpidd's syntax (docs/security.md); applies even with auth = no (user anonymous); SIGHUP reloads it"),
    opt(SECURITY, "realm", "NAME", Some("QPID"), Plain,
        "Realm of the identities SASL EXTERNAL takes from TLS client certificates (CN@realm)"),
    opt(SECURITY, "users-file", "PATH", None, Plain,
        "File of user:password lines checked by SASL PLAIN"),
    opt(LOGGING, "log-enable", "LEVEL", Some("info+"), Plain,
        "Log this level and above: trace+, debug+, info+, notice+, warning+, error+ or critical+"),
    opt(LOGGING, "log-to-stderr", "yes|no", Some("yes"), Bool,
        "Write the log to standard error"),
    opt(LOGGING, "log-format", "text|json", Some("text"), Plain,
        "text: lines prefixed with the broker's id and HA status; json: one JSON object per line (timestamp, level, broker_id, status, thread, shard, message, fields)"),
    opt(LOGGING, "stall-threshold", "DURATION", Some("0"), Plain,
        "Log and count every poll of a shard's task that uses more CPU than this, e.g. 500us (0: off; on, each poll costs two clock reads)"),
    opt(MONITORING, "http-port", "PORT", None, Plain,
        "Serve /metrics (Prometheus), /health and /ready over HTTP on this port (0 picks a free one) [default: off]"),
    opt(MONITORING, "http-interface", "ADDR", Some("127.0.0.1"), Plain,
        "Address the HTTP port listens on; it has no authentication yet, so keep it on loopback or a management network"),
    opt(LIMITS, "max-connections", "N", Some("500"), Plain,
        "Most client connections open at once"),
    opt(LIMITS, "max-frame-size", "BYTES", Some("65536"), Plain,
        "Largest AMQP frame accepted or sent (at least 512)"),
    opt(LIMITS, "idle-timeout", "DURATION", Some("0"), Plain,
        "Close connections silent for this long (e.g. 30s); 0 means never"),
    opt(LIMITS, "handshake-timeout", "DURATION", Some("10s"), Plain,
        "Close a connection that has not sent its AMQP open (protocol header and SASL included) within this long"),
    opt(LIMITS, "max-handshaking", "N", Some("100"), Plain,
        "Most connections still in their handshake at once; a new one beyond it closes the one waiting longest"),
    opt(LIMITS, "link-credit", "N", Some("500"), Plain,
        "Credit granted to each publishing link"),
    opt(QUEUES, "default-max-queue-size", "BYTES", Some("104857600"), Plain,
        "Largest total message size a queue holds; 0 means unlimited"),
    opt(QUEUES, "default-max-queue-count", "N", Some("0"), Plain,
        "Most messages a queue holds; 0 means unlimited"),
    opt(QUEUES, "default-limit-policy", "flow|reject|ring", Some("flow"), Plain,
        "What a full queue does: withhold credit (flow), reject messages, or drop the oldest (ring)"),
    opt(QUEUES, "auto-create-queues", "yes|no", Some("yes"), Bool,
        "Create a queue when a client attaches to one that does not exist"),
    opt(HA, "ha-cluster", "yes|no", Some("no"), Bool,
        "Join an active-passive cluster (needs ha-brokers-url)"),
    opt(HA, "ha-brokers-url", "URL", None, Secret,
        "Addresses of all brokers in the cluster, e.g. node1,node2,node3 (not a virtual IP)"),
    opt(HA, "ha-public-url", "URL", None, Secret,
        "URL clients are told to use, e.g. a virtual IP"),
    opt(HA, "ha-replicate", "none|configuration|all", Some("none"), Plain,
        "Replication level for queues and exchanges that do not set their own"),
    opt(HA, "ha-username", "USER", None, Plain,
        "User name for connections between brokers"),
    opt(HA, "ha-password", "PASSWORD", None, Secret,
        "Password for connections between brokers"),
    opt(HA, "ha-mechanism", "MECHANISM", None, Plain,
        "SASL mechanism for connections between brokers [default: PLAIN with ha-username, else ANONYMOUS]"),
    opt(HA, "ha-backup-timeout", "DURATION", Some("10s"), Plain,
        "How long a recovering primary waits for its expected backups"),
    opt(HA, "ha-min-backups", "N", Some("0"), Plain,
        "The primary settles publishes to replicated queues only while at least N backups are ready; 0 settles with none"),
    opt(HA, "ha-min-backups-timeout", "DURATION", Some("30s"), Plain,
        "How long a publish waits for ha-min-backups ready backups before it is rejected (amqp:resource-limit-exceeded)"),
    opt(HA, "ha-sync-config", "yes|no", Some("no"), Bool,
        "tandem-config waits after each change until every ready backup has applied it (its --sync default)"),
    opt(HA, "link-maintenance-interval", "DURATION", Some("2s"), Plain,
        "How often a backup checks and re-opens its link to the primary"),
    opt(HA, "link-heartbeat-interval", "DURATION", Some("120s"), Plain,
        "Heartbeat on links between brokers; a peer is dead after two silent intervals"),
    opt(HA, "ha-queue-replication", "yes|no", Some("no"), Bool,
        "Allow replicating individual queues without a cluster (runs the replication shard)"),
    opt(HA, "ha-replica-consumers", "yes|no", Some("no"), Bool,
        "Local consumers may take messages from a queue replica (as in qpidd); sends to a replica are always refused"),
    opt(HA, "ha-replication-cpu", "CPU", None, Plain,
        "The CPU of the replication shard (repl-0) [default: its own with 4 or more CPUs and no worker-threads, else the last]"),
];

/// The option named `key`. Only called with keys written in this crate's code.
pub(super) fn spec(key: &str) -> &'static OptionSpec {
    match OPTIONS.iter().find(|spec| spec.key == key) {
        Some(spec) => spec,
        None => unreachable!("option '{key}' is missing from OPTIONS"),
    }
}

/// The clap command for tandemd, one flag per option. No flag has a clap default:
/// an absent flag must stay absent so the config file's value can apply.
pub(super) fn command() -> Command {
    let mut command = Command::new("tandemd")
        .version(env!("CARGO_PKG_VERSION"))
        .about("Tandem: an AMQP 1.0 message broker with hot-standby HA")
        .args_override_self(true)
        .after_help(
            "Every option except --config can also be set in the config file, with the \
             option's name as the key: `ha-cluster = true`, `port = 5672`, \
             `link-heartbeat-interval = \"5s\"`. The command line wins over the file.",
        );
    for spec in OPTIONS {
        let help = match spec.default {
            Some(default) => format!("{} [default: {default}]", spec.help),
            None => spec.help.to_string(),
        };
        let mut arg = Arg::new(spec.key)
            .long(spec.key)
            .value_name(spec.value_name)
            .action(ArgAction::Set)
            .help(help)
            .help_heading(spec.heading);
        if spec.kind == Kind::Bool {
            arg = arg.num_args(0..=1).default_missing_value("yes");
        } else {
            // So that `--port -1` is reported as a bad port, not an unknown flag `-1`.
            arg = arg.allow_negative_numbers(true);
        }
        command = command.arg(arg);
    }
    command
}

/// A config-file key that is nearly `unknown`: the same once case and `_`/`-` are
/// ignored, at most a few typos away, or the same without a prefix (`cluster` for
/// `ha-cluster`).
pub(super) fn suggest(unknown: &str) -> Option<&'static str> {
    let normalized = unknown
        .trim_start_matches('-')
        .to_ascii_lowercase()
        .replace('_', "-");
    if normalized == CONFIG_KEY {
        // Not a near miss of another key: the one the file cannot hold.
        return None;
    }
    let file_keys = || OPTIONS.iter().map(|s| s.key).filter(|k| *k != CONFIG_KEY);
    let (distance, key) = file_keys()
        .map(|key| (edit_distance(&normalized, key), key))
        .min_by_key(|(distance, _)| *distance)?;
    let allowed = if key.len() > 12 { 3 } else { 2 };
    if distance <= allowed {
        return Some(key);
    }
    let suffix = format!("-{normalized}");
    file_keys().find(|key| key.ends_with(&suffix))
}

/// Levenshtein distance, counted in chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = Vec::with_capacity(b.len() + 1);
        current.push(i + 1);
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous[j] + usize::from(ca != *cb);
            current.push(substitute.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_command_is_well_formed() {
        command().debug_assert();
    }

    #[test]
    fn keys_are_unique_lowercase_flags() {
        for (i, spec) in OPTIONS.iter().enumerate() {
            assert!(
                spec.key.chars().all(|c| c.is_ascii_lowercase() || c == '-'),
                "{}",
                spec.key
            );
            assert!(
                OPTIONS[i + 1..].iter().all(|other| other.key != spec.key),
                "duplicate {}",
                spec.key
            );
        }
    }

    #[test]
    fn suggests_near_misses() {
        assert_eq!(suggest("worker-thread"), Some("worker-threads"));
        assert_eq!(suggest("worker_threads"), Some("worker-threads"));
        assert_eq!(suggest("Worker-Threads"), Some("worker-threads"));
        assert_eq!(suggest("ha-broker-url"), Some("ha-brokers-url"));
        assert_eq!(suggest("--port"), Some("port"));
        assert_eq!(suggest("prot"), Some("port"));
        assert_eq!(suggest("replicate"), Some("ha-replicate"));
        assert_eq!(suggest("cluster"), Some("ha-cluster"));
        assert_eq!(suggest("config"), None);
        assert_eq!(suggest("something-else-entirely"), None);
    }

    #[test]
    fn edit_distance_counts_edits() {
        assert_eq!(edit_distance("", ""), 0);
        assert_eq!(edit_distance("abc", "abc"), 0);
        assert_eq!(edit_distance("abc", "ab"), 1);
        assert_eq!(edit_distance("abc", "axc"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
