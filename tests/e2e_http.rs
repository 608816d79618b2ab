//! The HTTP listener (`http-port`) of real brokers: `/metrics` in the
//! Prometheus format (checked by `promtool` when it is installed; `scripts/test`
//! installs it), `/health` and `/ready` for probes. Messages come from real
//! Qpid Proton clients; the metrics must move with them, and `/ready` must
//! follow the HA roles through a kill -9 and a promotion.

mod common;
mod ha_cluster;

use std::time::Duration;

use common::clients::{receive, send, spawn_ha_send, Lang};
use common::http::{get, http_address, request, Answer};
use common::{run_tandemd, wait_until, Broker};
use ha_cluster::{serial, signal, HaCluster};

const DEADLINE: Duration = Duration::from_secs(20);

/// Waits until a scrape of `addr` satisfies `ok`; panics with the last one.
fn wait_for_metrics(addr: &str, what: &str, ok: impl Fn(&Answer) -> bool) -> Answer {
    let mut last = None;
    let met = wait_until(DEADLINE, || {
        let answer = get(addr, "/metrics");
        let good = answer.status == 200 && ok(&answer);
        last = Some(answer);
        good
    });
    let last = last.expect("scraped at least once");
    assert!(
        met,
        "{what}: not seen within {DEADLINE:?}; last scrape:\n{}",
        last.body
    );
    last
}

/// The sum of every series of metric `name` (over its labels).
fn total(answer: &Answer, name: &str) -> f64 {
    answer
        .body
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Without promtool the format is not checked, unless `TANDEM_REQUIRE_TOOLS`
/// is set (as `scripts/test` does): then the test fails.
fn missing_promtool() {
    assert!(
        std::env::var_os("TANDEM_REQUIRE_TOOLS").is_none(),
        "promtool is required (scripts/test installs the prometheus package)"
    );
    eprintln!("promtool is not installed (scripts/test installs it): not checked");
}

fn promtool_accepts(body: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        missing_promtool();
        return;
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("written to promtool");
    let out = child.wait_with_output().expect("promtool ran");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics: {said}"
    );
}

#[test]
fn a_stand_alone_broker_serves_metrics_that_move_with_its_messages() {
    let broker = Broker::start(&["--http-port", "0", "--worker-threads", "2"]);
    let addr = http_address(&broker);

    let health = get(&addr, "/health");
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    let ready = get(&addr, "/ready");
    assert_eq!((ready.status, ready.body.as_str()), (200, "standalone\n"));

    send(Lang::Proton, &broker, "metered", 25, &[]);
    let stored = wait_for_metrics(&addr, "25 messages on 'metered'", |a| {
        a.sample(r#"tandem_queue_messages{queue="metered"}"#) == Some(25.0)
    });
    assert!(
        stored
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/plain; version=0.0.4")),
        "{:?}",
        stored.headers
    );
    assert_eq!(
        stored.sample(r#"tandem_queue_enqueued_total{queue="metered"}"#),
        Some(25.0)
    );
    assert_eq!(
        stored.sample(r#"tandem_ha_status{status="standalone"}"#),
        Some(1.0)
    );
    assert!(stored.sample("tandem_uptime_seconds").is_some());
    assert!(
        stored
            .sample(r#"tandem_shard_ring_capacity_messages{shard="0",to="1"}"#)
            .is_some_and(|n| n > 0.0),
        "{}",
        stored.body
    );
    promtool_accepts(&stored.body);

    receive(Lang::Proton, &broker, "metered", 25, &[]);
    let drained = wait_for_metrics(&addr, "'metered' drained", |a| {
        a.sample(r#"tandem_queue_messages{queue="metered"}"#) == Some(0.0)
            && a.sample(r#"tandem_queue_dequeued_total{queue="metered"}"#) == Some(25.0)
            // The clients are gone; the status page's own admin link stays.
            && total(a, "tandem_shard_connections") == 1.0
    });
    // The clients closed: their shard totals stay (counters never go down).
    assert!(total(&drained, "tandem_shard_messages_in_total") >= 25.0);
    assert!(total(&drained, "tandem_shard_messages_out_total") >= 25.0);
    assert!(total(&drained, "tandem_shard_bytes_in_total") >= 25.0 * 10.0);
    promtool_accepts(&drained.body);

    let missing = get(&addr, "/nope");
    assert_eq!(missing.status, 404, "{}", missing.body);
    let post = request(&addr, "POST", "/metrics");
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
    let head = request(&addr, "HEAD", "/health");
    assert_eq!((head.status, head.body.as_str()), (200, ""));
}

#[test]
fn bad_http_settings_stop_the_start_and_say_which() {
    let out = run_tandemd(&["--http-port", "70000"], DEADLINE);
    assert!(!out.success());
    assert!(out.stderr().contains("http-port"), "{}", out.stderr());

    let out = run_tandemd(&["--http-interface", "no such host!"], DEADLINE);
    assert!(!out.success());
    assert!(out.stderr().contains("http-interface"), "{}", out.stderr());

    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port().to_string();
    let dir = common::TempDir::new("http-taken");
    let data = dir.join("data");
    let data = data.to_str().expect("utf-8");
    let out = run_tandemd(
        &["--port", "0", "--data-dir", data, "--http-port", &port],
        DEADLINE,
    );
    assert!(!out.success(), "started on a taken HTTP port");
    let expected = format!("http-port: cannot listen on 127.0.0.1:{port}");
    assert!(out.stderr().contains(&expected), "{}", out.stderr());
}

#[test]
fn ready_and_the_ha_metrics_follow_the_roles_through_a_fail_over() {
    let _serial = serial();
    // Heartbeats long enough that a backup stopped for a moment is not dropped.
    let mut cluster = HaCluster::start_with_args(
        Some("all"),
        &["--http-port", "0", "--link-heartbeat-interval", "5"],
    );
    let addrs: Vec<String> = (0..3).map(|i| http_address(cluster.broker(i))).collect();

    // Not promoted yet: alive, not ready.
    for addr in &addrs {
        assert_eq!(get(addr, "/health").status, 200);
        let ready = get(addr, "/ready");
        assert_eq!((ready.status, ready.body.as_str()), (503, "joining\n"));
    }

    cluster.promote_ok(0);
    for i in [1, 2] {
        cluster.wait_status(i, "ready");
    }
    for (addr, status) in addrs.iter().zip(["active", "ready", "ready"]) {
        let shown = wait_until(DEADLINE, || {
            get(addr, "/ready").body == format!("{status}\n")
        });
        assert!(shown, "{addr}: /ready never said {status}");
        assert_eq!(get(addr, "/ready").status, 200);
    }
    let primary = wait_for_metrics(&addrs[0], "two ready backups", |a| {
        a.sample("tandem_ha_ready_backups") == Some(2.0)
    });
    assert_eq!(
        primary.sample(r#"tandem_ha_status{status="active"}"#),
        Some(1.0)
    );
    let epoch = primary.sample("tandem_ha_epoch").expect("an epoch");
    promtool_accepts(&primary.body);

    // Under a publisher, the primary's and the backups' depths move.
    cluster.config(0, &["add", "queue", "watched"]);
    let mut sender = spawn_ha_send(&cluster.urls, "watched", 400, "60");
    sender.wait_for_settlements(100, DEADLINE);
    // A stopped backup acknowledges nothing: the primary shows its lag grow.
    signal(cluster.pid(2), libc::SIGSTOP);
    let lagging = wait_for_metrics(&addrs[0], "a stopped backup's lag", |a| {
        total(a, "tandem_ha_backup_lag_messages") > 0.0
            && total(a, "tandem_ha_backup_lag_seconds") > 0.0
            && total(a, "tandem_ha_queue_lag_messages") > 0.0
    });
    signal(cluster.pid(2), libc::SIGCONT);
    assert!(total(&lagging, "tandem_ha_backup_lag_bytes") > 0.0);
    for addr in &addrs {
        wait_for_metrics(addr, "messages on 'watched' while sending", |a| {
            a.sample(r#"tandem_queue_messages{queue="watched"}"#)
                .is_some_and(|n| n >= 100.0)
        });
    }
    sender.wait().assert_success();
    for addr in &addrs {
        wait_for_metrics(addr, "all 400 on 'watched'", |a| {
            a.sample(r#"tandem_queue_messages{queue="watched"}"#) == Some(400.0)
                && a.sample(r#"tandem_queue_awaiting_settlement_messages{queue="watched"}"#)
                    == Some(0.0)
        });
    }
    // The primary timed every settlement its backups held, and sees each
    // backup caught up (lag back to 0), by broker id, and the members' status.
    let settled = wait_for_metrics(&addrs[0], "hold times and caught-up backups", |a| {
        a.sample("tandem_settlement_hold_seconds_count")
            .is_some_and(|n| n >= 400.0)
            && a.body
                .lines()
                .filter(|l| l.starts_with("tandem_ha_backup_lag_messages{"))
                .count()
                == 2
            && total(a, "tandem_ha_backup_lag_messages") == 0.0
    });
    assert!(
        settled.sample(r#"tandem_settlement_hold_seconds_bucket{le="+Inf"}"#) >= Some(400.0),
        "{}",
        settled.body
    );
    assert_eq!(
        settled
            .body
            .lines()
            .filter(
                |l| l.starts_with("tandem_ha_member_status{") && l.contains(r#"status="ready"} 1"#)
            )
            .count(),
        2,
        "{}",
        settled.body
    );
    assert_eq!(settled.sample("tandem_ha_promotions_total"), Some(1.0));
    promtool_accepts(&settled.body);

    cluster.kill(0);
    cluster.promote_ok(1);
    let shown = wait_until(DEADLINE, || get(&addrs[1], "/ready").body == "active\n");
    assert!(shown, "the new primary's /ready never said active");
    let new_primary = wait_for_metrics(&addrs[1], "the new primary's epoch", |a| {
        a.sample(r#"tandem_ha_status{status="active"}"#) == Some(1.0)
            && a.sample("tandem_ha_epoch").is_some_and(|e| e > epoch)
    });
    assert_eq!(
        new_primary.sample(r#"tandem_queue_messages{queue="watched"}"#),
        Some(400.0)
    );
    assert_eq!(new_primary.sample("tandem_ha_promotions_total"), Some(1.0));
}

/// The scrape configuration and alert rules `docs/monitoring.md` shows are
/// ones Prometheus accepts.
#[test]
fn the_monitoring_docs_config_and_rules_pass_promtool() {
    if std::process::Command::new("promtool")
        .arg("--version")
        .output()
        .is_err()
    {
        missing_promtool();
        return;
    }
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/monitoring.md"))
        .expect("docs/monitoring.md");
    let blocks: Vec<&str> = docs
        .split("```yaml\n")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .collect();
    assert_eq!(
        blocks.len(),
        3,
        "two scrape configs (plain, HTTPS with credentials) and a rules file"
    );
    let dir = common::TempDir::new("monitoring-docs");
    for (i, (block, check)) in blocks.iter().zip(["config", "config", "rules"]).enumerate() {
        let path = dir.join(&format!("{check}-{i}.yml"));
        std::fs::write(&path, block).expect("written");
        let out = std::process::Command::new("promtool")
            .args(["check", check])
            .arg(&path)
            .output()
            .expect("promtool ran");
        assert!(
            out.status.success(),
            "promtool check {check}: {}{}\n{block}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
