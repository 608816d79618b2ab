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
