//! tandemd's log lines: text lines carry the broker's id and HA status as a
//! prefix (as qpidd's did after QPID-6020); `log-format = json` makes every
//! line one JSON object. Checked on a stand-alone broker and through an HA
//! promotion.

mod common;
mod ha_cluster;

use std::time::Duration;

use common::{wait_until, Broker, Json};
use ha_cluster::{serial, HaCluster};

#[test]
fn json_logs_are_one_object_per_line_with_the_brokers_id_and_status() {
    let broker = Broker::start(&["--log-format", "json"]);
    // A client that speaks no AMQP makes a shard log a warning.
    {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", broker.port())).expect("connect");
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").expect("write");
    }
    let has_shard_line = || {
        broker
            .stderr()
            .lines()
            .any(|l| l.contains("\"thread\":\"shard-"))
    };
    assert!(
        wait_until(Duration::from_secs(10), has_shard_line),
        "no line from a shard: {}",
        broker.stderr()
    );
    let log = broker.stderr();
    let mut shard_lines = 0;
    for line in log.lines() {
        let json = Json::parse(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        for key in [
            "timestamp",
            "level",
            "broker_id",
            "status",
            "thread",
            "message",
        ] {
            assert!(json.has(key), "no {key} in {line}");
        }
        assert_eq!(json["status"].as_str(), Some("standalone"), "{line}");
        assert_eq!(json["broker_id"].as_str().map(str::len), Some(36), "{line}");
        assert!(
            json["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{line}"
        );
        if json["thread"]
            .as_str()
            .is_some_and(|t| t.starts_with("shard-"))
        {
            assert!(
                json["shard"].as_u64().is_some(),
                "a shard's line names it: {line}"
            );
            shard_lines += 1;
        }
    }
    assert!(shard_lines > 0, "{log}");
    assert!(log.contains("\"message\":\"listening on"), "{log}");
}

#[test]
fn text_logs_carry_the_brokers_id_and_status_through_a_promotion() {
    let _serial = serial();
    let cluster = HaCluster::start(Some("all"));
    cluster.promote_ok(0);
    cluster.wait_status(1, "ready");
    let id = |log: &str| -> String {
        let line = log
            .lines()
            .find(|l| l.contains(" [") && l.contains(" joining] "))
            .unwrap_or_else(|| panic!("no joining line in {log}"));
        let start = line.find(" [").map_or(0, |i| i + 2);
        line[start..start + 8].to_owned()
    };
    let primary = cluster.log(0);
    let short = id(&primary);
    assert!(
        primary
            .lines()
            .any(|l| l.contains(&format!("[{short} active] HA: status changed"))),
        "{primary}"
    );
    let backup_ready = wait_until(Duration::from_secs(10), || {
        cluster.log(1).contains(" ready] HA: status changed")
    });
    assert!(backup_ready, "{}", cluster.log(1));
    assert_ne!(id(&cluster.log(1)), short, "each broker its own id");
}
