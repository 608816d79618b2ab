//! SCRAM-SHA-256 with an independent client: fe2o3-amqp (its `scram`
//! feature) logs in against a users file that `tandem-passwd` wrote (salted,
//! iterated; no password in it), over plain TCP and over TLS, sends and
//! receives; a wrong password is refused and the broker serves the next
//! client. (Debian's Qpid Proton has no Cyrus SASL and rhea no SCRAM.)

mod common;

use common::certs::Certs;
use common::tools::passwd;
use common::{free_port, Broker, TempDir};
use fe2o3_amqp::sasl_profile::SaslScramSha256;
use fe2o3_amqp::types::messaging::Outcome;
use fe2o3_amqp::{Connection, Receiver, Sender, Session};

/// Logs in with SCRAM-SHA-256, sends one message to `queue` and receives it.
async fn round_trip(
    url: &str,
    password: &str,
    tls: Option<tokio_rustls::TlsConnector>,
    queue: &str,
) -> Result<String, String> {
    let builder = Connection::builder()
        .container_id("fe2o3-scram")
        .sasl_profile(SaslScramSha256::new("dave", password));
    let mut connection = match tls {
        // TLS at once on the TLS port, as amqps:// means (not the AMQP TLS
        // protocol header first).
        Some(connector) => {
            builder
                .alt_tls_establishment(true)
                .tls_connector(connector)
                .open(url)
                .await
        }
        None => builder.open(url).await,
    }
    .map_err(|e| format!("open: {e}"))?;
    let mut session = Session::begin(&mut connection)
        .await
        .map_err(|e| format!("begin: {e}"))?;
    let mut sender = Sender::attach(&mut session, "scram-sender", queue)
        .await
        .map_err(|e| format!("attach sender: {e}"))?;
    let outcome = sender
        .send("hello over scram")
        .await
        .map_err(|e| format!("send: {e}"))?;
    if !matches!(outcome, Outcome::Accepted(_)) {
        return Err(format!("not accepted: {outcome:?}"));
    }
    let mut receiver = Receiver::attach(&mut session, "scram-receiver", queue)
        .await
        .map_err(|e| format!("attach receiver: {e}"))?;
    let delivery = receiver
        .recv::<String>()
        .await
        .map_err(|e| format!("recv: {e}"))?;
    receiver
        .accept(&delivery)
        .await
        .map_err(|e| format!("accept: {e}"))?;
    let body = delivery.body().clone();
    let _ = sender.close().await;
    let _ = receiver.close().await;
    let _ = session.end().await;
    let _ = connection.close().await;
    Ok(body)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

#[test]
fn fe2o3_logs_in_with_scram_sha_256_over_tcp_and_tls_and_a_wrong_password_is_refused() {
    let dir = TempDir::new("scram");
    let users = dir.join("users");
    passwd(&users, "dave", "correct horse");
    let text = std::fs::read_to_string(&users).expect("users file");
    assert!(
        text.starts_with("dave:scram-sha-256:") && !text.contains("correct horse"),
        "{text}"
    );
    let certs = Certs::new("scram-tls");
    let tls_port = free_port();
    let tls = tls_port.to_string();
    let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
    let (cert, key, users_arg) = (
        path(&certs.broker_cert),
        path(&certs.broker_key),
        path(&users),
    );
    let broker = Broker::start(&[
        "--auth",
        "yes",
        "--users-file",
        &users_arg,
        "--ssl-port",
        &tls,
        "--ssl-cert-file",
        &cert,
        "--ssl-key-file",
        &key,
    ]);
    let rt = runtime();
    let plain_url = format!("amqp://127.0.0.1:{}", broker.port());
    let got = rt
        .block_on(round_trip(&plain_url, "correct horse", None, "scram-plain"))
        .expect("SCRAM over TCP");
    assert_eq!(got, "hello over scram");
    let config = tandem_shards::tls::client_config(&tandem_shards::tls::ClientFiles {
        ca: Some(certs.ca.clone()),
        ..Default::default()
    })
    .expect("client TLS");
    let connector = tokio_rustls::TlsConnector::from(config);
    let tls_url = format!("amqps://localhost:{tls_port}");
    let got = rt
        .block_on(round_trip(
            &tls_url,
            "correct horse",
            Some(connector),
            "scram-tls",
        ))
        .expect("SCRAM over TLS");
    assert_eq!(got, "hello over scram");
    let refused = rt.block_on(round_trip(&plain_url, "wrong horse", None, "scram-plain"));
    assert!(refused.is_err(), "a wrong password logged in");
    // The broker goes on serving.
    let got = rt
        .block_on(round_trip(&plain_url, "correct horse", None, "scram-again"))
        .expect("SCRAM after a refusal");
    assert_eq!(got, "hello over scram");
}
