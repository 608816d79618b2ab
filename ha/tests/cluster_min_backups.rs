//! `ha-min-backups`: a primary with fewer ready backups than it needs settles
//! no publish to a replicated queue; the publishes wait, are never lost, and
//! after `ha-min-backups-timeout` are rejected. On the simulated cluster of
//! the real code.

mod cluster;

use std::time::Duration;

use cluster::{Cluster, Kind};
use tandem_shards::amqp::codec::Value;

const SEED: u64 = 11;
const LONG: Duration = Duration::from_secs(60);

/// Two brokers needing one ready backup; broker 0 promoted and active.
fn pair(timeout: Duration) -> Cluster {
    let mut c = Cluster::with_min_backups(2, 2, SEED, 1, timeout);
    assert!(
        c.run_until(Duration::from_secs(2), |c| c.promote(0).is_ok()),
        "broker 0 was never promotable"
    );
    c
}

fn withholding(c: &mut Cluster, b: usize) -> Option<String> {
    match c.attribute_of(b, "withholding") {
        Value::String(s) => Some(s),
        _ => None,
    }
}

#[test]
fn a_primary_without_a_ready_backup_settles_nothing_until_one_is() {
    let mut c = pair(LONG);
    c.kill(1);
    assert!(c.run_until(Duration::from_secs(2), |c| c.status(0) == "active"));
    let publisher = c.add_client(Kind::Publisher, "q", 100);
    c.run_for(Duration::from_secs(3));
    assert_eq!(
        c.clients[publisher].settled.len(),
        0,
        "settled with no copy"
    );
    assert_eq!(c.clients[publisher].outstanding(), 100);
    let why = withholding(&mut c, 0).expect("the primary says why it waits");
    assert!(why.contains("0 of ha-min-backups 1"), "{why}");
    // A backup comes, catches up on the waiting messages, and they settle.
    c.restart(1);
    c.assert_all_settled(publisher, Duration::from_secs(10), "once a backup is ready");
    assert_eq!(c.status(1), "ready");
    assert_eq!(withholding(&mut c, 0), None);
    // Every settled message is on the backup: the primary dies, none is lost.
    c.kill(0);
    assert!(c.run_until(Duration::from_secs(2), |c| c.promote(1).is_ok()));
    assert_eq!(c.drain("q", 1), Vec::<u64>::new());
}

#[test]
fn what_waited_for_a_lost_backup_keeps_waiting_for_the_next() {
    let mut c = pair(LONG);
    assert!(c.run_until(Duration::from_secs(5), |c| c.statuses()
        == ["active", "ready"]));
    let publisher = c.publishing("q", 2000, 20, 200);
    // The backup dies with acknowledgements still on their way: what it had
    // not confirmed must not settle with it gone.
    c.stall(1);
    c.run_for(Duration::from_millis(30));
    c.kill(1);
    let before = c.clients[publisher].settled.clone();
    c.run_for(Duration::from_secs(3));
    assert_eq!(
        c.clients[publisher].settled, before,
        "settled without a ready backup"
    );
    assert!(c.clients[publisher].outstanding() > 0);
    c.restart(1);
    c.assert_all_settled(publisher, Duration::from_secs(20), "once a backup is ready");
    c.kill(0);
    assert!(c.run_until(Duration::from_secs(2), |c| c.promote(1).is_ok()));
    assert_eq!(c.drain("q", 1), Vec::<u64>::new());
}

#[test]
fn a_publish_waiting_past_the_timeout_is_rejected_and_not_kept() {
    let mut c = pair(Duration::from_secs(2));
    c.kill(1);
    assert!(c.run_until(Duration::from_secs(2), |c| c.status(0) == "active"));
    let publisher = c.add_client(Kind::Publisher, "q", 50);
    c.run_for(Duration::from_millis(1500));
    assert!(c.clients[publisher].rejected.is_empty());
    assert!(
        c.run_until(Duration::from_secs(2), |c| c.clients[publisher]
            .rejected
            .len()
            >= 50),
        "{}",
        c.clients[publisher].describe()
    );
    assert!(c.clients[publisher]
        .rejected
        .iter()
        .all(|r| r == "amqp:resource-limit-exceeded"));
    assert!(c.clients[publisher].settled.is_empty());
    // The rejected are gone from the queue; the ones sent again wait. Once a
    // backup is ready each number is there exactly once.
    c.restart(1);
    c.assert_all_settled(publisher, Duration::from_secs(10), "once a backup is ready");
    let consumer = c.add_client(Kind::Consumer, "q", 0);
    assert!(c.run_until(Duration::from_secs(5), |c| c.lost().is_empty()));
    c.run_for(Duration::from_millis(500));
    let mut received = c.clients[consumer].received.clone();
    received.sort_unstable();
    assert_eq!(received, (1..=50).collect::<Vec<u64>>(), "once each");
}

#[test]
fn without_min_backups_a_primary_settles_alone() {
    let mut c = Cluster::with_min_backups(2, 2, SEED, 0, LONG);
    assert!(c.run_until(Duration::from_secs(2), |c| c.promote(0).is_ok()));
    c.kill(1);
    let publisher = c.add_client(Kind::Publisher, "q", 100);
    assert!(c.run_until(Duration::from_secs(5), |c| c.clients[publisher]
        .all_settled()));
    assert_eq!(withholding(&mut c, 0), None);
}
