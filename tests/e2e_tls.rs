//! TLS on the broker's ssl-port, with independent clients: Qpid Proton Python
//! verifies the broker's certificate against the CA and sends and receives
//! with PLAIN over TLS; rhea does the same; a plaintext client on the TLS
//! port, and a client that does not trust the broker's certificate (or finds
//! it expired), are refused with a clear log line while the broker goes on
//! serving; with require-encryption the plain port refuses clients and says
//! why; a queue replica's link to an `ssl:` address is TLS. (Clients connect to `localhost`: Proton checks the broker's name
//! against the certificate's DNS names, not its IP addresses.)

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::certs::Certs;
use common::clients::run_python;
use common::{free_port, wait_until, Broker};

/// A broker with TLS on a free port (and plain AMQP on another).
fn tls_broker(
    certs: &Certs,
    cert: (&std::path::Path, &std::path::Path),
    extra: &[&str],
) -> (Broker, u16) {
    let tls_port = free_port();
    let port = tls_port.to_string();
    let mut args = vec![
        "--ssl-port",
        &port,
        "--ssl-cert-file",
        cert.0.to_str().expect("path"),
        "--ssl-key-file",
        cert.1.to_str().expect("path"),
        "--ssl-ca-file",
        certs.ca.to_str().expect("path"),
    ];
    args.extend_from_slice(extra);
    (Broker::start(&args), tls_port)
}

fn proton(script: &str, url: &str, certs: &Certs, extra: &[&str]) -> common::ClientOutput {
    let mut args = vec![
        "--url",
        url,
        "--address",
        "secure",
        "--ssl-ca",
        certs.ca.to_str().expect("path"),
        "--timeout",
        "15",
    ];
    args.extend_from_slice(extra);
    run_python(script, &args)
}

#[test]
fn proton_sends_and_receives_over_tls_with_plain_and_the_broker_verified() {
    let certs = Certs::new("tls-proton");
    let (broker, tls_port) = tls_broker(&certs, (&certs.broker_cert, &certs.broker_key), &[]);
    let url = format!("amqps://localhost:{tls_port}");
    proton(
        "send.py",
        &url,
        &certs,
        &["--count", "100", "--size", "1024"],
    )
    .assert_success();
    let got = proton("recv.py", &url, &certs, &["--count", "100"]);
    got.assert_success();
    assert_eq!(got.bodies().len(), 100);
    // The plain port still serves.
    run_python(
        "send.py",
        &["--url", &broker.url(), "--address", "plain", "--count", "1"],
    )
    .assert_success();
}

#[test]
fn plaintext_on_the_tls_port_is_refused_with_a_clear_log_line() {
    let certs = Certs::new("tls-plaintext");
    let (broker, tls_port) = tls_broker(&certs, (&certs.broker_cert, &certs.broker_key), &[]);
    // An AMQP protocol header where a TLS ClientHello should be.
    let mut s = TcpStream::connect(("127.0.0.1", tls_port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(b"AMQP\x00\x01\x00\x00").expect("write");
    let mut buf = [0u8; 256];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break; // closed by the broker
        }
    }
    let said = wait_until(Duration::from_secs(10), || {
        broker.stderr().contains("plain AMQP to the TLS port")
    });
    assert!(said, "{}", broker.stderr());
    // And TLS clients are still served.
    let url = format!("amqps://localhost:{tls_port}");
    proton("send.py", &url, &certs, &["--count", "1"]).assert_success();
}

#[test]
fn tls_on_the_plain_port_is_refused_with_a_clear_log_line() {
    let certs = Certs::new("tls-on-plain");
    let (broker, _) = tls_broker(&certs, (&certs.broker_cert, &certs.broker_key), &[]);
    // Proton speaking TLS to the plain port fails, and the broker says why.
    let url = format!("amqps://localhost:{}", broker.port());
    let out = proton("send.py", &url, &certs, &["--count", "1", "--timeout", "5"]);
    assert!(!out.success(), "a TLS client was served on the plain port");
    let said = wait_until(Duration::from_secs(10), || {
        broker
            .stderr()
            .contains("a TLS handshake on a plain AMQP port")
    });
    assert!(said, "{}", broker.stderr());
    run_python(
        "send.py",
        &["--url", &broker.url(), "--address", "plain", "--count", "1"],
    )
    .assert_success();
}

#[test]
fn a_client_refuses_an_untrusted_or_expired_broker_certificate() {
    let certs = Certs::new("tls-untrusted");
    for (what, cert) in [
        ("untrusted", certs.untrusted_broker()),
        ("expired", certs.expired_broker()),
    ] {
        let (broker, tls_port) = tls_broker(&certs, (&cert.0, &cert.1), &[]);
        let url = format!("amqps://localhost:{tls_port}");
        let out = proton(
            "send.py",
            &url,
            &certs,
            &["--count", "1", "--timeout", "10"],
        );
        assert!(
            !out.success(),
            "{what}: the client accepted the certificate"
        );
        let said = wait_until(Duration::from_secs(10), || broker.stderr().contains("TLS"));
        assert!(
            said,
            "{what}: the broker did not log the failed handshake: {}",
            broker.stderr()
        );
    }
}

#[test]
fn require_encryption_refuses_plain_clients_and_says_why() {
    let certs = Certs::new("tls-required");
    let (broker, tls_port) = tls_broker(
        &certs,
        (&certs.broker_cert, &certs.broker_key),
        &["--require-encryption", "yes"],
    );
    let out = run_python(
        "send.py",
        &[
            "--url",
            &broker.url(),
            "--address",
            "q",
            "--count",
            "1",
            "--timeout",
            "10",
        ],
    );
    assert!(!out.success(), "a plain client got in");
    let text = format!("{}{}", out.stdout(), out.stderr());
    assert!(text.contains("requires encryption"), "{text}");
    let url = format!("amqps://localhost:{tls_port}");
    proton("send.py", &url, &certs, &["--count", "1"]).assert_success();
}

#[test]
fn sasl_external_takes_the_client_certificate_as_cn_at_realm() {
    let certs = Certs::new("tls-external");
    let dir = common::TempDir::new("tls-external-users");
    let users = dir.join("users");
    std::fs::write(&users, "bob:pw\n").expect("users file");
    let users = users.to_string_lossy().into_owned();
    let (_broker, tls_port) = tls_broker(
        &certs,
        (&certs.broker_cert, &certs.broker_key),
        &["--auth", "yes", "--users-file", &users],
    );
    let url = format!("amqps://localhost:{tls_port}");
    let (cert, key) = certs.client("alice");
    let (cert, key) = (cert.to_str().expect("path"), key.to_str().expect("path"));
    // Qpid Proton logs in with EXTERNAL from its certificate alone.
    proton(
        "send.py",
        &url,
        &certs,
        &[
            "--count",
            "3",
            "--ssl-cert",
            cert,
            "--ssl-key",
            key,
            "--sasl-mechs",
            "EXTERNAL",
        ],
    )
    .assert_success();
    // Without a certificate, EXTERNAL is not offered, and there is no password.
    let refused = proton(
        "send.py",
        &url,
        &certs,
        &[
            "--count",
            "1",
            "--sasl-mechs",
            "EXTERNAL",
            "--timeout",
            "10",
        ],
    );
    assert!(!refused.success(), "EXTERNAL without a certificate got in");
    // Our tools do the same, and the broker names the user CN@realm.
    let tool_url = format!("amqps:localhost:{tls_port}");
    let ca = certs.ca.to_str().expect("path");
    let out = common::tools::tool(
        "tandem-stat",
        &[
            "-b",
            &tool_url,
            "--ssl-trustfile",
            ca,
            "--ssl-certificate",
            cert,
            "--ssl-key",
            key,
            "-c",
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", common::tools::stderr(&out));
    assert!(
        common::tools::stdout(&out).contains("alice@QPID"),
        "{}",
        common::tools::stdout(&out)
    );
}

/// Three brokers whose replication links run TLS (`ssl:` addresses in
/// `ha-brokers-url`, each verifying the other against the CA) and log in as
/// the cluster's user; clients publish on the plain ports as `alice`.
struct TlsCluster {
    brokers: Vec<Option<Broker>>,
    tls_ports: Vec<u16>,
    certs: Certs,
    _users: common::TempDir,
}

impl TlsCluster {
    fn start() -> TlsCluster {
        let certs = Certs::new("tls-cluster");
        let users_dir = common::TempDir::new("tls-cluster-users");
        let users = users_dir.join("users");
        std::fs::write(&users, "ha:secret\nalice:pw\n").expect("users file");
        let users = users.to_string_lossy().into_owned();
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let tls_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let url = tls_ports
            .iter()
            .map(|p| format!("ssl:127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
        let (cert, key, ca) = (
            path(&certs.broker_cert),
            path(&certs.broker_key),
            path(&certs.ca),
        );
        let brokers = (0..3)
            .map(|i| {
                let (port, tls) = (ports[i].to_string(), tls_ports[i].to_string());
                Some(Broker::start(&[
                    "--port",
                    &port,
                    "--ssl-port",
                    &tls,
                    "--ssl-cert-file",
                    &cert,
                    "--ssl-key-file",
                    &key,
                    "--ssl-ca-file",
                    &ca,
                    "--auth",
                    "yes",
                    "--users-file",
                    &users,
                    "--ha-cluster",
                    "yes",
                    "--ha-brokers-url",
                    &url,
                    "--ha-username",
                    "ha",
                    "--ha-password",
                    "secret",
                    "--ha-replicate",
                    "all",
                    "--link-heartbeat-interval",
                    "1",
                    "--link-maintenance-interval",
                    "0.2",
                    "--ha-backup-timeout",
                    "3",
                    "--worker-threads",
                    "2",
                ]))
            })
            .collect();
        TlsCluster {
            brokers,
            tls_ports,
            certs,
            _users: users_dir,
        }
    }

    /// `tandem-ha` as the cluster's user, over TLS to member `i`.
    fn ha(&self, i: usize, args: &[&str]) -> std::process::Output {
        let url = format!("amqps:ha/secret@localhost:{}", self.tls_ports[i]);
        let ca = self.certs.ca.to_string_lossy().into_owned();
        let mut all = vec!["-b", url.as_str(), "--ssl-trustfile", ca.as_str()];
        all.extend_from_slice(args);
        common::tools::tool("tandem-ha", &all)
    }

    fn status_is(&self, i: usize, status: &str) -> bool {
        self.ha(i, &["status", &format!("--expect={status}")])
            .status
            .success()
    }

    fn client_url(&self, i: usize) -> String {
        let b = self.brokers[i].as_ref().expect("running");
        format!("alice:pw@127.0.0.1:{}", b.port())
    }
}

#[test]
fn a_cluster_replicating_over_tls_survives_a_primary_kill_without_losing_a_settled_message() {
    const COUNT: usize = 2000;
    let mut cluster = TlsCluster::start();
    let promoted = cluster.ha(0, &["--cluster-manager", "promote"]);
    assert!(
        promoted.status.success(),
        "{}",
        common::tools::stderr(&promoted)
    );
    for i in [1, 2] {
        assert!(
            wait_until(Duration::from_secs(20), || cluster.status_is(i, "ready")),
            "broker {i} never became ready over TLS: {}",
            cluster.brokers[i]
                .as_ref()
                .map(|b| b.stderr())
                .unwrap_or_default()
        );
    }
    let urls = (0..3)
        .map(|i| cluster.client_url(i))
        .collect::<Vec<_>>()
        .join(",");
    let mut sender = common::spawn_ha_send(&urls, "orders", COUNT, "60");
    sender.wait_for_settlements(300, Duration::from_secs(30));
    if let Some(mut primary) = cluster.brokers[0].take() {
        primary.kill();
    }
    let promoted = cluster.ha(1, &["--cluster-manager", "promote"]);
    assert!(
        promoted.status.success(),
        "{}",
        common::tools::stderr(&promoted)
    );
    let out = sender.wait();
    out.assert_success();
    let settled = common::settled_seqs(&out.json_lines());
    assert_eq!(settled.len(), COUNT, "every message settled in the end");
    let missing = common::ha_recv_missing(&cluster.client_url(1), "orders", COUNT as u64, 20);
    let lost: Vec<u64> = settled.intersection(&missing).copied().collect();
    common::assert_none_lost(
        &lost,
        settled.len(),
        "after the primary of a TLS cluster was killed",
    );
}

#[test]
fn rhea_sends_and_receives_over_tls_with_plain() {
    let certs = Certs::new("tls-rhea");
    let dir = common::TempDir::new("tls-rhea-users");
    let users = dir.join("users");
    std::fs::write(&users, "carol:pw\n").expect("users file");
    let users = users.to_string_lossy().into_owned();
    let (_broker, tls_port) = tls_broker(
        &certs,
        (&certs.broker_cert, &certs.broker_key),
        &["--auth", "yes", "--users-file", &users],
    );
    let url = format!("amqps://localhost:{tls_port}");
    let ca = certs.ca.to_string_lossy().into_owned();
    let common_args = [
        "--url",
        url.as_str(),
        "--address",
        "secure",
        "--ssl-ca",
        ca.as_str(),
        "--username",
        "carol",
        "--password",
        "pw",
        "--timeout",
        "15",
    ];
    let mut send: Vec<&str> = common_args.to_vec();
    send.extend(["--count", "50"]);
    common::clients::run_node("send.js", &send).assert_success();
    let mut recv: Vec<&str> = common_args.to_vec();
    recv.extend(["--count", "50"]);
    let got = common::clients::run_node("recv.js", &recv);
    got.assert_success();
    assert_eq!(got.bodies().len(), 50);
    // A wrong password over TLS is refused.
    let mut wrong: Vec<&str> = common_args.to_vec();
    wrong[9] = "nope";
    wrong.extend(["--count", "1", "--timeout", "10"]);
    let refused = common::clients::run_node("send.js", &wrong);
    assert!(!refused.success(), "a wrong password got in over TLS");
}

#[test]
fn sighup_reloads_the_certificate_without_a_restart() {
    let old = Certs::new("tls-reload-old");
    let new = Certs::new("tls-reload-new");
    let dir = common::TempDir::new("tls-reload-files");
    let (cert, key) = (dir.join("broker.pem"), dir.join("broker.key"));
    std::fs::copy(&old.broker_cert, &cert).expect("copy");
    std::fs::copy(&old.broker_key, &key).expect("copy");
    let (broker, tls_port) = tls_broker(&old, (&cert, &key), &[]);
    let url = format!("amqps://localhost:{tls_port}");
    let try_with = |certs: &Certs| {
        proton("send.py", &url, certs, &["--count", "1", "--timeout", "10"]).success()
    };
    assert!(
        try_with(&old) && !try_with(&new),
        "before: only the old CA's clients"
    );
    std::fs::copy(&new.broker_cert, &cert).expect("copy");
    std::fs::copy(&new.broker_key, &key).expect("copy");
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(broker.pid() as i32, libc::SIGHUP) };
    let reloaded = wait_until(Duration::from_secs(10), || {
        broker.stderr().contains("TLS certificate reloaded")
    });
    assert!(reloaded, "{}", broker.stderr());
    assert!(
        try_with(&new) && !try_with(&old),
        "after: only the new CA's clients"
    );
}

#[test]
fn a_queue_replica_follows_its_remote_over_tls() {
    let certs = Certs::new("tls-replica");
    let cert = (certs.broker_cert.as_path(), certs.broker_key.as_path());
    let replicating = ["--ha-queue-replication", "yes", "--worker-threads", "2"];
    let (original, tls_port) = tls_broker(&certs, cert, &replicating);
    let (replica, _) = tls_broker(&certs, cert, &replicating);
    // `name -b url args...`, which must succeed; its stdout.
    let tool = |name: &str, url: &str, args: &[&str]| {
        let mut all = vec!["-b", url];
        all.extend_from_slice(args);
        let out = common::tools::tool(name, &all);
        let said = common::tools::stdout(&out);
        assert!(
            out.status.success(),
            "{name} {all:?}: {said}{}",
            common::tools::stderr(&out)
        );
        said
    };
    tool(
        "tandem-config",
        &original.url(),
        &["add", "queue", "secure"],
    );
    tool("tandem-config", &replica.url(), &["add", "queue", "secure"]);
    // The replica's link is TLS to the original's ssl-port, verified against
    // the replica broker's ssl-ca-file.
    let remote = format!("ssl:localhost:{tls_port}");
    tool(
        "tandem-ha",
        &replica.url(),
        &["replicate", "secure", &remote],
    );
    run_python(
        "send.py",
        &[
            "--url",
            &original.url(),
            "--address",
            "secure",
            "--count",
            "40",
        ],
    )
    .assert_success();
    let depth = || {
        let out = tool("tandem-config", &replica.url(), &["queues", "--json"]);
        common::Json::parse(&out)
            .ok()
            .and_then(|j| j.as_array().map(<[common::Json]>::to_vec))
            .unwrap_or_default()
            .into_iter()
            .find(|q| q["name"].as_str() == Some("secure"))
            .and_then(|q| q["depth"].as_u64())
    };
    assert!(
        wait_until(Duration::from_secs(20), || depth() == Some(40)),
        "the replica over TLS holds {:?}",
        depth()
    );
    let log = original.stderr();
    assert!(log.contains("serving a replica of queue 'secure'"), "{log}");
}

#[test]
fn a_tls_connection_moves_to_its_queues_shard_with_its_session() {
    let certs = Certs::new("tls-placement");
    let (_broker, tls_port) = tls_broker(
        &certs,
        (&certs.broker_cert, &certs.broker_key),
        &["--worker-threads", "2"],
    );
    let url = format!("amqps://localhost:{tls_port}");
    // Accepted on the shard that does not own "secure": the TLS session moves
    // with the connection when it attaches, and goes on carrying the link.
    let other = (tandem_shards::placement::shard_of("secure", 2) + 1) % 2;
    let other = other.to_string();
    let sent = proton(
        "send.py",
        &url,
        &certs,
        &["--count", "200", "--size", "1024", "--want-shard", &other],
    );
    sent.assert_success();
    let sent = sent.summary();
    assert_eq!(sent["accepted"].as_u64(), Some(200), "{sent}");
    assert_eq!(sent["shard"].to_string(), other, "{sent}");
    let owner = tandem_shards::placement::shard_of("secure", 2) as u64;
    assert_eq!(sent["link_shard"].as_u64(), Some(owner), "{sent}");
    let got = proton(
        "recv.py",
        &url,
        &certs,
        &["--count", "200", "--want-shard", &other],
    );
    got.assert_success();
    assert_eq!(got.bodies().len(), 200);
    let summary = got.summary();
    assert_eq!(summary["link_shard"].as_u64(), Some(owner), "{summary}");
}
