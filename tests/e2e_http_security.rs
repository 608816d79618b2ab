//! The HTTP port takes the broker's own checks: with `ssl-cert-file` it
//! speaks HTTPS only (the AMQP port's certificate, verified by a rustls
//! client and by curl), with `auth = yes` every page but `/health` and
//! `/ready` asks for Basic credentials from the users file (re-read on
//! SIGHUP) or a verified client certificate, and an ACL decides who may read
//! the broker.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::certs::Certs;
use common::http::{basic, get_tls, get_with, http_address, http_url, Answer};
use common::{wait_until, Broker, TempDir};

/// A rustls client trusting the test CA, with a client certificate if given.
fn client(
    certs: &Certs,
    identity: Option<(&std::path::Path, &std::path::Path)>,
) -> Arc<rustls::ClientConfig> {
    tandem_shards::tls::client_config(&tandem_shards::tls::ClientFiles {
        ca: Some(certs.ca.clone()),
        cert: identity.map(|(c, _)| c.to_owned()),
        key: identity.map(|(_, k)| k.to_owned()),
    })
    .expect("client TLS config")
}

fn https(
    broker: &Broker,
    config: &Arc<rustls::ClientConfig>,
    path: &str,
    headers: &[(&str, &str)],
) -> Answer {
    get_tls(
        &http_address(broker),
        "localhost",
        path,
        headers,
        config.clone(),
    )
    .unwrap_or_else(|e| panic!("GET {path} over TLS: {e}"))
}

/// Waits (10 s at most) for the broker to log `text`.
fn logged(broker: &Broker, text: &str) {
    assert!(
        wait_until(Duration::from_secs(10), || broker.stderr().contains(text)),
        "no log line with {text:?}: {}",
        broker.stderr()
    );
}

/// A broker with TLS, auth = yes and the users in `users`, HTTP on a free
/// port, and `extra` arguments.
fn secured_broker(dir: &TempDir, certs: &Certs, users: &str, extra: &[&str]) -> Broker {
    let users_file = dir.join("users");
    std::fs::write(&users_file, users).expect("users file");
    let mut args = certs.broker_args();
    let users_file = users_file.to_str().expect("path").to_owned();
    args.extend(
        [
            "--auth",
            "yes",
            "--users-file",
            &users_file,
            "--http-port",
            "0",
        ]
        .map(String::from),
    );
    args.extend(extra.iter().map(|a| a.to_string()));
    Broker::start(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

#[test]
fn with_tls_and_auth_the_http_port_is_https_and_asks_for_the_users_credentials() {
    let dir = TempDir::new("http-tls-auth");
    let certs = Certs::new("http-tls-auth");
    let broker = secured_broker(&dir, &certs, "admin:secret\n", &[]);
    assert!(
        http_url(&broker).starts_with("https://"),
        "the HTTP line should say https: {:?}",
        broker.stdout_lines()
    );
    let trusting = client(&certs, None);

    // No credentials: 401 with a Basic challenge naming the realm.
    let bare = https(&broker, &trusting, "/metrics", &[]);
    assert_eq!(bare.status, 401, "{bare:?}");
    let challenge = bare.header("www-authenticate").unwrap_or_default();
    assert!(challenge.starts_with("Basic realm=\"QPID\""), "{challenge}");
    assert!(!bare.body.contains("tandem_broker_info"), "{}", bare.body);
    // A wrong password: 401 and a log line naming the user.
    let wrong = basic("admin", "guess");
    let refused = https(
        &broker,
        &trusting,
        "/status.json",
        &[("Authorization", &wrong)],
    );
    assert_eq!(refused.status, 401, "{refused:?}");
    logged(&broker, "authentication failed for user 'admin'");
    // Something that is not Basic credentials: 401 saying so.
    let bearer = https(
        &broker,
        &trusting,
        "/metrics",
        &[("Authorization", "Bearer abc")],
    );
    assert_eq!(bearer.status, 401);
    assert!(bearer.body.contains("only Basic"), "{}", bearer.body);
    // The right ones: the pages.
    let right = basic("admin", "secret");
    let metrics = https(&broker, &trusting, "/metrics", &[("Authorization", &right)]);
    assert_eq!(metrics.status, 200, "{metrics:?}");
    assert!(
        metrics.body.contains("tandem_broker_info{"),
        "{}",
        metrics.body
    );
    let page = https(&broker, &trusting, "/", &[("Authorization", &right)]);
    assert_eq!(page.status, 200);
    assert!(page.body.contains("<html"), "{}", page.body);
    // Probes need no credentials.
    for probe in ["/health", "/ready"] {
        let answer = https(&broker, &trusting, probe, &[]);
        assert_eq!(answer.status, 200, "{probe}: {answer:?}");
    }
}

#[test]
fn the_https_port_refuses_plain_http_and_clients_that_do_not_trust_it() {
    let dir = TempDir::new("http-tls-refusals");
    let certs = Certs::new("http-tls-refusals");
    let broker = secured_broker(&dir, &certs, "admin:secret\n", &[]);
    let addr = http_address(&broker);
    // Plain HTTP on the HTTPS port gets no HTTP answer.
    let mut plain = TcpStream::connect(&addr).expect("connect");
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    plain
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(
        !answer.starts_with(b"HTTP/"),
        "plain HTTP was answered: {:?}",
        String::from_utf8_lossy(&answer)
    );
    // A client that does not trust the broker's CA refuses the handshake.
    let other = Certs::new("http-tls-other-ca");
    let stranger = client(&other, None);
    let refused = get_tls(&addr, "localhost", "/health", &[], stranger);
    assert!(
        refused.is_err(),
        "an untrusted certificate was accepted: {refused:?}"
    );
    logged(&broker, "TLS handshake failed");
    // The broker goes on serving.
    let ok = https(&broker, &client(&certs, None), "/health", &[]);
    assert_eq!(ok.status, 200);
}

#[test]
fn a_verified_client_certificate_logs_in_as_cn_at_realm_like_sasl_external() {
    let dir = TempDir::new("http-tls-cert");
    let certs = Certs::new("http-tls-cert");
    // The ACL lets the certificate's identity read the broker, no one else.
    let acl = dir.join("acl");
    std::fs::write(
        &acl,
        "acl allow monitor@QPID access connection\nacl allow monitor@QPID access broker\nacl deny all all\n",
    )
    .expect("acl file");
    let acl = acl.to_str().expect("path");
    let broker = secured_broker(&dir, &certs, "admin:secret\n", &["--acl-file", acl]);
    let (cert, key) = certs.client("monitor");
    let monitor = client(&certs, Some((&cert, &key)));
    let metrics = https(&broker, &monitor, "/metrics", &[]);
    assert_eq!(metrics.status, 200, "{metrics:?}");
    assert!(metrics.body.contains("tandem_broker_info{"));
    // admin logs in, but the ACL does not let it read the broker: 403 saying why.
    let admin = https(
        &broker,
        &client(&certs, None),
        "/metrics",
        &[("Authorization", &basic("admin", "secret"))],
    );
    assert_eq!(admin.status, 403, "{admin:?}");
    assert!(
        admin.body.contains("ACL: user 'admin' may not"),
        "{}",
        admin.body
    );
}

#[test]
fn sighup_rereads_the_users_file_for_the_http_port_too() {
    let users = TempDir::new("http-auth-reload");
    let file = users.join("users");
    std::fs::write(&file, "admin:old\n").expect("users file");
    let broker = Broker::start(&[
        "--auth",
        "yes",
        "--users-file",
        file.to_str().expect("path"),
        "--http-port",
        "0",
    ]);
    assert!(
        http_url(&broker).starts_with("http://"),
        "no TLS configured: plain HTTP"
    );
    let addr = http_address(&broker);
    let old = basic("admin", "old");
    assert_eq!(
        get_with(&addr, "/metrics", &[("Authorization", &old)]).status,
        200
    );
    std::fs::write(&file, "admin:new\n").expect("rewrite");
    let pid = broker.pid().to_string();
    let hup = Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .expect("kill");
    assert!(hup.success());
    let new = basic("admin", "new");
    assert!(
        wait_until(Duration::from_secs(10), || get_with(
            &addr,
            "/metrics",
            &[("Authorization", &new)]
        )
        .status
            == 200),
        "the new password was not taken: {}",
        broker.stderr()
    );
    assert_eq!(
        get_with(&addr, "/metrics", &[("Authorization", &old)]).status,
        401
    );
}

#[test]
fn curl_scrapes_the_https_port_with_the_ca_and_basic_credentials() {
    if Command::new("curl").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("TANDEM_REQUIRE_TOOLS").is_none(),
            "curl is required (scripts/test installs it)"
        );
        eprintln!("curl is not installed (scripts/test installs it): not checked");
        return;
    }
    let dir = TempDir::new("http-curl");
    let certs = Certs::new("http-curl");
    let broker = secured_broker(&dir, &certs, "prometheus:scrape\n", &[]);
    let url = format!("https://localhost:{}/metrics", http_port(&broker));
    let curl = |credentials: &str| {
        Command::new("curl")
            .args(["--silent", "--show-error", "--max-time", "10"])
            .args(["--cacert", certs.ca.to_str().expect("path")])
            .args(["--user", credentials, "--write-out", "\n%{http_code}", &url])
            .output()
            .expect("curl runs")
    };
    let scraped = curl("prometheus:scrape");
    let out = String::from_utf8_lossy(&scraped.stdout);
    assert!(
        scraped.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&scraped.stderr)
    );
    assert!(out.trim_end().ends_with("200"), "{out}");
    assert!(out.contains("tandem_broker_info{"), "{out}");
    let refused = curl("prometheus:wrong");
    let out = String::from_utf8_lossy(&refused.stdout);
    assert!(out.trim_end().ends_with("401"), "{out}");
}

fn http_port(broker: &Broker) -> String {
    http_address(broker)
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .to_owned()
}
