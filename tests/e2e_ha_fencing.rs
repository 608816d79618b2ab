//! Fencing with real brokers: a primary stopped with SIGSTOP while another is
//! promoted wakes to the newer primary's epoch probe (and its own) and steps
//! down within twice the heartbeat; with `ha-min-backups 1` nothing it settles
//! is missing from the new primary. A Qpid Proton publisher runs throughout.

mod common;
mod ha_cluster;

use std::time::{Duration, Instant};

use common::{assert_none_lost, ha_recv_missing, settled_seqs, spawn_ha_send, wait_until};
use ha_cluster::{serial, signal, tool, HaCluster, HEARTBEAT, STATUS_DEADLINE};

/// How long the primary stays stopped.
const STOP_FOR: Duration = Duration::from_secs(5);

#[test]
fn a_stopped_primary_steps_down_within_two_heartbeats_of_waking_and_loses_nothing() {
    let _serial = serial();
    let cluster = HaCluster::start_with_args(Some("all"), &["--ha-min-backups", "1"]);
    cluster.promote_ok(0);
    for i in [1, 2] {
        cluster.wait_status(i, "ready");
    }
    let count = 3000;
    let mut sender = spawn_ha_send(&cluster.urls, "fenced", count, "120");
    sender.wait_for_settlements(200, STATUS_DEADLINE);

    signal(cluster.pid(0), libc::SIGSTOP);
    let stopped = Instant::now();
    // The resource manager promotes a backup once it is sure the primary is
    // gone; the other backup follows the new primary.
    let promoted = wait_until(STATUS_DEADLINE, || cluster.promote(1).status.success());
    assert!(
        promoted,
        "broker 1 was never promotable: {}",
        cluster.describe()
    );
    cluster.wait_status(1, "active");
    cluster.wait_status(2, "ready");
    // The stop lasts 5 s in all (the scenario); meanwhile the new primary
    // stays the one primary that answers.
    while stopped.elapsed() < STOP_FOR {
        assert!(cluster.has_status(1, "active"), "{}", cluster.describe());
    }
    let stop_for = stopped.elapsed();

    signal(cluster.pid(0), libc::SIGCONT);
    let woke = Instant::now();
    let url = cluster.url(0);
    let stepped_down = wait_until(HEARTBEAT * 4, || {
        let out = tool("tandem-ha", &["-b", &url, "status"], 2);
        out.status.success() && !ha_cluster::stdout(&out).starts_with("active")
    });
    let took = woke.elapsed();
    assert!(
        stepped_down,
        "still active after SIGCONT: {}",
        cluster.describe()
    );
    assert!(
        took <= HEARTBEAT * 2,
        "stepped down {took:?} after SIGCONT (stopped {stop_for:?}), more than 2 x heartbeat"
    );
    eprintln!("stopped {stop_for:?}; stepped down {took:?} after SIGCONT");
    assert!(
        cluster.log(0).contains("stepping down"),
        "{}",
        cluster.log(0)
    );

    // The publisher fails over and finishes; everything it saw settled, on
    // the stale primary or the new one, is there.
    let out = sender.wait();
    let settled = settled_seqs(&out.json_lines());
    assert_eq!(settled.len(), count, "{}", out.stdout());
    let missing = ha_recv_missing(&cluster.urls, "fenced", count as u64, 60);
    let lost: Vec<u64> = settled
        .iter()
        .copied()
        .filter(|s| missing.contains(s))
        .collect();
    assert_none_lost(&lost, settled.len(), "after the stale primary stepped down");
}

#[test]
fn a_restarted_ex_primary_comes_back_as_a_backup_of_the_newer_epoch() {
    let _serial = serial();
    let mut cluster = HaCluster::start_with_args(Some("all"), &[]);
    cluster.promote_ok(0);
    for i in [1, 2] {
        cluster.wait_status(i, "ready");
    }
    cluster.kill(0);
    cluster.promote_ok(1);
    cluster.wait_status(1, "active");
    // It restarts with its data-dir (epoch 1 in ha-epoch) and the resource
    // manager, which still thinks of it as the primary, promotes it: refused
    // until it is a ready backup of the newer primary (promoting that would be
    // an ordinary fail-over, to a new epoch).
    cluster.restart_member(0);
    let mut promoted = false;
    let settled = wait_until(STATUS_DEADLINE, || {
        if cluster.has_status(0, "ready") {
            return true;
        }
        promoted = cluster.promote(0).status.success();
        promoted
    });
    assert!(settled, "it never became a backup: {}", cluster.describe());
    assert!(cluster.log(0).contains("epoch 1"), "{}", cluster.log(0));
    let epoch = |i| {
        let query = ha_cluster::tool_ok("tandem-ha", &["-b", &cluster.url(i), "query"]);
        query
            .lines()
            .find_map(|l| l.strip_prefix("epoch:"))
            .and_then(|e| e.trim().parse::<u64>().ok())
    };
    if promoted {
        // Promoted the moment it had become a ready backup (the race of a
        // resource manager acting on stale knowledge): never at an older
        // epoch, and the epoch-2 primary steps down for it.
        assert_eq!(epoch(0), Some(3), "{}", cluster.describe());
        let one = wait_until(STATUS_DEADLINE, || !cluster.has_status(1, "active"));
        assert!(one, "two primaries: {}", cluster.describe());
    } else {
        assert_eq!(epoch(0), Some(2), "{}", cluster.describe());
        assert_eq!(cluster.status(1), "active");
    }
}
