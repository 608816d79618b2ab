//! HA fail-over with real brokers and real Qpid Proton clients, the test acting
//! as the cluster resource manager (`kill -9`, SIGSTOP, restart, `tandem-ha
//! --cluster-manager promote`): the scenarios of qpidd's `ha_tests.py` that are
//! about losing brokers — failover send/receive through N-1 failures, a stalled
//! backup, the expected-backup timeout of a recovering primary, a backup
//! rejoining after fail-over, backups refusing clients, and the refused
//! promotion of a catching-up broker.
//!
//! The Proton clients (`tests/clients/proton/ha_send.py`, `ha_recv.py`) fail
//! over along the cluster's URL list with Proton's own reconnect. Backups drop
//! ordinary clients before sending their open, which stock Proton treats as a
//! lost connection and so tries the next address
//! (`a_stock_proton_client_whose_first_address_is_a_backup_reaches_the_primary`);
//! some tests still pass `--forced-reconnect`, a client-side fallback for brokers
//! that close with `amqp:connection:forced` instead.

mod common;
mod ha_cluster;

use std::time::{Duration, Instant};

use common::{run_python, spawn_python, wait_until, ClientProcess, Json};
use ha_cluster::{
    connections, now, number, serial, settlements, signal, HaCluster, Member, BACKUP_TIMEOUT,
    HEARTBEAT,
};
use tandem_shards::client::{Client, ClientOptions};

/// How long a Proton HA client may run before it gives up (and prints its summary).
const CLIENT_TIMEOUT: &str = "60";

fn ha_send(urls: &str, queue: &str, count: usize, interval_ms: u32) -> ClientProcess {
    spawn_python(
        "ha_send.py",
        &[
            "--urls",
            urls,
            "--address",
            queue,
            "--count",
            &count.to_string(),
            "--interval-ms",
            &interval_ms.to_string(),
            "--timeout",
            CLIENT_TIMEOUT,
            "--forced-reconnect",
        ],
    )
}

fn ha_recv(urls: &str, queue: &str, expect: usize) -> ClientProcess {
    spawn_python(
        "ha_recv.py",
        &[
            "--urls",
            urls,
            "--address",
            queue,
            "--expect",
            &expect.to_string(),
            "--timeout",
            CLIENT_TIMEOUT,
            "--forced-reconnect",
        ],
    )
}

/// Sends `count` messages to `member` with the plain Proton sender.
fn send(cluster: &HaCluster, member: Member, queue: &str, count: usize) {
    run_python(
        "send.py",
        &[
            "--url",
            &cluster.url(member),
            "--address",
            queue,
            "--count",
            &count.to_string(),
        ],
    )
    .assert_success();
}

/// Waits until the sender has seen at least `count` settlements.
fn wait_for_settled(sender: &mut ClientProcess, count: usize) {
    let what = format!("{count} settlements");
    sender.wait_for(Duration::from_secs(30), &what, |lines| {
        lines.iter().filter(|l| l.has("settled")).count() >= count
    });
}

/// When one fail-over happened, as seen by the test and by the publisher.
struct FailOver {
    killed: Member,
    promoted: Member,
    killed_at: f64,
    promote_returned_at: f64,
    /// The publisher's first connection opened after the kill.
    reconnected_at: f64,
    /// The first settlement on that connection.
    first_settled_at: f64,
}

impl FailOver {
    fn report(&self, cluster: &HaCluster) -> String {
        format!(
            "kill -9 of {} to first settlement on {}: {:.3} s (promote returned after {:.3} s, \
             publisher reconnected after {:.3} s)",
            cluster.url(self.killed),
            cluster.url(self.promoted),
            self.first_settled_at - self.killed_at,
            self.promote_returned_at - self.killed_at,
            self.reconnected_at - self.killed_at,
        )
    }
}

/// Kills the primary `from`, promotes `to` (which must say it is ready), and
/// waits for the publisher's first settlement on its new connection.
fn fail_over(
    cluster: &mut HaCluster,
    sender: &ClientProcess,
    from: Member,
    to: Member,
) -> FailOver {
    let killed_at = now();
    cluster.kill(from);
    assert!(
        cluster.has_status(to, "ready"),
        "{} is not a ready backup: {}",
        cluster.url(to),
        cluster.describe()
    );
    cluster.promote_ok(to);
    let promote_returned_at = now();
    // The first settlement after a connection opened after the kill (the old
    // primary's last settlements may still be read just after the kill), and the
    // last connection opened before it (earlier ones may have met a backup).
    let mut seen = None;
    let settled = wait_until(Duration::from_secs(30), || {
        let opened: Vec<f64> = connections(sender)
            .into_iter()
            .map(|(_, t)| t)
            .filter(|&t| t > killed_at)
            .collect();
        seen = opened.first().and_then(|&first_open| {
            let settled_at = settlements(sender)
                .into_iter()
                .map(|(_, t)| t)
                .find(|&t| t > first_open)?;
            let reconnected_at = opened.iter().copied().rfind(|&t| t < settled_at)?;
            Some((reconnected_at, settled_at))
        });
        seen.is_some()
    });
    assert!(
        settled,
        "no settlement after killing {}: {}\n{:?}",
        cluster.url(from),
        cluster.describe(),
        sender.lines().iter().rev().take(5).collect::<Vec<_>>()
    );
    let (reconnected_at, first_settled_at) = seen.expect("seen");
    FailOver {
        killed: from,
        promoted: to,
        killed_at,
        promote_returned_at,
        reconnected_at,
        first_settled_at,
    }
}

#[test]
fn failover_under_load_keeps_every_settled_message_through_two_failures() {
    let _serial = serial();
    const COUNT: usize = 3000;
    let mut cluster = HaCluster::start_with_primary(Some("all"), 0);
    cluster.config(0, &["add", "queue", "load"]);

    let receiver = ha_recv(&cluster.urls, "load", COUNT);
    let mut sender = ha_send(&cluster.urls, "load", COUNT, 3);

    wait_for_settled(&mut sender, 500);
    let first = fail_over(&mut cluster, &sender, 0, 1);
    eprintln!("fail-over 1: {}", first.report(&cluster));
    // The remaining backup follows the new primary before the next failure.
    cluster.wait_status(2, "ready");
    let settled = settlements(&sender).len();
    wait_for_settled(&mut sender, settled + 500);

    let second = fail_over(&mut cluster, &sender, 1, 2);
    eprintln!("fail-over 2: {}", second.report(&cluster));

    let sender_lines = {
        let out = sender.wait();
        out.assert_success();
        out.json_lines()
    };
    let received = receiver.wait();
    let summary = received.summary();
    let settled: Vec<u64> = sender_lines
        .iter()
        .filter_map(|l| l["settled"].as_u64())
        .collect();
    let missing: Vec<u64> = summary["missing"]
        .as_array()
        .unwrap_or_default()
        .iter()
        .filter_map(Json::as_u64)
        .collect();
    let settled_but_lost: Vec<&u64> = settled.iter().filter(|s| missing.contains(s)).collect();
    let sender_summary = sender_lines.last().expect("a summary");
    eprintln!(
        "failover load: {COUNT} messages, publisher resent {}, receiver got {} unique and {} duplicates",
        sender_summary["resent"], summary["received_unique"], summary["duplicates"]
    );
    assert!(
        settled_but_lost.is_empty(),
        "settled but never received: {settled_but_lost:?}\nreceiver: {summary}"
    );
    assert_eq!(settled.len(), COUNT, "publisher summary: {sender_summary}");
    received.assert_success();
    assert_eq!(
        summary["received_unique"].as_u64(),
        Some(COUNT as u64),
        "{summary}"
    );
    assert!(missing.is_empty(), "{summary}");
    // Fail-over means seconds here (short heartbeats, an immediate promotion).
    for f in [&first, &second] {
        assert!(
            f.first_settled_at - f.killed_at < 10.0,
            "{}",
            f.report(&cluster)
        );
    }
}

#[test]
fn a_stalled_backup_holds_settlements_for_two_heartbeats_then_rejoins() {
    let _serial = serial();
    const COUNT: usize = 60;
    let cluster = HaCluster::start_with_primary(Some("all"), 0);
    cluster.config(0, &["add", "queue", "stall"]);
    let mut sender = ha_send(&cluster.url(0), "stall", COUNT, 50);
    wait_for_settled(&mut sender, 10);

    let stopped_at = now();
    signal(cluster.pid(1), libc::SIGSTOP);
    let out = sender.wait();
    let primary_status = cluster.status(0);
    let other_backup = cluster.status(2);
    signal(cluster.pid(1), libc::SIGCONT);
    out.assert_success();

    // The longest pause between settlements after the stop is the stall.
    let mut times: Vec<f64> = out
        .json_lines()
        .iter()
        .filter(|l| l.has("settled"))
        .filter_map(|l| number(&l["t"]))
        .filter(|&t| t > stopped_at)
        .collect();
    times.insert(0, stopped_at);
    let stall = times
        .windows(2)
        .map(|w| w[1] - w[0])
        .fold(0.0_f64, f64::max);
    let two_heartbeats = 2.0 * HEARTBEAT.as_secs_f64();
    eprintln!(
        "stalled backup held settlements for {stall:.3} s (2 x heartbeat = {two_heartbeats} s)"
    );
    assert!(
        stall >= two_heartbeats - 0.5,
        "settlements paused only {stall:.3} s while a backup was stopped"
    );
    assert!(
        stall < two_heartbeats + 2.0,
        "settlements paused {stall:.3} s: the stopped backup was not dropped after 2 x heartbeat"
    );
    assert_eq!(primary_status, "active");
    assert_eq!(other_backup, "ready");

    // Resumed, the dropped backup rejoins and catches up.
    cluster.wait_status(1, "ready");
    cluster.wait_depth(1, "stall", COUNT as u64);
}

#[test]
fn a_recovering_primary_holds_settlements_until_a_missing_backup_times_out() {
    let _serial = serial();
    let mut cluster = HaCluster::start_with_primary(Some("all"), 0);
    cluster.config(0, &["add", "queue", "held"]);
    send(&cluster, 0, "held", 10);

    // The primary and one backup die; the other backup expects it back.
    cluster.kill(0);
    cluster.kill(2);
    assert!(cluster.has_status(1, "ready"), "{}", cluster.describe());
    let promote_called_at = now();
    cluster.promote_ok(1);
    let promote_returned_at = now();
    assert_eq!(cluster.status(1), "recovering");

    let sender = ha_send(&cluster.url(1), "held", 1, 0);
    // Clients are stalled, not refused: receiving works meanwhile.
    let received = run_python(
        "recv.py",
        &[
            "--url",
            &cluster.url(1),
            "--address",
            "held",
            "--count",
            "1",
            "--timeout",
            "10",
        ],
    );
    let received_at = now();
    received.assert_success();
    let out = sender.wait();
    out.assert_success();
    let settled_at = out
        .json_lines()
        .iter()
        .find(|l| l.has("settled"))
        .and_then(|l| number(&l["t"]))
        .expect("a settlement");

    let timeout = BACKUP_TIMEOUT.as_secs_f64();
    let held = settled_at - promote_called_at;
    eprintln!(
        "recovering primary held a publish {held:.3} s after promotion (ha-backup-timeout {timeout} s)"
    );
    assert!(
        held >= timeout,
        "settled {held:.3} s after promotion, before ha-backup-timeout ({timeout} s)"
    );
    assert!(
        settled_at - promote_returned_at < timeout + 2.0,
        "settled {held:.3} s after promotion: the missing backup was not dropped at ha-backup-timeout"
    );
    assert!(
        received_at < promote_called_at + timeout,
        "a receive on the recovering primary waited for the backup timeout"
    );
    cluster.wait_status(1, "active");
    assert_eq!(cluster.depth(1, "held"), Some(10));
}

#[test]
fn a_backup_restarted_after_failover_rejoins_and_holds_the_messages() {
    let _serial = serial();
    let mut cluster = HaCluster::start_with_primary(Some("all"), 0);
    cluster.config(0, &["add", "queue", "kept"]);
    send(&cluster, 0, "kept", 50);

    cluster.kill(0);
    assert!(cluster.has_status(1, "ready"), "{}", cluster.describe());
    cluster.promote_ok(1);
    cluster.wait_status(1, "active");
    cluster.wait_status(2, "ready");
    send(&cluster, 1, "kept", 50);

    // A backup killed and restarted on its port starts empty and catches up.
    cluster.kill(2);
    cluster.start_member(2);
    cluster.wait_status(2, "ready");
    cluster.wait_depth(2, "kept", 100);
    // So does the old primary, restarted as a backup of the new one.
    cluster.start_member(0);
    cluster.wait_status(0, "ready");
    cluster.wait_depth(0, "kept", 100);

    let all = ha_cluster::tool_ok("tandem-ha", &["-b", &cluster.url(1), "status", "--all"]);
    let mut statuses: Vec<&str> = all
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    statuses.sort_unstable();
    assert_eq!(statuses, ["active", "ready", "ready"], "{all}");
}

#[test]
fn a_backup_refuses_clients_with_connection_forced_and_admin_tools_read_it() {
    let _serial = serial();
    let cluster = HaCluster::start_with_primary(Some("all"), 0);
    cluster.config(0, &["add", "queue", "r"]);
    send(&cluster, 0, "r", 3);
    let backup = cluster.url(1);

    // A backup drops an ordinary client's connection before sending its own
    // open (Proton restarts its URL list after any open it receives, so a
    // close frame would keep it at the backup); our client reports the drop
    // as `amqp:connection:forced`.
    let err = Client::connect(&backup.parse().expect("url"), &ClientOptions::default())
        .err()
        .expect("a backup refuses clients");
    assert!(err.to_string().contains("amqp:connection:forced"), "{err}");

    // Qpid Proton cannot send there either, and keeps trying.
    let out = run_python(
        "ha_send.py",
        &[
            "--urls",
            &backup,
            "--address",
            "r",
            "--count",
            "1",
            "--timeout",
            "2",
        ],
    );
    assert!(!out.status.success(), "a backup took a message");
    assert_eq!(out.summary()["settled_unique"].as_u64(), Some(0));

    // Admin tools read the backup's replica.
    assert!(cluster.names(1, "queues").contains(&"r".to_owned()));
    assert_eq!(cluster.depth(1, "r"), Some(3));
    assert_eq!(cluster.status(1), "ready");
}

#[test]
fn a_stock_proton_client_whose_first_address_is_a_backup_reaches_the_primary() {
    let _serial = serial();
    // The last address is the primary; the first two are ready backups.
    let cluster = HaCluster::start_with_primary(Some("all"), 2);
    cluster.config(2, &["add", "queue", "stock"]);
    // No --forced-reconnect: Proton's own behaviour. A backup drops the
    // connection before its open, so Proton moves on at once (no heartbeat is
    // needed for that; the test keeps one for the failover part).
    let out = run_python(
        "ha_send.py",
        &[
            "--urls",
            &cluster.urls,
            "--address",
            "stock",
            "--count",
            "5",
            "--timeout",
            "10",
            "--heartbeat",
            "1",
        ],
    );
    out.assert_success();
}

/// Fills `queue` on `member` with `count` small messages over one connection.
fn fill(cluster: &HaCluster, member: Member, queue: &str, count: usize) {
    let url = cluster.url(member).parse().expect("url");
    let mut client = Client::connect(&url, &ClientOptions::default()).expect("connect");
    let link = client.sender(queue).expect("sender");
    let payload = tandem_shards::amqp::message::MessageBuilder {
        body: Some(tandem_shards::amqp::codec::Value::string("x")),
        ..Default::default()
    }
    .encode();
    let mut outcomes = 0;
    for _ in 0..count {
        client.send(link, &payload, false).expect("send");
        outcomes += client.take_outcomes().len();
    }
    let all = wait_until(Duration::from_secs(60), || {
        client.poll(Duration::from_millis(50)).expect("poll");
        outcomes += client.take_outcomes().len();
        outcomes == count
    });
    assert!(all, "{outcomes} of {count} settled");
    client.close().expect("close");
}

#[test]
fn promoting_a_catching_up_backup_is_refused() {
    let _serial = serial();
    const COUNT: usize = 200_000;
    let mut cluster = HaCluster::start_with_primary(Some("all"), 0);
    cluster.config(0, &["add", "queue", "deep"]);
    // Fill the primary alone, then start a fresh backup: it has a lot to catch up.
    cluster.kill(1);
    cluster.kill(2);
    let started = Instant::now();
    fill(&cluster, 0, "deep", COUNT);
    eprintln!("filled {COUNT} messages in {:?}", started.elapsed());
    cluster.start_member(1);

    let started = Instant::now();
    let mut statuses = Vec::new();
    let mut refusal = None;
    let reached_ready = wait_until(Duration::from_secs(60), || {
        let status = cluster.status(1);
        if statuses.last() != Some(&status) {
            statuses.push(status.clone());
        }
        if status == "catchup" && refusal.is_none() {
            let out = cluster.promote(1);
            let after = cluster.status(1);
            refusal = Some((out, after));
        }
        status == "ready"
    });
    eprintln!(
        "fresh backup: {statuses:?}, ready after {:?}",
        started.elapsed()
    );
    assert!(reached_ready, "statuses seen: {statuses:?}");
    let Some((out, after)) = refusal else {
        eprintln!("catch-up was too quick to observe; nothing to promote during it");
        return;
    };
    let text = ha_cluster::stderr(&out);
    assert!(
        !out.status.success(),
        "a catching-up backup was promoted (now {after}): {} {text}",
        ha_cluster::stdout(&out)
    );
    assert!(text.contains("catching up"), "{text}");
    assert!(
        after == "catchup" || after == "ready",
        "after the refusal: {after}"
    );
    cluster.wait_depth(1, "deep", COUNT as u64);
    assert_eq!(cluster.status(0), "active");
}
