//! What the primary reports for metrics (issue 16), on the simulated cluster of
//! the real code with its virtual clock: every publish its backups held is
//! timed into the hold-time histogram, a stalled backup's lag grows in
//! messages, bytes and seconds and falls back to 0 once it catches up, and
//! the promotion is counted.

mod cluster;

use std::time::Duration;

use cluster::{running_cluster, Cluster, Kind};
use tandem_shards::stats::{Histogram, Series};

const SEED: u64 = 11;

fn hold_times(c: &Cluster, b: usize) -> Histogram {
    let mut all = Histogram::default();
    for s in &c.brokers[b].shards {
        all.add(&s.report().hold_times);
    }
    all
}

/// Broker `b`'s series named `name` for the backup with broker id `backup`.
fn lag(c: &Cluster, b: usize, name: &str, backup: &str) -> Option<f64> {
    let series: Vec<Series> = c.brokers[b]
        .shards
        .iter()
        .flat_map(|s| s.report().series)
        .collect();
    series
        .iter()
        .find(|s| s.name == name && s.labels.contains(&("broker_id", backup.to_owned())))
        .map(|s| s.value)
}

#[test]
fn held_settlements_are_timed_and_a_stalled_backups_lag_grows_then_clears() {
    let mut c = running_cluster(2, SEED);
    assert_eq!(c.counter(0, "ha-promotions"), 1);
    assert_eq!(c.counter(1, "ha-promotions"), 0);

    let p = c.add_client(Kind::Publisher, "q", 50);
    assert!(c.run_until(Duration::from_secs(2), |c| c.clients[p].all_settled()));
    let held = hold_times(&c, 0);
    assert_eq!(
        held.count, 50,
        "every publish waited for the backups: {held:?}"
    );
    assert_eq!(held.counts.iter().sum::<u64>(), 50);
    assert_eq!(
        held.counts.last(),
        Some(&0),
        "none waited over 10 s: {held:?}"
    );
    let backup = c.brokers[2].broker_id.clone();
    c.run_until(Duration::from_secs(1), |c| {
        lag(c, 0, "tandem_ha_backup_lag_messages", &backup) == Some(0.0)
    });
    assert_eq!(
        lag(&c, 0, "tandem_ha_backup_lag_messages", &backup),
        Some(0.0)
    );

    // Broker 2 stops: what the primary sends it stays unacknowledged.
    c.stall(2);
    let p2 = c.add_client(Kind::Publisher, "q", 20);
    c.run_for(Duration::from_millis(300));
    let messages = lag(&c, 0, "tandem_ha_backup_lag_messages", &backup).unwrap_or(0.0);
    let bytes = lag(&c, 0, "tandem_ha_backup_lag_bytes", &backup).unwrap_or(0.0);
    let seconds = lag(&c, 0, "tandem_ha_backup_lag_seconds", &backup).unwrap_or(0.0);
    let per_queue = lag(&c, 0, "tandem_ha_queue_lag_messages", &backup).unwrap_or(0.0);
    assert!(messages >= 1.0, "lag {messages} messages");
    assert!(
        bytes > 0.0 && per_queue >= 1.0,
        "{bytes} bytes, {per_queue} on q"
    );
    assert!(
        (0.1..=0.3).contains(&seconds),
        "the oldest unacknowledged delivery is about 300 ms old on the virtual clock: {seconds}"
    );
    assert!(
        !c.clients[p2].all_settled(),
        "settlements wait for broker 2"
    );

    c.resume(2);
    assert!(c.run_until(Duration::from_secs(2), |c| c.clients[p2].all_settled()));
    assert!(c.run_until(Duration::from_secs(1), |c| {
        lag(c, 0, "tandem_ha_backup_lag_messages", &backup) == Some(0.0)
    }));
    let held = hold_times(&c, 0);
    assert_eq!(held.count, 70);
    assert!(
        held.sum_seconds >= 20.0 * 0.1,
        "the 20 held by the stalled backup waited over 100 ms each: {held:?}"
    );
}
