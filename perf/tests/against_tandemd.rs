//! `tandem-perf` against a real `tandemd`: short throughput and latency runs
//! check their counts, a `--null` run checks the harness against itself, and
//! deleting the queue mid-run must make the run fail (loss is detected).
//!
//! The broker binary: `$TANDEMD` if set, else `tandemd` beside the target
//! directory of this test binary (`target/<profile>/tandemd`). Cargo does not
//! build another package's binaries for these tests, so build it first
//! (`cargo build -p tandem --bin tandemd`; `scripts/test` builds every binary
//! before testing).
//!
//! Every wait polls with a deadline, and every process is killed when its
//! handle is dropped.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use tandem_shards::amqp::codec::Value;
use tandem_shards::client::{Client, ClientOptions};
use tandem_shards::management::{map, ManagementClient, Request};

const STARTUP_DEADLINE: Duration = Duration::from_secs(20);
const RUN_DEADLINE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(20);

fn tandemd_path() -> PathBuf {
    if let Some(p) = std::env::var_os("TANDEMD") {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/<this test> -> target/<profile>/tandemd
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binary sits in target/<profile>/deps");
    let path = profile_dir.join("tandemd");
    assert!(
        path.exists(),
        "{} does not exist: build it first (cargo build -p tandem --bin tandemd) or set TANDEMD",
        path.display()
    );
    path
}

/// A child process killed on drop.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `tandemd` on a free loopback port with a fresh data directory.
struct Broker {
    process: Process,
    port: u16,
    dir: PathBuf,
}

impl Broker {
    fn start() -> Broker {
        let dir = std::env::temp_dir().join(format!(
            "tandem-perf-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).expect("data dir");
        let mut child = Command::new(tandemd_path())
            .args(["--port", "0", "--interface", "127.0.0.1", "--auth", "no"])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting tandemd");
        let stdout = child.stdout.take().expect("piped stdout");
        let process = Process(child);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Keep draining so the broker never blocks on a full pipe.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + STARTUP_DEADLINE;
        let port = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .expect("tandemd printed its listening line in time");
            // "tandemd listening on amqp://127.0.0.1:PORT (N shards)"
            if let Some(rest) = line.split("amqp://").nth(1) {
                let addr = rest.split_whitespace().next().unwrap_or_default();
                let port = addr.rsplit(':').next().and_then(|p| p.parse().ok());
                if let Some(port) = port {
                    break port;
                }
            }
        };
        Broker { process, port, dir }
    }

    fn url(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn management(&self) -> ManagementClient {
        let url = self.url().parse().expect("url");
        let opts = ClientOptions {
            timeout: Some(Duration::from_secs(10)),
            ..Default::default()
        };
        let client = Client::connect(&url, &opts).expect("connects");
        ManagementClient::new(client, Duration::from_secs(10)).expect("management")
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.process.0.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts `tandem-perf ARGS` with stdout piped.
fn spawn_perf(args: &[&str]) -> Process {
    Process(
        Command::new(env!("CARGO_BIN_EXE_tandem-perf"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting tandem-perf"),
    )
}

/// Waits for `p` to exit (killing it after `deadline`) and parses its JSON.
fn finish(mut p: Process, deadline: Duration) -> (ExitStatus, Json, String) {
    let end = Instant::now() + deadline;
    let status = loop {
        if let Some(status) = p.0.try_wait().expect("try_wait") {
            break status;
        }
        assert!(Instant::now() < end, "tandem-perf ran past {deadline:?}");
        std::thread::sleep(POLL); // poll: bounded by the deadline above
    };
    let mut out = String::new();
    let mut err = String::new();
    let _ = p.0.stdout.take().expect("stdout").read_to_string(&mut out);
    let _ = p.0.stderr.take().expect("stderr").read_to_string(&mut err);
    let json = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{out}\nstderr:\n{err}"));
    (status, json, err)
}

fn run_perf(args: &[&str]) -> (ExitStatus, Json, String) {
    finish(spawn_perf(args), RUN_DEADLINE)
}

/// `tandem-perf throughput --json --url URL` with `args` (space-separated).
fn run_throughput(url: &str, args: &str) -> (ExitStatus, Json, String) {
    let args: Vec<&str> = ["throughput", "--json", "--url", url]
        .into_iter()
        .chain(args.split(' '))
        .collect();
    run_perf(&args)
}

fn num(j: &Json, key: &str) -> u64 {
    j[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no number '{key}' in {j:#}"))
}

#[test]
fn throughput_run_receives_every_message_it_sent() {
    let broker = Broker::start();
    let url = broker.url();
    let (status, j, err) = run_perf(&[
        "throughput",
        "--url",
        &url,
        "--address",
        "perf-test",
        "--senders",
        "2",
        "--receivers",
        "2",
        "--messages",
        "20000",
        "--size",
        "256",
        "--create",
        "--json",
    ]);
    assert!(status.success(), "exit {status}: {j:#}\n{err}");
    assert_eq!(j["ok"], true, "{j:#}");
    assert_eq!(num(&j, "sent"), 20_000);
    assert_eq!(num(&j, "accepted"), 20_000);
    assert_eq!(num(&j, "received"), 20_000);
    assert_eq!(num(&j, "missing"), 0);
    assert_eq!(num(&j, "duplicates"), 0);
    assert!(j["received_msg_per_s"].as_f64().unwrap_or(0.0) > 0.0);
    // The broker's CPU comes from the process listening on its port.
    assert_eq!(
        j["cpu"]["broker_pids"],
        serde_json::json!([broker.process.0.id()])
    );
    assert!(j["cpu"]["broker_us_per_msg"].as_f64().is_some(), "{j:#}");
    assert!(j["cpu"]["sender_us_per_msg"].as_f64().is_some(), "{j:#}");
    // Every at-least-once message's publish→settle time, in order.
    let settle = &j["settle_latency"];
    assert_eq!(num(settle, "count"), 20_000, "{j:#}");
    let p50 = settle["p50_us"].as_f64().unwrap_or(0.0);
    let p99 = settle["p99_us"].as_f64().unwrap_or(0.0);
    assert!(p50 > 0.0 && p50 <= p99, "{settle:#}");
}

#[test]
fn latency_run_reports_percentiles_and_its_distribution_plots() {
    let broker = Broker::start();
    let url = broker.url();
    let hgrm = broker.dir.join("run.hgrm");
    let svg = broker.dir.join("run.svg");
    let (status, j, err) = run_perf(&[
        "latency",
        "--url",
        &url,
        "--address",
        "perf-latency",
        "--rate",
        "2000",
        "--duration",
        "1s",
        "--size",
        "128",
        "--hgrm",
        hgrm.to_str().expect("utf-8 path"),
        "--json",
    ]);
    assert!(status.success(), "exit {status}: {j:#}\n{err}");
    let sent = num(&j, "sent");
    // A sender descheduled near the end skips what fell due meanwhile.
    assert!(
        (1_000..=2_000).contains(&sent),
        "{sent} sent at 2000/s for 1 s"
    );
    assert_eq!(num(&j, "received"), sent);
    let l = &j["latency"];
    assert_eq!(num(l, "count"), sent);
    let p = |k: &str| l[k].as_f64().unwrap_or(f64::NAN);
    assert!(p("p50_us") > 0.0, "{l:#}");
    assert!(
        p("p50_us") <= p("p99_us") && p("p99_us") <= p("max_us"),
        "{l:#}"
    );

    let text = std::fs::read_to_string(&hgrm).expect("hgrm written");
    assert!(text.contains("1/(1-Percentile)"), "{text}");
    let (status, j, err) = run_perf(&[
        "plot",
        "--out",
        svg.to_str().expect("utf-8 path"),
        hgrm.to_str().expect("utf-8 path"),
        "--json",
    ]);
    assert!(status.success(), "exit {status}: {j:#}\n{err}");
    let drawn = std::fs::read_to_string(&svg).expect("svg written");
    assert!(
        drawn.starts_with("<svg") && drawn.contains(">run<"),
        "{drawn}"
    );
}

#[test]
fn null_run_generates_and_absorbs_every_message_without_a_broker() {
    let (status, j, err) = run_perf(&[
        "throughput",
        "--null",
        "--messages",
        "20000",
        "--size",
        "256",
        "--json",
    ]);
    assert!(status.success(), "exit {status}: {j:#}\n{err}");
    assert_eq!(num(&j, "sent"), 20_000);
    assert_eq!(num(&j, "received"), 20_000);
    assert_eq!(num(&j, "missing"), 0);
    assert!(j["cpu"]["null_sink_us_per_msg"].as_f64().is_some(), "{j:#}");
}

#[test]
fn deleting_the_queue_mid_run_makes_throughput_exit_non_zero() {
    let broker = Broker::start();
    let url = broker.url();
    // Two senders outrun one receiver, so the queue holds messages when it is
    // deleted. Tandem settles a publisher's messages late, so the lost ones show
    // as accepted but missing, rejected, or never settled, depending on timing.
    let run = spawn_perf(&[
        "throughput",
        "--url",
        &url,
        "--address",
        "perf-doomed",
        "--senders",
        "2",
        "--receivers",
        "1",
        "--duration",
        "30s",
        "--size",
        "256",
        "--idle-timeout",
        "5s",
        "--json",
    ]);
    let mut mgmt = broker.management();
    let read = Request::new("READ", "queue", Some("perf-doomed"), map(vec![]));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let reply = mgmt.call(&read).expect("management answers");
        let depth = reply.body.map_get("depth").and_then(Value::as_u64);
        if reply.is_success() && depth.is_some_and(|d| d > 0) {
            break;
        }
        assert!(Instant::now() < deadline, "the queue never held messages");
        std::thread::sleep(POLL); // poll: bounded by the deadline above
    }
    let delete = Request::new(
        "DELETE",
        "queue",
        Some("perf-doomed"),
        map(vec![("force", Value::Bool(true))]),
    );
    let reply = mgmt.call(&delete).expect("management answers");
    assert!(reply.is_success(), "delete: {reply:?}");
    mgmt.close();

    let (status, j, err) = finish(run, RUN_DEADLINE);
    assert_eq!(status.code(), Some(1), "{j:#}\n{err}");
    assert_eq!(j["ok"], false);
    let undelivered = num(&j, "missing") + num(&j, "rejected") + num(&j, "unsettled");
    assert!(undelivered > 0, "the lost messages are counted: {j:#}");
    let errors = j["errors"].to_string();
    assert!(errors.contains("resource-deleted"), "{errors}");
}

#[test]
fn queues_spread_senders_and_receivers_over_several_queues() {
    let broker = Broker::start();
    let url = broker.url();
    let (status, j, err) = run_throughput(
        &url,
        "--address spread --queues 2 --senders 2 --receivers 2 --messages 4000 --create",
    );
    assert!(status.success(), "exit {status}: {j:#}\n{err}");
    assert_eq!(num(&j, "received"), 4_000);
    assert_eq!(num(&j, "missing"), 0);
    // Both queues were declared and used; the plain address was not.
    let mut mgmt = broker.management();
    for (name, found) in [("spread-0", true), ("spread-1", true), ("spread", false)] {
        let reply = mgmt
            .call(&Request::new("READ", "queue", Some(name), map(Vec::new())))
            .expect("management answers");
        assert_eq!(reply.is_success(), found, "{name}: {reply:?}");
    }
    // More queues than receivers would leave a queue nobody drains.
    let (status, j, _) = run_throughput(&url, "--queues 3 --senders 3 --receivers 2 --messages 10");
    assert!(!status.success());
    assert!(
        j["error"]
            .as_str()
            .is_some_and(|e| e.contains("--queues 3")),
        "{j:#}"
    );
}

#[test]
fn senders_0_drains_what_an_earlier_run_left_and_fails_when_short() {
    let broker = Broker::start();
    let url = broker.url();
    let (status, j, err) = run_throughput(&url, "--address left --receivers 0 --messages 500");
    assert!(status.success(), "exit {status}: {j:#}\n{err}");
    assert_eq!(num(&j, "accepted"), 500);

    let (status, j, err) = run_throughput(&url, "--address left --senders 0 --messages 500");
    assert!(status.success(), "exit {status}: {j:#}\n{err}");
    assert_eq!(num(&j, "received"), 500, "{j:#}");

    // Nothing is left: a drain of one more gives up and fails.
    let (status, j, _) = run_throughput(
        &url,
        "--address left --senders 0 --messages 1 --idle-timeout 500ms",
    );
    assert!(!status.success(), "{j:#}");
    assert_eq!(j["ok"], false, "{j:#}");
}

/// The Proton-C load client, built by `scripts/bench/proton-load --build`
/// (which installs gcc and libqpid-proton11-dev when missing).
fn proton_load_client() -> PathBuf {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/bench/proton-load");
    let out = Command::new(script)
        .arg("--build")
        .output()
        .unwrap_or_else(|e| panic!("running {script}: {e}"));
    assert!(
        out.status.success(),
        "{script} --build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

#[test]
fn compare_puts_a_proton_c_row_beside_each_broker_for_throughput_and_latency() {
    let client = proton_load_client();
    let broker = Broker::start();
    let target = format!("tandem={}/perf-compare", broker.url());
    for scenario in [
        "throughput --messages 4000 --size 256 --window 100 --senders 2 --receivers 2 --queues 2",
        "latency --rate 2000 --duration 1s --size 128",
    ] {
        let (status, j, err) = run_perf(&[
            "compare",
            "--rounds",
            "1",
            "--no-null",
            "--no-limit",
            "--scenario",
            scenario,
            "--broker",
            &target,
            "--proton-c",
            client.to_str().expect("utf-8 path"),
            "--json",
        ]);
        assert!(status.success(), "{scenario}: exit {status}: {j:#}\n{err}");
        let rows = j["rows"].as_array().expect("rows");
        let names: Vec<&str> = rows.iter().filter_map(|r| r["name"].as_str()).collect();
        assert_eq!(names, ["tandem", "tandem proton-c"], "{scenario}");
        let row = &rows[1];
        assert_eq!(row["kind"], "proton-c", "{row:#}");
        assert_eq!(num(row, "failed_rounds"), 0, "{row:#}");
        let run = &row["runs"][0];
        let sent = num(run, "sent");
        assert!(sent > 0, "{run:#}");
        assert_eq!(num(run, "accepted"), sent, "{run:#}");
        assert_eq!(num(run, "received"), sent, "{run:#}");
        assert!(
            run["cpu"]["broker_us_per_msg"]
                .as_f64()
                .is_some_and(|v| v > 0.0),
            "broker CPU measured: {run:#}"
        );
        assert!(
            row["median"]["client_us_per_msg"].as_f64().is_some(),
            "{row:#}"
        );
        if scenario.starts_with("latency") {
            let l = &run["latency"];
            assert_eq!(num(l, "count"), sent, "one latency per message: {l:#}");
            let p = |k: &str| l[k].as_f64().unwrap_or(f64::NAN);
            assert!(p("p50_us") > 0.0 && p("p50_us") <= p("p99_us"), "{l:#}");
        }
    }
}
