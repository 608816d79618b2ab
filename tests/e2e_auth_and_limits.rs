//! SASL against a users file, a single-shard broker, and the connection limit,
//! with real `tandemd` processes and Qpid Proton, rhea and our own client.

mod common;

use common::clients::{expected_bodies, receive, run_python, send, Lang};
use common::{Broker, TempDir};
use tandem_shards::client::{Client, ClientOptions};

fn broker_with_users() -> (Broker, TempDir) {
    let dir = TempDir::new("users");
    let users = dir.join("users");
    std::fs::write(&users, "# test users\nalice:secret\nbob:pw\n").expect("write users file");
    let users = users.to_string_lossy().into_owned();
    // The harness passes `--auth no` first; the later flag wins.
    let broker = Broker::start(&["--auth", "yes", "--users-file", &users]);
    (broker, dir)
}

#[test]
fn plain_login_from_the_users_file_succeeds_and_a_bad_password_is_refused() {
    let (broker, _dir) = broker_with_users();
    let good = format!("alice:secret@{}", broker.url());
    let out = run_python(
        "send.py",
        &[
            "--url",
            &good,
            "--address",
            "authq",
            "--count",
            "3",
            "--timeout",
            "15",
        ],
    );
    out.assert_success();
    assert_eq!(
        out.summary().get("accepted").and_then(|v| v.as_u64()),
        Some(3)
    );

    let bad = format!("alice:wrong@{}", broker.url());
    let out = run_python(
        "send.py",
        &[
            "--url",
            &bad,
            "--address",
            "authq",
            "--count",
            "1",
            "--timeout",
            "15",
        ],
    );
    let error = out
        .summary()
        .get("error")
        .and_then(|e| e.as_str())
        .unwrap_or("")
        .to_owned();
    assert!(
        error.contains("unauthorized-access"),
        "bad password must fail authentication: {error}"
    );
}

#[test]
fn anonymous_login_is_refused_when_auth_is_required() {
    let (broker, _dir) = broker_with_users();
    let out = run_python(
        "send.py",
        &[
            "--url",
            &broker.url(),
            "--address",
            "authq",
            "--count",
            "1",
            "--timeout",
            "15",
        ],
    );
    let error = out
        .summary()
        .get("error")
        .and_then(|e| e.as_str())
        .unwrap_or("")
        .to_owned();
    assert!(
        error.contains("unauthorized-access"),
        "anonymous must be refused: {error}"
    );
    // Our own client says so too.
    let url = broker.url().parse().expect("url");
    let err = Client::connect(&url, &ClientOptions::default())
        .err()
        .expect("refused");
    assert!(
        err.to_string().contains("SASL") || err.to_string().contains("mechanism"),
        "{err}"
    );
}

#[test]
fn a_single_shard_broker_serves_proton_and_rhea() {
    let broker = Broker::start(&["--worker-threads", "1"]);
    assert_eq!(broker.shards(), 1);
    let summary = send(Lang::Proton, &broker, "one", 50, &["--prefix", "p-"]);
    assert_eq!(summary.get("accepted").and_then(|v| v.as_u64()), Some(50));
    let summary = send(Lang::Rhea, &broker, "one", 50, &["--prefix", "r-"]);
    assert_eq!(summary.get("accepted").and_then(|v| v.as_u64()), Some(50));
    let got = receive(Lang::Proton, &broker, "one", 100, &[]).bodies();
    let mut want = expected_bodies("p-", 50);
    want.extend(expected_bodies("r-", 50));
    assert_eq!(got, want);
}

#[test]
fn connections_beyond_max_connections_are_refused_and_others_keep_working() {
    let broker = Broker::start(&["--max-connections", "2", "--worker-threads", "2"]);
    let url = broker.url().parse().expect("url");
    let opts = ClientOptions {
        timeout: Some(std::time::Duration::from_secs(5)),
        ..Default::default()
    };
    let mut first = Client::connect(&url, &opts).expect("first connection");
    let _second = Client::connect(&url, &opts).expect("second connection");
    assert!(
        Client::connect(&url, &opts).is_err(),
        "a third connection must be refused"
    );
    // The admitted connections still work.
    let sender = first.sender("limits").expect("sender");
    let id = first
        .send(sender, b"\x00\x53\x77\xa1\x02hi", false)
        .expect("send");
    let outcome = first.outcome(id).expect("settled");
    assert_eq!(
        outcome,
        tandem_shards::amqp::performative::DeliveryState::Accepted
    );
}

#[test]
fn tools_take_a_missing_password_from_tandem_password() {
    let (broker, _dir) = broker_with_users();
    let url = format!("alice@{}", broker.url());
    let ping = |password: Option<&str>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tandem-ha"));
        cmd.args(["-b", &url, "--timeout", "10", "ping"]);
        match password {
            Some(p) => cmd.env("TANDEM_PASSWORD", p),
            None => cmd.env_remove("TANDEM_PASSWORD"),
        };
        cmd.output().expect("running tandem-ha")
    };
    assert!(ping(Some("secret")).status.success(), "the right password");
    assert!(!ping(Some("wrong")).status.success(), "a wrong password");
    assert!(!ping(None).status.success(), "no password at all");
    // A password in the URL wins over the variable.
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tandem-ha"));
    let with_password = format!("alice/secret@{}", broker.url());
    cmd.args(["-b", &with_password, "--timeout", "10", "ping"])
        .env("TANDEM_PASSWORD", "wrong");
    assert!(cmd.output().expect("running tandem-ha").status.success());
}
