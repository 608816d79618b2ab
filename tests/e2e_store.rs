//! The persistent store with real processes: durable messages on durable
//! queues survive a kill -9 of the broker under a Qpid Proton publisher, a
//! torn journal tail is cut at the last good record, a second broker on the
//! same data-dir is refused, and damage in the middle of a segment refuses
//! start-up naming the file and the repair option.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::tools::{stderr, tool};
use common::{run_python, run_tandemd, spawn_python, Broker, ClientProcess, Json};

/// How long a Proton client may run before it gives up.
const CLIENT_TIMEOUT: &str = "60";

fn durable_queue(broker: &Broker, name: &str) {
    let out = tool(
        "tandem-config",
        &["-b", &broker.url(), "add", "queue", name, "--durable"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Sends `count` durable messages to `queue` with the Proton sender; all must
/// be accepted.
fn send_durable(broker: &Broker, queue: &str, count: usize, extra: &[&str]) {
    let (url, count) = (broker.url(), count.to_string());
    let mut args = vec![
        "--url",
        &url,
        "--address",
        queue,
        "--count",
        &count,
        "--durable",
    ];
    args.extend_from_slice(extra);
    run_python("send.py", &args).assert_success();
}

/// Runs a second `tandemd` on `data_dir` (with `extra`) until it exits or
/// `deadline` passes.
fn tandemd_on(data_dir: &Path, extra: &[&str], deadline: Duration) -> common::ClientOutput {
    let dir = data_dir.to_str().expect("UTF-8");
    let mut args = vec!["--port", "0", "--data-dir", dir];
    args.extend_from_slice(extra);
    run_tandemd(&args, deadline)
}

/// A one-shard broker whose durable `queue` holds `count` durable messages.
fn broker_holding(queue: &str, count: usize) -> Broker {
    let broker = Broker::start(&["--worker-threads", "1"]);
    durable_queue(&broker, queue);
    send_durable(&broker, queue, count, &[]);
    broker
}

/// Sequence numbers the publisher saw settled.
fn settled(sender: &ClientProcess) -> BTreeSet<u64> {
    common::settled_seqs(&sender.json_lines())
}

/// Receives until every one of 0..`expect` arrived (or 20 s passed); those
/// that did (the receiver's summary lists the missing ones).
fn drain(broker: &Broker, queue: &str, expect: usize) -> BTreeSet<u64> {
    let missing = common::ha_recv_missing(&broker.url(), queue, expect as u64, 20);
    (0..expect as u64)
        .filter(|s| !missing.contains(s))
        .collect()
}

/// The journal segment files of a broker, newest last.
fn segments(data_dir: &Path) -> Vec<PathBuf> {
    let mut all: Vec<PathBuf> = std::fs::read_dir(data_dir.join("store"))
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|shard| {
            std::fs::read_dir(shard.path())
                .into_iter()
                .flatten()
                .flatten()
        })
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "jnl"))
        .collect();
    all.sort_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0));
    all
}

#[test]
fn settled_durable_messages_survive_a_kill_9_under_a_proton_publisher() {
    const COUNT: usize = 3000;
    let broker = Broker::start(&["--worker-threads", "2"]);
    durable_queue(&broker, "orders");
    let mut sender = common::spawn_ha_send(&broker.url(), "orders", COUNT, CLIENT_TIMEOUT);
    sender.wait_for_settlements(500, Duration::from_secs(30));
    let before_kill = settled(&sender);
    let broker = broker.restart();
    assert!(
        broker
            .stderr()
            .contains("store: recovered 1 durable queues"),
        "{}",
        broker.stderr()
    );
    // The publisher reconnects and sends what was not settled again.
    let out = sender.wait();
    out.assert_success();
    let all_settled = settled_lines(&out);
    assert_eq!(all_settled.len(), COUNT, "every message settled in the end");
    let received = drain(&broker, "orders", COUNT);
    let lost: Vec<u64> = before_kill.difference(&received).copied().collect();
    common::assert_none_lost(&lost, before_kill.len(), "after the kill -9 and restart");
    assert!(before_kill.len() >= 500, "the kill came under load");
}

fn settled_lines(out: &common::ClientOutput) -> BTreeSet<u64> {
    out.json_lines()
        .iter()
        .filter_map(|j| j["settled"].as_u64())
        .collect()
}

#[test]
fn a_torn_journal_tail_is_cut_and_everything_before_it_kept() {
    let broker = broker_holding("q", 100);
    let mut broker = broker;
    broker.kill();
    let segment = segments(&broker.data_dir())
        .pop()
        .expect("a journal segment");
    // The last record loses its last bytes, as a crash mid-write leaves it.
    let bytes = std::fs::read(&segment).expect("segment");
    let end = bytes.iter().rposition(|b| *b != 0).expect("records") + 1;
    std::fs::write(&segment, &bytes[..end - 3]).expect("tear");
    let broker = broker.restart();
    let log = broker.stderr();
    assert!(
        log.contains("cut a torn tail of") && log.contains(&segment.display().to_string()),
        "{log}"
    );
    let out = run_python(
        "recv.py",
        &[
            "--url",
            &broker.url(),
            "--address",
            "q",
            "--count",
            "99",
            "--timeout",
            "10",
        ],
    );
    out.assert_success();
    assert_eq!(
        out.bodies(),
        common::expected_bodies("", 99),
        "the 99 whole records"
    );
}

#[test]
fn a_second_broker_on_the_same_data_dir_is_refused() {
    let broker = Broker::start(&["--worker-threads", "1"]);
    let data_dir = broker.data_dir();
    let out = tandemd_on(&data_dir, &[], Duration::from_secs(10));
    assert!(!out.status.success());
    let said = &out.stderr;
    assert!(
        said.contains("is in use by another tandemd")
            && said.contains(&format!("pid {}", broker.pid())),
        "{said}"
    );
}

#[test]
fn damage_in_the_middle_of_a_segment_refuses_start_up_until_repaired() {
    let broker = broker_holding("q", 50);
    let mut broker = broker;
    broker.kill();
    let segment = segments(&broker.data_dir()).pop().expect("a segment");
    let mut bytes = std::fs::read(&segment).expect("segment");
    bytes[4096 + 20] ^= 0xff; // inside the first record
    std::fs::write(&segment, &bytes).expect("damage");
    let data_dir = broker.data_dir();
    let out = tandemd_on(&data_dir, &[], Duration::from_secs(10));
    assert!(!out.status.success(), "started on a damaged journal");
    let said = &out.stderr;
    assert!(
        said.contains(&segment.display().to_string())
            && said.contains("offset 4096")
            && said.contains("--store-repair"),
        "{said}"
    );
    let out = tandemd_on(
        &data_dir,
        &["--store-repair", "--log-enable", "info+"],
        Duration::from_secs(3),
    );
    // With the repair option it starts (and is stopped by the deadline).
    assert!(
        out.stdout().contains("listening on"),
        "{}\n{}",
        out.stdout(),
        out.stderr
    );
}

/// A small ext4 filesystem on a loop device, unmounted when dropped.
struct SmallDisk {
    mount: PathBuf,
    image: PathBuf,
}

impl SmallDisk {
    /// `None` when not root (mounting needs it); a root that cannot mount
    /// fails the test.
    fn new(dir: &Path, megabytes: u32) -> Option<SmallDisk> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: mounting a small filesystem needs root");
            return None;
        }
        let image = dir.join("disk.img");
        let mount = dir.join("disk");
        std::fs::create_dir_all(&mount).expect("mount point");
        let sh = |cmd: &str| {
            let out = std::process::Command::new("sh")
                .args(["-c", cmd])
                .output()
                .expect("sh");
            assert!(
                out.status.success(),
                "{cmd}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        sh(&format!("truncate -s {megabytes}M {}", image.display()));
        sh(&format!("mkfs.ext4 -q -F {}", image.display()));
        sh(&format!(
            "mount -o loop {} {}",
            image.display(),
            mount.display()
        ));
        Some(SmallDisk { mount, image })
    }

    /// Fills the filesystem, leaving `free` bytes; the filler's path.
    fn fill(&self, free: u64) -> PathBuf {
        use std::io::Write;
        let filler = self.mount.join("filler");
        let mut f = std::fs::File::create(&filler).expect("filler");
        let chunk = vec![0xa5u8; 64 * 1024];
        let mut written = 0u64;
        while f.write_all(&chunk).is_ok() {
            written += chunk.len() as u64;
        }
        let _ = f.sync_all();
        f.set_len(written.saturating_sub(free))
            .expect("shrink the filler");
        f.sync_all().expect("sync the filler");
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.mount)
            .status();
        let _ = std::fs::remove_file(&self.image);
    }
}

#[test]
fn a_full_disk_refuses_persistent_messages_and_keeps_everything_settled() {
    let scratch = common::TempDir::new("small-disk");
    let Some(disk) = SmallDisk::new(scratch.path(), 24) else {
        return;
    };
    let store_dir = disk.mount.join("store");
    let store = store_dir.to_str().expect("UTF-8").to_owned();
    let broker = Broker::start(&[
        "--worker-threads",
        "1",
        "--store-dir",
        &store,
        "--store-segment-size",
        "1048576",
    ]);
    durable_queue(&broker, "q");
    let filler = disk.fill(1536 * 1024);
    const COUNT: usize = 3000;
    let sender = spawn_python(
        "send.py",
        &[
            "--url",
            &broker.url(),
            "--address",
            "q",
            "--count",
            &COUNT.to_string(),
            "--size",
            "1024",
            "--durable",
            "--timeout",
            "60",
        ],
    );
    // The disk fills: the write that failed is tried again (its publishers
    // wait) and new persistent messages are refused at once.
    let refusing = common::wait_until(Duration::from_secs(30), || {
        broker.stderr().contains("persistent messages are refused")
    });
    assert!(refusing, "the disk never filled: {}", broker.stderr());
    let refused = run_python(
        "send.py",
        &[
            "--url",
            &broker.url(),
            "--address",
            "q",
            "--count",
            "20",
            "--durable",
            "--timeout",
            "10",
        ],
    );
    let said = refused.summary();
    assert_eq!(said["rejected"].as_u64(), Some(20), "{said:?}");
    assert_eq!(
        said["first_rejection"]["condition"].as_str(),
        Some("amqp:resource-limit-exceeded"),
        "{said:?}"
    );
    assert!(
        said["first_rejection"]["description"]
            .as_str()
            .is_some_and(|d| d.contains("cannot write persistent messages to disk")),
        "{said:?}"
    );
    // Consumers are still served.
    run_python(
        "recv.py",
        &[
            "--url",
            &broker.url(),
            "--address",
            "q",
            "--count",
            "50",
            "--timeout",
            "10",
        ],
    )
    .assert_success();
    // Space returns: the failed write goes through, its publishers are settled.
    std::fs::remove_file(&filler).expect("free the space");
    let out = sender.wait();
    out.assert_success();
    let summary = out.summary();
    let accepted = summary["accepted"].as_u64().expect("accepted");
    let rejected = summary["rejected"].as_u64().expect("rejected");
    assert_eq!(accepted + rejected, COUNT as u64, "{summary:?}");
    assert!(accepted > 50, "{summary:?}");
    // And new ones are accepted again.
    send_durable(&broker, "q", 100, &["--prefix", "later-"]);
    // Nothing settled was lost: after a kill -9 the queue holds what was
    // accepted and not consumed (a consumed message may come back, never a
    // settled one go missing).
    let broker = broker.restart();
    let expected = accepted + 100 - 50;
    let out = tool("tandem-stat", &["-b", &broker.url(), "-q", "--json"]);
    let rows = Json::parse(&common::tools::stdout(&out)).expect("json");
    let depth = rows
        .as_array()
        .and_then(|r| r.iter().find(|q| q["name"].as_str() == Some("q")))
        .and_then(|q| q["depth"].as_u64())
        .expect("queue q");
    assert!(
        (expected..=expected + 50).contains(&depth),
        "after the restart q holds {depth}, expected {expected} (accepted {accepted})"
    );
}

#[test]
fn delivery_counts_survive_a_restart() {
    let broker = broker_holding("counted", 5);
    // A consumer takes all five and dies holding them: each delivery failed once.
    let mut holder = spawn_python(
        "recv.py",
        &[
            "--url",
            &broker.url(),
            "--address",
            "counted",
            "--count",
            "5",
            "--no-settle",
            "--hold",
            "--timeout",
            "30",
        ],
    );
    holder.wait_for_messages(5, Duration::from_secs(20));
    holder.kill();
    let redelivered = common::wait_until(Duration::from_secs(10), || {
        let out = tool("tandem-stat", &["-b", &broker.url(), "-q", "--json"]);
        common::tools::stdout(&out).contains("\"redeliveries\":5")
    });
    assert!(
        redelivered,
        "the broker never counted the failed deliveries"
    );
    let broker = broker.restart();
    let out = run_python(
        "recv.py",
        &[
            "--url",
            &broker.url(),
            "--address",
            "counted",
            "--count",
            "5",
            "--timeout",
            "10",
        ],
    );
    out.assert_success();
    for message in out.messages() {
        assert_eq!(
            message["delivery_count"].as_u64(),
            Some(1),
            "the delivery count came back with the message: {message}"
        );
    }
    assert_eq!(out.messages().len(), 5);
}

#[test]
fn durable_queues_exchanges_and_bindings_survive_a_restart_and_transient_ones_do_not() {
    let broker = Broker::start(&["--worker-threads", "2"]);
    let config = |broker: &Broker, args: &[&str]| {
        let url = broker.url();
        let mut all = vec!["-b", url.as_str()];
        all.extend_from_slice(args);
        let out = tool("tandem-config", &all);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        common::tools::stdout(&out)
    };
    config(
        &broker,
        &["add", "exchange", "topic", "events", "--durable"],
    );
    config(&broker, &["add", "exchange", "topic", "scratch"]);
    config(
        &broker,
        &[
            "add",
            "queue",
            "audit",
            "--durable",
            "--max-queue-count",
            "7",
        ],
    );
    config(&broker, &["add", "queue", "tmp"]);
    config(&broker, &["bind", "events", "audit", "order.#"]);
    config(&broker, &["bind", "amq.direct", "audit", "k"]);
    config(&broker, &["bind", "events", "tmp", "x"]);
    // Deleting a transient queue leaves the durable configuration as it was.
    config(&broker, &["del", "queue", "tmp"]);
    let broker = broker.restart();
    let queues = config(&broker, &["queues", "--json"]);
    assert!(
        queues.contains("\"audit\"") && queues.contains("\"max-queue-count\":7"),
        "{queues}"
    );
    assert!(!queues.contains("\"tmp\""), "{queues}");
    let exchanges = config(&broker, &["exchanges", "--json"]);
    assert!(exchanges.contains("\"events\""), "{exchanges}");
    assert!(!exchanges.contains("\"scratch\""), "{exchanges}");
    let bindings = config(&broker, &["bindings", "--json"]);
    assert!(
        bindings.contains("order.#") && bindings.contains("\"k\""),
        "{bindings}"
    );
    // And a message routed through the recovered binding arrives.
    run_python(
        "send.py",
        &[
            "--url",
            &broker.url(),
            "--address",
            "events",
            "--count",
            "1",
            "--subject",
            "order.new",
        ],
    )
    .assert_success();
    let out = run_python(
        "recv.py",
        &[
            "--url",
            &broker.url(),
            "--address",
            "audit",
            "--count",
            "1",
            "--timeout",
            "10",
        ],
    );
    out.assert_success();
}
