//! The real-client load tool (`perf/proton-c/load.c`, built and run by
//! `scripts/bench/proton-load`): a short run against a real `tandemd`, every
//! message sent, accepted and received, and a refused connection reported
//! with exit 1. (Its figures belong in `docs/performance.md`, measured on a
//! release build; this only keeps the tool working.)

mod common;

use std::process::Command;

use common::{free_port, Broker, Json};

fn proton_load(args: &[&str]) -> std::process::Output {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/bench/proton-load");
    Command::new("timeout")
        .arg("60")
        .arg(script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {script}: {e}"))
}

/// Runs the tool, which must succeed and move `count` messages; its report.
fn proton_load_moves(args: &[&str], count: u64) -> Json {
    let out = proton_load(args);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = Json::parse(said.trim()).unwrap_or_else(|e| panic!("{e}: {said}"));
    for key in ["sent", "accepted", "received"] {
        assert_eq!(line[key].as_u64(), Some(count), "{key}: {said}");
    }
    line
}

#[test]
fn the_proton_c_load_tool_moves_every_message_and_reports_failures() {
    let broker = Broker::start(&["--worker-threads", "2"]);
    let url = format!("127.0.0.1:{}", broker.port());
    let line = proton_load_moves(
        &[
            "--url",
            &url,
            "--address",
            "load",
            "--count",
            "5000",
            "--size",
            "1024",
            "--window",
            "200",
        ],
        5000,
    );
    let said = line.to_string();
    assert!(line["msg_per_s"].as_u64().is_some_and(|r| r > 0), "{said}");

    let nobody = format!("127.0.0.1:{}", free_port());
    let out = proton_load(&["--url", &nobody, "--address", "load", "--count", "10"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("connection lost"), "{err}");
}

#[test]
fn messages_an_earlier_run_left_count_as_foreign_and_pairs_spread_over_queues() {
    let broker = Broker::start(&["--worker-threads", "2"]);
    let url = format!("127.0.0.1:{}", broker.port());
    // Ten messages of someone else's on the queue the load will use.
    common::clients::run_python(
        "send.py",
        &[
            "--url",
            &broker.url(),
            "--address",
            "load-0",
            "--count",
            "10",
        ],
    )
    .assert_success();
    let line = proton_load_moves(
        &[
            "--url",
            &url,
            "--address",
            "load",
            "--count",
            "4000",
            "--size",
            "256",
            "--window",
            "100",
            "--pairs",
            "4",
            "--queues",
            "2",
            "--threads",
            "2",
        ],
        4000,
    );
    let said = line.to_string();
    assert_eq!(line["foreign"].as_u64(), Some(10), "{said}");

    // Paced, with one latency per message written down.
    let file = std::env::temp_dir().join(format!("proton-load-{}.lat", broker.port()));
    let out = proton_load(&[
        "--url",
        &url,
        "--address",
        "paced",
        "--count",
        "500",
        "--rate",
        "1000",
        "--latencies",
        file.to_str().expect("utf-8 path"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&file).expect("latencies written");
    let _ = std::fs::remove_file(&file);
    let latencies: Vec<u64> = text.lines().filter_map(|l| l.parse().ok()).collect();
    assert_eq!(latencies.len(), 500, "{text}");
    assert!(latencies.iter().all(|ns| *ns > 0), "{text}");
}
