//! HA membership with real brokers: who a primary counts as a backup, and so
//! which backups its settlements wait for. A backup's replication link is a
//! receiver attached to `$ha.replication` on a connection whose open carries
//! `qpid.ha-backup`, with the backup's broker id, address and epoch as attach
//! properties; the primary must not let a second link that merely presents a
//! real backup's broker id take that backup's place, or drop it when that
//! second link goes away. If it does, the real backup still says `ready`, is
//! promotable after a `kill -9` of the primary, and has lost messages the
//! primary settled.
//!
//! The second link comes from `tests/clients/proton/fake_backup_link.py`, a
//! Proton client that attaches exactly as a backup's replication link does
//! (see `connect_replica` in `shards/src/runtime.rs` and `outbound_opened` in
//! `shards/src/broker/replica.rs`), waits for the answer and closes.

mod common;
mod ha_cluster;

use std::time::{Duration, Instant};

use common::{expected_bodies, run_python, wait_until, ClientOutput, Json};
use ha_cluster::{serial, tool_ok, HaCluster, Member};

const PRIMARY: Member = 0;
/// The backup whose broker id the second link presents, promoted at the end.
const VICTIM: Member = 1;
/// The other backup, left alone.
const BYSTANDER: Member = 2;

const QUEUE: &str = "membership";
/// Messages settled before the second link attaches, and after it closed.
const BEFORE: usize = 5;
const AFTER: usize = 20;

/// How long the primary may take to list the real backup as a ready member
/// again after the second link closed (a fix may make it reconnect and catch up).
const MEMBERSHIP_DEADLINE: Duration = Duration::from_secs(10);

/// How long the receiver on the promoted backup waits for one more message
/// before it gives up: they are all on the queue at promotion, or never.
const RECEIVE_IDLE_SECS: &str = "5";

/// `tandem-ha -b MEMBER query --json`: the broker's own HA attributes.
fn query(cluster: &HaCluster, i: Member) -> Json {
    let text = tool_ok("tandem-ha", &["-b", &cluster.url(i), "query", "--json"]);
    let parsed = Json::parse(&text).unwrap_or_else(|e| panic!("bad query JSON {text:?}: {e}"));
    parsed[0].clone()
}

/// `(broker-id, address, status)` of every member `attrs` (a query) lists.
fn members(attrs: &Json) -> Vec<(String, String, String)> {
    attrs["members"]
        .as_array()
        .unwrap_or_default()
        .iter()
        .map(|m| {
            let text = |k: &str| m[k].as_str().unwrap_or_default().to_owned();
            (text("broker-id"), text("address"), text("status"))
        })
        .collect()
}

/// The status under which the primary lists the member with `broker_id`.
fn member_status(attrs: &Json, broker_id: &str) -> Option<String> {
    members(attrs)
        .into_iter()
        .find(|(id, _, _)| id == broker_id)
        .map(|(_, _, status)| status)
}

/// Polls until the primary lists `broker_id` as a ready member and member
/// `backup` says it is ready; the last membership seen if not within `deadline`.
fn wait_ready_member(
    cluster: &HaCluster,
    backup: Member,
    broker_id: &str,
    deadline: Duration,
) -> Result<(), String> {
    let mut seen = String::new();
    let ready = wait_until(deadline, || {
        let attrs = query(cluster, PRIMARY);
        let listed = member_status(&attrs, broker_id);
        let own = cluster.has_status(backup, "ready");
        seen = format!(
            "the primary lists {:?}; {} calls itself {}",
            members(&attrs),
            cluster.url(backup),
            if own { "ready" } else { "not ready" }
        );
        listed.as_deref() == Some("ready") && own
    });
    if ready {
        Ok(())
    } else {
        Err(seen)
    }
}

/// Runs `send.py` to the primary for `count` messages `{prefix}N`, all settled.
fn send(cluster: &HaCluster, prefix: &str, count: usize) {
    let out = run_python(
        "send.py",
        &[
            "--url",
            &cluster.url(PRIMARY),
            "--address",
            QUEUE,
            "--count",
            &count.to_string(),
            "--prefix",
            prefix,
            "--timeout",
            "20",
        ],
    );
    out.assert_success();
    let summary = out.summary();
    assert_eq!(
        summary["accepted"].as_u64(),
        Some(count as u64),
        "the primary did not accept every message: {summary}"
    );
}

/// Runs the second replication link against the primary, presenting
/// `broker_id`, `address` and `epoch`; returns once the primary answered the
/// attach (either way) and the link and connection are closed.
fn second_link(cluster: &HaCluster, broker_id: &str, address: &str, epoch: u64) -> ClientOutput {
    let out = run_python(
        "fake_backup_link.py",
        &[
            "--url",
            &cluster.url(PRIMARY),
            "--broker-id",
            broker_id,
            "--ha-address",
            address,
            "--epoch",
            &epoch.to_string(),
            "--timeout",
            "20",
        ],
    );
    out.assert_success();
    out
}

#[test]
fn a_second_link_with_a_backups_id_does_not_unguard_the_real_backup() {
    let _serial = serial();
    let started = Instant::now();
    let mut cluster = HaCluster::start_with_primary(Some("all"), PRIMARY);
    cluster.config(PRIMARY, &["add", "queue", QUEUE]);
    send(&cluster, "before-", BEFORE);
    cluster.wait_depth(VICTIM, QUEUE, BEFORE as u64);
    cluster.wait_depth(BYSTANDER, QUEUE, BEFORE as u64);

    let victim = query(&cluster, VICTIM);
    let victim_id = victim["broker-id"]
        .as_str()
        .unwrap_or_else(|| panic!("no broker-id in {victim}"))
        .to_owned();
    let victim_address = cluster.url(VICTIM);
    if let Err(seen) = wait_ready_member(&cluster, VICTIM, &victim_id, MEMBERSHIP_DEADLINE) {
        panic!("before the test, the primary does not list {victim_id} as ready: {seen}");
    }
    let epoch = query(&cluster, PRIMARY)["epoch"]
        .as_u64()
        .expect("the primary's epoch");

    // A second replication link presenting the real backup's broker id (and
    // address, and the primary's epoch) attaches, is answered, and closes.
    let link = second_link(&cluster, &victim_id, &victim_address, epoch);
    let link_summary = link.summary();
    eprintln!(
        "second link presenting {victim_id} ({victim_address}, epoch {epoch}): {}",
        link.stdout().replace('\n', " | ")
    );
    assert_eq!(
        link_summary["answered"].as_bool(),
        Some(true),
        "the primary never answered the second link's attach: {link_summary}"
    );

    let mut problems = Vec::new();
    if let Err(seen) = wait_ready_member(&cluster, VICTIM, &victim_id, MEMBERSHIP_DEADLINE) {
        let problem = format!(
            "after a second replication link presenting the broker id {victim_id} of the \
             backup {victim_address} attached (answered: {link_summary}) and closed, the \
             primary did not list that backup as a ready member within \
             {MEMBERSHIP_DEADLINE:?}: {seen}"
        );
        eprintln!("PROBLEM: {problem}");
        problems.push(problem);
    }

    // Whatever the membership says: every message the primary settles from now
    // on must be on the real backup when it is promoted after a kill -9.
    send(&cluster, "after-", AFTER);
    let victim_depth = cluster.depth(VICTIM, QUEUE);
    let bystander_depth = cluster.depth(BYSTANDER, QUEUE);
    cluster.kill(PRIMARY);
    assert!(
        cluster.has_status(VICTIM, "ready"),
        "{victim_address} is not a ready backup after the primary's kill -9: {}",
        cluster.describe()
    );
    cluster.promote_ok(VICTIM);
    let total = BEFORE + AFTER;
    let received = run_python(
        "recv.py",
        &[
            "--url",
            &victim_address,
            "--address",
            QUEUE,
            "--count",
            &total.to_string(),
            "--idle-exit",
            RECEIVE_IDLE_SECS,
            "--timeout",
            "30",
        ],
    );
    received.assert_success();
    let got = received.bodies();
    let mut expected = expected_bodies("before-", BEFORE);
    expected.extend(expected_bodies("after-", AFTER));
    let missing: Vec<&String> = expected.iter().filter(|b| !got.contains(b)).collect();
    if !missing.is_empty() {
        problems.push(format!(
            "{} of {total} messages the primary had settled are lost: after the kill -9 of the \
             primary, the promoted backup {victim_address} served {} and not {missing:?} \
             (depth of {QUEUE} just before the kill: {victim_depth:?} on {victim_address}, \
             {bystander_depth:?} on the other backup {})",
            missing.len(),
            got.len(),
            cluster.url(BYSTANDER)
        ));
    }
    eprintln!("test ran {:.1} s", started.elapsed().as_secs_f64());
    assert!(
        problems.is_empty(),
        "a second link presenting a real backup's broker id unguarded that backup:\n- {}\n{}",
        problems.join("\n- "),
        cluster.describe()
    );
}
