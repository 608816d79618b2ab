//! Messages crossing shards: a publisher whose connection lives on one shard
//! feeds a queue owned by the other, through the cross-shard rings (with
//! `connection-placement no`, which otherwise moves the connection to the
//! queue's shard); and with placement on, connections accepted on the other
//! shard are served on the queue's.

mod common;

use common::*;
use tandem_shards::placement::shard_of;

const SHARDS: usize = 2;

/// Messages per producer; `TANDEM_CROSS_SHARD_MESSAGES` overrides it for a
/// quick local run.
fn messages_per_producer() -> usize {
    std::env::var("TANDEM_CROSS_SHARD_MESSAGES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000)
}

/// The first queue name of the form `{stem}-N` that `shard_of` places on `shard`.
fn queue_on_shard(stem: &str, shard: usize) -> String {
    (0..1000)
        .map(|i| format!("{stem}-{i}"))
        .find(|name| shard_of(name, SHARDS) == shard)
        .unwrap_or_else(|| panic!("no {stem}-N name on shard {shard} of {SHARDS}"))
}

#[test]
fn broker_reports_the_queue_shard_that_placement_computes() {
    let broker = Broker::start(&["--worker-threads", "2"]);
    assert_eq!(broker.shards(), SHARDS);
    for shard in 0..SHARDS {
        for stem in ["placed", "located"] {
            let queue = queue_on_shard(stem, shard);
            // --count 0: attach, report where the broker put the queue, detach.
            let summary = send(Lang::Proton, &broker, &queue, 0, &[]);
            assert_eq!(
                summary["queue_shard"].as_u64(),
                Some(shard as u64),
                "queue {queue}: {summary}"
            );
        }
    }
}

#[test]
fn messages_published_on_another_shard_arrive_complete_and_in_order() {
    let per_producer = messages_per_producer();
    let total = 2 * per_producer;
    let broker = Broker::start(&["--worker-threads", "2", "--connection-placement", "no"]);
    assert_eq!(broker.shards(), SHARDS);
    let queue = queue_on_shard("cross-shard", 0);
    let url = broker.url();
    let count = per_producer.to_string();
    let timeout = "300";

    // The consumer may land on either shard; --check-order keeps its output to
    // one summary line instead of one line per message.
    let consumer = spawn_receiver(
        Lang::Proton,
        &broker,
        &queue,
        total,
        &["--check-order", "--credit", "1000", "--timeout", timeout],
    );

    // p0: at-least-once, connection forced onto shard 1 (the queue is on 0).
    let p0 = spawn_python(
        "send.py",
        &[
            "--url",
            &url,
            "--address",
            &queue,
            "--count",
            &count,
            "--prefix",
            "p0-",
            "--settle",
            "unsettled",
            "--want-shard",
            "1",
            "--timeout",
            timeout,
        ],
    );
    // p1: presettled, on whichever shard the kernel picks.
    let p1 = spawn_python(
        "send.py",
        &[
            "--url",
            &url,
            "--address",
            &queue,
            "--count",
            &count,
            "--prefix",
            "p1-",
            "--settle",
            "presettled",
            "--timeout",
            timeout,
        ],
    );

    let p0 = p0.wait();
    p0.assert_success();
    let p0 = p0.summary();
    assert_eq!(p0["shard"].as_u64(), Some(1), "p0 connection shard: {p0}");
    assert_eq!(
        p0["queue_shard"].as_u64(),
        Some(0),
        "queue shard seen by p0: {p0}"
    );
    assert_eq!(
        p0["link_shard"].as_u64(),
        Some(1),
        "without placement the link stays on its connection's shard: {p0}"
    );
    assert_eq!(p0["accepted"].as_u64(), Some(per_producer as u64), "{p0}");
    let p1 = p1.wait();
    p1.assert_success();
    let p1 = p1.summary();
    assert_eq!(p1["sent"].as_u64(), Some(per_producer as u64), "{p1}");

    let consumed = consumer.wait();
    consumed.assert_success();
    let summary = consumed.summary();
    assert_eq!(
        summary["received"].as_u64(),
        Some(total as u64),
        "{summary}"
    );
    assert_eq!(summary["queue_shard"].as_u64(), Some(0), "{summary}");
    assert_eq!(summary["unparsed"].as_u64(), Some(0), "{summary}");
    for prefix in ["p0-", "p1-"] {
        let stats = &summary["prefixes"][prefix];
        let expect = |key: &str, value: u64| {
            assert_eq!(stats[key].as_u64(), Some(value), "{prefix} {key}: {stats}");
        };
        expect("count", per_producer as u64);
        expect("distinct", per_producer as u64);
        expect("min", 0);
        expect("max", per_producer as u64 - 1);
        assert_eq!(
            stats["in_order"].as_bool(),
            Some(true),
            "{prefix} order: {stats}"
        );
    }
    assert_eq!(
        summary["prefixes"].as_object().map(|p| p.len()),
        Some(2),
        "unexpected prefixes: {summary}"
    );
}

#[test]
fn placement_serves_a_connection_on_the_shard_of_its_queue() {
    let broker = Broker::start(&["--worker-threads", "2"]);
    let url = broker.url();
    for queue_shard in 0..SHARDS {
        let queue = queue_on_shard("placed-conn", queue_shard);
        let other = (queue_shard + 1) % SHARDS;
        // Both clients are accepted on the other shard, and moved at attach.
        let consumer = spawn_receiver(
            Lang::Proton,
            &broker,
            &queue,
            500,
            &["--check-order", "--want-shard", &other.to_string()],
        );
        let sent = spawn_python(
            "send.py",
            &[
                "--url",
                &url,
                "--address",
                &queue,
                "--count",
                "500",
                "--settle",
                "unsettled",
                "--want-shard",
                &other.to_string(),
                "--timeout",
                "60",
            ],
        )
        .wait();
        sent.assert_success();
        let sent = sent.summary();
        let got = consumer.wait();
        got.assert_success();
        let got = got.summary();
        for summary in [&sent, &got] {
            assert_eq!(summary["shard"].as_u64(), Some(other as u64), "{summary}");
            assert_eq!(
                summary["link_shard"].as_u64(),
                Some(queue_shard as u64),
                "{summary}"
            );
        }
        assert_eq!(sent["accepted"].as_u64(), Some(500), "{sent}");
        assert_eq!(got["received"].as_u64(), Some(500), "{got}");
    }
}
