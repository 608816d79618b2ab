//! Test clients: the programs in `tests/clients/` (Qpid Proton and rhea),
//! run to completion or in the background, and their JSON output.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::{die_with_parent, send_signal, tail, wait_for_exit, wait_until, Broker, Json};

/// Debian's python3-qpid-proton installs only for the system interpreter.
pub const PYTHON: &str = "/usr/bin/python3";

/// The `--timeout` given to a client whose arguments name none.
pub const DEFAULT_CLIENT_TIMEOUT_SECS: u64 = 30;

/// How long past its own `--timeout` a client may run before the harness kills it.
const CLIENT_GRACE: Duration = Duration::from_secs(15);

/// Which client library a program in `tests/clients/` uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    /// Qpid Proton (Python), `tests/clients/proton/*.py`.
    Proton,
    /// rhea (Node.js), `tests/clients/rhea/*.js`.
    Rhea,
}

impl Lang {
    /// The file of a client program: `Lang::Proton.script("send")` is `.../proton/send.py`.
    pub fn script(self, name: &str) -> PathBuf {
        let clients = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients");
        match self {
            Lang::Proton => clients.join("proton").join(format!("{name}.py")),
            Lang::Rhea => clients.join("rhea").join(format!("{name}.js")),
        }
    }

    fn command(self, name: &str, args: &[&str]) -> Command {
        let script = self.script(name);
        assert!(script.exists(), "no client program {}", script.display());
        let mut command = match self {
            Lang::Proton => {
                let mut command = Command::new(PYTHON);
                command
                    .env("PYTHONUNBUFFERED", "1")
                    .env("PYTHONDONTWRITEBYTECODE", "1");
                command
            }
            Lang::Rhea => {
                let rhea = script.with_file_name("node_modules").join("rhea");
                assert!(
                    rhea.exists(),
                    "{} is missing: run scripts/test (it runs npm install there)",
                    rhea.display()
                );
                Command::new("node")
            }
        };
        command.arg(&script).args(args);
        if !args.contains(&"--timeout") {
            command.args(["--timeout", &DEFAULT_CLIENT_TIMEOUT_SECS.to_string()]);
        }
        die_with_parent(&mut command);
        command
    }
}

/// How long the harness lets a client run: its `--timeout` plus a grace period,
/// so the client's own timeout (which prints a summary) normally fires first.
fn client_deadline(args: &[&str]) -> Duration {
    let timeout = args
        .iter()
        .position(|a| *a == "--timeout")
        .and_then(|i| args.get(i + 1))
        .and_then(|t| t.parse::<f64>().ok())
        .unwrap_or(DEFAULT_CLIENT_TIMEOUT_SECS as f64);
    Duration::from_secs_f64(timeout) + CLIENT_GRACE
}

/// Runs a Proton client (`"send.py"` or `"send"`) to completion.
pub fn run_python(script: &str, args: &[&str]) -> ClientOutput {
    run_client(Lang::Proton, script.trim_end_matches(".py"), args)
}

/// Runs a rhea client (`"send.js"` or `"send"`) to completion.
pub fn run_node(script: &str, args: &[&str]) -> ClientOutput {
    run_client(Lang::Rhea, script.trim_end_matches(".js"), args)
}

/// Starts a Proton client in the background.
pub fn spawn_python(script: &str, args: &[&str]) -> ClientProcess {
    spawn_client(Lang::Proton, script.trim_end_matches(".py"), args)
}

/// Starts a rhea client in the background.
pub fn spawn_node(script: &str, args: &[&str]) -> ClientProcess {
    spawn_client(Lang::Rhea, script.trim_end_matches(".js"), args)
}

/// Runs client program `name` of `lang` to completion; it is killed if it
/// outlives its `--timeout` by 15 s.
pub fn run_client(lang: Lang, name: &str, args: &[&str]) -> ClientOutput {
    spawn_client(lang, name, args).wait()
}

/// Starts client program `name` of `lang` in the background.
pub fn spawn_client(lang: Lang, name: &str, args: &[&str]) -> ClientProcess {
    spawn_client_in(None, lang, name, args)
}

/// [`spawn_client`] in network namespace `netns` (`None`: the test's own).
pub fn spawn_client_in(
    netns: Option<&str>,
    lang: Lang,
    name: &str,
    args: &[&str],
) -> ClientProcess {
    let label = format!("{lang:?} {name} {}", args.join(" "));
    let mut command = lang.command(name, args);
    if let Some(ns) = netns {
        super::netns::in_netns(&mut command, ns);
    }
    ClientProcess::spawn(label, command, client_deadline(args))
}

/// `--url URL --address ADDRESS --count N` followed by `extra`.
pub fn client_args(broker: &Broker, address: &str, count: usize, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--url".into(),
        broker.url(),
        "--address".into(),
        address.into(),
        "--count".into(),
        count.to_string(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

fn as_strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// Runs `lang`'s send client to completion, asserts it succeeded, and returns
/// its summary line.
pub fn send(lang: Lang, broker: &Broker, address: &str, count: usize, extra: &[&str]) -> Json {
    let args = client_args(broker, address, count, extra);
    run_client(lang, "send", &as_strs(&args))
        .assert_success()
        .summary()
}

/// Runs `lang`'s receive client to completion and asserts it succeeded.
pub fn receive(
    lang: Lang,
    broker: &Broker,
    address: &str,
    count: usize,
    extra: &[&str],
) -> ClientOutput {
    let args = client_args(broker, address, count, extra);
    let output = run_client(lang, "recv", &as_strs(&args));
    output.assert_success();
    output
}

/// Starts `lang`'s receive client in the background and waits until the
/// broker has attached its link (so a subscription is bound before anything
/// is sent).
pub fn spawn_receiver(
    lang: Lang,
    broker: &Broker,
    address: &str,
    count: usize,
    extra: &[&str],
) -> ClientProcess {
    let args = client_args(broker, address, count, extra);
    let mut receiver = spawn_client(lang, "recv", &as_strs(&args));
    receiver.wait_ready();
    receiver
}

pub(super) fn run_to_completion(label: &str, command: Command, deadline: Duration) -> ClientOutput {
    ClientProcess::spawn(label.to_owned(), command, deadline).wait()
}

/// A client (or any program) running in the background; its stdout lines are
/// collected as they arrive. Killed when dropped.
pub struct ClientProcess {
    label: String,
    child: Child,
    started: Instant,
    deadline: Duration,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
    status: Option<ExitStatus>,
}

impl ClientProcess {
    fn spawn(label: String, mut command: Command, deadline: Duration) -> ClientProcess {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {label}: {e}"));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().expect("piped stdout");
        let err = child.stderr.take().expect("piped stderr");
        let lines = Arc::clone(&stdout);
        let bytes = Arc::clone(&stderr);
        let readers = vec![
            thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    lines.lock().unwrap().push(line);
                }
            }),
            thread::spawn(move || {
                let mut err = err;
                let mut buf = [0u8; 4096];
                while let Ok(n) = err.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    bytes.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            }),
        ];
        ClientProcess {
            label,
            child,
            started: Instant::now(),
            deadline,
            stdout,
            stderr,
            readers,
            status: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stdout lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// Stdout lines so far, parsed; panics on a line that is not JSON.
    pub fn json_lines(&self) -> Vec<Json> {
        parse_lines(&self.label, &self.lines())
    }

    /// Message lines (those with a `body`) so far.
    pub fn messages(&self) -> Vec<Json> {
        self.json_lines()
            .into_iter()
            .filter(|l| l.has("body"))
            .collect()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Waits until the stdout lines so far satisfy `done`; panics with the
    /// client's output if they do not within `deadline`, or the client exits first.
    pub fn wait_for(&mut self, deadline: Duration, what: &str, done: impl Fn(&[Json]) -> bool) {
        let mut exited = None;
        let satisfied = wait_until(deadline, || {
            // Check for an exit first: all lines printed before it are then read.
            exited = self.child.try_wait().ok().flatten();
            if exited.is_some() {
                self.join_readers();
            }
            done(&self.json_lines()) || exited.is_some()
        });
        if exited.is_some() {
            self.status = exited;
        }
        if satisfied && (exited.is_none() || done(&self.json_lines())) {
            return;
        }
        let why = match exited {
            Some(status) => format!("exited: {status}"),
            None => format!("not within {deadline:?}"),
        };
        panic!(
            "{}: waiting for {what}: {why}\n{}",
            self.label,
            self.describe()
        );
    }

    /// Waits for a stdout line that satisfies `matches`, and returns it.
    pub fn wait_for_line(&mut self, deadline: Duration, matches: impl Fn(&Json) -> bool) -> Json {
        self.wait_for(deadline, "a matching line", |lines| {
            lines.iter().any(&matches)
        });
        self.json_lines()
            .into_iter()
            .find(|l| matches(l))
            .expect("seen by wait_for")
    }

    /// Waits for the `{"ready": true, ...}` line a receiver prints once the
    /// broker has attached its link, and returns it.
    pub fn wait_ready(&mut self) -> Json {
        self.wait_for_line(Duration::from_secs(20), |l| {
            l["ready"].as_bool() == Some(true)
        })
    }

    /// Waits until the client has printed at least `count` message lines.
    pub fn wait_for_messages(&mut self, count: usize, deadline: Duration) -> Vec<Json> {
        let what = format!("{count} messages");
        self.wait_for(deadline, &what, |lines| {
            lines.iter().filter(|l| l.has("body")).count() >= count
        });
        self.messages()
    }

    /// SIGTERM, without waiting.
    pub fn terminate(&self) {
        if self.status.is_none() {
            send_signal(self.pid(), libc::SIGTERM);
        }
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
            self.join_readers();
        }
    }

    /// Waits for the exit (killing the client when it outlives its deadline)
    /// and returns everything it printed.
    pub fn wait(mut self) -> ClientOutput {
        let left = self.deadline.saturating_sub(self.started.elapsed());
        let mut timed_out = false;
        if self.status.is_none() {
            self.status = wait_for_exit(&mut self.child, left);
            if self.status.is_none() {
                timed_out = true;
                self.kill();
            }
        }
        self.join_readers();
        ClientOutput {
            label: self.label.clone(),
            status: self.status.expect("reaped"),
            lines: self.lines(),
            stderr: self.stderr(),
            timed_out,
        }
    }

    fn join_readers(&mut self) {
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }

    fn describe(&self) -> String {
        format!(
            "--- stdout (last lines) ---\n{}--- stderr ---\n{}",
            tail(&self.lines().join("\n"), 40),
            tail(&self.stderr(), 40)
        )
    }
}

impl Drop for ClientProcess {
    fn drop(&mut self) {
        let had_exited = self.status.is_some();
        self.kill();
        if thread::panicking() {
            eprintln!(
                "--- {} (pid {}, {}) ---\n{}",
                self.label,
                self.child.id(),
                if had_exited { "exited" } else { "killed" },
                self.describe()
            );
        }
    }
}

/// Everything a finished client printed, and how it ended.
#[derive(Debug)]
pub struct ClientOutput {
    pub label: String,
    pub status: ExitStatus,
    pub lines: Vec<String>,
    pub stderr: String,
    /// The harness killed it after its deadline.
    pub timed_out: bool,
}

impl ClientOutput {
    /// Panics, showing the output, unless the client exited 0.
    pub fn assert_success(&self) -> &Self {
        assert!(
            self.status.success() && !self.timed_out,
            "{} failed: {}{}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.label,
            self.status,
            if self.timed_out {
                " (killed after its deadline)"
            } else {
                ""
            },
            tail(&self.lines.join("\n"), 40),
            tail(&self.stderr, 40)
        );
        self
    }

    /// All stdout lines, parsed.
    pub fn json_lines(&self) -> Vec<Json> {
        parse_lines(&self.label, &self.lines)
    }

    /// Message lines (those with a `body`).
    pub fn messages(&self) -> Vec<Json> {
        self.json_lines()
            .into_iter()
            .filter(|l| l.has("body"))
            .collect()
    }

    /// The bodies of the message lines, in order.
    pub fn bodies(&self) -> Vec<String> {
        bodies(&self.messages())
    }

    /// The last line: the client's summary.
    pub fn summary(&self) -> Json {
        self.json_lines()
            .pop()
            .unwrap_or_else(|| panic!("{} printed nothing\n{}", self.label, self.stderr))
    }

    pub fn stdout(&self) -> String {
        self.lines.join("\n")
    }

    /// Whether the client exited 0 before its deadline.
    pub fn success(&self) -> bool {
        self.status.success() && !self.timed_out
    }

    /// What the client wrote to stderr.
    pub fn stderr(&self) -> &str {
        &self.stderr
    }
}

fn parse_lines(label: &str, lines: &[String]) -> Vec<Json> {
    lines
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| Json::parse(l).unwrap_or_else(|e| panic!("{label}: bad output line {l:?}: {e}")))
        .collect()
}

/// The `body` strings of message lines.
pub fn bodies(messages: &[Json]) -> Vec<String> {
    messages
        .iter()
        .map(|m| m["body"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// `["{prefix}0", "{prefix}1", ...]`: the bodies the send clients produce.
pub fn expected_bodies(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{prefix}{i}")).collect()
}

/// `body` padded with '.' to `size` bytes, as the send clients' `--size` does.
pub fn padded(body: &str, size: usize) -> String {
    let mut padded = body.to_owned();
    while padded.len() < size {
        padded.push('.');
    }
    padded
}

/// Runs `ha_recv.py` on `queue` at `urls` until sequence numbers 0..`expect`
/// all arrived or `timeout_s` passed; the numbers that did not arrive (from
/// the receiver's summary, which must be there).
pub fn ha_recv_missing(
    urls: &str,
    queue: &str,
    expect: u64,
    timeout_s: u64,
) -> std::collections::BTreeSet<u64> {
    let out = run_python(
        "ha_recv.py",
        &[
            "--urls",
            urls,
            "--address",
            queue,
            "--expect",
            &expect.to_string(),
            "--timeout",
            &timeout_s.to_string(),
        ],
    );
    let summary = out.summary();
    assert!(
        summary["received_unique"].as_u64().is_some(),
        "no receiver summary: {}",
        out.stdout()
    );
    summary["missing"]
        .as_array()
        .map(|m| m.iter().filter_map(Json::as_u64).collect())
        .unwrap_or_default()
}

/// Fails naming the first of `lost`, messages a publisher saw settled (of
/// `settled` in all) that were not received `when`.
pub fn assert_none_lost(lost: &[u64], settled: usize, when: &str) {
    assert!(
        lost.is_empty(),
        "{} of {settled} settled messages were lost {when}: {:?}",
        lost.len(),
        &lost[..lost.len().min(20)]
    );
}

/// `ha_send.py` publishing `count` sequence-numbered durable messages to
/// `address` along `urls` (comma-separated), one new message per ms, giving
/// up after `timeout` seconds.
pub fn spawn_ha_send(urls: &str, address: &str, count: usize, timeout: &str) -> ClientProcess {
    spawn_ha_send_with(urls, address, count, timeout, &[])
}

/// [`spawn_ha_send`] with more of `ha_send.py`'s flags (`--heartbeat`, ...).
pub fn spawn_ha_send_with(
    urls: &str,
    address: &str,
    count: usize,
    timeout: &str,
    extra: &[&str],
) -> ClientProcess {
    let count = count.to_string();
    let mut args = vec![
        "--urls",
        urls,
        "--address",
        address,
        "--count",
        &count,
        "--interval-ms",
        "1",
        "--timeout",
        timeout,
    ];
    args.extend_from_slice(extra);
    spawn_python("ha_send.py", &args)
}

/// The sequence numbers an `ha_send.py` run printed as settled.
pub fn settled_seqs(lines: &[Json]) -> std::collections::BTreeSet<u64> {
    lines.iter().filter_map(|j| j["settled"].as_u64()).collect()
}

impl ClientProcess {
    /// Waits (up to `deadline`) until an `ha_send.py` run saw `n` messages
    /// settled: the moment to break something under load.
    pub fn wait_for_settlements(&mut self, n: usize, deadline: Duration) {
        self.wait_for(deadline, &format!("{n} settlements"), |lines| {
            settled_seqs(lines).len() >= n
        });
    }
}
