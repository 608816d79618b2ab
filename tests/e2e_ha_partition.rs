//! A network partition with real brokers on three hosts: network namespaces
//! made by the test, each broker with a client network (reached from the root
//! namespace, where the clients and tools run) and a cluster network (the
//! brokers' links to each other). The primary's cluster link goes down, the
//! test promotes another broker as a resource manager would, and the link
//! comes back. With `ha-min-backups 1` the cut-off primary settles nothing
//! after twice the heartbeat; after the heal one primary remains within
//! 2 x `link-maintenance-interval` + heartbeat; a Qpid Proton publisher in the
//! root namespace loses no settled message.

mod common;
mod ha_cluster;

use std::process::Command;
use std::time::{Duration, Instant};

use common::netns::{can_make_namespaces, ip, ip_ok, Hosts, Layout};
use common::{assert_none_lost, ha_recv_missing, settled_seqs, spawn_ha_send, wait_until, Broker};
use ha_cluster::{now, number, serial, stdout, tool, HEARTBEAT, STATUS_DEADLINE};

/// The clients' virtual IP, on the client network.
const VIP: &str = "10.77.1.100";

/// `--link-maintenance-interval`.
const MAINTENANCE: Duration = Duration::from_millis(200);

/// Three hosts, each with a client network (reached from the root
/// namespace, where the clients and tools run) and a cluster network.
const NET: Layout = Layout {
    prefix: "tdm",
    net: 77,
    hosts: 3,
    clients_ns: false,
};

/// The clients' virtual IP moves to host `i`, announced with a gratuitous
/// ARP (as a resource manager's IP resource does).
fn take_vip(i: usize) {
    let ns = NET.ns(i);
    ip_ok(&[
        "-n",
        &ns,
        "addr",
        "add",
        &format!("{VIP}/24"),
        "dev",
        "client",
    ]);
    let announced = Command::new("ip")
        .args(["netns", "exec", &ns, "arping", "-q", "-U", "-c", "1"])
        .args(["-I", "client", "-s", VIP, VIP])
        .status();
    if !announced.is_ok_and(|s| s.success()) {
        // Without arping the root namespace would keep the old address
        // until its neighbour entry expires.
        let _ = ip(&["neigh", "flush", "to", VIP]);
    }
}

fn client_url(i: usize) -> String {
    format!("{}:5672", NET.client_address(i))
}

fn status(i: usize) -> String {
    let out = tool("tandem-ha", &["-b", &client_url(i), "status"], 2);
    stdout(&out).trim().to_owned()
}

fn wait_status(i: usize, want: &str) {
    let mut last = String::new();
    let reached = wait_until(STATUS_DEADLINE, || {
        last = status(i);
        last == want
    });
    assert!(reached, "host {i} is '{last}', not {want}");
}

/// Starts a broker on each host (cluster network in `ha-brokers-url`,
/// client network in `ha-public-url`), with `extra` arguments; and the
/// public URL.
fn start_brokers(extra: &[&str]) -> (Vec<Broker>, String) {
    let brokers_url = (0..3)
        .map(|i| format!("{}:5672", NET.cluster_address(i)))
        .collect::<Vec<_>>()
        .join(",");
    let public_url = (0..3).map(client_url).collect::<Vec<_>>().join(",");
    let heartbeat = HEARTBEAT.as_secs().to_string();
    let maintenance = MAINTENANCE.as_secs_f64().to_string();
    let brokers = (0..3)
        .map(|i| {
            let mut args = vec![
                "--interface",
                "0.0.0.0",
                "--port",
                "5672",
                "--ha-cluster",
                "yes",
                "--ha-brokers-url",
                &brokers_url,
                "--ha-public-url",
                &public_url,
                "--ha-replicate",
                "all",
                "--link-heartbeat-interval",
                &heartbeat,
                "--link-maintenance-interval",
                &maintenance,
                "--worker-threads",
                "1",
            ];
            args.extend_from_slice(extra);
            Broker::start_in(&NET.ns(i), &args)
        })
        .collect();
    (brokers, public_url)
}

/// The three hosts with a broker each (`extra` arguments), host 0 promoted
/// and the others ready; the public URL. (Bound in this order, the brokers
/// go before the hosts.)
fn running_cluster(extra: &[&str]) -> (Hosts, Vec<Broker>, String) {
    let hosts = NET.make();
    let (brokers, public_url) = start_brokers(extra);
    assert!(
        wait_until(STATUS_DEADLINE, || promote(0)),
        "host 0 never promotable"
    );
    wait_status(1, "ready");
    wait_status(2, "ready");
    (hosts, brokers, public_url)
}

fn promote(i: usize) -> bool {
    tool(
        "tandem-ha",
        &["-b", &client_url(i), "--cluster-manager", "promote"],
        5,
    )
    .status
    .success()
}

#[test]
fn a_cut_off_primary_settles_nothing_and_one_primary_remains_after_the_heal() {
    let _serial = serial();
    if !can_make_namespaces() {
        return;
    }
    let (hosts, _brokers, public_url) = running_cluster(&["--ha-min-backups", "1"]);

    let count = 4000;
    let mut sender = spawn_ha_send(&public_url, "parted", count, "120");
    sender.wait_for_settlements(200, STATUS_DEADLINE);

    hosts.cut(0);
    let cut_at = now();
    let cut = Instant::now();
    // The resource manager promotes host 1 once it is sure host 0 is gone
    // (here: once host 1 stopped hearing it, twice the heartbeat).
    assert!(
        wait_until(STATUS_DEADLINE, || promote(1)),
        "host 1 never promotable: {}",
        status(1)
    );
    wait_status(1, "active");
    // Both say active now; the cut-off one withholds every settlement.
    assert_eq!(status(0), "active");
    let withholding = wait_until(STATUS_DEADLINE, || {
        let out = tool("tandem-ha", &["-b", &client_url(0), "status"], 2);
        String::from_utf8_lossy(&out.stderr).contains("0 of ha-min-backups 1")
    });
    assert!(withholding, "host 0 never said it withholds");
    let cut_for = cut.elapsed();

    hosts.heal(0);
    let healed_at = now();
    let healed = Instant::now();
    let bound = MAINTENANCE * 2 + HEARTBEAT;
    let one_primary = wait_until(bound * 4, || status(0) != "active");
    let took = healed.elapsed();
    assert!(
        one_primary,
        "host 0 still active {:?} after the heal",
        bound * 4
    );
    assert!(
        took <= bound,
        "two primaries {took:?} after the heal, more than {bound:?}"
    );
    assert_eq!(status(1), "active");
    eprintln!("cut {cut_for:?}; one primary {took:?} after the heal");

    // Nothing settled by the cut-off primary after 2 x heartbeat, until the heal.
    let out = sender.wait();
    let lines = out.json_lines();
    let window = cut_at + 2.0 * HEARTBEAT.as_secs_f64();
    let settled_in_window: Vec<u64> = lines
        .iter()
        .filter(|l| l["settled"].as_u64().is_some())
        .filter(|l| number(&l["t"]).is_some_and(|t| t > window && t < healed_at))
        .filter_map(|l| l["settled"].as_u64())
        .collect();
    assert!(
        settled_in_window.is_empty(),
        "the cut-off primary settled {} messages, e.g. {:?}",
        settled_in_window.len(),
        &settled_in_window[..settled_in_window.len().min(10)]
    );
    let settled = settled_seqs(&lines);
    assert_eq!(settled.len(), count, "{}", out.stdout());
    let missing = ha_recv_missing(&public_url, "parted", count as u64, 60);
    let lost: Vec<u64> = settled
        .iter()
        .copied()
        .filter(|s| missing.contains(s))
        .collect();
    assert_none_lost(&lost, settled.len(), "after the partition healed");
}

#[test]
fn a_client_fails_over_from_an_unreachable_primary() {
    let _serial = serial();
    if !can_make_namespaces() {
        return;
    }
    let (hosts, _brokers, public_url) = running_cluster(&[]);
    let count = 4000;
    let mut sender = spawn_quick_sender(&public_url, "unreachable", count);
    sender.wait_for_settlements(200, STATUS_DEADLINE);
    // The primary's host drops off both networks: no reset, no close; the
    // client's connection and connects to it just go unanswered.
    hosts.isolate(0);
    let cut_at = now();
    // The resource manager promotes host 1 once host 1 stopped hearing it.
    assert!(
        wait_until(STATUS_DEADLINE, || promote(1)),
        "host 1 never promotable"
    );
    let promoted_at = now();
    let out = sender.wait();
    out.assert_success();
    let lines = out.json_lines();
    let first_after = cut_at
        + back_in_service(&lines, promoted_at)
            .0
            .map(|t| t + promoted_at - cut_at)
            .expect("a settlement after the promotion");
    let reconnected = lines
        .iter()
        .filter(|l| {
            l["connected"]
                .as_str()
                .is_some_and(|u| u.ends_with(&client_url(1)))
        })
        .filter_map(|l| number(&l["t"]))
        .find(|&t| t > cut_at);
    let gave_up = lines.iter().filter(|l| l.has("connect_timeout")).count();
    eprintln!(
        "unreachable primary: promoted {:.3} s after the cut; the client connected to it {:?} after the cut ({gave_up} attempts given up at the connect timeout) and had its first settlement there {:.3} s after the cut",
        promoted_at - cut_at,
        reconnected.map(|t| format!("{:.3} s", t - cut_at)),
        first_after - cut_at,
    );
    let settled = settled_seqs(&lines);
    assert_eq!(settled.len(), count, "{}", out.stdout());
    // Bounded by the client's heartbeat and connect timeout (and the
    // promotion), not by TCP's own timeouts towards the dead host.
    let bound = (2.0 * HEARTBEAT.as_secs_f64() + 1.0).max(promoted_at - cut_at + 2.0);
    assert!(
        first_after - cut_at < bound,
        "the client took {:.3} s after the cut",
        first_after - cut_at
    );
}

/// A Proton publisher (`ha_send.py`) of `count` messages to `address` along
/// `urls`, with a 1 s AMQP heartbeat and a 1 s connect timeout (its own
/// timer: Proton has none), as `docs/ha.md` advises.
fn spawn_quick_sender(urls: &str, address: &str, count: usize) -> common::ClientProcess {
    let quick = ["--heartbeat", "1", "--connect-timeout", "1"];
    common::spawn_ha_send_with(urls, address, count, "60", &quick)
}

/// Seconds from `after` to a publisher's first settlement, and to its first
/// connection, after it.
fn back_in_service(lines: &[common::Json], after: f64) -> (Option<f64>, Option<f64>) {
    let first = |key: &str| {
        lines
            .iter()
            .filter(|l| l.has(key))
            .filter_map(|l| number(&l["t"]))
            .find(|&t| t > after)
            .map(|t| t - after)
    };
    (first("settled"), first("connected"))
}

#[test]
fn a_client_of_the_virtual_ip_fails_over_from_an_unreachable_primary() {
    let _serial = serial();
    if !can_make_namespaces() {
        return;
    }
    let (hosts, _brokers, _) = running_cluster(&[]);
    take_vip(0);
    let vip_url = format!("{VIP}:5672");
    let count = 4000;
    let mut sender = spawn_quick_sender(&vip_url, "vip", count);
    sender.wait_for_settlements(200, STATUS_DEADLINE);
    hosts.isolate(0);
    let cut_at = now();
    // The resource manager sees the primary's address stop answering (its
    // monitor times out), promotes host 1 and moves the address to it.
    let silent = wait_until(STATUS_DEADLINE, || {
        !tool("tandem-ha", &["-b", &vip_url, "status"], 1)
            .status
            .success()
    });
    assert!(silent, "the isolated primary still answers");
    assert!(
        wait_until(STATUS_DEADLINE, || promote(1)),
        "host 1 never promotable"
    );
    let moved_at = now();
    take_vip(1);
    let out = sender.wait();
    out.assert_success();
    let lines = out.json_lines();
    let (settled, connected) = back_in_service(&lines, moved_at);
    let gave_up = lines.iter().filter(|l| l.has("connect_timeout")).count();
    eprintln!(
        "virtual IP, unreachable primary: the address began to move {:.3} s after the cut; the client connected again {connected:?} s and settled {settled:?} s after that ({gave_up} attempts given up at the connect timeout)",
        moved_at - cut_at
    );
    assert_eq!(settled_seqs(&lines).len(), count, "{}", out.stdout());
    let connected = connected.expect("a connection after the address moved");
    assert!(
        connected < 2.0 * HEARTBEAT.as_secs_f64(),
        "the client reached the moved address {connected:.3} s after it moved"
    );
}
