//! A three-broker HA cluster of real `tandemd` processes for the `e2e_ha_*`
//! tests, with the test acting as the cluster resource manager: it kills,
//! stops, restarts and promotes brokers, and reads them through the admin tools
//! (`tandem-ha`, `tandem-config --ha-admin`, `tandem-stat --ha-admin`) exactly
//! as an operator would.
//!
//! Every broker runs with short HA intervals ([`HEARTBEAT`], [`BACKUP_TIMEOUT`],
//! a 0.2 s link maintenance interval), so fail-overs take seconds, not minutes.
//! Tests that measure time hold [`serial`] so that two clusters never share the
//! two CPUs of the test machine.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::net::TcpListener;
use std::process::Output;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::{wait_until, Broker, ClientProcess, Json};

/// `--link-heartbeat-interval`: a backup silent for twice this is dropped.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// `--ha-backup-timeout`: how long a recovering primary waits for expected backups.
pub const BACKUP_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a broker may take to reach an expected HA status.
pub const STATUS_DEADLINE: Duration = Duration::from_secs(20);

/// One test at a time per test binary: the tests measure stalls and time-outs
/// of a second or two, which a second cluster on the same two CPUs would blur.
pub fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A port free right now (the broker binds it a moment later).
pub use super::common::free_port;

/// Seconds since the epoch, as the HA clients print them (`"t"`).
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// A number in a client's JSON line.
pub fn number(value: &Json) -> Option<f64> {
    match value {
        Json::Number(n) => Some(*n),
        _ => None,
    }
}

/// Sends `signal` to `pid` (SIGSTOP and SIGCONT for stalled brokers).
pub fn signal(pid: u32, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).expect("pid fits pid_t");
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is our child.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// Runs one of the admin tools with `args` and a `--timeout`.
pub use super::common::tools::{run_tool as tool, stderr, stdout};

/// Runs a tool that must succeed and returns its stdout.
pub fn tool_ok(name: &str, args: &[&str]) -> String {
    let out = tool(name, args, 10);
    assert!(
        out.status.success(),
        "{name} {args:?} failed: {}\n{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// The broker (or member slot) numbers of a cluster: 0, 1, 2.
pub type Member = usize;

pub struct HaCluster {
    ports: Vec<u16>,
    /// `--ha-brokers-url`: every member's address.
    pub urls: String,
    replicate: Option<String>,
    /// More `tandemd` arguments for every member.
    extra: Vec<String>,
    brokers: Vec<Option<Broker>>,
    /// Killed brokers, kept so a failing test still prints their stderr.
    dead: Vec<Broker>,
}

impl HaCluster {
    /// Starts three brokers (all `joining`); `replicate` is `--ha-replicate`
    /// (`None`: the broker's default).
    pub fn start(replicate: Option<&str>) -> HaCluster {
        HaCluster::start_with_args(replicate, &[])
    }

    /// Like [`HaCluster::start`], every member with `extra` arguments too.
    pub fn start_with_args(replicate: Option<&str>, extra: &[&str]) -> HaCluster {
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let urls = ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = HaCluster {
            ports,
            urls,
            replicate: replicate.map(str::to_owned),
            extra: extra.iter().map(|a| a.to_string()).collect(),
            brokers: vec![None, None, None],
            dead: Vec::new(),
        };
        for i in 0..3 {
            cluster.start_member(i);
        }
        cluster
    }

    /// Starts three brokers and makes `primary` the first primary; waits until
    /// the others are ready backups.
    pub fn start_with_primary(replicate: Option<&str>, primary: Member) -> HaCluster {
        let cluster = HaCluster::start(replicate);
        cluster.promote_ok(primary);
        for i in cluster.others(primary) {
            cluster.wait_status(i, "ready");
        }
        cluster
    }

    /// (Re)starts member `i` on its own port, with a fresh data directory.
    pub fn start_member(&mut self, i: Member) {
        if let Some(old) = self.brokers[i].take() {
            self.dead.push(old);
        }
        // Right after a kill -9 the dead broker's connections may still hold its
        // port for a moment (FIN_WAIT), and tandemd refuses a port in use.
        let addr = ("127.0.0.1", self.ports[i]);
        let free = wait_until(Duration::from_secs(10), || TcpListener::bind(addr).is_ok());
        assert!(free, "port {} stayed in use", self.ports[i]);
        let port = self.ports[i].to_string();
        let mut args = vec![
            "--port",
            &port,
            "--ha-cluster",
            "yes",
            "--ha-brokers-url",
            &self.urls,
            "--link-heartbeat-interval",
            "1",
            "--link-maintenance-interval",
            "0.2",
            "--ha-backup-timeout",
            "3",
            "--worker-threads",
            "2",
        ];
        if let Some(level) = &self.replicate {
            args.extend(["--ha-replicate", level.as_str()]);
        }
        args.extend(self.extra.iter().map(String::as_str));
        self.brokers[i] = Some(Broker::start(&args));
    }

    /// Member `i`'s process (panics if it is not running).
    pub fn broker(&self, i: Member) -> &Broker {
        self.brokers[i].as_ref().expect("member running")
    }

    pub fn url(&self, i: Member) -> String {
        format!("127.0.0.1:{}", self.ports[i])
    }

    /// The members other than `i`.
    pub fn others(&self, i: Member) -> Vec<Member> {
        (0..3).filter(|&j| j != i).collect()
    }

    pub fn pid(&self, i: Member) -> u32 {
        self.brokers[i].as_ref().expect("a running member").pid()
    }

    /// `kill -9` of member `i` if it runs, then a start on its port with its
    /// own data directory (identity and store) kept.
    pub fn restart_member(&mut self, i: Member) {
        let broker = match self.brokers[i].take() {
            Some(b) => b,
            None => match self.dead.iter().rposition(|b| b.port() == self.ports[i]) {
                Some(at) => self.dead.remove(at),
                None => panic!("member {i} never ran"),
            },
        };
        self.brokers[i] = Some(broker.restart());
    }

    /// Member `i`'s data directory (running or killed).
    pub fn data_dir(&self, i: Member) -> std::path::PathBuf {
        match &self.brokers[i] {
            Some(b) => b.data_dir(),
            None => self
                .dead
                .iter()
                .rev()
                .find(|b| b.port() == self.ports[i])
                .map(|b| b.data_dir())
                .unwrap_or_else(|| panic!("member {i} never ran")),
        }
    }

    /// What running member `i` logged so far.
    pub fn log(&self, i: Member) -> String {
        self.brokers[i].as_ref().expect("a running member").stderr()
    }

    /// The broker management attributes of member `i` (`tandem-stat -b
    /// --json`).
    pub fn broker_attributes(&self, i: Member) -> Json {
        let text = tool_ok("tandem-stat", &["-b", &self.url(i), "--ha-admin", "--json"]);
        rows(&text).into_iter().next().unwrap_or(Json::Null)
    }

    /// `kill -9`.
    pub fn kill(&mut self, i: Member) {
        let mut broker = self.brokers[i].take().expect("a running member");
        broker.kill();
        self.dead.push(broker);
    }

    /// `tandem-ha --cluster-manager promote` on member `i`.
    pub fn promote(&self, i: Member) -> Output {
        tool(
            "tandem-ha",
            &["-b", &self.url(i), "--cluster-manager", "promote"],
            10,
        )
    }

    pub fn promote_ok(&self, i: Member) {
        let out = self.promote(i);
        assert!(
            out.status.success(),
            "promoting {}: {} {}",
            self.url(i),
            stdout(&out),
            stderr(&out)
        );
    }

    /// `tandem-ha status` of member `i` (the error text when it does not answer).
    pub fn status(&self, i: Member) -> String {
        let out = tool("tandem-ha", &["-b", &self.url(i), "status"], 2);
        if out.status.success() {
            stdout(&out)
        } else {
            format!("(no answer: {})", stderr(&out))
        }
    }

    /// Whether `tandem-ha status --expect=STATE` exits 0 for member `i`.
    pub fn has_status(&self, i: Member, state: &str) -> bool {
        let expect = format!("--expect={state}");
        tool("tandem-ha", &["-b", &self.url(i), "status", &expect], 2)
            .status
            .success()
    }

    /// Polls until member `i` is in `state`; panics with its last status if not
    /// within [`STATUS_DEADLINE`].
    pub fn wait_status(&self, i: Member, state: &str) {
        let reached = wait_until(STATUS_DEADLINE, || self.has_status(i, state));
        assert!(
            reached,
            "{} did not become {state} within {STATUS_DEADLINE:?}; it is {}",
            self.url(i),
            self.status(i)
        );
    }

    /// Queue rows (`tandem-stat --ha-admin -q --json`) of member `i`, without
    /// the tools' own reply queues.
    pub fn queue_rows(&self, i: Member) -> Vec<Json> {
        let text = tool_ok(
            "tandem-stat",
            &["-b", &self.url(i), "--ha-admin", "-q", "--json"],
        );
        rows(&text)
            .into_iter()
            .filter(|q| !q["name"].as_str().unwrap_or("").starts_with("tmp."))
            .collect()
    }

    /// The depth of `queue` on member `i`, `None` if the queue is not there.
    pub fn depth(&self, i: Member, queue: &str) -> Option<u64> {
        self.queue_rows(i)
            .into_iter()
            .find(|q| q["name"].as_str() == Some(queue))
            .and_then(|q| q["depth"].as_u64())
    }

    /// Polls until `queue` on member `i` holds exactly `depth` messages.
    pub fn wait_depth(&self, i: Member, queue: &str, depth: u64) {
        let mut last = None;
        let reached = wait_until(STATUS_DEADLINE, || {
            last = self.depth(i, queue);
            last == Some(depth)
        });
        assert!(
            reached,
            "{queue} on {} holds {last:?} messages, expected {depth}",
            self.url(i)
        );
    }

    /// Names from `tandem-config --ha-admin LIST --json` (`queues` or
    /// `exchanges`) of member `i`, without the tools' reply queues.
    pub fn names(&self, i: Member, list: &str) -> Vec<String> {
        let text = tool_ok(
            "tandem-config",
            &["-b", &self.url(i), "--ha-admin", list, "--json"],
        );
        rows(&text)
            .iter()
            .filter_map(|r| r["name"].as_str())
            .filter(|n| !n.starts_with("tmp."))
            .map(str::to_owned)
            .collect()
    }

    /// `(exchange, queue, key)` of every binding on member `i`.
    pub fn bindings(&self, i: Member) -> Vec<(String, String, String)> {
        let text = tool_ok(
            "tandem-config",
            &["-b", &self.url(i), "--ha-admin", "bindings", "--json"],
        );
        let mut all: Vec<(String, String, String)> = rows(&text)
            .iter()
            .map(|b| {
                let text = |k: &str| b[k].as_str().unwrap_or_default().to_owned();
                (text("exchange"), text("queue"), text("key"))
            })
            .collect();
        all.sort();
        all
    }

    /// Runs `tandem-config -b PRIMARY ARGS` and asserts it succeeded.
    pub fn config(&self, primary: Member, args: &[&str]) {
        let url = self.url(primary);
        let mut all = vec!["-b", url.as_str()];
        all.extend_from_slice(args);
        tool_ok("tandem-config", &all);
    }

    /// Every member's status, for assertion messages.
    pub fn describe(&self) -> String {
        (0..3)
            .map(|i| match &self.brokers[i] {
                Some(_) => format!("{} {}", self.url(i), self.status(i)),
                None => format!("{} (down)", self.url(i)),
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// The rows of a tool's `--json` list.
pub fn rows(text: &str) -> Vec<Json> {
    let parsed = Json::parse(text).unwrap_or_else(|e| panic!("bad tool JSON {text:?}: {e}"));
    parsed.as_array().unwrap_or_default().to_vec()
}

/// `{"settled": SEQ, "t": T}` lines of an `ha_send.py` so far, as `(seq, t)`.
pub fn settlements(sender: &ClientProcess) -> Vec<(u64, f64)> {
    sender
        .lines()
        .iter()
        .filter(|l| l.starts_with("{\"settled\":"))
        .filter_map(|l| Json::parse(l).ok())
        .filter_map(|j| Some((j["settled"].as_u64()?, number(&j["t"])?)))
        .collect()
}

/// Times (`"t"`) of the `{"connected": ...}` lines of an HA client so far.
pub fn connections(client: &ClientProcess) -> Vec<(String, f64)> {
    client
        .lines()
        .iter()
        .filter(|l| l.starts_with("{\"connected\":"))
        .filter_map(|l| Json::parse(l).ok())
        .filter_map(|j| Some((j["connected"].as_str()?.to_owned(), number(&j["t"])?)))
        .collect()
}
