//! The store in a cluster: the primary journals persistent messages, every
//! broker keeps its durable configuration and identity, so after all three
//! brokers are killed the old primary, restarted and promoted, still has every
//! settled durable message, and the backups copy them from it again.

mod common;
mod ha_cluster;

use common::run_python;
use ha_cluster::{serial, HaCluster};

#[test]
fn after_every_broker_is_killed_the_restarted_primary_still_has_the_settled_messages() {
    let _serial = serial();
    let mut cluster = HaCluster::start_with_primary(Some("all"), 0);
    cluster.config(0, &["add", "queue", "orders", "--durable"]);
    run_python(
        "send.py",
        &[
            "--url",
            &cluster.url(0),
            "--address",
            "orders",
            "--count",
            "300",
            "--durable",
        ],
    )
    .assert_success();
    for i in [1, 2] {
        cluster.wait_depth(i, "orders", 300);
    }
    for i in [0, 1, 2] {
        cluster.kill(i);
    }
    for i in [0, 1, 2] {
        cluster.restart_member(i);
    }
    cluster.promote_ok(0);
    cluster.wait_depth(0, "orders", 300);
    for i in [1, 2] {
        cluster.wait_status(i, "ready");
        cluster.wait_depth(i, "orders", 300);
    }
    let out = run_python(
        "recv.py",
        &[
            "--url",
            &cluster.url(0),
            "--address",
            "orders",
            "--count",
            "300",
            "--timeout",
            "20",
        ],
    );
    out.assert_success();
    assert_eq!(out.bodies(), common::expected_bodies("", 300));
}

/// The store-status tool after a total failure: a backup stopped early has
/// the older store, the tool names a newest one that is not it, the epoch each
/// broker knew survived the restart, and promoting the stale one is refused.
#[test]
fn store_status_names_the_newest_store_after_a_total_failure() {
    let _serial = serial();
    let mut cluster = HaCluster::start_with_primary(Some("all"), 0);
    cluster.config(0, &["add", "queue", "orders", "--durable"]);
    let send = |cluster: &HaCluster, count: &str, prefix: &str| {
        run_python(
            "send.py",
            &[
                "--url",
                &cluster.url(0),
                "--address",
                "orders",
                "--count",
                count,
                "--durable",
                "--prefix",
                prefix,
            ],
        )
        .assert_success();
    };
    send(&cluster, "100", "a-");
    cluster.wait_depth(2, "orders", 100);
    cluster.kill(2);
    send(&cluster, "100", "b-");
    cluster.wait_depth(1, "orders", 200);
    for i in [0, 1] {
        cluster.kill(i);
    }
    for i in [0, 1, 2] {
        cluster.restart_member(i);
    }
    let out = ha_cluster::tool(
        "tandem-ha",
        &["-b", &cluster.url(2), "store-status", "--all"],
        10,
    );
    let text = ha_cluster::stdout(&out);
    assert!(out.status.success(), "{text}\n{}", ha_cluster::stderr(&out));
    for i in [0, 1] {
        assert!(
            text.contains(&format!("{} epoch 1 positions orders=200", cluster.url(i))),
            "{text}"
        );
    }
    assert!(
        text.contains(&format!("{} epoch 1 positions orders=100", cluster.url(2))),
        "{text}"
    );
    assert!(
        text.contains(&format!("newest: {}", cluster.url(0))),
        "{text}"
    );
    // Promoting the stale one is refused, naming a newer store; the newest
    // promotes and has every settled message.
    let refused = cluster.promote(2);
    assert!(!refused.status.success(), "the stale store was promoted");
    let said = ha_cluster::stderr(&refused);
    assert!(
        said.contains("has a newer store") && said.contains("--force"),
        "{said}"
    );
    cluster.promote_ok(0);
    cluster.wait_depth(0, "orders", 200);
}
