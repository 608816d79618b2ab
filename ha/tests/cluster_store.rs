//! The store on the simulated cluster of the real code: every broker journals
//! on an in-memory disk of its own, a kill loses what was not synced (and may
//! tear the write that was running), and a restart recovers the rest. After
//! every broker of the cluster is killed at a seeded random moment of a
//! durable publish, the old primary, or either backup, restarted and promoted,
//! still has every message its publisher had seen settled (a backup
//! acknowledges a replicated message only once its own journal has it).

mod cluster;

use std::time::Duration;

use cluster::{seeds, Cluster, Kind};

fn whole_cluster_loss(seed: u64, promote: usize) {
    let mut c = Cluster::with_store(3, 2, seed);
    assert!(
        c.run_until(Duration::from_secs(2), |c| c.promote(0).is_ok()),
        "seed {seed}: broker 0 was never promotable"
    );
    assert!(
        c.run_until(Duration::from_secs(5), |c| c.statuses()
            == ["active", "ready", "ready"]),
        "seed {seed}: {:?}",
        c.statuses()
    );
    let p = c.add_client(Kind::Publisher, "orders", 400);
    c.clients[p].durable = true;
    c.clients[p].per_step = Some(20);
    c.clients[p].padding = 200;
    // Some of it settled, some on its way, when every broker dies at once.
    let steps = 5 + c.rng.below(30);
    for _ in 0..steps {
        c.step();
    }
    let settled = c.clients[p].settled.clone();
    for b in 0..3 {
        c.kill(b);
    }
    c.clients.clear();
    for b in 0..3 {
        c.restart(b);
    }
    assert!(
        c.run_until(Duration::from_secs(2), |c| c.promote(promote).is_ok()),
        "seed {seed}: broker {promote} was never promotable after the restart: {:?}",
        c.statuses()
    );
    // The epoch each broker knew survived with its store: this is a new one.
    assert_eq!(c.epoch(promote), 2, "seed {seed}: the epoch was not kept");
    let consumer = c.add_client(Kind::Consumer, "orders", 0);
    c.clients[consumer].broker = promote;
    c.run_until(Duration::from_secs(5), |c| {
        settled
            .iter()
            .all(|n| c.clients[consumer].received.contains(n))
    });
    let missing: Vec<u64> = settled
        .iter()
        .filter(|n| !c.clients[consumer].received.contains(n))
        .copied()
        .collect();
    assert!(
        missing.is_empty(),
        "seed {seed}: {} of {} settled durable messages lost after the whole cluster died and broker {promote} was promoted: {:?}",
        missing.len(),
        settled.len(),
        &missing[..missing.len().min(10)]
    );
    assert!(
        !settled.is_empty(),
        "seed {seed}: nothing was settled before the kill"
    );
}

#[test]
fn a_whole_cluster_killed_mid_publish_keeps_every_settled_durable_message() {
    for seed in seeds() {
        whole_cluster_loss(seed, 0);
    }
}

/// A settled message was on every ready backup's disk too: promoting a backup
/// after the whole cluster died loses nothing either.
#[test]
fn a_backup_promoted_after_the_whole_cluster_died_has_every_settled_durable_message() {
    for seed in seeds() {
        whole_cluster_loss(seed, 1 + (seed as usize % 2));
    }
}

#[test]
fn a_backup_restarted_with_its_store_is_sent_only_what_it_missed() {
    let mut c = Cluster::with_store(3, 2, 1);
    assert!(c.run_until(Duration::from_secs(2), |c| c.promote(0).is_ok()));
    assert!(c.run_until(Duration::from_secs(5), |c| c.statuses()
        == ["active", "ready", "ready"]));
    let p = c.add_client(Kind::Publisher, "orders", 300);
    c.clients[p].durable = true;
    c.clients[p].per_step = Some(30);
    assert!(c.run_until(Duration::from_secs(10), |c| c.clients[p].all_settled()));
    // Broker 2 dies; 60 more are published; it comes back with its journal.
    c.kill(2);
    let missed = c.add_client(Kind::Publisher, "orders", 0);
    c.clients[missed].durable = true;
    c.clients[missed].numbered(1001, 1060);
    assert!(c.run_until(Duration::from_secs(10), |c| c.clients[missed].all_settled()));
    let sent_before = c.counter(0, "ha-catch-up-messages");
    c.restart(2);
    assert!(
        c.run_until(Duration::from_secs(10), |c| c.status(2) == "ready"),
        "{:?}",
        c.statuses()
    );
    let sent = c.counter(0, "ha-catch-up-messages") - sent_before;
    assert_eq!(sent, 60, "only the 60 it missed");
    assert_eq!(c.counter(0, "ha-catch-up-kept"), 300, "the 300 it had");
    // And it has all 360, each once.
    c.kill(0);
    c.kill(1);
    c.promote_soon(2).expect("2 is ready");
    let consumer = c.add_client(Kind::Consumer, "orders", 0);
    c.clients[consumer].broker = 2;
    c.run_until(Duration::from_secs(5), |c| {
        c.clients[consumer].received.len() >= 360
    });
    c.run_for(Duration::from_secs(1));
    let mut got = c.clients[consumer].received.clone();
    got.sort_unstable();
    let expected: Vec<u64> = (1..=300).chain(1001..=1060).collect();
    assert_eq!(got, expected);
}

#[test]
fn a_backup_whose_disk_fails_drops_out_and_the_primary_carries_on() {
    let mut c = Cluster::with_store(3, 2, 1);
    assert!(c.run_until(Duration::from_secs(2), |c| c.promote(0).is_ok()));
    assert!(c.run_until(Duration::from_secs(5), |c| c.statuses()
        == ["active", "ready", "ready"]));
    // Broker 2's disk fails for its next 20 writes (one a second while it
    // retries): it must not hold the primary's publishers that long.
    c.fail_disk_writes(2, 20);
    let p = c.add_client(Kind::Publisher, "orders", 200);
    c.clients[p].durable = true;
    c.clients[p].per_step = Some(10);
    assert!(
        c.run_until(Duration::from_secs(8), |c| c.clients[p].all_settled()),
        "the primary stalled behind a backup that cannot write: {}",
        c.clients[p].describe()
    );
    assert_ne!(
        c.status(2),
        "ready",
        "a backup that cannot write stayed ready"
    );
    // Once its disk writes again it catches up and is ready.
    assert!(
        c.run_until(Duration::from_secs(40), |c| c.status(2) == "ready"),
        "{:?}",
        c.statuses()
    );
    c.kill(0);
    c.kill(1);
    c.promote_soon(2).expect("2 is ready");
    assert_eq!(c.drain("orders", 2), Vec::<u64>::new(), "settled and lost");
}

#[test]
fn a_restarted_ex_primary_comes_back_as_a_backup_of_the_newer_epoch() {
    let mut c = Cluster::with_store(3, 1, 9);
    assert!(c.run_until(Duration::from_secs(2), |c| c.promote(0).is_ok()));
    assert!(c.run_until(Duration::from_secs(5), |c| c.statuses()
        == ["active", "ready", "ready"]));
    c.kill(0);
    assert!(c.run_until(Duration::from_secs(2), |c| c.promote(1).is_ok()));
    assert!(c.run_until(Duration::from_secs(5), |c| c.status(1) == "active"));
    // Restarted with its store (epoch 1), and promoted by a resource manager
    // that still takes it for the primary: refused every time until it is a
    // ready backup of the newer primary (promoting that would be an ordinary
    // fail-over, to a new epoch).
    c.restart(0);
    assert_eq!(c.epoch(0), 1, "the epoch came back with the store");
    let joined = c.run_until(Duration::from_secs(5), |c| {
        if c.status(0) == "ready" {
            return true;
        }
        assert!(
            c.promote(0).is_err(),
            "promoted at an older epoch beside the epoch-2 primary: {:?}",
            c.statuses()
        );
        false
    });
    assert!(joined, "{:?}", c.statuses());
    assert_eq!(c.epoch(0), 2);
    assert_eq!(c.statuses(), ["ready", "active", "ready"]);
}
