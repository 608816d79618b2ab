// The body of the `config_file` fuzz target, shared with its stable stand-in
// `tests/fuzz_config.rs`: both `include!` this file, so it names its own
// imports and needs only `tandem`.

/// tandemd's config file from arbitrary text: it gives a configuration or an
/// error (whose message prints), never a panic, and a configuration keeps the
/// limits the options promise.
///
/// Input: `data[0]` bit 0 clear: the rest is the file's text. Set: the rest is
/// lines, split at 0xff, each a byte picking an option and the text of its
/// value (`key = <text>`), so the fuzzer reaches the values quickly.
fn config_file_body(data: &[u8]) {
    use std::fmt::Write;
    use std::path::Path;
    use tandem::config::Config;

    /// Every option of src/config/options.rs, and two that are not options.
    const KEYS: [&str; 54] = [
        "port",
        "interface",
        "worker-threads",
        "data-dir",
        "connection-placement",
        "store",
        "store-dir",
        "store-segment-size",
        "store-sync",
        "store-repair",
        "auth",
        "ssl-port",
        "ssl-cert-file",
        "ssl-key-file",
        "ssl-ca-file",
        "ssl-require-client-authentication",
        "require-encryption",
        "acl-file",
        "realm",
        "users-file",
        "log-enable",
        "log-to-stderr",
        "log-format",
        "stall-threshold",
        "http-port",
        "http-interface",
        "max-connections",
        "max-frame-size",
        "idle-timeout",
        "handshake-timeout",
        "max-handshaking",
        "link-credit",
        "default-max-queue-size",
        "default-max-queue-count",
        "default-limit-policy",
        "auto-create-queues",
        "ha-cluster",
        "ha-brokers-url",
        "ha-public-url",
        "ha-replicate",
        "ha-username",
        "ha-password",
        "ha-mechanism",
        "ha-backup-timeout",
        "ha-min-backups",
        "ha-min-backups-timeout",
        "ha-sync-config",
        "link-maintenance-interval",
        "link-heartbeat-interval",
        "ha-queue-replication",
        "ha-replica-consumers",
        "ha-replication-cpu",
        "config",
        "ha-clutser",
    ];

    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let text = if mode & 1 == 0 {
        String::from_utf8_lossy(rest).into_owned()
    } else {
        let mut text = String::new();
        for line in rest.split(|b| *b == 0xff) {
            if let Some((&pick, value)) = line.split_first() {
                let key = KEYS[usize::from(pick) % KEYS.len()];
                let _ = writeln!(text, "{key} = {}", String::from_utf8_lossy(value));
            }
        }
        text
    };
    match Config::from_file_text(Path::new("fuzz.toml"), &text) {
        Ok(config) => {
            assert!(config.worker_threads >= 1, "{text:?}");
            assert!(config.max_frame_size >= 512, "{text:?}");
            assert!(
                config.max_connections >= 1 && config.link_credit >= 1,
                "{text:?}"
            );
            if let Some(url) = &config.ha.brokers_url {
                assert!(config.ha.min_backups < url.addrs.len().max(1), "{text:?}");
            }
            let _ = format!("{config:?}");
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}
