//! Queue replication between brokers that are not one cluster (`tandem-ha
//! replicate`, `tandem-config add queue --start-replica`), with real
//! `tandemd` processes and Qpid Proton clients: a stand-alone replica
//! follows messages and dequeues, catches up after a restart, refuses local
//! sends (on a link, one attached before it became a replica, and through the
//! anonymous relay) and consumes, and becomes an ordinary queue on `stop-replicate`;
//! bad commands say what is wrong and change nothing. A replica of a
//! cluster follows its primary through fail-over, and a replica on a
//! cluster is re-established by its new primary.

mod common;
mod ha_cluster;

use std::time::Duration;

use common::tools::{passwd, stderr, stdout, tool};
use common::{
    run_python, settled_seqs, spawn_ha_send, wait_until, Broker, ClientOutput, Json, TempDir,
};
use ha_cluster::{serial, tool_ok as ok, HaCluster};

/// How long a replica may take to reach what the test waits for.
const DEADLINE: Duration = Duration::from_secs(30);

/// A stand-alone broker that replicates queues.
fn replicating(extra: &[&str]) -> Broker {
    let mut args = vec!["--ha-queue-replication", "yes", "--worker-threads", "2"];
    args.extend_from_slice(extra);
    Broker::start(&args)
}

/// Runs a tool that must fail; what it said on stderr.
fn fails(name: &str, args: &[&str]) -> String {
    let out = tool(name, args);
    assert!(
        !out.status.success(),
        "{name} {args:?} succeeded: {}",
        stdout(&out)
    );
    stderr(&out)
}

/// `queue`'s row in `tandem-config queues --json` on `url`.
fn queue_row(url: &str, queue: &str) -> Json {
    let text = ok("tandem-config", &["-b", url, "queues", "--json"]);
    Json::parse(&text)
        .ok()
        .and_then(|j| j.as_array().map(<[Json]>::to_vec))
        .unwrap_or_default()
        .into_iter()
        .find(|q| q["name"].as_str() == Some(queue))
        .unwrap_or_else(|| panic!("no queue {queue} on {url}: {text}"))
}

/// `queue` on `url` is a replica of `remote`, caught up and following.
fn assert_replica_ready(url: &str, queue: &str, remote: &str) {
    let row = queue_row(url, queue);
    assert_eq!(row["replica-state"].as_str(), Some("ready"), "{row:?}");
    assert_eq!(row["replica-of"].as_str(), Some(remote), "{row:?}");
}

fn depth(url: &str, queue: &str) -> Option<u64> {
    queue_row(url, queue)["depth"].as_u64()
}

/// Waits until `queue` on `url` holds `n` messages.
fn wait_depth(url: &str, queue: &str, n: u64) {
    let mut last = None;
    let reached = wait_until(DEADLINE, || {
        last = depth(url, queue);
        last == Some(n)
    });
    assert!(reached, "{queue} on {url} holds {last:?}, expected {n}");
}

/// Runs Proton's `script` for `count` messages of `queue` at `url` (with
/// `extra` flags), which must succeed.
fn proton(script: &str, url: &str, queue: &str, count: u64, extra: &[&str]) -> ClientOutput {
    let out = run_proton(script, url, queue, count, extra);
    out.assert_success();
    out
}

/// Runs Proton's `script` for `count` messages of `queue` at `url`.
fn run_proton(script: &str, url: &str, queue: &str, count: u64, extra: &[&str]) -> ClientOutput {
    let count = count.to_string();
    let mut args = vec![
        "--url",
        url,
        "--address",
        queue,
        "--count",
        &count,
        "--timeout",
        "20",
    ];
    args.extend_from_slice(extra);
    run_python(script, &args)
}

/// Proton: sends `count` durable messages `{prefix}{i}` to `queue` at
/// `url`, all of them settled.
fn send(url: &str, queue: &str, count: u64, prefix: &str) {
    let out = proton(
        "send.py",
        url,
        queue,
        count,
        &["--prefix", prefix, "--durable"],
    );
    assert_eq!(out.summary()["accepted"].as_u64(), Some(count));
}

/// Proton: receives `count` messages of `queue` at `url` (with `extra`
/// flags), which must all come.
fn receive(url: &str, queue: &str, count: u64, extra: &[&str]) -> Vec<String> {
    proton("recv.py", url, queue, count, extra).bodies()
}

/// Proton: consumes (accepts) `count` messages of `queue` at `url`.
fn consume(url: &str, queue: &str, count: u64) {
    receive(url, queue, count, &[]);
}

/// Proton: the bodies of every message of `queue` at `url`, in order
/// (browsed: nothing leaves the queue).
fn browse(url: &str, queue: &str) -> Vec<String> {
    match depth(url, queue).unwrap_or(0) {
        0 => Vec::new(),
        n => receive(url, queue, n, &["--browse"]),
    }
}

/// What a Proton client attaching to `queue` at `url` was told (it must fail).
fn refused(script: &str, url: &str, queue: &str, extra: &[&str]) -> String {
    let out = run_proton(script, url, queue, 1, extra);
    assert!(
        !out.success(),
        "{script} on replica {queue} succeeded: {}",
        out.stdout()
    );
    format!("{}{}", out.stdout(), out.stderr())
}

/// A Rust-client publisher on `url`: to `address`, or (`None`) on the
/// anonymous relay.
fn publisher(
    url: &str,
    address: Option<&str>,
) -> (
    tandem_shards::client::Client,
    tandem_shards::amqp::connection::LinkKey,
) {
    use tandem_shards::amqp::performative::Target;
    use tandem_shards::client::{Client, ClientOptions};
    let opts = ClientOptions {
        timeout: Some(Duration::from_secs(10)),
        ..Default::default()
    };
    let url = url.parse().expect("broker url");
    let mut client = Client::connect(&url, &opts).expect("connect");
    let link = client
        .sender_to(Target {
            address: address.map(str::to_owned),
            ..Default::default()
        })
        .expect("sender attached");
    (client, link)
}

/// A message to `orders` on `link` is rejected with `amqp:not-allowed`,
/// naming the replica.
fn assert_publish_refused(
    client: &mut tandem_shards::client::Client,
    link: tandem_shards::amqp::connection::LinkKey,
    route: &str,
) {
    use tandem_shards::amqp::message::MessageBuilder;
    use tandem_shards::amqp::performative::DeliveryState;
    let payload = MessageBuilder {
        to: Some("orders".into()),
        body: Some(tandem_shards::amqp::codec::Value::string("local")),
        ..Default::default()
    }
    .encode();
    let id = client.send(link, &payload, false).expect("sent");
    match client.outcome(id) {
        Ok(DeliveryState::Rejected(Some(e))) => assert!(
            e.condition == "amqp:not-allowed"
                && e.description
                    .as_deref()
                    .is_some_and(|d| d.contains("is a replica of")),
            "{route}: {e:?}"
        ),
        other => panic!("{route}: a send to a replica was not refused: {other:?}"),
    }
}

#[test]
fn a_stand_alone_replica_follows_its_queue_and_catches_up_after_a_restart() {
    let original = replicating(&[]);
    let replica = replicating(&[]);
    let (o, r) = (original.url(), replica.url());
    ok(
        "tandem-config",
        &["-b", &o, "add", "queue", "orders", "--durable"],
    );
    ok(
        "tandem-config",
        &["-b", &r, "add", "queue", "orders", "--durable"],
    );
    // A queue with messages of its own cannot become a replica (they are
    // not the original's).
    send(&r, "orders", 3, "local");
    let said = fails("tandem-ha", &["-b", &r, "replicate", "orders", &o]);
    assert!(said.contains("holds 3 messages"), "{said}");
    consume(&r, "orders", 3);
    // Nor can one an exchange routes to.
    ok(
        "tandem-config",
        &["-b", &r, "bind", "amq.direct", "orders", "k"],
    );
    let said = fails("tandem-ha", &["-b", &r, "replicate", "orders", &o]);
    assert!(said.contains("bound to exchange 'amq.direct'"), "{said}");
    ok(
        "tandem-config",
        &["-b", &r, "unbind", "amq.direct", "orders", "k"],
    );
    // A consumer attached before the queue becomes a replica is ended then.
    let args = [
        "--url",
        r.as_str(),
        "--address",
        "orders",
        "--count",
        "1",
        "--timeout",
        "20",
    ];
    let mut early = common::spawn_python("recv.py", &args);
    early.wait_ready();
    // So is a publisher attached before (the queue's owner refuses what it
    // sends afterwards, whatever link it came on).
    let (mut early_sender, early_link) = publisher(&r, Some("orders"));
    // 003's spelling: REMOTE first.
    let said = ok("tandem-ha", &["-b", &r, "replicate", &o, "orders"]);
    assert!(said.contains("replicates"), "{said}");

    let ended = early.wait();
    assert!(!ended.success(), "{}", ended.stdout());
    let told = format!("{}{}", ended.stdout(), ended.stderr());
    assert!(told.contains("is a replica of"), "{told}");

    // Messages and dequeues follow, at the original's positions.
    send(&o, "orders", 400, "a");
    wait_depth(&r, "orders", 400);
    consume(&o, "orders", 150);
    wait_depth(&r, "orders", 250);
    assert_eq!(browse(&r, "orders"), browse(&o, "orders"));
    assert_replica_ready(&r, "orders", &o);
    assert_eq!(
        queue_row(&r, "orders")["last-position"],
        queue_row(&o, "orders")["last-position"]
    );

    // A replica takes messages only from its original: local sends and
    // consumes are refused, browsing is not.
    let send_said = refused("send.py", &r, "orders", &[]);
    assert!(
        send_said.contains("amqp:not-allowed") && send_said.contains("is a replica of"),
        "{send_said}"
    );
    assert_publish_refused(&mut early_sender, early_link, "a publisher attached before");
    let (mut relay, relay_link) = publisher(&r, None);
    assert_publish_refused(&mut relay, relay_link, "the anonymous relay");
    let consume_said = refused("recv.py", &r, "orders", &[]);
    assert!(consume_said.contains("amqp:not-allowed"), "{consume_said}");
    // Nor may an exchange route others to it.
    let said = fails(
        "tandem-config",
        &["-b", &r, "bind", "amq.direct", "orders", "k"],
    );
    assert!(said.contains("cannot be bound"), "{said}");

    // Stopped (its broker too) while the original changes, restarted: the
    // replica resumes where it was, its configuration kept.
    let mut replica = replica;
    replica.terminate();
    send(&o, "orders", 300, "b");
    consume(&o, "orders", 100);
    let replica = replica.restart();
    let r = replica.url();
    wait_depth(&r, "orders", 450);
    assert_eq!(browse(&r, "orders"), browse(&o, "orders"));
    let log = replica.stderr();
    assert!(
        log.contains("queue 'orders' caught up incrementally: kept"),
        "the restarted replica resyncs incrementally: {log}"
    );
    let row = queue_row(&r, "orders");
    assert_eq!(row["replica-state"].as_str(), Some("ready"), "{row:?}");

    // Stopping is explicit: an ordinary local queue again, which local
    // clients may use and the original no longer changes.
    let said = ok("tandem-ha", &["-b", &r, "stop-replicate", "orders"]);
    assert!(said.contains("ordinary queue"), "{said}");
    send(&r, "orders", 5, "local");
    wait_depth(&r, "orders", 455);
    consume(&o, "orders", 50);
    send(&o, "orders", 1, "late");
    wait_depth(&o, "orders", 401);
    consume(&r, "orders", 455);
    assert_eq!(depth(&r, "orders"), Some(0));
    assert_eq!(queue_row(&r, "orders")["replica-of"], Json::Null);
}

#[test]
fn add_queue_start_replica_creates_and_starts_in_one_step() {
    let original = replicating(&[]);
    // (And lets local consumers take from replicas, as qpidd does.)
    let replica = replicating(&["--ha-replica-consumers", "yes"]);
    let (o, r) = (original.url(), replica.url());
    ok("tandem-config", &["-b", &o, "add", "queue", "events"]);
    send(&o, "events", 50, "e");
    ok(
        "tandem-config",
        &["-b", &r, "add", "queue", "events", "--start-replica", &o],
    );
    wait_depth(&r, "events", 50);
    assert_eq!(browse(&r, "events"), browse(&o, "events"));
    consume(&r, "events", 10);
    assert_eq!(depth(&r, "events"), Some(40));
    let said = refused("send.py", &r, "events", &[]);
    assert!(said.contains("amqp:not-allowed"), "{said}");
    // The original's next dequeues are no-ops for what is gone here.
    consume(&o, "events", 20);
    wait_depth(&r, "events", 30);
    // --start-replica creates: an existing queue is left alone.
    let said = fails(
        "tandem-config",
        &["-b", &r, "add", "queue", "events", "--start-replica", &o],
    );
    assert!(said.contains("exists already"), "{said}");
    assert_eq!(depth(&r, "events"), Some(30));
    // A missing remote queue: the new queue is not left behind.
    let said = fails(
        "tandem-config",
        &["-b", &r, "add", "queue", "nothing", "--start-replica", &o],
    );
    assert!(said.contains("no queue 'nothing'"), "{said}");
    let text = ok("tandem-config", &["-b", &r, "queues", "--json"]);
    assert!(!text.contains("\"nothing\""), "{text}");
}

#[test]
fn bad_replicate_commands_say_what_is_wrong_and_change_nothing() {
    let dir = TempDir::new("replica-bad");
    let users = dir.join("users");
    passwd(&users, "rep", "secret");
    passwd(&users, "adm", "secret");
    let acl = dir.join("broker.acl");
    // `rep` may connect and consume `shared`, nothing else: all a replica needs.
    std::fs::write(
        &acl,
        "acl allow rep access connection\nacl allow rep consume queue name=shared\nacl deny rep all\nacl allow adm all\nacl deny all all\n",
    )
    .expect("acl file");
    let users_arg = users.to_str().expect("path");
    let acl_arg = acl.to_str().expect("path");
    let original = replicating(&[
        "--auth",
        "yes",
        "--users-file",
        users_arg,
        "--acl-file",
        acl_arg,
    ]);
    let plain = Broker::start(&["--worker-threads", "2"]);
    let replica = replicating(&[]);
    let o = format!("rep/secret@127.0.0.1:{}", original.port());
    let admin = format!("adm/secret@127.0.0.1:{}", original.port());
    let r = replica.url();
    ok("tandem-config", &["-b", &admin, "add", "queue", "shared"]);
    ok("tandem-config", &["-b", &admin, "add", "queue", "private"]);
    ok(
        "tandem-config",
        &["-b", &plain.url(), "add", "queue", "shared"],
    );
    for q in ["shared", "absent", "solo", "private"] {
        ok("tandem-config", &["-b", &r, "add", "queue", q]);
    }
    let unreachable = format!("127.0.0.1:{}", common::free_port());
    let wrong = format!("rep/wrong@127.0.0.1:{}", original.port());
    let cases: [(&str, &str, &str); 5] = [
        ("absent", admin.as_str(), "no queue 'absent'"),
        ("private", o.as_str(), "may not consume queue 'private'"),
        ("shared", unreachable.as_str(), "cannot connect"),
        ("shared", wrong.as_str(), "amqp:unauthorized-access"),
        ("solo", &plain.url(), "ha-queue-replication = yes"),
    ];
    for (queue, remote, expected) in cases {
        let said = fails("tandem-ha", &["-b", &r, "replicate", queue, remote]);
        assert!(said.contains(expected), "{queue} from {remote}: {said}");
        assert!(said.contains("left as it was"), "{said}");
        assert_eq!(queue_row(&r, queue)["replica-of"], Json::Null);
    }
    // Which argument is the remote must be clear.
    let said = fails("tandem-ha", &["-b", &r, "replicate", "shared", "solo"]);
    assert!(said.contains("neither"), "{said}");
    let said = fails("tandem-ha", &["-b", &r, "replicate", "missing-here", &o]);
    assert!(said.contains("not found"), "{said}");
    // The broker is unaffected: its queues serve local clients.
    send(&r, "solo", 3, "s");
    consume(&r, "solo", 3);
    // With the ACL, consuming the one queue is all a replica needs; the
    // credentials in REMOTE are the ones used.
    // (Proton spells credentials user:password@.)
    let proton_admin = format!("adm:secret@127.0.0.1:{}", original.port());
    send(&proton_admin, "shared", 20, "x");
    ok("tandem-ha", &["-b", &r, "replicate", "shared", &o]);
    wait_depth(&r, "shared", 20);
    assert!(
        !replica.stderr().contains("panicked") && !original.stderr().contains("panicked"),
        "{}",
        replica.stderr()
    );
}

/// The sequence numbers in `ha_send.py` bodies (`seq-N`), in order.
fn seqs(bodies: &[String]) -> Vec<u64> {
    bodies
        .iter()
        .filter_map(|b| b.strip_prefix("seq-")?.parse().ok())
        .collect()
}

#[test]
fn a_replica_of_a_cluster_follows_its_primary_through_fail_over() {
    let _serial = serial();
    let mut cluster = HaCluster::start_with_primary(Some("all"), 0);
    cluster.config(0, &["add", "queue", "ledger", "--durable"]);
    let replica = replicating(&[]);
    let r = replica.url();
    ok(
        "tandem-config",
        &["-b", &r, "add", "queue", "ledger", "--durable"],
    );
    // The whole cluster's address list: the feed finds the primary.
    ok(
        "tandem-ha",
        &["-b", &r, "replicate", "ledger", &cluster.urls],
    );

    let mut sender = spawn_ha_send(&cluster.urls, "ledger", 3000, "60");
    sender.wait_for_settlements(800, DEADLINE);
    cluster.kill(0);
    cluster.promote_ok(1);
    let sent = sender.wait();
    sent.assert_success();
    let settled = settled_seqs(&sent.json_lines());
    assert_eq!(settled.len(), 3000, "{}", sent.stdout());

    // The replica holds exactly what the new primary holds, in order: every
    // settled message, and the duplicates a fail-over may leave (sent again
    // unsettled), at the same positions.
    let p = cluster.url(1);
    let total = depth(&p, "ledger").unwrap_or(0);
    wait_depth(&r, "ledger", total);
    let on_primary = browse(&p, "ledger");
    let on_replica = browse(&r, "ledger");
    assert_eq!(on_replica.len(), on_primary.len());
    assert!(
        on_replica == on_primary,
        "the replica differs from the new primary"
    );
    let held: std::collections::BTreeSet<u64> = seqs(&on_replica).into_iter().collect();
    let lost: Vec<u64> = settled.difference(&held).copied().collect();
    common::assert_none_lost(&lost, settled.len(), "on the replica of the cluster");
    assert_eq!(
        queue_row(&r, "ledger")["last-position"],
        queue_row(&p, "ledger")["last-position"]
    );
    let row = queue_row(&r, "ledger");
    assert_eq!(row["replica-state"].as_str(), Some("ready"), "{row:?}");
    assert_eq!(row["replica-address"].as_str(), Some(p.as_str()), "{row:?}");
}

#[test]
fn a_replica_on_a_cluster_is_re_established_by_its_new_primary() {
    let _serial = serial();
    let original = replicating(&[]);
    let o = original.url();
    ok(
        "tandem-config",
        &["-b", &o, "add", "queue", "feed", "--durable"],
    );
    send(&o, "feed", 300, "a");
    let mut cluster = HaCluster::start_with_primary(Some("all"), 0);
    // Created and started on the cluster's primary in one step; its backups
    // get the replica's configuration and messages through the cluster.
    cluster.config(
        0,
        &["add", "queue", "feed", "--durable", "--start-replica", &o],
    );
    cluster.wait_depth(0, "feed", 300);
    cluster.wait_depth(1, "feed", 300);
    consume(&o, "feed", 100);
    cluster.wait_depth(1, "feed", 200);

    // The primary dies; the new one starts the replica again by itself
    // (qpidd needs a hook script for this) and catches up incrementally.
    cluster.kill(0);
    send(&o, "feed", 250, "b");
    cluster.promote_ok(1);
    let p = cluster.url(1);
    wait_depth(&p, "feed", 450);
    consume(&o, "feed", 50);
    wait_depth(&p, "feed", 400);
    assert_eq!(browse(&p, "feed"), browse(&o, "feed"));
    assert_replica_ready(&p, "feed", &o);
    let log = cluster.log(1);
    assert!(log.contains("queue 'feed' replicates"), "{log}");
    assert!(
        log.contains("queue 'feed' caught up incrementally"),
        "the new primary resumes from what the cluster replicated: {log}"
    );
    // The backup that remains gets it too.
    cluster.wait_depth(2, "feed", 400);
}
