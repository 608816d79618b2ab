//! `ha-min-backups` with real brokers and a Qpid Proton publisher: a primary
//! left without a ready backup settles nothing, says why (`tandem-ha status`,
//! `query`, the log), settles once a backup is ready again, and after
//! `ha-min-backups-timeout` rejects with `amqp:resource-limit-exceeded`.

mod common;
mod ha_cluster;

use std::time::Duration;

use common::{run_python, spawn_python, wait_until};
use ha_cluster::{serial, stderr, stdout, tool, HaCluster, Member, STATUS_DEADLINE};

const PRIMARY: Member = 0;

fn cluster(timeout: &str) -> HaCluster {
    let cluster = HaCluster::start_with_args(
        Some("all"),
        &["--ha-min-backups", "1", "--ha-min-backups-timeout", timeout],
    );
    cluster.promote_ok(PRIMARY);
    for i in cluster.others(PRIMARY) {
        cluster.wait_status(i, "ready");
    }
    cluster
}

/// Kills both backups and waits until the primary says it withholds.
fn lose_the_backups(cluster: &mut HaCluster) {
    for i in cluster.others(PRIMARY) {
        cluster.kill(i);
    }
    let mut said = String::new();
    let url = cluster.url(PRIMARY);
    let withholding = wait_until(STATUS_DEADLINE, || {
        let out = tool("tandem-ha", &["-b", &url, "status"], 2);
        said = format!("{}{}", stdout(&out), stderr(&out));
        said.contains("0 of ha-min-backups 1 backups ready")
    });
    assert!(withholding, "the primary never said why it waits: {said}");
    assert!(said.starts_with("active"), "{said}");
}

/// Settlements held on `queue` of member `i` (`tandem-stat -q`'s unsettled).
fn awaiting(cluster: &HaCluster, i: Member, queue: &str) -> Option<u64> {
    cluster
        .queue_rows(i)
        .into_iter()
        .find(|q| q["name"].as_str() == Some(queue))
        .and_then(|q| q["awaiting-settlement"].as_u64())
}

#[test]
fn a_primary_without_a_ready_backup_holds_publishes_until_one_is_ready() {
    let _serial = serial();
    let mut cluster = cluster("60");
    lose_the_backups(&mut cluster);
    let query = ha_cluster::tool_ok("tandem-ha", &["-b", &cluster.url(PRIMARY), "query"]);
    assert!(query.contains("min-backups: 1"), "{query}");
    assert!(
        query.contains("withholding: 0 of ha-min-backups 1"),
        "{query}"
    );
    assert!(cluster
        .log(PRIMARY)
        .contains("settlements of publishes to replicated queues wait"));

    let url = cluster.url(PRIMARY);
    let sender = spawn_python(
        "send.py",
        &[
            "--url",
            &url,
            "--address",
            "held",
            "--count",
            "20",
            "--report-progress",
        ],
    );
    let mut last = None;
    let all_held = wait_until(STATUS_DEADLINE, || {
        last = awaiting(&cluster, PRIMARY, "held");
        last == Some(20)
    });
    assert!(all_held, "awaiting settlement: {last:?}");
    assert!(
        !sender
            .json_lines()
            .iter()
            .any(|l| l["settled"].as_u64().is_some()),
        "a publish settled with no backup ready: {:?}",
        sender.lines()
    );

    // A backup comes back, catches up, and the publisher's 20 settle.
    cluster.restart_member(1);
    cluster.wait_status(1, "ready");
    let out = sender.wait();
    out.assert_success();
    assert_eq!(
        out.summary()["accepted"].as_u64(),
        Some(20),
        "{}",
        out.stdout()
    );
    assert_eq!(awaiting(&cluster, PRIMARY, "held"), Some(0));
    assert!(cluster.log(PRIMARY).contains("settling publishes again"));

    // They are on the backup: after a fail-over to it, all 20 are there.
    cluster.kill(PRIMARY);
    cluster.promote_ok(1);
    let url = cluster.url(1);
    let received = run_python(
        "recv.py",
        &["--url", &url, "--address", "held", "--count", "20"],
    );
    received.assert_success();
    assert_eq!(received.messages().len(), 20);
}

#[test]
fn a_publish_waiting_past_the_timeout_is_rejected_as_resource_limit_exceeded() {
    let _serial = serial();
    let mut cluster = cluster("1");
    lose_the_backups(&mut cluster);
    let url = cluster.url(PRIMARY);
    let started = std::time::Instant::now();
    let out = run_python(
        "send.py",
        &["--url", &url, "--address", "late", "--count", "5"],
    );
    out.assert_success();
    let summary = out.summary();
    assert_eq!(summary["rejected"].as_u64(), Some(5), "{}", out.stdout());
    assert_eq!(
        summary["first_rejection"]["condition"].as_str(),
        Some("amqp:resource-limit-exceeded"),
        "{}",
        out.stdout()
    );
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "rejected before the timeout"
    );
    // A rejected message is not kept.
    cluster.wait_depth(PRIMARY, "late", 0);
    assert!(cluster
        .log(PRIMARY)
        .contains("waited ha-min-backups-timeout"));
}
