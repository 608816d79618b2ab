//! The daemon's life as an operator sees it: start-up errors, help, and clean
//! shutdown on signals.

mod common;

use std::fs;
use std::time::Duration;

use common::*;

const START_DEADLINE: Duration = Duration::from_secs(20);

/// Sends and receives one message, proving the broker serves clients.
fn assert_serves_clients(broker: &Broker, queue: &str) {
    let sent = send(Lang::Proton, broker, queue, 1, &["--prefix", "alive-"]);
    assert_eq!(sent["accepted"].as_u64(), Some(1), "{sent}");
    let received = receive(Lang::Proton, broker, queue, 1, &[]);
    assert_eq!(received.bodies(), vec!["alive-0"]);
}

#[test]
fn sigterm_shuts_the_broker_down_with_status_zero() {
    let mut broker = Broker::start(&["--worker-threads", "2"]);
    assert_serves_clients(&broker, "before-sigterm");
    let status = broker.terminate();
    assert_eq!(
        status.code(),
        Some(0),
        "exit after SIGTERM: {status}\n{}",
        broker.stderr()
    );
}

#[test]
fn sigint_shuts_the_broker_down_with_status_zero() {
    let mut broker = Broker::start(&["--worker-threads", "1"]);
    let status = broker.signal_and_wait(libc::SIGINT);
    assert_eq!(
        status.code(),
        Some(0),
        "exit after SIGINT: {status}\n{}",
        broker.stderr()
    );
}

#[test]
fn second_broker_on_a_port_in_use_fails_naming_the_port() {
    let first = Broker::start(&["--worker-threads", "2"]);
    let port = first.port().to_string();
    let data = TempDir::new("second-broker");
    let data_dir = data.path().to_str().expect("UTF-8 temp dir");

    let second = run_tandemd(
        &[
            "--port",
            &port,
            "--interface",
            "127.0.0.1",
            "--data-dir",
            data_dir,
            "--auth",
            "no",
            "--worker-threads",
            "2",
        ],
        START_DEADLINE,
    );
    assert!(
        !second.status.success() && !second.timed_out,
        "a second broker on port {port} must fail at start-up, got {} (timed out: {})\n{}",
        second.status,
        second.timed_out,
        second.stderr
    );
    assert!(
        second.stderr.contains(&port),
        "the error should name port {port}:\n{}",
        second.stderr
    );
    // The first broker is undisturbed (SO_REUSEPORT must not have let the
    // second one steal connections).
    assert_serves_clients(&first, "after-conflict");
}

#[test]
fn unknown_config_key_fails_naming_the_key() {
    let dir = TempDir::new("bad-config");
    let config = dir.join("tandemd.toml");
    fs::write(&config, "no-such-option = true\n").expect("writing the config");
    let data_dir = dir.join("data");
    let output = run_tandemd(
        &[
            "--config",
            config.to_str().expect("UTF-8 temp dir"),
            "--port",
            "0",
            "--interface",
            "127.0.0.1",
            "--data-dir",
            data_dir.to_str().expect("UTF-8 temp dir"),
            "--auth",
            "no",
        ],
        START_DEADLINE,
    );
    assert!(
        !output.status.success() && !output.timed_out,
        "an unknown config key must fail start-up, got {} (timed out: {})\n{}",
        output.status,
        output.timed_out,
        output.stderr
    );
    assert!(
        output.stderr.contains("no-such-option"),
        "the error should name the key:\n{}",
        output.stderr
    );
    assert!(
        !output.stdout().contains("listening on"),
        "it must not have started listening:\n{}",
        output.stdout()
    );
}

#[test]
fn help_exits_zero_and_lists_the_options() {
    let output = run_tandemd(&["--help"], START_DEADLINE);
    assert_eq!(output.status.code(), Some(0), "{}", output.stderr);
    let help = output.stdout();
    for option in ["--port", "--worker-threads", "--data-dir", "--config"] {
        assert!(
            help.contains(option),
            "--help should list {option}:\n{help}"
        );
    }
}
