//! Jepsen-style fault runs with real processes (issue 17): three broker hosts
//! and a clients' host, each a network namespace made by the test
//! (`common::netns`). At-least-once Qpid Proton and rhea publishers send
//! sequence-numbered durable messages along the cluster's public addresses,
//! and a receiver of the other library drains each queue, while a nemesis
//! injects one fault at a time and heals it:
//!
//! - kill -9 of the primary or a backup (every broker has its store, and
//!   durable publishes are always in flight: the kill lands in the middle of
//!   group commits), then a restart on the same data directory;
//! - SIGSTOP, then SIGCONT, of the primary or a backup;
//! - a partition of a broker from the others (its cluster link down);
//! - a partition of the primary from the clients (its client link down);
//! - an asymmetric cut: what a broker sends to the others is dropped
//!   (nftables, in its namespace), what they send still arrives.
//!
//! A resource-manager loop looks every 200 ms at the brokers it can see, as
//! Pacemaker with the OCF agent would: a broker cut off from the cluster
//! network, stopped or dead is out of its sight. When it has seen no primary
//! for two looks it asks the visible brokers, ready ones first, to promote
//! (`tandem-ha --cluster-manager promote`, run on each host); tandem-ha
//! refuses what would lose messages. Every broker has `ha-min-backups 1`.
//!
//! When the faults stop, the checker wants: one primary and two ready
//! backups, every publisher finished, no settled message missing from its
//! receiver (lost), nothing received that was never sent (unexpected), and
//! no more duplicates than the in-flight windows explain (what the publisher
//! resent, a credit's worth per receiver connection and per promotion); it
//! reports the fail-over times.
//!
//! `cargo test` runs two minutes (`TANDEM_CHAOS_MINUTES`, any number);
//! `scripts/chaos --minutes M` runs longer ones. `TANDEM_CHAOS_SEED` replays
//! a fault sequence (the timing is real, so only the choices repeat);
//! `TANDEM_CHAOS_REPORT=FILE` writes the report there too, and
//! `TANDEM_CHAOS_LOGS=DIR` every broker's log (all its restarts).

mod common;
mod ha_cluster;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use common::netns::{can_make_namespaces, Hosts, Layout};
use common::tools::{run_tool_in, stdout};
use common::{spawn_client_in, Broker, ClientOutput, ClientProcess, Json, Lang};
use ha_cluster::{now, number, serial, signal};

const NET: Layout = Layout {
    prefix: "tdx",
    net: 78,
    hosts: 3,
    clients_ns: true,
};

/// Every broker listens here, on all its addresses.
const PORT: u16 = 5672;

/// How often the resource manager looks (the OCF monitor's interval).
const LOOK_EVERY: Duration = Duration::from_millis(200);

/// The resource manager promotes after this many looks without a primary.
const LOOKS_WITHOUT_PRIMARY: u32 = 2;

/// `--link-heartbeat-interval`, seconds.
const HEARTBEAT_S: u64 = 1;

/// A publisher sends at most one new message per this many ms.
const SEND_INTERVAL_MS: u64 = 5;

/// After the faults stop: how long the cluster has to be whole again, and
/// then the clients to finish.
const SETTLE_DEADLINE: Duration = Duration::from_secs(60);
const CLIENTS_DEADLINE_S: u64 = 120;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Kill,
    Stop,
    PartitionFromBrokers,
    PartitionFromClients,
    OneWayCut,
}

impl Fault {
    const ALL: [Fault; 5] = [
        Fault::Kill,
        Fault::Stop,
        Fault::PartitionFromBrokers,
        Fault::PartitionFromClients,
        Fault::OneWayCut,
    ];

    fn describe(self) -> &'static str {
        match self {
            Fault::Kill => "kill -9 (during group commits), restart",
            Fault::Stop => "SIGSTOP, SIGCONT",
            Fault::PartitionFromBrokers => "partition from the other brokers",
            Fault::PartitionFromClients => "partition from the clients",
            Fault::OneWayCut => "asymmetric cut: its packets to the others dropped",
        }
    }
}

/// A small deterministic generator for the nemesis's choices.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A duration from `min_ms` to `max_ms`.
    fn between(&mut self, min_ms: u64, max_ms: u64) -> Duration {
        Duration::from_millis(min_ms + self.next() % (max_ms - min_ms + 1))
    }
}

/// One broker host and what the nemesis has done to it.
struct Node {
    broker: Option<Broker>,
    dead: bool,
    stopped: bool,
    cut_from_brokers: bool,
    cut_from_clients: bool,
    one_way: bool,
    /// What `tandem-ha status` said at the resource manager's last look
    /// (empty when it could not look).
    status: String,
}

impl Node {
    /// Whether the resource manager sees the host: Pacemaker's view comes
    /// over the cluster network, and a stopped or dead broker fails its
    /// monitor.
    fn visible(&self) -> bool {
        !self.dead && !self.stopped && !self.cut_from_brokers && !self.one_way
    }

    fn pid(&self) -> u32 {
        self.broker.as_ref().map_or(0, Broker::pid)
    }
}

/// A fault that happened: when (seconds since the epoch), what, to whom,
/// and whether that broker was the primary.
struct Event {
    at: f64,
    healed_at: f64,
    fault: Fault,
    host: usize,
    was_primary: bool,
}

struct Chaos {
    hosts: Hosts,
    nodes: Vec<Node>,
    rng: XorShift,
    events: Vec<Event>,
    promotions: Vec<(f64, usize)>,
    looks_without_primary: u32,
    has_nft: bool,
}

impl Chaos {
    fn start(seed: u64) -> Chaos {
        let hosts = NET.make();
        let brokers_url = (0..NET.hosts)
            .map(|i| format!("{}:{PORT}", NET.cluster_address(i)))
            .collect::<Vec<_>>()
            .join(",");
        let heartbeat = HEARTBEAT_S.to_string();
        let port = PORT.to_string();
        let nodes = (0..NET.hosts)
            .map(|i| {
                let args = [
                    "--interface",
                    "0.0.0.0",
                    "--port",
                    &port,
                    "--ha-cluster",
                    "yes",
                    "--ha-brokers-url",
                    &brokers_url,
                    "--ha-public-url",
                    &public_url(),
                    "--ha-replicate",
                    "all",
                    "--ha-min-backups",
                    "1",
                    "--link-heartbeat-interval",
                    &heartbeat,
                    "--link-maintenance-interval",
                    "0.2",
                    "--ha-backup-timeout",
                    "3",
                    "--worker-threads",
                    "1",
                ];
                Node {
                    broker: Some(Broker::start_in(&NET.ns(i), &args)),
                    dead: false,
                    stopped: false,
                    cut_from_brokers: false,
                    cut_from_clients: false,
                    one_way: false,
                    status: String::new(),
                }
            })
            .collect();
        let has_nft = common::netns::run("nft", &["--version"]).is_ok();
        if !has_nft {
            assert!(
                std::env::var_os("TANDEM_REQUIRE_TOOLS").is_none(),
                "nft is missing (package nftables; scripts/test installs it)"
            );
            eprintln!("nft is missing: no asymmetric cuts in this run");
        }
        Chaos {
            hosts,
            nodes,
            rng: XorShift(seed.max(1)),
            events: Vec::new(),
            promotions: Vec::new(),
            looks_without_primary: 0,
            has_nft,
        }
    }

    /// `tandem-ha ARGS` on host `i`, against its own broker.
    fn ha(&self, i: usize, args: &[&str], timeout_s: u32) -> std::process::Output {
        let url = format!("127.0.0.1:{PORT}");
        let mut all = vec!["-b", url.as_str()];
        all.extend_from_slice(args);
        run_tool_in(Some(&NET.ns(i)), "tandem-ha", &all, timeout_s)
    }

    /// One look of the resource manager: the visible brokers' statuses, and
    /// a promotion when none of them has been a primary for a while.
    fn look(&mut self) {
        for i in 0..self.nodes.len() {
            self.nodes[i].status = if self.nodes[i].visible() {
                stdout(&self.ha(i, &["status"], 1))
            } else {
                String::new()
            };
        }
        let primary = self
            .nodes
            .iter()
            .any(|n| n.status.starts_with("active") || n.status.starts_with("recovering"));
        if primary {
            self.looks_without_primary = 0;
            return;
        }
        self.looks_without_primary += 1;
        if self.looks_without_primary < LOOKS_WITHOUT_PRIMARY {
            return;
        }
        let mut candidates: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].visible())
            .collect();
        candidates.sort_by_key(|&i| !self.nodes[i].status.starts_with("ready"));
        for i in candidates {
            if self
                .ha(i, &["--cluster-manager", "promote"], 5)
                .status
                .success()
            {
                self.promotions.push((now(), i));
                self.looks_without_primary = 0;
                return;
            }
        }
    }

    /// The host whose broker the last look saw active.
    fn primary(&self) -> Option<usize> {
        (0..self.nodes.len()).find(|&i| self.nodes[i].status.starts_with("active"))
    }

    /// Whether some broker other than `i` is visible and active or ready:
    /// the cluster survives one failure, not two, so a fault waits for it.
    fn survivable_without(&self, i: usize) -> bool {
        (0..self.nodes.len()).any(|j| {
            j != i
                && self.nodes[j].visible()
                && (self.nodes[j].status.starts_with("active")
                    || self.nodes[j].status.starts_with("ready"))
        })
    }

    /// Injects a fault on a host the generator picks; `None` when the
    /// cluster could not survive one right now.
    fn inject(&mut self, first: bool) -> Option<usize> {
        let primary = self.primary();
        let (fault, host) = if first {
            // Every run starts with the primary killed: the fault the
            // checkers care most about happens at least once.
            (Fault::Kill, primary?)
        } else {
            let mut fault = Fault::ALL[(self.rng.next() % Fault::ALL.len() as u64) as usize];
            if fault == Fault::OneWayCut && !self.has_nft {
                fault = Fault::PartitionFromBrokers;
            }
            let host = if fault == Fault::PartitionFromClients || self.rng.next().is_multiple_of(2)
            {
                primary?
            } else {
                let others: Vec<usize> = (0..self.nodes.len())
                    .filter(|&i| Some(i) != primary && !self.nodes[i].dead)
                    .collect();
                *others.get((self.rng.next() % others.len().max(1) as u64) as usize)?
            };
            (fault, host)
        };
        if fault != Fault::PartitionFromClients && !self.survivable_without(host) {
            return None;
        }
        let node = &mut self.nodes[host];
        match fault {
            Fault::Kill => {
                if let Some(b) = node.broker.as_mut() {
                    b.kill();
                }
                node.dead = true;
            }
            Fault::Stop => {
                signal(node.pid(), libc::SIGSTOP);
                node.stopped = true;
            }
            Fault::PartitionFromBrokers => {
                self.hosts.cut(host);
                node.cut_from_brokers = true;
            }
            Fault::PartitionFromClients => {
                self.hosts.cut_clients(host);
                node.cut_from_clients = true;
            }
            Fault::OneWayCut => {
                if let Err(e) = self.hosts.drop_outgoing(host) {
                    panic!("asymmetric cut of host {host}: {e}");
                }
                node.one_way = true;
            }
        }
        self.events.push(Event {
            at: now(),
            healed_at: 0.0,
            fault,
            host,
            was_primary: Some(host) == primary,
        });
        Some(host)
    }

    /// Undoes whatever was done to host `i`.
    fn heal(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if node.dead {
            let old = node.broker.take().expect("a dead node keeps its broker");
            node.broker = Some(old.restart());
            node.dead = false;
        }
        if node.stopped {
            signal(node.pid(), libc::SIGCONT);
            node.stopped = false;
        }
        if node.cut_from_brokers {
            self.hosts.heal(i);
            node.cut_from_brokers = false;
        }
        if node.cut_from_clients {
            self.hosts.heal_clients(i);
            node.cut_from_clients = false;
        }
        if node.one_way {
            if let Err(e) = self.hosts.allow_outgoing(i) {
                panic!("healing the asymmetric cut of host {i}: {e}");
            }
            node.one_way = false;
        }
        if let Some(event) = self.events.iter_mut().rev().find(|e| e.host == i) {
            if event.healed_at == 0.0 {
                event.healed_at = now();
            }
        }
    }

    fn whole(&self) -> bool {
        let active = self.nodes.iter().filter(|n| n.status.starts_with("active"));
        let ready = self.nodes.iter().filter(|n| n.status.starts_with("ready"));
        active.count() == 1 && ready.count() == self.nodes.len() - 1
    }

    fn describe(&self) -> String {
        (0..self.nodes.len())
            .map(|i| format!("host {i}: {:?}", self.nodes[i].status))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

fn public_url() -> String {
    (0..NET.hosts)
        .map(|i| format!("{}:{PORT}", NET.client_address(i)))
        .collect::<Vec<_>>()
        .join(",")
}

/// A publisher and the receiver (of the other library) draining its queue.
struct Flow {
    queue: &'static str,
    publisher: Lang,
    count: usize,
    sender: ClientProcess,
    receiver: ClientProcess,
}

/// What a flow's clients printed, judged.
struct Verdict {
    queue: &'static str,
    publisher: Lang,
    count: usize,
    settled: BTreeSet<u64>,
    sender_ok: bool,
    received_unique: u64,
    duplicates: u64,
    /// What the publisher sent again (unsettled when a connection dropped,
    /// or released): each a possible duplicate.
    resent: u64,
    /// The receiver's connections: each may be given again up to its credit
    /// of what it had accepted when the previous one dropped.
    receiver_connections: u64,
    unexpected: u64,
    lost: Vec<u64>,
    settlement_times: Vec<f64>,
}

/// The receiver's link credit (`ha_recv`'s default): what it may have been
/// given and not yet had its accept reach the broker.
const RECEIVER_CREDIT: u64 = 100;

impl Verdict {
    /// The most duplicates at-least-once explains: each message the publisher
    /// sent again, a credit's worth for each connection the receiver lost, and
    /// a credit's worth at each promotion (accepts the old primary had not yet
    /// replicated).
    fn duplicate_bound(&self, promotions: usize) -> u64 {
        self.resent + (self.receiver_connections + promotions as u64) * RECEIVER_CREDIT
    }
}

impl Flow {
    fn start(queue: &'static str, publisher: Lang, count: usize, timeout_s: u64) -> Flow {
        let receiver_lang = match publisher {
            Lang::Proton => Lang::Rhea,
            Lang::Rhea => Lang::Proton,
        };
        let urls = public_url();
        let count_s = count.to_string();
        let interval = SEND_INTERVAL_MS.to_string();
        let timeout = timeout_s.to_string();
        // A 1 s AMQP heartbeat and connect timeout: a client of an
        // unreachable broker gives up on it in seconds, not TCP's minutes.
        let quick = ["--heartbeat", "1", "--connect-timeout", "1"];
        let ns = NET.clients_ns();
        let mut send_args = vec![
            "--urls",
            &urls,
            "--address",
            queue,
            "--count",
            &count_s,
            "--interval-ms",
            &interval,
            "--timeout",
            &timeout,
        ];
        send_args.extend_from_slice(&quick);
        let mut recv_args = vec![
            "--urls",
            &urls,
            "--address",
            queue,
            "--expect",
            &count_s,
            "--timeout",
            &timeout,
        ];
        recv_args.extend_from_slice(&quick);
        Flow {
            queue,
            publisher,
            count,
            sender: spawn_client_in(ns.as_deref(), publisher, "ha_send", &send_args),
            receiver: spawn_client_in(ns.as_deref(), receiver_lang, "ha_recv", &recv_args),
        }
    }

    fn judge(self) -> Verdict {
        let sent: ClientOutput = self.sender.wait();
        let resent = sent.summary()["resent"].as_u64().unwrap_or(0);
        let lines = sent.json_lines();
        let settled = common::settled_seqs(&lines);
        let settlement_times = lines
            .iter()
            .filter(|l| l.has("settled"))
            .filter_map(|l| number(&l["t"]))
            .collect();
        let received = self.receiver.wait();
        let summary = received.summary();
        let missing: BTreeSet<u64> = summary["missing"]
            .as_array()
            .map(|m| m.iter().filter_map(Json::as_u64).collect())
            .unwrap_or_default();
        let field = |key: &str| summary[key].as_u64().unwrap_or(0);
        assert!(
            summary["received_unique"].as_u64().is_some(),
            "no summary from the receiver of {}: {}\n{}",
            self.queue,
            received.stdout(),
            received.stderr()
        );
        Verdict {
            queue: self.queue,
            publisher: self.publisher,
            count: self.count,
            lost: settled.intersection(&missing).copied().collect(),
            sender_ok: sent.success() && settled.len() == self.count,
            settled,
            received_unique: field("received_unique"),
            duplicates: field("duplicates"),
            resent,
            receiver_connections: field("connections"),
            unexpected: field("unparsed") + field("out_of_range"),
            settlement_times,
        }
    }
}

/// How long a fault stops a publisher: the longest pause between its
/// settlements (`times`, in order) from the fault (`from`) until the first
/// settlement `AFTER_HEAL` after the heal (`to`). `None`: nothing settled
/// after the fault.
fn longest_pause(times: &[f64], from: f64, to: f64) -> Option<f64> {
    let end = times.iter().copied().find(|&t| t > to + AFTER_HEAL)?;
    let mut last = from;
    let mut longest = 0.0_f64;
    for &t in times.iter().filter(|&&t| t > from && t <= end) {
        longest = longest.max(t - last);
        last = t;
    }
    Some(longest)
}

/// See [`longest_pause`]: a pause that ends later than this after the heal
/// is cut off there.
const AFTER_HEAL: f64 = 5.0;

/// The run's parameters, for the report.
struct Run {
    minutes: f64,
    seed: u64,
    /// When the clients started (seconds since the epoch): the report's
    /// time zero.
    load_started: f64,
}

fn env_number(name: &str) -> Option<f64> {
    let value = std::env::var(name).ok()?;
    match value.parse::<f64>() {
        Ok(n) if n > 0.0 => Some(n),
        _ => panic!("{name}={value:?}: not a positive number"),
    }
}

#[test]
fn jepsen_style_faults_lose_no_settled_message() {
    let _serial = serial();
    if !can_make_namespaces() {
        return;
    }
    let minutes = env_number("TANDEM_CHAOS_MINUTES").unwrap_or(2.0);
    let seed = match std::env::var("TANDEM_CHAOS_SEED") {
        Ok(s) => s
            .parse::<u64>()
            .unwrap_or_else(|_| panic!("TANDEM_CHAOS_SEED={s:?}: not a whole number")),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64 | 1),
    };
    eprintln!(
        "chaos: {minutes} minutes, seed {seed} (TANDEM_CHAOS_SEED={seed} replays the choices)"
    );
    let window = Duration::from_secs_f64(minutes * 60.0);
    let mut chaos = Chaos::start(seed);

    // The first primary, and two ready backups, before any load.
    let started = Instant::now();
    while !chaos.whole() {
        assert!(
            started.elapsed() < SETTLE_DEADLINE,
            "the cluster never formed: {}",
            chaos.describe()
        );
        chaos.look();
        common::pace_until(Instant::now() + LOOK_EVERY);
    }
    let count = (window.as_millis() as u64 / SEND_INTERVAL_MS) as usize;
    let timeout_s = window.as_secs() + SETTLE_DEADLINE.as_secs() + CLIENTS_DEADLINE_S;
    let run = Run {
        minutes,
        seed,
        load_started: now(),
    };
    let flows = vec![
        Flow::start("chaos-proton", Lang::Proton, count, timeout_s),
        Flow::start("chaos-rhea", Lang::Rhea, count, timeout_s),
    ];

    // The nemesis: a quiet spell, a fault, its heal; again until the window
    // ends. The resource manager looks between every step.
    let begin = Instant::now();
    let mut next_fault = begin + chaos.rng.between(2000, 4000);
    let mut faulty: Option<(usize, Instant)> = None;
    loop {
        chaos.look();
        let at = Instant::now();
        match faulty {
            Some((host, heal_at)) if at >= heal_at => {
                chaos.heal(host);
                faulty = None;
                next_fault = at + chaos.rng.between(3000, 6000);
            }
            None if at >= next_fault && at < begin + window => {
                let fault_for = chaos.rng.between(2000, 8000);
                let first = chaos.events.is_empty();
                match chaos.inject(first) {
                    Some(host) => faulty = Some((host, at + fault_for)),
                    None => next_fault = at + LOOK_EVERY,
                }
            }
            None if at >= begin + window => break,
            _ => {}
        }
        common::pace_until(Instant::now() + LOOK_EVERY);
    }

    // The faults have stopped: the cluster must be whole again.
    let healed = Instant::now();
    while !chaos.whole() {
        assert!(
            healed.elapsed() < SETTLE_DEADLINE,
            "the cluster was not whole {SETTLE_DEADLINE:?} after the faults stopped: {}",
            chaos.describe()
        );
        chaos.look();
        common::pace_until(Instant::now() + LOOK_EVERY);
    }
    let whole_after = healed.elapsed();
    let verdicts: Vec<Verdict> = flows.into_iter().map(Flow::judge).collect();
    let report = report(&chaos, &verdicts, &run, whole_after);
    eprintln!("{report}");
    if let Some(dir) = std::env::var_os("TANDEM_CHAOS_LOGS") {
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir).expect("creating the logs directory");
        for (i, node) in chaos.nodes.iter().enumerate() {
            let log = node.broker.as_ref().map(Broker::stderr).unwrap_or_default();
            let path = dir.join(format!("host{i}.log"));
            if let Err(e) = std::fs::write(&path, log) {
                panic!("writing {}: {e}", path.display());
            }
        }
    }
    if let Some(path) = std::env::var_os("TANDEM_CHAOS_REPORT") {
        if let Err(e) = std::fs::write(&path, &report) {
            panic!("writing {}: {e}", std::path::Path::new(&path).display());
        }
    }

    assert!(
        chaos.events.iter().any(|e| e.was_primary),
        "no fault hit a primary"
    );
    for v in &verdicts {
        assert!(
            v.lost.is_empty(),
            "{} of {} settled messages on {} were lost, e.g. {:?}",
            v.lost.len(),
            v.settled.len(),
            v.queue,
            &v.lost[..v.lost.len().min(20)]
        );
        assert_eq!(v.unexpected, 0, "{}: unexpected messages received", v.queue);
        let bound = v.duplicate_bound(chaos.promotions.len());
        assert!(
            v.duplicates <= bound,
            "{}: {} duplicates, more than the in-flight windows explain ({bound})",
            v.queue,
            v.duplicates
        );
        assert!(
            v.sender_ok,
            "the {:?} publisher on {} settled {} of {}",
            v.publisher,
            v.queue,
            v.settled.len(),
            v.count
        );
    }
}

/// The run in Markdown: the faults, the promotions, what each flow saw and
/// the fail-over times.
fn report(chaos: &Chaos, verdicts: &[Verdict], run: &Run, whole_after: Duration) -> String {
    let t0 = run.load_started;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "chaos run: {} min, seed {}, {} faults, {} promotions; one primary and two ready \
         backups {:.1} s after the faults stopped\n",
        run.minutes,
        run.seed,
        chaos.events.len(),
        chaos.promotions.len(),
        whole_after.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "| t (s) | fault | host | primary? | lasted (s) | longest pause in settlements (s), per publisher |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    let mut failovers = Vec::new();
    for e in &chaos.events {
        let pauses: Vec<Option<f64>> = verdicts
            .iter()
            .map(|v| longest_pause(&v.settlement_times, e.at, e.healed_at))
            .collect();
        // A fail-over: the resource manager had to promote another broker.
        if e.was_primary && e.fault != Fault::PartitionFromClients {
            failovers.extend(pauses.iter().flatten());
        }
        let back: Vec<String> = pauses
            .iter()
            .map(|p| p.map_or("none after".into(), |s| format!("{s:.2}")))
            .collect();
        let _ = writeln!(
            out,
            "| {:.1} | {} | {} | {} | {:.1} | {} |",
            e.at - t0,
            e.fault.describe(),
            e.host,
            if e.was_primary { "yes" } else { "no" },
            e.healed_at - e.at,
            back.join(" / ")
        );
    }
    let _ = writeln!(out);
    for (at, host) in &chaos.promotions {
        let _ = writeln!(out, "promoted host {host} at {:.1} s", at - t0);
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| queue | publisher | settled | received | duplicates (bound) | resent by the publisher | \
         receiver's connections | unexpected | lost |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
    for v in verdicts {
        let _ = writeln!(
            out,
            "| {} | {:?} | {} of {} | {} | {} ({}) | {} | {} | {} | {} |",
            v.queue,
            v.publisher,
            v.settled.len(),
            v.count,
            v.received_unique,
            v.duplicates,
            v.duplicate_bound(chaos.promotions.len()),
            v.resent,
            v.receiver_connections,
            v.unexpected,
            v.lost.len()
        );
    }
    failovers.sort_by(f64::total_cmp);
    if let (Some(first), Some(last)) = (failovers.first(), failovers.last()) {
        let median = failovers[failovers.len() / 2];
        let _ = writeln!(
            out,
            "\nfail-over (the longest pause in a publisher's settlements when the primary \
             was killed, stopped or cut off from the others): min {first:.2} s, median \
             {median:.2} s, max {last:.2} s over {}",
            failovers.len()
        );
    }
    out
}
