//! More of qpidd's HA suite with real brokers: backups joining at different
//! times all get every message (sync), a new primary with no queues still goes
//! active (empty backup failover), temporary and auto-delete queues stay local,
//! and every broker reports the membership (broker info).

mod common;

use std::time::Duration;

use common::clients::{run_python, spawn_python};
use common::tools::{ha_member_args, status_is, stdout, tool};
use common::{wait_until, Broker};

/// Three cluster members' arguments (started on demand).
struct Members {
    args: Vec<Vec<String>>,
}

impl Members {
    fn new(n: usize, replicate: &str) -> Members {
        let args = ha_member_args(n, &["--ha-replicate", replicate]);
        Members { args }
    }

    fn start(&self, i: usize) -> Broker {
        let args: Vec<&str> = self.args[i].iter().map(String::as_str).collect();
        Broker::start(&args)
    }
}

/// Promotes `b` as soon as it lets itself be (it may still be probing its peers).
fn promote_when_possible(b: &Broker) {
    let promoted = wait_until(Duration::from_secs(10), || {
        tool(
            "tandem-ha",
            &["-b", &b.url(), "--cluster-manager", "promote"],
        )
        .status
        .success()
    });
    assert!(promoted, "{} could not be promoted", b.url());
}

/// Waits until every one of `backups` is ready.
fn wait_ready(backups: &[Broker]) {
    let ready = wait_until(Duration::from_secs(15), || {
        backups.iter().all(|b| status_is(&b.url(), "ready"))
    });
    assert!(ready, "backups not ready");
}

fn promote(b: &Broker) {
    let out = tool(
        "tandem-ha",
        &["-b", &b.url(), "--cluster-manager", "promote"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn send(b: &Broker, queue: &str, count: usize, prefix: &str) {
    let count = count.to_string();
    run_python(
        "send.py",
        &[
            "--url",
            &b.url(),
            "--address",
            queue,
            "--count",
            &count,
            "--prefix",
            prefix,
            "--timeout",
            "20",
        ],
    )
    .assert_success();
}

/// The depth of `queue` on broker `b` (admin connection, works on backups).
fn depth(b: &Broker, queue: &str) -> Option<u64> {
    let rows = stdout(&tool(
        "tandem-stat",
        &["-b", &b.url(), "--ha-admin", "-q", "--json"],
    ));
    let at = rows.find(&format!("\"name\":\"{queue}\""))?;
    let rest = &rows[at..];
    let d = rest.find("\"depth\":")? + "\"depth\":".len();
    rest[d..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[test]
fn backups_joining_before_between_and_after_sends_all_get_every_message() {
    let members = Members::new(3, "all");
    let primary = members.start(0);
    promote_when_possible(&primary);
    send(&primary, "sync", 10, "before-");
    let b1 = members.start(1);
    assert!(wait_until(Duration::from_secs(15), || status_is(
        &b1.url(),
        "ready"
    )));
    send(&primary, "sync", 10, "between-");
    let b2 = members.start(2);
    assert!(wait_until(Duration::from_secs(15), || status_is(
        &b2.url(),
        "ready"
    )));
    send(&primary, "sync", 10, "after-");
    for b in [&b1, &b2] {
        assert!(
            wait_until(Duration::from_secs(10), || depth(b, "sync") == Some(30)),
            "backup {} holds {:?} of 30",
            b.url(),
            depth(b, "sync")
        );
    }
}

#[test]
fn a_new_primary_without_queues_still_goes_active() {
    let members = Members::new(3, "all");
    let mut brokers: Vec<Broker> = (0..3).map(|i| members.start(i)).collect();
    promote_when_possible(&brokers[0]);
    wait_ready(&brokers[1..]);
    brokers[0].kill();
    promote(&brokers[1]);
    assert!(
        wait_until(Duration::from_secs(15), || status_is(
            &brokers[1].url(),
            "active"
        ) && status_is(
            &brokers[2].url(),
            "ready"
        )),
        "an empty new primary went active with its backup ready"
    );
}

#[test]
fn temporary_and_auto_delete_queues_are_not_replicated() {
    let members = Members::new(2, "all");
    let primary = members.start(0);
    let backup = members.start(1);
    promote_when_possible(&primary);
    assert!(wait_until(Duration::from_secs(15), || status_is(
        &backup.url(),
        "ready"
    )));
    // A subscription to amq.topic makes an auto-delete queue on the primary.
    let url = primary.url();
    let mut subscriber = spawn_python(
        "recv.py",
        &[
            "--url",
            &url,
            "--address",
            "amq.topic",
            "--topic-filter",
            "#",
            "--count",
            "1",
            "--timeout",
            "30",
        ],
    );
    subscriber.wait_ready();
    let queues = |b: &Broker| {
        stdout(&tool(
            "tandem-stat",
            &["-b", &b.url(), "--ha-admin", "-q", "--json"],
        ))
    };
    // The primary has the subscription queue with its consumer...
    assert!(wait_until(Duration::from_secs(10), || queues(&primary)
        .contains("\"consumers\":1,\"redeliveries\"")
        && queues(&primary).contains("\"auto-delete\":true")));
    // ...while a durable-style queue replicates and the subscription does not.
    tool(
        "tandem-config",
        &["-b", &primary.url(), "add", "queue", "kept"],
    );
    assert!(wait_until(Duration::from_secs(10), || queues(&backup)
        .contains("\"name\":\"kept\"")));
    // The backup's only auto-delete queue is the reply queue of the very tool
    // that lists it (earlier tools' reply queues go when those tools close).
    let only_own = wait_until(Duration::from_secs(10), || {
        queues(&backup).matches("\"auto-delete\":true").count() == 1
    });
    assert!(only_own, "{}", queues(&backup));
    drop(subscriber);
}

#[test]
fn every_broker_reports_the_membership_and_epoch() {
    let members = Members::new(3, "none");
    let brokers: Vec<Broker> = (0..3).map(|i| members.start(i)).collect();
    promote_when_possible(&brokers[0]);
    wait_ready(&brokers[1..]);
    for b in &brokers {
        let q = stdout(&tool("tandem-ha", &["-b", &b.url(), "query"]));
        assert!(q.contains("epoch:       1"), "{q}");
        let members: Vec<&str> = q.lines().filter(|l| l.starts_with("member:")).collect();
        assert_eq!(members.len(), 2, "{q}");
        assert!(members.iter().all(|m| m.contains(" ready ")), "{q}");
    }
}
