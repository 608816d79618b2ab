//! The replication shard of a real cluster: every broker of an HA cluster runs
//! an executor of its own for broker-to-broker connections (a thread named
//! `repl-0`, as `top -H` and `ps -L` show it); the primary serves its
//! backups' replication links there, whichever worker the kernel handed each
//! connection to, and each backup runs its own link there.

mod common;
mod ha_cluster;

use std::time::Duration;

use common::{wait_until, Broker, Json};
use ha_cluster::{serial, tool_ok, HaCluster};

/// The names of `pid`'s threads.
fn threads(pid: u32) -> Vec<String> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .map(|name| name.trim().to_owned())
        .collect()
}

#[test]
fn the_backups_links_are_served_on_the_replication_shard() {
    let _serial = serial();
    let cluster = HaCluster::start_with_primary(Some("all"), 0);
    for i in 0..3 {
        let names = threads(cluster.pid(i));
        assert!(
            names.iter().any(|n| n.starts_with("repl-0")),
            "broker {i} has no repl-0 thread: {names:?}"
        );
    }
    // The brokers run 2 worker shards here (tests' default), so shard 2 is the
    // replication shard. The primary serves both backups' links there, and
    // each backup runs its own link to the primary there.
    for (i, expected) in [(0, 2), (1, 1), (2, 1)] {
        let mut links = Vec::new();
        let on_repl = wait_until(Duration::from_secs(10), || {
            links = broker_links(&cluster, i);
            links.len() == expected && links.iter().all(|c| c["shard"].as_u64() == Some(2))
        });
        assert!(
            on_repl,
            "broker {i}: its {expected} broker-to-broker links should be on shard 2 (repl-0): \
             {links:?}\n{}",
            cluster.describe()
        );
    }
}

/// Broker `i`'s connections to and from other brokers (their container ids).
fn broker_links(cluster: &HaCluster, i: usize) -> Vec<Json> {
    let text = tool_ok(
        "tandem-stat",
        &["-b", &cluster.url(i), "--ha-admin", "-c", "--json"],
    );
    let rows = Json::parse(&text)
        .ok()
        .and_then(|j| j.as_array().map(<[Json]>::to_vec))
        .unwrap_or_default();
    rows.into_iter()
        .filter(|c| {
            c["container-id"]
                .as_str()
                .is_some_and(|id| id.starts_with("tandemd-"))
        })
        .collect()
}

#[test]
fn a_stand_alone_broker_runs_the_replication_shard_only_for_queue_replication() {
    let plain = Broker::start(&["--worker-threads", "2"]);
    let with = Broker::start(&["--worker-threads", "2", "--ha-queue-replication", "yes"]);
    let has_repl = |b: &Broker| threads(b.pid()).iter().any(|n| n.starts_with("repl-0"));
    assert!(
        !has_repl(&plain),
        "no repl-0 without ha-cluster or ha-queue-replication: {:?}",
        threads(plain.pid())
    );
    assert!(
        has_repl(&with),
        "ha-queue-replication starts repl-0: {:?}",
        threads(with.pid())
    );
    // What the option does is said.
    let log = with.stderr();
    assert!(
        log.contains("ha-queue-replication = yes: this broker serves replicas"),
        "{log}"
    );
    assert!(!plain.stderr().contains("ha-queue-replication"));
    // Its workers still serve clients (the replication shard owns no queue).
    tool_ok(
        "tandem-config",
        &["-b", &with.url(), "add", "queue", "q-repl-shard"],
    );
    let queues = tool_ok("tandem-stat", &["-b", &with.url(), "-q", "--json"]);
    assert!(queues.contains("q-repl-shard"), "{queues}");
}
