//! Fail-over scenarios on the simulated cluster of the real code
//! (`cluster/mod.rs`): three brokers' real shards and HA roles, real client
//! engines, a virtual clock. Each runs in well under a second of real time; a
//! failure names its seed.

mod cluster;

use std::time::Duration;

use cluster::{running_cluster, seeds, Cluster, Kind, BACKUP_TIMEOUT, HEARTBEAT};
use tandem_shards::amqp::codec::Value;

const SEED: u64 = 1;

/// Runs until `publisher` has every one of its messages settled.
fn all_settled(c: &mut Cluster, publisher: usize, within: Duration) -> bool {
    c.run_until(within, |c| c.clients[publisher].all_settled())
}

#[test]
fn broker_to_broker_links_run_on_the_replication_shards() {
    // Two workers: a backup's connection lands on either and moves to shard 2.
    let mut c = running_cluster(2, SEED);
    let links = |c: &Cluster, broker: usize, shard: usize| {
        c.brokers[broker].shards[shard].report().connections.len()
    };
    assert_eq!(
        links(&c, 0, 2),
        2,
        "both backups' links on the primary's replication shard"
    );
    assert_eq!(
        links(&c, 0, 0) + links(&c, 0, 1),
        0,
        "none left on the workers"
    );
    for backup in [1, 2] {
        assert_eq!(
            links(&c, backup, 2),
            1,
            "broker {backup}'s own link on its replication shard"
        );
        assert_eq!(links(&c, backup, 0) + links(&c, backup, 1), 0);
    }
    // And they carry the stream: a message published now is on both backups.
    let p = c.add_client(Kind::Publisher, "q", 5);
    assert!(all_settled(&mut c, p, Duration::from_secs(2)));
}

#[test]
fn first_primary_of_an_all_joining_cluster_then_two_ready_backups() {
    let mut c = running_cluster(1, SEED);
    let members = c.members(0);
    assert_eq!(members.len(), 2, "{members:?}");
    assert!(members.iter().all(|(_, s)| s == "ready"), "{members:?}");
    // Backups learn the membership, including their own readiness.
    let own = c.brokers[1].broker_id.clone();
    assert!(
        c.members(1)
            .iter()
            .any(|(id, s)| *id == own && s == "ready"),
        "{:?}",
        c.members(1)
    );
}

#[test]
fn promotion_is_refused_without_cluster_manager_and_while_catching_up() {
    let mut c = Cluster::new(3, 1, SEED);
    let refused = c.promote_as(0, false).expect_err("needs --cluster-manager");
    assert!(refused.contains("cluster-manager"), "{refused}");
    // A primary alone with a long queue, then two backups that must catch up.
    c.kill(1);
    c.kill(2);
    assert!(c.run_until(Duration::from_secs(2), |c| c.promote(0).is_ok()));
    let p = c.add_client(Kind::Publisher, "q", 2000);
    c.clients[p].padding = 1024;
    assert!(all_settled(&mut c, p, Duration::from_secs(10)));
    c.restart(1);
    c.restart(2);
    assert!(
        c.run_until(Duration::from_secs(5), |c| c.status(1) == "catchup"),
        "{:?}",
        c.statuses()
    );
    let refused = c.promote(1).expect_err("catching up");
    assert!(refused.contains("catching up"), "{refused}");
    assert!(c.run_until(Duration::from_secs(10), |c| c.statuses()
        == ["active", "ready", "ready"]));
}

#[test]
fn joining_broker_refuses_promotion_while_a_ready_backup_exists() {
    let mut c = running_cluster(1, SEED);
    c.kill(0);
    c.restart(2);
    // Broker 2 is new and joining; it hears that broker 1 is a ready backup.
    c.run_for(Duration::from_secs(1));
    assert_eq!(c.status(2), "joining");
    let refused = c.promote(2).expect_err("a ready backup exists");
    assert!(refused.contains("ready"), "{refused}");
    c.promote_soon(1).expect("the ready backup may be promoted");
}

#[test]
fn failover_waits_for_the_expected_backup_and_survives_n_minus_one_failures() {
    let mut c = running_cluster(1, SEED);
    let p = c.add_client(Kind::Publisher, "q", 10);
    assert!(all_settled(&mut c, p, Duration::from_secs(2)));

    // kill -9 the primary; promote ready backup 1.
    c.kill(0);
    c.step();
    assert_eq!(
        c.statuses()[1..],
        ["ready", "ready"],
        "ready backups stay ready without a primary"
    );
    c.promote_soon(1).expect("1 was ready");
    assert_eq!(c.status(1), "recovering", "waits for expected backup 2");
    // Publishes during recovery wait for broker 2 until it is back and ready.
    c.clients[p].limit = 11;
    assert!(
        c.run_until(Duration::from_secs(5), |c| c.status(1) == "active"
            && c.status(2) == "ready")
    );
    assert!(all_settled(&mut c, p, Duration::from_secs(2)));

    // Second failure in succession: kill 1, promote 2, which has no backups.
    c.kill(1);
    c.step();
    c.promote_soon(2).expect("2 was ready");
    assert!(c.run_until(BACKUP_TIMEOUT * 2, |c| c.status(2) == "active"));
    c.clients[p].limit = 12;
    assert!(
        all_settled(&mut c, p, Duration::from_secs(2)),
        "a primary without backups settles"
    );
    assert_eq!(c.drain("q", 2), Vec::<u64>::new(), "settled and lost");
}

#[test]
fn an_expected_backup_that_never_returns_is_dropped_after_backup_timeout() {
    let mut c = running_cluster(1, SEED);
    c.kill(0);
    c.kill(2);
    c.step();
    c.promote_soon(1).expect("promote");
    let promoted_at = c.now;
    let p = c.add_client(Kind::Publisher, "q", 1);
    c.clients[p].broker = 1;
    c.run_for(BACKUP_TIMEOUT / 2);
    assert!(
        c.clients[p].settled.is_empty(),
        "held for expected backup 2"
    );
    assert!(c.run_until(BACKUP_TIMEOUT * 2, |c| c.status(1) == "active"));
    let waited = c.now.duration_since(promoted_at);
    assert!(waited >= BACKUP_TIMEOUT, "went active after {waited:?}");
    assert!(all_settled(&mut c, p, Duration::from_secs(1)));
}

#[test]
fn a_stalled_backup_holds_settlements_until_twice_the_heartbeat() {
    let mut c = running_cluster(1, SEED);
    c.stall(2);
    let stalled_at = c.now;
    let p = c.add_client(Kind::Publisher, "q", 1);
    c.run_for(HEARTBEAT);
    assert!(
        c.clients[p].settled.is_empty(),
        "backup 2 has not acknowledged"
    );
    assert!(all_settled(&mut c, p, HEARTBEAT * 4));
    let waited = c.now.duration_since(stalled_at);
    assert!(waited > HEARTBEAT * 2, "released after {waited:?}");
    // Resumed, it rejoins and becomes ready again.
    c.resume(2);
    let ok = c.run_until(Duration::from_secs(5), |c| {
        c.status(2) == "ready" && c.members(0).iter().filter(|(_, s)| s == "ready").count() == 2
    });
    assert!(ok, "{:?} {:?}", c.statuses(), c.members(0));
}

#[test]
fn a_stale_primary_steps_down_when_it_learns_of_a_newer_primary() {
    let mut c = running_cluster(1, SEED);
    // 0 stops (SIGSTOP); the backups lose it; 1 is promoted (a newer epoch).
    c.stall(0);
    c.run_for(HEARTBEAT * 3);
    c.promote_soon(1).expect("promote");
    assert!(
        c.run_until(Duration::from_secs(5), |c| c.status(1) == "active"
            && c.status(2) == "ready")
    );
    assert!(c.epoch(1) > c.epoch(0));
    // 0 comes back still primary; the epoch probes (its own, and 1's
    // waiting in its sockets) tell it of the newer primary.
    c.resume(0);
    assert!(
        c.run_until(HEARTBEAT * 2, |c| c.status(0) == "joining"),
        "the stale primary never stepped down: {:?}",
        c.statuses()
    );
    // It rejoins as a backup of the newer primary.
    assert!(
        c.run_until(Duration::from_secs(5), |c| c.statuses()
            == ["ready", "active", "ready"]),
        "{:?}",
        c.statuses()
    );
}

#[test]
fn a_backup_that_reconnects_catches_up_and_loses_nothing() {
    let mut c = running_cluster(2, SEED);
    let p = c.add_client(Kind::Publisher, "q", 200);
    c.clients[p].per_step = Some(5);
    c.run_for(Duration::from_millis(200));
    assert!(c.cut_replication_link(2), "backup 2 has a link");
    assert!(all_settled(&mut c, p, Duration::from_secs(10)));
    assert!(
        c.run_until(Duration::from_secs(5), |c| c.status(2) == "ready"),
        "{:?}",
        c.statuses()
    );
    // Only broker 2 is left: it must hold every settled message.
    c.kill(0);
    c.kill(1);
    c.promote_soon(2).expect("2 is ready");
    assert_eq!(c.drain("q", 2), Vec::<u64>::new(), "settled and lost");
}

#[test]
fn promote_asked_on_a_connection_that_is_not_the_cluster_is_forbidden() {
    let mut c = running_cluster(1, SEED);
    let body = tandem_shards::amqp::codec::Value::Map(vec![(
        tandem_shards::amqp::codec::Value::string("cluster-manager"),
        tandem_shards::amqp::codec::Value::Bool(true),
    )]);
    let mut request = tandem_shards::management::Request::new("PROMOTE", "ha-broker", None, body);
    request.cluster = false;
    let resp = c.brokers[1].shards[0].manage(request);
    assert_eq!(resp.status, 403, "{resp:?}");
    assert!(
        resp.description.contains("for the cluster only"),
        "{resp:?}"
    );
    c.run_for(Duration::from_millis(500));
    assert_eq!(c.status(1), "ready", "a forbidden promote promoted");
    assert_eq!(c.status(0), "active");
}

/// Whether the primary `p` counts broker `b` as a ready backup.
fn ready_at(c: &mut Cluster, p: usize, b: usize) -> bool {
    let id = c.brokers[b].broker_id.clone();
    c.members(p).iter().any(|(m, s)| *m == id && s == "ready")
}

/// Cuts backup `b`'s replication link and waits until the primary `p` no
/// longer counts it ready.
fn cut_and_see_it_gone(c: &mut Cluster, p: usize, b: usize) {
    assert!(c.cut_replication_link(b), "backup {b} has a link");
    assert!(
        c.run_until(Duration::from_secs(5), |c| !ready_at(c, p, b)),
        "{:?}",
        c.members(p)
    );
}

#[test]
fn a_reconnecting_backup_is_sent_only_what_it_missed() {
    let mut c = running_cluster(2, SEED);
    let first = c.add_client(Kind::Publisher, "q", 300);
    c.clients[first].per_step = Some(30);
    assert!(all_settled(&mut c, first, Duration::from_secs(10)));
    let sent_before = c.counter(0, "ha-catch-up-messages");
    // Backup 2 misses what is published while its link is down.
    cut_and_see_it_gone(&mut c, 0, 2);
    let second = c.add_client(Kind::Publisher, "q", 100);
    c.clients[second].per_step = Some(10);
    assert!(all_settled(&mut c, second, Duration::from_secs(10)));
    assert!(
        c.run_until(Duration::from_secs(10), |c| ready_at(c, 0, 2)),
        "{:?} {:?}",
        c.statuses(),
        c.members(0)
    );
    let sent = c.counter(0, "ha-catch-up-messages") - sent_before;
    let kept = c.counter(0, "ha-catch-up-kept");
    assert!(
        (1..=100).contains(&sent),
        "backup 2 missed at most the 100 published while it was away, and was sent {sent} (kept {kept})"
    );
    assert_eq!(kept + sent, 400, "kept {kept}, sent {sent}");
    // Per backup, in the primary's membership: all of it went to broker 2.
    let per_backup = |c: &mut Cluster, b: usize| -> Option<u64> {
        let id = c.brokers[b].broker_id.clone();
        match c.attribute_of(0, "members") {
            Value::List(members) => members
                .iter()
                .find(|m| m.map_get("broker-id").and_then(Value::as_str) == Some(id.as_str()))
                .and_then(|m| m.map_get("catch-up-messages"))
                .and_then(Value::as_u64),
            _ => None,
        }
    };
    assert_eq!(per_backup(&mut c, 2), Some(sent));
    assert_eq!(per_backup(&mut c, 1), Some(0));
    // Only broker 2 is left: it holds every settled message, each once.
    c.kill(0);
    c.kill(1);
    c.promote_soon(2).expect("2 is ready");
    assert_eq!(c.drain("q", 2), Vec::<u64>::new(), "settled and lost");
    c.run_for(Duration::from_secs(1));
    // The two publishers both count from 1: 1..=100 twice, 101..=300 once.
    let consumer = c.clients.len() - 1;
    let mut got = c.clients[consumer].received.clone();
    got.sort_unstable();
    let mut expected: Vec<u64> = (1..=300).chain(1..=100).collect();
    expected.sort_unstable();
    assert!(got == expected, "{} received, not each once", got.len());
}

#[test]
fn a_consumed_queue_is_caught_up_by_dropping_what_the_backup_held() {
    let mut c = running_cluster(2, SEED);
    let p = c.add_client(Kind::Publisher, "q", 200);
    c.clients[p].per_step = Some(40);
    assert!(all_settled(&mut c, p, Duration::from_secs(10)));
    // Consumed on the primary while backup 2 is away: it must drop them.
    cut_and_see_it_gone(&mut c, 0, 2);
    let drained = c.add_client(Kind::Consumer, "q", 0);
    c.clients[drained].broker = 0;
    assert!(c.run_until(Duration::from_secs(10), |c| c.lost().is_empty()));
    assert!(
        c.run_until(Duration::from_secs(10), |c| ready_at(c, 0, 2)),
        "{:?}",
        c.members(0)
    );
    assert_eq!(c.counter(0, "ha-catch-up-messages"), 0, "nothing to send");
    c.kill(0);
    c.kill(1);
    c.promote_soon(2).expect("2 is ready");
    let late = c.add_client(Kind::Consumer, "q", 0);
    c.clients[late].broker = 2;
    c.run_for(Duration::from_secs(2));
    assert_eq!(
        c.clients[late].received,
        Vec::<u64>::new(),
        "consumed messages came back from backup 2"
    );
}

#[test]
fn a_backup_ahead_of_a_new_primary_is_cut_back_to_its_history() {
    let mut c = running_cluster(2, SEED);
    let first = c.add_client(Kind::Publisher, "q", 100);
    c.clients[first].per_step = Some(20);
    assert!(all_settled(&mut c, first, Duration::from_secs(10)));
    // Broker 1 stops; 101..=150 settle with broker 2 alone, once the primary
    // gives up on 1.
    c.stall(1);
    let ahead = c.add_client(Kind::Publisher, "q", 50);
    c.clients[ahead].numbered(101, 150);
    assert!(all_settled(&mut c, ahead, HEARTBEAT * 6));
    // What was sent to 1 is lost with its link; the primary dies; broker 1,
    // behind, is promoted all the same, and takes 1001..=1020 while broker 2
    // is stopped (so they take positions that 101..=150 have on broker 2,
    // unless a new primary's positions are its own).
    assert!(c.cut_replication_link(1), "backup 1 had a link");
    c.kill(0);
    c.stall(2);
    c.resume(1);
    assert!(
        c.run_until(Duration::from_secs(5), |c| c.promote(1).is_ok()),
        "{:?}",
        c.statuses()
    );
    let late = c.add_client(Kind::Publisher, "q", 20);
    c.clients[late].numbered(1001, 1020);
    c.clients[late].broker = 1;
    assert!(all_settled(&mut c, late, BACKUP_TIMEOUT * 3));
    c.resume(2);
    assert!(
        c.run_until(Duration::from_secs(10), |c| ready_at(c, 1, 2)),
        "{:?}",
        c.members(1)
    );
    // Broker 2 now holds broker 1's history: 1..=100 and 1001..=1020, not
    // the 101..=150 broker 1 never had (nor those in their place).
    c.kill(1);
    c.promote_soon(2).expect("2 is ready");
    let consumer = c.add_client(Kind::Consumer, "q", 0);
    c.clients[consumer].broker = 2;
    c.run_until(Duration::from_secs(5), |c| {
        c.clients[consumer].received.len() >= 120
    });
    c.run_for(Duration::from_secs(1));
    let mut got = c.clients[consumer].received.clone();
    got.sort_unstable();
    let expected: Vec<u64> = (1..=100).chain(1001..=1020).collect();
    assert_eq!(got, expected);
}

/// Load for a random schedule: a publisher on each of `queues` (padded
/// messages, up to `burst` new ones a step) over narrow pipes, so replication
/// lags behind publishing and settlements really wait for the backups; the
/// first queue is consumed while the faults happen, the second keeps its
/// messages through them (so they must be on the backups). The publishers.
fn load(c: &mut Cluster, queues: [&str; 2], burst: u64) -> Vec<usize> {
    c.bandwidth = 1024;
    let mut publishers = Vec::new();
    for (i, q) in queues.into_iter().enumerate() {
        let limit = 300 + c.rng.below(400);
        let p = c.add_client(Kind::Publisher, q, limit);
        c.clients[p].per_step = Some(1 + c.rng.below(burst));
        c.clients[p].padding = 256;
        publishers.push(p);
        if i == 0 {
            let consumer = c.add_client(Kind::Consumer, q, 0);
            c.clients[consumer].broker = c.rng.below(3) as usize;
        }
    }
    publishers
}

/// The end of a random schedule: every publisher finishes, the kept queue is
/// consumed, and no settled message is missing.
fn nothing_lost(c: &mut Cluster, seed: u64, publishers: &[usize], kept: &str) {
    for &p in publishers {
        assert!(
            all_settled(c, p, Duration::from_secs(20)),
            "seed {seed}: publisher {p} stuck: {}, {:?}",
            c.clients[p].describe(),
            c.statuses()
        );
    }
    let late = c.add_client(Kind::Consumer, kept, 0);
    c.clients[late].broker = c.active().unwrap_or(0);
    let drained = c.run_until(Duration::from_secs(10), |c| c.lost().is_empty());
    assert!(
        drained,
        "seed {seed}: settled messages lost: {:?}",
        c.lost()
    );
}

/// A seeded random schedule of publishes, consumes and primary kills; every
/// settled message must reach a consumer.
fn failover_under_load(seed: u64) {
    let mut c = running_cluster(2, seed);
    let publishers = load(&mut c, ["q0", "q1"], 8);
    for round in 0..3 {
        let pause = Duration::from_millis(200 + 100 * c.rng.below(10));
        c.run_for(pause);
        let Some(primary) = c.active() else {
            panic!(
                "seed {seed} round {round}: no single active primary: {:?}",
                c.statuses()
            );
        };
        c.kill(primary);
        let promoted = c.run_until(Duration::from_secs(3), |c| {
            (0..3).any(|b| {
                b != primary && c.brokers[b].health == cluster::Health::Up && c.promote(b).is_ok()
            })
        });
        assert!(
            promoted,
            "seed {seed} round {round}: nothing promotable: {:?}",
            c.statuses()
        );
        let down = Duration::from_millis(100 * c.rng.below(5));
        c.run_for(down);
        c.restart(primary);
        let settled = c.run_until(Duration::from_secs(15), |c| {
            c.active().is_some()
                && (0..3).all(|b| matches!(c.status(b).as_str(), "active" | "ready"))
        });
        assert!(
            settled,
            "seed {seed} round {round}: cluster did not recover: {:?}",
            c.statuses()
        );
    }
    nothing_lost(&mut c, seed, &publishers, "q1");
}

#[test]
fn failover_under_a_seeded_random_schedule_loses_no_settled_message() {
    for seed in seeds() {
        failover_under_load(seed);
    }
}

/// Whether the cluster is whole again: one active primary whose two members
/// are ready, and both backups say so.
fn whole(c: &mut Cluster) -> bool {
    let Some(primary) = c.active() else {
        return false;
    };
    let ready_members = c
        .members(primary)
        .iter()
        .filter(|(_, s)| s == "ready")
        .count();
    ready_members == 2 && (0..3).all(|b| matches!(c.status(b).as_str(), "active" | "ready"))
}

/// A seeded random schedule of faults of every kind the simulation has:
/// primary kills and promotions, stalled backups (some longer than twice the
/// heartbeat, so the primary drops them), cut replication links, killed and
/// restarted backups; each fault once the cluster is whole again. Every
/// settled message must reach a consumer.
fn faults_under_load(seed: u64) {
    let mut c = running_cluster(2, seed);
    let publishers = load(&mut c, ["f0", "f1"], 4);
    for round in 0..6 {
        assert!(
            c.run_until(Duration::from_secs(15), whole),
            "seed {seed} round {round}: the cluster is not whole: {:?}",
            c.statuses()
        );
        let pause = Duration::from_millis(50 * c.rng.below(10));
        c.run_for(pause);
        let Some(primary) = c.active() else {
            panic!("seed {seed} round {round}: no primary: {:?}", c.statuses());
        };
        let backup = (primary + 1 + c.rng.below(2) as usize) % 3;
        match c.rng.below(4) {
            0 => {
                c.kill(primary);
                let promoted = c.run_until(Duration::from_secs(3), |c| {
                    (0..3).any(|b| {
                        b != primary
                            && c.brokers[b].health == cluster::Health::Up
                            && c.promote(b).is_ok()
                    })
                });
                assert!(
                    promoted,
                    "seed {seed} round {round}: nothing promotable: {:?}",
                    c.statuses()
                );
                c.restart(primary);
            }
            1 => {
                c.stall(backup);
                let stalled = Duration::from_millis(100 * (1 + c.rng.below(20)));
                c.run_for(stalled);
                c.resume(backup);
            }
            2 => {
                c.cut_replication_link(backup);
            }
            _ => {
                c.kill(backup);
                let down = Duration::from_millis(100 * c.rng.below(10));
                c.run_for(down);
                c.restart(backup);
            }
        }
    }
    nothing_lost(&mut c, seed, &publishers, "f1");
}

#[test]
fn faults_of_every_kind_under_a_seeded_random_schedule_lose_no_settled_message() {
    for seed in seeds() {
        faults_under_load(seed);
    }
}

#[test]
fn a_backup_whose_ha_replicate_differs_from_the_primarys_does_not_join() {
    let mut c = running_cluster(1, SEED);
    c.set_replicate(2, "configuration");
    c.restart(2);
    c.run_for(Duration::from_secs(5));
    assert_eq!(c.status(2), "joining", "{:?}", c.members(0));
    let id = c.brokers[2].broker_id.clone();
    assert!(
        c.members(0).iter().all(|(m, _)| *m != id),
        "{:?}",
        c.members(0)
    );
    // The same level again: it joins.
    c.set_replicate(2, "all");
    c.restart(2);
    assert!(
        c.run_until(Duration::from_secs(10), |c| ready_at(c, 0, 2)),
        "{:?} {:?}",
        c.statuses(),
        c.members(0)
    );
}

/// The primary's `awaiting-settlement` of `queue`: stored messages whose
/// publishers wait for the backups.
fn awaiting_settlement(c: &Cluster, b: usize, queue: &str) -> u64 {
    c.brokers[b]
        .shards
        .iter()
        .flat_map(|s| s.report().queues)
        .filter(|(n, _)| &**n == queue)
        .map(|(_, s)| s.awaiting_settlement)
        .sum()
}

#[test]
fn a_queue_counts_the_settlements_waiting_for_a_backup() {
    let mut c = running_cluster(1, SEED);
    c.stall(2);
    let p = c.add_client(Kind::Publisher, "q", 10);
    assert!(
        c.run_until(Duration::from_secs(1), |c| awaiting_settlement(c, 0, "q")
            == 10),
        "{} waiting: {}",
        awaiting_settlement(&c, 0, "q"),
        c.clients[p].describe()
    );
    assert_eq!(c.clients[p].outstanding(), 10);
    c.resume(2);
    assert!(all_settled(&mut c, p, Duration::from_secs(10)));
    assert_eq!(awaiting_settlement(&c, 0, "q"), 0);
}
