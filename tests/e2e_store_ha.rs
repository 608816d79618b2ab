//! The store in a cluster: the primary journals persistent messages, every
//! broker keeps its durable configuration and identity, so after all three
//! brokers are killed the old primary, restarted and promoted, still has every
//! settled durable message, and the backups copy them from it again.

mod common;
mod ha_cluster;

use std::time::Duration;

use common::run_python;
use ha_cluster::{serial, HaCluster};

/// `tandem-ha store-status --all` asked of member `i`: every broker answered.
fn store_status_all(cluster: &HaCluster, i: usize) -> String {
    let out = ha_cluster::tool(
        "tandem-ha",
        &["-b", &cluster.url(i), "store-status", "--all"],
        10,
    );
    let text = ha_cluster::stdout(&out);
    assert!(out.status.success(), "{text}\n{}", ha_cluster::stderr(&out));
    text
}

/// `send.py` of `count` durable messages to `orders` on member `i`.
fn send_durable(cluster: &HaCluster, i: usize, count: usize, prefix: &str) {
    run_python(
        "send.py",
        &[
            "--url",
            &cluster.url(i),
            "--address",
            "orders",
            "--count",
            &count.to_string(),
            "--durable",
            "--prefix",
            prefix,
        ],
    )
    .assert_success();
}

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
    send_durable(&cluster, 0, 100, "a-");
    cluster.wait_depth(2, "orders", 100);
    cluster.kill(2);
    send_durable(&cluster, 0, 100, "b-");
    cluster.wait_depth(1, "orders", 200);
    for i in [0, 1] {
        cluster.kill(i);
    }
    for i in [0, 1, 2] {
        cluster.restart_member(i);
    }
    let text = store_status_all(&cluster, 2);
    for i in [0, 1] {
        assert!(
            text.contains(&format!(
                "{} epoch 1 positions orders=1:200",
                cluster.url(i)
            )),
            "{text}"
        );
    }
    assert!(
        text.contains(&format!(
            "{} epoch 1 positions orders=1:100",
            cluster.url(2)
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("newest: {}", cluster.url(0))),
        "{text}"
    );
    // What the resource-manager scripts ask to prefer the newest broker.
    let newest = |i: usize| {
        ha_cluster::tool(
            "tandem-ha",
            &["-b", &cluster.url(i), "store-status", "--newest"],
            10,
        )
    };
    let yes = newest(0);
    assert!(yes.status.success(), "{}", ha_cluster::stdout(&yes));
    let no = newest(2);
    assert!(!no.status.success(), "the stale store called newest");
    assert!(
        ha_cluster::stdout(&no).contains("has a newer store"),
        "{}",
        ha_cluster::stdout(&no)
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

/// Beyond qpidd, which erases a backup's store: a backup killed and restarted
/// keeps its journal, says what it holds, and is sent only what it missed
/// (the primary's catch-up counters in `tandem-stat` show it).
#[test]
fn a_backup_restarted_with_its_store_is_sent_only_what_it_missed() {
    let _serial = serial();
    let mut cluster = HaCluster::start_with_primary(Some("all"), 0);
    cluster.config(0, &["add", "queue", "orders", "--durable"]);
    send_durable(&cluster, 0, 200, "a-");
    cluster.wait_depth(2, "orders", 200);
    cluster.kill(2);
    send_durable(&cluster, 0, 50, "b-");
    let before = cluster.broker_attributes(0);
    cluster.restart_member(2);
    cluster.wait_status(2, "ready");
    cluster.wait_depth(2, "orders", 250);
    let after = cluster.broker_attributes(0);
    let grew = |key: &str| after[key].as_u64().unwrap_or(0) - before[key].as_u64().unwrap_or(0);
    assert_eq!(grew("ha-catch-up-messages"), 50, "{after:?}");
    assert_eq!(grew("ha-catch-up-kept"), 200, "{after:?}");
    assert!(grew("ha-catch-up-bytes") >= 50 * 10, "{after:?}");
    let log = cluster.log(2);
    assert!(
        log.contains("queue 'orders' caught up incrementally: kept 200"),
        "{log}"
    );
    // The summary table names the counters too.
    let table = ha_cluster::tool_ok("tandem-stat", &["-b", &cluster.url(0), "--ha-admin"]);
    assert!(table.contains("catchupMsgs"), "{table}");
    // Per backup too: the 50 went to broker 2, nothing to broker 1.
    let row = |url: String| {
        table
            .lines()
            .find(|l| l.starts_with(&url))
            .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
    };
    assert_eq!(
        row(cluster.url(2)).and_then(|r| r.get(2).cloned()),
        Some("50".into()),
        "{table}"
    );
    assert_eq!(
        row(cluster.url(1)).and_then(|r| r.get(2).cloned()),
        Some("0".into()),
        "{table}"
    );
    let query = ha_cluster::tool_ok("tandem-ha", &["-b", &cluster.url(0), "query"]);
    let member = format!("member:      {} ready", cluster.url(2));
    assert!(
        query
            .lines()
            .any(|l| l.starts_with(&member) && l.contains("catch-up 50 msgs")),
        "{query}"
    );
    // And broker 2, promoted alone, has all 250, each once.
    cluster.kill(0);
    cluster.kill(1);
    cluster.promote_ok(2);
    let out = run_python(
        "recv.py",
        &[
            "--url",
            &cluster.url(2),
            "--address",
            "orders",
            "--count",
            "250",
            "--timeout",
            "20",
        ],
    );
    out.assert_success();
    let mut expected = common::expected_bodies("a-", 200);
    expected.extend(common::expected_bodies("b-", 50));
    assert_eq!(out.bodies(), expected);
}

/// The acceptance's whole-cluster run: one backup stopped, publishing goes
/// on, then the other two are killed -9 under a Proton publisher; all three
/// restart, the tool names the newest store, the stale one cannot be
/// promoted, and the newest loses no message its publisher saw settled.
#[test]
fn a_whole_cluster_killed_under_proton_load_keeps_every_settled_durable_message() {
    const COUNT: usize = 4000;
    let _serial = serial();
    let mut cluster = HaCluster::start_with_primary(Some("all"), 0);
    cluster.config(0, &["add", "queue", "orders", "--durable"]);
    cluster.wait_depth(2, "orders", 0);
    cluster.kill(2);
    let urls = format!("{},{}", cluster.url(0), cluster.url(1));
    let mut sender = common::spawn_ha_send(&urls, "orders", COUNT, "60");
    sender.wait_for_settlements(300, Duration::from_secs(30));
    cluster.kill(0);
    cluster.kill(1);
    let settled = common::settled_seqs(&sender.json_lines());
    sender.kill();
    for i in [0, 1, 2] {
        cluster.restart_member(i);
    }
    let text = store_status_all(&cluster, 2);
    let newest = text
        .lines()
        .find_map(|l| l.strip_prefix("newest: "))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no newest store named: {text}"));
    assert_ne!(
        newest,
        cluster.url(2),
        "the stopped backup is stale: {text}"
    );
    let refused = cluster.promote(2);
    assert!(!refused.status.success(), "the stale store was promoted");
    let newest = (0..3)
        .find(|&i| cluster.url(i) == newest)
        .expect("a member");
    cluster.promote_ok(newest);
    let expect = settled.last().map_or(0, |s| s + 1);
    let missing = common::ha_recv_missing(&cluster.url(newest), "orders", expect, 10);
    let lost: Vec<u64> = settled.intersection(&missing).copied().collect();
    common::assert_none_lost(&lost, settled.len(), "after the whole cluster was killed");
    assert!(settled.len() >= 300, "the kills came under load");
}

/// The store knows its cluster: every member adopts the first primary's
/// cluster id (kept in `data-dir/ha-epoch`), and a broker whose data-dir
/// belongs to another cluster refuses to join, saying so.
#[test]
fn a_broker_whose_data_dir_belongs_to_another_cluster_does_not_join() {
    let _serial = serial();
    let mut cluster = HaCluster::start_with_primary(Some("all"), 0);
    let id_of = |cluster: &HaCluster, i: usize| {
        let out = ha_cluster::tool_ok("tandem-ha", &["-b", &cluster.url(i), "query", "--json"]);
        ha_cluster::rows(&out)
            .first()
            .and_then(|j| j["cluster-id"].as_str().map(str::to_owned))
    };
    let id = id_of(&cluster, 0).expect("the primary names its cluster");
    assert_eq!(id_of(&cluster, 1).as_deref(), Some(id.as_str()));
    cluster.kill(2);
    let file = cluster.data_dir(2).join("ha-epoch");
    let text = std::fs::read_to_string(&file).expect("ha-epoch");
    assert!(text.contains(&format!("cluster = {id}")), "{text}");
    std::fs::write(&file, text.replace(&id, "another-cluster")).expect("rewrite");
    cluster.restart_member(2);
    let said = common::wait_until(Duration::from_secs(20), || {
        cluster.log(2).contains("belongs to cluster") && cluster.log(2).contains("another-cluster")
    });
    assert!(said, "{}", cluster.log(2));
    assert_eq!(cluster.status(2), "joining");
}
