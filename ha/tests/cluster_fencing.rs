//! Fencing: a primary keeps probing its peers' epochs and steps down as soon
//! as one outranks it; with `ha-min-backups 1` a primary cut off from its
//! backups settles nothing. On the simulated cluster of the real code, with
//! network partitions (broker to broker only; clients reach every broker) and
//! stalls.

mod cluster;

use std::time::Duration;

use cluster::{Cluster, HEARTBEAT, MAINTENANCE};

const LONG: Duration = Duration::from_secs(600);

/// Three brokers with `ha-min-backups`: 0 active, 1 and 2 ready.
fn guarded_cluster(seed: u64, min_backups: usize) -> Cluster {
    let mut c = Cluster::with_min_backups(3, 2, seed, min_backups, LONG);
    assert!(c.run_until(Duration::from_secs(2), |c| c.promote(0).is_ok()));
    assert!(
        c.run_until(Duration::from_secs(5), |c| c.statuses()
            == ["active", "ready", "ready"]),
        "{:?}",
        c.statuses()
    );
    c
}

/// Brokers whose status is `active` or `recovering`.
fn primaries(c: &mut Cluster) -> Vec<usize> {
    (0..c.brokers.len())
        .filter(|&b| matches!(c.status(b).as_str(), "active" | "recovering"))
        .collect()
}

#[test]
fn a_cut_off_primary_settles_nothing_and_one_primary_remains_after_the_heal() {
    for seed in cluster::seeds() {
        let mut c = guarded_cluster(seed, 1);
        let publisher = c.publishing("q", 3000, 5, 100);

        c.cut_off(0);
        // What the backups had acknowledged may still arrive; after twice the
        // heartbeat nothing settles on the cut-off side.
        c.run_for(HEARTBEAT * 2);
        let settled = c.clients[publisher].settled.clone();
        // The resource manager promotes a backup on the other side.
        assert!(
            c.run_until(Duration::from_secs(3), |c| c.promote(1).is_ok()),
            "seed {seed}: {:?}",
            c.statuses()
        );
        c.run_for(Duration::from_secs(3));
        assert_eq!(c.status(0), "active", "seed {seed}: it cannot know yet");
        assert_eq!(
            c.clients[publisher].settled, settled,
            "seed {seed}: the cut-off primary settled with no backup"
        );

        c.heal();
        let healed = c.now;
        let bound = MAINTENANCE * 2 + HEARTBEAT;
        assert!(
            c.run_until(bound, |c| primaries(c) == [1]),
            "seed {seed}: two primaries {bound:?} after the heal: {:?}",
            c.statuses()
        );
        let took = c.now - healed;
        // The old primary rejoins as a backup; its publisher fails over and
        // sends again what was not settled; nothing settled is lost.
        c.assert_all_settled(publisher, Duration::from_secs(30), &format!("seed {seed}"));
        assert!(
            c.run_until(Duration::from_secs(10), |c| c.statuses()
                == ["ready", "active", "ready"]),
            "seed {seed}: {:?}",
            c.statuses()
        );
        assert_eq!(c.drain("q", 1), Vec::<u64>::new(), "seed {seed}");
        eprintln!("seed {seed}: one primary {took:?} after the heal");
    }
}

#[test]
fn a_stalled_primary_steps_down_when_it_wakes_to_a_newer_one() {
    // Also without ha-min-backups: waking, it finds its backups' links
    // closed, and probes before it releases what they held.
    for (seed, min_backups) in cluster::seeds().into_iter().flat_map(|s| [(s, 1), (s, 0)]) {
        let mut c = guarded_cluster(seed, min_backups);
        let publisher = c.publishing("q", 3000, 5, 100);
        c.stall(0);
        c.run_for(HEARTBEAT * 2 + MAINTENANCE);
        assert!(
            c.run_until(Duration::from_secs(3), |c| c.promote(1).is_ok()),
            "seed {seed}: {:?}",
            c.statuses()
        );
        c.run_until(Duration::from_secs(5), |_| false);
        c.resume(0);
        let woke = c.now;
        assert!(
            c.run_until(HEARTBEAT * 2, |c| primaries(c) == [1]),
            "seed {seed} min {min_backups}: still two primaries 2 x heartbeat after SIGCONT: {:?}",
            c.statuses()
        );
        eprintln!(
            "seed {seed} min {min_backups}: stepped down {:?} after waking",
            c.now - woke
        );
        c.assert_all_settled(publisher, Duration::from_secs(30), &format!("seed {seed}"));
        // Whatever it settled is on the new primary.
        assert_eq!(
            c.drain("q", 1),
            Vec::<u64>::new(),
            "seed {seed} min {min_backups}"
        );
    }
}

#[test]
fn two_primaries_of_one_epoch_resolve_to_the_greater_broker_id() {
    // Broker 0 is cut off before anyone is promoted; both sides promote.
    let mut c = Cluster::new(3, 1, 5);
    c.cut_off(0);
    assert!(c.run_until(Duration::from_secs(3), |c| c.promote(0).is_ok()));
    assert!(c.run_until(Duration::from_secs(3), |c| c.promote(1).is_ok()));
    assert_eq!((c.epoch(0), c.epoch(1)), (1, 1));
    assert_eq!(primaries(&mut c), [0, 1]);
    c.heal();
    let ids = [
        c.brokers[0].broker_id.clone(),
        c.brokers[1].broker_id.clone(),
    ];
    let winner = if ids[0] > ids[1] { 0 } else { 1 };
    assert!(
        c.run_until(MAINTENANCE * 2 + HEARTBEAT, |c| primaries(c) == [winner]),
        "{:?} ({ids:?})",
        c.statuses()
    );
}
