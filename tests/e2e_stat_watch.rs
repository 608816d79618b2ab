//! `tandem-stat --watch`: frames of a live view against real brokers, read
//! from a pipe (frames one after another) and from a pseudo-terminal made by
//! `script` (each frame clears the screen first).

mod common;
mod ha_cluster;

use std::process::Command;

use common::clients::{send, Lang};
use common::tools::{stderr, stdout, tool};
use common::{wait_until, Broker};
use ha_cluster::{serial, signal, HaCluster};
use std::time::Duration;

const FRAME_HEAD: &str = "tandem-stat ";

fn frames(text: &str) -> Vec<String> {
    let mut frames: Vec<String> = Vec::new();
    for line in text.lines() {
        if line.starts_with(FRAME_HEAD) {
            frames.push(String::new());
        }
        if let Some(f) = frames.last_mut() {
            f.push_str(line);
            f.push('\n');
        }
    }
    frames
}

/// The cells of the first table row whose first cell is `name`.
fn row<'a>(frame: &'a str, name: &str) -> Option<Vec<&'a str>> {
    frame
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&name))
}

#[test]
fn watch_draws_frames_with_queues_rates_and_connections() {
    let broker = Broker::start(&[]);
    send(Lang::Proton, &broker, "watched", 10, &[]);
    let out = tool(
        "tandem-stat",
        &["-b", &broker.url(), "--watch", "0.3", "--frames", "3"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let frames = frames(&text);
    assert_eq!(frames.len(), 3, "{text}");
    for (i, f) in frames.iter().enumerate() {
        assert!(f.contains("every 0.3s"), "{f}");
        assert!(
            f.contains("\nQueues\n") && f.contains("\nConnections\n"),
            "{f}"
        );
        let cells = row(f, "watched").unwrap_or_else(|| panic!("no queue row in {f}"));
        // queue msg msgIn msgOut in/s out/s ...
        assert_eq!(&cells[1..4], ["10", "10", "0"], "{f}");
        if i > 0 {
            // Rates appear once there is a frame before to compare with.
            assert_eq!(&cells[4..6], ["0", "0"], "{f}");
        }
    }
    assert!(!text.contains('\x1b'), "no terminal codes into a pipe");

    // Bad values are refused before anything is drawn.
    for (args, says) in [
        (vec!["--watch", "0"], "--watch"),
        (vec!["--watch", "2", "--frames", "0"], "--frames"),
        (vec!["--watch", "2", "--json"], "--json"),
    ] {
        let url = broker.url();
        let mut all = vec!["-b", url.as_str()];
        all.extend(args);
        let out = tool("tandem-stat", &all);
        assert!(!out.status.success());
        assert!(stderr(&out).contains(says), "{}", stderr(&out));
    }
}

#[test]
fn in_a_terminal_each_frame_clears_the_screen() {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("no `script` (util-linux) to make a pseudo-terminal: not checked");
        return;
    }
    let broker = Broker::start(&[]);
    let command = format!(
        "{} -b {} --watch 0.2 --frames 2 -q",
        env!("CARGO_BIN_EXE_tandem-stat"),
        broker.url()
    );
    let out = Command::new("script")
        .args(["-qfec", &command, "/dev/null"])
        .output()
        .expect("script runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert_eq!(text.matches("\x1b[H\x1b[2J").count(), 2, "{text:?}");
    // -q watches the queue view alone.
    assert!(!text.contains("Connections"), "{text}");
}

#[test]
fn on_a_primary_watch_shows_each_backups_lag() {
    let _serial = serial();
    let cluster = HaCluster::start_with_args(Some("all"), &["--link-heartbeat-interval", "5"]);
    cluster.promote_ok(0);
    for i in [1, 2] {
        cluster.wait_status(i, "ready");
    }
    let watch = |frames: &str| {
        let out = tool(
            "tandem-stat",
            &["-b", &cluster.url(0), "--watch", "0.3", "--frames", frames],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out)
    };
    let text = watch("1");
    let lag = text
        .split("\nReplication lag\n")
        .nth(1)
        .unwrap_or_else(|| panic!("no lag table in {text}"));
    let backups: Vec<&str> = lag
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty() && !l.starts_with('='))
        .collect();
    assert_eq!(backups.len(), 2, "{lag}");
    for b in &backups {
        let cells: Vec<&str> = b.split_whitespace().collect();
        assert_eq!(
            cells[1], "0",
            "a backup that keeps up lags 0 messages: {lag}"
        );
    }

    // A stopped backup falls behind while a publisher waits for it.
    cluster.config(0, &["add", "queue", "held"]);
    signal(cluster.pid(2), libc::SIGSTOP);
    let sender = common::clients::spawn_ha_send(&cluster.urls, "held", 50, "30");
    let behind = wait_until(Duration::from_secs(4), || {
        let text = watch("1");
        let lag = text.split("\nReplication lag\n").nth(1).unwrap_or("");
        lag.lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .any(|n| n > 0)
    });
    signal(cluster.pid(2), libc::SIGCONT);
    assert!(behind, "the stopped backup's lag never showed");
    sender.wait().assert_success();
}
