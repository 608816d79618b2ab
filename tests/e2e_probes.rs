//! The reliability suite's probe scenarios (issue 17), with real brokers:
//!
//! - a backup stopped with SIGSTOP for 10 s under load: the publisher's
//!   settlements resume within 2 x heartbeat, nothing settled is lost, and the
//!   backup rejoins after SIGCONT (here);
//! - 10,000 idle AMQP connections opened and closed: the broker's memory and
//!   file descriptors come back (here);
//! - a primary stopped while another is promoted, then continued: one primary
//!   remains (`e2e_ha_fencing.rs`);
//! - 2,000 random frames after a valid header: each connection closes with a
//!   clear error and other clients are unaffected (`e2e_malformed.rs`).

mod common;
mod ha_cluster;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use common::{
    assert_none_lost, ha_recv_missing, settled_seqs, spawn_ha_send, wait_until, Broker,
    STARTUP_DEADLINE,
};
use ha_cluster::{now, serial, signal, HaCluster, HEARTBEAT, STATUS_DEADLINE};
use tandem_shards::amqp::frame::{split_frame, write_frame, AMQP_HEADER};
use tandem_shards::amqp::performative::{Open, Performative};

/// How long the backup stays stopped (the scenario's 10 s).
const STOP_FOR: Duration = Duration::from_secs(10);

/// Settlements may pause for 2 x heartbeat while the primary waits for the
/// stopped backup, plus this much for scheduling on a loaded 2-core machine.
const SCHEDULING_SLACK: f64 = 1.0;

#[test]
fn a_backup_stopped_for_ten_seconds_under_load_holds_publishers_two_heartbeats_then_rejoins() {
    let _serial = serial();
    let cluster = HaCluster::start_with_primary(Some("all"), 0);
    // About one message per millisecond for longer than the stop.
    let count = 20_000;
    let mut sender = spawn_ha_send(&cluster.urls, "probe-stop", count, "120");
    sender.wait_for_settlements(500, STATUS_DEADLINE);

    let stopped_at = now();
    let stopped = Instant::now();
    signal(cluster.pid(1), libc::SIGSTOP);
    // The stop lasts its 10 s; meanwhile the primary stays the primary and
    // the other backup stays ready.
    while stopped.elapsed() < STOP_FOR {
        assert!(cluster.has_status(0, "active"), "{}", cluster.describe());
        assert!(cluster.has_status(2, "ready"), "{}", cluster.describe());
    }
    let continued_at = now();
    signal(cluster.pid(1), libc::SIGCONT);
    // Back, the dropped backup catches up and is ready again.
    cluster.wait_status(1, "ready");

    let out = sender.wait();
    out.assert_success();
    let lines = out.json_lines();
    let mut times: Vec<f64> = lines
        .iter()
        .filter(|l| l.has("settled"))
        .filter_map(|l| ha_cluster::number(&l["t"]))
        .filter(|&t| t > stopped_at && t < continued_at)
        .collect();
    times.insert(0, stopped_at);
    let pause = times
        .windows(2)
        .map(|w| w[1] - w[0])
        .fold(0.0_f64, f64::max);
    let during = times.len() - 1;
    let two_heartbeats = 2.0 * HEARTBEAT.as_secs_f64();
    eprintln!(
        "backup stopped {:.1} s: settlements paused at most {pause:.3} s \
         (2 x heartbeat = {two_heartbeats} s); {during} settled during the stop",
        continued_at - stopped_at
    );
    assert!(
        pause <= two_heartbeats + SCHEDULING_SLACK,
        "settlements paused {pause:.3} s while a backup was stopped: more than 2 x heartbeat"
    );
    assert!(
        during > 1000,
        "only {during} settlements during the 10 s stop: the publisher did not resume"
    );

    let settled = settled_seqs(&lines);
    assert_eq!(settled.len(), count, "{}", out.stdout());
    let missing = ha_recv_missing(&cluster.urls, "probe-stop", count as u64, 60);
    let lost: Vec<u64> = settled.intersection(&missing).copied().collect();
    assert_none_lost(&lost, settled.len(), "after a backup was stopped for 10 s");
}

/// How many idle connections the probe opens.
const IDLE_CONNECTIONS: usize = 10_000;

/// Memory the broker may keep after the connections are gone, over what it
/// used before them: allocator caches, grown tables. The connections
/// themselves cost far more (measured in the test's output).
const KEPT_MEMORY_LIMIT_KIB: u64 = 16 * 1024;

#[test]
fn ten_thousand_idle_connections_opened_and_closed_give_their_memory_back() {
    // Each side holds one descriptor per connection, and children inherit the
    // limit: raise the soft limit as far as the hard one allows.
    let needed = (IDLE_CONNECTIONS + 500) as libc::rlim_t;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct given.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        assert!(
            limit.rlim_max >= needed,
            "the open-files hard limit {} is below the {needed} this probe needs",
            limit.rlim_max
        );
        if limit.rlim_cur < needed {
            limit.rlim_cur = needed;
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        }
    }
    let connections = IDLE_CONNECTIONS.to_string();
    let broker = Broker::start(&["--max-connections", &connections]);
    let pid = broker.pid();

    // A warm-up round first, so the baseline includes what any connection
    // leaves allocated once (buffers pools, the shards' tables).
    let fds_before = open_fds(pid);
    drop(open_idle(&broker, 200));
    wait_for_fds(pid, fds_before);
    let rss_before = rss_kib(pid);

    let opened = Instant::now();
    let idle = open_idle(&broker, IDLE_CONNECTIONS);
    let open_took = opened.elapsed();
    let rss_open = rss_kib(pid);
    let fds_open = open_fds(pid);
    assert!(
        fds_open >= fds_before + IDLE_CONNECTIONS,
        "{fds_open} descriptors with {IDLE_CONNECTIONS} connections open (before: {fds_before})"
    );
    drop(idle);

    wait_for_fds(pid, fds_before);
    let limit = rss_before + KEPT_MEMORY_LIMIT_KIB;
    let given_back = wait_until(STARTUP_DEADLINE, || rss_kib(pid) <= limit);
    let rss_after = rss_kib(pid);
    eprintln!(
        "RSS {rss_before} KiB before, {rss_open} KiB with {IDLE_CONNECTIONS} idle connections \
         (opened in {open_took:?}), {rss_after} KiB after; descriptors {fds_before} / {fds_open} / {}",
        open_fds(pid)
    );
    assert!(
        given_back,
        "RSS {rss_after} KiB after the connections closed, {rss_before} KiB before \
         ({rss_open} KiB with them open)"
    );

    // And the broker still serves.
    let again = open_idle(&broker, 10);
    assert_eq!(again.len(), 10);
}

/// Opens `n` AMQP connections to `broker` (protocol header and open, no
/// sessions or links), each waiting until the broker's open came back.
fn open_idle(broker: &Broker, n: usize) -> Vec<TcpStream> {
    let mut hello = BytesMut::new();
    hello.put_slice(&AMQP_HEADER);
    write_frame(
        &mut hello,
        0,
        &Performative::Open(Open {
            container_id: "idle-probe".into(),
            ..Default::default()
        }),
    );
    let mut open = Vec::with_capacity(n);
    for i in 0..n {
        let mut stream = TcpStream::connect(("127.0.0.1", broker.port()))
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("read timeout");
        stream.write_all(&hello).expect("write header and open");
        await_open(&mut stream, i);
        open.push(stream);
    }
    open
}

/// Reads the broker's protocol header and its open frame.
fn await_open(stream: &mut TcpStream, i: usize) {
    let deadline = Instant::now() + STATUS_DEADLINE;
    let mut buf = BytesMut::new();
    let mut chunk = [0u8; 4096];
    loop {
        if buf.len() >= AMQP_HEADER.len() {
            assert_eq!(&buf[..AMQP_HEADER.len()], &AMQP_HEADER, "connection {i}");
            let mut frames = buf.clone().split_off(AMQP_HEADER.len());
            if let Ok(Some(_open)) = split_frame(&mut frames, 1 << 20) {
                return;
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) => panic!("connection {i}: the broker closed it before its open"),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                assert!(
                    Instant::now() < deadline,
                    "connection {i}: no open from the broker"
                );
            }
            Err(e) => panic!("connection {i}: {e}"),
        }
    }
}

/// The resident set size of process `pid`, KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmRSS line")
}

/// Waits until process `pid` is back to `fds` open files (the broker has
/// seen every closed connection go).
fn wait_for_fds(pid: u32, fds: usize) {
    let closed = wait_until(STARTUP_DEADLINE, || open_fds(pid) <= fds);
    assert!(
        closed,
        "the broker still has {} descriptors, {fds} before the connections",
        open_fds(pid)
    );
}

/// How many files process `pid` has open.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}
