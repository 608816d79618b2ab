//! HA roles with real brokers, the test acting as the resource manager: three
//! `tandemd --ha-cluster` processes start `joining`, refuse ordinary clients
//! with `amqp:connection:forced`, let admin tools read but not write, and one is
//! promoted by `tandem-ha --cluster-manager promote`. (Without `ha-replicate`,
//! backups replicate nothing; replication itself is tested in `e2e_ha_failover`.)

mod common;

use std::process::Command;
use std::time::Duration;

use common::clients::run_python;
use common::tools::{ha_member_args, status_is, stderr, stdout, tool};
use common::{free_port, wait_until, Broker};
use tandem_shards::amqp::codec::Value;
use tandem_shards::client::{Client, ClientOptions};

struct Cluster {
    brokers: Vec<Broker>,
    args: Vec<Vec<String>>,
}

impl Cluster {
    fn start(n: usize) -> Cluster {
        let args = ha_member_args(n, &["--worker-threads", "2"]);
        let brokers = args.iter().map(|a| Broker::start(&as_strs(a))).collect();
        Cluster { brokers, args }
    }

    /// Kills broker `i` and starts a fresh one on the same port.
    fn restart(&mut self, i: usize) {
        self.brokers[i].kill();
        let args = self.args[i].clone();
        // The old process is reaped by kill(); its port is free again.
        self.brokers[i] = Broker::start(&as_strs(&args));
    }

    fn url(&self, i: usize) -> String {
        self.brokers[i].url()
    }
}

fn as_strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn three_brokers_start_joining_and_the_promoted_one_becomes_active() {
    let cluster = Cluster::start(3);
    let all = tool("tandem-ha", &["-b", &cluster.url(0), "status", "--all"]);
    assert!(all.status.success(), "{}", stderr(&all));
    let lines: Vec<String> = stdout(&all).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines.iter().all(|l| l.ends_with(" joining")), "{lines:?}");

    let promoted = tool(
        "tandem-ha",
        &["-b", &cluster.url(0), "--cluster-manager", "promote"],
    );
    assert!(promoted.status.success(), "{}", stderr(&promoted));
    // First primary of an all-joining cluster, with no backups to wait for.
    let primary = tool(
        "tandem-ha",
        &["-b", &cluster.url(0), "status", "--expect=primary"],
    );
    assert!(
        primary.status.success(),
        "{} {}",
        stdout(&primary),
        stderr(&primary)
    );
    assert_eq!(stdout(&primary), "active");
    let is_primary = tool(
        "tandem-ha",
        &["-b", &cluster.url(0), "status", "--is-primary"],
    );
    assert!(is_primary.status.success());
    let backup = tool(
        "tandem-ha",
        &["-b", &cluster.url(1), "status", "--expect=primary"],
    );
    assert!(!backup.status.success(), "a joining broker is not primary");

    // The primary serves clients now.
    let sent = run_python(
        "send.py",
        &[
            "--url",
            &cluster.url(0),
            "--address",
            "ha-q",
            "--count",
            "3",
            "--timeout",
            "15",
        ],
    );
    sent.assert_success();
    assert_eq!(
        sent.summary().get("accepted").and_then(|v| v.as_u64()),
        Some(3)
    );

    let query = tool("tandem-ha", &["-b", &cluster.url(0), "query"]);
    let text = stdout(&query);
    assert!(text.contains("status:      active"), "{text}");
    assert!(text.contains("epoch:       1"), "{text}");
}

#[test]
fn a_backup_refuses_clients_with_connection_forced_and_advertises_the_cluster() {
    let cluster = Cluster::start(2);
    let url = cluster.url(1).parse().expect("url");
    let err = Client::connect(&url, &ClientOptions::default())
        .err()
        .expect("refused");
    let text = err.to_string();
    assert!(text.contains("amqp:connection:forced"), "{text}");
    // The broker says why in its log: the client gets no open to read it from.
    assert!(
        wait_until(Duration::from_secs(5), || cluster.brokers[1]
            .stderr()
            .contains("refusing client: backup broker")),
        "{}",
        cluster.brokers[1].stderr()
    );
    // Qpid Proton sees the connection dropped (it treats forced like a lost socket).
    let out = run_python(
        "send.py",
        &[
            "--url",
            &cluster.url(1),
            "--address",
            "q",
            "--count",
            "1",
            "--timeout",
            "10",
        ],
    );
    assert!(!out.status.success(), "a backup must not take messages");

    // An admin connection is let in, and sees the cluster's addresses.
    let opts = ClientOptions {
        properties: vec![("qpid.ha-admin".into(), Value::Bool(true))],
        ..Default::default()
    };
    let admin = Client::connect(&url, &opts).expect("admin connection");
    let list = admin
        .remote_properties
        .as_ref()
        .and_then(|p| p.map_get("failover-server-list"))
        .cloned();
    match list {
        Some(Value::List(servers)) => {
            assert_eq!(servers.len(), 2);
            let port = servers[1].map_get("port");
            assert_eq!(
                port,
                Some(&Value::Int(i32::from(cluster.brokers[1].port())))
            );
            assert_eq!(
                servers[1].map_get("network-host").and_then(Value::as_str),
                Some("127.0.0.1")
            );
        }
        other => panic!("no failover-server-list: {other:?}"),
    }
}

#[test]
fn admin_tools_read_a_backup_but_cannot_change_it() {
    let cluster = Cluster::start(2);
    let read = tool(
        "tandem-config",
        &["-b", &cluster.url(1), "--ha-admin", "queues"],
    );
    assert!(read.status.success(), "{}", stderr(&read));
    let write = tool(
        "tandem-config",
        &["-b", &cluster.url(1), "--ha-admin", "add", "queue", "x"],
    );
    assert!(!write.status.success());
    assert!(stderr(&write).contains("backup"), "{}", stderr(&write));
    // Without --ha-admin the tool is refused like any client.
    let refused = tool("tandem-config", &["-b", &cluster.url(1), "queues"]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("connection:forced"),
        "{}",
        stderr(&refused)
    );
}

#[test]
fn promote_is_refused_and_hidden_without_cluster_manager() {
    let cluster = Cluster::start(2);
    let refused = tool("tandem-ha", &["-b", &cluster.url(0), "promote"]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("--cluster-manager"),
        "{}",
        stderr(&refused)
    );
    let status = tool("tandem-ha", &["-b", &cluster.url(0), "status"]);
    assert_eq!(
        stdout(&status),
        "joining",
        "the refused promotion changed nothing"
    );

    let help = tool("tandem-ha", &["--help"]);
    assert!(!stdout(&help).contains("promote"), "{}", stdout(&help));
    let help = tool("tandem-ha", &["--cluster-manager", "--help"]);
    assert!(stdout(&help).contains("promote"), "{}", stdout(&help));
}

#[test]
fn ready_wait_gives_up_at_the_timeout_on_a_joining_broker() {
    let cluster = Cluster::start(2);
    let started = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_tandem-ha"))
        .args(["-b", &cluster.url(1), "--timeout", "1", "ready", "--wait"])
        .output()
        .expect("tandem-ha");
    assert!(!out.status.success());
    assert_eq!(stdout(&out), "joining");
    assert!(started.elapsed() >= Duration::from_secs(1));
    // A promoted broker is ready at once.
    tool(
        "tandem-ha",
        &["-b", &cluster.url(0), "--cluster-manager", "promote"],
    );
    assert!(wait_until(Duration::from_secs(10), || {
        tool("tandem-ha", &["-b", &cluster.url(0), "ready"])
            .status
            .success()
    }));
}

#[test]
fn a_restarted_joining_broker_refuses_promotion_while_ready_backups_exist() {
    let mut cluster = Cluster::start(3);
    tool(
        "tandem-ha",
        &["-b", &cluster.url(0), "--cluster-manager", "promote"],
    );
    assert!(wait_until(Duration::from_secs(15), || {
        status_is(&cluster.url(1), "ready") && status_is(&cluster.url(2), "ready")
    }));
    // The primary dies and comes back empty: it is joining, and its peers are
    // still ready backups (holding everything it had settled).
    cluster.restart(0);
    assert!(
        status_is(&cluster.url(1), "ready"),
        "a ready backup stays ready without a primary"
    );
    // Once it has heard from a ready peer, it must not become primary.
    let mut refused = String::new();
    let heard = wait_until(Duration::from_secs(10), || {
        let out = tool(
            "tandem-ha",
            &["-b", &cluster.url(0), "--cluster-manager", "promote"],
        );
        refused = stderr(&out);
        !out.status.success()
    });
    assert!(heard, "promotion of the restarted broker was never refused");
    assert!(refused.contains("ready"), "{refused}");
    assert!(status_is(&cluster.url(0), "joining"));
    // The resource manager promotes a ready backup instead; the restarted broker joins it.
    let promoted = tool(
        "tandem-ha",
        &["-b", &cluster.url(1), "--cluster-manager", "promote"],
    );
    assert!(promoted.status.success(), "{}", stderr(&promoted));
    assert!(wait_until(Duration::from_secs(15), || status_is(
        &cluster.url(0),
        "ready"
    )));
}

#[test]
fn backups_authenticate_their_replication_link_with_ha_credentials() {
    let dir = common::TempDir::new("ha-auth");
    let users = dir.join("users");
    std::fs::write(&users, "ha:secret\nalice:pw\n").expect("users file");
    let users = users.to_string_lossy().into_owned();
    let ports = [free_port(), free_port()];
    let url = format!("127.0.0.1:{},127.0.0.1:{}", ports[0], ports[1]);
    let start = |port: u16, creds: &[&str]| {
        let port = port.to_string();
        let mut args = vec![
            "--port",
            &port,
            "--auth",
            "yes",
            "--users-file",
            &users,
            "--ha-cluster",
            "yes",
            "--ha-brokers-url",
            &url,
            "--link-maintenance-interval",
            "0.2",
        ];
        args.extend_from_slice(creds);
        Broker::start(&args)
    };
    let primary = start(
        ports[0],
        &["--ha-username", "ha", "--ha-password", "secret"],
    );
    let backup = start(
        ports[1],
        &["--ha-username", "ha", "--ha-password", "secret"],
    );
    let admin = |b: &Broker| format!("ha/secret@{}", b.url());
    let promoted = tool(
        "tandem-ha",
        &["-b", &admin(&primary), "--cluster-manager", "promote"],
    );
    assert!(promoted.status.success(), "{}", stderr(&promoted));
    assert!(
        wait_until(Duration::from_secs(15), || status_is(
            &admin(&backup),
            "ready"
        )),
        "the backup authenticated with ha-username/ha-password and caught up"
    );

    // A broker with wrong credentials cannot replicate: it stays joining.
    drop(backup);
    let wrong = start(ports[1], &["--ha-username", "ha", "--ha-password", "nope"]);
    let url = admin(&wrong);
    let stayed = !wait_until(Duration::from_secs(2), || !status_is(&url, "joining"));
    assert!(stayed, "a backup with bad credentials must not join");
}

#[test]
fn admin_connections_on_a_backup_are_read_only() {
    let cluster = Cluster::start(2);
    tool(
        "tandem-ha",
        &["-b", &cluster.url(0), "--cluster-manager", "promote"],
    );
    assert!(wait_until(Duration::from_secs(15), || status_is(
        &cluster.url(1),
        "ready"
    )));
    let url = cluster.url(1).parse().expect("url");
    let opts = ClientOptions {
        properties: vec![("qpid.ha-admin".into(), Value::Bool(true))],
        ..Default::default()
    };
    let mut admin = Client::connect(&url, &opts).expect("admin connection");
    let err = admin
        .sender("orders")
        .expect_err("publishing on a backup is refused");
    assert!(err.to_string().contains("amqp:not-allowed"), "{err}");
    let err = admin
        .receiver("orders", 10)
        .expect_err("consuming on a backup is refused");
    assert!(err.to_string().contains("amqp:not-allowed"), "{err}");
    // Management reads (with a dynamic reply queue) still work.
    let read = tool(
        "tandem-config",
        &["-b", &cluster.url(1), "--ha-admin", "queues"],
    );
    assert!(read.status.success(), "{}", stderr(&read));
}

#[test]
fn an_invalid_qpid_replicate_node_property_is_refused_on_attach() {
    let broker = Broker::start(&[]);
    let url = broker.url().parse().expect("url");
    let mut client = Client::connect(&url, &ClientOptions::default()).expect("connect");
    let target = tandem_shards::amqp::performative::Target {
        address: Some("typo".into()),
        dynamic_node_properties: Some(Value::Map(vec![(
            Value::symbol("qpid.replicate"),
            Value::string("sometimes"),
        )])),
        ..Default::default()
    };
    let err = client.sender_to(target).expect_err("refused");
    assert!(err.to_string().contains("qpid.replicate"), "{err}");
}

#[test]
fn an_empty_transfer_is_rejected_not_queued() {
    let broker = Broker::start(&[]);
    let url = broker.url().parse().expect("url");
    let mut client = Client::connect(&url, &ClientOptions::default()).expect("connect");
    let link = client.sender("empties").expect("sender");
    let id = client.send(link, b"", false).expect("send");
    match client.outcome(id).expect("settled") {
        tandem_shards::amqp::performative::DeliveryState::Rejected(Some(e)) => {
            assert_eq!(e.condition, "amqp:decode-error")
        }
        other => panic!("an empty transfer must be rejected: {other:?}"),
    }
    let stat = Command::new(env!("CARGO_BIN_EXE_tandem-stat"))
        .args(["-b", &broker.url(), "-q", "--json"])
        .output()
        .expect("tandem-stat");
    let text = String::from_utf8_lossy(&stat.stdout);
    assert!(
        text.contains("\"name\":\"empties\",") && text.contains("\"depth\":0"),
        "{text}"
    );
}

#[test]
fn a_backup_catches_up_with_deletes_and_recreates_made_while_it_was_away() {
    let cluster = Cluster::start(2);
    tool(
        "tandem-ha",
        &["-b", &cluster.url(0), "--cluster-manager", "promote"],
    );
    let created = tool(
        "tandem-config",
        &[
            "-b",
            &cluster.url(0),
            "add",
            "queue",
            "gone",
            "--replicate",
            "all",
        ],
    );
    assert!(created.status.success(), "{}", stderr(&created));
    let q = [
        "add",
        "queue",
        "changed",
        "--replicate",
        "all",
        "--max-queue-count",
    ];
    let created = tool(
        "tandem-config",
        &[&["-b", &cluster.url(0)][..], &q[..], &["5"]].concat(),
    );
    assert!(created.status.success(), "{}", stderr(&created));
    let has_gone = |url: &str| {
        stdout(&tool(
            "tandem-config",
            &["-b", url, "--ha-admin", "queues", "--json"],
        ))
        .contains("\"name\":\"gone\"")
    };
    assert!(wait_until(Duration::from_secs(15), || {
        status_is(&cluster.url(1), "ready") && has_gone(&cluster.url(1))
    }));
    // The backup is away (stopped, keeping its state) until the primary drops it
    // for silence; meanwhile the queue is deleted on the primary.
    let pid = cluster.brokers[1].pid() as i32;
    // SAFETY: signalling a child process we started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let dropped = wait_until(Duration::from_secs(10), || {
        !stdout(&tool("tandem-ha", &["-b", &cluster.url(0), "query"])).contains("member:")
    });
    let deleted = tool(
        "tandem-config",
        &["-b", &cluster.url(0), "del", "queue", "gone"],
    );
    let recreated = tool(
        "tandem-config",
        &["-b", &cluster.url(0), "del", "queue", "changed"],
    )
    .status
    .success()
        && tool(
            "tandem-config",
            &[&["-b", &cluster.url(0)][..], &q[..], &["9"]].concat(),
        )
        .status
        .success();
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    assert!(dropped, "the primary never dropped the stopped backup");
    assert!(deleted.status.success(), "{}", stderr(&deleted));
    assert!(recreated, "re-creating 'changed' on the primary");
    assert!(
        wait_until(Duration::from_secs(15), || status_is(
            &cluster.url(1),
            "ready"
        ) && !has_gone(&cluster.url(1))),
        "the re-synchronised backup still has the deleted queue"
    );
    let rows = stdout(&tool(
        "tandem-config",
        &["-b", &cluster.url(1), "--ha-admin", "queues", "--json"],
    ));
    assert!(
        rows.contains("\"name\":\"changed\"") && rows.contains("\"max-queue-count\":9"),
        "the backup keeps the old settings of a queue re-created while it was away: {rows}"
    );
}

#[test]
fn a_backup_with_another_ha_replicate_says_so_and_does_not_join() {
    let mut args = ha_member_args(2, &["--worker-threads", "1"]);
    args[0].extend(["--ha-replicate".to_owned(), "all".to_owned()]);
    args[1].extend(["--ha-replicate".to_owned(), "configuration".to_owned()]);
    let primary = Broker::start(&as_strs(&args[0]));
    let backup = Broker::start(&as_strs(&args[1]));
    let promoted = tool(
        "tandem-ha",
        &["-b", &primary.url(), "--cluster-manager", "promote"],
    );
    assert!(promoted.status.success(), "{}", stderr(&promoted));
    let said = wait_until(Duration::from_secs(10), || {
        backup.stderr().contains("ha-replicate differs")
    });
    assert!(said, "{}", backup.stderr());
    let why = backup.stderr();
    assert!(
        why.contains("this primary replicates 'all' by default") && why.contains("'configuration'"),
        "{why}"
    );
    // It stays joining while it tries again, and says it once.
    for _ in 0..3 {
        assert!(status_is(&backup.url(), "joining"), "{}", backup.stderr());
    }
    let why = backup.stderr();
    assert_eq!(why.matches("ha-replicate differs").count(), 1, "{why}");
}
