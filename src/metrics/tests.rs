use std::time::Duration;

use tandem_shards::queue::QueueStats;
use tandem_shards::stats::{ConnectionInfo, ConnectionTotals, ShardReport};

use super::*;

fn who() -> BrokerIdentity {
    BrokerIdentity {
        broker_id: "b-1".into(),
        version: "0.1.0",
    }
}

fn connection(messages_in: u64, bytes_in: u64) -> ConnectionInfo {
    ConnectionInfo {
        shard: 0,
        id: 1,
        address: "127.0.0.1:1".into(),
        user: None,
        container: "c".into(),
        moved: ConnectionTotals {
            frames_in: 2,
            frames_out: 3,
            messages_in,
            bytes_in,
            ..Default::default()
        },
    }
}

fn snapshot(shard: usize, taken: Instant, report: ShardReport) -> Option<Arc<ShardSnapshot>> {
    Some(Arc::new(ShardSnapshot {
        shard,
        taken,
        uptime: Duration::from_secs(42),
        report,
        rings: vec![(1 - shard.min(1), 3, 1024)],
    }))
}

/// A primary with two shards: queue `orders` on shard 1, an HA role on 0.
fn primary(now: Instant) -> Scrape {
    let shard0 = ShardReport {
        connections: vec![connection(10, 1000)],
        closed: ConnectionTotals {
            messages_in: 5,
            bytes_in: 500,
            ..Default::default()
        },
        facts: vec![
            ("ha-status", "active".into()),
            ("ha-epoch", "7".into()),
            ("ha-ready-backups", "2".into()),
        ],
        counters: vec![("ha-catch-up-messages", 4), ("store-journal-writes", 1)],
        ..Default::default()
    };
    let shard1 = ShardReport {
        queues: vec![(
            "orders".into(),
            QueueStats {
                depth: 3,
                bytes: 3072,
                enqueues: 9,
                dequeues: 6,
                held: 1,
                awaiting_settlement: 2,
                ..Default::default()
            },
        )],
        counters: vec![("store-journal-writes", 2)],
        ..Default::default()
    };
    Scrape {
        shards: vec![snapshot(0, now, shard0), snapshot(1, now, shard1)],
        at: now,
    }
}

fn has(text: &str, line: &str) -> bool {
    text.lines().any(|l| l == line)
}

#[test]
fn a_scrape_names_queues_shards_and_the_ha_status_in_base_units() {
    let text = render(&who(), &primary(Instant::now())).expect("renders");
    for line in [
        r#"tandem_broker_info{broker_id="b-1",version="0.1.0"} 1"#,
        r#"tandem_ha_status{status="active"} 1"#,
        r#"tandem_ha_status{status="ready"} 0"#,
        "tandem_ha_epoch 7",
        "tandem_ha_ready_backups 2",
        "tandem_uptime_seconds 42",
        r#"tandem_queue_messages{queue="orders"} 3"#,
        r#"tandem_queue_bytes{queue="orders"} 3072"#,
        r#"tandem_queue_enqueued_total{queue="orders"} 9"#,
        r#"tandem_queue_dequeued_total{queue="orders"} 6"#,
        r#"tandem_queue_flow_held_messages{queue="orders"} 1"#,
        r#"tandem_queue_awaiting_settlement_messages{queue="orders"} 2"#,
        r#"tandem_shard_connections{shard="0"} 1"#,
        r#"tandem_shard_ring_messages{shard="0",to="1"} 3"#,
        r#"tandem_shard_ring_capacity_messages{shard="1",to="0"} 1024"#,
        // Closed connections' counts stay in the shard's totals.
        r#"tandem_shard_messages_in_total{shard="0"} 15"#,
        r#"tandem_shard_bytes_in_total{shard="0"} 1500"#,
        // Extension counters sum over the shards.
        "tandem_store_journal_writes_total 3",
        "tandem_ha_catch_up_messages_total 4",
        "# TYPE tandem_queue_enqueued_total counter",
        "# TYPE tandem_queue_messages gauge",
    ] {
        assert!(has(&text, line), "missing {line:?} in\n{text}");
    }
}

#[test]
fn a_broker_without_an_ha_role_is_standalone() {
    let now = Instant::now();
    let scrape = Scrape {
        shards: vec![snapshot(0, now, ShardReport::default())],
        at: now,
    };
    assert_eq!(scrape.status(), "standalone");
    let text = render(&who(), &scrape).expect("renders");
    assert!(has(&text, r#"tandem_ha_status{status="standalone"} 1"#));
    assert!(!text.contains("tandem_ha_epoch"), "no epoch without a role");
}

#[test]
fn queue_names_are_escaped_as_label_values() {
    let now = Instant::now();
    let report = ShardReport {
        queues: vec![("a\"b\\c\nd".into(), QueueStats::default())],
        ..Default::default()
    };
    let scrape = Scrape {
        shards: vec![snapshot(0, now, report)],
        at: now,
    };
    let text = render(&who(), &scrape).expect("renders");
    assert!(
        has(&text, r#"tandem_queue_messages{queue="a\"b\\c\nd"} 0"#),
        "{text}"
    );
}

#[test]
fn a_shard_that_stopped_publishing_is_stale() {
    let now = Instant::now();
    let mut scrape = primary(now);
    assert!(scrape.stale_shards(Duration::from_secs(5)).is_empty());
    scrape.at = now + Duration::from_secs(6);
    assert_eq!(scrape.stale_shards(Duration::from_secs(5)), vec![0, 1]);
    scrape.shards[1] = None;
    scrape.at = now;
    assert_eq!(scrape.stale_shards(Duration::from_secs(5)), vec![1]);
}

#[test]
fn every_extension_counter_has_a_counter_name() {
    for name in [
        "store-journal-writes",
        "store-journal-bytes",
        "store-persistent-messages",
        "ha-catch-up-messages",
        "ha-catch-up-bytes",
        "ha-catch-up-kept",
        "ha-consumed-not-sent",
        "ha-consumed-not-sent-bytes",
        "ha-promotions",
        "ha-step-downs",
        "something-new",
    ] {
        let (metric, _) = extension_counter(name);
        assert!(
            metric.starts_with("tandem_") && metric.ends_with("_total"),
            "{metric}"
        );
        assert!(!metric.contains('-'), "{metric}");
    }
}

#[test]
fn hold_times_are_one_histogram_over_the_shards_and_series_keep_their_labels() {
    let now = Instant::now();
    let mut a = ShardReport::default();
    a.hold_times.observe(Duration::from_micros(50));
    a.hold_times.observe(Duration::from_millis(3));
    let mut b = ShardReport::default();
    b.hold_times.observe(Duration::from_secs(60));
    b.series.push(tandem_shards::stats::Series {
        name: "tandem_ha_backup_lag_messages",
        help: "lag",
        labels: vec![("broker_id", "b-2".into()), ("address", "h:1".into())],
        value: 12.0,
    });
    let scrape = Scrape {
        shards: vec![snapshot(0, now, a), snapshot(1, now, b)],
        at: now,
    };
    let text = render(&who(), &scrape).expect("renders");
    for line in [
        "# TYPE tandem_settlement_hold_seconds histogram",
        r#"tandem_settlement_hold_seconds_bucket{le="0.0001"} 1"#,
        r#"tandem_settlement_hold_seconds_bucket{le="0.0025"} 1"#,
        r#"tandem_settlement_hold_seconds_bucket{le="0.005"} 2"#,
        r#"tandem_settlement_hold_seconds_bucket{le="10"} 2"#,
        r#"tandem_settlement_hold_seconds_bucket{le="+Inf"} 3"#,
        "tandem_settlement_hold_seconds_count 3",
        r#"tandem_ha_backup_lag_messages{broker_id="b-2",address="h:1"} 12"#,
    ] {
        assert!(has(&text, line), "missing {line:?} in\n{text}");
    }
}
