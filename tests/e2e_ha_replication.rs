//! What an HA primary replicates to its backups, with real brokers: queues,
//! exchanges and bindings by replication level (`ha-replicate`, a queue's or
//! exchange's own `--replicate`, a binding only when both ends are replicated,
//! built-in exchanges never), messages only for level `all`, dequeues and
//! deletes as they happen on the primary. The backups are read with the admin
//! tools (`tandem-config --ha-admin`, `tandem-stat --ha-admin`), as qpidd's
//! `test_replication` and `test_replicate_default` read theirs.

mod common;
mod ha_cluster;

use common::{run_python, ClientOutput};
use ha_cluster::{serial, HaCluster, Member};

const PRIMARY: Member = 0;

/// Runs a Proton client `script` for `count` messages on `queue` of member
/// `at`, with `extra` arguments.
fn proton_at(
    script: &str,
    cluster: &HaCluster,
    at: Member,
    queue: &str,
    count: usize,
    extra: &[&str],
) -> ClientOutput {
    let (url, count) = (cluster.url(at), count.to_string());
    let mut args = vec!["--url", &url, "--address", queue, "--count", &count];
    args.extend_from_slice(extra);
    let out = run_python(script, &args);
    out.assert_success();
    out
}

/// Runs a Proton client `script` for `count` messages on `queue` of the primary.
fn proton(script: &str, cluster: &HaCluster, queue: &str, count: usize) -> ClientOutput {
    proton_at(script, cluster, PRIMARY, queue, count, &[])
}

fn send(cluster: &HaCluster, queue: &str, count: usize) {
    proton("send.py", cluster, queue, count);
}

fn receive(cluster: &HaCluster, queue: &str, count: usize) {
    let out = proton("recv.py", cluster, queue, count);
    assert_eq!(out.messages().len(), count);
}

/// Polls until `marker` exists on both backups: configuration events are
/// applied in order, so everything created before it has been applied too.
fn wait_for_marker(cluster: &HaCluster, marker: &str) {
    for backup in cluster.others(PRIMARY) {
        let mut queues = Vec::new();
        let present = common::wait_until(ha_cluster::STATUS_DEADLINE, || {
            queues = cluster.names(backup, "queues");
            queues.iter().any(|q| q == marker)
        });
        assert!(
            present,
            "{marker} never reached {}: {queues:?}",
            cluster.url(backup)
        );
    }
}

#[test]
fn configuration_and_messages_replicate_by_level() {
    let _serial = serial();
    let cluster = HaCluster::start_with_primary(Some("configuration"), PRIMARY);

    cluster.config(PRIMARY, &["add", "queue", "q-default"]);
    cluster.config(PRIMARY, &["add", "queue", "q-all", "--replicate", "all"]);
    cluster.config(PRIMARY, &["add", "queue", "q-none", "--replicate", "none"]);
    cluster.config(PRIMARY, &["add", "exchange", "topic", "x-default"]);
    cluster.config(
        PRIMARY,
        &["add", "exchange", "topic", "x-none", "--replicate", "none"],
    );
    // Replicated only when both ends are; built-in exchanges never are.
    cluster.config(PRIMARY, &["bind", "x-default", "q-default", "k.both"]);
    cluster.config(PRIMARY, &["bind", "x-default", "q-all", "k.all"]);
    cluster.config(PRIMARY, &["bind", "x-default", "q-none", "k.queue-none"]);
    cluster.config(PRIMARY, &["bind", "x-none", "q-default", "k.exchange-none"]);
    cluster.config(PRIMARY, &["bind", "amq.topic", "q-default", "k.builtin"]);
    send(&cluster, "q-default", 5);
    send(&cluster, "q-all", 7);
    send(&cluster, "q-none", 2);
    cluster.config(PRIMARY, &["add", "queue", "marker-1"]);
    wait_for_marker(&cluster, "marker-1");

    let expected_bindings = vec![
        (
            "x-default".to_owned(),
            "q-all".to_owned(),
            "k.all".to_owned(),
        ),
        (
            "x-default".to_owned(),
            "q-default".to_owned(),
            "k.both".to_owned(),
        ),
    ];
    for backup in cluster.others(PRIMARY) {
        let mut queues = cluster.names(backup, "queues");
        queues.sort();
        assert_eq!(
            queues,
            ["marker-1", "q-all", "q-default"],
            "{}",
            cluster.url(backup)
        );
        let exchanges = cluster.names(backup, "exchanges");
        assert!(exchanges.iter().any(|x| x == "x-default"), "{exchanges:?}");
        assert!(!exchanges.iter().any(|x| x == "x-none"), "{exchanges:?}");
        assert_eq!(cluster.bindings(backup), expected_bindings);
        // Level `configuration` copies the queue, not its messages; `all` both.
        cluster.wait_depth(backup, "q-all", 7);
        assert_eq!(cluster.depth(backup, "q-default"), Some(0));
    }
    assert_eq!(cluster.depth(PRIMARY, "q-default"), Some(5));
    assert_eq!(cluster.depth(PRIMARY, "q-none"), Some(2));

    // Messages consumed on the primary leave the backups too.
    receive(&cluster, "q-all", 3);
    for backup in cluster.others(PRIMARY) {
        cluster.wait_depth(backup, "q-all", 4);
    }

    // Deleting on the primary deletes on the backups.
    cluster.config(PRIMARY, &["unbind", "x-default", "q-default", "k.both"]);
    cluster.config(PRIMARY, &["del", "queue", "q-all", "--force"]);
    cluster.config(PRIMARY, &["del", "exchange", "x-default"]);
    cluster.config(PRIMARY, &["add", "queue", "marker-2"]);
    wait_for_marker(&cluster, "marker-2");
    for backup in cluster.others(PRIMARY) {
        let mut queues = cluster.names(backup, "queues");
        queues.sort();
        assert_eq!(queues, ["marker-1", "marker-2", "q-default"]);
        let exchanges = cluster.names(backup, "exchanges");
        assert!(!exchanges.iter().any(|x| x == "x-default"), "{exchanges:?}");
        assert_eq!(cluster.bindings(backup), Vec::new());
    }
}

#[test]
fn nothing_replicates_by_default_except_what_asks_for_it() {
    let _serial = serial();
    // No --ha-replicate: the default level is `none`.
    let cluster = HaCluster::start_with_primary(None, PRIMARY);
    let query = ha_cluster::tool_ok("tandem-ha", &["-b", &cluster.url(PRIMARY), "query"]);
    assert!(query.contains("replicate:   none"), "{query}");

    cluster.config(PRIMARY, &["add", "queue", "plain"]);
    cluster.config(PRIMARY, &["add", "exchange", "fanout", "plain-x"]);
    cluster.config(PRIMARY, &["bind", "plain-x", "plain"]);
    send(&cluster, "plain", 3);
    // A queue that asks for replication gets it even when the default is none.
    cluster.config(PRIMARY, &["add", "queue", "asks", "--replicate", "all"]);
    send(&cluster, "asks", 4);
    cluster.config(
        PRIMARY,
        &["add", "queue", "marker", "--replicate", "configuration"],
    );
    wait_for_marker(&cluster, "marker");

    for backup in cluster.others(PRIMARY) {
        let mut queues = cluster.names(backup, "queues");
        queues.sort();
        assert_eq!(queues, ["asks", "marker"], "{}", cluster.url(backup));
        let exchanges = cluster.names(backup, "exchanges");
        assert!(!exchanges.iter().any(|x| x == "plain-x"), "{exchanges:?}");
        assert_eq!(cluster.bindings(backup), Vec::new());
        cluster.wait_depth(backup, "asks", 4);
    }
    assert_eq!(cluster.depth(PRIMARY, "plain"), Some(3));
}

#[test]
fn lvq_and_ring_queues_replicate_identically_through_a_fail_over() {
    let _serial = serial();
    let mut cluster = HaCluster::start_with_primary(Some("all"), PRIMARY);
    cluster.config(PRIMARY, &["add", "queue", "prices", "--lvq-key", "sym"]);
    cluster.config(
        PRIMARY,
        &[
            "add",
            "queue",
            "recent",
            "--max-queue-count",
            "5",
            "--limit-policy",
            "ring",
        ],
    );
    // Last values: a-2 for `a`, b-1 for `b`; the ring keeps r-7..r-11.
    let (a, b) = (r#"{"sym": "a"}"#, r#"{"sym": "b"}"#);
    let send_as = |queue, prefix, count, more: &[&str]| {
        let mut extra = vec!["--prefix", prefix];
        extra.extend_from_slice(more);
        proton_at("send.py", &cluster, PRIMARY, queue, count, &extra);
    };
    send_as("prices", "a-", 3, &["--properties", a]);
    send_as("prices", "b-", 2, &["--properties", b]);
    send_as("recent", "r-", 12, &[]);
    for backup in cluster.others(PRIMARY) {
        cluster.wait_depth(backup, "prices", 2);
        cluster.wait_depth(backup, "recent", 5);
    }
    cluster.kill(PRIMARY);
    let next = cluster.others(PRIMARY)[0];
    cluster.promote_ok(next);
    cluster.wait_status(next, "active");
    let receive_from =
        |queue, count| proton_at("recv.py", &cluster, next, queue, count, &[]).bodies();
    assert_eq!(receive_from("prices", 2), ["a-2", "b-1"]);
    assert_eq!(
        receive_from("recent", 5),
        ["r-7", "r-8", "r-9", "r-10", "r-11"]
    );
}

#[test]
fn a_synchronous_change_waits_for_every_ready_backup_and_names_a_stalled_one() {
    let _serial = serial();
    // ha-sync-config makes --sync the tools' default.
    let cluster = HaCluster::start_with_args(Some("all"), &["--ha-sync-config", "yes"]);
    cluster.promote_ok(PRIMARY);
    for i in cluster.others(PRIMARY) {
        cluster.wait_status(i, "ready");
    }
    let url = cluster.url(PRIMARY);
    let config = |args: &[&str]| {
        let mut all = vec!["-b", url.as_str(), "--sync-timeout", "0.8"];
        all.extend_from_slice(args);
        ha_cluster::tool("tandem-config", &all, 10)
    };
    let done = config(&["add", "queue", "synced"]);
    assert!(done.status.success(), "{}", ha_cluster::stderr(&done));
    // Both backups have it the moment the tool returns.
    for i in cluster.others(PRIMARY) {
        assert!(cluster.names(i, "queues").contains(&"synced".to_owned()));
    }

    // A stopped backup: the change is made, the tool fails naming the backup
    // (within 0.8 s, less than twice the 1 s heartbeat: it is still a member).
    ha_cluster::signal(cluster.pid(2), libc::SIGSTOP);
    let failed = config(&["add", "queue", "stalled"]);
    let no_sync = config(&["--no-sync", "add", "queue", "unsynced"]);
    ha_cluster::signal(cluster.pid(2), libc::SIGCONT);
    assert!(
        !failed.status.success(),
        "--sync returned with a backup stopped"
    );
    let said = ha_cluster::stderr(&failed);
    assert!(said.contains(&cluster.url(2)), "{said}");
    assert!(said.contains("did not confirm"), "{said}");
    assert!(no_sync.status.success(), "{}", ha_cluster::stderr(&no_sync));
    assert!(cluster
        .names(PRIMARY, "queues")
        .contains(&"stalled".to_owned()));
    // Resumed, it confirms the next change, having applied the earlier ones.
    let resumed = config(&["--sync", "add", "queue", "resumed"]);
    assert!(resumed.status.success(), "{}", ha_cluster::stderr(&resumed));
    let on_backup = cluster.names(2, "queues");
    for q in ["stalled", "unsynced", "resumed"] {
        assert!(on_backup.contains(&q.to_owned()), "{q}: {on_backup:?}");
    }
}
